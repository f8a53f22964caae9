"""CLI fixtures: one `verinfer dev up` (a real background Anvil on a free port) per module,
with its state in a temporary VERINFER_HOME; commands run in-process through click's runner
(ape is imported once) and, where the process matters, as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

ROOT = Path(__file__).resolve().parents[2]


def run_cli(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m verinfer.cli ARGS` as a real process with VERINFER_HOME=home."""
    full_env = {**os.environ, "VERINFER_HOME": str(home), **(env or {})}
    full_env["PYTHONPATH"] = str(ROOT / "workers")
    full_env["PATH"] = f"{ROOT / 'node_modules' / '.bin'}{os.pathsep}{full_env['PATH']}"
    for key in ("VERINFER_NETWORK", "VERINFER_MARKET", "VERINFER_ACCOUNT", "VERINFER_CHAIN_ID"):
        if env is None or key not in env:
            full_env.pop(key, None)
    return subprocess.run(
        [sys.executable, "-m", "verinfer.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=full_env,
    )


class Cli:
    """Invoke the CLI in-process against the module's dev chain."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.runner = CliRunner(mix_stderr=False)

    def __call__(self, *args: str, **env: str) -> Result:
        from verinfer.cli import main

        full_env = {
            "VERINFER_HOME": str(self.home),
            "VERINFER_NETWORK": None,
            "VERINFER_MARKET": None,
            "VERINFER_ACCOUNT": None,
            "VERINFER_CHAIN_ID": None,
            **env,
        }
        return self.runner.invoke(main, list(args), env=full_env, catch_exceptions=False)

    def json(self, *args: str, **env: str) -> Any:
        """Run with --json; assert exit 0 and return the parsed JSON."""
        result = self(*args, "--json", **env)
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)

    def fails(self, *args: str, **env: str) -> str:
        """Run with --json; assert exit 1, no stdout, one stderr line; return that line."""
        result = self(*args, "--json", **env)
        assert result.exit_code == 1, (result.stdout, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("verinfer: ")
        return lines[0]


@pytest.fixture(scope="module")
def dev_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """`verinfer dev up --json` in a fresh VERINFER_HOME; `dev down` afterwards."""
    home = tmp_path_factory.mktemp("verinfer-home")
    up = run_cli(home, "dev", "up", "--json")
    assert up.returncode == 0, up.stderr
    state = json.loads(up.stdout)
    try:
        yield home, state
    finally:
        if (home / "dev.json").is_file():
            run_cli(home, "dev", "down", "--json")


@pytest.fixture(scope="module")
def cli(dev_home: tuple[Path, dict[str, Any]]) -> Cli:
    return Cli(dev_home[0])


@pytest.fixture(scope="module")
def state(dev_home: tuple[Path, dict[str, Any]]) -> dict[str, Any]:
    return dev_home[1]
