"""The gateway's chain side: a submit thread and a poll thread.

The submit thread owns the ape connection (start-up, models, prices) and sends jobs: requests
that arrive within ``batch_window_ms`` of each other are simulated together (one JSON-RPC
batch with the fee, nonce and balance reads), signed with consecutive nonces and sent in one
more batch; no receipt is awaited. The poll thread follows every sent job from ONE
``eth_getLogs`` per new head over all the market's job events: a ``JobSubmitted`` log is
matched to its transaction hash (that gives the job id), later logs to job ids; a published
result's stored hash is read for all of a poll's results in one JSON-RPC batch and compared
with the hash computed locally. Both threads use plain JSON-RPC (``gateway.rpc``), not ape,
on this hot path. HTTP handlers hand in a ``JobRequest`` and await its future.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from eth_abi import encode as abi_encode
from eth_utils import keccak

from verinfer.chain_errors import ClientError
from verinfer.client import (
    JOB_EVENTS,
    MAX_LOG_RANGE,
    Client,
    JobHandle,
    JobSpec,
    ModelInfo,
    Result,
)
from verinfer.digest import SamplingParams
from verinfer.gateway import errors
from verinfer.gateway.limits import LimitError, SpendLimits
from verinfer.gateway.rpc import EventDecoder, Rpc, RpcError
from verinfer.gateway.settings import GatewaySettings
from verinfer.jobs import JobRecord, JobStatus

log = logging.getLogger("verinfer.gateway")
MISS_REFRESH_S = 1.0  # an unknown model name refreshes the model list at most this often
RECEIPT_CHECK_S = 1.0  # a sent job with no JobSubmitted log yet: look at its receipt this often
JOB_HASH_SELECTOR = keccak(text="job_hash(uint256)")[:4]
BALANCE_OF_SELECTOR = keccak(text="balance_of(address)")[:4]


@dataclass
class JobRequest:
    """One OpenAI request turned into a job, waiting for the chain threads."""

    model: str
    input: bytes
    max_tokens: int
    temperature: float
    seed: int
    timeout_s: float
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.perf_counter)


@dataclass
class JobOutcome:
    """A held result (published, digest checked) with the gateway's timings."""

    result: Result
    model: ModelInfo
    sent_at: float
    seen_at: float
    arrived: float  # when the HTTP handler handed the request in
    batch: int = 1  # how many jobs were submitted together with this one
    sent_unix: float = 0.0  # time.time() when the submit transaction was sent

    @property
    def job_ms(self) -> float:
        """Submit-to-result time: submit transaction sent -> result seen by the log poll."""
        return (self.seen_at - self.sent_at) * 1000


@dataclass(eq=False)  # identity: entries are keys of the poll's de-duplication
class _Pending:
    request: JobRequest
    model: ModelInfo
    ticket: int
    deadline: float
    tx_hash: str
    from_block: int  # the submit transaction is in this block or a later one
    batch: int = 1
    sent_at: float = 0.0
    sent_unix: float = 0.0
    handle: JobHandle | None = None  # once its JobSubmitted log is seen
    receipt_at: float = 0.0  # last receipt look-up


class ChainWorker:
    """Owns the ape connection and the Client; batches submissions, polls for results."""

    def __init__(
        self,
        settings: GatewaySettings,
        connect: Callable[[], Any],
    ) -> None:
        """``connect()`` returns a context manager yielding a ``cli_common.Conn``."""
        self.settings = settings
        self._connect = connect
        self._queue: queue.Queue[JobRequest | tuple[Callable[[Any], Any], Future]] = queue.Queue()
        self._lock = threading.Lock()  # guards the pending tables
        self._by_tx: dict[str, _Pending] = {}
        self._by_job: dict[int, _Pending] = {}
        self._wake = threading.Event()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gateway-submit", daemon=True)
        self._poller = threading.Thread(target=self._poll_loop, name="gateway-poll", daemon=True)
        self.client: Client | None = None
        self.limits: SpendLimits | None = None
        self.rpc: Rpc | None = None
        self.symbol = ""
        self.decimals = 18
        self.address = ""
        self._key: str | None = None
        self._decoder: EventDecoder | None = None
        self._submit_types: list[str] = []
        self._submit_selector = b""
        self._models: list[ModelInfo] = []
        self._models_at = float("-inf")
        self._miss_at = float("-inf")
        self._prices: dict[bytes, tuple[float, int]] = {}

    # ---- life cycle ----
    def start(self, timeout: float = 120.0) -> None:
        """Connect on the submit thread, then start polling; re-raises a start-up error."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ClientError(f"gateway chain thread did not connect in {timeout:g}s")
        if self._startup_error is not None:
            raise self._startup_error
        self._poller.start()

    def stop(self) -> None:
        """Stop both threads; pending requests fail with a 503."""
        self._stop.set()
        self._wake.set()
        if self._poller.is_alive():
            self._poller.join(timeout=10)
        self._thread.join(timeout=10)

    def submit(self, request: JobRequest) -> Future:
        """Queue a job request; its future resolves to a JobOutcome or a GatewayError."""
        self._queue.put(request)
        return request.future

    def call(self, fn: Callable[[ChainWorker], Any]) -> Future:
        """Run ``fn(self)`` on the submit thread (reads that need the ape connection)."""
        fut: Future = Future()
        self._queue.put((fn, fut))
        return fut

    # ---- models ----
    def models(self, refresh: bool = False) -> list[ModelInfo]:
        """Registered models with their nodes' prices (cached for ``models_ttl_s``)."""
        assert self.client is not None
        now = time.monotonic()
        if refresh or now - self._models_at > self.settings.models_ttl_s:
            self._models = self.client.models()
            self._models_at = now
        return self._models

    def cached_model_id(self, name: str) -> bytes | None:
        """The id ``name`` resolves to in the cached model list (no chain call; any thread)."""
        found = _match(self._models, name)
        return found[0].model_id if len(found) == 1 else None

    def resolve(self, name: str) -> ModelInfo:
        """The model a request names (name, name@revision or 0x id); 404 GatewayError."""
        found = _match(self.models(), name)
        if not found and time.monotonic() - self._miss_at > MISS_REFRESH_S:
            self._miss_at = time.monotonic()
            found = _match(self.models(refresh=True), name)
        if not found:
            raise errors.unknown_model(name)
        if len(found) > 1:
            revs = ", ".join(m.revision for m in found)
            raise errors.bad_request(
                f"ambiguous model '{name}': name it as name@revision ({revs})", "model"
            )
        return found[0]

    def price(self, model_id: bytes) -> int:
        """Highest price per token among eligible nodes (cached for ``price_ttl_s``)."""
        assert self.client is not None
        now = time.monotonic()
        cached = self._prices.get(model_id)
        if cached is None or now - cached[0] > self.settings.price_ttl_s:
            try:
                cached = (now, self.client.price(model_id))
            except ClientError as exc:
                raise errors.GatewayError(
                    503, str(exc), "server_error", "model_not_served", "model"
                ) from None
            self._prices[model_id] = cached
        return cached[1]

    # ---- the submit thread ----
    def _run(self) -> None:
        try:
            with self._connect() as conn:
                self._setup(conn)
                self._ready.set()
                self._loop()
        except BaseException as exc:
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
            else:
                log.exception("gateway submit thread stopped")
        finally:
            self._stop.set()
            self._wake.set()
            if self._poller.is_alive() and threading.current_thread() is not self._poller:
                self._poller.join(timeout=10)
            self._fail_all("the gateway is shutting down")

    def _setup(self, conn: Any) -> None:
        from ape import chain

        client: Client = conn.client
        self.client = client
        self.decimals, self.symbol = conn.decimals, conn.symbol
        self.address = client.address
        scale = 10**self.decimals
        self.limits = SpendLimits(
            int(self.settings.max_payment_per_request * scale),
            int(self.settings.max_payment_per_day * scale),
        )
        provider = chain.provider
        url = getattr(provider, "http_uri", None) or provider.uri
        if not str(url).startswith("http"):
            raise ClientError(f"the gateway needs an HTTP JSON-RPC endpoint, not {url}")
        self.rpc = Rpc(str(url))
        key = getattr(client.account, "private_key", None)
        self._key = key if isinstance(key, str) else None
        market = client.market
        self._decoder = EventDecoder(
            [getattr(market, name).abi for name in (*JOB_EVENTS, "JobSubmitted")]
        )
        submit_abi = market.submit.abis[0]
        self._submit_types = [i.canonical_type for i in submit_abi.inputs]
        self._submit_selector = keccak(text=submit_abi.selector)[:4]
        self.models(refresh=True)

    def _loop(self) -> None:
        window = self.settings.batch_window_ms / 1000
        while not self._stop.is_set():
            batch: list[JobRequest] = []
            try:
                self._take(self._queue.get(timeout=0.2), batch)
                end = time.perf_counter() + window
                while (left := end - time.perf_counter()) > 0:
                    try:
                        self._take(self._queue.get(timeout=left), batch)
                    except queue.Empty:
                        break
                while True:  # whatever else is already queued joins this batch
                    self._take(self._queue.get_nowait(), batch)
            except queue.Empty:
                pass
            if not batch:
                continue
            try:
                self._submit(batch)
            except Exception as exc:  # keep serving; the requests of this round get a 502
                log.exception("gateway submit round failed")
                for req in batch:
                    if not req.future.done():
                        req.future.set_exception(errors.job_failed(str(exc), "gateway_error"))

    def _take(self, item: Any, batch: list[JobRequest]) -> None:
        if isinstance(item, JobRequest):
            batch.append(item)
            return
        fn, fut = item
        try:
            fut.set_result(fn(self))
        except BaseException as exc:
            fut.set_exception(exc)

    def _submit(self, batch: list[JobRequest]) -> None:
        assert self.limits is not None
        accepted: list[tuple[JobRequest, ModelInfo, int, JobSpec]] = []
        for req in batch:
            try:
                model = self.resolve(req.model)
                payment = req.max_tokens * self.price(model.model_id)
                try:
                    ticket = self.limits.reserve(payment)
                except LimitError as exc:
                    raise errors.limit_exceeded(str(exc), exc.code) from None
                params = SamplingParams(
                    max_tokens=req.max_tokens,
                    temperature_milli=round(req.temperature * 1000),
                    seed=req.seed,
                )
            except errors.GatewayError as exc:
                req.future.set_exception(exc)
                continue
            except ClientError as exc:
                req.future.set_exception(errors.job_failed(str(exc), "chain_error"))
                continue
            spec = JobSpec(model.model_id, req.input, params, payment)
            accepted.append((req, model, ticket, spec))
        if not accepted:
            return
        try:
            outcomes = self._send(accepted)
        except ClientError as exc:
            outcomes = [exc] * len(accepted)
        for (req, _, ticket, _), out in zip(accepted, outcomes, strict=True):
            if not isinstance(out, ClientError):
                continue
            self.limits.settle(ticket, 0)
            msg = str(out)
            if msg.startswith("insufficient balance"):
                err = errors.insufficient_balance(
                    f"{msg} (deposit more with `verinfer balance deposit`)"
                )
            else:
                err = errors.job_failed(msg, "submit_failed")
            req.future.set_exception(err)

    def _send(
        self, accepted: list[tuple[JobRequest, ModelInfo, int, JobSpec]]
    ) -> list[_Pending | ClientError]:
        """Simulate, sign and send ``specs``: two JSON-RPC round trips for the whole batch.

        Each job is registered with the poll thread (by transaction hash) before it is sent,
        so its ``JobSubmitted`` log cannot be missed. A job the prepaid balance cannot cover,
        or whose simulation reverts, is not sent.
        """
        assert self.rpc is not None and self.client is not None
        market = self.client.market.address
        me = self.address
        specs = [a[3] for a in accepted]
        balance_call = BALANCE_OF_SELECTOR + abi_encode(["address"], [me])
        reads: list[tuple[str, list[Any]]] = [
            ("eth_getBlockByNumber", ["latest", False]),
            ("eth_maxPriorityFeePerGas", []),
            ("eth_getTransactionCount", [me, "pending"]),
            ("eth_call", [{"to": market, "data": "0x" + balance_call.hex()}, "pending"]),
        ]
        answers = self.rpc.batch(reads)
        for a in answers:
            if isinstance(a, RpcError):
                raise ClientError(f"submit failed: {a}")
        block, tip_hex, nonce_hex, balance_hex = answers
        now = int(block["timestamp"], 16)
        latest = int(block["number"], 16)
        base_fee = int(block.get("baseFeePerGas") or "0x0", 16)
        tip = int(tip_hex, 16)
        nonce = int(nonce_hex, 16)
        prepaid = int(balance_hex, 16)
        # real deadlines need the chain's time: encode again with it
        calldata = [
            self._submit_selector + abi_encode(self._submit_types, spec.args(now)) for spec in specs
        ]
        out: list[_Pending | ClientError] = [ClientError("submit failed")] * len(specs)
        todo: list[int] = []
        for i, spec in enumerate(specs):
            if spec.max_payment > prepaid:
                out[i] = ClientError(
                    f"insufficient balance: job escrows {spec.max_payment}, "
                    f"prepaid balance left is {prepaid}"
                )
                continue
            prepaid -= spec.max_payment
            todo.append(i)
        estimates = self.rpc.batch(
            [
                ("eth_estimateGas", [{"from": me, "to": market, "data": "0x" + calldata[i].hex()}])
                for i in todo
            ]
        )
        raws: list[tuple[int, bytes, _Pending]] = []
        for i, gas in zip(todo, estimates, strict=True):
            if isinstance(gas, RpcError):
                out[i] = ClientError(f"submit reverted: {gas}")
                continue
            limit = int(gas, 16)
            raw = self._sign(calldata[i], nonce, limit + limit // 5, 2 * base_fee + tip, tip)
            nonce += 1
            req, model, ticket, _ = accepted[i]
            tx_hash = "0x" + keccak(raw).hex()
            entry = _Pending(req, model, ticket, req.arrived + req.timeout_s, tx_hash, latest + 1)
            raws.append((i, raw, entry))
        for _, _, entry in raws:
            entry.batch = len(raws)
        with self._lock:
            for _, _, entry in raws:
                self._by_tx[entry.tx_hash] = entry
        sent_at, sent_unix = time.perf_counter(), time.time()
        results = self.rpc.batch([("eth_sendRawTransaction", ["0x" + r.hex()]) for _, r, _ in raws])
        for (i, _, entry), res in zip(raws, results, strict=True):
            if isinstance(res, RpcError):
                with self._lock:
                    self._by_tx.pop(entry.tx_hash, None)
                out[i] = ClientError(f"submit failed: {res}")
                continue
            entry.sent_at, entry.sent_unix = sent_at, sent_unix
            out[i] = entry
        self._wake.set()
        return out

    def _sign(self, data: bytes, nonce: int, gas: int, max_fee: int, tip: int) -> bytes:
        """The signed submit transaction (type 2), raw bytes."""
        assert self.client is not None
        market = self.client.market.address
        if self._key is not None:
            from eth_account import Account

            tx = {
                "type": 2,
                "chainId": self.client.chain_id,
                "nonce": nonce,
                "to": market,
                "value": 0,
                "data": data,
                "gas": gas,
                "maxFeePerGas": max_fee,
                "maxPriorityFeePerGas": tip,
            }
            return bytes(Account.sign_transaction(tx, self._key).raw_transaction)
        from ape import chain

        txn = chain.provider.network.ecosystem.create_transaction(
            chain_id=self.client.chain_id,
            receiver=market,
            data=data,
            nonce=nonce,
            gas_limit=gas,
            max_fee=max_fee,
            max_priority_fee=tip,
            type=2,
        )
        signed = self.client.account.sign_transaction(txn)
        if signed is None:
            raise ClientError("submit failed: the account refused to sign")
        return bytes(signed.serialize_transaction())

    # ---- the poll thread ----
    def _poll_loop(self) -> None:
        cursor: int | None = None
        interval = self.settings.poll_interval_s
        while not self._stop.is_set():
            with self._lock:
                busy = bool(self._by_tx)
                first = min((p.from_block for p in self._by_tx.values()), default=None)
            if not busy:
                cursor = None
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            assert first is not None
            cursor = first if cursor is None else min(cursor, first)
            try:
                cursor = self._poll(cursor)
            except Exception as exc:  # keep polling; a dead chain ends in each job's timeout
                log.warning("poll failed: %s", exc)
            self._check_deadlines()
            self._wake.wait(interval)
            self._wake.clear()

    def _poll(self, cursor: int) -> int:
        """One poll: new blocks' job logs, then the held results; returns the next cursor."""
        assert self.rpc is not None and self._decoder is not None and self.client is not None
        head = int(self.rpc.call("eth_blockNumber", []), 16)
        if head < cursor:
            return cursor
        topics = [list(self._decoder.events)]
        raw: list[Any] = []
        first = cursor
        while first <= head:
            upto = min(head, first + MAX_LOG_RANGE - 1)
            flt = {
                "address": self.client.market.address,
                "fromBlock": hex(first),
                "toBlock": hex(upto),
                "topics": topics,
            }
            raw += self.rpc.call("eth_getLogs", [flt])
            first = upto + 1
        seen_at = time.perf_counter()
        raw.sort(key=lambda r: (int(r["blockNumber"], 16), int(r["logIndex"], 16)))
        touched: list[_Pending] = []
        with self._lock:
            for entry in raw:
                lg = self._decoder.decode(entry)
                if lg is None:
                    continue
                if lg.event_name == "JobSubmitted":
                    p = self._by_tx.get(lg.transaction_hash)
                    if p is None or p.handle is not None:
                        continue
                    record = JobRecord.from_submitted(lg)
                    p.handle = JobHandle(self.client, record, JobStatus.OPEN, lg.block_number)
                    p.handle.sent_at = p.sent_at
                    self._by_job[record.job_id] = p
                    continue
                p = self._by_job.get(int(lg.job_id))
                if p is not None and p.handle is not None:
                    p.handle.apply(lg)
                    touched.append(p)
        done = [p for p in dict.fromkeys(touched) if p.handle and p.handle.done(finalized=False)]
        if done:
            self._deliver(done, seen_at)
        return head + 1

    def _deliver(self, done: list[_Pending], seen_at: float) -> None:
        """Read the stored hashes of ``done`` (one JSON-RPC batch) and answer their requests."""
        assert self.rpc is not None and self.client is not None
        market = self.client.market.address
        calls: list[tuple[str, list[Any]]] = []
        for p in done:
            assert p.handle is not None
            data = JOB_HASH_SELECTOR + p.handle.job_id.to_bytes(32, "big")
            calls.append(("eth_call", [{"to": market, "data": "0x" + data.hex()}, "latest"]))
        stored = self.rpc.batch(calls)
        for p, word in zip(done, stored, strict=True):
            assert p.handle is not None
            if isinstance(word, RpcError):
                log.warning("job_hash(%s) failed: %s", p.handle.job_id, word)
                continue  # tried again on the next poll that touches it, else times out
            res = self.client.result_of(p.handle, bytes.fromhex(word[2:]))
            self._forget(p)
            self._finish(p, res, seen_at)

    def _forget(self, p: _Pending) -> None:
        with self._lock:
            self._by_tx.pop(p.tx_hash, None)
            if p.handle is not None:
                self._by_job.pop(p.handle.job_id, None)

    def _check_deadlines(self) -> None:
        """Time out late jobs; look at the receipt of a job whose log has not come."""
        now = time.perf_counter()
        with self._lock:
            entries = list(self._by_tx.values())
        for p in entries:
            if (
                p.handle is None
                and p.sent_at
                and (now >= p.deadline or now - max(p.sent_at, p.receipt_at) >= RECEIPT_CHECK_S)
            ):
                p.receipt_at = now
                if self._check_receipt(p):
                    continue
            if now < p.deadline or p.request.future.done():
                continue
            self._forget(p)
            if p.handle is not None:
                what = f"job {p.handle.job_id} has no result after {p.request.timeout_s:g}s "
                state = p.handle.status.name
            else:
                what = (
                    f"submit transaction {p.tx_hash} has no JobSubmitted log after "
                    f"{p.request.timeout_s:g}s "
                )
                state = "PENDING"
            p.request.future.set_exception(
                errors.job_timeout(
                    f"{what}(it is {state}; it stays on chain and is refunded if no node serves it)"
                )
            )

    def _check_receipt(self, p: _Pending) -> bool:
        """Take the job id from the receipt (True when the job failed and is answered)."""
        assert self.rpc is not None and self._decoder is not None and self.client is not None
        try:
            receipt = self.rpc.call("eth_getTransactionReceipt", [p.tx_hash])
        except ClientError as exc:
            log.warning("receipt of %s: %s", p.tx_hash, exc)
            return False
        if receipt is None:
            return False
        if int(receipt["status"], 16) != 1:
            self._forget(p)
            assert self.limits is not None
            self.limits.settle(p.ticket, 0)
            p.request.future.set_exception(
                errors.job_failed(
                    f"submit reverted: transaction {p.tx_hash} failed", "submit_failed"
                )
            )
            return True
        for entry in receipt["logs"]:
            lg = self._decoder.decode(entry)
            if lg is not None and lg.event_name == "JobSubmitted":
                with self._lock:
                    if p.handle is None:
                        record = JobRecord.from_submitted(lg)
                        p.handle = JobHandle(self.client, record, JobStatus.OPEN, lg.block_number)
                        p.handle.sent_at = p.sent_at
                        self._by_job[record.job_id] = p
        return False

    def _finish(self, p: _Pending, res: Result, seen_at: float) -> None:
        assert self.limits is not None
        if res.held:
            self.limits.settle(p.ticket, res.cost)
            sent_at = p.sent_at or p.request.arrived
            outcome = JobOutcome(
                res, p.model, sent_at, seen_at, p.request.arrived, p.batch, p.sent_unix
            )
            p.request.future.set_result(outcome)
            return
        if res.status >= JobStatus.PUBLISHED and res.status != JobStatus.CANCELLED:
            msg, code = (
                f"job {res.job_id}: the published result fails its digest check",
                ("result_rejected"),
            )
        else:
            msg, code = f"job {res.job_id} ended {res.status.name} without a result", "job_failed"
        if res.status in (JobStatus.CANCELLED, JobStatus.EXPIRED, JobStatus.SLASHED):
            self.limits.settle(p.ticket, 0)
        p.request.future.set_exception(errors.job_failed(msg, code))

    def _fail_all(self, message: str) -> None:
        err = errors.GatewayError(503, message, "server_error", "gateway_stopped")
        with self._lock:
            entries = list(self._by_tx.values())
            self._by_tx.clear()
            self._by_job.clear()
        for p in entries:
            if not p.request.future.done():
                p.request.future.set_exception(err)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            fut = item.future if isinstance(item, JobRequest) else item[1]
            if not fut.done():
                fut.set_exception(err)


def _match(models: list[ModelInfo], name: str) -> list[ModelInfo]:
    if name.startswith("0x") and len(name) == 66:
        return [m for m in models if "0x" + m.model_id.hex() == name.lower()]
    base, _, revision = name.partition("@")
    return [m for m in models if m.name == base and revision in ("", m.revision)]


def model_label(model: ModelInfo, models: list[ModelInfo]) -> str:
    """The id the gateway lists a model under: its name, or name@revision when shared."""
    same = [m for m in models if m.name == model.name]
    return model.name if len(same) == 1 else f"{model.name}@{model.revision}"
