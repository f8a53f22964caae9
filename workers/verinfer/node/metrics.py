"""Node metrics kept in Redis (every node process writes) and served to Prometheus.

The node is several processes (watcher, sender, inference workers, on one host or many);
counters live in one Redis hash so they add up across all of them, and the supervisor's
collector turns them into Prometheus families at scrape time.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.5, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 300, 600)
JOB_STATES = ("seen", "claimed", "published", "finalized", "expired", "slashed", "skipped")


class Metrics:
    """Counters and a latency histogram in the Redis hash ``<namespace>:metrics``."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.r: Any = client
        self.key = f"{namespace}:metrics"

    def incr(self, name: str, amount: int | float = 1, **labels: str) -> None:
        """Add ``amount`` to counter ``name{labels}``."""
        field = name + "".join(f"|{k}={v}" for k, v in sorted(labels.items()))
        if isinstance(amount, float) or name.endswith("_wei") or abs(amount) >= 2**62:
            # wei sums outgrow int64 (HINCRBY fails once the stored sum would overflow)
            self.r.hincrbyfloat(self.key, field, amount)
        else:
            self.r.hincrby(self.key, field, amount)

    def job(self, state: str, amount: int = 1) -> None:
        """Count a job entering ``state`` (one of JOB_STATES)."""
        self.incr("jobs", amount, state=state)

    def observe_latency(self, seconds: float) -> None:
        """Record a submit-to-publish latency (seconds)."""
        i = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        pipe = self.r.pipeline(transaction=False)
        pipe.hincrby(self.key, f"latency_bucket|le={i}", 1)
        pipe.hincrbyfloat(self.key, "latency_sum", seconds)
        pipe.execute()

    def snapshot(self) -> dict[str, float]:
        """Every counter, by field name."""
        return {k.decode(): float(v) for k, v in self.r.hgetall(self.key).items()}

    def get(self, name: str, **labels: str) -> float:
        """One counter's value (0 when never incremented)."""
        field = name + "".join(f"|{k}={v}" for k, v in sorted(labels.items()))
        value = self.r.hget(self.key, field)
        return float(value) if value is not None else 0.0


class RedisCollector(Collector):
    """Prometheus collector over ``Metrics`` (register on a CollectorRegistry)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        """Yield the metric families at scrape time."""
        snap = self.metrics.snapshot()
        jobs = GaugeMetricFamily("verinfer_jobs", "Jobs by state (cumulative)", labels=["state"])
        for state in JOB_STATES:
            jobs.add_metric([state], snap.get(f"jobs|state={state}", 0.0))
        yield jobs
        gas = CounterMetricFamily("verinfer_gas_spent_wei", "Gas fees paid by the node (wei)")
        gas.add_metric([], snap.get("gas_wei", 0.0))
        yield gas
        txs = CounterMetricFamily(
            "verinfer_transactions", "Transactions", labels=["action", "outcome"]
        )
        for field, value in snap.items():
            if field.startswith("tx|"):
                labels = dict(part.split("=", 1) for part in field.split("|")[1:])
                txs.add_metric([labels.get("action", ""), labels.get("outcome", "")], value)
        yield txs
        earn = CounterMetricFamily("verinfer_earnings_wei", "Net payment of finalized jobs (wei)")
        earn.add_metric([], snap.get("earnings_wei", 0.0))
        yield earn
        verdicts = CounterMetricFamily(
            "verinfer_verdicts", "Verdicts posted by this node", labels=["valid"]
        )
        for valid in ("true", "false"):
            verdicts.add_metric([valid], snap.get(f"verdicts|valid={valid}", 0.0))
        yield verdicts
        buckets, acc = [], 0.0
        for i, bound in enumerate(LATENCY_BUCKETS):
            acc += snap.get(f"latency_bucket|le={i}", 0.0)
            buckets.append((str(bound), acc))
        acc += snap.get(f"latency_bucket|le={len(LATENCY_BUCKETS)}", 0.0)
        buckets.append(("+Inf", acc))
        hist = HistogramMetricFamily(
            "verinfer_submit_to_publish_seconds", "Job submission to result on chain (seconds)"
        )
        hist.add_metric([], buckets, snap.get("latency_sum", 0.0))
        yield hist


def now() -> float:
    """Wall-clock seconds (one place to read the clock)."""
    return time.time()
