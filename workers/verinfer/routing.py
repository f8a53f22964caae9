"""Choosing the node for a job from its track record (``verinfer.indexer``).

The score of a node for a model is a weighted geometric mean of four parts, each in (0, 1]:

- ``reliability``: its jobs served over its jobs taken or offered, recent ones weighing more:
  the i-th newest outcome (a published result 1; an expiry, a slash, a claim past its result
  deadline, or a job that named it preferred node and that it did not claim 0) has weight
  ``0.5 ** (i / half_life)``; one served and one failed pseudo-job of weight 1 each are
  added, so that a node with no record starts at 0.5 and a few jobs move it.
- ``latency``: ``ref / (ref + p50)``, where p50 is the median seconds from submission to its
  published result over its newest ``latency_window`` results (0.5 with none yet).
- ``price``: the cheapest eligible price over its price (1 for the cheapest).
- ``stake``: its bonded stake over the largest of the eligible nodes' stakes.

``score = reliability^w_r x latency^w_l x price^w_p x stake^w_s`` with the weights normalised
to sum 1 (defaults 0.6, 0.25, 0.1, 0.05): a node that fails its jobs scores near 0 whatever
its price. Nodes that serve the model, are not slashed out, and charge at most the client's
price limit are eligible; the client can pin one (only it, even with no record), exclude
some, or set the weights. Nodes with fewer than ``explore_below`` outcomes go first, the
least tried first, so that every node gets a record (the warm-up).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from verinfer.indexer import NodeRecord


@dataclass(frozen=True)
class Weights:
    """How much each part of the score counts (normalised to sum 1)."""

    reliability: float = 0.6
    latency: float = 0.25
    price: float = 0.1
    stake: float = 0.05

    @classmethod
    def parse(cls, text: str) -> Weights:
        """``"reliability=0.7,latency=0.3"``: the named weights, the others 0."""
        values: dict[str, float] = dict.fromkeys(("reliability", "latency", "price", "stake"), 0.0)
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, value = part.partition("=")
            if name not in values:
                raise ValueError(f"unknown weight {name!r} (reliability, latency, price, stake)")
            try:
                values[name] = float(value)
            except ValueError:
                raise ValueError(f"weight {name} is not a number: {value!r}") from None
            if values[name] < 0:
                raise ValueError(f"weight {name} is negative")
        if sum(values.values()) <= 0:
            raise ValueError("the weights sum to 0")
        return cls(**values)


@dataclass(frozen=True)
class Scored:
    """A node's record and its score parts for one model."""

    record: NodeRecord
    reliability: float
    latency: float
    price: float
    stake: float
    score: float
    explore: bool = False  # fewer outcomes than explore_below: tried first

    @property
    def node(self) -> str:
        return self.record.node

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the record and the score parts."""
        return {
            **self.record.as_dict(),
            "score": round(self.score, 4),
            "reliability": round(self.reliability, 4),
            "latency_score": round(self.latency, 4),
            "price_score": round(self.price, 4),
            "stake_score": round(self.stake, 4),
            "warming_up": self.explore,
        }


@dataclass
class RoutePolicy:
    """The client's wishes: a node pinned, nodes excluded, a price limit, the weights."""

    pin: str | None = None
    exclude: frozenset[str] = field(default_factory=frozenset)
    max_price: int | None = None  # per output token, token base units
    weights: Weights = field(default_factory=Weights)
    half_life: float = 20.0  # jobs
    latency_ref_s: float = 10.0
    latency_window: int = 50
    explore_below: int = 2

    def without(self, node: str) -> RoutePolicy:
        """The same policy with ``node`` excluded too (a pinned node excluded leaves none)."""
        return replace(self, exclude=self.exclude | {node.lower()})


def reliability(record: NodeRecord, half_life: float) -> float:
    """Recency-weighted share of served jobs, with one served and one failed pseudo-job."""
    won, total = 1.0, 2.0
    for age, (_, outcome) in enumerate(reversed(record.outcomes)):
        weight = 0.5 ** (age / half_life)
        won += weight * outcome
        total += weight
    return won / total


def _latency(record: NodeRecord, policy: RoutePolicy) -> float:
    recent = record.publish_latencies[-policy.latency_window :]
    if not recent:
        return 0.5
    p50 = sorted(recent)[len(recent) // 2]
    return policy.latency_ref_s / (policy.latency_ref_s + p50)


def rank(
    records: Iterable[NodeRecord],
    policy: RoutePolicy | None = None,
    inflight: Mapping[str, int] | None = None,
) -> list[Scored]:
    """The eligible nodes of ``records`` (one model's), best first (warm-up nodes first,
    the least tried first; ``inflight``: jobs the caller has sent each node whose outcome
    is not on record yet, counted as tries)."""
    inflight = inflight or {}
    policy = policy or RoutePolicy()
    excluded = {n.lower() for n in policy.exclude}
    pool = [r for r in records if r.serving and not r.slashed_out]
    if policy.pin is not None:
        pool = [r for r in pool if r.node.lower() == policy.pin.lower()]
    pool = [r for r in pool if r.node.lower() not in excluded]
    if policy.max_price is not None:
        pool = [r for r in pool if r.price_per_token <= policy.max_price]
    if not pool:
        return []
    cheapest = min(r.price_per_token for r in pool)
    most_stake = max(r.stake for r in pool) or 1
    w = policy.weights
    total = w.reliability + w.latency + w.price + w.stake
    out = []
    tries: dict[str, int] = {}
    for r in pool:
        parts = (
            reliability(r, policy.half_life),
            _latency(r, policy),
            (cheapest / r.price_per_token) if r.price_per_token else 1.0,
            max(r.stake / most_stake, 1e-6),
        )
        weights = (w.reliability, w.latency, w.price, w.stake)
        score = 1.0
        for part, weight in zip(parts, weights, strict=True):
            score *= max(part, 1e-9) ** (weight / total)
        tried = len(r.outcomes) + inflight.get(r.node, 0)
        scored = Scored(r, *parts, score=score, explore=tried < policy.explore_below)
        out.append(scored)
        tries[r.node] = tried
    return sorted(
        out, key=lambda s: (not s.explore, tries[s.node] if s.explore else 0, -s.score, s.node)
    )
