"""The gateway's JSON-RPC client against a small real HTTP server: batches in order, errors,
the URL's path and credentials, and a keep-alive connection the server dropped."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from verinfer.chain_errors import ClientError
from verinfer.gateway.rpc import Rpc, RpcError


class Server(ThreadingHTTPServer):
    """Answers eth_blockNumber with 0x2a, anything else with a JSON-RPC error; records what it
    processed. ``status``: the HTTP status to answer; ``drop``: close every connection after
    its answer without saying so (an idle keep-alive the server timed out)."""

    status = 200
    drop = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen: list[tuple[str, str | None, Any]] = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append((self.path, self.headers.get("Authorization"), payload))

        def answer(req: dict[str, Any]) -> dict[str, Any]:
            if req["method"] == "eth_blockNumber":
                return {"jsonrpc": "2.0", "id": req["id"], "result": "0x2a"}
            return {"jsonrpc": "2.0", "id": req["id"], "error": {"code": -32601, "message": "nope"}}

        out = (
            [answer(r) for r in reversed(payload)] if isinstance(payload, list) else answer(payload)
        )
        body = json.dumps(out).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = self.server.drop

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url(srv: Server, rest: str = "/") -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}{rest}"


def test_batch__answers_in_call_order__errors_in_place(server: Server) -> None:
    rpc = Rpc(url(server))
    out = rpc.batch([("eth_blockNumber", []), ("eth_nothing", [1]), ("eth_blockNumber", [])])
    assert out[0] == out[2] == "0x2a"
    assert isinstance(out[1], RpcError) and str(out[1]) == "nope"
    assert len(server.seen) == 1 and len(server.seen[0][2]) == 3  # one HTTP round trip


def test_url_path_query_and_credentials__sent(server: Server) -> None:
    rpc = Rpc(url(server, "/v3/key?x=1").replace("//", "//me:s%40cret@"))
    assert rpc.call("eth_blockNumber", []) == "0x2a"
    path, auth, _ = server.seen[0]
    assert path == "/v3/key?x=1" and auth == "Basic bWU6c0BjcmV0"  # me:s@cret


def test_connection_dropped_by_server__next_call_reconnects__sent_once(server: Server) -> None:
    server.drop = True
    rpc = Rpc(url(server))
    assert [rpc.call("eth_blockNumber", []) for _ in range(3)] == ["0x2a"] * 3
    assert len(server.seen) == 3  # each call processed exactly once


def test_http_error__one_line_client_error(server: Server) -> None:
    server.status = 500
    with pytest.raises(
        ClientError, match=r"^chain unreachable at http://127\.0\.0\.1:\d+/: HTTP 500$"
    ):
        Rpc(url(server)).call("eth_blockNumber", [])


def test_nothing_listening__one_line_client_error() -> None:
    srv = Server()
    dead = url(srv)
    srv.server_close()
    with pytest.raises(ClientError, match=r"^chain unreachable at .*: ConnectionRefusedError$"):
        Rpc(dead).call("eth_blockNumber", [])


def test_not_http__refused() -> None:
    with pytest.raises(ClientError, match="not an HTTP JSON-RPC endpoint: ws://x"):
        Rpc("ws://x")
