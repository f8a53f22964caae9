"""Routing and failover for the client (``Client.submit_routed`` / ``Client.route_many``).

Each job goes to the best node by its track record (``verinfer.routing``), as that job's
preferred node: the market gives it ``exclusive_window`` seconds alone, then the job is open
to every eligible node. The client follows its jobs in one poll loop and says, through
``on_event``, when a job falls open. A job nobody claimed by its claim deadline is cancelled
(its escrow back in the client's prepaid balance, in that transaction) and only then
submitted again, to the next node; a job claimed and not published by its result deadline
is expired the same way (escrow back, plus the node's penalty) and submitted again. So the
client never has two live escrows for one job: nothing is paid twice. After ``attempts``
submissions, or when no eligible node is left, the job ends refunded and not served.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from verinfer.chain_errors import ClientError
from verinfer.jobs import ZERO_ADDRESS, JobStatus
from verinfer.routing import RoutePolicy, Scored, rank

if TYPE_CHECKING:
    from verinfer.client import Client, JobHandle, Result
    from verinfer.indexer import Indexer

EventSink = Callable[[str], None]


@dataclass
class Attempt:
    """One submission of a routed job and how it ended."""

    job_id: int
    node: str  # preferred node (ZERO_ADDRESS: open to all)
    outcome: str = "pending"  # served, cancelled, expired, slashed
    escrow: int = 0
    refund: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RoutedJob:
    """A job the router places, and every submission it took."""

    request: dict[str, Any]  # Client.submit keyword arguments, without node
    policy: RoutePolicy
    attempts: list[Attempt] = field(default_factory=list)
    handle: JobHandle | None = None
    result: Result | None = None
    opened: bool = False  # the current attempt fell open (said once)
    done: bool = False
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def served(self) -> bool:
        return self.result is not None and self.result.held

    @property
    def seconds(self) -> float | None:
        """Wall seconds from the first submission to the result (None: not served)."""
        return None if self.finished is None or not self.served else self.finished - self.started

    def as_dict(self) -> dict[str, Any]:
        return {
            "served": self.served,
            "job_id": self.handle.job_id if self.handle else None,
            "node": self.result.node if self.result else None,
            "seconds": self.seconds,
            "attempts": [a.as_dict() for a in self.attempts],
            "result": self.result.as_dict() if self.result else None,
        }


class Router:
    """Places jobs of one client by the indexer's records and fails them over."""

    def __init__(
        self,
        client: Client,
        indexer: Indexer,
        attempts: int = 3,
        on_event: EventSink | None = None,
        sync_every_s: float = 0.5,
    ) -> None:
        self.client = client
        self.indexer = indexer
        self.max_attempts = attempts
        self.say: EventSink = on_event or (lambda _msg: None)
        self.sync_every_s = sync_every_s
        self._synced = 0.0
        self.exclusive = int(client.market.exclusive_window())
        self.inflight: Counter[str] = Counter()  # node -> attempts sent, outcome not yet seen
        self._eligibility: dict[tuple[str, bytes], tuple[float, bool]] = {}

    # ---- choosing ----
    def sync(self, force: bool = False) -> None:
        """Bring the records up to the chain (at most every ``sync_every_s``)."""
        if force or time.monotonic() - self._synced >= self.sync_every_s:
            self.indexer.sync()
            self._synced = time.monotonic()

    def ranked(self, model_id: bytes, policy: RoutePolicy) -> list[Scored]:
        """Eligible nodes for ``model_id`` under ``policy``, best first, checked on chain."""
        self.sync()
        return [
            s
            for s in rank(self.indexer.records(model_id), policy, self.inflight)
            if self._eligible(s.node, model_id)
        ]

    def _eligible(self, node: str, model_id: bytes) -> bool:
        """``Market.is_eligible``, read at most every ``sync_every_s`` per node and model."""
        key = (node, model_id)
        seen = self._eligibility.get(key)
        if seen is None or time.monotonic() - seen[0] >= self.sync_every_s:
            seen = (time.monotonic(), bool(self.client.market.is_eligible(node, model_id)))
            self._eligibility[key] = seen
        return seen[1]

    # ---- placing ----
    def start(self, request: dict[str, Any], policy: RoutePolicy) -> RoutedJob:
        """Submit a job to the best node (ClientError when none is eligible)."""
        job = RoutedJob(dict(request), policy)
        if not self._submit(job):
            raise ClientError(
                f"no eligible node for model {request['model']!r} within the routing policy"
            )
        return job

    def _submit(self, job: RoutedJob) -> bool:
        model_id = self.client.resolve_model(job.request["model"])
        tried = {a.node.lower() for a in job.attempts}
        policy = job.policy
        for node in tried:
            policy = policy.without(node)
        best = self.ranked(model_id, policy)
        if not best:
            return False
        node = best[0].node
        max_price = policy.max_price
        request = dict(job.request)
        if max_price is not None and request.get("max_payment") is None:
            request["max_payment"] = int(request.get("max_tokens", 64)) * max_price
        handle = self.client.submit(node=node, **request)
        job.handle, job.opened = handle, False
        job.attempts.append(Attempt(handle.job_id, node, escrow=handle.record.max_payment))
        self.inflight[node] += 1
        if len(job.attempts) > 1:
            self.say(f"job {handle.job_id}: resubmitted to node {node} (attempt "
                     f"{len(job.attempts)} of {self.max_attempts})")  # fmt: skip
        return True

    # ---- following ----
    def step(self, jobs: Sequence[RoutedJob]) -> None:
        """One poll of every live job: note results, fall-opens, deadlines; fail over."""
        live = [j for j in jobs if not j.done and j.handle is not None]
        if not live:
            return
        handles = [j.handle for j in live if j.handle is not None]
        self.client.wait_many(handles, timeout=0, poll=0, once=True)
        now = self._chain_now()
        for job in live:
            self._advance(job, now)

    def _advance(self, job: RoutedJob, now: float) -> None:
        handle = job.handle
        assert handle is not None
        rec, attempt = handle.record, job.attempts[-1]
        status = handle.status
        if status != JobStatus.OPEN and not job.opened and int(rec.node, 16) != 0:
            # it fell open between two polls and another node took it at once
            pref = rec.preferred_node
            if int(pref, 16) != 0 and rec.node.lower() != pref.lower():
                job.opened = True
                self.say(
                    f"job {rec.job_id}: node {pref} did not claim within its exclusive window "
                    f"({self.exclusive} s): node {rec.node} took it"
                )
        if status in (JobStatus.PUBLISHED, JobStatus.VERIFYING, JobStatus.FINALIZED):
            job.result = self.client.result_of(handle)
            self._settled(attempt, "served")
            job.done, job.finished = True, time.monotonic()
            return
        if status == JobStatus.OPEN:
            # (a private job stays its node's: the market never opens it to others)
            if not job.opened and not rec.private and now >= rec.submitted_time + self.exclusive:
                job.opened = True
                if rec.preferred_node != ZERO_ADDRESS:
                    self.say(
                        f"job {rec.job_id}: node {rec.preferred_node} did not claim within its "
                        f"exclusive window ({self.exclusive} s): open to every eligible node"
                    )
            if now > rec.claim_deadline and self._end(handle, "cancel"):
                self.say(f"job {rec.job_id}: nobody claimed it by its deadline: cancelled, "
                         "escrow refunded")  # fmt: skip
            return
        if status == JobStatus.CLAIMED:
            if now > rec.result_deadline and self._end(handle, "expire", rec.result_deadline):
                self.say(f"job {rec.job_id}: node {rec.node} claimed it and published nothing by "
                         "its deadline: expired, escrow refunded")  # fmt: skip
            return
        if status in (JobStatus.CANCELLED, JobStatus.EXPIRED, JobStatus.SLASHED):
            self._settled(attempt, status.name.lower())
            attempt.refund = int(handle.refund or 0)
            if status == JobStatus.SLASHED:  # a served job proven wrong: refunded in full
                job.result = self.client.result_of(handle)
            if len(job.attempts) >= self.max_attempts or not self._submit(job):
                job.done, job.finished = True, time.monotonic()
                job.result = job.result or self.client.result_of(handle)

    @staticmethod
    def _chain_now() -> float:
        """The time the next block will have at least: the head's, or the wall clock when the
        head is older (a chain that mines on demand)."""
        from ape import chain

        return max(time.time(), float(chain.blocks.head.timestamp))

    def _settled(self, attempt: Attempt, outcome: str) -> None:
        attempt.outcome = outcome
        self.inflight[attempt.node] -= 1

    def _end(self, handle: JobHandle, action: str, after: int | None = None) -> bool:
        """Cancel or expire ``handle``'s job (simulated first: a node may have claimed or a
        keeper expired it meanwhile); True when this client's transaction ended it.
        ``after``: the chain time the action needs passed; a local chain that mines on demand
        mines a block first when its head is older (as ``Client._wait_next_block`` does)."""
        from ape import chain

        from verinfer.chain_errors import guard

        local = chain.provider.network.name == "local"
        if after is not None and local and int(chain.blocks.head.timestamp) <= after:
            chain.provider.make_request("evm_mine", [])  # Anvil and Hardhat know it

        from ape.exceptions import ContractLogicError

        method = getattr(self.client.market, action)
        args = (handle.job_id, handle.record.as_struct())
        try:
            method.call(*args, sender=self.client.account)
        except Exception:  # no longer applies (claimed, ended by a keeper): the next poll says
            return False
        try:
            with guard(action):
                method(*args, sender=self.client.account)
        except ClientError as exc:
            # a node claimed it (or a keeper ended it) between the simulation and the send:
            # the revert is that race, and the next poll follows the job where it is now
            if not isinstance(exc.__context__, ContractLogicError):
                raise
            self.say(f"job {handle.job_id}: {action} not needed any more ({exc})")
            return False
        return True

    def run(self, jobs: Sequence[RoutedJob], timeout: float, poll: float = 0.25) -> None:
        """Follow ``jobs`` until each is served or has ended refunded; ClientError after
        ``timeout`` seconds with jobs still live."""
        deadline = time.monotonic() + timeout
        while not all(j.done for j in jobs):
            if time.monotonic() > deadline:
                live = [str(j.handle.job_id) for j in jobs if not j.done and j.handle]
                raise ClientError(f"routed jobs still live after {timeout:g}s: {', '.join(live)}")
            self.step(jobs)
            time.sleep(poll)
