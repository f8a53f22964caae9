"""Real parts for node tests: Anvil, Redis, the protocol, the project's tiny model, keystore
files for the node keys, and `verinfer node run` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verinfer.digest import SamplingParams
from verinfer.inputs import encode_text_input
from verinfer.jobs import JobRecord, JobStatus
from verinfer.models.manifest import MANIFEST_NAME, Manifest
from verinfer.models.tiny import tiny_model_path
from verinfer.node.devchain import UNIT, ZERO, DevProtocol, dev_keys, transact
from verinfer.node.keys import write_keystore

ROOT = Path(__file__).resolve().parents[2]
PRICE = 10**15
PASSPHRASE = "correct horse battery staple"
OWNER, CLIENT_A, CLIENT_B, CLIENT_C, NODE_A, NODE_B, CHEATER, KEEPER = range(8)


def wait_for(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    """Poll ``pred`` until it returns something truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def tiny_model() -> tuple[Path, Manifest]:
    """The project's small model (seed 0) and its manifest."""
    path = tiny_model_path(seed=0)
    return path, Manifest.load(path / MANIFEST_NAME)


@dataclass
class NodeProcess:
    """A `verinfer node run` subprocess with its environment."""

    name: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None

    def start(self) -> NodeProcess:
        """Start the node (supervisor + chain worker + inference worker)."""
        out = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "verinfer.cli", "node", "run"],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 120.0) -> NodeProcess:
        """Wait until the node's sender and engine are up (their log lines)."""
        wait_for(
            lambda: "sender ready" in self.log() and "engine ready" in self.log(),
            timeout,
            f"{self.name} ready",
        )
        return self

    def stop(self, timeout: float = 90.0) -> int:
        """SIGTERM and wait for a clean exit; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the whole process group (supervisor and its Celery workers)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def log(self) -> str:
        """Everything the node wrote so far."""
        return self.log_path.read_text(errors="replace")


@dataclass
class Net:
    """A dev chain with the protocol, a Redis, and node settings to start nodes from."""

    dev: DevProtocol
    rpc_url: str
    redis_url: str
    tmp: Path
    model_id: bytes
    model_path: Path
    keys: list[Any] = field(default_factory=lambda: dev_keys(10))

    @property
    def w3(self) -> Any:
        return self.dev.w3

    def addr(self, index: int) -> str:
        return self.keys[index].address

    def node_env(self, index: int, name: str, **extra: Any) -> dict[str, str]:
        """Environment of a node using dev key ``index`` from an encrypted keystore."""
        keystore = self.tmp / "keystore"
        if not (keystore / f"{name}.json").is_file():
            write_keystore(name, self.keys[index].key, PASSPHRASE, keystore)
        env = {k: v for k, v in os.environ.items() if not k.startswith("VERINFER_")}
        env.update(
            {
                "PYTHONPATH": str(ROOT / "workers"),
                "HF_HUB_OFFLINE": "1",
                "VERINFER_RPC_URL": self.rpc_url,
                "VERINFER_MARKET": self.dev.market.address,
                "VERINFER_COURT": self.dev.court.address,
                "VERINFER_ACCOUNT": name,
                "VERINFER_KEYSTORE_DIR": str(keystore),
                "VERINFER_PASSPHRASE": PASSPHRASE,
                "VERINFER_MODELS": f'["{self.model_path}"]',
                "VERINFER_REDIS_URL": self.redis_url,
                "VERINFER_POLL_INTERVAL_S": "0.2",
                "VERINFER_KEEPER_INTERVAL_S": "0.5",
                "VERINFER_TORCH_THREADS": "1",
                "VERINFER_TX_STUCK_AFTER_S": "5",
                "VERINFER_EST_JOB_S": "0.5",
                "VERINFER_LOG_LEVEL": "INFO",
            }
        )
        env.update({f"VERINFER_{k.upper()}": str(v) for k, v in extra.items()})
        return env

    def node(self, index: int, name: str, **extra: Any) -> NodeProcess:
        """A node process (not started yet)."""
        return NodeProcess(name, self.node_env(index, name, **extra), self.tmp / f"{name}.log")

    def submit(
        self,
        client: int,
        text: str,
        max_tokens: int = 12,
        seed: int = 0,
        preferred: str = ZERO,
        result_in: int = 1200,
        input_bytes: bytes | None = None,
        max_payment: int | None = None,
    ) -> int:
        """Submit a job from dev account ``client``; returns the job id."""
        params = SamplingParams(max_tokens=max_tokens, temperature_milli=700, seed=seed)
        now = self.w3.eth.get_block("latest")["timestamp"]
        fn = self.dev.market.functions.submit(
            self.model_id,
            input_bytes if input_bytes is not None else encode_text_input(text),
            params.encode(),
            max_payment if max_payment is not None else max_tokens * PRICE,
            preferred,
            now + 600,
            now + result_in,
        )
        receipt = transact(self.w3, fn, self.addr(client))
        (event,) = self.dev.market.events.JobSubmitted().process_receipt(receipt)
        return int(event["args"]["job_id"])

    def status(self, job_id: int) -> JobStatus:
        return JobStatus(self.dev.market.functions.job_status(job_id).call())

    def events(self, name: str, contract: str = "market", **filters: Any) -> list[Any]:
        """Every ``name`` log from block 0, optionally filtered by argument values."""
        c = getattr(self.dev, contract)
        logs = getattr(c.events, name)().get_logs(from_block=0)
        return [e for e in logs if all(e["args"][k] == v for k, v in filters.items())]

    def record(self, job_id: int) -> JobRecord:
        """The job rebuilt from its events, as a client or keeper would."""
        (sub,) = self.events("JobSubmitted", job_id=job_id)
        record = JobRecord.from_submitted(sub["args"])
        for ev in self.events("JobClaimed", job_id=job_id):
            record.apply_claimed(ev["args"])
        for ev in self.events("ResultPublished", job_id=job_id):
            record.apply_published(ev["args"])
        return record


def setup_net(dev: DevProtocol, rpc_url: str, redis_url: str, tmp: Path) -> Net:
    """Register the tiny model, stake two honest nodes and the cheater, fund three clients."""
    path, manifest = tiny_model()
    net = Net(dev, rpc_url, redis_url, tmp, manifest.model_id, path)
    transact(
        dev.w3,
        dev.market.functions.register_model(
            manifest.name, manifest.revision, manifest.manifest_hash
        ),
        net.addr(OWNER),
    )
    for node in (NODE_A, NODE_B, CHEATER):
        dev.add_node(net.addr(node), 2_000 * UNIT, manifest.model_id, PRICE)
    for client in (CLIENT_A, CLIENT_B, CLIENT_C):
        dev.fund_client(net.addr(client), 1_000 * UNIT)
    return net
