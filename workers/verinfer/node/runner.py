"""``verinfer node run``: the supervisor. It checks the key, the models and Redis, puts back
the messages a killed worker held, starts the Celery workers (the chain sender, the
inference workers), runs the watcher and the keeper, and on SIGINT/SIGTERM stops them in
order: the watcher saves its cursor, the workers finish or hand back their tasks (acks_late),
the sender waits for its pending transactions. Any part that dies stops the node (fail fast).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Any

import redis

from verinfer.node.celery_app import Dispatcher, make_app, restore_unacked
from verinfer.node.contracts import Protocol, connect, network_facts
from verinfer.node.keeper import Keeper
from verinfer.node.keys import load_account
from verinfer.node.lease import wait_for_free_lease
from verinfer.node.metrics import Metrics, RedisCollector
from verinfer.node.policy import Policy, ServedModel
from verinfer.node.settings import NodeSettings
from verinfer.node.store import Store
from verinfer.node.watcher import Watcher

log = logging.getLogger("verinfer.node")
PR_SET_PDEATHSIG = 1  # prctl(2)


class NodeRefused(RuntimeError):
    """The node must not start (another live sender holds the key's lease)."""


def set_parent_death_signal(sig: int, parent: int) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux prctl
    PR_SET_PDEATHSIG, kept across exec); exit at once if the parent ``parent`` is already
    gone. Elsewhere a no-op (the workers' heartbeat checks the parent instead)."""
    if sys.platform != "linux":
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def token_formatter(protocol: Protocol) -> Any:
    """Base units of the market's payment token -> ``"0.001 vUSD"`` (base units when the
    token does not say its decimals)."""
    from decimal import Decimal

    from verinfer.node.contracts import load_abi

    try:
        token = protocol.w3.eth.contract(
            address=protocol.market.functions.token().call(), abi=load_abi("TestToken")
        )
        decimals = int(token.functions.decimals().call())
        symbol = str(token.functions.symbol().call())
    except Exception:
        return lambda units: f"{units} base units"

    def fmt(units: int) -> str:
        value = Decimal(units) / (Decimal(10) ** decimals)
        return f"{format(value.normalize(), 'f') if value else '0'} {symbol}"

    return fmt


def worker_command(settings: NodeSettings, role: str, name: str) -> list[str]:
    """The ``celery worker`` command line of a node worker for ``role`` (chain or infer)."""
    prefetch = 1 if role == "chain" else settings.batch_size
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "verinfer.node.tasks:app",
        "worker",
        "-Q",
        settings.queue(role),  # type: ignore[arg-type]
        "-P",
        "solo",
        "-c",
        "1",
        "-n",
        f"{name}@%h",
        "--prefetch-multiplier",
        str(prefetch),
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-l",
        "WARNING",
    ]


class NodeRunner:
    """Starts, watches and stops every part of one node."""

    def __init__(
        self,
        settings: NodeSettings,
        roles: tuple[str, ...] = ("chain", "infer"),
        worker_env: dict[str, str] | None = None,
    ) -> None:
        """``worker_env``: the environment the workers start from (default: this process's)."""
        self.s = settings
        self.roles = roles
        self.worker_env = worker_env
        self.stop_event = threading.Event()
        self.procs: dict[str, subprocess.Popen] = {}
        self.threads: list[threading.Thread] = []
        self.exit_code = 0
        self.pid = os.getpid()

    def start(self) -> None:
        """Check everything, then start the workers and the watcher/keeper threads."""
        s = self.s
        account = load_account(s.account, s.passphrase.get_secret_value(), s.keystore_dir)
        self.me = account.address
        client = redis.Redis.from_url(s.redis_url)
        client.ping()
        if "chain" in self.roles:  # one sender per key: never next to a live one
            held = wait_for_free_lease(client, s.namespace, 2 * s.sender_lease_ttl_s)
            if held is not None:
                raise NodeRefused(
                    f"another node is sending with {self.me}: its chain worker ({held[0]}) "
                    f"holds the key's lease (renewed, expires in {held[1]:.0f}s unless renewed);"
                    " stop it first"
                )
        self.store = Store(client, s.namespace)
        self.metrics = Metrics(client, s.namespace)
        self.protocol = Protocol(
            connect(s.rpc_url, s.rpc_timeout_s, quiet_retries=False), s.market, s.court
        )
        s.resolve_network(*network_facts(self.protocol.w3))
        models = {m.model_id: m for m in (ServedModel.from_path(p) for p in s.models)}
        self.policy = self._policy(models)
        restored = restore_unacked(s)
        if restored:
            log.warning("restored %d tasks held by a worker that did not stop", restored)
        env = {
            **(self.worker_env or os.environ),
            **self._env(),
            "VERINFER_SUPERVISOR_PID": str(os.getpid()),
        }
        for role in self.roles:
            for i in range(s.infer_workers if role == "infer" else 1):
                key = role if i == 0 else f"{role}-{i}"
                nice = role == "chain"
                self.procs[key] = subprocess.Popen(
                    worker_command(s, role, f"{key}-{os.getpid()}"),
                    env=env,
                    preexec_fn=lambda nice=nice: self._child_setup(nice),  # type: ignore[misc]
                )
        self._lower_priority()  # before the watcher/keeper threads exist: they inherit it
        dispatch = Dispatcher(make_app(s), s)
        self.watcher = Watcher(
            s, self.protocol, self.store, self.metrics, self.policy, dispatch, self.me
        )
        self.keeper = Keeper(
            s, self.protocol, self.store, dispatch, self.me, self.watcher.take_open
        )
        for name, target in (("watcher", self.watcher.run), ("keeper", self.keeper.run)):
            t = threading.Thread(target=self._guard, args=(name, target), name=name, daemon=True)
            t.start()
            self.threads.append(t)
        if s.metrics_port:
            from prometheus_client import CollectorRegistry, start_http_server

            registry = CollectorRegistry()
            registry.register(RedisCollector(self.metrics))
            start_http_server(s.metrics_port, registry=registry)
        log.info(
            "node started account=%s models=%d roles=%s", self.me, len(models), ",".join(self.roles)
        )
        if s.dev_cheat_weights is not None:
            log.warning(
                "DEV CHEAT MODE (VERINFER_DEV_CHEAT_WEIGHTS=%s): this node serves other weights "
                "under the registered model ids; its results fail disputes and get it slashed",
                s.dev_cheat_weights,
            )

    def _policy(self, models: dict[bytes, ServedModel]) -> Policy:
        """The admission policy: the node's own on-chain price of each served model, the
        operator's floor and fraction, the expected gas; one start line says what it takes."""
        s, market = self.s, self.protocol.market.functions
        prices = {m: int(market.serve_price(self.me, m).call()) for m in models}
        fmt = token_formatter(self.protocol)
        policy = Policy(
            models,
            s.price_floor,
            s.capacity,
            s.est_job_s,
            s.deadline_margin_s,
            own_prices=prices,
            price_fraction=s.price_fraction,
            gas_per_job=s.gas_per_job,
            gas_token_rate=s.gas_token_rate,
            fmt=fmt,
        )
        policy.enc_key = _encryption_key(s)  # private jobs (verinfer.node.private)
        for model_id in models:
            log.info(
                "policy model=0x%s own_price=%s takes jobs paying at least %s per token%s",
                model_id.hex()[:16],
                fmt(prices[model_id]),
                fmt(policy.price(model_id)),
                f" ({s.price_fraction:g} of its own price)" if s.price_fraction != 1 else "",
            )
            if prices[model_id] == 0:
                log.warning(
                    "policy model=0x%s: this node does not serve it on chain", model_id.hex()[:16]
                )
        if not s.gas_token_rate:
            log.warning(
                "policy: gas is not counted against a job's escrow (VERINFER_GAS_TOKEN_RATE=0: "
                "set the payment token's base units per wei of gas)"
            )
        return policy

    def _child_setup(self, nice: bool) -> None:
        """In a worker process before exec: die with the supervisor (Linux parent-death
        signal: SIGTERM, a warm shutdown), and lower the chain worker's priority."""
        set_parent_death_signal(signal.SIGTERM, self.pid)
        if nice:
            self._lower_priority()

    def _lower_priority(self) -> None:
        """Nice the calling process by ``support_nice`` (the engine keeps its priority)."""
        if self.s.support_nice:
            os.nice(self.s.support_nice)

    def _env(self) -> dict[str, str]:
        """The settings as environment variables for the worker processes."""
        out: dict[str, str] = {}
        for name, value in self.s.model_dump().items():
            if value is None:
                continue
            if hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            if isinstance(value, list):
                import json

                value = json.dumps([str(v) for v in value])
            out[f"VERINFER_{name.upper()}"] = str(value)
        return out

    def _guard(self, name: str, target: Any) -> None:
        try:
            target(self.stop_event)
        except Exception:
            log.exception("%s failed; stopping the node", name)
            self.exit_code = 1
            self.stop_event.set()

    def wait(self) -> int:
        """Block until a signal or a failed part; then stop everything. Returns the exit code."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop_event.set())
        while not self.stop_event.wait(0.5):
            for role, proc in self.procs.items():
                if proc.poll() is not None:
                    log.error("%s worker exited with %s; stopping the node", role, proc.returncode)
                    self.exit_code = 1
                    self.stop_event.set()
        self.stop()
        return self.exit_code

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop the watcher and keeper, then warm-shut the workers (they finish their task)."""
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=timeout_s)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for role, proc in self.procs.items():
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.error("%s worker did not stop in %.0fs; killing it", role, timeout_s)
                proc.kill()
        log.info("node stopped")


def _encryption_key(s: Any) -> Any:
    """The node's private-job key (``<account>.enc`` in the keystore), or None."""
    from verinfer.node.private import load_key

    return load_key(s.account, s.passphrase.get_secret_value(), s.keystore_dir)
