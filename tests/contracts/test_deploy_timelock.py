"""`verinfer deploy` / `ape run deploy` on Anvil: the Timelock owns market and court, and every
owner action waits its delay (deploy.install_timelock)."""

import ape
import pytest
from verinfer.deploy import DEFAULT_TIMELOCK_DELAY, DeployConfig, deploy_all

SALT = b"\x01" * 32
NO_PREDECESSOR = b"\x00" * 32
ZERO = "0x" + "00" * 20


@pytest.fixture(scope="module")
def deployer(accounts):
    return accounts[0]


@pytest.fixture(scope="module")
def deployed(project, deployer):
    out = deploy_all(deployer, config=DeployConfig(timelock_delay=DEFAULT_TIMELOCK_DELAY))
    return (
        out,
        project.Market.at(out["market"]),
        project.Court.at(out["court"]),
        project.Timelock.at(out["timelock"]),
    )


def test_deploy__timelock__owns_market_and_court_with_the_delay(deployed, deployer):
    out, market, court, timelock = deployed
    assert out["owner"] == out["timelock"] == timelock.address
    assert market.owner() == court.owner() == timelock.address
    assert market.pending_owner() == court.pending_owner() == ZERO
    assert timelock.get_minimum_delay() == DEFAULT_TIMELOCK_DELAY == 172_800
    for role in (timelock.PROPOSER_ROLE(), timelock.EXECUTOR_ROLE()):
        assert timelock.hasRole(role, deployer.address)
    assert not timelock.hasRole(timelock.DEFAULT_ADMIN_ROLE(), deployer.address)
    assert timelock.hasRole(timelock.DEFAULT_ADMIN_ROLE(), timelock.address)  # itself only


def test_deploy__timelock__direct_owner_call_reverts(deployed, deployer):
    _, market, court, _ = deployed
    with ape.reverts("ownable: caller is not the owner"):
        market.set_param(2, 120, sender=deployer)
    with ape.reverts("ownable: caller is not the owner"):
        court.set_param(2, 120, sender=deployer)  # accept_window


def test_deploy__timelock__scheduled_change_applies_only_after_the_delay(deployed, deployer, chain):
    _, market, court, timelock = deployed
    before = market.challenge_window()
    payload = market.set_param.encode_input(2, before + 60)
    op = (market.address, 0, payload, NO_PREDECESSOR, SALT)
    with ape.reverts("timelock_controller: insufficient delay"):
        timelock.schedule(*op, DEFAULT_TIMELOCK_DELAY - 1, sender=deployer)
    timelock.schedule(*op, DEFAULT_TIMELOCK_DELAY, sender=deployer)
    with ape.reverts("timelock_controller: operation is not ready"):
        timelock.execute(*op, sender=deployer)
    chain.pending_timestamp += DEFAULT_TIMELOCK_DELAY - 60
    chain.mine()
    with ape.reverts("timelock_controller: operation is not ready"):
        timelock.execute(*op, sender=deployer)
    assert market.challenge_window() == before
    chain.pending_timestamp += 120
    timelock.execute(*op, sender=deployer)
    assert market.challenge_window() == before + 60
    # the court's parameters alike
    payload = court.set_param.encode_input(2, 900)
    op = (court.address, 0, payload, NO_PREDECESSOR, SALT)
    timelock.schedule(*op, DEFAULT_TIMELOCK_DELAY, sender=deployer)
    chain.pending_timestamp += DEFAULT_TIMELOCK_DELAY + 1
    timelock.execute(*op, sender=deployer)
    assert court.accept_window() == 900


def test_deploy__no_timelock_delay__deployer_stays_owner(project, accounts):
    out = deploy_all(accounts[1], config=DeployConfig(timelock_delay=0))
    assert "timelock" not in out and out["owner"] == accounts[1].address
    assert project.Market.at(out["market"]).owner() == accounts[1].address
    assert project.Court.at(out["court"]).owner() == accounts[1].address
