"""`EngineBatches.due`: a batch goes when full, when the stream pauses, or when its first job
has waited long enough; not while jobs keep arriving (celery-batches' own timer cut batches
short). The worker-level behaviour runs in every node test (real Celery workers)."""

from __future__ import annotations

from queue import Queue

from verinfer.node.batching import EngineBatches


def _batches(
    buffered: int, first: float | None, last: float, last_batch_s: float = 0.0
) -> EngineBatches:
    b = EngineBatches.__new__(EngineBatches)
    b._buffer = Queue()
    for i in range(buffered):
        b._buffer.put(i)
    b.flush_every, b.gap, b.max_wait = 4, 0.05, 0.25
    b._first_put, b._last_put = first, last
    b.adapt, b._last_batch_s = 0.05, last_batch_s
    return b


def test_due__full_buffer__goes_at_once() -> None:
    assert _batches(4, first=10.0, last=10.0).due(now=10.0)


def test_due__jobs_still_arriving__waits() -> None:
    assert not _batches(2, first=10.0, last=10.04).due(now=10.06)


def test_due__stream_paused_for_the_gap__goes() -> None:
    assert _batches(2, first=10.0, last=10.01).due(now=10.07)


def test_due__first_job_waited_max_wait__goes_though_jobs_keep_arriving() -> None:
    assert _batches(3, first=10.0, last=10.24).due(now=10.26)


def test_due__nothing_buffered__lets_the_timer_stop() -> None:
    assert _batches(0, first=None, last=0.0).due(now=10.0)


def test_due__slow_engine__gap_and_max_wait_grow_with_the_last_batch() -> None:
    # a 60 s batch: the gap is 3 s (5 %), the first job's wait 6 s
    assert not _batches(2, first=10.0, last=10.1, last_batch_s=60.0).due(now=12.0)
    assert _batches(2, first=10.0, last=10.1, last_batch_s=60.0).due(now=13.2)
    assert not _batches(3, first=10.0, last=15.5, last_batch_s=60.0).due(now=15.9)
    assert _batches(3, first=10.0, last=15.9, last_batch_s=60.0).due(now=16.1)
    # a fast engine keeps the floor
    assert _batches(2, first=10.0, last=10.01, last_batch_s=0.2).due(now=10.07)
