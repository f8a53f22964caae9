"""``verinfer deploy``: deploy the protocol on any network ape reaches, its parameters behind
a Timelock (``deploy.install_timelock``)."""

from __future__ import annotations

from typing import Any

import click

from verinfer.chain_errors import ClientError
from verinfer.cli_common import emit, enter_network, spinner
from verinfer.deploy import DEFAULT_TIMELOCK_DELAY


@click.command("deploy")
@click.option("--network", envvar="VERINFER_NETWORK", required=True, help="ape network choice.")
@click.option(
    "--account",
    envvar="VERINFER_DEPLOYER",
    help="Deployer: ape keystore alias (passphrase in $VERINFER_PASSPHRASE); test:0 on local.",
)
@click.option(
    "--token", envvar="VERINFER_TOKEN", help="Payment ERC20 (local: a fresh TestToken if unset)."
)
@click.option(
    "--timelock-delay",
    type=click.IntRange(min=0),
    default=DEFAULT_TIMELOCK_DELAY,
    show_default=True,
    help="Seconds every owner action (set_param...) waits behind the Timelock; 0: no timelock, "
    "the deployer owns market and court directly (dev chains only).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for agents and scripts).")
def deploy(
    network: str, account: str | None, token: str | None, timelock_delay: int, as_json: bool
) -> None:
    """Deploy token (local), market and court, wire them, install the Timelock as owner."""
    ctx = enter_network(network)
    try:
        with spinner(as_json, "deploying..."):
            data = deploy_on_connected(account, token, timelock_delay)
    finally:
        ctx.__exit__(None, None, None)
    owner = (
        f"timelock {data['timelock']} (delay {timelock_delay} s)"
        if timelock_delay
        else f"deployer {data['owner']} (no timelock)"
    )
    emit(
        as_json,
        data,
        f"market {data['market']}\ncourt  {data['court']}\ntoken  {data['token']}\nowner  {owner}",
    )


def deploy_on_connected(account: str | None, token: str | None, timelock_delay: int) -> Any:
    """On the connected ape network: deploy with ``account`` (default test:0 on a local
    network), ``token`` (required off local networks) and the timelock delay; returns the
    addresses with ``chain_id``, ``network`` and ``timelock_delay``."""
    from ape import chain

    from verinfer.chain_errors import guard
    from verinfer.client import resolve_account
    from verinfer.deploy import DeployConfig, deploy_all

    net = chain.provider.network
    local = net.name == "local"
    if not local and not account:
        raise ClientError("give --account (or $VERINFER_DEPLOYER) on a live network")
    if not local and not token:
        raise ClientError("give --token (or $VERINFER_TOKEN), the payment ERC20, on a live network")
    deployer = resolve_account(account or "test:0")
    with guard("deploy"):
        addresses = deploy_all(
            deployer, token=token, config=DeployConfig(timelock_delay=timelock_delay)
        )
    return {
        **addresses,
        "chain_id": int(chain.chain_id),
        "network": f"{net.choice}:{chain.provider.name}",
        "timelock_delay": timelock_delay,
    }
