"""``dicom-agent worker``: a Celery worker that keeps the model loaded and pins its device.

The model adapter is loaded once per pool process (``worker_process_init``) and reused for every task, so a
study pays model-load time only on the first task after start. ``--device cuda:N`` pins the process to GPU
N through CUDA_VISIBLE_DEVICES (set before any CUDA library loads); the provider actually in use is logged.
A recovery process re-sends what the broker lost (see ``tasks.enqueue.recover``).

Not implemented: batching several pending studies of the same model into one model call — each task runs
one study; with prefetch 1 a deep queue is drained one study at a time per pool process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import threading
from typing import Any

from celery.signals import worker_process_init

from dicom_agent.config import Settings, get_settings

log = logging.getLogger(__name__)


def pin_device(device: str | None) -> str | None:
    """Applies ``cpu``, ``cuda`` or ``cuda:N`` to this process's environment; returns the DEVICE setting to use."""
    if device is None:
        return None
    device = device.strip().lower()
    if device.startswith("cuda:"):
        index = device.split(":", 1)[1]
        if not index.isdigit():
            raise ValueError(f"device {device!r}: expected cuda:N")
        os.environ["CUDA_VISIBLE_DEVICES"] = index
        device = "cuda"  # inside the process the pinned GPU is device 0
    elif device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif device not in {"auto", "cuda"}:
        raise ValueError(f"device {device!r}: use auto, cpu, cuda or cuda:N")
    os.environ["DICOM_AGENT_DEVICE"] = device
    return device


def describe_adapter(adapter: Any) -> str:
    for attr in ("providers", "provider", "device"):
        value = getattr(adapter, attr, None)
        if value:
            return f"{attr}={value}"
    return "provider unknown"


@worker_process_init.connect
def _load_model(**_: Any) -> None:
    """Each pool process loads the adapter once, logs what it runs on, and serves its metrics."""
    from billiard.process import current_process

    from dicom_agent import metrics
    from dicom_agent.db.session import engine_for
    from dicom_agent.tasks import parts

    settings = get_settings()
    # connections inherited from the parent (its recovery thread) must not be shared across the fork
    engine_for(settings.database_url).dispose(close=False)
    port = settings.metrics_port
    if port:
        metrics.start_metrics_server(port + (current_process().index or 0))
    try:
        adapter = parts.adapter(settings)
    except Exception:  # tasks will report the failure per job; the worker keeps serving other queues
        log.exception("model adapter failed to load")
        return
    log.info("model loaded in process %s: %s", os.getpid(), describe_adapter(adapter))


def _recovery_main(settings_data: dict[str, Any]) -> None:
    """The recovery pass, every few seconds, in its own (spawned) process.

    Not a thread of the worker's main process: the prefork pool forks that process, and a fork taken while
    another thread holds a database or logging lock leaves the pool child deadlocked.
    """
    import contextlib
    import ctypes
    import signal

    from dicom_agent.logging import setup_logging
    from dicom_agent.tasks.enqueue import recover

    with contextlib.suppress(OSError, AttributeError):  # die with the worker, even on SIGKILL (Linux)
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    settings = Settings(**settings_data)
    setup_logging(settings.log_level, settings.log_json)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the worker; it stops us
    interval = min(5.0, max(1.0, settings.job_stale_s / 2))
    first = True
    while not stop.is_set():
        try:
            counts = recover(settings, resend_all_queued=first)
            if counts["infer"] or counts["encode"]:
                log.info("recovery re-sent %s", counts)
            first = False
        except Exception:
            log.warning("recovery pass failed", exc_info=True)
        stop.wait(interval)


def run_worker(settings: Settings, queues: list[str], device: str | None = None, concurrency: int = 1) -> None:
    """Runs the worker in this process until it is stopped (SIGTERM: warm shutdown, SIGQUIT: cold)."""
    from dicom_agent.tasks.app import configure, queue_name

    logging.getLogger("highdicom").setLevel(logging.WARNING)  # per-attribute INFO lines for every object
    pinned = pin_device(device)
    if pinned is not None:
        get_settings.cache_clear()
        settings = settings.model_copy(update={"device": pinned})
    roles = [q.strip() for q in queues if q.strip()]
    names = [queue_name(settings, q) for q in roles]
    app = configure(settings)
    recovery = multiprocessing.get_context("spawn").Process(
        target=_recovery_main, args=(settings.model_dump(),), name="dicom-agent-recovery", daemon=True
    )
    recovery.start()
    log.info("worker consuming %s on device %s with %d process(es)", ",".join(names), settings.device, concurrency)
    try:
        worker = app.Worker(
            queues=names,
            concurrency=concurrency,
            pool="prefork",
            loglevel=settings.log_level,
            hostname=f"{'-'.join(roles)}@{socket.gethostname()}",
            without_mingle=True,
            without_gossip=True,
        )
        worker.start()
    finally:
        recovery.terminate()
        recovery.join(10)
