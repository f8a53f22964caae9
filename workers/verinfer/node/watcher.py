"""The watcher: reads the protocol's logs from a cursor persisted in Redis, N confirmations
behind the head, detects reorgs by the block hashes it saw, and hands work to Celery.

Every log has an idempotency key from its job id and its position (event name, job id, block
hash, log index). A log seen again after a restart (the cursor is saved after the work of a
range is handed on) has the same key and is skipped; a log mined again in another block after
a reorg has a new key and is handled again, and the tasks check the chain before they act, so
a job is never served twice on the canonical chain.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from hexbytes import HexBytes
from web3 import Web3

from verinfer.jobs import JobRecord
from verinfer.node.contracts import DecodedLog, Protocol
from verinfer.node.metrics import Metrics
from verinfer.node.policy import Policy
from verinfer.node.sender import Backoff
from verinfer.node.settings import NodeSettings
from verinfer.node.store import Store

log = logging.getLogger("verinfer.node.watcher")
Dispatch = Callable[[str, str, list[Any]], None]  # (role, action, args)


def secure_margin(window: float) -> float:
    """How long before the end of its exclusive window a node claims a job that names it and
    that it has not run yet: a quarter of the window, at least 1 s and at most 10 s (the
    claim must be mined before the window ends)."""
    return max(1.0, min(10.0, window / 4))


def event_key(item: DecodedLog) -> str:
    """Idempotency key of a log: event, job id, block hash and log index."""
    job_id = item.args.get("job_id", "-")
    return f"{item.event}:{job_id}:{item.block_hash.hex()[:16]}:{item.log_index}"


class Watcher:
    """Polls the chain and turns protocol logs into node work."""

    def __init__(
        self,
        settings: NodeSettings,
        protocol: Protocol,
        store: Store,
        metrics: Metrics,
        policy: Policy,
        dispatch: Dispatch,
        me: str,
    ) -> None:
        self.s = settings
        self.p = protocol
        self.w3: Web3 = protocol.w3
        self.store = store
        self.metrics = metrics
        self.policy = policy
        self.dispatch = dispatch
        self.me = Web3.to_checksum_address(me)
        self._exclusive: tuple[float, int] | None = None
        self.handled = 0
        self._touched: dict[int, set[int]] = {}  # block -> job ids whose records its logs changed
        self._published: set[int] = set()  # jobs with a ResultPublished in the range being read
        self._times: dict[bytes, float] = {}  # block hash -> timestamp

    # ---- loop ----
    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set. An endpoint failure (``sender.is_transient``) is logged
        as one line per failed poll and retried with doubling delays (at most
        ``rpc_max_backoff_s``); the cursor stays where it was, so nothing is missed."""
        backoff = Backoff("watcher", self.s.poll_interval_s, self.s.rpc_max_backoff_s, log)
        while not stop.is_set():
            try:
                caught_up = self.poll_once()
            except Exception as exc:
                stop.wait(backoff.failed(exc))
                continue
            backoff.succeeded()
            if caught_up:
                stop.wait(backoff.delay)

    def poll_once(self) -> bool:
        """Handle the next range of confirmed blocks; True when caught up with the head."""
        head = self.w3.eth.block_number
        target = head - self.s.depth()
        cursor = self.store.cursor()
        if cursor is None:
            cursor = self.s.start_block - 1
        elif self._reorged(cursor):
            cursor = self._rewind(cursor)
        if target <= cursor:
            return True
        to = min(target, cursor + self.s.max_log_range)
        hashes: dict[int, bytes] = {}
        for n in range(max(cursor + 1, to - self.s.reorg_window + 1), to + 1):
            block = self.w3.eth.get_block(n)
            hashes[n] = bytes(block["hash"])
            self._remember_time(hashes[n], float(block["timestamp"]))
        if hashes:  # the gas price of the policy's expected gas per job
            base_fee = int(block.get("baseFeePerGas", 0) or 0)
            self.policy.gas_price_wei = base_fee + self.s.tx_priority_fee_wei
        raw = self.w3.eth.get_logs(
            {"fromBlock": cursor + 1, "toBlock": to, "address": self.p.addresses}  # type: ignore[typeddict-item]
        )
        for entry in raw:
            n = int(entry["blockNumber"])
            if n in hashes and bytes(entry["blockHash"]) != hashes[n]:
                log.warning("watcher: block %d changed while reading; reading again", n)
                return False
        items = [d for d in (self.p.decode(entry) for entry in raw) if d is not None]
        self._published = {int(i.args["job_id"]) for i in items if i.event == "ResultPublished"}
        self._touched = {}
        for item in items:
            self.handle(item)
        for number, job_ids in self._touched.items():
            self.store.touch(number, job_ids)
        self.store.trim_touched(to - self.s.reorg_window)
        self.store.save_progress(to, hashes, self.s.reorg_window)
        return to >= target

    def _remember_time(self, block_hash: bytes, timestamp: float) -> None:
        if len(self._times) > 4 * self.s.reorg_window:
            self._times.clear()
        self._times[block_hash] = timestamp

    def block_time(self, item: DecodedLog) -> float:
        """Timestamp of the block of ``item`` (one RPC per block, not per log)."""
        found = self._times.get(item.block_hash)
        if found is None:
            found = float(self.w3.eth.get_block(HexBytes(item.block_hash))["timestamp"])
            self._remember_time(item.block_hash, found)
        return found

    def _reorged(self, cursor: int) -> bool:
        seen = self.store.block_hash(cursor)
        return seen is not None and bytes(self.w3.eth.get_block(cursor)["hash"]) != seen

    def _rewind(self, cursor: int) -> int:
        """Walk back to the last block whose hash still matches; return the new cursor."""
        n = cursor
        while n >= self.s.start_block:
            seen = self.store.block_hash(n)
            if seen is None or bytes(self.w3.eth.get_block(n)["hash"]) == seen:
                break
            n -= 1
        log.warning(
            "watcher: reorg detected depth=%d; reading again from block %d", cursor - n, n + 1
        )
        self.metrics.incr("reorgs")
        self.rederive(self.store.touched_after(n), n)
        self.store.rewind(n)
        return n

    def rederive(self, job_ids: list[int], block: int) -> None:
        """After a reorg back to ``block``: rebuild the records of ``job_ids`` (jobs that logs
        of the orphaned blocks changed) from the canonical chain's logs up to ``block``, so
        the keeper's and the sender's calls carry the fields the market has (the logs after
        ``block`` are read again next), and schedule their cancel/expire again. A job of this
        node that the new chain has open again (its claim dropped) goes through the policy
        again; one it has claimed without its result is published (or run) again; the chain
        worker first sends again what the reorg dropped (``ChainRole.do_rederive``). One log
        line per job."""
        zero = "0x" + "00" * 20
        for job_id in job_ids:
            old = self.store.get_job(job_id)
            record = self.p.rebuild_job(job_id, self.s.start_block, to_block=block)
            if record is None:
                self.store.drop_job(job_id)
                self.store.inflight_remove(job_id)
                log.warning("reorg: job=%d not on the canonical chain; forgotten", job_id)
                continue
            self.store.put_job(record)
            mine = (old is not None and old.node == self.me) or self.store.inflight_has(job_id)
            key = f"reorg:{job_id}:{block}"
            open_ = record.node.lower() == zero
            if self.s.expire_others:  # the work items of the orphaned chain were used up
                if open_:
                    self.store.schedule("cancel", job_id, record.claim_deadline + 1)
                elif record.published_block == 0:
                    self.store.schedule("expire", job_id, record.result_deadline + 1)
            state = "open" if open_ else "claimed" if record.published_block == 0 else "published"
            log.warning(
                "reorg: job=%d rebuilt from the chain state=%s mine=%s", job_id, state, mine
            )
            if not mine:
                continue
            if open_:
                self.store.unschedule("finalize", job_id)
                self.store.inflight_remove(job_id)
                decision = self.policy.decide(
                    record, self._chain_time(), self.store.inflight_count()
                )
                if not decision.take:
                    log.info("skip job=%d reason=%s", job_id, decision.reason)
                    continue
                self.store.inflight_add(job_id)
                self.dispatch("chain", "rederive", [job_id, key])
            elif record.node == self.me and record.published_block == 0:
                self.store.unschedule("finalize", job_id)  # its publish was orphaned
                self.store.inflight_add(job_id)
                if self.store.get_output(job_id) is not None:
                    self.dispatch("chain", "rederive", [job_id, key])
                else:
                    self.dispatch("infer", "serve", [job_id, key])
            elif record.node == self.me:
                self.store.unschedule("finalize", job_id)
                due = record.published_at + self.challenge_window() + 1
                self.store.schedule("finalize", job_id, due)

    def _chain_time(self) -> float:
        return float(self.w3.eth.get_block("latest")["timestamp"])

    # ---- logs -> work ----
    def handle(self, item: DecodedLog) -> None:
        """Update the job record and hand on the work the log calls for (once per key)."""
        handler = getattr(self, f"on_{item.event}", None)
        if handler is None:
            return
        key = event_key(item)
        if item.contract == "market" and "job_id" in item.args:
            self._touched.setdefault(item.block_number, set()).add(int(item.args["job_id"]))
        first = not self.store.seen(key)
        handler(item, key, first)
        if first:  # marked after the hand-on: a crash in between hands it on again
            self.store.mark_seen(key)
        self.handled += 1

    def _job(self, job_id: int) -> JobRecord | None:
        record = self.store.get_job(job_id)
        if record is None:
            log.warning("watcher: job %d unknown (submitted before start_block?)", job_id)
        return record

    def on_JobSubmitted(self, item: DecodedLog, key: str, first: bool) -> None:
        record = JobRecord.from_submitted(item.args)
        self.store.put_job(record)
        if not first:
            return
        self.metrics.job("seen")
        self.store.r.hset(self.store.key("seen_at"), record.job_id, time.time())
        if self.s.expire_others:
            self.store.schedule("cancel", record.job_id, record.claim_deadline + 1)
        self._take(record, key, self.block_time(item))

    def _take(self, record: JobRecord, key: str, now: float) -> None:
        """Run the policy on an open job; claim it (or run it first) when it is taken, else
        one ``skip job=N reason=...`` line (also for a model this node does not serve).

        A job that names another node is that node's alone for the market's exclusive
        window: it is put on the ``open`` schedule for the window's end (one ``wait`` line),
        and the keeper brings it back here then if nobody claimed it (``take_open``), so a
        job its preferred node drops is served by another node, not left to its deadline.
        A private job that names another node never opens (the market keeps it for its
        node, who alone can read it): skipped. The preferred node itself runs its job first
        and claims it with the result in one transaction; the job also goes on its ``secure``
        schedule, ``secure_margin`` seconds before the window ends, when the keeper claims it
        if it has not been run by then (``Keeper._secure``), so a slow run does not lose the
        job to another node at the window's end."""
        decision = self.policy.decide(record, now, self.store.inflight_count())
        if not decision.take:
            log.info("skip job=%d reason=%s", record.job_id, decision.reason)
            self.metrics.job("skipped")
            return
        preferred = record.preferred_node
        targeted = preferred == self.me
        opens_at = record.submitted_time + self.exclusive_window()
        if not targeted and int(preferred, 16) != 0:
            if record.private:
                log.info("skip job=%d reason=private job for node %s", record.job_id, preferred)
                self.metrics.job("skipped")
                return
            if now < opens_at:
                log.info(
                    "wait job=%d reason=reserved for node %s until %d",
                    record.job_id,
                    preferred,
                    opens_at,
                )
                self.store.schedule("open", record.job_id, opens_at)
                return
        self.store.inflight_add(record.job_id)
        if targeted and not record.private:  # (a private job never opens to others)
            self.store.schedule(
                "secure", record.job_id, opens_at - secure_margin(opens_at - record.submitted_time)
            )
        if targeted or self.s.claim_mode == "run-first":
            self.dispatch("infer", "serve", [record.job_id, key])
        else:
            self.dispatch("chain", "claim", [record.job_id, key])

    def take_open(self, job_id: int, now: float) -> None:
        """The keeper's call at the end of a job's exclusive window (the ``open`` schedule):
        the job, open to every node now, goes through the policy again (``_take``); nothing
        when it is no longer open or already in hand."""
        record = self.store.get_job(job_id)
        if record is None or int(record.node, 16) != 0:
            return
        if self.store.inflight_has(job_id):
            return
        log.info("open job=%d reason=window of node %s over", job_id, record.preferred_node)
        self._take(record, f"open:{job_id}", now)

    def exclusive_window(self) -> int:
        """``Market.exclusive_window()``, read at most once a minute (governance may change
        it)."""
        now = time.monotonic()
        if self._exclusive is None or now - self._exclusive[0] > 60:
            self._exclusive = (now, int(self.p.market.functions.exclusive_window().call()))
        return self._exclusive[1]

    def on_JobClaimed(self, item: DecodedLog, key: str, first: bool) -> None:
        record = self._job(item.args["job_id"])
        if record is None:
            return
        record.apply_claimed(item.args)
        self.store.put_job(record)
        if not first:
            return
        if self.s.expire_others:
            self.store.schedule("expire", record.job_id, record.result_deadline + 1)
        self.store.unschedule("secure", record.job_id)
        if record.node == self.me:
            self.metrics.job("claimed")
            # run-first (claim_and_publish) stores the output before its claim: nothing to run;
            # a claim sent again after a reorg dropped it (the output is stored, its result
            # not published in the same transaction): publish again
            secured = self.store.r.srem(self.store.key("secured"), record.job_id)
            # the watchdog: halfway to the result deadline, a job still without its result
            # is run (or published) again: a serve message lost in a crash costs no penalty
            claimed_at = self.block_time(item)
            half = max(0.0, record.result_deadline - claimed_at) / 2
            self.store.schedule("reserve", record.job_id, claimed_at + half)
            if self.store.get_output(record.job_id) is None:
                if not secured:  # (a secure claim's job is being run already: it publishes)
                    self.dispatch("infer", "serve", [record.job_id, key])
            elif record.job_id not in self._published:
                self.dispatch("chain", "rederive", [record.job_id, key])
        else:
            self.store.inflight_remove(record.job_id)  # someone else took it
            self.store.unschedule("open", record.job_id)

    def on_ResultPublished(self, item: DecodedLog, key: str, first: bool) -> None:
        record = self._job(item.args["job_id"])
        if record is None:
            return
        record.apply_published(item.args)
        self.store.put_job(record)
        if not first:
            return
        if record.node == self.me:
            self.store.inflight_remove(record.job_id)
            self.store.unschedule("reserve", record.job_id)
            self.metrics.job("published")
            seen = self.store.r.hget(self.store.key("seen_at"), record.job_id)
            if seen is not None:
                self.metrics.observe_latency(max(0.0, time.time() - float(seen)))
            window = self.challenge_window()
            self.store.schedule("finalize", record.job_id, record.published_at + window + 1)
        if self.s.audits and record.node != self.me:
            self.store.schedule("audit", record.job_id, record.published_block + 3)

    def on_JobFinalized(self, item: DecodedLog, key: str, first: bool) -> None:
        if first and item.args["node"] == self.me:
            self.metrics.job("finalized")
            self.metrics.incr("earnings_wei", int(item.args["payment"]))
        self._terminal(item.args["job_id"])

    def on_JobExpired(self, item: DecodedLog, key: str, first: bool) -> None:
        if first and item.args["node"] == self.me:
            self.metrics.job("expired")
        self._terminal(item.args["job_id"])

    def on_JobSlashed(self, item: DecodedLog, key: str, first: bool) -> None:
        if first and item.args["node"] == self.me:
            self.metrics.job("slashed")
        self._terminal(item.args["job_id"])

    def on_JobCancelled(self, item: DecodedLog, key: str, first: bool) -> None:
        self._terminal(item.args["job_id"])

    def _terminal(self, job_id: int) -> None:
        self.store.inflight_remove(job_id)
        for queue in ("finalize", "expire", "cancel", "audit", "open", "secure", "reserve"):
            self.store.unschedule(queue, job_id)

    def on_JobVerifying(self, item: DecodedLog, key: str, first: bool) -> None:
        for queue in ("finalize", "audit"):
            self.store.unschedule(queue, item.args["job_id"])

    def on_DrawRequested(self, item: DecodedLog, key: str, first: bool) -> None:
        """A verifier or panel draw was requested (dispute, audit, replacement, appeal): the
        keeper calls ``Court.draw`` once a later block exists, for a job of a model this node
        serves or a dispute it is a party to (its own job, its dispute or audit, its appeal).
        A party draws at once; a node that only serves the model waits ``draw_delay_blocks``
        more, so that most of the time one draw is sent, not one per node."""
        if not first:
            return
        job_id = int(item.args["job_id"])
        d = self.p.dispute(job_id)
        party = self.me in (d["node"], d["challenger"], d["appellant"])
        if not party and bytes(d["model_id"]) not in self.policy.models:
            return
        delay = 0 if party else self.s.draw_delay_blocks
        self.store.schedule("draw", job_id, int(item.args["seed_block"]) + 1 + delay)
        self.store.r.sadd(self.store.key("disputes"), job_id)  # followed: see VerifierAssigned
        log.info(
            "draw requested job=%d panel=%s seed_block=%d",
            job_id,
            bool(item.args["panel"]),
            int(item.args["seed_block"]),
        )

    def on_VerifierAssigned(self, item: DecodedLog, key: str, first: bool) -> None:
        if not first:
            return
        job_id = int(item.args["job_id"])
        self._hand_key(job_id, key)
        if item.args["verifier"] == self.me:
            self.dispatch("chain", "accept", [job_id, key])
        elif self.store.r.sismember(self.store.key("disputes"), job_id):
            # a dispute this node draws for: replace the verifier if it misses a deadline
            self.store.schedule("replace", job_id, int(item.args["accept_deadline"]) + 1)

    def on_VerifierAccepted(self, item: DecodedLog, key: str, first: bool) -> None:
        if first and item.args["verifier"] == self.me:
            self.dispatch("infer", "verify", [item.args["job_id"], key, "verdict"])

    def on_VerdictPosted(self, item: DecodedLog, key: str, first: bool) -> None:
        if not first:
            return
        job_id = int(item.args["job_id"])
        self.store.schedule("settle", job_id, item.args["appeal_deadline"] + 1)
        record = self.store.get_job(job_id)
        if not item.args["valid"] and record is not None and record.node == self.me:
            # "invalid" on this node's own job: re-verify it; if it holds, appeal (roles.py)
            self.dispatch("infer", "verify", [job_id, key, "appeal"])

    def on_AppealOpened(self, item: DecodedLog, key: str, first: bool) -> None:
        # the panel is drawn later (DrawRequested, then PanelDrawn): nothing to settle before
        self.store.unschedule("settle", item.args["job_id"])

    def on_PanelDrawn(self, item: DecodedLog, key: str, first: bool) -> None:
        if not first:
            return
        job_id, panel = item.args["job_id"], list(item.args["panel"])
        if not panel:  # no node left: the appeal is void (bond back), the appeal window reopens
            self.store.schedule("settle", job_id, int(self.p.dispute(job_id)["deadline"]) + 1)
            return
        self.store.schedule("settle", job_id, item.args["vote_deadline"] + 1)
        self._hand_key(job_id, key)
        if self.me in panel:
            self.dispatch("infer", "verify", [job_id, key, "panel"])

    def _hand_key(self, job_id: int, key: str) -> None:
        """A verifier or panel was drawn for this node's own private job: hand it the job key
        (verinfer.node.private; an audit whose key is not handed in time is fraud)."""
        from verinfer.node.private import is_private

        record = self.store.get_job(job_id)
        if record is not None and record.node == self.me and is_private(record):
            self.dispatch("chain", "hand_key", [job_id, key])

    def on_DisputeSettled(self, item: DecodedLog, key: str, first: bool) -> None:
        job_id = item.args["job_id"]
        for queue in ("settle", "draw", "replace"):
            self.store.unschedule(queue, job_id)
        self.store.r.srem(self.store.key("disputes"), job_id)

    _window: tuple[float, int] = (0.0, 0)

    def challenge_window(self) -> int:
        """The market's challenge window (seconds), read at most once a minute."""
        at, value = self._window
        if time.monotonic() - at > 60:
            value = int(self.p.market.functions.challenge_window().call())
            self._window = (time.monotonic(), value)
        return value
