"""Celery tasks of the node: ``celery -A verinfer.node.tasks:app worker -Q <queue>``.

The settings come from the environment (``VERINFER_*``), like every node process. Each worker
builds what its role needs on first use: the chain worker decrypts the key and owns the
node's only TxSender; an inference worker loads the served models (manifests checked).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Any

from celery import signals

from verinfer.node.batching import EngineBatches
from verinfer.node.celery_app import CHAIN_TASK, INFER_TASK, Dispatcher, make_app
from verinfer.node.logs import setup_logging
from verinfer.node.sender import RpcUnavailable
from verinfer.node.settings import NodeSettings

settings = NodeSettings()  # type: ignore[call-arg]
app = make_app(settings)
log = logging.getLogger("verinfer.node.tasks")
_roles: dict[str, Any] = {}


def _base() -> tuple[Any, Any, Any]:
    import redis

    from verinfer.node.contracts import Protocol, connect
    from verinfer.node.metrics import Metrics
    from verinfer.node.store import Store

    client = redis.Redis.from_url(settings.redis_url)
    w3 = connect(settings.rpc_url, settings.rpc_timeout_s, quiet_retries=False)
    protocol = Protocol(w3, settings.market, settings.court)
    return protocol, Store(client, settings.namespace), Metrics(client, settings.namespace)


def chain_role() -> Any:
    """The chain worker's ChainRole (built once per process): the key's lease first (one
    sender per key; SystemExit when another live sender holds it), then the sender."""
    if "chain" not in _roles:
        from verinfer.node.contracts import network_facts
        from verinfer.node.keys import load_account
        from verinfer.node.lease import SenderLease, lease_holder
        from verinfer.node.roles import ChainRole
        from verinfer.node.sender import TxSender

        protocol, store, metrics = _base()
        account = load_account(
            settings.account, settings.passphrase.get_secret_value(), settings.keystore_dir
        )
        settings.resolve_network(*network_facts(protocol.w3))
        lease = SenderLease(store.r, settings.namespace, settings.sender_lease_ttl_s)
        if not lease.acquire(wait_s=2 * settings.sender_lease_ttl_s):
            held = lease_holder(store.r, settings.namespace)
            log.error(
                "another sender holds the lease of %s: %s; this chain worker exits",
                account.address,
                held[0] if held else "?",
            )
            os._exit(3)  # from a signal handler: celery must not go on without a sender
        sender = TxSender(
            protocol.w3,
            account,
            metrics,
            retries=settings.tx_retries,
            backoff_s=settings.tx_backoff_s,
            stuck_after_s=settings.tx_stuck_after_s,
            fee_bump=settings.tx_fee_bump,
            priority_fee_wei=settings.tx_priority_fee_wei,
            finality=settings.finality,
            confirmations=settings.depth(),
            lease=lease,
        )
        lease.start(on_lost=_stop_self)
        sender.start()
        _roles["chain"] = ChainRole(protocol, sender, store, metrics, settings.start_block)
        _roles["chain"].enc_key = _encryption_key()
        log.info(
            "sender ready account=%s nonce=%d lease_epoch=%d finality=%s confirmations=%d",
            account.address,
            sender._nonce,
            lease.epoch,
            settings.finality,
            settings.depth(),
        )
    return _roles["chain"]


def infer_role() -> Any:
    """The inference worker's InferRole (models loaded once per process)."""
    if "infer" not in _roles:
        import torch

        from verinfer.engines.hf import TransformersEngine
        from verinfer.models.loader import ModelRegistry, load_impostor, load_model
        from verinfer.node.roles import InferRole

        torch.set_num_threads(settings.engine_threads())
        _, store, metrics = _base()
        cheat = settings.dev_cheat_weights
        if cheat is None:
            registry = ModelRegistry([load_model(p) for p in settings.models])
        else:  # DEV/TEST ONLY: a cheating node (see NodeSettings.dev_cheat_weights)
            registry = ModelRegistry([load_impostor(cheat, p) for p in settings.models])
            log.warning("DEV CHEAT: serving the weights of %s under the served model ids", cheat)
        engine = TransformersEngine(registry, max_batch_size=settings.batch_size)
        _roles["infer"] = InferRole(engine, registry, store, metrics, Dispatcher(app, settings))
        _roles["infer"].enc_key = _encryption_key()
        _roles["infer"].protocol, _roles["infer"].me = _base()[0], _own_address()
        log.info(
            "engine ready models=%s torch_threads=%d",
            [f"0x{m.hex()[:12]}" for m in registry.ids()],
            torch.get_num_threads(),
        )
    return _roles["infer"]


def _encryption_key() -> Any:
    """The node's private-job key (``<account>.enc`` beside the transaction key), or None."""
    from verinfer.node.private import load_key

    return load_key(settings.account, settings.passphrase.get_secret_value(), settings.keystore_dir)


def _own_address() -> str:
    """The node's address, read from its keystore file (no decryption needed)."""
    import json

    from web3 import Web3

    from verinfer.node.keys import keystore_dir

    path = keystore_dir(settings.keystore_dir) / f"{settings.account}.json"
    return str(Web3.to_checksum_address("0x" + json.loads(path.read_text())["address"]))


def _stop_self(holder: str) -> None:
    """The lease went to another sender: this worker stops (warm shutdown; nothing more is
    signed: every signature checks the lease)."""
    log.error("stopping this chain worker: the key's lease is held by %s", holder)
    os.kill(os.getpid(), signal.SIGTERM)


def _heartbeat(names: list[str], store: Any) -> None:
    """Renew this worker's entries in ``workers`` every ``WORKER_HEARTBEAT_S`` (`verinfer node
    status` lists live workers only). A worker started by `verinfer node run`
    (``VERINFER_SUPERVISOR_PID``) whose supervisor is gone stops (the parent-death signal
    covers Linux; this covers the rest)."""
    from verinfer.node.store import WORKER_HEARTBEAT_S

    parent = int(os.environ.get("VERINFER_SUPERVISOR_PID", "0") or 0)
    while True:
        time.sleep(WORKER_HEARTBEAT_S)
        if parent and os.getppid() != parent:
            log.error("supervisor pid=%d is gone; this worker stops", parent)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        try:
            for name in names:
                store.worker_up(name)
        except Exception as exc:  # Redis down: the next beat tries again
            log.warning("worker heartbeat failed: %s", exc)


@signals.setup_logging.connect
def _on_setup_logging(**_: Any) -> None:
    """The node's log format and VERINFER_LOG_LEVEL (a receiver here stops Celery from
    configuring logging itself, which would apply the worker's ``-l`` level)."""
    setup_logging(settings.log_level)


def _worker_name(role: str) -> str:
    return f"{role}@{socket.gethostname()}:{os.getpid()}"


@signals.worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    queues = {q.name for q in sender.task_consumer.queues} if sender is not None else set()
    names, store = [], None
    for role, build in (("chain", chain_role), ("infer", infer_role)):
        if settings.queue(role) in queues:  # type: ignore[arg-type]
            store = build().store
            store.worker_up(_worker_name(role))  # `verinfer node status` lists it
            names.append(_worker_name(role))
    if store is not None:
        threading.Thread(
            target=_heartbeat, args=(names, store), name="heartbeat", daemon=True
        ).start()


@signals.worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    role = _roles.get("chain")
    if role is not None:
        role.sender.stop(drain_s=10.0)
        role.sender.lease.release()
    for name, built in _roles.items():
        built.store.worker_down(_worker_name(name))


@app.task(
    name=INFER_TASK,
    base=EngineBatches,
    flush_every=settings.batch_size,
    flush_interval=settings.batch_wait_s / 4,  # timer ticks; the rule is EngineBatches.due
    gap=settings.batch_wait_s,
    max_wait=settings.batch_max_wait_s,
    acks_late=True,
)
def infer(requests: list[Any]) -> None:
    """One batch of inference calls (celery-batches collects them, `EngineBatches` decides
    when the batch goes)."""
    infer_role().run_batch([r.args for r in requests])


@app.task(
    name=CHAIN_TASK,
    bind=True,
    acks_late=True,
    max_retries=None,  # an endpoint outage is waited out (back-off at most 60 s)
)
def chain(self: Any, action: str, *args: Any) -> None:
    """One chain action, sent by this process's TxSender. When the endpoint keeps failing
    (RpcUnavailable after the sender's own retries, or any other endpoint error) the task is
    retried later with doubling delays (at most 60 s), one log line each time, until the
    endpoint is back; an action that no longer applies then is skipped by its simulation."""
    from celery.exceptions import Reject

    from verinfer.node.sender import SenderFenced, describe, is_transient

    try:
        chain_role().run(action, *args)
    except SenderFenced as exc:  # another sender holds the key now: the message is its work
        log.error("not sent action=%s: %s; task handed back", action, exc)
        raise Reject(str(exc), requeue=True) from exc
    except Exception as exc:
        if not (isinstance(exc, RpcUnavailable) or is_transient(exc)):
            raise
        countdown = min(2 ** (self.request.retries + 1), 60)
        log.warning(
            "rpc unavailable action=%s; task retried in %ds: %s", action, countdown, describe(exc)
        )
        raise self.retry(exc=exc, countdown=countdown) from exc
