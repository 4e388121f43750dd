"""Job claims: the database, not the broker, says who runs a job and whether that worker is still alive.

A worker claims a job with one conditional UPDATE (queued → running, or running with a dead claim → running),
so two deliveries of the same message never run the model twice at once. While it runs, a heartbeat
thread refreshes ``heartbeat_at``; a claim silent for JOB_STALE_S, or held by a process of this host that no
longer exists, is dead and may be taken over.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import UTC, datetime, timedelta
from types import TracebackType

from sqlalchemy import and_, or_, update

from dicom_agent.db.orm import Job
from dicom_agent.db.session import session_scope
from dicom_agent.db.states import JobState

log = logging.getLogger(__name__)
HOST = socket.gethostname()


def me() -> str:
    return f"{HOST}:{os.getpid()}"


def now() -> datetime:
    return datetime.now(UTC)


def claim_is_dead_here(claimed_by: str | None) -> bool:
    """True when the claim belongs to a process of this host that no longer runs."""
    if not claimed_by or ":" not in claimed_by:
        return False
    host, _, pid = claimed_by.rpartition(":")
    if host != HOST or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def try_claim(job_id: int, stale_s: float, dead_claim: str | None = None) -> bool:
    """Atomically marks the job running and ours; False when it is not claimable (done, or alive elsewhere)."""
    t = now()
    claimable = or_(
        Job.state == JobState.QUEUED,
        and_(
            Job.state == JobState.RUNNING,
            or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < t - timedelta(seconds=stale_s), Job.claimed_by == me())
            if dead_claim is None
            else Job.claimed_by == dead_claim,
        ),
    )
    with session_scope() as s:
        res = s.execute(
            update(Job)
            .where(Job.id == job_id, claimable)
            .values(
                state=JobState.RUNNING,
                claimed_by=me(),
                heartbeat_at=t,
                attempts=Job.attempts + 1,
                started_at=t,
                error=None,
            )
            .execution_options(synchronize_session=False)
        )
        return bool(res.rowcount)  # type: ignore[attr-defined]


def touch(job_id: int) -> None:
    with session_scope() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.claimed_by == me(), Job.state == JobState.RUNNING)
            .values(heartbeat_at=now())
            .execution_options(synchronize_session=False)
        )


class Heartbeat:
    """Context manager: refreshes the job's heartbeat every ``interval_s`` while the block runs."""

    def __init__(self, job_id: int, interval_s: float) -> None:
        self.job_id = job_id
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                touch(self.job_id)
            except Exception:  # a missed beat is not fatal; a long outage makes the claim stale, as it should
                log.warning("heartbeat failed", extra={"job_id": self.job_id}, exc_info=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5)
