"""verinfer.deploy.deploy_all on Anvil: contracts deployed, wired and owned as expected."""

import pytest
from verinfer.deploy import TEST_TOKEN_DECIMALS, DeployConfig, deploy_all

UNIT = 10**TEST_TOKEN_DECIMALS


@pytest.fixture(scope="module")
def deployer(accounts):
    return accounts[0]


@pytest.fixture(scope="module")
def deployed(deployer):
    return deploy_all(deployer)


def test_deploy_all__fresh_token__wires_market_and_court(project, deployer, deployed):
    token = project.TestToken.at(deployed["token"])
    market = project.Market.at(deployed["market"])
    court = project.Court.at(deployed["court"])
    cfg = DeployConfig()
    assert deployed["owner"] == deployer.address
    assert token.decimals() == TEST_TOKEN_DECIMALS
    assert market.token() == token.address
    assert market.court() == court.address
    assert court.market() == market.address
    assert market.owner() == deployer.address and court.owner() == deployer.address
    assert market.fee_recipient() == deployer.address
    assert market.min_stake() == cfg.min_stake * UNIT
    assert court.dispute_bond() == cfg.dispute_bond * UNIT
    assert court.appeal_bond() == cfg.appeal_bond * UNIT
    assert court.verifier_fee() == cfg.verifier_fee * UNIT
    assert court.no_show_penalty() == cfg.no_show_penalty * UNIT
    assert court.audit_fee() == cfg.audit_fee * UNIT
    logs = list(market.CourtSet.range(0, deployer.provider.get_block("latest").number + 1))
    assert [log.court for log in logs] == [court.address]


def test_deploy_all__given_token__reuses_it_and_scales_by_decimals(project, accounts):
    owner = accounts[1]
    usdc = project.TestToken.deploy("USD Coin", "USDC", 6, sender=owner)
    out = deploy_all(
        owner, token=usdc.address, config=DeployConfig(fee_recipient=accounts[2].address)
    )
    market = project.Market.at(out["market"])
    assert out["token"] == usdc.address
    assert market.token() == usdc.address
    assert market.min_stake() == DeployConfig().min_stake * 10**6
    assert market.fee_recipient() == accounts[2].address
    assert project.Court.at(out["court"]).dispute_bond() == DeployConfig().dispute_bond * 10**6
