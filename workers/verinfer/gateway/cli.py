"""`verinfer gateway`: serve the OpenAI API on localhost, paying for jobs from one account."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import click

from verinfer.cli_common import connection_options, verinfer_home

KEY_FILE = "gateway.key"


@click.command("gateway")
@connection_options
@click.option("--host", help="Listen address [default: 127.0.0.1].")
@click.option("--port", type=int, help="Listen port [default: 8765].")
@click.option("--max-per-request", help="Most a request may escrow, in whole tokens [default: 1].")
@click.option(
    "--max-per-day", help="Most the gateway spends in 24 hours, in tokens [default: 100]."
)
@click.option("--timeout", "job_timeout_s", type=float, help="Seconds to wait for a result.")
def gateway(
    network: str | None,
    market: str | None,
    account: str | None,
    chain_id: int | None,
    host: str | None,
    port: int | None,
    max_per_request: str | None,
    max_per_day: str | None,
    job_timeout_s: float | None,
) -> None:
    """Serve the OpenAI API (/v1/models, /v1/chat/completions, /v1/completions) for agents.

    The API key is $VERINFER_GATEWAY_API_KEY, else a key generated once and kept in
    $VERINFER_HOME/gateway.key. Every other setting also reads $VERINFER_GATEWAY_<NAME>.
    """
    import uvicorn

    from verinfer.cli_common import connect
    from verinfer.gateway.app import create_app
    from verinfer.gateway.chain import ChainWorker
    from verinfer.gateway.settings import load_settings

    given: dict[str, Any] = {
        "host": host,
        "port": port,
        "max_payment_per_request": max_per_request,
        "max_payment_per_day": max_per_day,
        "job_timeout_s": job_timeout_s,
    }
    settings = load_settings(**{k: v for k, v in given.items() if v is not None})
    api_key = settings.api_key.get_secret_value() if settings.api_key else _stored_key()

    def conn() -> AbstractContextManager[Any]:
        return connect(network, market, account, chain_id, "test:1")

    _log_lines()
    worker = ChainWorker(settings, conn)
    worker.start()
    click.echo(
        f"verinfer gateway: http://{settings.host}:{settings.port}/v1 paying from "
        f"{worker.address} (limits {settings.max_payment_per_request} {worker.symbol}/request, "
        f"{settings.max_payment_per_day} {worker.symbol}/day); results: {worker.results_via}; "
        f"routing: {worker.routing_says}",
        err=True,
    )
    config = uvicorn.Config(
        create_app(worker, api_key),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        ws="none",  # no websocket routes: skip loading uvicorn's websocket protocol
    )
    server = _Server(config)

    def _exit(signum: int, frame: Any) -> None:
        server.should_exit = True

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _exit)
    try:
        server.run()
    finally:
        worker.stop()


class _Server:
    """uvicorn's Server without its own signal capture (it re-raises SIGTERM after a clean
    shutdown, so the process would end by the signal instead of exit code 0)."""

    def __new__(cls, config: Any) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            @contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        return Server(config)


def _log_lines() -> None:
    """The gateway's own log (routing, failover, warnings): one ``time level message`` line
    each on stderr, at INFO (not the libraries' INFO lines)."""
    own = logging.getLogger("verinfer.gateway")
    if own.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    own.addHandler(handler)
    own.setLevel(logging.INFO)
    own.propagate = False


def _stored_key() -> str:
    """The key in $VERINFER_HOME/gateway.key, created (mode 600) on first use."""
    path = verinfer_home() / KEY_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("vi-" + secrets.token_urlsafe(32) + "\n")
        click.echo(f"verinfer gateway: new API key written to {path}", err=True)
    return path.read_text().strip()
