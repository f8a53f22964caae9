"""The gateway's hot path to the chain: plain JSON-RPC over one keep-alive HTTP connection per
thread, JSON-RPC batches, its own transaction signer, a websocket log subscription
(``LogFeed``) and a small log decoder for the market's job events.

ape answers the same calls with several milliseconds of its own per call (pydantic models, a
``get_code`` before every contract call, a block fetch inside every transaction object); the
gateway keeps ape for start-up and the model list and uses this module for what every
request does: simulate, sign, send, follow logs, read stored job hashes (and node prices).
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import threading
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote, urlsplit

import rlp
from eth_abi import decode as abi_decode
from eth_keys import keys
from eth_utils import keccak, to_canonical_address, to_checksum_address

from verinfer.chain_errors import ClientError


class RpcError(ClientError):
    """A JSON-RPC error answer; ``data`` is the revert data when the node gives it."""

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.data = data


class Rpc:
    """JSON-RPC client of one HTTP endpoint: one keep-alive ``http.client`` connection per
    thread (a call costs ~0.1 ms of Python here, ~0.3 ms through ``requests``)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url
        self.timeout = timeout
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ClientError(f"not an HTTP JSON-RPC endpoint: {url}")
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {"Content-Type": "application/json"}
        if parts.username is not None:
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(token).decode()
        self._local = threading.local()
        self._ids = itertools.count(1)

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _post(self, payload: Any) -> Any:
        body = json.dumps(payload).encode()
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request("POST", self._path, body, self._headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._local.conn = None
                # the server closed an idle keep-alive connection: nothing was processed
                stale = isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError))
                if attempt == 1 and stale:
                    continue
                raise ClientError(
                    f"chain unreachable at {self.url}: {type(exc).__name__}"
                ) from None
            if resp.status != 200:
                raise ClientError(f"chain unreachable at {self.url}: HTTP {resp.status}")
            try:
                return json.loads(data)
            except ValueError:
                raise ClientError(f"chain at {self.url} answered no JSON") from None
        raise AssertionError("unreachable")

    def call(self, method: str, params: list[Any]) -> Any:
        """One request; its result, or RpcError."""
        answer = self._post(
            {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        )
        return _result(answer)

    def batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any]:
        """Several requests in one HTTP round trip; each entry is a result or an RpcError."""
        if not calls:
            return []
        first = next(self._ids)
        payload = [
            {"jsonrpc": "2.0", "id": first + i, "method": m, "params": p}
            for i, (m, p) in enumerate(calls)
        ]
        for _ in calls[1:]:
            next(self._ids)
        answers = self._post(payload)
        if not isinstance(answers, list):  # the whole batch was refused
            err = _error(answers)
            return [err] * len(calls)
        by_id = {a.get("id"): a for a in answers}
        out: list[Any] = []
        for i in range(len(calls)):
            answer = by_id.get(first + i)
            if answer is None:
                out.append(RpcError("no answer in the batch"))
                continue
            try:
                out.append(_result(answer))
            except RpcError as exc:
                out.append(exc)
        return out


def _error(answer: Any) -> RpcError:
    err = answer.get("error") if isinstance(answer, dict) else None
    if not isinstance(err, dict):
        return RpcError(f"malformed JSON-RPC answer: {str(answer)[:200]}")
    return RpcError(str(err.get("message", "JSON-RPC error")).splitlines()[0], err.get("data"))


def _result(answer: Any) -> Any:
    if isinstance(answer, dict) and "error" in answer:
        raise _error(answer)
    if not isinstance(answer, dict) or "result" not in answer:
        raise _error(answer)
    return answer["result"]


class TxSigner:
    """Signs the gateway's submissions: EIP-1559 (type 2) transactions with no value and no
    access list, built with ``rlp`` and signed with ``eth_keys`` (coincurve) directly. The raw
    bytes are exactly ``eth_account``'s, in a third of its time (it validates and formats a
    dict per call)."""

    def __init__(self, private_key: str | bytes, chain_id: int) -> None:
        """``private_key``: 32 bytes or their hex."""
        raw = (
            bytes.fromhex(private_key.removeprefix("0x"))
            if isinstance(private_key, str)
            else private_key
        )
        self._key = keys.PrivateKey(raw)
        self.address = self._key.public_key.to_checksum_address()
        self.chain_id = chain_id

    def sign(self, to: str, data: bytes, nonce: int, gas: int, max_fee: int, tip: int) -> bytes:
        """The signed transaction calling ``to`` with ``data``, raw bytes."""
        fields = [self.chain_id, nonce, tip, max_fee, gas, to_canonical_address(to), 0, data, []]
        sig = self._key.sign_msg_hash(keccak(b"\x02" + rlp.encode(fields)))
        return b"\x02" + rlp.encode([*fields, sig.v, sig.r, sig.s])


class LogFeed:
    """The market's logs as the node pushes them: one websocket ``eth_subscribe("logs")``.

    Logs arrive when their block is mined, with no polling lag. ``wait`` returns what was
    pushed; a closed connection raises ``ClientError`` (the caller falls back to polling).
    """

    def __init__(self, url: str, flt: dict[str, Any], open_timeout: float = 2.0) -> None:
        """Connect to ``url`` (``ws://`` or ``wss://``) and subscribe to logs matching ``flt``
        (``address``, ``topics``); ClientError when either step fails."""
        from websockets.sync.client import connect

        self.url = url
        try:
            self._ws = connect(url, open_timeout=open_timeout, max_size=None)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClientError(f"no websocket at {url}: {type(exc).__name__}: {exc}") from None
        except Exception as exc:  # websockets' handshake errors (InvalidStatus, ...)
            raise ClientError(f"no websocket at {url}: {type(exc).__name__}: {exc}") from None
        try:
            self._ws.send(
                json.dumps(
                    {"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["logs", flt]}
                )
            )
            answer = json.loads(self._ws.recv(timeout=open_timeout))
            self.subscription = _result(answer)
        except (TimeoutError, ValueError, RpcError) as exc:
            self._ws.close()
            raise ClientError(f"eth_subscribe at {url} failed: {exc}") from None

    def wait(self, timeout: float) -> list[dict[str, Any]]:
        """The logs pushed within ``timeout`` seconds: blocks for the first message, then takes
        every message already received (one block's logs come together). Removed logs (a
        reorganisation) are dropped."""
        from websockets.exceptions import ConnectionClosed

        out: list[dict[str, Any]] = []
        try:
            message = self._ws.recv(timeout=timeout)
            while True:
                log = json.loads(message).get("params", {}).get("result")
                if isinstance(log, dict) and not log.get("removed"):
                    out.append(log)
                message = self._ws.recv(timeout=0)
        except TimeoutError:
            return out
        except ConnectionClosed as exc:
            raise ClientError(f"websocket {self.url} closed: {exc}") from None

    def close(self) -> None:
        """Close the connection."""
        self._ws.close()


def ws_url(http_url: str) -> str:
    """The websocket URL of a JSON-RPC endpoint served on the same port (Anvil, Hardhat)."""
    if http_url.startswith("https://"):
        return "wss://" + http_url[len("https://") :]
    if http_url.startswith("http://"):
        return "ws://" + http_url[len("http://") :]
    return http_url


@dataclass(frozen=True)
class _Event:
    name: str
    indexed: list[tuple[str, str]]  # (name, abi type)
    data_names: list[str]
    data_types: list[str]


class EventDecoder:
    """Decodes raw ``eth_getLogs`` entries of known events into attribute objects (the
    fields of the event, plus ``event_name``, ``block_number``, ``log_index`` and
    ``transaction_hash``), as ``JobHandle.apply`` and ``JobRecord`` read them."""

    def __init__(self, abis: list[Any]) -> None:
        """``abis``: ape/ethpm ``EventABI`` objects (``market.JobSubmitted.abi`` ...)."""
        self.events: dict[str, _Event] = {}
        self.topic_of: dict[str, str] = {}
        for abi in abis:
            topic = "0x" + keccak(text=abi.selector).hex()
            ins = list(abi.inputs)
            self.events[topic] = _Event(
                abi.name,
                [(i.name, i.canonical_type) for i in ins if i.indexed],
                [i.name for i in ins if not i.indexed],
                [i.canonical_type for i in ins if not i.indexed],
            )
            self.topic_of[abi.name] = topic

    def decode(self, raw: dict[str, Any]) -> SimpleNamespace | None:
        """The decoded log, or None when its event is not one of ours."""
        topics = raw.get("topics") or []
        event = self.events.get(topics[0]) if topics else None
        if event is None:
            return None
        fields: dict[str, Any] = {}
        for (name, typ), topic in zip(event.indexed, topics[1:], strict=False):
            (fields[name],) = abi_decode([typ], bytes.fromhex(topic[2:]))
        values = abi_decode(event.data_types, bytes.fromhex(raw["data"][2:]))
        fields.update(zip(event.data_names, values, strict=True))
        for name, value in fields.items():
            if isinstance(value, str) and value.startswith("0x") and len(value) == 42:
                fields[name] = to_checksum_address(value)
        return SimpleNamespace(
            event_name=event.name,
            block_number=int(raw["blockNumber"], 16),
            log_index=int(raw["logIndex"], 16),
            transaction_hash=raw["transactionHash"].lower(),
            **fields,
        )
