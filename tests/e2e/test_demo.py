"""`make demo`'s script, run as a new user runs it, on a fresh Anvil and on a Hardhat node: real
`verinfer node run` processes serve the clients' jobs, the cheater (dev/test setting
VERINFER_DEV_CHEAT_WEIGHTS) is slashed on the verdict of an honest node's process, and nothing
it started is left running."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from verinfer.node.devchain import dev_keys
from verinfer.node.localnet import CHEATER, NODE_A, NODE_B

ROOT = Path(__file__).resolve().parents[2]


def _left_running(logs: Path, port: str) -> list[str]:
    """Command lines of processes still running that the demo started: its chain (``--port``
    of its RPC URL), its Redis (files under ``logs``), its nodes and their Celery workers
    (keystores under ``logs``)."""
    left = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        cmd = " ".join(a.decode(errors="replace") for a in argv)
        if str(logs) in cmd or str(logs).encode() in env or f"--port {port} " in cmd + " ":
            left.append(cmd)
    return left


# `make demo` as a user runs it (SmolLM2 on Anvil), and the small model on Hardhat
@pytest.mark.parametrize(("chain", "model"), [("anvil", "smollm2"), ("hardhat", "tiny")])
def test_demo__nodes_serve__honest_verdict_slashes_the_cheater__all_stopped(chain, model):
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        cwd=ROOT,
        env={**os.environ, "CHAIN": chain, "DEMO_MODEL": model},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert {k: result[k] for k in ("jobs", "finalized", "disputes", "slashed")} == {
        "jobs": 4,
        "finalized": 4,
        "disputes": 1,
        "slashed": 1,
    }
    keys = dev_keys(8)
    node_a, node_b, cheater = (keys[i].address for i in (NODE_A, NODE_B, CHEATER))
    assert result["chain"] == chain
    assert result["nodes"] == {"node-a": node_a, "node-b": node_b, "cheater": cheater}
    # alice's jobs named node-a, bob's node-b: each was served by that node's process
    assert sorted(result["served_by"].values()) == sorted([node_a, node_a, node_b, node_b])
    assert result["verifier"] in (node_a, node_b) and result["verdict_valid"] is False
    assert result["slashed_node"] == cheater
    assert result["node_exit_codes"] == {"node-a": 0, "node-b": 0, "cheater": 0}
    transcript = "\n".join(lines)
    verifier = "node-a" if result["verifier"] == node_a else "node-b"
    # the verdict line comes from the honest verifier's own node log
    assert f"{verifier}'s log: pid=" in transcript and "valid=False kind=verdict" in transcript
    assert "NodeSlashed cheater: 2000 tokens (whole stake: True)" in transcript
    assert "disputed job 5: SLASHED" in transcript
    if model == "smollm2":  # real answers, in chat form; the cheater's variant answers wrong
        assert "model SmolLM2-135M-Instruct@gguf-b179c9523d0e6a0f-import1 id 0xee8b7c72" in (
            transcript
        )
        question = "'What is the capital of France? Answer in one sentence.'"
        assert (
            f"job 1 alice: {question}\n"
            "        served by node-a (digest ok): 'The capital of France is Paris.'"
        ) in transcript
        cheat = transcript.split(f"job 5 alice: {question}\n", 1)[1].splitlines()[0]
        assert cheat.startswith("        served by cheater: '") and "Paris" not in cheat
    logs = ROOT / ".verinfer" / f"demo-{chain}"
    assert "DEV CHEAT MODE" in (logs / "cheater.log").read_text()
    assert "DEV CHEAT" not in (logs / "node-a.log").read_text() + (logs / "node-b.log").read_text()
    port = re.search(r"chain http://127\.0\.0\.1:(\d+) ", transcript)
    assert port is not None
    assert _left_running(logs, port.group(1)) == []


def test_demo_interrupted_with_nodes_running__exits_130__nothing_left_running():
    demo = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        cwd=ROOT,
        env={**os.environ, "CHAIN": "anvil", "DEMO_MODEL": "tiny"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    try:
        assert demo.stdout is not None
        for line in demo.stdout:  # until the three nodes are up and the clients submit
            seen.append(line)
            if "] clients submit jobs" in line:
                break
        assert seen and "] clients submit jobs" in seen[-1], "".join(seen)
        demo.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = demo.communicate(timeout=180)
    finally:
        if demo.poll() is None:
            demo.kill()
    transcript = "".join(seen) + out
    assert demo.returncode == 130, transcript[-2000:] + err[-2000:]
    assert json.loads(transcript.strip().splitlines()[-1])["error"] == "interrupted"
    assert "demo: interrupted; every process it started is stopped" in err
    port = re.search(r"chain http://127\.0\.0\.1:(\d+) ", transcript)
    assert port is not None
    assert _left_running(ROOT / ".verinfer" / "demo-anvil", port.group(1)) == []
