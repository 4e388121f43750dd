"""The one Celery app and its reliability settings, all in one place.

- json only; no result backend (state lives in the database, not in Celery results);
- ``acks_late`` + ``reject_on_worker_lost``: a message is acknowledged only after its task finished, so a
  worker that dies mid-task gives it back (RabbitMQ and Redis redeliver it; kombu's SQLAlchemy transport
  requeues it when a pool child dies, but loses it when the whole worker dies — the database claims in
  ``tasks.claims`` recover that case);
- prefetch 1: a worker holds at most one waiting study besides the one it runs;
- queues ``gpu``, ``cpu``, ``export`` (optionally prefixed, setting QUEUE_PREFIX);
- priorities: ``stat`` before ``routine`` on RabbitMQ (x-max-priority queues) and Redis (priority steps);
  the SQLAlchemy transport has no message priority — there, stat studies only go first in the worklist and
  in the recovery re-sends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Queue

from dicom_agent.config import Settings, get_settings

QUEUES = ("gpu", "cpu", "export")
# Celery's AMQP convention: larger is more urgent. Redis inverts it (0 first), handled in ``priority_for``.
PRIORITY = {"stat": 9, "routine": 4}
MAX_PRIORITY = 9

app = Celery("dicom_agent", include=["dicom_agent.tasks.pipeline"])
_configured_for: tuple[str, str] | None = None


def queue_name(settings: Settings, role: str) -> str:
    """The broker queue of a role (``gpu``, ``cpu``, ``export``), with the installation's prefix."""
    if role not in QUEUES:
        raise ValueError(f"unknown queue {role!r}: use {', '.join(QUEUES)}")
    return settings.queue_prefix + role


def broker_kind(url: str) -> str:
    scheme = url.split("://", 1)[0].lower()
    if scheme.startswith("sqla+") or scheme.startswith("sqlalchemy"):
        return "sqlalchemy"
    if scheme.startswith("redis") or scheme.startswith("rediss"):
        return "redis"
    if scheme.startswith(("amqp", "pyamqp", "amqps")):
        return "amqp"
    return scheme


def supports_priority(url: str) -> bool:
    return broker_kind(url) in {"amqp", "redis"}


def priority_for(settings: Settings, priority: str) -> int | None:
    """The message priority for a study priority, or None where the broker has none."""
    kind = broker_kind(settings.broker_url)
    value = PRIORITY.get(priority, PRIORITY["routine"])
    if kind == "amqp":
        return value
    if kind == "redis":
        return MAX_PRIORITY - value  # Redis: 0 is served first
    return None


def celery_config(settings: Settings) -> dict[str, Any]:
    kind = broker_kind(settings.broker_url)
    infer_limit = settings.infer_time_limit_s
    queue_args = {"x-max-priority": MAX_PRIORITY + 1} if kind == "amqp" else None
    transport: dict[str, Any] = {}
    if kind == "sqlalchemy":
        # these options go to create_engine; the transport polls its table once a second (not configurable)
        transport = {"connect_args": {"timeout": 30}} if "sqlite" in settings.broker_url else {}
    elif kind == "redis":
        transport = {"visibility_timeout": int(infer_limit * 2), "priority_steps": list(range(MAX_PRIORITY + 1))}
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": settings.result_backend,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": True,  # Flower
        "task_send_sent_event": True,
        "task_time_limit": infer_limit,
        "task_soft_time_limit": max(1.0, infer_limit - 60),
        "task_default_priority": PRIORITY["routine"] if kind == "amqp" else None,
        "task_queue_max_priority": MAX_PRIORITY + 1 if kind == "amqp" else None,
        "task_default_queue": queue_name(settings, "cpu"),
        "task_create_missing_queues": True,
        "task_queues": [
            Queue(queue_name(settings, q), routing_key=queue_name(settings, q), queue_arguments=queue_args)
            for q in QUEUES
        ],
        "task_routes": {
            "dicom_agent.infer_study": {"queue": queue_name(settings, "cpu")},
            "dicom_agent.encode_results": {"queue": queue_name(settings, "cpu")},
            "dicom_agent.export_object": {"queue": queue_name(settings, "export")},
        },
    }


def _ensure_sqlite_dir(url: str) -> None:
    """kombu's SQLAlchemy transport creates the database file but not its folder (``./var`` on a fresh clone)."""
    if broker_kind(url) == "sqlalchemy" and "sqlite:///" in url:
        path = url.split("sqlite:///", 1)[1].split("?", 1)[0]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def configure(settings: Settings | None = None) -> Celery:
    """Points the app at the settings' broker (again, if they changed: tests switch brokers)."""
    global _configured_for
    settings = settings or get_settings()
    key = (settings.broker_url, settings.queue_prefix)
    if _configured_for != key:
        if _configured_for is not None:  # drop connections and producers bound to the previous broker
            from kombu import pools

            if app._pool is not None:
                app._pool.force_close_all()
            app._pool = None
            app.amqp._producer_pool = None
            pools.reset()
        _ensure_sqlite_dir(settings.broker_url)
        app.conf.update(celery_config(settings))
        app.amqp.__dict__.pop("queues", None)  # a cached property built from the previous task_queues
        app.amqp.__dict__.pop("router", None)
        _configured_for = key
    return app
