"""One sender per key: a lease in Redis that the chain worker holds, and renews, to sign.

The lease is one key, ``<namespace>:sender_lease``, whose value names the holder and carries a
fencing token (``<epoch>|<host>:<pid>``; the epoch comes from ``INCR <namespace>:sender_epoch``,
so every holder has a larger one than the last). It expires ``ttl_s`` after its last renewal.
The holder renews it every ``ttl_s / 3``; before it signs anything it checks that its last
renewal is younger than ``0.8 * ttl_s`` (its own monotonic clock), so a holder that was paused,
cut off from Redis or replaced stops signing before anyone else can take the lease over. A
renewal that finds another holder's token marks the lease lost for good: that sender stops.
Redis restarted without the key (no AOF, say): the holder takes it again with its own token,
which no one else can have taken meanwhile (the key would exist).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from verinfer.node.sender import LeaseUnavailable, SenderFenced

log = logging.getLogger("verinfer.node.lease")

# KEYS[1] lease; ARGV[1] token, ARGV[2] ttl ms. 1: renewed (or taken again after it vanished),
# 0: someone else holds it
_RENEW = """
local v = redis.call('get', KEYS[1])
if v == ARGV[1] then
  redis.call('pexpire', KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


def lease_key(namespace: str) -> str:
    """The Redis key of the sender lease of a node's namespace."""
    return f"{namespace}:sender_lease"


def lease_holder(client: Any, namespace: str) -> tuple[str, float] | None:
    """``(holder token, seconds until it expires)`` of a live lease, or None."""
    pipe = client.pipeline(transaction=False)
    pipe.get(lease_key(namespace))
    pipe.pttl(lease_key(namespace))
    value, pttl = pipe.execute()
    if value is None or pttl is None or pttl < 0:
        return None
    return value.decode(), pttl / 1000.0


def wait_for_free_lease(client: Any, namespace: str, wait_s: float) -> tuple[str, float] | None:
    """Wait up to ``wait_s`` for the lease to be free (a dead holder's lease expires, a
    stopping one releases it); the live holder still there after that, or None."""
    deadline = time.monotonic() + wait_s
    while True:
        held = lease_holder(client, namespace)
        if held is None or time.monotonic() >= deadline:
            return held
        time.sleep(0.25)


class SenderLease:
    """The lease of one sender process; ``acquire`` then ``start`` (renewal thread)."""

    def __init__(self, client: Any, namespace: str, ttl_s: float = 10.0) -> None:
        self.r = client
        self.ns = namespace
        self.key = lease_key(namespace)
        self.ttl_s = ttl_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self.token = ""
        self.epoch = 0
        self.lost_to: str | None = None
        self._valid_until = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    def acquire(self, wait_s: float = 0.0) -> bool:
        """Take the lease if it is free (waiting up to ``wait_s`` for it); True when taken."""
        deadline = time.monotonic() + wait_s
        while True:
            t0 = time.monotonic()
            if self.r.get(self.key) is None:
                epoch = int(self.r.incr(f"{self.ns}:sender_epoch"))
                token = f"{epoch}|{self.holder}"
                if self.r.set(self.key, token, nx=True, px=int(self.ttl_s * 1000)):
                    self.epoch, self.token = epoch, token
                    self._valid_until = t0 + 0.8 * self.ttl_s
                    log.info("sender lease taken epoch=%d holder=%s", epoch, self.holder)
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.25)

    def renew(self) -> bool:
        """Renew the lease once; False (and ``lost_to`` set) when another holder has it."""
        if self.lost_to is not None:
            return False
        t0 = time.monotonic()
        if int(self._renew(keys=[self.key], args=[self.token, int(self.ttl_s * 1000)])):
            self._valid_until = t0 + 0.8 * self.ttl_s
            return True
        value = self.r.get(self.key)
        self.lost_to = value.decode() if value is not None else "?"
        self._valid_until = 0.0
        return False

    def check(self) -> None:
        """Raise unless this process may sign now: SenderFenced when the lease went to another
        sender (for good), LeaseUnavailable when it was not renewed in time (Redis down)."""
        if self.lost_to is not None:
            raise SenderFenced(f"sender lease lost to {self.lost_to}")
        if time.monotonic() >= self._valid_until:
            raise LeaseUnavailable("sender lease not renewed in time (Redis unreachable?)")

    def start(self, on_lost: Callable[[str], None]) -> None:
        """Renew every ``ttl_s / 3`` in a daemon thread; ``on_lost(holder)`` once when another
        sender holds the lease (this one must stop). Redis errors: one line each, retried."""

        def loop() -> None:
            while not self._stop.wait(self.ttl_s / 3):
                try:
                    if not self.renew():
                        log.error(
                            "sender lease lost to %s (mine: %s); this sender stops signing",
                            self.lost_to,
                            self.token,
                        )
                        on_lost(str(self.lost_to))
                        return
                except Exception as exc:  # Redis unreachable: sending stops when it expires
                    log.warning("sender lease renewal failed: %s", exc)

        self._thread = threading.Thread(target=loop, name="sender-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop renewing and give the lease up (only if still ours)."""
        self._stop.set()
        self._valid_until = 0.0
        try:
            self._release(keys=[self.key], args=[self.token])
        except Exception as exc:  # it expires on its own
            log.warning("sender lease release failed: %s", exc)
