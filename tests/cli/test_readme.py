"""The README's "Submitting from the shell" and "Submitting from Python" blocks, run as
written on a fresh `verinfer dev up` chain, with the test playing the node's part."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from verinfer.jobs import JobRecord

from tests.cli.test_chain_cli import on_dev_chain
from tests.client.roles import publish

README = Path(__file__).resolve().parents[2] / "README.md"


def blocks(section: str, lang: str) -> list[str]:
    """The ```lang code blocks of README section ``section``."""
    text = README.read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", body, flags=re.S)


def node_serves(state: dict[str, Any], job_ids: list[int], tokens: list[int]) -> None:
    """Node test:3 claims and publishes ``tokens`` for each job (what `node run` would do)."""

    def serve(market: Any, accts: Any) -> None:
        for log in market.JobSubmitted.range(0, 10_000):
            if log.job_id in job_ids:
                publish(market, accts[3], JobRecord.from_submitted(log), tokens, 0)

    on_dev_chain(state, serve)


def test_readme_shell_block__every_command_succeeds(cli, state):
    (block,) = blocks("Submitting from the shell", "bash")
    lines = [shlex.split(line) for line in block.strip().splitlines()]
    assert lines[0] == ["verinfer", "dev", "up"] and lines[-1] == ["verinfer", "dev", "down"]
    outputs = {}
    for argv in lines[1:-1]:  # `dev up` / `dev down` are the fixture's own commands
        assert argv[0] == "verinfer"
        if argv[1:3] == ["job", "wait"]:
            node_serves(state, [int(argv[3])], [11, 12, 13])
        outputs[" ".join(argv[1:3])] = cli.json(*argv[1:])
    assert outputs["job submit"]["job_id"] == 1
    (waited,) = outputs["job wait"]["results"]
    assert waited["held"] and waited["digest_ok"] and waited["token_ids"] == [11, 12, 13]
    assert outputs["job show"]["status"] == "PUBLISHED"
    assert outputs["job dispute"]["verifier"] == state["nodes"][1]
    assert [j["status"] for j in outputs["job list"]["jobs"]] == ["VERIFYING"]
    assert outputs["balance deposit"]["deposited"] == 10 * 10**18
    assert outputs["node info"]["node"] == state["nodes"][0]


def test_readme_python_blocks__submit_then_wait_and_dispute(
    cli, state, dev_home, monkeypatch, capsys
):
    monkeypatch.setenv("VERINFER_HOME", str(dev_home[0]))
    first, second = blocks("Submitting from Python", "python")
    namespace: dict[str, Any] = {}
    exec(compile(first, "README.md (python 1)", "exec"), namespace)
    handles = namespace["handles"]
    assert namespace["estimate"].max_payment == 16 * state["price_per_token"]
    assert [h.record.client for h in handles] == [state["clients"][0]] * 2

    node_serves(state, [h.job_id for h in handles], [21, 22])
    exec(compile(second, "README.md (python 2)", "exec"), namespace)
    results = namespace["results"]
    assert [r.job_id for r in results] == [h.job_id for h in handles]
    assert all(r.held and r.digest_ok and r.token_ids == [21, 22] for r in results)
    printed = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in printed] == [str(h.job_id) for h in handles]
    assert namespace["dispute"]["job_id"] == handles[0].job_id
