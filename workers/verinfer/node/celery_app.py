"""The node's Celery app (Redis broker): queues, acks_late, visibility timeout, dispatch."""

from __future__ import annotations

from typing import Any

from celery import Celery

from verinfer.node.settings import NodeSettings

INFER_TASK = "verinfer.node.infer"
CHAIN_TASK = "verinfer.node.chain"


def transport_options(settings: NodeSettings, visibility_timeout: int | None = None) -> dict:
    """Redis transport options; the unacked keys are per node so nodes can share a Redis."""
    ns = settings.namespace
    return {
        "visibility_timeout": settings.visibility_timeout_s
        if visibility_timeout is None
        else visibility_timeout,
        "unacked_key": f"{ns}:unacked",
        "unacked_index_key": f"{ns}:unacked_index",
        "unacked_mutex_key": f"{ns}:unacked_mutex",
    }


def make_app(settings: NodeSettings) -> Celery:
    """A Celery app for ``settings``' node: tasks acked after they finish, JSON only."""
    app = Celery("verinfer-node", broker=settings.redis_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        broker_transport_options=transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_routes={
            INFER_TASK: {"queue": settings.queue("infer")},
            CHAIN_TASK: {"queue": settings.queue("chain")},
        },
    )
    return app


class Dispatcher:
    """Hands work to the node's queues: ``dispatch(role, action, args)``."""

    def __init__(self, app: Celery, settings: NodeSettings) -> None:
        self.app = app
        self.settings = settings

    def __call__(self, role: str, action: str, args: list[Any]) -> None:
        """Send ``action(*args)`` to the ``infer`` or ``chain`` queue."""
        name = INFER_TASK if role == "infer" else CHAIN_TASK
        self.app.send_task(name, args=[action, *args], queue=self.settings.queue(role))  # type: ignore[arg-type]


def restore_unacked(settings: NodeSettings) -> int:
    """Put the messages that a killed worker of this node held back on their queues.

    Call it only when no worker of this node runs (``verinfer node run`` does, at start);
    returns how many were put back.
    """
    app = make_app(settings)
    options = transport_options(settings, visibility_timeout=0)
    app.conf.broker_transport_options = options
    with app.connection_for_write() as conn:
        channel: Any = conn.default_channel
        client = channel.client
        held = int(client.zcard(options["unacked_index_key"]))
        if not held:
            return 0
        # a worker killed inside kombu's periodic restore leaves its mutex for 5 minutes, and
        # restore_visible skips silently while it is held; no worker of this node runs now,
        # so the mutex is stale
        client.delete(options["unacked_mutex_key"])
        channel.qos.restore_visible(num=held)
        return held - int(client.zcard(options["unacked_index_key"]))
