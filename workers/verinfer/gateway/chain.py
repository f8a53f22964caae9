"""The gateway's one chain thread: every RPC call of the gateway happens here.

Requests that arrive within ``batch_window_ms`` of each other are submitted together
(``Client.submit_many``: back-to-back transactions with consecutive nonces, one round of
blocks); all pending jobs are then followed by one log poll loop (``Client.wait_many``).
HTTP handlers hand in a ``JobRequest`` and await its future.
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

from verinfer.chain_errors import ClientError
from verinfer.client import Client, JobHandle, JobSpec, ModelInfo, Result
from verinfer.digest import SamplingParams
from verinfer.gateway import errors
from verinfer.gateway.limits import LimitError, SpendLimits
from verinfer.gateway.settings import GatewaySettings
from verinfer.jobs import JobStatus

log = logging.getLogger("verinfer.gateway")
MISS_REFRESH_S = 1.0  # an unknown model name refreshes the model list at most this often


@dataclass
class JobRequest:
    """One OpenAI request turned into a job, waiting for the chain thread."""

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

    @property
    def job_ms(self) -> float:
        """Submit-to-result time: submit transaction sent -> result seen by the log poll."""
        return (self.seen_at - self.sent_at) * 1000


@dataclass
class _Pending:
    request: JobRequest
    handle: JobHandle
    model: ModelInfo
    ticket: int
    deadline: float
    batch: int


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
        self._pending: list[_Pending] = []
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gateway-chain", daemon=True)
        self.client: Client | None = None
        self.limits: SpendLimits | None = None
        self.symbol = ""
        self.decimals = 18
        self.address = ""
        self._models: list[ModelInfo] = []
        self._models_at = float("-inf")
        self._miss_at = float("-inf")
        self._prices: dict[bytes, tuple[float, int]] = {}

    # ---- life cycle ----
    def start(self, timeout: float = 120.0) -> None:
        """Connect on the chain thread; re-raises its start-up error (one line)."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ClientError(f"gateway chain thread did not connect in {timeout:g}s")
        if self._startup_error is not None:
            raise self._startup_error

    def stop(self) -> None:
        """Stop the thread; pending requests fail with a 503."""
        self._stop.set()
        self._thread.join(timeout=10)

    def submit(self, request: JobRequest) -> Future:
        """Queue a job request; its future resolves to a JobOutcome or a GatewayError."""
        self._queue.put(request)
        return request.future

    def call(self, fn: Callable[[ChainWorker], Any]) -> Future:
        """Run ``fn(self)`` on the chain thread (reads that need the connection)."""
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

    # ---- the loop ----
    def _run(self) -> None:
        try:
            with self._connect() as conn:
                self.client = conn.client
                self.decimals, self.symbol = conn.decimals, conn.symbol
                self.address = conn.client.address
                scale = 10**self.decimals
                self.limits = SpendLimits(
                    int(self.settings.max_payment_per_request * scale),
                    int(self.settings.max_payment_per_day * scale),
                )
                self.models(refresh=True)
                self._ready.set()
                self._loop()
        except BaseException as exc:
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
            else:
                log.exception("gateway chain thread stopped")
        finally:
            self._fail_all("the gateway is shutting down")

    def _loop(self) -> None:
        window = self.settings.batch_window_ms / 1000
        while not self._stop.is_set():
            wait = self.settings.poll_interval_s if self._pending else 0.2
            batch: list[JobRequest] = []
            try:
                item = self._queue.get(timeout=wait)
                self._take(item, batch)
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
            try:
                if batch:
                    self._submit(batch)
                if self._pending:
                    self._poll()
            except Exception as exc:  # keep serving; the requests of this round get a 502
                log.exception("gateway chain round failed")
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
        assert self.client is not None and self.limits is not None
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
            handles = self.client.submit_many([a[3] for a in accepted])
        except ClientError as exc:
            handles = [exc] * len(accepted)
        sent = sum(1 for h in handles if not isinstance(h, ClientError))
        for (req, model, ticket, _), handle in zip(accepted, handles, strict=True):
            if isinstance(handle, ClientError):
                self.limits.settle(ticket, 0)
                msg = str(handle)
                if msg.startswith("insufficient balance"):
                    err = errors.insufficient_balance(
                        f"{msg} (deposit more with `verinfer balance deposit`)"
                    )
                else:
                    err = errors.job_failed(msg, "submit_failed")
                req.future.set_exception(err)
                continue
            deadline = req.arrived + req.timeout_s
            self._pending.append(_Pending(req, handle, model, ticket, deadline, sent))

    def _poll(self) -> None:
        assert self.client is not None and self.limits is not None
        seen_at = time.perf_counter()
        handles = [p.handle for p in self._pending]
        results: list[Result | None]
        try:
            results = list(self.client.wait_many(handles, timeout=0, poll=0, once=True))
        except ClientError as exc:
            log.warning("poll failed: %s", exc)
            results = [None] * len(handles)
        still: list[_Pending] = []
        now = time.perf_counter()
        for p, res in zip(self._pending, results, strict=True):
            if res is not None and p.handle.done(finalized=False):
                self._finish(p, res, seen_at)
            elif now >= p.deadline:
                p.request.future.set_exception(
                    errors.job_timeout(
                        f"job {p.handle.job_id} has no result after {p.request.timeout_s:g}s "
                        f"(it is {p.handle.status.name}; it stays on chain and is refunded "
                        "if no node serves it)"
                    )
                )
            else:
                still.append(p)
        self._pending = still

    def _finish(self, p: _Pending, res: Result, seen_at: float) -> None:
        assert self.limits is not None
        if res.held:
            self.limits.settle(p.ticket, res.cost)
            sent_at = p.handle.sent_at or p.request.arrived
            outcome = JobOutcome(res, p.model, sent_at, seen_at, p.request.arrived, p.batch)
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
        for p in self._pending:
            if not p.request.future.done():
                p.request.future.set_exception(err)
        self._pending = []
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
