"""The gateway's choice of a node for each public job, from the track record.

``GatewayRouter.choose`` runs on the submit thread for every request of a batch. The record
comes from the SDK's indexer (``Client.indexer()``), synced at most every
``route_sync_s``; the ranking is ``verinfer.routing.rank`` with the gateway's weights
(``VERINFER_GATEWAY_ROUTE_WEIGHTS``), over the nodes the market says are eligible (the batched
price and eligibility read of ``ChainWorker._read_price``, at their prices read there). The
ranked list per model is kept until the index syncs or the eligible nodes or prices change; a
request with its own ``exclude_nodes``, or a batch in which the gateway already has jobs
in flight with a node, is ranked again from the same cached records, with those in-flight jobs
passed as ``inflight`` (they count as tries, so a burst of jobs spreads over the nodes still
warming up rather than all going to the least tried one).

A request may pin a ``node`` (it must be an eligible node of the model; it gets the job even
with no record), give ``exclude_nodes``, or ask for ``routing: "open"`` (no preferred node, the
first claimer takes it). With no record of any eligible node (or none left after the
exclusions' ranking), the job goes open, as without routing, and the gateway says so in its
log once per model per sync.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from typing import Any

from verinfer.gateway import errors
from verinfer.indexer import NodeRecord
from verinfer.routing import RoutePolicy, Scored, Weights, rank

log = logging.getLogger("verinfer.gateway")


class GatewayRouter:
    """Chooses the preferred node of the gateway's jobs (see the module docstring)."""

    def __init__(
        self,
        indexer: Callable[[], Any],
        weights: Weights | None = None,
        sync_s: float = 5.0,
        routing: str = "score",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``indexer()`` returns the synced ``verinfer.indexer.Indexer`` (``Client.indexer``:
        each call syncs it), called at most every ``sync_s`` seconds."""
        self._indexer_fn = indexer
        self.policy = RoutePolicy(weights=weights or Weights())
        self.sync_s = sync_s
        self.routing = routing
        self._clock = clock
        self._indexer: Any = None
        self._synced_at = float("-inf")
        self.generation = 0  # syncs done (a cached ranking belongs to one)
        self._ranked: dict[bytes, tuple[Any, list[NodeRecord], list[Scored]]] = {}
        self._open_said: dict[bytes, int] = {}
        self._lock = threading.Lock()  # answered jobs are counted from the poll thread
        self._answered: Counter[str] = Counter()  # since the last sync: maybe not on record yet

    # ---- the record ----
    def sync(self, force: bool = False) -> None:
        """Sync the indexer if ``sync_s`` has passed (or ``force``); a failed sync keeps the
        record as it was (one warning line)."""
        now = self._clock()
        if not force and now - self._synced_at < self.sync_s:
            return
        self._synced_at = now
        try:
            self._indexer = self._indexer_fn()
        except Exception as exc:  # routing goes on with the record it has (or opens jobs)
            log.warning("track record sync failed (routing on the last record): %s", exc)
            return
        with self._lock:
            self._answered.clear()
        self.generation += 1

    def records(self, model_id: bytes) -> list[NodeRecord]:
        """The model's records as last synced ([] before the first sync)."""
        if self._indexer is None:
            return []
        return list(self._indexer.records(model_id))

    def policy_for(self, exclude: Collection[str] = ()) -> RoutePolicy:
        """The gateway's policy with ``exclude`` (addresses) excluded."""
        if not exclude:
            return self.policy
        return dataclasses.replace(self.policy, exclude=frozenset(a.lower() for a in exclude))

    def ranked(self, model_id: bytes, eligible: Mapping[str, int]) -> list[Scored]:
        """The eligible nodes of the model, best first, with no request's own wishes (cached
        until the next sync or a change of the eligible nodes or their prices)."""
        return self._cached(model_id, eligible)[1]

    def _cached(
        self, model_id: bytes, eligible: Mapping[str, int]
    ) -> tuple[list[NodeRecord], list[Scored]]:
        key = (self.generation, tuple(sorted((n.lower(), p) for n, p in eligible.items())))
        hit = self._ranked.get(model_id)
        if hit is not None and hit[0] == key:
            return hit[1], hit[2]
        prices = {n.lower(): p for n, p in eligible.items()}
        records = [  # the market's own eligibility and prices, fresher than the record's
            dataclasses.replace(r, price_per_token=prices[r.node.lower()])
            for r in self.records(model_id)
            if r.node.lower() in prices
        ]
        ranked = rank(records, self.policy)
        self._ranked[model_id] = (key, records, ranked)
        return records, ranked

    # ---- in flight ----
    def answered(self, node: str) -> None:
        """A job routed to ``node`` was answered (its outcome may not be indexed yet: it
        counts as in flight until the next sync)."""
        with self._lock:
            self._answered[node.lower()] += 1

    # ---- the choice ----
    def choose(
        self,
        model_id: bytes,
        label: str,
        eligible: Mapping[str, int],
        pin: str | None = None,
        exclude: Collection[str] = (),
        routing: str | None = None,
        inflight: Mapping[str, int] | None = None,
    ) -> str | None:
        """The preferred node of one job (checksummed, as the market lists it), or None for an
        open job. ``eligible``: the model's eligible nodes and their prices; ``inflight``: the
        gateway's unanswered jobs per node (lower-case addresses). A GatewayError (400) for a
        pin that is not an eligible node of the model, a pin also excluded, or wishes that
        contradict each other."""
        mode = routing or self.routing
        by_lower = {n.lower(): n for n in eligible}
        excluded = {a.lower() for a in exclude}
        if pin is not None:
            if routing == "open":
                raise errors.bad_request(
                    'routing "open" leaves the job to the first node that claims it: drop node',
                    "routing",
                )
            if pin.lower() in excluded:
                raise errors.bad_request(f"node {pin} is also in exclude_nodes", "node")
            if pin.lower() not in by_lower:
                raise errors.bad_request(
                    f"node {pin} is not an eligible node of model {label} (staked, serving it, "
                    "not slashed: GET /v1/providers?model=... lists them)",
                    "node",
                    "node_not_eligible",
                )
            return by_lower[pin.lower()]
        if mode == "open":
            if excluded and routing == "open":
                raise errors.bad_request(
                    'exclude_nodes needs routing "score": an open job goes to whoever claims it',
                    "exclude_nodes",
                )
            return None
        if excluded and not set(by_lower) - excluded:
            raise errors.bad_request(
                f"exclude_nodes leaves no eligible node of model {label}",
                "exclude_nodes",
                "no_eligible_node",
            )
        records, ranked = self._cached(model_id, eligible)
        with self._lock:
            counts = Counter(self._answered)
        counts.update({n.lower(): c for n, c in (inflight or {}).items()})
        if excluded or any(counts.get(s.node.lower()) for s in ranked):
            tries = {r.node: counts.get(r.node.lower(), 0) for r in records}
            ranked = rank(records, self.policy_for(excluded), {n: c for n, c in tries.items() if c})
        if not ranked:
            if self._open_said.get(model_id) != self.generation:
                self._open_said[model_id] = self.generation
                log.info(
                    "no track record of an eligible node of %s%s: its jobs go open (first claimer)",
                    label,
                    " outside exclude_nodes" if excluded else "",
                )
            return None
        return by_lower.get(ranked[0].node.lower())
