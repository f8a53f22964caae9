"""Keeper duties: finalize the node's jobs in batches, start the audits the randomness
selects, draw the verifiers and panels of disputes (``Court.draw``) and replace verifiers
that miss a deadline, expire and cancel dead jobs, settle disputes when due, withdraw
earnings."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from verinfer.jobs import DRAW_PHASES, DisputePhase, JobStatus
from verinfer.node.contracts import Protocol
from verinfer.node.sender import Backoff
from verinfer.node.settings import NodeSettings
from verinfer.node.store import Store
from verinfer.node.watcher import Dispatch

log = logging.getLogger("verinfer.node.keeper")
AUDIT_DELAY_BLOCKS = 2
DRAW_RECHECK_BLOCKS = 3  # a draw sent is checked again this many blocks later


class Keeper:
    """Runs the due work that the watcher scheduled in Redis."""

    def __init__(
        self,
        settings: NodeSettings,
        protocol: Protocol,
        store: Store,
        dispatch: Dispatch,
        me: str,
        take_open: Callable[[int, float], None] | None = None,
    ) -> None:
        """``take_open(job_id, now)``: the watcher's ``take_open``, called for a job reserved
        for another node whose exclusive window is over and that nobody claimed."""
        self.s = settings
        self.p = protocol
        self.store = store
        self.dispatch = dispatch
        self.me = me
        self.take_open = take_open
        self._last_withdraw = 0.0

    def run(self, stop: threading.Event) -> None:
        """Tick every ``keeper_interval_s`` until ``stop``. An endpoint failure
        (``sender.is_transient``) is one log line, and the next tick waits twice as long as
        the last (at most ``rpc_max_backoff_s``); due work taken from Redis in the failed tick
        is put back first."""
        backoff = Backoff("keeper", self.s.keeper_interval_s, self.s.rpc_max_backoff_s, log)
        while not stop.wait(backoff.delay):
            try:
                self.tick()
            except Exception as exc:
                backoff.failed(exc)
                continue
            backoff.succeeded()

    def _status(self, job_id: int) -> JobStatus:
        return JobStatus(self.p.market.functions.job_status(job_id).call())

    def tick(self) -> None:
        """One pass over every kind of due work."""
        block = self.p.w3.eth.get_block("latest")
        now, head = int(block["timestamp"]), int(block["number"])
        while ids := self.store.take_due("finalize", now, self.s.finalize_batch):
            self.dispatch("chain", "finalize", [[int(i) for i in ids]])
        self._each("audit", head, 256, lambda job_id: self._audit(job_id, head))
        self._each("draw", head, 64, lambda job_id: self._draw(job_id, head))
        self._each("replace", now, 64, lambda job_id: self._replace(job_id, now))
        self._each("expire", now, 64, self._when(JobStatus.CLAIMED, "expire"))
        self._each("cancel", now, 64, self._when(JobStatus.OPEN, "cancel"))
        # the next block's time is at least the wall clock's (a chain that mines on demand
        # keeps an old head until a transaction comes)
        opens = max(now, int(time.time()))
        self._each("open", opens, 64, lambda job_id: self._open(job_id, opens))
        self._each("secure", opens, 64, self._secure)
        self._each("reserve", opens, 64, self._reserve)
        self._each("settle", now, 64, self._when(JobStatus.VERIFYING, "settle"))
        if time.monotonic() - self._last_withdraw > self.s.withdraw_every_s:
            if self.p.market.functions.claimable(self.me).call() > self.s.withdraw_min:
                self.dispatch("chain", "withdraw", [])
            self._last_withdraw = time.monotonic()

    def _each(self, queue: str, due: int, limit: int, fn: Callable[[int], None]) -> None:
        """``fn(job_id)`` for the work of ``queue`` due at ``due``; when ``fn`` fails (the
        endpoint), the job and the rest are put back, due now, and the error is raised."""
        ids = [int(i) for i in self.store.take_due(queue, due, limit)]
        for n, job_id in enumerate(ids):
            try:
                fn(job_id)
            except Exception:
                for rest in ids[n:]:
                    self.store.schedule(queue, rest, due)
                raise

    def _open(self, job_id: int, now: int) -> None:
        """A job reserved for another node, its exclusive window over: taken through the
        watcher's policy when it is still open."""
        if self.take_open is not None and self._status(job_id) == JobStatus.OPEN:
            self.take_open(job_id, float(now))

    def _secure(self, job_id: int) -> None:
        """A job that names this node, its exclusive window about to end, not run yet (no
        output stored) and still open: claimed now, so that no other node takes it when the
        window ends; the run in progress publishes it (docs/routing.md). Not when no inference
        worker of this node is alive: a node that cannot run it lets it fall open."""
        if self.store.get_output(job_id) is not None:
            return  # run: its claim_and_publish is on its way
        if not self.store.inflight_has(job_id):
            return  # skipped or dropped meanwhile
        if not any(name.startswith("infer") for name in self.store.workers()):
            # no inference worker alive to run it: left to fall open to the other nodes
            log.info("secure job=%d skipped reason=no live inference worker", job_id)
            return
        if self._status(job_id) == JobStatus.OPEN:
            log.info("secure job=%d reason=not run yet, its exclusive window ends soon", job_id)
            self.store.r.sadd(self.store.key("secured"), job_id)  # the run goes on: see JobClaimed
            self.dispatch("chain", "claim", [job_id, f"secure:{job_id}"])

    def _reserve(self, job_id: int) -> None:
        """The watchdog of a job this node claimed: halfway to its result deadline and still
        claimed without a result on chain, its run is dispatched again when no output is
        stored (the serve message was lost in a crash: one warning line), or its publish
        when one is (``rederive``). A second run of a job whose first is still queued only
        costs the work: one publish goes through, the other is refused by its simulation."""
        record = self.store.get_job(job_id)
        if record is None or record.node.lower() != self.me.lower():
            return
        if self._status(job_id) != JobStatus.CLAIMED:
            return
        if self.store.get_output(job_id) is None:
            log.warning("job=%d claimed and not run halfway to its deadline: run again", job_id)
            self.store.inflight_add(job_id)
            self.dispatch("infer", "serve", [job_id, f"reserve:{job_id}"])
        else:
            log.warning("job=%d run and not published halfway to its deadline: sent again", job_id)
            self.dispatch("chain", "rederive", [job_id, f"reserve:{job_id}"])

    def _audit(self, job_id: int, head: int) -> None:
        """Start the audit of ``job_id`` when the randomness selects it."""
        record = self.store.get_job(job_id)
        if record is None or head > record.published_block + AUDIT_DELAY_BLOCKS + 256:
            return
        court = self.p.court.functions
        if court.is_audit_selected(job_id, record.published_block).call() and (
            self._status(job_id) == JobStatus.PUBLISHED
        ):
            log.info("audit selected job=%d node=%s", job_id, record.node)
            self.dispatch("chain", "start_audit", [job_id])

    def _draw(self, job_id: int, head: int) -> None:
        """Draw the requested verifier or panel of ``job_id`` once a block after the request
        exists, and look again ``DRAW_RECHECK_BLOCKS`` later (a draw lost, or requested anew
        because its seed block's hash expired). Nothing when someone else drew already; a
        dispute that found no verifier (unresolved) is settled."""
        d = self.p.dispute(job_id)
        if d["phase"] in DRAW_PHASES:
            if head <= d["seed_block"]:
                self.store.schedule("draw", job_id, d["seed_block"] + 1)
                return
            self.dispatch("chain", "draw", [job_id])
            self.store.schedule("draw", job_id, head + DRAW_RECHECK_BLOCKS)
        elif d["phase"] == DisputePhase.UNRESOLVED and self._status(job_id) == JobStatus.VERIFYING:
            self.dispatch("chain", "settle", [job_id])

    def _replace(self, job_id: int, now: int) -> None:
        """Replace the verifier of ``job_id`` (``Court.replace_verifier``: it pays the no-show
        penalty and a new draw is requested) once it missed its accept or verdict deadline;
        look again at the verdict deadline after it accepted."""
        d = self.p.dispute(job_id)
        if d["phase"] not in (DisputePhase.ASSIGNED, DisputePhase.ACCEPTED):
            return
        if now <= d["deadline"]:
            self.store.schedule("replace", job_id, d["deadline"] + 1)
            return
        log.info("verifier late job=%d verifier=%s", job_id, d["verifier"])
        self.dispatch("chain", "replace_verifier", [job_id])

    def _when(self, status: JobStatus, action: str) -> Callable[[int], None]:
        """Dispatch ``action`` for a job that is still in ``status``."""

        def fn(job_id: int) -> None:
            if self._status(job_id) == status:
                self.dispatch("chain", action, [job_id])

        return fn
