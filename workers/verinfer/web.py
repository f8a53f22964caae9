"""``verinfer web``: serve the page (web/, built into web/dist) on a local address.

The page is static: it talks to the chain itself, through the person's injected wallet
(EIP-1193) for signatures and through a read RPC. This server only hands out files: the built
page, ``config.json`` (the RPC address, the chain id, the market and the block it was deployed
in) and the tokenizer files of the models found locally (``tokenizers/<model_id>/tokenizer.json``
and ``tokenizer_config.json``), with which the page turns output token ids into text. It holds
no key and moves no token. ``--export DIR`` writes the same files into a folder for any static
host instead.

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
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import click

from verinfer.chain_errors import ClientError
from verinfer.cli_common import emit, read_dev_state

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
DIST = WEB / "dist"
ABI_DIR = Path(__file__).resolve().parent / "abi"
DEFAULT_PORT = 8577
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
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


class _Handler(SimpleHTTPRequestHandler):
    """Static files of web/dist, plus config.json and the local tokenizer files."""

    config: ClassVar[dict[str, Any]] = {}

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/config.json":
            self._send(json.dumps(self.config).encode(), "application/json")
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
    config: dict[str, Any], host: str = "127.0.0.1", port: int = 0
) -> ThreadingHTTPServer:
    """An HTTP server for the built page with ``config`` (port 0: a free one); not started."""
    handler = type("Handler", (_Handler,), {"config": config})
    return ThreadingHTTPServer((host, port), partial(handler, directory=str(DIST)))


def serve_in_thread(config: dict[str, Any], host: str = "127.0.0.1", port: int = 0) -> Any:
    """Build if needed, start serving in a daemon thread; returns the server (``shutdown()``)."""
    build_page()
    server = make_server(config, host, port)
    threading.Thread(target=server.serve_forever, daemon=True, name="verinfer-web").start()
    return server


def export_site(out: Path, config: dict[str, Any], model_ids: list[str]) -> list[str]:
    """Write the page, its config.json and the tokenizers of ``model_ids`` found locally into
    ``out``, for a static host; returns the files written (relative to ``out``)."""
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
    try:
        server = make_server(config, host, port)
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
