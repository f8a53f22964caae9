"""``verinfer dev up | down``: a local chain to try verinfer on."""

from __future__ import annotations

import click

from verinfer.cli_common import emit


@click.group()
def dev() -> None:
    """A local Anvil chain with the protocol deployed, a model registered, nodes staked."""


@dev.command("up")
@click.option("--port", type=int, help="RPC port (default: a free one).")
@click.option("--chain-id", default=31337, show_default=True, type=int)
@click.option("--challenge-window", default=60, show_default=True, type=int, help="Seconds.")
@click.option("--redis", is_flag=True, help="Also start a Redis for `verinfer node run`.")
@click.option(
    "--model",
    type=click.Choice(["smollm2", "tiny"]),
    default="smollm2",
    show_default=True,
    help="SmolLM2-135M-Instruct (imported on first use), or the small random test model.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def dev_up(
    port: int | None, chain_id: int, challenge_window: int, redis: bool, model: str, as_json: bool
) -> None:
    """Start Anvil, deploy, register a model, fund clients and stake nodes."""
    from verinfer import devnet
    from verinfer.cli_common import spinner

    with spinner(as_json, "starting anvil and deploying..."):
        s = devnet.up(port, chain_id, challenge_window, redis, model)
    from verinfer.web import DEFAULT_PORT

    web_url = f"http://127.0.0.1:{DEFAULT_PORT}/"  # the default of `verinfer web`
    human = (
        f"anvil pid {s['pid']} at {s['rpc_url']} (chain {s['chain_id']})\n"
        f"  market {s['market']}\n  court  {s['court']}\n  token  {s['token']}\n"
        f"  model  {s['model']['name']}@{s['model']['revision']} {s['model']['model_id']}\n"
        f"  clients {', '.join(s['clients'])} (test:1, test:2)\n"
        f"  nodes   {', '.join(s['nodes'])} (test:3, test:4)\n"
        + (f"  redis  pid {s['redis_pid']} {s['redis_url']}\n" if "redis_pid" in s else "")
        + f"  state  {s['home']}/dev.json\n"
        + f"  web    `verinfer web` serves the page at {web_url}"
    )
    emit(as_json, s, human)


@dev.command("down")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def dev_down(as_json: bool) -> None:
    """Stop what `dev up` started."""
    from verinfer import devnet

    data = devnet.down()
    names = ", ".join(f"{p['name']} (pid {p['pid']})" for p in data["stopped"]) or "nothing"
    emit(as_json, data, f"stopped {names}")
