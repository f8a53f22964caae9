"""Keeper duties: finalize the node's jobs in batches, start the audits the randomness
selects, expire and cancel dead jobs, settle disputes when due, withdraw earnings."""

from __future__ import annotations

import logging
import threading
import time

from verinfer.jobs import JobStatus
from verinfer.node.contracts import Protocol
from verinfer.node.sender import RPC_ERRORS
from verinfer.node.settings import NodeSettings
from verinfer.node.store import Store
from verinfer.node.watcher import Dispatch

log = logging.getLogger("verinfer.node.keeper")
AUDIT_DELAY_BLOCKS = 2
WITHDRAW_EVERY_S = 30.0


class Keeper:
    """Runs the due work that the watcher scheduled in Redis."""

    def __init__(
        self, settings: NodeSettings, protocol: Protocol, store: Store, dispatch: Dispatch, me: str
    ) -> None:
        self.s = settings
        self.p = protocol
        self.store = store
        self.dispatch = dispatch
        self.me = me
        self._last_withdraw = 0.0

    def run(self, stop: threading.Event) -> None:
        """Tick every ``keeper_interval_s`` until ``stop``."""
        while not stop.wait(self.s.keeper_interval_s):
            try:
                self.tick()
            except RPC_ERRORS as exc:
                log.warning("keeper: rpc error %s; next tick retries", type(exc).__name__)

    def _status(self, job_id: int) -> JobStatus:
        return JobStatus(self.p.market.functions.job_status(job_id).call())

    def tick(self) -> None:
        """One pass over every kind of due work."""
        block = self.p.w3.eth.get_block("latest")
        now, head = int(block["timestamp"]), int(block["number"])
        while ids := self.store.take_due("finalize", now, self.s.finalize_batch):
            self.dispatch("chain", "finalize", [[int(i) for i in ids]])
        for job_id in map(int, self.store.take_due("audit", head, 256)):
            record = self.store.get_job(job_id)
            if record is None or head > record.published_block + AUDIT_DELAY_BLOCKS + 256:
                continue
            court = self.p.court.functions
            if court.is_audit_selected(job_id, record.published_block).call() and (
                self._status(job_id) == JobStatus.PUBLISHED
            ):
                log.info("audit selected job=%d node=%s", job_id, record.node)
                self.dispatch("chain", "start_audit", [job_id])
        for job_id in map(int, self.store.take_due("expire", now, 64)):
            if self._status(job_id) == JobStatus.CLAIMED:
                self.dispatch("chain", "expire", [job_id])
        for job_id in map(int, self.store.take_due("cancel", now, 64)):
            if self._status(job_id) == JobStatus.OPEN:
                self.dispatch("chain", "cancel", [job_id])
        for job_id in map(int, self.store.take_due("settle", now, 64)):
            if self._status(job_id) == JobStatus.VERIFYING:
                self.dispatch("chain", "settle", [job_id])
        if time.monotonic() - self._last_withdraw > WITHDRAW_EVERY_S:
            self._last_withdraw = time.monotonic()
            if self.p.market.functions.claimable(self.me).call() > self.s.withdraw_min:
                self.dispatch("chain", "withdraw", [])
