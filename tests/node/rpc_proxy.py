"""A misbehaving JSON-RPC proxy for node tests: it stands between the node processes and Anvil,
forwards every request, and on command fails them instead, the ways real endpoints fail:
HTTP 500, JSON-RPC errors, connections closed without an answer, or requests that hang."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Mode = Literal["ok", "http500", "rpc_error", "close", "hang"]
FAULTS: tuple[Mode, ...] = ("http500", "rpc_error", "close", "hang")


class RpcProxy:
    """A threaded HTTP proxy to ``upstream``; ``fault(mode, methods)`` makes it misbehave for
    requests that call any of ``methods`` (all requests when None) until ``heal()``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.mode: Mode = "ok"
        self.methods: frozenset[str] | None = None
        self.faults: Counter[str] = Counter()  # mode -> requests failed that way
        self.calls: Counter[str] = Counter()  # method -> requests seen
        self._healed = threading.Event()
        self._healed.set()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy.serve(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> RpcProxy:
        self._thread.start()
        return self

    def close(self) -> None:
        self.heal()
        self.server.shutdown()
        self.server.server_close()

    def fault(self, mode: Mode, methods: set[str] | None = None) -> None:
        """Fail the matching requests the ``mode`` way from now on."""
        with self._lock:
            self.mode, self.methods = mode, frozenset(methods) if methods else None
            if mode != "ok":
                self._healed.clear()

    def heal(self) -> None:
        """Forward everything again (hanging requests are then answered with a closed socket)."""
        with self._lock:
            self.mode, self.methods = "ok", None
        self._healed.set()

    @contextmanager
    def faulty(self, mode: Mode, seconds: float, methods: set[str] | None = None) -> Iterator[None]:
        """``fault(mode)`` for the block and then at least until ``seconds`` have passed."""
        start = time.monotonic()
        self.fault(mode, methods)
        try:
            yield
            time.sleep(max(0.0, seconds - (time.monotonic() - start)))
        finally:
            self.heal()

    # ---- the proxying ----
    def serve(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        try:
            request = json.loads(body)
        except ValueError:
            request = {}
        items = request if isinstance(request, list) else [request]
        methods = {str(i.get("method")) for i in items if isinstance(i, dict)}
        with self._lock:
            mode = self.mode
            hit = mode != "ok" and (self.methods is None or bool(methods & self.methods))
            for m in methods:
                self.calls[m] += 1
            if hit:
                self.faults[mode] += 1
        if not hit:
            self._forward(handler, body)
        elif mode == "http500":
            self._reply(handler, 500, b"upstream unavailable (test proxy)", "text/plain")
        elif mode == "rpc_error":
            errors = [
                {
                    "jsonrpc": "2.0",
                    "id": i.get("id") if isinstance(i, dict) else None,
                    "error": {"code": -32603, "message": "internal error (test proxy)"},
                }
                for i in items
            ]
            out = errors if isinstance(request, list) else errors[0]
            self._reply(handler, 200, json.dumps(out).encode(), "application/json")
        elif mode == "close":
            handler.close_connection = True
            handler.connection.close()  # no answer at all
        else:  # hang: answer nothing until healed, then drop the connection
            self._healed.wait(120)
            handler.close_connection = True
            handler.connection.close()

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        req = urllib.request.Request(
            self.upstream, data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            data = resp.read()
        self._reply(handler, 200, data, "application/json")

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, status: int, data: bytes, ctype: str) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
