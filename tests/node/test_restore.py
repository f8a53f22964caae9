"""`restore_unacked`: messages a SIGKILLed worker held go back on their queues at the next
start, also when the worker died holding kombu's restore mutex (which would otherwise make
kombu skip the restore for five minutes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import redis
from verinfer.node.celery_app import make_app, restore_unacked, transport_options
from verinfer.node.localnet import ROOT, Net
from verinfer.node.settings import NodeSettings

HOLDER = """
import sys, time
from verinfer.node.celery_app import make_app
from verinfer.node.settings import NodeSettings
settings = NodeSettings.model_validate_json(sys.argv[1])
conn = make_app(settings).connection_for_read()
message = conn.SimpleQueue(settings.queue("infer")).get(timeout=10)
print("held", message.payload[0][1], flush=True)
time.sleep(60)
"""


def _hold_and_die(settings: NodeSettings, body: str) -> None:
    """Send one message to the infer queue; a consumer process takes it without acking and
    is killed with SIGKILL (kombu keeps the message in the node's unacked index)."""
    make_app(settings).send_task(
        "verinfer.node.infer", args=["serve", body], queue=settings.queue("infer")
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, settings.model_dump_json()],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "workers")},
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().split() == ["held", body]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)


@pytest.mark.parametrize("stale_mutex", [False, True], ids=["plain", "stale-mutex"])
def test_restore_unacked__held_message__back_on_queue(net: Net, stale_mutex: bool) -> None:
    settings = net.node_settings(f"restore-{stale_mutex}")
    options = transport_options(settings)
    r = redis.Redis.from_url(net.redis_url)
    _hold_and_die(settings, "job-7")
    assert r.zcard(options["unacked_index_key"]) == 1
    assert r.llen(settings.queue("infer")) == 0
    if stale_mutex:
        r.set(options["unacked_mutex_key"], "dead-worker", ex=300)

    assert restore_unacked(settings) == 1

    assert r.zcard(options["unacked_index_key"]) == 0
    assert r.hlen(options["unacked_key"]) == 0
    assert r.llen(settings.queue("infer")) == 1
    assert b"job-7" in r.lindex(settings.queue("infer"), 0)
    assert restore_unacked(settings) == 0  # nothing held any more
