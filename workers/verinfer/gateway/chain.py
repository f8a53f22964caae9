"""The gateway's chain side: a submit thread, a send thread and a poll thread.

The submit thread owns the ape connection (start-up, the model list) and prepares jobs: what
queued while it was busy (plus ``batch_window_ms``) is one batch, whose fee, nonce and balance
reads and simulations go out in one JSON-RPC batch; the jobs are signed with consecutive
nonces (the jobs with inputs of at most 2,048 bytes as one ``Market.submit_many`` per 2..16 of
them, others and a lone job as one ``submit`` each) and handed to the send thread, which sends
them in one more batch (no receipt is awaited) while the submit thread prepares the next
batch. The poll thread follows every sent job from the market's job logs, pushed over a
websocket subscription (``eth_getLogs`` as backstop, or polling without a websocket): a
``JobSubmitted`` log is matched to its transaction hash and its place in that transaction
(that gives the job id), later logs to job ids; the stored hashes of the results that came
together are read in one JSON-RPC batch and compared with the hash computed locally. The hot
path is plain JSON-RPC (``gateway.rpc``), not ape. HTTP handlers
hand in a ``JobRequest`` and await its future.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address

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
from verinfer.gateway.route import GatewayRouter
from verinfer.gateway.rpc import EventDecoder, LogFeed, Rpc, RpcError, TxSigner, ws_url
from verinfer.gateway.settings import GatewaySettings
from verinfer.jobs import ZERO_ADDRESS, JobRecord, JobStatus
from verinfer.tokenizers_local import context_error

log = logging.getLogger("verinfer.gateway")
MISS_REFRESH_S = 1.0  # an unknown model name refreshes the model list at most this often
RECEIPT_CHECK_S = 1.0  # a sent job with no JobSubmitted log yet: look at its receipt this often
CHAIN_TIME_SLACK_S = 30  # estimated vs read chain time: a bigger gap re-encodes the deadlines
JOB_HASH_SELECTOR = keccak(text="job_hash(uint256)")[:4]
BALANCE_OF_SELECTOR = keccak(text="balance_of(address)")[:4]
MODEL_NODES_SELECTOR = keccak(text="model_nodes(bytes32)")[:4]
SERVE_PRICE_SELECTOR = keccak(text="serve_price(address,bytes32)")[:4]
IS_ELIGIBLE_SELECTOR = keccak(text="is_eligible(address,bytes32)")[:4]
EXCLUSIVE_WINDOW_SELECTOR = keccak(text="exclusive_window()")[:4]
GROUP_MAX_JOBS = 16  # Market.submit_many: at most 16 jobs ...
GROUP_MAX_INPUT = 2_048  # ... of at most 2,048 input bytes each (larger ones use submit)


@dataclass
class JobRequest:
    """One OpenAI request turned into a job, waiting for the chain threads."""

    model: str
    input: bytes
    max_tokens: int
    temperature: float
    seed: int
    timeout_s: float
    private: bool = False  # encrypt to the node's key (docs/privacy.md); input becomes the envelope
    job_key: bytes | None = None
    node: str | None = None  # pinned by the request ("node")
    exclude: tuple[str, ...] = ()  # "exclude_nodes"
    routing: str | None = None  # "score" / "open" (None: the gateway's setting)
    future: Future = field(default_factory=Future)
    sent: Future = field(default_factory=Future)  # set once its transaction is handed to send
    arrived: float = field(default_factory=time.perf_counter)
    taken_at: float = 0.0


@dataclass
class JobOutcome:
    """A held result (published, digest checked) with the gateway's timings."""

    result: Result
    model: ModelInfo
    sent_at: float
    seen_at: float
    arrived: float  # when the HTTP handler handed the request in
    batch: int = 1  # how many jobs were submitted together with this one
    tx_hash: str = ""  # its submit (or submit_many) transaction
    tx_jobs: int = 1  # how many jobs that transaction submitted
    sent_unix: float = 0.0  # time.time() when the submit transaction was sent
    taken_at: float = 0.0  # when the submit thread took the request off its queue
    delivered_at: float = 0.0  # when the poll thread answered the request's future
    routed_to: str | None = None  # the job's preferred node (None: open to the first claimer)

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
    payment: int = 0  # the job's escrow
    params: bytes = b""  # its encoded sampling parameters
    routed_to: str | None = None  # its preferred node (None: open)
    fell_open: bool = False  # its node let the exclusive window pass (said once in the log)
    batch: int = 1
    tx_jobs: int = 1  # jobs in its transaction (2..16: one submit_many)
    sent_at: float = 0.0
    sent_unix: float = 0.0
    handle: JobHandle | None = None  # once its JobSubmitted log is seen
    receipt_at: float = 0.0  # last receipt look-up
    delivering: bool = False  # its result is held: being answered (later logs are ignored)


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
        self._by_tx: dict[str, list[_Pending]] = {}  # a submit_many's jobs share one hash
        self._tx_jobs: dict[str, set[int]] = {}  # job ids a pending transaction's logs gave
        self._by_job: dict[int, _Pending] = {}
        self._fresh_from: int | None = None  # lowest first block of jobs sent since last poll
        self._retry: list[_Pending] = []  # held results whose stored hash read failed
        self._submitted_topic = ""
        self._chain_time = (0, time.monotonic())  # (block timestamp, when it was read)
        self._feed: LogFeed | None = None
        self._access_lists = True  # simulate with eth_createAccessList (off if unsupported)
        self.results_via = ""  # how results reach the gateway (said at start-up)
        self._send_pool = ThreadPoolExecutor(1, thread_name_prefix="gateway-send")
        self._sending: Future | None = None  # the previous batch's send (bool: all accepted)
        self._next_nonce: int | None = None  # after the last batch handed to the send thread
        self._in_flight_escrow = 0  # escrow of that batch
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
        self._signer: TxSigner | None = None  # when the account's key is local
        self._decoder: EventDecoder | None = None
        self._submit_types: list[str] = []
        self._submit_selector = b""
        self._many_types: list[str] = []
        self._many_selector = b""
        self._models: list[ModelInfo] = []
        self._models_at = float("-inf")
        self._miss_at = float("-inf")
        self._prices: dict[bytes, tuple[float, dict[str, int]]] = {}
        self.exclusive_window = 0  # Market.exclusive_window(), read with the prices
        self.router: GatewayRouter | None = None  # set once connected
        self.routing_says = ""  # how jobs are routed (said at start-up)

    # ---- life cycle ----
    def start(self, timeout: float = 120.0) -> None:
        """Connect on the submit thread, then start polling; re-raises a start-up error."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ClientError(f"gateway chain thread did not connect in {timeout:g}s")
        if self._startup_error is not None:
            raise self._startup_error
        self._feed = self._open_feed()
        self._poller.start()

    def stop(self) -> None:
        """Stop the chain threads; pending requests fail with a 503."""
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
        """Highest price per token among eligible nodes (cached for ``price_ttl_s``): what a
        job escrows per token, so that every eligible node may claim it once it falls open."""
        return max(self.eligible(model_id).values())

    def eligible(self, model_id: bytes) -> dict[str, int]:
        """The model's eligible nodes and their prices per token (cached for
        ``price_ttl_s``); 503 GatewayError when none."""
        assert self.client is not None
        now = time.monotonic()
        cached = self._prices.get(model_id)
        if cached is None or now - cached[0] > self.settings.price_ttl_s:
            try:
                cached = (now, self._read_price(model_id))
            except ClientError as exc:
                raise errors.GatewayError(
                    503, str(exc), "server_error", "model_not_served", "model"
                ) from None
            self._prices[model_id] = cached
        return cached[1]

    def _read_price(self, model_id: bytes) -> dict[str, int]:
        """``Client.price`` over plain JSON-RPC: the model's nodes (and the market's exclusive
        window), then every node's price and eligibility in one batch (two round trips instead
        of ape's several per node). Returns the eligible nodes' prices."""
        assert self.rpc is not None and self.client is not None
        market = self.client.market.address

        def call(selector: bytes, types: list[str], args: list[Any]) -> tuple[str, list[Any]]:
            data = "0x" + (selector + abi_encode(types, args)).hex()
            return ("eth_call", [{"to": market, "data": data}, "latest"])

        first = self.rpc.batch(
            [
                call(MODEL_NODES_SELECTOR, ["bytes32"], [model_id]),
                call(EXCLUSIVE_WINDOW_SELECTOR, [], []),
            ]
        )
        for answer in first:
            if isinstance(answer, RpcError):
                raise answer
        word, window = first
        self.exclusive_window = int(window, 16)
        (nodes,) = abi_decode(["address[]"], bytes.fromhex(word[2:]))
        calls: list[tuple[str, list[Any]]] = []
        for node in nodes:
            calls.append(call(SERVE_PRICE_SELECTOR, ["address", "bytes32"], [node, model_id]))
            calls.append(call(IS_ELIGIBLE_SELECTOR, ["address", "bytes32"], [node, model_id]))
        answers = self.rpc.batch(calls)
        for answer in answers:
            if isinstance(answer, RpcError):
                raise answer
        prices: dict[str, int] = {
            to_checksum_address(node): int(price, 16)
            for node, price, eligible in zip(nodes, answers[::2], answers[1::2], strict=True)
            if int(eligible, 16)
        }
        if not prices:
            raise ClientError(f"no staked node serves model 0x{model_id.hex()}")
        return prices

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
            self._send_pool.shutdown(wait=True)  # a batch in flight is answered first
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
            fmt=conn.fmt,
        )
        provider = chain.provider
        url = getattr(provider, "http_uri", None) or provider.uri
        if not str(url).startswith("http"):
            raise ClientError(f"the gateway needs an HTTP JSON-RPC endpoint, not {url}")
        self.rpc = Rpc(str(url))
        key = getattr(client.account, "private_key", None)
        if isinstance(key, str):  # a local key: signed here (else by the ape account)
            self._signer = TxSigner(key, client.chain_id)
            if self._signer.address != client.address:
                raise ClientError("the account's key does not match its address")
        market = client.market
        self._decoder = EventDecoder(
            [getattr(market, name).abi for name in (*JOB_EVENTS, "JobSubmitted")]
        )
        self._submitted_topic = self._decoder.topic_of["JobSubmitted"]
        submit_abi = market.submit.abis[0]
        self._submit_types = [i.canonical_type for i in submit_abi.inputs]
        self._submit_selector = keccak(text=submit_abi.selector)[:4]
        many_abi = market.submit_many.abis[0]
        self._many_types = [i.canonical_type for i in many_abi.inputs]
        self._many_selector = keccak(text=many_abi.selector)[:4]
        self._set_chain_time(
            int(self.rpc.call("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)
        )
        self._access_lists = self._supports_access_lists()
        self.models(refresh=True)
        settings = self.settings
        self.router = GatewayRouter(
            client.indexer, settings.weights(), settings.route_sync_s, settings.routing
        )
        if settings.routing == "score":
            self.router.sync(force=True)  # the whole history once, before the first request
            w = self.router.policy.weights
            self.routing_says = (
                f"by track record (reliability={w.reliability:g},latency={w.latency:g},"
                f"price={w.price:g},stake={w.stake:g}; synced every {settings.route_sync_s:g}s)"
            )
        else:
            self.routing_says = "open (first claimer) unless a request names a node"

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
            item.taken_at = time.perf_counter()
            batch.append(item)
            return
        fn, fut = item
        try:
            fut.set_result(fn(self))
        except BaseException as exc:
            fut.set_exception(exc)

    def _submit(self, batch: list[JobRequest]) -> None:
        assert self.limits is not None and self.router is not None
        accepted: list[tuple[JobRequest, ModelInfo, int, JobSpec]] = []
        if any(not r.private and (r.routing or self.settings.routing) == "score" for r in batch):
            self.router.sync()  # at most every route_sync_s
        with self._lock:  # the gateway's own unanswered jobs per node: counted as tries
            inflight = Counter(
                p.routed_to.lower() for g in self._by_tx.values() for p in g if p.routed_to
            )
        for req in batch:
            try:
                model = self.resolve(req.model)
                if problem := context_error(model.model_id, req.input, req.max_tokens):
                    raise errors.bad_request(problem, "max_tokens", "context_length_exceeded")
                payment = req.max_tokens * self.price(model.model_id)
                node = self._route(req, model, inflight)
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
            try:
                spec = self._spec(req, model.model_id, params, payment, node)
            except ClientError as exc:
                self.limits.settle(ticket, 0)
                req.future.set_exception(errors.bad_request(str(exc), "private"))
                continue
            accepted.append((req, model, ticket, spec))
        if not accepted:
            return
        try:
            outcomes = self._send(accepted)
        except ClientError as exc:
            outcomes = [exc] * len(accepted)
        for (req, _, ticket, _), out in zip(accepted, outcomes, strict=True):
            if isinstance(out, ClientError):
                self._refuse(req, ticket, out)

    def _route(self, req: JobRequest, model: ModelInfo, inflight: Counter[str]) -> str | None:
        """The job's preferred node (``GatewayRouter.choose``; None: open), counted in
        ``inflight``; a private job's is the pinned node (or None: ``_spec`` chooses it)."""
        assert self.router is not None
        label = model_label(model, self._models)
        if req.private:
            if req.routing == "open":
                raise errors.bad_request(
                    'a private job names its node: routing "open" does not apply', "routing"
                )
            if req.node is None:
                return None
        node = self.router.choose(
            model.model_id,
            label,
            self.eligible(model.model_id),
            pin=req.node,
            exclude=req.exclude,
            routing=req.routing,
            inflight=inflight,
        )
        if node is not None:
            inflight[node.lower()] += 1
        return node

    def _spec(
        self,
        req: JobRequest,
        model_id: bytes,
        params: SamplingParams,
        payment: int,
        node: str | None = None,
    ) -> JobSpec:
        """The job to send, to ``node`` (None: open); a private request's input is sealed to
        its node's key (the pinned one, else ``Client.private_node``: the eligible node with a
        valid key that its track record ranks first, outside ``exclude_nodes``) and its job key
        kept for the answer."""
        if not req.private:
            return JobSpec(model_id, req.input, params, payment, node=node or ZERO_ADDRESS)
        from verinfer.private_jobs import require_key, seal

        assert self.client is not None
        if node is None:
            node = self.client.private_node(model_id, exclude=req.exclude)
        req.input, req.job_key = seal(req.input, require_key(self.client.market, node))
        return JobSpec(model_id, req.input, params, payment, node=node)

    def _refuse(self, req: JobRequest, ticket: int, exc: ClientError) -> None:
        """Answer a request whose job was not sent (its reservation is released)."""
        assert self.limits is not None
        self.limits.settle(ticket, 0)
        msg = str(exc)
        if msg.startswith("insufficient balance"):
            err = errors.insufficient_balance(
                f"{msg} (deposit more with `verinfer balance deposit`)"
            )
        else:
            err = errors.job_failed(msg, "submit_failed")
        if not req.future.done():
            req.future.set_exception(err)

    def _send(
        self, accepted: list[tuple[JobRequest, ModelInfo, int, JobSpec]]
    ) -> list[ClientError | None]:
        """Simulate, sign and send ``specs``: two JSON-RPC round trips for the whole batch.

        The first batch reads the fee, nonce and prepaid balance and simulates every job, with
        deadlines from the chain time as last read plus the time since (the fresh block comes
        in the same batch; were the two far apart, the jobs are encoded and simulated again).
        It overlaps the previous batch's send, which the send thread still has in flight: its
        escrow is taken off the balance read, and nonces continue from it (after a failed send
        they are read again). Each job is registered with the poll thread (by transaction hash)
        before it is sent, so its ``JobSubmitted`` log cannot be missed. A job the prepaid
        balance cannot cover, or whose simulation reverts, is not sent; the others go out as
        one ``submit_many`` per 2..16 jobs of inputs up to 2,048 bytes (gas limit: the sum of
        their own simulations' limits) and one ``submit`` per other job. Returns, per job,
        None (handed to the send thread, which answers a failed send) or the ClientError.
        """
        assert self.rpc is not None and self.client is not None
        market = self.client.market.address
        me = self.address
        specs = [a[3] for a in accepted]
        balance_call = BALANCE_OF_SELECTOR + abi_encode(["address"], [me])
        now = self._chain_now()
        calldata = [self._submit_data(spec, now) for spec in specs]
        in_flight = self._in_flight_escrow  # the previous batch, maybe not yet in "pending"
        reads: list[tuple[str, list[Any]]] = [
            ("eth_getBlockByNumber", ["latest", False]),
            ("eth_maxPriorityFeePerGas", []),
            ("eth_getTransactionCount", [me, "pending"]),
            ("eth_call", [{"to": market, "data": "0x" + balance_call.hex()}, "pending"]),
        ]
        answers = self.rpc.batch(reads + [self._estimate_call(data) for data in calldata])
        for a in answers[: len(reads)]:
            if isinstance(a, RpcError):
                raise ClientError(f"submit failed: {a}")
        block, tip_hex, nonce_hex, balance_hex = answers[: len(reads)]
        estimates = answers[len(reads) :]
        latest = int(block["number"], 16)
        self._set_chain_time(int(block["timestamp"], 16))
        base_fee = int(block.get("baseFeePerGas") or "0x0", 16)
        tip = int(tip_hex, 16)
        prepaid = int(balance_hex, 16) - in_flight
        if abs(int(block["timestamp"], 16) - now) > CHAIN_TIME_SLACK_S:  # the chain jumped
            now = int(block["timestamp"], 16)
            calldata = [self._submit_data(spec, now) for spec in specs]
            estimates = self.rpc.batch([self._estimate_call(data) for data in calldata])
        out: list[ClientError | None] = [ClientError("submit failed")] * len(specs)
        todo: list[int] = []
        for i, spec in enumerate(specs):
            if spec.max_payment > prepaid:
                out[i] = ClientError(
                    f"insufficient balance: job escrows {self.client.fmt(spec.max_payment)}, "
                    f"prepaid balance left is {self.client.fmt(max(prepaid, 0))}"
                )
                continue
            prepaid -= spec.max_payment
            todo.append(i)
        gas: dict[int, int] = {}
        for i in todo:
            answer = estimates[i]
            if isinstance(answer, dict) and answer.get("error"):  # geth: a revert in the answer
                answer = RpcError(str(answer["error"]))
            if isinstance(answer, RpcError):
                out[i] = ClientError(f"submit reverted: {answer}")
            else:
                gas[i] = self._gas_limit(answer)
        nonce = self._nonce_after_previous_send(int(nonce_hex, 16))
        batch: list[tuple[bytes, list[_Pending]]] = []
        for group in _groups([i for i in gas if len(specs[i].input) <= GROUP_MAX_INPUT], gas):
            if len(group) == 1:  # a lone job: submit (88k gas as a group of one, 75k alone)
                data = calldata[group[0]]
            else:
                data = self._submit_many_data([specs[i] for i in group], now)
            limit = sum(gas[i] for i in group)  # singles' sum: above the group's (tested)
            raw = self._sign(data, nonce, limit, 2 * base_fee + tip, tip)
            nonce += 1
            tx_hash = "0x" + keccak(raw).hex()
            entries: list[_Pending] = []
            for i in group:
                req, model, ticket, spec = accepted[i]
                entry = _Pending(
                    req,
                    model,
                    ticket,
                    req.arrived + req.timeout_s,
                    tx_hash,
                    latest + 1,
                    spec.max_payment,
                )
                entry.batch, entry.tx_jobs = len(gas), len(group)
                entry.params = spec.params.encode()
                entry.routed_to = None if spec.node == ZERO_ADDRESS else spec.node
                entries.append(entry)
                out[i] = None
            batch.append((raw, entries))
        if not batch:
            return out
        self._next_nonce = nonce
        sent_at, sent_unix = time.perf_counter(), time.time()
        with self._lock:
            for _, entries in batch:
                for entry in entries:
                    entry.sent_at, entry.sent_unix = sent_at, sent_unix
                self._by_tx[entries[0].tx_hash] = entries
            first = latest + 1
            self._fresh_from = first if self._fresh_from is None else min(self._fresh_from, first)
        self._in_flight_escrow = sum(e.payment for _, entries in batch for e in entries)
        self._sending = self._send_pool.submit(self._post, batch)
        for _, entries in batch:
            for entry in entries:
                entry.request.sent.set_result(None)
        return out

    def _nonce_after_previous_send(self, chain_nonce: int) -> int:
        """The next nonce: after the previous batch's (waits for its send to finish), or the
        chain's pending count after a failed send."""
        if self._sending is not None:
            ok = self._sending.result()
            self._sending = None
            self._in_flight_escrow = 0
            if not ok:
                assert self.rpc is not None
                self._next_nonce = None
                chain_nonce = int(
                    self.rpc.call("eth_getTransactionCount", [self.address, "pending"]), 16
                )
        return chain_nonce if self._next_nonce is None else max(chain_nonce, self._next_nonce)

    def _post(self, batch: list[tuple[bytes, list[_Pending]]]) -> bool:
        """The send thread: one JSON-RPC batch of signed submissions; a refused one is
        forgotten and its requests (all of a submit_many's) answered. True when every one was
        accepted."""
        assert self.rpc is not None
        try:
            results = self.rpc.batch(
                [("eth_sendRawTransaction", ["0x" + raw.hex()]) for raw, _ in batch]
            )
        except ClientError as exc:
            results = [exc] * len(batch)
        ok = True
        for (_, entries), res in zip(batch, results, strict=True):
            if isinstance(res, ClientError):
                ok = False
                with self._lock:
                    self._by_tx.pop(entries[0].tx_hash, None)
                    self._tx_jobs.pop(entries[0].tx_hash, None)
                for entry in entries:
                    self._refuse(entry.request, entry.ticket, ClientError(f"submit failed: {res}"))
        self._wake.set()
        return ok

    def _supports_access_lists(self) -> bool:
        """Whether the node answers ``eth_createAccessList`` (a plain transfer as probe)."""
        assert self.rpc is not None
        try:
            answer = self.rpc.call(
                "eth_createAccessList", [{"from": self.address, "to": self.address}, "latest"]
            )
        except ClientError:
            return False
        return isinstance(answer, dict) and "gasUsed" in answer

    def _submit_data(self, spec: JobSpec, now: int) -> bytes:
        """Calldata of ``Market.submit`` for ``spec`` at chain time ``now``."""
        return self._submit_selector + abi_encode(self._submit_types, spec.args(now))

    def _submit_many_data(self, specs: list[JobSpec], now: int) -> bytes:
        """Calldata of ``Market.submit_many`` for ``specs`` (2..16) at chain time ``now``: the
        arguments of each job's ``submit``, as parallel arrays."""
        columns = [list(col) for col in zip(*(spec.args(now) for spec in specs), strict=True)]
        return self._many_selector + abi_encode(self._many_types, columns)

    def _estimate_call(self, data: bytes) -> tuple[str, list[Any]]:
        """The simulation of one submission: ``eth_createAccessList`` (one execution, with the
        gas it used) where the node has it, else ``eth_estimateGas`` (a search over several)."""
        assert self.client is not None
        tx = {"from": self.address, "to": self.client.market.address, "data": "0x" + data.hex()}
        if self._access_lists:
            return ("eth_createAccessList", [tx, "pending"])
        return ("eth_estimateGas", [tx])

    def _gas_limit(self, answer: Any) -> int:
        """Gas limit from a simulation's answer: its gas plus a quarter (an access list makes
        the measured run ~100 gas per touched slot cheaper; refunds are capped at a fifth)."""
        used = int(answer["gasUsed"], 16) if isinstance(answer, dict) else int(answer, 16)
        return used + used // 4

    def _set_chain_time(self, timestamp: int) -> None:
        self._chain_time = (timestamp, time.monotonic())

    def _chain_now(self) -> int:
        """The chain time as last read, plus the seconds since then."""
        timestamp, read_at = self._chain_time
        return timestamp + int(time.monotonic() - read_at)

    def _sign(self, data: bytes, nonce: int, gas: int, max_fee: int, tip: int) -> bytes:
        """The signed submit transaction (type 2), raw bytes."""
        assert self.client is not None
        market = self.client.market.address
        if self._signer is not None:
            return self._signer.sign(market, data, nonce, gas, max_fee, tip)
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
    def _open_feed(self) -> LogFeed | None:
        """The websocket log subscription, or None (then the thread polls)."""
        assert self._decoder is not None and self.client is not None and self.rpc is not None
        polling = f"eth_getLogs every {self.settings.poll_interval_s:g}s"
        if not self.settings.subscribe:
            self.results_via = polling
            return None
        url = self.settings.ws_url or ws_url(self.rpc.url)
        flt = {"address": self.client.market.address, "topics": [list(self._decoder.events)]}
        try:
            feed = LogFeed(url, flt)
        except ClientError as exc:
            self.results_via = f"{polling} ({exc})"
            return None
        self.results_via = (
            f"{url} pushes (eth_getLogs backstop every {self.settings.backstop_s:g}s)"
        )
        return feed

    def _poll_loop(self) -> None:
        """Follow the sent jobs: pushed logs (websocket) plus an ``eth_getLogs`` backstop, or
        ``eth_getLogs`` every ``poll_interval_s`` without a websocket."""
        feed = self._feed
        cursor: int | None = None  # first block the next eth_getLogs reads
        polled = float("-inf")
        try:
            while not self._stop.is_set():
                with self._lock:
                    busy = bool(self._by_tx)
                    fresh, self._fresh_from = self._fresh_from, None
                if fresh is not None:
                    cursor = fresh if cursor is None else min(cursor, fresh)
                if feed is not None:
                    try:
                        pushed = feed.wait(0.1)
                    except ClientError as exc:
                        log.warning("%s; polling for results from now on", exc)
                        feed = None
                        continue
                    if pushed:
                        self._apply_logs(pushed, time.perf_counter())
                if self._retry:
                    retry, self._retry = self._retry, []
                    self._deliver(retry, time.perf_counter())
                if not busy:
                    cursor = None
                    if feed is None:
                        self._wake.wait(0.2)
                        self._wake.clear()
                    continue
                every = (
                    self.settings.backstop_s if feed is not None else self.settings.poll_interval_s
                )
                if cursor is not None and time.perf_counter() - polled >= every:
                    polled = time.perf_counter()
                    try:
                        cursor = self._poll(cursor)
                    except Exception as exc:  # keep going; a dead chain ends in each timeout
                        log.warning("poll failed: %s", exc)
                self._check_deadlines()
                if feed is None:
                    self._wake.wait(self.settings.poll_interval_s)
                    self._wake.clear()
        finally:
            if feed is not None:
                feed.close()

    def _poll(self, cursor: int) -> int:
        """One ``eth_getLogs`` over the new blocks' job logs; returns the next cursor."""
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
        self._apply_logs(raw, seen_at)
        return head + 1

    def _apply_logs(self, raw: list[dict[str, Any]], seen_at: float) -> None:
        """Fold raw job logs into the pending jobs (only ours are decoded; a log seen twice,
        pushed and polled, changes nothing); answer the jobs whose result is now held."""
        assert self._decoder is not None and self.client is not None
        touched: list[_Pending] = []
        taken: list[tuple[_Pending, str]] = []  # routed jobs another node claimed
        with self._lock:
            for entry in raw:
                topics = entry.get("topics") or []
                if len(topics) < 2:
                    continue
                if topics[0] == self._submitted_topic:
                    group = self._by_tx.get(str(entry.get("transactionHash", "")).lower())
                    if group is None or all(p.handle is not None for p in group):
                        continue
                    lg = self._decoder.decode(entry)
                    if lg is not None:
                        self._attach(group, lg)
                    continue
                p = self._by_job.get(int(topics[1], 16))
                if p is None or p.handle is None or p.delivering:
                    continue
                lg = self._decoder.decode(entry)
                if lg is not None:
                    p.handle.apply(lg)
                    touched.append(p)
                    if (
                        lg.event_name == "JobClaimed"
                        and p.routed_to is not None
                        and str(lg.node).lower() != p.routed_to.lower()
                    ):
                        taken.append((p, str(lg.node)))
            done = [
                p for p in dict.fromkeys(touched) if p.handle and p.handle.done(finalized=False)
            ]
            for p in done:
                p.delivering = True
        for p, node in taken:
            assert p.handle is not None
            if p.fell_open:
                log.info("job %s: node %s claimed it after the window", p.handle.job_id, node)
            else:
                log.info(
                    "job %s: node %s did not claim it within its exclusive window (%d s): it fell "
                    "open and node %s claimed it",
                    p.handle.job_id,
                    p.routed_to,
                    self.exclusive_window,
                    node,
                )
            p.fell_open = True
        if done:
            self._deliver(done, seen_at)

    def _attach(self, group: list[_Pending], lg: Any) -> None:
        """Give a ``JobSubmitted`` log of ``group``'s transaction its job (under the lock): the
        first job without one whose model, input, params and escrow it shows. A submit_many logs its
        jobs in order, and logs come in order (a log seen twice is known by its job id, also
        once its job is answered), so the n-th log goes to the n-th job."""
        assert self.client is not None
        seen = self._tx_jobs.setdefault(group[0].tx_hash, set())
        if int(lg.job_id) in seen:
            return
        for p in group:
            if (
                p.handle is None
                and p.payment == lg.max_payment
                and p.model.model_id == bytes(lg.model_id)
                and p.request.input == bytes(lg.input)
                and p.params == bytes(lg.params)
            ):
                seen.add(int(lg.job_id))
                record = JobRecord.from_submitted(lg)
                if p.request.job_key is not None:  # a private job: its answer opens with it
                    self.client.job_keys.put(record.job_id, p.request.job_key)
                p.handle = JobHandle(self.client, record, JobStatus.OPEN, lg.block_number)
                p.handle.sent_at = p.sent_at
                self._by_job[record.job_id] = p
                return

    def _deliver(self, done: list[_Pending], seen_at: float) -> None:
        """Read the stored hashes of ``done`` (one JSON-RPC batch) and answer their requests;
        a failed read is tried again on the next round."""
        assert self.rpc is not None and self.client is not None
        market = self.client.market.address
        calls: list[tuple[str, list[Any]]] = []
        for p in done:
            assert p.handle is not None
            data = JOB_HASH_SELECTOR + p.handle.job_id.to_bytes(32, "big")
            calls.append(("eth_call", [{"to": market, "data": "0x" + data.hex()}, "latest"]))
        try:
            stored = self.rpc.batch(calls)
        except ClientError as exc:
            stored = [exc] * len(done)
        for p, word in zip(done, stored, strict=True):
            assert p.handle is not None
            if isinstance(word, ClientError) and p.request.future.done():
                continue  # timed out meanwhile: forgotten
            if isinstance(word, ClientError):
                log.warning("job_hash(%s) failed: %s", p.handle.job_id, word)
                self._retry.append(p)  # until it is read or the job times out
                continue
            res = self.client.result_of(p.handle, bytes.fromhex(word[2:]))
            self._forget(p)
            self._finish(p, res, seen_at)

    def _forget(self, p: _Pending) -> None:
        with self._lock:
            group = self._by_tx.get(p.tx_hash)
            if group is not None and p in group:
                group.remove(p)
                if not group:
                    del self._by_tx[p.tx_hash]
                    self._tx_jobs.pop(p.tx_hash, None)
            if p.handle is not None:
                self._by_job.pop(p.handle.job_id, None)

    def _check_deadlines(self) -> None:
        """Time out late jobs; look at the receipt of a job whose log has not come; say once
        when a job's node let its exclusive window pass (the job is then open to every eligible
        node until its claim deadline: it is not failed early, the request waits on)."""
        now = time.perf_counter()
        with self._lock:
            groups = [(tx, list(group)) for tx, group in self._by_tx.items()]
        entries: list[_Pending] = []
        for tx_hash, group in groups:
            if any(
                p.handle is None
                and p.sent_at
                and (now >= p.deadline or now - max(p.sent_at, p.receipt_at) >= RECEIPT_CHECK_S)
                for p in group
            ):
                for p in group:
                    p.receipt_at = now
                if self._check_receipt(tx_hash, group):
                    continue
            entries += group
        chain_now = self._chain_now()
        for p in entries:
            if (
                not p.fell_open
                and p.routed_to is not None
                and p.handle is not None
                and p.handle.status == JobStatus.OPEN
                and not p.handle.record.private  # the market never opens a private job
                and chain_now >= p.handle.record.submitted_time + self.exclusive_window
            ):
                p.fell_open = True
                log.info(
                    "job %s: node %s did not claim it within its exclusive window (%d s): open "
                    "to every eligible node until its claim deadline",
                    p.handle.job_id,
                    p.routed_to,
                    self.exclusive_window,
                )
            if now < p.deadline or p.request.future.done():
                continue
            self._forget(p)
            if p.handle is not None:
                what = f"job {p.handle.job_id} has no result after {p.request.timeout_s:g}s "
                state = p.handle.status.name + self._where(p, chain_now)
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

    def _where(self, p: _Pending, chain_now: int) -> str:
        """Where a timed-out job stands, for its 504: its node, or who may claim it until when."""
        assert p.handle is not None
        rec = p.handle.record
        if p.handle.status >= JobStatus.CLAIMED:
            left = max(rec.result_deadline - chain_now, 0)
            return f" by node {rec.node}, its result due within {left} s"
        if p.handle.status != JobStatus.OPEN:
            return ""
        left = max(rec.claim_deadline - chain_now, 0)
        if p.routed_to is None:
            return f", open to every eligible node for {left} s more"
        if rec.private:
            return f", private to node {p.routed_to} for {left} s more"
        if chain_now < rec.submitted_time + self.exclusive_window:
            return f", routed to node {p.routed_to}, in its exclusive window"
        return (
            f", routed to node {p.routed_to}, which did not claim it within its exclusive window:"
            f" open to every eligible node for {left} s more"
        )

    def _check_receipt(self, tx_hash: str, group: list[_Pending]) -> bool:
        """Take the job ids of ``group`` (the jobs of transaction ``tx_hash``) from its receipt,
        in log order; True when the transaction reverted (then all its requests are answered
        and their reservations released)."""
        assert self.rpc is not None and self._decoder is not None and self.client is not None
        try:
            receipt = self.rpc.call("eth_getTransactionReceipt", [tx_hash])
        except ClientError as exc:
            log.warning("receipt of %s: %s", tx_hash, exc)
            return False
        if receipt is None:
            return False
        if int(receipt["status"], 16) != 1:
            assert self.limits is not None
            what = "submit" if len(group) == 1 else f"submit_many of {len(group)} jobs"
            for p in group:
                self._forget(p)
                self.limits.settle(p.ticket, 0)
                if not p.request.future.done():
                    p.request.future.set_exception(
                        errors.job_failed(
                            f"{what} reverted: transaction {tx_hash} failed", "submit_failed"
                        )
                    )
            return True
        for entry in receipt["logs"]:
            lg = self._decoder.decode(entry)
            if lg is not None and lg.event_name == "JobSubmitted":
                with self._lock:
                    self._attach(group, lg)
        return False

    def _finish(self, p: _Pending, res: Result, seen_at: float) -> None:
        assert self.limits is not None
        if p.routed_to is not None and self.router is not None:
            self.router.answered(p.routed_to)
        if res.held:
            self.limits.settle(p.ticket, res.cost)
            sent_at = p.sent_at or p.request.arrived
            outcome = JobOutcome(
                res,
                p.model,
                sent_at,
                seen_at,
                p.request.arrived,
                p.batch,
                p.tx_hash,
                p.tx_jobs,
                p.sent_unix,
                p.request.taken_at,
                time.perf_counter(),
                p.routed_to,
            )
            if not p.request.future.done():  # else timed out, or the client went away
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
        if not p.request.future.done():
            p.request.future.set_exception(errors.job_failed(msg, code))

    def _fail_all(self, message: str) -> None:
        err = errors.GatewayError(503, message, "server_error", "gateway_stopped")
        with self._lock:
            entries = [p for group in self._by_tx.values() for p in group]
            self._by_tx.clear()
            self._tx_jobs.clear()
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


def _groups(eligible: list[int], gas: dict[int, int]) -> list[list[int]]:
    """The transactions of a batch, as lists of job indexes in order: the ``eligible`` jobs
    (inputs of at most 2,048 bytes) in as few even groups of at most 16 as there can be, every
    other job of ``gas`` alone."""
    n = len(eligible)
    count = -(-n // GROUP_MAX_JOBS)  # ceil
    groups = [eligible[k * n // count : (k + 1) * n // count] for k in range(count)]
    grouped = set(eligible)
    groups += [[i] for i in gas if i not in grouped]
    return sorted(groups, key=lambda g: g[0])


def _match(models: list[ModelInfo], name: str) -> list[ModelInfo]:
    if name.startswith("0x") and len(name) == 66:
        return [m for m in models if "0x" + m.model_id.hex() == name.lower()]
    base, _, revision = name.partition("@")
    return [m for m in models if m.name == base and revision in ("", m.revision)]


def model_label(model: ModelInfo, models: list[ModelInfo]) -> str:
    """The id the gateway lists a model under: its name, or name@revision when shared."""
    same = [m for m in models if m.name == model.name]
    return model.name if len(same) == 1 else f"{model.name}@{model.revision}"
