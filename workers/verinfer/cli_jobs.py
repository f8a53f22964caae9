"""``verinfer job | balance | market``: a client's commands."""

from __future__ import annotations

import json
from typing import Any

import click

from verinfer.chain_errors import ClientError
from verinfer.cli_common import Conn, chain_options, emit, spinner, table


@click.group()
def job() -> None:
    """Submit jobs, follow them, dispute their results."""


def _result_text(conn: Conn, r: dict[str, Any]) -> str:
    lines = [f"job {r['job_id']}: {r['status']}" + (f" by {r['node']}" if r["held"] else "")]
    if r["held"] or r["token_ids"]:
        lines.append(f"  text:    {r['text']!r}")
        lines.append(f"  tokens:  {len(r['token_ids'])} (finish reason {r['finish_reason']})")
        lines.append(f"  digest:  {r['digest']} ({'checks' if r['digest_ok'] else 'MISMATCH'})")
        lines.append(f"  cost:    {conn.fmt(r['cost'])}, refund {conn.fmt(r['refund'])}")
    return "\n".join(lines)


@job.command("submit")
@click.argument("model")
@click.argument("prompt", required=False)
@click.option("--chat", help='Chat messages as JSON: [{"role": "user", "content": "..."}].')
@click.option("--max-tokens", default=64, show_default=True, type=int)
@click.option("--temperature", default=0.0, show_default=True, type=float)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--max-payment", help="Escrow in tokens (default: max tokens x highest price).")
@click.option("--node", help="Preferred node (it alone may claim during the exclusive window).")
@click.option("--wait", "wait_s", type=float, help="Then wait up to this many seconds.")
@click.option(
    "--route",
    is_flag=True,
    help="Choose the node by its track record and fail over until served (waits, up to "
    "--wait or 600 s; docs/routing.md).",
)
@click.option(
    "--private",
    is_flag=True,
    help="Encrypt the prompt to the node's registered key (--node, else the node with a valid "
    "key that its track record ranks first); only this machine can read the answer "
    "(docs/privacy.md).",
)
@chain_options
def job_submit(
    conn: Conn,
    as_json: bool,
    model: str,
    prompt: str | None,
    chat: str | None,
    max_tokens: int,
    temperature: float,
    seed: int,
    max_payment: str | None,
    node: str | None,
    wait_s: float | None,
    route: bool,
    private: bool,
) -> None:
    """Submit a job for MODEL (name, name@revision or 0x id) on PROMPT (or --chat)."""
    messages = None
    if chat is not None:
        try:
            messages = json.loads(chat)
        except json.JSONDecodeError as exc:
            raise ClientError(f"--chat is not JSON: {exc}") from None
    if (prompt is None) == (messages is None):
        raise ClientError("give a PROMPT or --chat, not both and not neither")
    kwargs: dict[str, Any] = {
        "prompt": prompt,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
        "max_payment": conn.units(max_payment) if max_payment else None,
        "node": node,
    }
    client = conn.client
    if route:
        _submit_routed(conn, as_json, model, kwargs, wait_s, node, private)
        return
    if private:  # refused here, before anything is paid, if the node has no valid key
        from verinfer.private_jobs import require_key

        kwargs["node"] = node or client.private_node(model)
        require_key(client.market, kwargs["node"])
    est = client.estimate(model, **kwargs)
    if not as_json:
        click.echo(
            f"price {conn.fmt(est.price_per_token)}/token, escrow {conn.fmt(est.max_payment)}"
            + (f" (deposits {conn.fmt(est.deposit_needed)})" if est.deposit_needed else "")
            + f", gas ~{est.gas} (fee ~{est.fee_wei / 1e18:.2e} ETH)"
        )
    if est.warning:  # sent all the same: the escrow comes back by a cancel after the window
        click.echo(f"warning: {est.warning}", err=True)
    with spinner(as_json, "sending the job..."):
        handle = client.submit(model, **kwargs, private=private)
    data: dict[str, Any] = {
        "job_id": handle.job_id,
        "model_id": "0x" + handle.record.model_id.hex(),
        "client": client.address,
        "max_payment": handle.record.max_payment,
        "private": private,
        "node": handle.record.preferred_node,
        "estimate": {
            "price_per_token": est.price_per_token,
            "deposit_needed": est.deposit_needed,
            "approve_needed": est.approve_needed,
            "gas": est.gas,
            "gas_price": est.gas_price,
        },
    }
    if wait_s is not None:
        with spinner(as_json, f"waiting for job {handle.job_id}'s result..."):
            data["result"] = handle.wait(timeout=wait_s).as_dict()
    human = f"job {handle.job_id} submitted (escrow {conn.fmt(handle.record.max_payment)})"
    if private:
        human += f", private to node {handle.record.preferred_node}"
    if "result" in data:
        human += "\n" + _result_text(conn, data["result"])
    emit(as_json, data, human)


def _submit_routed(
    conn: Conn,
    as_json: bool,
    model: str,
    kwargs: dict[str, Any],
    wait_s: float | None,
    node: str | None,
    private: bool,
) -> None:
    """``job submit --route``: the node by its track record, failover until served."""
    from verinfer.routing import RoutePolicy

    if node or private:
        raise ClientError("--route chooses the node itself: drop --node and --private")
    kwargs = {k: v for k, v in kwargs.items() if k != "node"}

    def say(line: str) -> None:
        if not as_json:
            click.echo(line, err=True)

    with spinner(as_json, "routing the job..."):
        routed = conn.client.submit_routed(
            model, policy=RoutePolicy(), timeout=wait_s or 600.0, on_event=say, **kwargs
        )
    data = routed.as_dict()
    if not routed.served:
        raise ClientError(
            f"job not served after {len(routed.attempts)} attempt(s), every escrow refunded: "
            + ", ".join(f"job {a.job_id} {a.outcome}" for a in routed.attempts)
        )
    human = f"job {data['job_id']} served by node {data['node']}"
    if len(routed.attempts) > 1:
        human += f" after {len(routed.attempts) - 1} failover(s)"
    emit(as_json, data, human + "\n" + _result_text(conn, data["result"]))


@job.command("show")
@click.argument("job_id", type=int)
@chain_options
def job_show(conn: Conn, as_json: bool, job_id: int) -> None:
    """Show a job: status, node, result, digest check, cost."""
    r = conn.client.job(job_id).result().as_dict()
    emit(as_json, r, _result_text(conn, r))


@job.command("wait")
@click.argument("job_ids", type=int, nargs=-1, required=True)
@click.option("--timeout", default=120.0, show_default=True, type=float)
@click.option("--final", is_flag=True, help="Wait for payment/refund (after the challenge window).")
@chain_options
def job_wait(
    conn: Conn, as_json: bool, job_ids: tuple[int, ...], timeout: float, final: bool
) -> None:
    """Wait for one or more jobs' results (one log poll loop for all of them)."""
    handles = [conn.client.job(i) for i in job_ids]
    what = "final" if final else "published"
    with spinner(as_json, f"waiting for {len(handles)} job(s) to be {what}..."):
        results = [r.as_dict() for r in conn.client.wait_many(handles, timeout, final)]
    emit(
        as_json,
        {"results": results},
        "\n".join(_result_text(conn, r) for r in results),
    )


def _draw_text(data: dict[str, Any]) -> str:
    """What a draw gave (or that it is still pending), one line."""
    by = "drawn by you" if data.get("drawn_by_us") else "drawn already (by a keeper or anyone)"
    if data["draw_pending"]:
        return (
            f"draw pending (seed block {data['seed_block']}): run `verinfer job draw "
            f"{data['job_id']}` once a later block exists (nodes' keepers draw too)"
        )
    if data["phase"] in ("ASSIGNED", "ACCEPTED") and data["verifier"]:
        return f"verifier {data['verifier']} {by}"
    if data["phase"] == "APPEALED":
        return f"panel {', '.join(data['panel'])} {by}, voting"
    if data["phase"] == "UNRESOLVED":
        return "no node could be drawn: the dispute settles as valid, bond returned"
    return f"dispute is {data['phase']}"


@job.command("dispute")
@click.argument("job_id", type=int)
@click.option("--no-draw", is_flag=True, help="Leave the verifier's draw to others.")
@click.option("--timeout", default=120.0, show_default=True, type=float, help="For the draw.")
@chain_options
def job_dispute(conn: Conn, as_json: bool, job_id: int, no_draw: bool, timeout: float) -> None:
    """Dispute a published result (bond from the prepaid balance), then draw its verifier
    (from the next block on), who re-executes it."""
    with spinner(as_json, "disputing..."):
        data = conn.client.dispute(job_id, draw=not no_draw, timeout=timeout)
    emit(
        as_json,
        data,
        f"job {job_id} disputed (bond {conn.fmt(data['bond'])}); {_draw_text(data)}",
    )


@job.command("draw")
@click.argument("job_id", type=int)
@click.option("--timeout", default=120.0, show_default=True, type=float)
@chain_options
def job_draw(conn: Conn, as_json: bool, job_id: int, timeout: float) -> None:
    """Draw the pending verifier or appeal panel of JOB_ID (anyone may, from the block after
    the dispute, audit or appeal on)."""
    with spinner(as_json, "drawing..."):
        data = {"job_id": job_id, **conn.client.draw(job_id, timeout=timeout)}
    emit(as_json, data, f"job {job_id}: {_draw_text(data)}")


@job.command("appeal")
@click.argument("job_id", type=int)
@click.option("--no-draw", is_flag=True, help="Leave the panel's draw to others.")
@click.option("--timeout", default=120.0, show_default=True, type=float, help="For the draw.")
@chain_options
def job_appeal(conn: Conn, as_json: bool, job_id: int, no_draw: bool, timeout: float) -> None:
    """Appeal the verdict on JOB_ID to a panel of 3 nodes (bond from the prepaid balance: the
    dispute bond for the accused node, the appeal bond otherwise), then draw the panel."""
    with spinner(as_json, "appealing..."):
        data = conn.client.appeal(job_id, draw=not no_draw, timeout=timeout)
    if not data["draw_pending"] and data["phase"] == "VERDICT":
        what = "no node left for a panel: the appeal is void, bond returned, window open again"
    else:
        what = _draw_text(data)
    emit(as_json, data, f"job {job_id} appealed (bond {conn.fmt(data['bond'])}); {what}")


@job.command("list")
@click.option("--client", "client_addr", help="Whose jobs (default: the account's).")
@chain_options
def job_list(conn: Conn, as_json: bool, client_addr: str | None) -> None:
    """List the jobs a client submitted, with their status."""
    rows = []
    for h in conn.client.jobs(client_addr):
        rows.append(
            {
                "job_id": h.job_id,
                "status": h.status.name,
                "model_id": "0x" + h.record.model_id.hex(),
                "node": h.record.node,
                "max_payment": h.record.max_payment,
                "output_tokens": h.record.output_tokens,
            }
        )
    emit(
        as_json,
        {"client": client_addr or conn.client.address, "jobs": rows},
        lambda: table(
            "jobs",
            ["id", "status", "model", "node", "escrow", "tokens"],
            [
                [
                    r["job_id"],
                    r["status"],
                    r["model_id"][:10] + "…",
                    r["node"][:10] + "…",
                    conn.fmt(r["max_payment"]),
                    r["output_tokens"],
                ]
                for r in rows
            ],
        ),
    )


# ---- balance ----
@click.group()
def balance() -> None:
    """The prepaid balance that pays for jobs and dispute bonds."""


def _balance_data(conn: Conn, who: str | None = None) -> dict[str, Any]:
    b = conn.client.balances(who)
    return {
        "account": who or conn.client.address,
        "wallet": b.wallet,
        "prepaid": b.prepaid,
        "claimable": b.claimable,
        "allowance": b.allowance,
        "token": conn.client.token.address,
        "decimals": conn.decimals,
    }


def _balance_human(conn: Conn, d: dict[str, Any]) -> str:
    return (
        f"{d['account']}: wallet {conn.fmt(d['wallet'])}, prepaid {conn.fmt(d['prepaid'])}, "
        f"claimable {conn.fmt(d['claimable'])}"
    )


@balance.command("show")
@click.argument("address", required=False)
@chain_options
def balance_show(conn: Conn, as_json: bool, address: str | None) -> None:
    """Wallet, prepaid and claimable tokens of ADDRESS (default: the account)."""
    d = _balance_data(conn, address)
    emit(as_json, d, _balance_human(conn, d))


@balance.command("deposit")
@click.argument("amount")
@chain_options
def balance_deposit(conn: Conn, as_json: bool, amount: str) -> None:
    """Deposit AMOUNT tokens into the prepaid balance (approves the market if needed)."""
    units = conn.units(amount)
    with spinner(as_json, "depositing..."):
        conn.client.deposit(units)
    d = {**_balance_data(conn), "deposited": units}
    emit(as_json, d, _balance_human(conn, d))


@balance.command("withdraw")
@click.argument("amount", required=False)
@click.option("--claimable", is_flag=True, help="Withdraw claimable credits instead.")
@click.option(
    "--to", "to", help="With --claimable: pay them to this address (e.g. a blocked account)."
)
@chain_options
def balance_withdraw(
    conn: Conn, as_json: bool, amount: str | None, claimable: bool, to: str | None
) -> None:
    """Withdraw AMOUNT (default: all) of the prepaid balance, or --claimable credits."""
    if to is not None and not claimable:
        raise ClientError("--to goes with --claimable (prepaid balance returns to the account)")
    with spinner(as_json, "withdrawing..."):
        if claimable:
            units = conn.client.collect(to)
        else:
            prepaid = conn.client.balances().prepaid
            units = conn.units(amount) if amount else prepaid
            conn.client.withdraw(units)
    d = {**_balance_data(conn), "withdrawn": units, "to": to or conn.client.address}
    emit(as_json, d, _balance_human(conn, d))


# ---- market ----
@click.group()
def market() -> None:
    """The market's addresses and parameters."""


MARKET_PARAMS = [
    "fee_bps",
    "audit_share_bps",
    "challenge_window",
    "exclusive_window",
    "min_stake",
    "collateral_bps",
    "expire_penalty_bps",
    "unbonding_delay",
]
COURT_PARAMS = [
    "dispute_bond",
    "appeal_bond",
    "accept_window",
    "verdict_window",
    "appeal_window",
    "vote_window",
    "verifier_fee",
    "no_show_penalty",
    "slash_challenger_bps",
    "slash_verifier_bps",
    "audit_rate_bps",
    "audit_fee",
]


TOKEN_PARAMS = frozenset(
    {"min_stake", "dispute_bond", "appeal_bond", "verifier_fee", "no_show_penalty", "audit_fee"}
)


def _param_text(conn: Conn, name: str, value: int) -> str:
    """A parameter as a person reads it: token amounts in tokens, basis points as a percentage,
    windows and delays in seconds (``--json`` keeps the raw integers)."""
    if name in TOKEN_PARAMS:
        return conn.fmt(value)
    if name.endswith("_bps"):
        return f"{value} bps ({value / 100:g} %)"
    if name.endswith(("_window", "_delay")):
        return f"{value} s"
    return str(value)


@market.command("params")
@chain_options
def market_params(conn: Conn, as_json: bool) -> None:
    """Addresses, chain and every market and court parameter."""
    c = conn.client
    data = {
        "network": conn.network,
        "chain_id": c.chain_id,
        "market": c.market.address,
        "court": c.court.address,
        "token": c.token.address,
        "symbol": conn.symbol,
        "decimals": conn.decimals,
        "market_params": {p: int(getattr(c.market, p)()) for p in MARKET_PARAMS},
        "court_params": {p: int(getattr(c.court, p)()) for p in COURT_PARAMS},
    }
    rows = [["market", k, _param_text(conn, k, v)] for k, v in data["market_params"].items()]
    rows += [["court", k, _param_text(conn, k, v)] for k, v in data["court_params"].items()]
    emit(
        as_json,
        data,
        lambda: table(
            f"market {c.market.address} on chain {c.chain_id}", ["contract", "param", "value"], rows
        ),
    )
