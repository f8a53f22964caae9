"""Deploy and wire the verinfer contracts through ape (tests, demo, benchmarks, scripts).

Order (see /tmp notes of the contracts, mirrored in docs): token (a fresh TestToken unless
one is given) -> Market(token, min_stake, fee_recipient) -> Court(market, bonds, fees)
-> market.set_court(court). Amounts are configured in whole tokens and scaled by the
token's decimals, so the same defaults serve an 18-decimal test token and a 6-decimal
stablecoin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TEST_TOKEN_NAME = "verinfer test USD"
TEST_TOKEN_SYMBOL = "vUSD"
TEST_TOKEN_DECIMALS = 18


@dataclass(frozen=True)
class DeployConfig:
    """Constructor parameters, in whole tokens (scaled by the token's decimals)."""

    min_stake: int = 1_000
    dispute_bond: int = 100
    appeal_bond: int = 300
    verifier_fee: int = 20
    no_show_penalty: int = 50
    audit_fee: int = 5
    fee_recipient: str | None = None  # default: the deployer


def deploy_contract(container: Any, *args: Any, sender: Any) -> Any:
    """Deploy `container` with `args` from `sender` and return the contract instance.

    ape decides whether to wait for a receipt from the node's ``eth_mining`` answer;
    Hardhat's automining node answers ``false``, so ape returns a receipt without the
    contract address. The receipt is then fetched by hash (it is already mined).
    """
    from ape import chain

    txn = container.constructor.serialize_transaction(*args, sender=sender)
    receipt = sender.call(txn)
    if not receipt.contract_address:
        receipt = chain.provider.get_receipt(receipt.txn_hash)
    if not receipt.contract_address:
        raise RuntimeError(f"{container.contract_type.name}: no contract created")
    return container.at(receipt.contract_address)


def deploy_all(
    deployer: Any, token: str | None = None, config: DeployConfig | None = None
) -> dict[str, str]:
    """Deploy the protocol with `deployer` (an ape account) and wire it together.

    Args:
        deployer: the account that deploys and owns the contracts.
        token: address of an existing ERC20; a fresh TestToken is deployed when None.
        config: constructor parameters; `DeployConfig()` defaults when None.

    Returns:
        The addresses: ``{"token", "market", "court", "owner"}``.
    """
    from ape import project

    cfg = config or DeployConfig()
    if token is None:
        token_contract = deploy_contract(
            project.TestToken,
            TEST_TOKEN_NAME,
            TEST_TOKEN_SYMBOL,
            TEST_TOKEN_DECIMALS,
            sender=deployer,
        )
    else:
        token_contract = project.TestToken.at(token)
    unit = 10 ** int(token_contract.decimals())
    market = deploy_contract(
        project.Market,
        token_contract.address,
        cfg.min_stake * unit,
        cfg.fee_recipient or deployer.address,
        sender=deployer,
    )
    court = deploy_contract(
        project.Court,
        market.address,
        cfg.dispute_bond * unit,
        cfg.appeal_bond * unit,
        cfg.verifier_fee * unit,
        cfg.no_show_penalty * unit,
        cfg.audit_fee * unit,
        sender=deployer,
    )
    market.set_court(court.address, sender=deployer)
    if market.court() != court.address or court.market() != market.address:
        raise RuntimeError("deploy: market and court are not wired to each other")
    return {
        "token": str(token_contract.address),
        "market": str(market.address),
        "court": str(court.address),
        "owner": str(deployer.address),
    }
