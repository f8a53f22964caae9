"""Every chain command of the `verinfer` CLI through its --json output, on a `dev up` chain,
and every expected error as one line on stderr with exit code 1."""

from __future__ import annotations

import json
from typing import Any

from verinfer.jobs import JobRecord
from verinfer.models.manifest import MANIFEST_NAME, Manifest
from verinfer.models.tiny import tiny_model_path

from tests.cli.conftest import run_cli
from tests.client.roles import publish

UNIT = 10**18


def tiny(state: dict[str, Any]) -> str:
    """``name@revision`` of the dev chain's model (the name alone is ambiguous once a second
    revision is registered)."""
    return f"{state['model']['name']}@{state['model']['revision']}"


def on_dev_chain(state: dict[str, Any], fn: Any) -> Any:
    """Run ``fn(market, accounts)`` with ape connected to the dev chain (the node's part)."""
    from ape import accounts, networks, project

    with networks.parse_network_choice(state["network"]):
        return fn(project.Market.at(state["market"]), accounts.test_accounts)


def test_dev_up__state_file_and_running_chain(cli, state, dev_home):
    home, _ = dev_home
    assert json.loads((home / "dev.json").read_text()) == state
    assert state["network"] == f"ethereum:local:{state['rpc_url']}"
    assert len(state["clients"]) == 2 and len(state["nodes"]) == 2
    params = cli.json("market", "params")
    assert params["market"] == state["market"] and params["court"] == state["court"]
    assert params["token"] == state["token"] and params["chain_id"] == 31337
    assert params["market_params"]["challenge_window"] == 60
    assert params["court_params"]["dispute_bond"] == 100 * UNIT


def test_model_list_and_register(cli, state):
    models = cli.json("model", "list")["models"]
    assert [m["model_id"] for m in models] == [state["model"]["model_id"]]
    assert models[0]["nodes"] == {n: state["price_per_token"] for n in state["nodes"]}

    other = tiny_model_path(seed=1)
    manifest = Manifest.load(other / MANIFEST_NAME)
    data = cli.json("model", "register", str(other))
    assert data["registered"] is True
    assert data["model_id"] == "0x" + manifest.model_id.hex()
    listed = cli.json("model", "list")["models"]
    assert {m["model_id"] for m in listed} == {state["model"]["model_id"], data["model_id"]}
    line = cli.fails("model", "register", str(other))
    assert line == "verinfer: register model reverted: market: model exists"


def test_balance_show_deposit_withdraw(cli, state):
    before = cli.json("balance", "show")
    assert before["account"] == state["clients"][0]
    assert before["prepaid"] == 100 * UNIT and before["wallet"] == 900 * UNIT
    dep = cli.json("balance", "deposit", "12.5")
    assert dep["deposited"] == 12_500 * UNIT // 1000
    assert dep["prepaid"] == before["prepaid"] + dep["deposited"]
    assert dep["wallet"] == before["wallet"] - dep["deposited"]
    out = cli.json("balance", "withdraw", "2.5")
    assert out["withdrawn"] == 2_500 * UNIT // 1000
    assert out["prepaid"] == dep["prepaid"] - out["withdrawn"]
    other = cli.json("balance", "show", state["clients"][1])
    assert other["account"] == state["clients"][1] and other["prepaid"] == 100 * UNIT
    assert cli.fails("balance", "withdraw", "--claimable") == (
        "verinfer: nothing to withdraw: claimable balance is 0"
    )
    assert cli.fails("balance", "withdraw", "--claimable", "--to", "0x" + "11" * 20) == (
        "verinfer: nothing to withdraw: claimable balance is 0"
    )
    assert cli.fails("balance", "withdraw", "1", "--to", "0x" + "11" * 20) == (
        "verinfer: --to goes with --claimable (prepaid balance returns to the account)"
    )


def test_job_submit__escrow_below_every_nodes_price__warned_then_sent(cli, state):
    from decimal import Decimal

    price = state["price_per_token"]  # every dev node's price
    escrow = str(Decimal(price) / Decimal(10**18))  # one token's worth for 16 tokens
    result = cli(
        "job", "submit", tiny(state), "cheap", "--max-tokens", "16", "--max-payment", escrow
    )
    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"warning: no node would take this job: escrow {escrow} vUSD < 16 tokens x {escrow} vUSD "
        "(the cheapest node's price); nodes decline jobs that do not pay their price for every "
        "token"
    ]
    assert "submitted (escrow " in result.stdout


def test_job_submit_list_show_wait_dispute(cli, state):
    sub = cli.json(
        "job", "submit", tiny(state), "What is a GPU?", "--max-tokens", "6", "--seed", "3"
    )
    job_id = sub["job_id"]
    assert sub["max_payment"] == 6 * state["price_per_token"]
    assert sub["estimate"]["gas"] > 0 and sub["estimate"]["deposit_needed"] == 0
    listed = cli.json("job", "list")["jobs"]
    assert {"job_id": job_id, "status": "OPEN"}.items() <= listed[-1].items()
    assert cli.json("job", "show", str(job_id))["status"] == "OPEN"

    def serve(market: Any, accts: Any) -> None:
        logs = [lg for lg in market.JobSubmitted.range(0, 10_000) if lg.job_id == job_id]
        publish(market, accts[3], JobRecord.from_submitted(logs[0]), [7, 8, 9], 1)

    on_dev_chain(state, serve)
    waited = cli.json("job", "wait", str(job_id), "--timeout", "10")["results"]
    assert len(waited) == 1
    r = waited[0]
    assert r["job_id"] == job_id and r["status"] == "PUBLISHED"
    assert r["held"] and r["digest_ok"] and r["token_ids"] == [7, 8, 9]
    assert r["node"] == state["nodes"][0]
    assert r["cost"] == 3 * state["price_per_token"]
    assert isinstance(r["text"], str)

    assert cli.fails("job", "draw", str(job_id)) == (
        f"verinfer: job {job_id} has no dispute or audit: nothing to draw"
    )
    disp = cli.json("job", "dispute", str(job_id), "--no-draw")
    assert disp["job_id"] == job_id and disp["bond"] == 100 * UNIT
    # the dispute requested a draw and left it to others: nobody is assigned yet
    assert disp["phase"] == "DRAWING" and disp["draw_pending"] and disp["verifier"] is None
    assert disp["seed_block"] > 0 and not disp["drawn_by_us"]
    drawn = cli.json("job", "draw", str(job_id))  # anyone may, from the next block on
    assert drawn["verifier"] == state["nodes"][1] and drawn["drawn_by_us"]
    assert drawn["phase"] == "ASSIGNED" and drawn["seed_block"] == disp["seed_block"]
    assert cli.json("job", "show", str(job_id))["status"] == "VERIFYING"
    assert cli.fails("job", "dispute", str(job_id)) == (
        f"verinfer: job {job_id} cannot be disputed: it is VERIFYING, not PUBLISHED"
    )
    drawn = cli("job", "draw", str(job_id))  # someone drew already: nothing sent
    assert drawn.exit_code == 0, drawn.stderr
    assert drawn.stdout.strip() == (
        f"job {job_id}: verifier {state['nodes'][1]} drawn already (by a keeper or anyone)"
    )
    assert cli.fails("job", "appeal", str(job_id)) == (
        f"verinfer: job {job_id} has no verdict to appeal: its dispute is ASSIGNED"
    )


def test_job_wait__many_jobs_and_timeout(cli, state):
    ids = [
        cli.json(
            "job", "submit", tiny(state), "--chat", json.dumps([{"role": "user", "content": c}])
        )["job_id"]
        for c in ("a", "b")
    ]
    line = cli.fails("job", "wait", *map(str, ids), "--timeout", "0.5")
    assert line == (
        f"verinfer: timed out after 0.5s waiting for jobs to be published: "
        f"{ids[0]} (OPEN), {ids[1]} (OPEN)"
    )


def test_node_stake_unstake_withdraw_info(cli, state):
    info = cli.json("node", "info")
    assert info["node"] == state["nodes"][0] and info["stake"] == 2_000 * UNIT
    assert info["serves"] == {state["model"]["model_id"]: state["price_per_token"]}
    wallet = cli.json("balance", "show", state["nodes"][0])["wallet"]
    assert wallet == 0
    assert cli.fails("node", "stake", "10") == (
        "verinfer: insufficient token balance: wallet holds 0 vUSD, stake needs 10 vUSD"
    )
    un = cli.json("node", "unstake", "5")
    assert un["unbonding"] == 5 * UNIT and un["stake"] == 1_995 * UNIT
    assert cli.fails("node", "withdraw").startswith("verinfer: nothing to withdraw yet")
    on_dev_chain(state, lambda m, a: _time_travel(7 * 86_400 + 1))
    out = cli.json("node", "withdraw")
    assert out["unbonded"] == 5 * UNIT and out["unbonding"] == 0
    back = cli.json("balance", "show", state["nodes"][0])
    assert back["wallet"] == 5 * UNIT
    model_id = state["model"]["model_id"]
    restaked = cli.json("node", "stake", "5", "--model", model_id, "--price", "0.002")
    assert restaked["stake"] == 2_000 * UNIT
    assert restaked["serves"] == {model_id: 2 * UNIT // 1000}
    other = cli.json("node", "info", state["nodes"][1], "--account", "test:1")
    assert other["node"] == state["nodes"][1] and other["registered"]


def _time_travel(seconds: int) -> None:
    from ape import chain

    chain.provider.make_request("evm_increaseTime", [seconds])
    chain.provider.make_request("evm_mine", [])


def test_errors__one_line_and_exit_1(cli, state, tmp_path):
    assert cli.fails("job", "show", "999") == (
        f"verinfer: job not found: no job 999 in market {state['market']}"
    )
    assert cli.fails("job", "submit", "nosuch", "hi") == (
        "verinfer: unknown model: 'nosuch' is not registered in this market"
    )
    assert cli.fails("market", "params", "--chain-id", "5") == (
        "verinfer: wrong network: connected to chain 31337, expected 5"
    )
    assert cli.fails("market", "params", "--market", state["clients"][0]) == (
        f"verinfer: contracts not deployed there: no code at market {state['clients'][0]}"
    )
    assert cli.fails(
        "job", "submit", tiny(state), "hi", "--max-payment", "1000000", "--account", "test:6"
    ) == (
        "verinfer: insufficient balance: job escrows 1000000 vUSD, prepaid 0 vUSD + wallet "
        "0 vUSD is short"
    )
    assert cli.fails("balance", "deposit", "1", "--account", "test:6") == (
        "verinfer: insufficient token balance: wallet holds 0 vUSD, deposit needs 1 vUSD"
    )
    assert cli.fails("balance", "deposit", "abc") == "verinfer: not an amount: 'abc'"
    assert cli.fails(
        "market", "params", "--network", "ethereum:nonesuch", "--market", state["market"]
    ).startswith("verinfer: unknown network 'ethereum:nonesuch'")
    empty = tmp_path / "empty-home"
    assert cli.fails("market", "params", VERINFER_HOME=str(empty)).startswith(
        "verinfer: no deployment: run `verinfer dev up`"
    )
    assert cli.fails("dev", "down", VERINFER_HOME=str(empty)) == (
        f"verinfer: no dev chain running (no {empty / 'dev.json'})"
    )
    assert cli.fails("dev", "up").startswith("verinfer: a dev chain is already running")


def test_errors__real_process__no_chain_reachable__one_line_no_traceback(state, tmp_path):
    dead = "ethereum:local:http://127.0.0.1:9"
    proc = run_cli(
        tmp_path, "market", "params", "--json", env={"VERINFER_NETWORK": dead,
                                                     "VERINFER_MARKET": state["market"]}
    )  # fmt: skip
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"verinfer: no chain reachable at {dead}: No node found and 'ape-node' is unable to "
        "start one."
    ]


def test_deploy__timelock_owns_the_contracts__or_no_timelock(cli, state):
    """`verinfer deploy` on the dev chain's network (a second deployment there)."""
    out = cli.json("deploy", "--network", state["network"], "--timelock-delay", "3600")
    assert out["timelock"] == out["owner"] and out["timelock_delay"] == 3600
    assert out["market"] != state["market"] and out["chain_id"] == 31337

    def owners(market: Any, accts: Any) -> tuple[str, str, int]:
        from ape import project

        m, c = project.Market.at(out["market"]), project.Court.at(out["court"])
        return m.owner(), c.owner(), project.Timelock.at(out["timelock"]).get_minimum_delay()

    assert on_dev_chain(state, owners) == (out["timelock"], out["timelock"], 3600)
    plain = cli.json("deploy", "--network", state["network"], "--timelock-delay", "0")
    assert "timelock" not in plain and plain["owner"] == on_dev_chain(
        state, lambda m, a: str(a[0].address)
    )
    assert cli.fails("deploy", "--network", "nowhere:at:all").startswith(
        "verinfer: unknown network 'nowhere:at:all': "
    )


def test_bad_input__refused_before_anything_is_paid(cli, state):
    """What every node would skip is refused by the CLI, one line, exit 1, nothing sent."""
    client = state["clients"][0]
    before = cli.json("balance", "show", client)
    jobs_before = cli.json("job", "list")["jobs"]
    chat = ["--chat", json.dumps([{"role": "robot", "content": "hi"}])]
    no_content = ["--chat", json.dumps([{"role": "user", "content": ""}])]
    cases = {
        ("x" * 9_000,): "input is 9,001 bytes; a job's input holds at most 8,000 bytes",
        ("",): "prompt is empty",
        tuple(chat): "chat message 0 has an unknown role 'robot' (use system, user, assistant)",
        tuple(no_content): "chat message 0 has no content",
        ("1 " * 3_000, "--max-tokens", "4096"): (
            "prompt of 6000 tokens + max_tokens 4096 exceeds the model context of 8192 tokens"
        ),
        ("\udcff",): "the prompt is not valid Unicode text",  # an undecodable argv byte
    }
    for args, reason in cases.items():
        assert cli.fails("job", "submit", tiny(state), *args) == f"verinfer: bad input: {reason}"
    assert cli.json("balance", "show", client) == before
    assert cli.json("job", "list")["jobs"] == jobs_before
