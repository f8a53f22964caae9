"""Deploy and wire the verinfer contracts through ape (tests, demo, benchmarks, scripts).

Order: token (a fresh TestToken unless one is given) -> Market(token, min_stake,
fee_recipient) -> Court(market, bonds, fees) -> market.set_court(court) -> with a timelock
delay, the Timelock takes over both contracts' ownership (``install_timelock``). Amounts are
configured in whole tokens and scaled by the token's decimals, so the same defaults serve an
18-decimal test token and a 6-decimal stablecoin.

The Timelock (``contracts/Timelock.vy``, snekmate's TimelockController) makes every owner
action (``set_param``, ``set_fee_recipient``, ``register_model``, ownership) wait
``timelock_delay`` seconds between being scheduled in public and applying, so that users can
leave before a change they dislike applies. The deployer stays the only proposer and
executor. A deployment for real use keeps the default delay (``ape run deploy``, ``verinfer
deploy``: 2 days); dev chains and tests use 0, which keeps the deployer as the direct owner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TEST_TOKEN_NAME = "verinfer test USD"
TEST_TOKEN_SYMBOL = "vUSD"
TEST_TOKEN_DECIMALS = 18
DEFAULT_TIMELOCK_DELAY = 2 * 86_400  # seconds an owner action waits in a real deployment
ZERO_ADDRESS = "0x" + "00" * 20
ZERO_BYTES32 = b"\x00" * 32


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
    # seconds every owner action waits behind the Timelock; 0: no timelock, the deployer owns
    # market and court directly (dev chains, tests). Deploy commands default to 2 days.
    timelock_delay: int = 0


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
        The addresses: ``{"token", "market", "court", "owner"}``; ``owner`` is the Timelock
        when ``config.timelock_delay`` > 0 (then also ``"timelock"``), else the deployer.
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
    out = {
        "token": str(token_contract.address),
        "market": str(market.address),
        "court": str(court.address),
        "owner": str(deployer.address),
    }
    if cfg.timelock_delay > 0:
        timelock = install_timelock(deployer, [market, court], cfg.timelock_delay)
        out["timelock"] = out["owner"] = str(timelock.address)
    return out


def install_timelock(deployer: Any, owned: list[Any], delay: int) -> Any:
    """Deploy a Timelock (the deployer its only proposer and executor, no admin) and make it
    the owner of each contract of ``owned`` (snekmate's two-step ownership: the deployer
    transfers, the timelock accepts); then raise its minimum delay to ``delay`` seconds.

    The timelock starts with delay 0, so that its own first operation (accept every
    ownership, then ``update_delay(delay)``, which only the timelock may call) is scheduled
    and executed at once; from then on every operation waits ``delay``.
    """
    from ape import project

    if delay <= 0:
        raise ValueError("timelock delay must be positive")
    timelock = deploy_contract(
        project.Timelock, 0, [deployer.address], [deployer.address], ZERO_ADDRESS, sender=deployer
    )
    for contract in owned:
        contract.transfer_ownership(timelock.address, sender=deployer)
    targets = [str(c.address) for c in owned] + [str(timelock.address)]
    payloads = [c.accept_ownership.encode_input() for c in owned]
    payloads.append(timelock.update_delay.encode_input(delay))
    amounts = [0] * len(targets)
    args = (targets, amounts, payloads, ZERO_BYTES32, ZERO_BYTES32)
    timelock.schedule_batch(*args, 0, sender=deployer)
    timelock.execute_batch(*args, sender=deployer)
    for contract in owned:
        if contract.owner() != timelock.address:
            raise RuntimeError(f"deploy: the timelock does not own {contract.address}")
    if int(timelock.get_minimum_delay()) != delay:
        raise RuntimeError("deploy: the timelock's delay was not set")
    return timelock
