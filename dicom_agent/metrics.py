"""Prometheus metrics of every role, defined once (names ``dicom_agent_*``).

Roles update them where things happen; each process exposes its own registry: workers and the SCP on
METRICS_PORT through prometheus_client's HTTP server (``start_metrics_server``), the web app at ``/metrics``
by mounting ``metrics_app()``. Labels never carry patient data or UIDs.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

# ② receive (the SCP updates these)
INSTANCES_RECEIVED = Counter("dicom_agent_instances_received", "Instances stored and acknowledged", ["modality"])
BYTES_RECEIVED = Counter("dicom_agent_received_bytes", "Bytes of instances stored")
ASSOCIATIONS = Counter("dicom_agent_associations", "Associations accepted", ["calling_ae"])
REJECTIONS = Counter("dicom_agent_rejections", "Associations or C-STOREs refused, by reason", ["reason"])
# ③/④ studies and routing
STUDY_COMPLETION_SECONDS = Histogram(
    "dicom_agent_study_completion_seconds",
    "From the first instance received to the study declared complete",
    buckets=(1, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)
RESULTS_LATENCY_SECONDS = Histogram(
    "dicom_agent_results_latency_seconds",
    "From the study declared complete to its results stored (routing, queue, inference, encoding)",
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)
ROUTED = Counter("dicom_agent_studies_routed", "Routing decisions", ["rule", "action"])
QUEUE_DEPTH = Gauge("dicom_agent_queue_depth", "Jobs waiting in the database, by queue and state", ["queue", "state"])
# ⑥ inference
INFERENCE_SECONDS = Histogram(
    "dicom_agent_inference_seconds",
    "Model time per study",
    ["model", "device"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60, 120, 300),
)
JOBS_FAILED = Counter("dicom_agent_jobs_failed", "Jobs that ended failed", ["model"])
# ⑧ export (the outbox updates these)
EXPORT_ATTEMPTS = Counter("dicom_agent_export_attempts", "C-STORE attempts of outbox rows", ["destination"])
EXPORT_FAILURES = Counter("dicom_agent_export_failures", "Failed export attempts", ["destination", "kind"])
EXPORT_DEAD = Counter("dicom_agent_export_dead", "Outbox rows given up (dead)", ["destination"])


def _since(t: datetime) -> float:
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - t).total_seconds())


def observe_study_completed(first_received_at: datetime) -> None:
    STUDY_COMPLETION_SECONDS.observe(_since(first_received_at))


def observe_results_latency(completed_at: datetime) -> None:
    RESULTS_LATENCY_SECONDS.observe(_since(completed_at))


def refresh_queue_depth(database_url: str | None = None) -> None:
    """Sets the queue-depth gauge from the database (the source of truth, whatever the broker)."""
    from sqlalchemy import func, select

    from dicom_agent.db.orm import Job
    from dicom_agent.db.session import session_scope
    from dicom_agent.db.states import JobState

    with session_scope(database_url) as s:
        rows = s.execute(
            select(Job.queue, Job.state, func.count())
            .where(Job.state.in_([JobState.QUEUED, JobState.RUNNING]))
            .group_by(Job.queue, Job.state)
        ).all()
    QUEUE_DEPTH.clear()
    for queue, state, n in rows:
        QUEUE_DEPTH.labels(queue=queue, state=state).set(n)


def start_metrics_server(port: int, host: str = "0.0.0.0") -> bool:
    """Serves ``/metrics`` of this process on ``port`` (0 = off); a busy port is logged, not fatal."""
    if port <= 0:
        return False
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.warning("metrics port %s unavailable: %s", port, exc)
        return False
    log.info("metrics on http://%s:%s/metrics", host, port)
    return True


def metrics_app(registry: CollectorRegistry = REGISTRY) -> Any:
    """An ASGI app for the web engineer to mount: ``app.mount("/metrics", metrics_app())``.

    With several worker processes behind one port set PROMETHEUS_MULTIPROC_DIR (prometheus_client's
    multiprocess mode); then this collects every process's values.
    """
    from prometheus_client import make_asgi_app

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return make_asgi_app(registry=registry)
