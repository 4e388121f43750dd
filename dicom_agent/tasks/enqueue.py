"""From a complete study to a queued job: routing decision → job row committed → ``infer_study`` sent.

Registered as the study completion hook (``install``). The database is the source of truth: ``recover``
re-sends jobs left ``queued`` (a crash between commit and send) and re-queues jobs whose worker died (a stale
heartbeat), so restarting any process — or losing the broker's messages — loses no job.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from dicom_agent import metrics
from dicom_agent.config import Settings, get_settings
from dicom_agent.db import audit
from dicom_agent.db.orm import Job, ResultObject, Study
from dicom_agent.db.session import session_scope
from dicom_agent.db.states import JobState, StudyState, check_job, check_study
from dicom_agent.routing.engine import Decision, decide
from dicom_agent.routing.facts import facts_from_db
from dicom_agent.routing.rules import RuleSet, load_rules
from dicom_agent.tasks.claims import claim_is_dead_here, now

log = logging.getLogger(__name__)
PRIORITY_RANK = {"stat": 10, "routine": 50}


@lru_cache(maxsize=4)
def _rules_cached(path: str | None) -> RuleSet:
    return load_rules(Path(path) if path else None)


def rules_for(settings: Settings) -> RuleSet:
    """The routing rules of the settings (validated once per process; raises RoutingError naming the line)."""
    return _rules_cached(str(settings.routing_file) if settings.routing_file else None)


def resolve_queue(settings: Settings, decision_queue: str) -> str:
    """``auto`` → DEFAULT_QUEUE, else ``gpu`` when DEVICE is cuda*, else ``cpu``."""
    if decision_queue != "auto":
        return decision_queue
    configured = settings.default_queue
    if configured:
        return configured
    return "gpu" if settings.device.startswith("cuda") else "cpu"


def route_study(study_id: int, settings: Settings | None = None) -> int | None:
    """Decides and records what happens to a complete study; returns the new job's id (None when ignored)."""
    settings = settings or get_settings()
    decision = decide(rules_for(settings), facts_from_db(study_id, settings.storage_dir))
    job_id = _record(study_id, decision, settings)
    if job_id is not None:
        from dicom_agent.tasks.pipeline import send_infer

        try:
            send_infer(job_id, resolve_queue(settings, decision.queue), decision.priority, settings)
        except Exception:  # the job row is committed: the recovery pass sends it when the broker is back
            log.exception("broker unavailable; job %s will be re-sent by recovery", job_id, extra={"job_id": job_id})
    return job_id


def _record(study_id: int, d: Decision, settings: Settings) -> int | None:
    extra = {"study_id": study_id}
    with session_scope() as s:
        study = s.get(Study, study_id, with_for_update=True)  # the hook and the recovery pass may race
        if study is None:
            log.warning("completed study %s not found", study_id, extra=extra)
            return None
        if study.state != StudyState.COMPLETE:
            log.info("study %s is %s, not complete; not routed again", study_id, study.state, extra=extra)
            return None
        study.route_rule = d.rule
        study.route_detail = d.detail()
        metrics.ROUTED.labels(rule=d.rule or "(none)", action=d.action).inc()
        if d.action == "ignore":
            study.state = check_study(study.state, StudyState.IGNORED)
            study.error = None
            audit.record(s, "router", "study.ignored", study_id, {"rule": d.rule, "reason": d.reason})
            log.info("study ignored: %s", d.reason, extra=extra)
            return None
        jobs = s.scalars(select(Job).where(Job.study_id == study_id)).all()
        for old in jobs:  # a reopened study runs again as a new revision; the older runs are superseded
            if old.state != JobState.SUPERSEDED:
                old.state = check_job(old.state, JobState.SUPERSEDED)
        revision = max([study.revision or 0, *[j.revision + 1 for j in jobs]])
        queue = resolve_queue(settings, d.queue)
        job = Job(
            study_id=study_id,
            revision=revision,
            model_name=d.model or "bundled",
            task="infer_study",
            queue=queue,
            priority=d.priority,
            destinations=None if d.destinations is None else list(d.destinations),
            output_profile=d.profile,
            series_uids=list(d.series_uids),
            state=JobState.QUEUED,
            heartbeat_at=now(),  # for a queued job: when it was last sent
        )
        s.add(job)
        study.state = check_study(study.state, StudyState.QUEUED)
        study.revision = revision
        study.priority = d.priority
        study.priority_rank = PRIORITY_RANK.get(d.priority, 50)
        study.error = None
        s.flush()
        audit.record(
            s,
            "router",
            "study.queued",
            study_id,
            {
                "rule": d.rule,
                "job_id": job.id,
                "revision": revision,
                "queue": queue,
                "superseded": [j.id for j in jobs],
            },
        )
        job_id = job.id
    log.info(
        "study routed by rule %s to %s (job %s, revision %s)",
        d.rule,
        queue,
        job_id,
        revision,
        extra=extra | {"job_id": job_id},
    )
    return job_id


def on_study_complete(study_id: int) -> None:
    """The completion hook: never raises into the sweeper; a failure is recorded on the study."""
    try:
        route_study(study_id)
    except Exception as exc:
        log.exception("routing failed", extra={"study_id": study_id})
        try:
            with session_scope() as s:
                study = s.get(Study, study_id)
                if study is not None and study.state == StudyState.COMPLETE:
                    study.state = check_study(study.state, StudyState.FAILED)
                    study.error = f"routing failed: {exc}"[:4000]
        except Exception:
            log.exception("could not record the routing failure", extra={"study_id": study_id})


def install(settings: Settings) -> None:
    """Validates the routing rules now (fail at start) and registers the completion hook."""
    rules_for(settings)
    from dicom_agent.studies.events import register_completion_hook
    from dicom_agent.tasks.app import configure

    configure(settings)

    register_completion_hook(on_study_complete)


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)  # SQLite returns naive UTC


def recover(settings: Settings | None = None, resend_all_queued: bool = False) -> dict[str, int]:
    """Re-sends what the broker may have lost; the tasks drop duplicates.

    - jobs ``queued`` and not sent for JOB_RESEND_S (all of them when ``resend_all_queued``, at worker start);
    - jobs ``running`` whose heartbeat is older than JOB_STALE_S, or whose worker process of this host is gone
      (their worker died): back to ``queued``,
      sent again, or — when inference had finished — ``encode_results`` sent again;
    - studies left ``complete`` but never routed (the process that completed them died before its hook ran).
    Stat jobs first.
    """
    from dicom_agent.tasks.pipeline import send_encode, send_infer

    settings = settings or get_settings()
    t = now()
    stranded = stranded_complete_studies(t - STRANDED_AFTER)
    for study_id in stranded:  # the completion hook itself: a routing failure is recorded, not raised
        on_study_complete(study_id)
    resend_before = t - timedelta(seconds=0 if resend_all_queued else settings.job_resend_s)
    stale_before = t - timedelta(seconds=settings.job_stale_s)
    infer: list[tuple[int, str, str]] = []
    encode: list[tuple[int, str]] = []
    with session_scope() as s:
        rows = s.scalars(
            select(Job).where(
                or_(
                    (Job.state == JobState.QUEUED) & or_(Job.heartbeat_at.is_(None), Job.heartbeat_at <= resend_before),
                    Job.state == JobState.RUNNING,
                )
            )
        ).all()
        rows = [
            j
            for j in rows
            if j.state == JobState.QUEUED
            or j.heartbeat_at is None
            or _aware(j.heartbeat_at) < stale_before
            or claim_is_dead_here(j.claimed_by)  # a worker of this host that is gone: no need to wait
        ]
        for job in sorted(rows, key=lambda j: (j.priority != "stat", j.id)):
            if job.state == JobState.RUNNING:
                inferred = bool(job.timings and "infer_s" in job.timings)
                has_objects = s.scalar(select(ResultObject.id).where(ResultObject.job_id == job.id).limit(1))
                if not (inferred or has_objects):
                    check_job(job.state, JobState.QUEUED)
                    if not take_back(s, job.id, job.claimed_by, t):
                        continue  # another worker claimed it since it was read: theirs now
                log.warning("job %s lost its worker %s; recovering", job.id, job.claimed_by, extra={"job_id": job.id})
                audit.record(
                    s, "worker", "job.recovered", job.study_id, {"job_id": job.id, "claimed_by": job.claimed_by}
                )
                if inferred or has_objects:
                    job.heartbeat_at = t
                    encode.append((job.id, job.priority))
                    continue
                study = s.get(Study, job.study_id)
                if study is not None and study.state == StudyState.INFERRING:
                    study.state = check_study(study.state, StudyState.QUEUED)
            else:
                job.heartbeat_at = t
            infer.append((job.id, job.queue, job.priority))
    for job_id, queue, priority in infer:
        send_infer(job_id, queue, priority, settings)
    for job_id, priority in encode:
        send_encode(job_id, priority, settings)
    from dicom_agent.tasks.pipeline import settle_exported

    exported = settle_exported()
    metrics.refresh_queue_depth()
    return {"infer": len(infer), "encode": len(encode), "exported": exported, "routed": len(stranded)}


def take_back(s: Session, job_id: int, seen_claim: str | None, t: datetime) -> bool:
    """A lost worker's job back to ``queued``, only if it is still running under the claim recovery saw.

    Compare-and-set, like the claim itself: between reading the job and writing it, the broker may have
    redelivered its message to another worker that took the dead claim over; overwriting that claim made the
    job run again (attempt 3 in the RabbitMQ SIGKILL test)."""
    claim = Job.claimed_by.is_(None) if seen_claim is None else Job.claimed_by == seen_claim
    res = s.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.RUNNING, claim)
        .values(state=JobState.QUEUED, claimed_by=None, heartbeat_at=t)
        .execution_options(synchronize_session=False)
    )
    return bool(res.rowcount)  # type: ignore[attr-defined]


STRANDED_AFTER = timedelta(seconds=10)  # the completion hook routes within milliseconds when its process lives


def stranded_complete_studies(completed_before: datetime) -> list[int]:
    with session_scope() as s:
        return list(
            s.scalars(
                select(Study.id)
                .where(Study.state == StudyState.COMPLETE, Study.completed_at <= completed_before)
                .order_by(Study.priority_rank, Study.completed_at)
            )
        )
