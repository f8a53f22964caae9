"""`make demo`'s script, run as a new user runs it, on a fresh Anvil and on a Hardhat node."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("chain", ["anvil", "hardhat"])
def test_demo__finalizes_every_job_and_slashes_the_cheater(chain):
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        cwd=ROOT,
        env={**os.environ, "CHAIN": chain},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == {"jobs": 4, "finalized": 4, "disputes": 1, "slashed": 1}
    transcript = "\n".join(lines)
    assert "verifier node-" in transcript and "valid=False" in transcript
    assert "disputed job: SLASHED" in transcript
