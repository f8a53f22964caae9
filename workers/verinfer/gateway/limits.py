"""Spending limits of the gateway: a cap per request and a rolling 24-hour cap.

A job counts against the day with its whole escrow (``max_payment``) from the moment it is
accepted, and with its real cost once its result is in; a job never sent counts nothing.
The ledger lives in the gateway's memory: a restart starts a fresh day (see docs/agents.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

DAY_S = 86_400.0


class SpendLimits:
    """Per-request and per-day caps in token base units (thread-safe)."""

    def __init__(
        self,
        per_request: int,
        per_day: int,
        clock: Callable[[], float] = time.time,
        fmt: Callable[[int], str] = lambda units: f"{units} base units",
    ) -> None:
        self.per_request = per_request
        self.per_day = per_day
        self._clock = clock
        self._fmt = fmt  # amounts in messages, for people (the gateway: whole tokens)
        self._lock = threading.Lock()
        self._entries: dict[int, tuple[float, int]] = {}  # ticket -> (time, amount)
        self._next = 0

    def spent_today(self) -> int:
        """What the last 24 hours count against the daily cap."""
        with self._lock:
            return self._spent(self._clock())

    def _spent(self, now: float) -> int:
        for key in [k for k, (t, _) in self._entries.items() if now - t >= DAY_S]:
            del self._entries[key]
        return sum(amount for _, amount in self._entries.values())

    def reserve(self, amount: int) -> int:
        """Count ``amount`` against today; returns a ticket. LimitError when over a cap."""
        if amount > self.per_request:
            raise LimitError(
                f"this request escrows {self._fmt(amount)}, more than the gateway's "
                f"max payment per request ({self._fmt(self.per_request)}); ask for fewer "
                "max_tokens",
                "max_payment_per_request_exceeded",
            )
        with self._lock:
            now = self._clock()
            spent = self._spent(now)
            if spent + amount > self.per_day:
                raise LimitError(
                    f"daily spending limit reached: {self._fmt(spent)} of "
                    f"{self._fmt(self.per_day)} spent in the last 24 hours, this request "
                    f"escrows {self._fmt(amount)}",
                    "daily_limit_exceeded",
                )
            self._next += 1
            self._entries[self._next] = (now, amount)
            return self._next

    def settle(self, ticket: int, amount: int) -> None:
        """Replace a reservation by what the job really costs (0 releases it)."""
        with self._lock:
            if ticket in self._entries:
                self._entries[ticket] = (self._entries[ticket][0], amount)


class LimitError(Exception):
    """A request over a spending cap; ``code`` names which."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code
