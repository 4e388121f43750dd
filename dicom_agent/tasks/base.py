"""The one task decorator: ids in, retries with backoff for transient errors only, permanent errors recorded.

Transient (``errors.TransientError``, a lost database connection): retried with exponential backoff up to
TASK_MAX_RETRIES, then recorded as failed. Permanent (``errors.PermanentError``) and anything unexpected:
recorded at once through the task's ``on_permanent`` callback (job/study ``failed`` with the error, shown
by ``dicom-agent studies``) — never ``autoretry_for=(Exception,)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

from billiard.exceptions import SoftTimeLimitExceeded
from celery import Task
from sqlalchemy.exc import OperationalError

from dicom_agent.config import get_settings
from dicom_agent.errors import PermanentError, TransientError
from dicom_agent.tasks.app import app

log = logging.getLogger(__name__)

IdTask = Callable[[int], None]
OnPermanent = Callable[[int, str], None]


def backoff_s(retries: int, base_s: float, cap_s: float = 600.0) -> float:
    """5, 10, 20, 40 ... seconds, capped."""
    return float(min(cap_s, base_s * 2**retries))


TimeLimitSetting = Literal["infer_time_limit_s", "encode_time_limit_s", "export_time_limit_s"]


def pipeline_task(
    name: str, id_kind: str, on_permanent: OnPermanent, time_limit: TimeLimitSetting
) -> Callable[[IdTask], Task]:
    """Registers ``fn(obj_id)`` as Celery task ``dicom_agent.<name>``; ``id_kind`` names the id in logs."""
    settings = get_settings()
    limit = float(getattr(settings, time_limit))

    def wrap(fn: IdTask) -> Task:
        @app.task(
            name=f"dicom_agent.{name}",
            bind=True,
            acks_late=True,
            reject_on_worker_lost=True,
            ignore_result=True,
            max_retries=settings.task_max_retries,
            time_limit=limit,
            soft_time_limit=max(1.0, limit - 60),
        )
        def task(self: Task, obj_id: int) -> None:
            extra: dict[str, Any] = {id_kind: obj_id, "role": "worker"}
            if not isinstance(obj_id, int):
                log.error("%s called with a non-id argument; dropped", name, extra=extra)
                return
            try:
                fn(obj_id)
            except (TransientError, OperationalError) as exc:
                retries = self.request.retries
                if retries >= (self.max_retries or 0):
                    log.error("%s gave up after %d tries: %s", name, retries + 1, exc, extra=extra)
                    on_permanent(obj_id, f"gave up after {retries + 1} tries: {exc}")
                    return
                delay = backoff_s(retries, get_settings().task_retry_base_s)
                log.warning("%s transient failure, retry in %.0fs: %s", name, delay, exc, extra=extra)
                raise self.retry(exc=exc, countdown=delay) from exc
            except SoftTimeLimitExceeded:
                log.error("%s exceeded its time limit", name, extra=extra)
                on_permanent(obj_id, f"{name} exceeded its time limit of {limit:.0f} s")
            except PermanentError as exc:
                log.error("%s failed: %s", name, exc, extra=extra)
                on_permanent(obj_id, str(exc))
            except Exception as exc:  # a bug or an unknown failure: recorded, not retried forever
                log.exception("%s crashed", name, extra=extra)
                on_permanent(obj_id, f"{type(exc).__name__}: {exc}")

        return task

    return wrap
