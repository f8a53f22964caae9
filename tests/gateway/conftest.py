"""Fixtures of the gateway tests: the node tests' real Anvil + Redis + protocol (reused),
one real node, and `verinfer gateway` processes in front of it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from verinfer.node.localnet import NODE_A, ROOT, Net, NodeProcess, wait_for
from verinfer.node.redis_server import free_port

from tests.node.conftest import net, tmp_dir  # noqa: F401  (module-scoped fixtures reused)

API_KEY = "vi-test-key-0123456789"
BROKE = 9  # dev account 9: gas money, no tokens, nothing prepaid


@dataclass
class Gateway:
    """A running `verinfer gateway` process."""

    url: str
    key: str
    account: int
    proc: subprocess.Popen
    log_path: Path

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``.../v1``)."""
        return self.url + "/v1"

    def openai(self, **kwargs: object) -> object:
        """An official ``openai.OpenAI`` client pointed at this gateway."""
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key=self.key, **kwargs)  # type: ignore[arg-type]

    def log(self) -> str:
        """Everything the gateway wrote so far."""
        return self.log_path.read_text(errors="replace")


def start_gateway(
    dev_net: Net, account: int, name: str, *args: str, env: dict[str, str] | None = None
) -> Gateway:
    """Start `verinfer gateway` paying from dev account ``account``; wait until it answers.
    ``env``: more environment (``VERINFER_GATEWAY_*`` settings). Routing is open
    (``VERINFER_GATEWAY_ROUTING=open``) unless ``env`` says otherwise: these chains stake three
    nodes and most tests run one, and score routing's warm-up would offer jobs to the others
    (tests/routing runs the gateway with ``routing=score`` against three live nodes)."""
    port = free_port()
    proc_env = {k: v for k, v in os.environ.items() if not k.startswith("VERINFER_")}
    proc_env.update(
        {
            "PYTHONPATH": str(ROOT / "workers"),
            "HF_HUB_OFFLINE": "1",
            "VERINFER_HOME": str(dev_net.tmp / name),
            "VERINFER_GATEWAY_API_KEY": API_KEY,
            "VERINFER_GATEWAY_ROUTING": "open",
            **(env or {}),
        }
    )
    log_path = dev_net.tmp / f"{name}.log"
    cmd = [sys.executable, "-m", "verinfer.cli", "gateway"]
    cmd += [
        "--network",
        f"ethereum:local:{dev_net.rpc_url}",
        "--market",
        dev_net.dev.market.address,
    ]
    cmd += ["--account", f"test:{account}", "--port", str(port), *args]
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, env=proc_env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    gw = Gateway(f"http://127.0.0.1:{port}", API_KEY, account, proc, log_path)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited {proc.returncode}:\n{gw.log()[-3000:]}")
        try:
            r = httpx.get(gw.base_url + "/models", headers={"Authorization": f"Bearer {API_KEY}"})
        except httpx.TransportError:
            return False
        return r.status_code == 200

    wait_for(up, 90, f"gateway {name}", every=0.3)
    return gw


def stop_gateway(gw: Gateway) -> int:
    """SIGTERM; the exit code."""
    gw.proc.terminate()
    return gw.proc.wait(30)


@pytest.fixture(scope="module")
def node(net: Net) -> Iterator[NodeProcess]:  # noqa: F811
    """One real node serving the tiny model."""
    proc = net.node(NODE_A, "node-a").start()
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()[-3000:]
