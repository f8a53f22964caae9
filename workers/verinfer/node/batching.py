"""celery-batches with a flush rule for an engine: full, idle, or waited long enough.

celery-batches flushes its buffer when ``flush_every`` messages arrived since the last flush,
and also on a timer that fires every ``flush_interval`` whatever is arriving. An inference
worker with the solo pool fetches its next messages one by one after each batch, so the timer
cut most batches short (14-29 jobs of 32 in the bench-node flood). `EngineBatches` runs the
timer every ``flush_interval`` but flushes only when the buffer is full, when no message came
for ``gap`` seconds (the stream paused: the batch will not grow), or when its oldest message
has waited ``max_wait`` (a slow, steady stream still gets served).

Both waits grow with the engine: a batch may wait up to ``adapt`` (5 %) of the last batch's
engine time for its gap, and twice that for its first job. A model whose batch takes a minute
(SmolLM2 on two CPU cores) then waits ~3 s for jobs that the watcher hands on block by block,
instead of running half-full batches that cost nearly as much as full ones; a fast engine
keeps the 50 ms / 250 ms floor. A lone job waits at most 10 % of a batch's time more.
"""

from __future__ import annotations

from collections.abc import Callable
from time import monotonic
from typing import Any

from celery_batches import Batches


class EngineBatches(Batches):
    """`Batches` whose flush waits for a full batch while messages keep arriving."""

    abstract = True
    gap: float = 0.05  # seconds without a new message after which the batch goes
    max_wait: float = 0.25  # seconds the oldest buffered message may wait, at most
    adapt: float = 0.05  # share of the last batch's engine time the gap may grow to
    _last_batch_s: float = 0.0  # engine time of the last batch that ran
    _last_put: float = 0.0
    _first_put: float | None = None

    def Strategy(self, task: Any, app: Any, consumer: Any) -> Callable[..., None]:
        handler = super().Strategy(task, app, consumer)

        def on_message(*args: Any, **kwargs: Any) -> None:
            self._last_put = monotonic()
            if self._first_put is None:
                self._first_put = self._last_put
            handler(*args, **kwargs)

        return on_message

    def due(self, now: float) -> bool:
        """Whether the buffer should go to the engine now."""
        if self._buffer.qsize() >= self.flush_every:
            return True
        if self._first_put is None:
            return True  # nothing buffered: let celery-batches stop its timer
        gap = max(self.gap, self.adapt * self._last_batch_s)
        max_wait = max(self.max_wait, 2 * gap)
        return now - self._last_put >= gap or now - self._first_put >= max_wait

    def _do_flush(self) -> None:
        if not self.due(monotonic()):
            return
        had = self._first_put is not None
        self._first_put = None
        started = monotonic()
        super()._do_flush()  # the solo pool runs the batch here, in this call
        if had:
            self._last_batch_s = monotonic() - started
