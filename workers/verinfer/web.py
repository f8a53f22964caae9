"""``verinfer web``: serve the page (web/, built into web/dist) on a local address.

The page is static: it talks to the chain itself, through the person's injected wallet
(EIP-1193) for signatures and through a read RPC. This server only hands out files: the built
page, ``config.json`` (the RPC address, the chain id, the market and the block it was deployed
in), the tokenizer files of the models found locally (``tokenizers/<model_id>/tokenizer.json``
and ``tokenizer_config.json``), with which the page turns output token ids into text, and
``providers.json``: every registered model's nodes with their track record and score, best
first (``verinfer.indexer`` + ``verinfer.routing.rank``, the data of the gateway's
``GET /v1/providers``), from an index the server keeps under ``$VERINFER_HOME/index/`` (the
CLI's file) and syncs at most every ``PROVIDERS_TTL_S`` seconds, in a thread. It holds no key
and moves no token. ``--export DIR`` writes the same files into a folder for any static host
instead (providers.json as a snapshot, with the time it was taken).

The market is ``--market`` / ``$VERINFER_MARKET`` with ``--rpc-url`` / ``$VERINFER_RPC_URL``,
else the dev chain that ``verinfer dev up`` recorded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import click

from verinfer.chain_errors import ClientError
from verinfer.cli_common import emit, read_dev_state, verinfer_home

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
DIST = WEB / "dist"
ABI_DIR = Path(__file__).resolve().parent / "abi"
DEFAULT_PORT = 8577
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
PROVIDERS_TTL_S = 5.0  # providers.json: the index is synced at most this often
PROVIDERS_WAIT_S = 1.5  # how long a request waits for a sync under way (else: the last snapshot)
_TOKENIZER_PATH = re.compile(r"^/tokenizers/(0x[0-9a-fA-F]{64})/([a-z_]+\.json)$")


def _sources() -> list[Path]:
    return [
        WEB / "index.html",
        WEB / "build.mjs",
        *sorted((WEB / "src").glob("*")),
        *sorted(ABI_DIR.glob("*.json")),
    ]


def page_is_stale() -> bool:
    """True when web/dist is missing or older than a source of the page (or an ABI)."""
    built = DIST / "app.js"
    if not built.is_file():
        return True
    return any(p.stat().st_mtime > built.stat().st_mtime for p in _sources() if p.is_file())


def build_page(force: bool = False) -> Path:
    """Build the page into web/dist with esbuild (``node web/build.mjs``) when it is missing or
    stale; returns web/dist. ClientError when it cannot be built here."""
    if not force and not page_is_stale():
        return DIST
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules" / "esbuild").is_dir():
        raise ClientError(
            "the page is not built and cannot be built here: run `make setup` "
            "(needs Node.js and npm for viem and esbuild)"
        )
    done = subprocess.run(
        [node, str(WEB / "build.mjs")], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise ClientError(f"building the page failed: {detail[-1] if detail else done.returncode}")
    return DIST


def page_config(
    rpc_url: str | None,
    market: str | None,
    chain_id: int | None = None,
    from_block: int | None = None,
) -> dict[str, Any]:
    """The page's config.json: from the arguments, else from the running dev chain."""
    dev = read_dev_state() or {}
    market = market or os.environ.get("VERINFER_MARKET") or dev.get("market")
    rpc_url = rpc_url or os.environ.get("VERINFER_RPC_URL") or dev.get("rpc_url")
    if not market or not rpc_url:
        raise ClientError(
            "no market to show: give --market and --rpc-url, or start a dev chain with "
            "`verinfer dev up`"
        )
    config: dict[str, Any] = {"rpc_url": rpc_url, "market": market}
    chain_id = chain_id if chain_id is not None else dev.get("chain_id")
    if chain_id is not None:
        config["chain_id"] = int(chain_id)
    from_block = from_block if from_block is not None else dev.get("from_block")
    if from_block is not None:
        config["from_block"] = int(from_block)
    return config


def tokenizer_file(model_id: str, name: str) -> Path | None:
    """A tokenizer file of a model found in the local model directories, or None."""
    from verinfer.tokenizers_local import find_model_dir

    if name not in TOKENIZER_FILES:
        return None
    path = find_model_dir(bytes.fromhex(model_id[2:]))
    if path is None or not (path / name).is_file():
        return None
    return path / name


class Providers:
    """``providers.json``: per registered model, its nodes ranked by their track record.

    The index (``verinfer.indexer``, SQLite at ``db_path``, default the CLI's
    ``$VERINFER_HOME/index/<chain>-<market>.sqlite``) is synced in a thread at most every
    ``ttl_s`` seconds, when a request finds the snapshot older than that; a request waits for
    it at most ``wait_s`` seconds, else it gets the last snapshot. When a sync fails (the RPC
    down), the last good snapshot is served with ``"stale": true`` and the ``"error"``.
    """

    def __init__(
        self,
        config: dict[str, Any],
        db_path: Path | None = None,
        ttl_s: float = PROVIDERS_TTL_S,
        wait_s: float = PROVIDERS_WAIT_S,
    ) -> None:
        self.config = config
        self.db_path = db_path
        self.ttl_s, self.wait_s = ttl_s, wait_s
        self.indexer: Any = None
        self._token: tuple[str, int] | None = None
        self._good: dict[str, Any] | None = None
        self._error: str | None = None
        self._tried = float("-inf")  # monotonic time of the last sync started
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def get(self) -> dict[str, Any]:
        """The snapshot, synced first when older than ``ttl_s`` (waiting ``wait_s`` at most)."""
        thread = self.warm()
        if thread is not None:
            thread.join(timeout=self.wait_s)
        return self.current()

    def warm(self) -> threading.Thread | None:
        """Start a sync in its thread when none runs and the last began ``ttl_s`` ago or more
        (the server calls it at start: the first page finds the index read); returns the
        sync's thread (the running one, or the last)."""
        with self._lock:
            running = self._thread is not None and self._thread.is_alive()
            if not running and time.monotonic() - self._tried >= self.ttl_s:
                self._tried = time.monotonic()
                self._thread = threading.Thread(
                    target=self.refresh, daemon=True, name="verinfer-web-index"
                )
                self._thread.start()
            return self._thread

    def current(self) -> dict[str, Any]:
        """The last good snapshot, marked stale with the error when the last sync failed."""
        if self._good is None:
            error = self._error or "the track record is being indexed: try again in a moment"
            return {"object": "list", "market": self.config.get("market"), "data": [],
                    "stale": True, "error": error}  # fmt: skip
        if self._error is None:
            return self._good
        return {**self._good, "stale": True, "error": self._error}

    def refresh(self) -> dict[str, Any]:
        """Sync the index and take a new snapshot now; returns ``current()``."""
        try:
            self._good = self._snapshot()
            self._error = None
        except Exception as exc:  # an RPC down, a bad answer: the last snapshot stays
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self._error = f"cannot sync the track record from {self.config['rpc_url']}: {first}"
        return self.current()

    def _open(self) -> Any:
        """The index of the market (``verinfer.indexer.open_indexer``'s, on a web3 client
        without web3's silent retries: a sync fails fast and the next request tries again)."""
        from verinfer.indexer import Indexer
        from verinfer.node.contracts import Protocol, connect, load_abi
        from verinfer.node.settings import auto_confirmations

        w3 = connect(self.config["rpc_url"], timeout_s=10, quiet_retries=False)
        market = w3.eth.contract(
            address=w3.to_checksum_address(self.config["market"]), abi=load_abi("Market")
        )
        protocol = Protocol(w3, market.address, market.functions.court().call())
        chain_id = int(self.config.get("chain_id") or w3.eth.chain_id)
        name = f"{chain_id}-{market.address.lower()}.sqlite"
        db_path = self.db_path or verinfer_home() / "index" / name
        db_path.parent.mkdir(parents=True, exist_ok=True)
        token = w3.eth.contract(address=market.functions.token().call(), abi=load_abi("TestToken"))
        self._token = (token.functions.symbol().call(), token.functions.decimals().call())
        return Indexer(
            db_path, protocol, confirmations=auto_confirmations(chain_id),
            from_block=int(self.config.get("from_block") or 0),
        )  # fmt: skip

    def _snapshot(self) -> dict[str, Any]:
        from verinfer.routing import rank

        if self.indexer is None:
            self.indexer = self._open()
        idx = self.indexer
        idx.sync()
        last = idx.cursor - 1
        indexed_time = idx.source.blocks([last])[last][1] if last >= 0 else 0
        models = idx.models()
        names = [name for name, _ in models.values()]
        data = []
        for model_id, (name, revision) in models.items():
            # the gateway's label: the name, or name@revision when another model shares it
            label = name if names.count(name) == 1 else f"{name}@{revision}"
            providers = [s.as_dict() for s in rank(idx.records(model_id))]
            data.append({"model": label, "model_id": model_id, "name": name,
                         "revision": revision, "providers": providers})  # fmt: skip
        symbol, decimals = self._token or ("", 18)
        return {
            "object": "list",
            "market": self.config["market"],
            "token": symbol,
            "decimals": decimals,
            "taken_at": int(time.time()),
            "indexed_block": last,
            "indexed_time": indexed_time,
            "stale": False,
            "data": data,
        }

    def close(self) -> None:
        """Close the index (after a sync under way, waiting 10 s at most for it)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout=10)
        if self.indexer is not None and not (thread is not None and thread.is_alive()):
            self.indexer.close()
            self.indexer = None


class _Handler(SimpleHTTPRequestHandler):
    """Static files of web/dist, plus config.json, providers.json and the local tokenizer
    files."""

    config: ClassVar[dict[str, Any]] = {}
    providers: ClassVar[Providers | None] = None

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/config.json":
            self._send(json.dumps(self.config).encode(), "application/json")
            return
        if path == "/providers.json" and self.providers is not None:
            self._send(json.dumps(self.providers.get()).encode(), "application/json")
            return
        if m := _TOKENIZER_PATH.match(path):
            found = tokenizer_file(m.group(1).lower(), m.group(2))
            if found is None:
                self.send_error(HTTPStatus.NOT_FOUND, "no such tokenizer here")
                return
            self._send(found.read_bytes(), "application/json")
            return
        super().do_GET()

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the command prints its address once


def make_server(
    config: dict[str, Any],
    host: str = "127.0.0.1",
    port: int = 0,
    providers: Providers | None = None,
) -> ThreadingHTTPServer:
    """An HTTP server for the built page with ``config`` (port 0: a free one); not started.
    ``providers``: what serves providers.json (default: a ``Providers`` on ``config``)."""
    providers = providers or Providers(config)
    handler = type("Handler", (_Handler,), {"config": config, "providers": providers})
    server = ThreadingHTTPServer((host, port), partial(handler, directory=str(DIST)))
    providers.warm()  # the index read before the first page asks
    return server


def serve_in_thread(
    config: dict[str, Any],
    host: str = "127.0.0.1",
    port: int = 0,
    providers: Providers | None = None,
) -> Any:
    """Build if needed, start serving in a daemon thread; returns the server (``shutdown()``)."""
    build_page()
    server = make_server(config, host, port, providers)
    threading.Thread(target=server.serve_forever, daemon=True, name="verinfer-web").start()
    return server


def export_site(
    out: Path, config: dict[str, Any], model_ids: list[str], providers: Providers | None = None
) -> list[str]:
    """Write the page, its config.json, a snapshot providers.json (``taken_at``: when; with
    its ``error`` when the chain could not be read) and the tokenizers of ``model_ids`` found
    locally into ``out``, for a static host; returns the files written (relative to ``out``)."""
    build_page()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for f in sorted(DIST.iterdir()):
        if f.name.startswith(".") or not f.is_file():
            continue  # make's stamp
        shutil.copyfile(f, out / f.name)
        written.append(f.name)
    (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    written.append("config.json")
    providers = providers or Providers(config)
    snapshot = providers.refresh()
    providers.close()
    (out / "providers.json").write_text(json.dumps(snapshot, indent=1) + "\n")
    written.append("providers.json")
    for mid in model_ids:
        for name in TOKENIZER_FILES:
            src = tokenizer_file(mid.lower(), name)
            if src is not None:
                (out / "tokenizers" / mid.lower()).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, out / "tokenizers" / mid.lower() / name)
                written.append(f"tokenizers/{mid.lower()}/{name}")
    return written


@click.command("web")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int)
@click.option("--rpc-url", help="Read RPC the page uses (default: the dev chain's).")
@click.option("--market", help="Market address (default: $VERINFER_MARKET or the dev chain's).")
@click.option("--chain-id", type=int, help="Chain id the wallet must be on.")
@click.option("--from-block", type=int, help="Block the market was deployed in.")
@click.option(
    "--export",
    "export_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Write the static site into this folder instead of serving it.",
)
@click.option(
    "--model-id", "model_ids", multiple=True, help="With --export: a model whose tokenizer to add."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def web(
    host: str,
    port: int,
    rpc_url: str | None,
    market: str | None,
    chain_id: int | None,
    from_block: int | None,
    export_dir: Path | None,
    model_ids: tuple[str, ...],
    as_json: bool,
) -> None:
    """Serve the web page: chat with a model, paid from your own wallet."""
    config = page_config(rpc_url, market, chain_id, from_block)
    if export_dir is not None:
        dev_model = (read_dev_state() or {}).get("model", {}).get("model_id")
        ids = list(model_ids) or ([dev_model] if dev_model else [])
        files = export_site(export_dir, config, ids)
        emit(as_json, {"out": str(export_dir), "files": files, "config": config},
             f"wrote {len(files)} files to {export_dir}")  # fmt: skip
        return
    build_page()
    providers = Providers(config)
    try:
        server = make_server(config, host, port, providers)
    except OSError as exc:
        raise ClientError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    url = f"http://{host}:{server.server_address[1]}/"
    emit(
        as_json,
        {"url": url, **config},
        f"serving the page at {url}\n  market {config['market']} via {config['rpc_url']}"
        + (f" (chain {config['chain_id']})" if "chain_id" in config else "")
        + "\n  open it in a browser with a wallet; Ctrl-C stops",
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        providers.close()
