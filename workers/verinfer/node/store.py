"""The node's state in Redis: cursor, block hashes, job records, dedup keys and queues of due work.

All keys live under the node's namespace (``NodeSettings.namespace``) so several nodes can
share one Redis. Job records are the chain's view of a job (``JobRecord``) as JSON.
"""

from __future__ import annotations

import json
import time
from dataclasses import fields
from typing import Any

import redis

from verinfer.jobs import JobRecord

DEDUP_TTL_S = 7 * 24 * 3600
RECORD_TTL_S = 14 * 24 * 3600
WORKER_HEARTBEAT_S = 5.0  # how often a worker renews its entry in ``workers``
WORKER_STALE_S = 3 * WORKER_HEARTBEAT_S  # an entry older than this is a dead worker
_BYTES_FIELDS = {
    "model_id",
    "input_hash",
    "params_hash",
    "result_digest",
    "input",
    "params",
    "output",
}


def record_to_json(record: JobRecord) -> str:
    """A JobRecord as JSON (bytes as hex)."""
    data: dict[str, Any] = {}
    for f in fields(record):
        value = getattr(record, f.name)
        data[f.name] = value.hex() if f.name in _BYTES_FIELDS else value
    return json.dumps(data, separators=(",", ":"))


def record_from_json(text: str | bytes) -> JobRecord:
    """The JobRecord that ``record_to_json`` wrote."""
    data = json.loads(text)
    for name in _BYTES_FIELDS:
        data[name] = bytes.fromhex(data[name])
    return JobRecord(**data)


class Store:
    """Typed access to the node's Redis keys."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.r: Any = client
        self.ns = namespace

    def key(self, *parts: object) -> str:
        """``<namespace>:<part>:<part>...``."""
        return ":".join([self.ns, *(str(p) for p in parts)])

    # ---- watcher cursor and block hashes ----
    def cursor(self) -> int | None:
        """Last block whose logs were fully handed on, or None before the first run."""
        value = self.r.get(self.key("cursor"))
        return None if value is None else int(value)

    def save_progress(self, block: int, hashes: dict[int, bytes], window: int) -> None:
        """Atomically move the cursor to ``block`` and remember recent block hashes."""
        pipe = self.r.pipeline(transaction=True)
        if hashes:
            pipe.hset(self.key("blocks"), mapping={str(n): h.hex() for n, h in hashes.items()})
        pipe.set(self.key("cursor"), block)
        pipe.execute()
        if hashes:
            self._trim_blocks(block - window)

    def _trim_blocks(self, below: int) -> None:
        old = [n for n in self.r.hkeys(self.key("blocks")) if int(n) < below]
        if old:
            self.r.hdel(self.key("blocks"), *old)

    def block_hash(self, number: int) -> bytes | None:
        """The hash of block ``number`` as the watcher saw it, if still remembered."""
        value = self.r.hget(self.key("blocks"), str(number))
        return None if value is None else bytes.fromhex(value.decode())

    def rewind(self, block: int) -> None:
        """Move the cursor back to ``block`` (after a reorg) and forget later hashes."""
        later = [n for n in self.r.hkeys(self.key("blocks")) if int(n) > block]
        pipe = self.r.pipeline(transaction=True)
        if later:
            pipe.hdel(self.key("blocks"), *later)
        pipe.set(self.key("cursor"), block)
        pipe.execute()

    # ---- jobs touched per block (rebuilt from the chain when a reorg takes those blocks) ----
    def touch(self, block: int, job_ids: set[int]) -> None:
        """Record that logs of block ``block`` changed the records of ``job_ids``."""
        if job_ids:
            self.r.zadd(self.key("touched"), {str(j): block for j in job_ids}, gt=True)

    def touched_after(self, block: int) -> list[int]:
        """Jobs whose records logs after ``block`` changed."""
        return [int(j) for j in self.r.zrangebyscore(self.key("touched"), f"({block}", "+inf")]

    def trim_touched(self, below: int) -> None:
        """Forget the jobs last touched before block ``below`` (out of the reorg window)."""
        self.r.zremrangebyscore(self.key("touched"), "-inf", f"({below}")

    def drop_job(self, job_id: int) -> None:
        """Forget the record of a job that the canonical chain does not have."""
        self.r.delete(self.key("job", job_id))

    # ---- idempotency ----
    def seen(self, task_key: str) -> bool:
        """Whether the work of ``task_key`` was already handed on."""
        return bool(self.r.exists(self.key("seen", task_key)))

    def mark_seen(self, task_key: str) -> None:
        """Record that the work of ``task_key`` was handed on (after handing it on)."""
        self.r.set(self.key("seen", task_key), 1, ex=DEDUP_TTL_S)

    def mark_done(self, task_key: str) -> bool:
        """Mark a task's effect as done; False when it already was (a redelivered task)."""
        return bool(self.r.set(self.key("done", task_key), 1, nx=True, ex=DEDUP_TTL_S))

    def mark_done_many(self, task_keys: list[str]) -> None:
        """``mark_done`` for many keys in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for k in task_keys:
            pipe.set(self.key("done", k), 1, nx=True, ex=DEDUP_TTL_S)
        pipe.execute()

    def done_many(self, task_keys: list[str]) -> list[bool]:
        """``is_done`` for many keys in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for k in task_keys:
            pipe.exists(self.key("done", k))
        return [bool(v) for v in pipe.execute()]

    def is_done(self, task_key: str) -> bool:
        """Whether ``mark_done(task_key)`` happened."""
        return bool(self.r.exists(self.key("done", task_key)))

    # ---- job records ----
    def put_job(self, record: JobRecord) -> None:
        """Store the chain's view of a job."""
        self.r.set(self.key("job", record.job_id), record_to_json(record), ex=RECORD_TTL_S)

    def get_job(self, job_id: int) -> JobRecord | None:
        """The stored record of ``job_id``, if any."""
        text = self.r.get(self.key("job", job_id))
        return None if text is None else record_from_json(text)

    def get_jobs(self, job_ids: list[int]) -> list[JobRecord | None]:
        """Records of many jobs in one round trip."""
        if not job_ids:
            return []
        texts = self.r.mget([self.key("job", j) for j in job_ids])
        return [None if t is None else record_from_json(t) for t in texts]

    def put_output(self, job_id: int, data: dict[str, Any]) -> None:
        """Remember what this node computed for a job (tokens, finish reason, digest)."""
        self.r.set(self.key("output", job_id), json.dumps(data), ex=RECORD_TTL_S)

    def put_outputs(self, outputs: dict[int, dict[str, Any]]) -> None:
        """``put_output`` for many jobs in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for job_id, data in outputs.items():
            pipe.set(self.key("output", job_id), json.dumps(data), ex=RECORD_TTL_S)
        pipe.execute()

    def get_outputs(self, job_ids: list[int]) -> list[dict[str, Any] | None]:
        """``get_output`` for many jobs in one round trip."""
        if not job_ids:
            return []
        texts = self.r.mget([self.key("output", j) for j in job_ids])
        return [None if t is None else json.loads(t) for t in texts]

    def get_output(self, job_id: int) -> dict[str, Any] | None:
        """What ``put_output`` stored."""
        text = self.r.get(self.key("output", job_id))
        return None if text is None else json.loads(text)

    # ---- capacity: jobs this node has taken on and not yet published ----
    def inflight_add(self, job_id: int) -> None:
        """Count ``job_id`` against the node's capacity."""
        self.r.sadd(self.key("inflight"), job_id)

    def inflight_remove(self, job_id: int) -> None:
        """Release ``job_id``'s capacity."""
        self.r.srem(self.key("inflight"), job_id)

    def inflight_has(self, job_id: int) -> bool:
        """Whether ``job_id`` is in hand (taken on and not yet published)."""
        return bool(self.r.sismember(self.key("inflight"), job_id))

    def inflight_count(self) -> int:
        """Jobs taken on and not yet published."""
        return int(self.r.scard(self.key("inflight")))

    # ---- due work (sorted sets scored by due time or block) ----
    def schedule(self, queue: str, member: str | int, due: float) -> None:
        """Put ``member`` on ``queue``, due at ``due`` (keeps the earliest due)."""
        self.r.zadd(self.key("due", queue), {str(member): due}, lt=True)

    def take_due(self, queue: str, now: float, limit: int) -> list[str]:
        """Remove and return up to ``limit`` members due at ``now``."""
        key = self.key("due", queue)
        members = [m.decode() for m in self.r.zrangebyscore(key, "-inf", now, start=0, num=limit)]
        if members:
            self.r.zrem(key, *members)
        return members

    def unschedule(self, queue: str, member: str | int) -> None:
        """Drop ``member`` from ``queue``."""
        self.r.zrem(self.key("due", queue), str(member))

    def due_size(self, queue: str) -> int:
        """How many members wait on ``queue``."""
        return int(self.r.zcard(self.key("due", queue)))

    # ---- workers: Celery worker processes of this node that are up (role ready) ----
    def worker_up(self, name: str) -> None:
        """Record that worker ``name`` (``role@host:pid``) is up (ready, then every heartbeat)."""
        self.r.hset(self.key("workers"), name, time.time())

    def worker_down(self, name: str) -> None:
        """Forget worker ``name`` (it stopped)."""
        self.r.hdel(self.key("workers"), name)

    def workers(self, max_age_s: float = WORKER_STALE_S) -> dict[str, float]:
        """Live workers, with the time of their last heartbeat (``worker_up``, every
        ``WORKER_HEARTBEAT_S``); entries older than ``max_age_s`` (a worker killed without
        its clean stop) are dropped."""
        raw = self.r.hgetall(self.key("workers"))
        now = time.time()
        live = {k.decode(): float(v) for k, v in raw.items() if now - float(v) <= max_age_s}
        stale = [k for k in raw if k.decode() not in live]
        if stale:
            self.r.hdel(self.key("workers"), *stale)
        return live
