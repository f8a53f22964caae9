"""``verinfer node stake | unstake | withdraw | serve | info``: an operator's chain calls.

They join the node helper's ``node`` group (``verinfer node run``, ``node status``) in cli.py.
"""

from __future__ import annotations

from typing import Any

import click

from verinfer.cli_common import Conn, chain_options, emit


def _human(conn: Conn, d: dict[str, Any]) -> str:
    serves = ", ".join(f"{m[:10]}… at {conn.fmt(p)}/token" for m, p in d["serves"].items())
    return (
        f"node {d['node']}: stake {conn.fmt(d['stake'])} (locked {conn.fmt(d['locked'])}), "
        f"unbonding {conn.fmt(d['unbonding'])}, claimable {conn.fmt(d['claimable'])}"
        + (", SLASHED" if d["slashed"] else "")
        + (f"\n  serves {serves}" if serves else "")
    )


@click.command("stake")
@click.argument("amount")
@click.option("--endpoint", default="", help="Public endpoint, recorded when registering.")
@click.option("--model", help="Also serve this model (name, name@revision or 0x id).")
@click.option("--price", help="Price per output token in tokens (with --model).")
@chain_options(default_account="test:3")
def node_stake(
    conn: Conn, as_json: bool, amount: str, endpoint: str, model: str | None, price: str | None
) -> None:
    """Stake AMOUNT tokens (registering the node first if needed)."""
    from verinfer import operator

    data = operator.stake(conn.client, conn.units(amount), endpoint)
    if model is not None:
        data = operator.serve(conn.client, model, conn.units(price or "0.001"))
    emit(as_json, data, _human(conn, data))


@click.command("unstake")
@click.argument("amount")
@chain_options(default_account="test:3")
def node_unstake(conn: Conn, as_json: bool, amount: str) -> None:
    """Start unbonding AMOUNT tokens of free stake (withdraw after the unbonding delay)."""
    from verinfer import operator

    data = operator.unstake(conn.client, conn.units(amount))
    emit(as_json, data, _human(conn, data))


@click.command("withdraw")
@click.option("--to", "to", help="Pay to this address (e.g. when the node's own is blocked).")
@chain_options(default_account="test:3")
def node_withdraw(conn: Conn, as_json: bool, to: str | None) -> None:
    """Withdraw unbonded stake that is ready and claimable earnings."""
    from verinfer import operator

    data = operator.withdraw(conn.client, to)
    emit(
        as_json,
        data,
        f"withdrew {conn.fmt(data['unbonded'])} stake, {conn.fmt(data['earnings'])} earnings\n"
        + _human(conn, data),
    )


@click.command("info")
@click.argument("address", required=False)
@chain_options(default_account="test:3")
def node_info(conn: Conn, as_json: bool, address: str | None) -> None:
    """On-chain state of a node: stake, locks, unbonding, served models, earnings."""
    from verinfer import operator

    data = operator.node_status(conn.client, address)
    emit(as_json, data, _human(conn, data))


OPERATOR_COMMANDS = (node_stake, node_unstake, node_withdraw, node_info)
