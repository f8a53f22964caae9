"""``verinfer node stake | unstake | withdraw | serve | info``: an operator's chain calls.

They join the node helper's ``node`` group (``verinfer node run``, ``node status``) in cli.py.
"""

from __future__ import annotations

from typing import Any

import click

from verinfer.cli_common import Conn, chain_options, emit, table


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
    """On-chain state of a node: stake, locks, unbonding, served models, earnings, and its
    track record with its score per model (what routing clients see)."""
    from verinfer import operator

    data = operator.node_status(conn.client, address)
    data["record"] = _own_record(conn, data["node"])
    human = _human(conn, data)
    for r in data["record"]:
        human += (
            f"\n  record {r['model_id'][:10]}…: score {r['score']:.3f}, published "
            f"{r['published']}/{r['claimed']} claimed, missed {r['missed']}/{r['offered']} "
            f"offered, expired {r['expired']}, slashed {r['slashed']}, publish p50 "
            f"{r['publish_p50_s']}s"
        )
    emit(as_json, data, human)


# ---- track records (verinfer.indexer, verinfer.routing) ----
def _rows(conn: Conn, scored: list[Any]) -> list[list[Any]]:
    def secs(value: float | None) -> str:
        return "-" if value is None else f"{value:g}s"

    rows = []
    for s in scored:
        r = s.record
        rows.append(
            [
                r.node[:10] + "…",  # the full address in --json
                f"{s.score:.3f}" + (" (warm-up)" if s.explore else ""),
                f"{r.published}/{r.claimed}",
                f"{r.missed}/{r.offered}",
                r.expired,
                f"{r.disputed}/{r.slashed}",
                f"{secs(r.publish_p50_s)} / {secs(r.publish_p95_s)}",
                conn.fmt(r.price_per_token),
                conn.fmt(r.stake),
            ]
        )
    return rows


LIST_COLUMNS = [
    "node", "score", "published/claimed", "missed/offered", "expired", "disputed/slashed",
    "publish p50 / p95", "price/token", "stake",
]  # fmt: skip


@click.command("list")
@click.option("--model", "model", required=True, help="Model: name, name@revision or 0x id.")
@click.option("--max-price", help="Only nodes at or below this price per token (tokens).")
@click.option("--exclude", multiple=True, help="Leave this node out (repeatable).")
@click.option(
    "--weights", help="Score weights, e.g. reliability=0.7,latency=0.3 (docs/routing.md)."
)
@chain_options
def node_list(
    conn: Conn,
    as_json: bool,
    model: str,
    max_price: str | None,
    exclude: tuple[str, ...],
    weights: str | None,
) -> None:
    """Every node serving MODEL with its track record and score, best first."""
    from verinfer.chain_errors import ClientError
    from verinfer.routing import RoutePolicy, Weights, rank

    try:
        w = Weights.parse(weights) if weights else Weights()
    except ValueError as exc:
        raise ClientError(f"bad --weights: {exc}") from None
    policy = RoutePolicy(
        exclude=frozenset(e.lower() for e in exclude),
        max_price=conn.units(max_price) if max_price else None,
        weights=w,
    )
    mid = conn.client.resolve_model(model)
    scored = rank(conn.client.indexer().records(mid), policy)
    data = {"model_id": "0x" + mid.hex(), "nodes": [s.as_dict() for s in scored]}
    emit(as_json, data, lambda: table(f"nodes serving {model}", LIST_COLUMNS, _rows(conn, scored)))


def _own_record(conn: Conn, node: str) -> list[dict[str, Any]]:
    """``node``'s record and score for each model it has served or been offered."""
    from verinfer.routing import RoutePolicy, rank

    indexer = conn.client.indexer()
    out = []
    node = node.lower()
    for model_id in sorted({r.model_id for r in indexer.records() if r.node.lower() == node}):
        pool = rank(indexer.records(model_id), RoutePolicy())
        out += [s.as_dict() for s in pool if s.node.lower() == node]
    return out


OPERATOR_COMMANDS = (node_stake, node_unstake, node_withdraw, node_info, node_list)
