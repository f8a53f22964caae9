"""The transaction sender: one per key. It owns the nonce, simulates every transaction (the
gas estimate executes it against the latest state), signs with the node's key, sends without
waiting for the block, and a tracker thread follows every pending transaction: receipts, gas
spent, stuck ones replaced with a higher fee, dropped ones sent again with their nonce (or
their nonce filled with a no-op when they no longer apply). Endpoint errors (transport, HTTP
status, JSON-RPC errors other than reverts) are retried with bounded back-off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import requests
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError

from verinfer.node.metrics import Metrics

log = logging.getLogger("verinfer.node.sender")
T = TypeVar("T")
RPC_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.RequestException,  # connection refused/reset/closed, timeouts, HTTP 5xx
    ConnectionError,
    TimeoutError,
)
# JSON-RPC errors that say something about the transaction or the call, not about the endpoint
# (they are final: retrying the same request gets the same answer)
FINAL_RPC_ERRORS = (
    "revert",
    "nonce too",
    "already known",
    "underpriced",
    "insufficient funds",
    "intrinsic gas",
    "gas limit",
    "invalid",
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is the endpoint failing (worth a retry): a transport error, an HTTP error
    status, or a JSON-RPC error that is not about the call itself (a revert, a bad nonce...)."""
    if isinstance(exc, (*RPC_ERRORS, TransientRpcError)):
        return True
    if isinstance(exc, Web3RPCError):
        return transient_error_message(str(exc))
    return False


def transient_error_message(message: str) -> bool:
    """Whether a JSON-RPC error message is the endpoint's trouble (see ``is_transient``)."""
    text = message.lower()
    return not any(marker in text for marker in FINAL_RPC_ERRORS)


def describe(exc: BaseException) -> str:
    """A short one-line description of an RPC failure for the logs."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


class Backoff:
    """The delay of a polling loop that meets endpoint failures: doubled after each one (at
    most ``cap_s``), with one warning line per failure and one when the endpoint is back."""

    def __init__(
        self, name: str, base_s: float, cap_s: float, logger: logging.Logger | None = None
    ) -> None:
        self.name, self.base_s, self.cap_s = name, base_s, cap_s
        self.delay, self.failures = base_s, 0
        self.log = logger or log

    def failed(self, exc: BaseException) -> float:
        """Count ``exc`` and return the delay before the next try; re-raise it if it is not
        the endpoint failing (``is_transient``)."""
        if not is_transient(exc):
            raise exc
        self.failures += 1
        self.delay = min(self.delay * 2, self.cap_s)
        self.log.warning(
            "%s: rpc error (failure %d) retry_in=%.1fs error=%s",
            self.name,
            self.failures,
            self.delay,
            describe(exc),
        )
        return self.delay

    def succeeded(self) -> None:
        """Back to the base delay (one line if there were failures)."""
        if self.failures:
            self.log.warning("%s: rpc recovered after %d failures", self.name, self.failures)
            self.delay, self.failures = self.base_s, 0


class TransientRpcError(RuntimeError):
    """A JSON-RPC answer that carries an endpoint error (in a batch answer, say)."""


class TxRejected(RuntimeError):
    """The transaction would revert (simulation); ``reason`` is the contract's string."""

    def __init__(self, action: str, reason: str) -> None:
        super().__init__(f"{action}: {reason}")
        self.action = action
        self.reason = reason


class RpcUnavailable(RuntimeError):
    """The RPC endpoint kept failing after every retry."""


class LeaseUnavailable(RpcUnavailable):
    """The sender's lease was not renewed in time (Redis unreachable): nothing is signed until
    it is; the chain task is retried later, like an RPC outage."""


class SenderFenced(RuntimeError):
    """Another sender holds this key's lease: this one must never sign again (it stops)."""


@dataclass
class PendingTx:
    """A transaction sent and not yet seen mined."""

    nonce: int
    action: str
    tx: dict[str, Any]
    tx_hash: bytes
    raw: bytes
    sent_at: float
    replaced: int = 0
    history: list[bytes] = field(default_factory=list)  # earlier hashes of this nonce
    # a batch call's single calls (publish_many: one publish per job), sent one by one if
    # the batch is dropped and no longer applies as a whole
    parts: list[tuple[str, Any]] | None = None
    jobs: tuple[int, ...] = ()  # the job ids the call is about (its first argument)


def jobs_of(fn: Any) -> tuple[int, ...]:
    """The job ids a contract call is about: its first argument, an id or a list of ids."""
    args = getattr(fn, "args", None) or ()
    if args and isinstance(args[0], int):
        return (args[0],)
    if args and isinstance(args[0], (list, tuple)):
        return tuple(int(j) for j in args[0])
    return ()


def revert_reason(exc: BaseException | str) -> str:
    """The revert string of a simulation error ("execution reverted: market: x" -> "market: x")."""
    text = exc if isinstance(exc, str) else str(exc.args[0] if exc.args else exc)
    for prefix in ("execution reverted: ", "execution reverted:"):
        if prefix in text:
            return text.split(prefix, 1)[1].strip().strip("'\"")
    return text


class TxSender:
    """Sends the node's transactions; thread-safe; call ``start()`` to run the tracker."""

    def __init__(
        self,
        w3: Web3,
        account: LocalAccount,
        metrics: Metrics | None = None,
        retries: int = 5,
        backoff_s: float = 0.5,
        stuck_after_s: float = 15.0,
        fee_bump: float = 1.125,
        priority_fee_wei: int = 10**9,
        track_interval_s: float = 0.5,
        finality: str = "latest",
        confirmations: int = 0,
        lease: Any = None,
    ) -> None:
        """``finality`` ("latest", "safe" or "finalized": a block tag) and ``confirmations``:
        a transaction counts as done once its nonce is used in the older of the tag's block
        and ``head - confirmations``; until then it stays tracked, and one that a reorg drops
        is sent again (or its nonce filled with a no-op). ``lease``: the ``SenderLease``
        checked before every signature (None: no lease, for tests of the sender alone)."""
        self.w3 = w3
        self.account = account
        self.address = account.address
        self.metrics = metrics
        self.retries = retries
        self.backoff_s = backoff_s
        self.stuck_after_s = stuck_after_s
        self.fee_bump = fee_bump
        self.priority_fee_wei = priority_fee_wei
        self.track_interval_s = track_interval_s
        self.finality = finality
        self.confirmations = confirmations
        self.lease = lease
        self.chain_id = self.rpc("chain_id", lambda: w3.eth.chain_id)
        self._lock = threading.RLock()
        self._nonce: int = self.rpc(
            "nonce", lambda: int(w3.eth.get_transaction_count(self.address, "pending"))
        )
        self._pending: dict[int, PendingTx] = {}
        self._latest_nonce = self._nonce  # the key's nonce in the latest block, last seen
        self._fees: tuple[float, int, int] = (0.0, 0, 0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- RPC with bounded back-off ----
    def rpc(self, what: str, call: Callable[[], T]) -> T:
        """Run ``call``; on an endpoint failure (``is_transient``: transport error, HTTP error
        status, JSON-RPC error that is not a revert) retry ``retries`` times with doubling
        delays, one log line per failure; then raise RpcUnavailable."""
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return call()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if attempt == self.retries:
                    raise RpcUnavailable(
                        f"{what}: RPC failed {attempt + 1} times: {describe(exc)}"
                    ) from exc
                log.warning(
                    "rpc error op=%s attempt=%d retry_in=%.1fs error=%s",
                    what,
                    attempt + 1,
                    delay,
                    describe(exc),
                )
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")

    # ---- fees ----
    def _fee_fields(self) -> tuple[int, int]:
        """(maxFeePerGas, maxPriorityFeePerGas), cached for a second."""
        at, max_fee, tip = self._fees
        if time.monotonic() - at > 1.0:
            block = self.rpc("fees", lambda: self.w3.eth.get_block("latest"))
            base = int(block.get("baseFeePerGas", 0) or 0)
            tip = self.priority_fee_wei
            max_fee = 2 * base + tip
            self._fees = (time.monotonic(), max_fee, tip)
        return max_fee, tip

    # ---- sending ----
    def send(self, action: str, fn: Any) -> bytes:
        """Simulate, sign and send the contract call ``fn``; return its hash.

        Raises TxRejected when the call would revert (nothing is sent, no nonce used) and
        RpcUnavailable when the endpoint keeps failing.
        """
        tx = {
            "from": self.address,
            "to": fn.address,
            "data": fn._encode_transaction_data(),
            "value": 0,
        }
        return self.send_tx(action, tx, jobs_of(fn))

    def send_tx(self, action: str, tx: dict[str, Any], jobs: tuple[int, ...] = ()) -> bytes:
        """Simulate (gas estimate), sign and send a transaction dict ``{to, data, value}``."""
        try:
            # against the pending block, where the transaction goes: its time is the next
            # block's (a chain that mines on demand keeps an old head, and a claim at the end
            # of an exclusive window must not be judged at that head's time)
            gas = self.rpc(action, lambda: self.w3.eth.estimate_gas(tx, "pending"))  # type: ignore[arg-type]
        except (ContractLogicError, Web3RPCError) as exc:  # rpc() retried endpoint errors
            if self.metrics:
                self.metrics.incr("tx", action=action, outcome="rejected")
            raise TxRejected(action, revert_reason(exc)) from exc
        with self._lock:
            max_fee, tip = self._fee_fields()
            full = {
                **tx,
                "gas": int(gas * 1.2) + 10_000,
                "maxFeePerGas": max_fee,
                "maxPriorityFeePerGas": tip,
                "nonce": self._nonce,
                "chainId": self.chain_id,
                "type": 2,
            }
            full.pop("from", None)
            pending = self._sign_and_send(action, full)
            pending.jobs = jobs
            self._pending[pending.nonce] = pending
            self._nonce += 1
        if self.metrics:
            self.metrics.incr("tx", action=action, outcome="sent")
        log.info(
            "tx sent action=%s nonce=%d hash=0x%s", action, pending.nonce, pending.tx_hash.hex()
        )
        return pending.tx_hash

    def rpc_batch(self, what: str, calls: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
        """One JSON-RPC batch (one HTTP request); the raw responses in call order, each with
        ``result`` or ``error``. Transport errors are retried like ``rpc``; ValueError when the
        endpoint does not answer batches."""
        provider: Any = self.w3.provider

        def call() -> list[dict[str, Any]]:
            resp = provider.make_batch_request(calls)
            if isinstance(resp, dict) and "error" in resp:  # one error for the whole batch
                message = str(resp["error"].get("message", resp["error"]))
                if transient_error_message(message):
                    raise TransientRpcError(message)
            if not isinstance(resp, list) or len(resp) != len(calls):
                raise ValueError(f"{what}: endpoint does not answer JSON-RPC batches: {resp}")
            for answer in resp:  # an endpoint error in any answer: the batch is asked again
                error = answer.get("error")
                if error is not None and transient_error_message(str(error.get("message"))):
                    raise TransientRpcError(str(error.get("message")))
            return list(resp)

        return self.rpc(what, call)

    def send_many(
        self, items: list[tuple[str, Any]], parts: list[tuple[str, Any]] | None = None
    ) -> list[bytes | TxRejected]:
        """``send`` for many contract calls ``(action, fn)`` with two RPC round trips: one
        batch of simulations, then one batch of signed transactions (consecutive nonces).

        Returns, per item, the transaction hash or the TxRejected of a call that would revert
        (nothing sent for it). A transaction the endpoint refuses after signing stays pending
        as if dropped, so the tracker sends it (and those after it) again. ``parts``: for one
        batch call (``items`` of length 1), its single calls, which the tracker sends one by
        one if the batch is dropped and no longer applies as a whole.
        """
        if parts is not None and len(items) != 1:
            raise ValueError("parts go with exactly one batch call")
        if not items:
            return []
        txs = [
            {"from": self.address, "to": fn.address, "data": fn._encode_transaction_data()}
            for _, fn in items
        ]
        try:
            sims = self.rpc_batch("simulate", [("eth_estimateGas", [tx, "pending"]) for tx in txs])
        except ValueError:
            return [self._send_or_rejected(a, fn) for a, fn in items]
        out: list[bytes | TxRejected] = []
        sent: list[PendingTx] = []
        rejected: dict[str, int] = {}
        with self._lock:
            if self.lease is not None:
                self.lease.check()  # before any nonce is taken
            max_fee, tip = self._fee_fields()
            for (action, fn), tx, sim in zip(items, txs, sims, strict=True):
                if "error" in sim:
                    rejected[action] = rejected.get(action, 0) + 1
                    out.append(TxRejected(action, revert_reason(str(sim["error"].get("message")))))
                    continue
                full = {
                    "to": tx["to"],
                    "data": tx["data"],
                    "value": 0,
                    "gas": int(int(sim["result"], 16) * 1.2) + 10_000,
                    "maxFeePerGas": max_fee,
                    "maxPriorityFeePerGas": tip,
                    "nonce": self._nonce,
                    "chainId": self.chain_id,
                    "type": 2,
                }
                signed = self.account.sign_transaction(full)  # lease checked above
                p = PendingTx(
                    self._nonce,
                    action,
                    full,
                    bytes(signed.hash),
                    bytes(signed.raw_transaction),
                    time.monotonic(),
                )
                p.parts = parts
                p.jobs = jobs_of(fn)
                self._pending[p.nonce] = p
                self._nonce += 1
                sent.append(p)
                out.append(p.tx_hash)
            if sent:
                try:
                    self._broadcast(sent)
                except RpcUnavailable:  # like a failed single send: nothing counts as sent
                    for p in sent:
                        self._pending.pop(p.nonce, None)
                    self._nonce = sent[0].nonce
                    raise
        if self.metrics:
            for action, n in rejected.items():
                self.metrics.incr("tx", n, action=action, outcome="rejected")
            for action in {p.action for p in sent}:
                n = sum(p.action == action for p in sent)
                self.metrics.incr("tx", n, action=action, outcome="sent")
        if sent:
            log.info(
                "tx sent n=%d nonces=%d..%d actions=%s",
                len(sent),
                sent[0].nonce,
                sent[-1].nonce,
                ",".join(sorted({p.action for p in sent})),
            )
        return out

    def _broadcast(self, sent: list[PendingTx]) -> None:
        calls = [("eth_sendRawTransaction", ["0x" + p.raw.hex()]) for p in sent]
        answers = self.rpc_batch("send", calls)
        for p, answer in zip(sent, answers, strict=True):
            error = answer.get("error")
            if error is not None and "already known" not in str(error).lower():
                log.warning(
                    "tx refused action=%s nonce=%d error=%s; the tracker sends it again",
                    p.action,
                    p.nonce,
                    error.get("message"),
                )
                p.sent_at = time.monotonic() - self.stuck_after_s  # looks dropped at once

    def _send_or_rejected(self, action: str, fn: Any) -> bytes | TxRejected:
        try:
            return self.send(action, fn)
        except TxRejected as exc:
            return exc

    def _sign(self, tx: dict[str, Any]) -> Any:
        """Sign ``tx`` if this process still holds the key's lease (see ``SenderLease.check``)."""
        if self.lease is not None:
            self.lease.check()
        return self.account.sign_transaction(tx)

    def _sign_and_send(self, action: str, tx: dict[str, Any]) -> PendingTx:
        signed = self._sign(tx)
        raw = bytes(signed.raw_transaction)
        try:
            self.rpc(action, lambda: self.w3.eth.send_raw_transaction(raw))
        except Web3RPCError as exc:
            text = str(exc).lower()
            if "nonce too low" in text or "nonce too high" in text:
                self._resync_nonce()
                tx = {**tx, "nonce": self._nonce}
                signed = self._sign(tx)
                raw = bytes(signed.raw_transaction)
                self.rpc(action, lambda: self.w3.eth.send_raw_transaction(raw))
            elif "already known" not in text:
                raise
        return PendingTx(int(tx["nonce"]), action, tx, bytes(signed.hash), raw, time.monotonic())

    def _resync_nonce(self) -> None:
        chain = self.rpc(
            "nonce", lambda: self.w3.eth.get_transaction_count(self.address, "pending")
        )
        log.warning("nonce resync local=%d chain=%d", self._nonce, chain)
        self._nonce = chain

    # ---- tracking ----
    def pending_count(self) -> int:
        """Transactions sent and not yet seen mined."""
        with self._lock:
            return len(self._pending)

    def track_once(self) -> None:
        """One pass over pending transactions: those whose nonce is used at the finality
        block (``finality`` / ``confirmations``) are done (receipts, gas spent); those mined
        in the latest block but not yet final stay tracked; of the rest, those pending longer
        than ``stuck_after_s``: a dropped one (the endpoint no longer knows it: evicted, or
        wiped by a reorg) is sent again with its nonce if it still simulates, else its nonce
        is filled with a no-op (so the ones after it still go through and no nonce is
        skipped); the one at the head of the queue, if still known, is replaced with higher
        fees. A hole below our pending transactions (a reorg deeper than the finality wiped
        done ones) renumbers them from the chain's nonce."""
        with self._lock:
            if not self._pending:
                return
            latest = self.rpc(
                "nonce", lambda: self.w3.eth.get_transaction_count(self.address, "latest")
            )
            final = latest if self._final_block() is None else self._final_nonce()
            self._latest_nonce = latest
            done = [self._pending.pop(n) for n in sorted(self._pending) if n < min(final, latest)]
            self._settle_many(done)
            if not self._pending:
                return
            now = time.monotonic()
            old = [
                p
                for n, p in sorted(self._pending.items())
                if n >= latest and now - p.sent_at >= self.stuck_after_s
            ]
            if not old:
                return
            if min(self._pending) > latest:
                self._renumber(latest)
                return
            known = self._known_many(old)
            for p, is_known in zip(old, known, strict=True):
                if not is_known:
                    self._replace_dropped(p)
                elif p.nonce == latest:  # stuck at the head: pay more (today's fees at least)
                    self._resend(p, self._bumped(p.tx), "replaced (stuck)")

    def recover_dropped(self) -> None:
        """After a reorg: at once (not after ``stuck_after_s``), every pending transaction
        the endpoint no longer knows is sent again with its nonce, or its nonce filled with
        a no-op when it no longer applies (``track_once``'s rules)."""
        with self._lock:
            if not self._pending:
                return
            latest = self.rpc(
                "nonce", lambda: self.w3.eth.get_transaction_count(self.address, "latest")
            )
            self._latest_nonce = latest
            if min(self._pending) > latest:
                self._renumber(latest)
                return
            waiting = [p for n, p in sorted(self._pending.items()) if n >= latest]
            for p, known in zip(waiting, self._known_many(waiting), strict=True):
                if not known:
                    self._replace_dropped(p)

    def has_pending_action(self, action: str) -> bool:
        """Whether a transaction of ``action`` is sent and not yet in the latest block."""
        with self._lock:
            return any(
                p.action == action for n, p in self._pending.items() if n >= self._latest_nonce
            )

    def has_pending_for(self, job_id: int) -> bool:
        """Whether a transaction about ``job_id`` is sent and not yet in the latest block."""
        with self._lock:
            return any(
                job_id in p.jobs for n, p in self._pending.items() if n >= self._latest_nonce
            )

    def _final_block(self) -> int | str | None:
        """The block whose nonce says "done": None for the latest (no finality asked)."""
        if self.finality == "latest" and not self.confirmations:
            return None
        if self.finality == "latest":
            return "latest"
        return self.finality

    def _final_nonce(self) -> int:
        """The key's nonce at the finality block (the older of the tag's block and
        ``head - confirmations``)."""
        tag = self._final_block()
        block = self.rpc("final", lambda: self.w3.eth.get_block(tag))  # type: ignore[arg-type]
        number = int(block["number"])
        if self.confirmations:
            head = self.rpc("head", lambda: self.w3.eth.block_number)
            number = min(number, head - self.confirmations)
        if number < 0:
            return 0
        return int(
            self.rpc("nonce", lambda: self.w3.eth.get_transaction_count(self.address, number))
        )

    def unmined_count(self) -> int:
        """Transactions sent and not yet seen in the latest block (as of the last pass)."""
        with self._lock:
            return sum(n >= self._latest_nonce for n in self._pending)

    def _still_applies(self, p: PendingTx, then: str = "") -> bool:
        """Simulate the dropped transaction ``p`` again; when it reverts, log it (with
        ``then``, what happens next), count it as abandoned and return False."""
        sim = {"from": self.address, "to": p.tx["to"], "data": p.tx["data"], "value": 0}
        try:
            self.rpc(p.action, lambda: self.w3.eth.estimate_gas(sim))  # type: ignore[arg-type]
        except (ContractLogicError, Web3RPCError) as exc:
            log.warning(
                "tx dropped and no longer applies action=%s nonce=%d reason=%s%s",
                p.action,
                p.nonce,
                revert_reason(exc),
                then,
            )
            if self.metrics:
                self.metrics.incr("tx", action=p.action, outcome="abandoned")
            return False
        return True

    def _replace_dropped(self, p: PendingTx) -> None:
        """Send the dropped transaction ``p`` again with its nonce, or a no-op in its place
        when it no longer applies (its simulation reverts)."""
        if not self._still_applies(p, "; filling its nonce with a no-op"):
            noop = {**p.tx, "to": self.address, "data": b"", "value": 0, "gas": 21_000}
            p.action, parts, p.parts, p.jobs = "noop", p.parts, None, ()
            self._resend(p, self._bumped(noop), "no-op sent")
            self._send_parts(parts)  # after the no-op
            return
        self._resend(p, self._bumped(p.tx), "resent (dropped)")

    def _send_parts(self, parts: list[tuple[str, Any]] | None) -> None:
        """The calls of a dropped batch that no longer applies as a whole: each that still
        applies goes out on its own (the others are skipped with one line each)."""
        if not parts:
            return
        log.warning("sending the %d calls of the dropped batch one by one", len(parts))
        for (action, _), outcome in zip(parts, self.send_many(parts), strict=True):
            if isinstance(outcome, TxRejected):
                log.info("skip action=%s reason=%s (dropped batch)", action, outcome.reason)

    def _known_many(self, pending: list[PendingTx]) -> list[bool]:
        """Whether the endpoint still knows each transaction (one batch)."""
        try:
            answers = self.rpc_batch(
                "get_tx", [("eth_getTransactionByHash", ["0x" + p.tx_hash.hex()]) for p in pending]
            )
        except ValueError:
            return [self._known(p) for p in pending]
        return [bool(a.get("result")) for a in answers]

    def _bumped(self, tx: dict[str, Any], nonce: int | None = None) -> dict[str, Any]:
        """``tx`` with fees raised by ``fee_bump`` (a replacement must pay more than the
        transaction it replaces) and at least the current fees (the base fee may have risen
        since it was signed); with ``nonce`` when given."""
        self._fees = (0.0, 0, 0)  # read the current base fee now
        max_fee, tip = self._fee_fields()
        out = dict(tx)
        if nonce is not None:
            out["nonce"] = nonce
        out["maxPriorityFeePerGas"] = max(int(tx["maxPriorityFeePerGas"] * self.fee_bump) + 1, tip)
        out["maxFeePerGas"] = max(
            int(tx["maxFeePerGas"] * self.fee_bump) + 1, max_fee, out["maxPriorityFeePerGas"]
        )
        return out

    def _known(self, p: PendingTx) -> bool:
        try:
            return (
                self.rpc("get_tx", lambda: self.w3.eth.get_transaction(HexBytes(p.tx_hash)))
                is not None
            )
        except TransactionNotFound:
            return False

    def _settle_many(self, mined: list[PendingTx]) -> None:
        """Receipts of mined transactions in one batch; the per-hash path for the rest
        (replaced transactions, or an endpoint without batches)."""
        if not mined:
            return
        try:
            answers = self.rpc_batch(
                "receipts", [("eth_getTransactionReceipt", ["0x" + p.tx_hash.hex()]) for p in mined]
            )
        except ValueError:
            answers = [{} for _ in mined]
        fees, outcomes = 0, dict[tuple[str, str], int]()
        for p, answer in zip(mined, answers, strict=True):
            receipt = answer.get("result")
            if not receipt:
                self._settle(p)
                continue
            fees += int(receipt["gasUsed"], 16) * int(receipt.get("effectiveGasPrice") or "0x0", 16)
            ok = int(receipt["status"], 16) == 1
            key = (p.action, "mined" if ok else "reverted")
            outcomes[key] = outcomes.get(key, 0) + 1
            if not ok:
                log.warning(
                    "tx reverted on chain action=%s nonce=%d hash=0x%s",
                    p.action,
                    p.nonce,
                    p.tx_hash.hex(),
                )
        if self.metrics:
            if fees:
                self.metrics.incr("gas_wei", fees)
            for (action, outcome), n in outcomes.items():
                self.metrics.incr("tx", n, action=action, outcome=outcome)

    def _settle(self, p: PendingTx) -> None:
        for h in [p.tx_hash, *p.history]:
            try:
                receipt = self.rpc("receipt", lambda h=h: self.w3.eth.get_transaction_receipt(h))  # type: ignore[misc]
            except TransactionNotFound:
                continue
            fee = int(receipt["gasUsed"]) * int(receipt.get("effectiveGasPrice", 0) or 0)
            ok = int(receipt["status"]) == 1
            if self.metrics:
                self.metrics.incr("gas_wei", fee)
                self.metrics.incr("tx", action=p.action, outcome="mined" if ok else "reverted")
            if not ok:
                log.warning(
                    "tx reverted on chain action=%s nonce=%d hash=0x%s", p.action, p.nonce, h.hex()
                )
            return
        log.info("tx nonce=%d action=%s used by another transaction", p.nonce, p.action)

    def _renumber(self, mined_nonce: int) -> None:
        """Our queue has a hole (a dropped transaction, or a reorg wiped mined ones): send
        every pending transaction again from the chain's nonce, those that still apply, then
        the calls of a batch that no longer applies as a whole, one by one.
        Everything is simulated first: when the endpoint fails meanwhile (RpcUnavailable),
        nothing has changed and the next pass tries again."""
        old = [self._pending[n] for n in sorted(self._pending)]
        log.warning(
            "tx queue broken at nonce=%d (pending %d): sending again", mined_nonce, len(old)
        )
        applies: list[PendingTx] = []
        split: list[list[tuple[str, Any]]] = []  # batches that no longer apply as a whole
        for p in old:
            if self._still_applies(p):
                applies.append(p)
            elif p.parts:
                split.append(p.parts)
        self._pending.clear()
        self._nonce = mined_nonce
        for p in applies:
            tx = self._bumped(p.tx, nonce=self._nonce)
            p.nonce = self._nonce
            self._pending[p.nonce] = p
            self._nonce += 1
            self._resend(p, tx, "resent")
        for parts in split:
            self._send_parts(parts)

    def _resend(self, p: PendingTx, tx: dict[str, Any], why: str) -> None:
        try:
            signed = self._sign(tx)
            self.rpc(
                p.action, lambda: self.w3.eth.send_raw_transaction(bytes(signed.raw_transaction))
            )
        except (Web3RPCError, RpcUnavailable) as exc:  # the next pass looks at it again
            log.warning(
                "tx resend failed action=%s nonce=%d error=%s", p.action, p.nonce, describe(exc)
            )
            p.sent_at = time.monotonic()
            return
        p.history.append(p.tx_hash)
        p.tx, p.tx_hash, p.raw = tx, bytes(signed.hash), bytes(signed.raw_transaction)
        p.sent_at = time.monotonic()
        p.replaced += 1
        if self.metrics:
            self.metrics.incr("tx", action=p.action, outcome="replaced")
        log.warning("tx %s action=%s nonce=%d hash=0x%s", why, p.action, p.nonce, p.tx_hash.hex())

    def start(self) -> None:
        """Run the tracker in a daemon thread until ``stop()``."""

        def loop() -> None:
            while not self._stop.wait(self.track_interval_s):
                try:
                    self.track_once()
                except SenderFenced as exc:
                    log.error("tracker: %s; it stops", exc)
                    return
                except RpcUnavailable as exc:
                    log.error("tracker: %s", exc)
                except Exception:  # keep tracking; the next pass retries
                    log.exception("tracker pass failed")

        self._thread = threading.Thread(target=loop, name="tx-tracker", daemon=True)
        self._thread.start()

    def stop(self, drain_s: float = 10.0) -> None:
        """Wait up to ``drain_s`` for pending transactions to be mined (in the latest block,
        not final: after a restart, the watcher re-derives from the chain the jobs whose
        transactions a reorg drops), then stop the tracker."""
        deadline = time.monotonic() + drain_s
        while self.pending_count() and time.monotonic() < deadline:
            try:
                self.track_once()
            except Exception:
                break
            if not self.unmined_count():
                break
            time.sleep(0.2)
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
