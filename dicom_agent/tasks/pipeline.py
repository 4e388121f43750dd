"""The pipeline tasks: ``infer_study(job_id)`` → ``encode_results(job_id)`` → ``export_object(export_id)``.

Each takes an id, loads its row and returns early when the row is already past its stage, so a re-delivered
message does nothing twice (PS3.4 asks nothing here; the broker's at-least-once delivery does). State changes
go through ``db.states``. The outbox rows are committed before their send is queued.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from pydicom import dcmread
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from dicom_agent import metrics
from dicom_agent.config import Settings, get_settings
from dicom_agent.db import audit
from dicom_agent.db.orm import Export, Finding, Instance, Job, ResultObject, Series, Study
from dicom_agent.db.session import session_scope
from dicom_agent.db.states import ExportState, JobState, StudyState, check_job, check_study
from dicom_agent.encode import finding_tracking_uids
from dicom_agent.errors import PermanentInferenceError, TransientError
from dicom_agent.inference.types import SeriesInput, StudyFindings, StudyInput
from dicom_agent.store.atomic import resolve_inside
from dicom_agent.tasks import parts
from dicom_agent.tasks.app import configure, priority_for, queue_name
from dicom_agent.tasks.artifacts import load_findings, save_findings
from dicom_agent.tasks.base import pipeline_task
from dicom_agent.tasks.claims import Heartbeat, claim_is_dead_here, me, now, try_claim

log = logging.getLogger(__name__)
_DONE_JOB = {JobState.SUCCEEDED, JobState.FAILED, JobState.SUPERSEDED}


def _move_study(study: Study, new: StudyState) -> None:
    study.state = check_study(study.state, new)


# --- failure recording -------------------------------------------------------------------------------------


def job_failed(job_id: int, error: str) -> None:
    """A permanent failure: the job and (if it is the study's current job) the study go to ``failed``."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        if job is None or job.state in {JobState.SUCCEEDED, JobState.SUPERSEDED}:
            return
        job.state = check_job(job.state, JobState.FAILED)
        job.error = error[:4000]
        job.finished_at = now()
        job.claimed_by = None
        study = s.get(Study, job.study_id)
        if study is not None and study.state in {StudyState.QUEUED, StudyState.INFERRING, StudyState.RESULTS_READY}:
            _move_study(study, StudyState.FAILED)
            study.error = error[:4000]
        audit.record(s, "worker", "job.failed", job.study_id, {"job_id": job_id, "error": error[:500]})
    metrics.JOBS_FAILED.labels(model=_model_name(job_id)).inc()


def export_failed(export_id: int, error: str) -> None:
    """The outbox owns export retries and the ``dead`` state; the task only logs what escaped it."""
    log.error("export task failed: %s", error, extra={"export_id": export_id})


def _model_name(job_id: int) -> str:
    with session_scope() as s:
        return s.scalar(select(Job.model_name).where(Job.id == job_id)) or "unknown"


# --- sending -----------------------------------------------------------------------------------------------


def send_infer(job_id: int, queue_role: str, priority: str, settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    configure(settings)
    infer_study.apply_async(
        args=[job_id], queue=queue_name(settings, queue_role), priority=priority_for(settings, priority)
    )


def send_encode(job_id: int, priority: str, settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    configure(settings)
    encode_results.apply_async(
        args=[job_id], queue=queue_name(settings, "cpu"), priority=priority_for(settings, priority)
    )


def send_exports(export_ids: list[int], priority: str, settings: Settings | None = None) -> None:
    settings = settings or get_settings()
    configure(settings)
    for export_id in export_ids:
        export_object.apply_async(
            args=[export_id], queue=queue_name(settings, "export"), priority=priority_for(settings, priority)
        )


# --- infer_study -------------------------------------------------------------------------------------------


def study_input(s: Any, job: Job, study: Study, storage: Path, languages: list[str]) -> StudyInput:
    """The selected series' files, in instance order, as absolute paths inside the storage root."""
    series_in = []
    for uid in job.series_uids or []:
        row = s.scalars(select(Series).where(Series.series_instance_uid == uid, Series.study_id == study.id)).first()
        if row is None:
            raise PermanentInferenceError(f"series {uid} of job {job.id} is no longer stored")
        paths = s.scalars(
            select(Instance.path).where(Instance.series_id == row.id).order_by(Instance.instance_number, Instance.id)
        ).all()
        files = [resolve_inside(storage, p) for p in paths]
        series_in.append(SeriesInput(uid, row.modality or "", files, row.body_part_examined, row.series_description))
    if not series_in:
        raise PermanentInferenceError(f"job {job.id} has no series to run on")
    return StudyInput(study.study_instance_uid, series_in, tuple(languages))


def _finding_rows(job: Job, sf: StudyFindings) -> list[Finding]:
    rows = []
    for f in sf.findings:
        boxes = [
            {
                "sop_instance_uid": b.image.sop_instance_uid,
                "frame": b.image.frame_number,
                "xy": [b.x0, b.y0, b.x1, b.y1],
                "score": b.score,
            }
            for b in f.boxes
        ]
        masks = (
            [
                {
                    "series_instance_uid": f.mask.series_instance_uid,
                    "images": len(f.mask.images),
                    "voxels": f.mask.volume_voxels(),
                }
            ]
            if f.mask is not None
            else None
        )
        rows.append(
            Finding(
                job_id=job.id,
                study_id=job.study_id,
                label=f.label[:64],
                code_value=f.code.value,
                coding_scheme=f.code.scheme,
                code_meaning=f.code.meaning[:128],
                name_en=f.name_en[:128],
                name_zh=f.name_zh[:128],
                probability=float(f.probability),
                present=bool(f.present),
                critical=bool(f.critical),
                location=f.location,
                laterality=f.laterality,
                size_mm=f.size_mm,
                suv_max=f.suv_max,
                text_en=f.text_en,
                text_zh=f.text_zh,
                boxes=boxes or None,
                masks=masks,
                flags=list(f.flags) or None,
            )
        )
    return rows


def ran_on(adapter: Any, requested: str) -> str:
    """Where inference really runs, for the job row and the metrics: ONNX Runtime's first provider ("cuda",
    "cpu": a CUDA request may have fallen back to the CPU), else the adapter's torch device, else the setting."""
    providers = getattr(adapter, "providers", None)
    if providers:
        return str(providers[0]).removesuffix("ExecutionProvider").lower()
    return str(getattr(adapter, "device", None) or requested)


def run_inference(job_id: int) -> None:
    settings = get_settings()
    with session_scope() as s:
        job = s.get(Job, job_id)
        if job is None:
            log.warning("infer_study: no job %s", job_id, extra={"job_id": job_id})
            return
        state, claimed_by, done = job.state, job.claimed_by, bool(job.timings and "infer_s" in job.timings)
        priority, study_id = job.priority, job.study_id
    extra = {"job_id": job_id, "study_id": study_id}
    if state in _DONE_JOB:
        log.info("infer_study: job already %s", state, extra=extra)
        return
    if done:  # inference finished before a crash; only the hand-off to encode may be missing
        send_encode(job_id, priority, settings)
        return
    dead = claimed_by if state == JobState.RUNNING and claim_is_dead_here(claimed_by) else None
    if not try_claim(job_id, settings.job_stale_s, dead):
        log.info("infer_study: job %s is running elsewhere (%s); duplicate dropped", job_id, claimed_by, extra=extra)
        return

    try:
        with session_scope() as s:
            job = s.get(Job, job_id)
            study = s.get(Study, study_id)
            assert job is not None and study is not None
            if study.state == StudyState.QUEUED:
                _move_study(study, StudyState.INFERRING)
            audit.record(s, "worker", "inference.started", study_id, {"job_id": job_id, "worker": me()})
            inputs = study_input(s, job, study, settings.storage_dir, settings.languages)
            model_name = job.model_name
        adapter = parts.adapter(settings)
        device = ran_on(adapter, settings.device)
        t0 = time.monotonic()
        with Heartbeat(job_id, settings.job_heartbeat_s):
            findings = adapter.predict(inputs)
        infer_s = time.monotonic() - t0
        metrics.INFERENCE_SECONDS.labels(model=model_name, device=device).observe(infer_s)
        save_findings(settings.storage_dir, inputs.study_instance_uid, job_id, findings)
    except TransientError:
        _release(job_id)
        raise

    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        if job.state != JobState.RUNNING or job.claimed_by != me():
            log.warning("infer_study: job %s was taken over or superseded; results dropped", job_id, extra=extra)
            return
        s.execute(delete(Finding).where(Finding.job_id == job_id))
        s.add_all(_finding_rows(job, findings))
        job.model_version = findings.model.version[:64]
        job.device = device[:32]
        job.timings = {**{k: float(v) for k, v in findings.timings.items()}, "infer_s": round(infer_s, 4)}
        audit.record(s, "worker", "inference.done", study_id, {"job_id": job_id, "findings": len(findings.present)})
    log.info("inference done in %.2fs on %s (%d findings present)", infer_s, device, len(findings.present), extra=extra)
    send_encode(job_id, priority, settings)


def _release(job_id: int) -> None:
    """Gives a claimed job back (running → queued) before a retry, so the retry's delivery can claim it."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        if job is not None and job.state == JobState.RUNNING and job.claimed_by == me():
            job.state = check_job(job.state, JobState.QUEUED)
            job.claimed_by = None
            study = s.get(Study, job.study_id)
            if study is not None and study.state == StudyState.INFERRING:
                _move_study(study, StudyState.QUEUED)


@pipeline_task("infer_study", "job_id", job_failed, "infer_time_limit_s")
def infer_study(job_id: int) -> None:
    """Runs the model on the job's series and stores the findings; then queues ``encode_results``."""
    run_inference(job_id)


# --- encode_results ----------------------------------------------------------------------------------------


def _sources(s: Any, job: Job, storage: Path) -> list[Any]:
    paths = s.scalars(
        select(Instance.path)
        .join(Series, Instance.series_id == Series.id)
        .where(Series.series_instance_uid.in_(job.series_uids or []), Instance.study_id == job.study_id)
        .order_by(Series.id, Instance.instance_number, Instance.id)
    ).all()
    return [dcmread(resolve_inside(storage, p)) for p in paths]


def _pending_exports(s: Any, job_id: int) -> list[int]:
    return list(
        s.scalars(
            select(Export.id)
            .join(ResultObject, Export.result_object_id == ResultObject.id)
            .where(ResultObject.job_id == job_id, Export.state == ExportState.PENDING)
            .order_by(Export.id)
        )
    )


def run_encode(job_id: int) -> None:
    settings = get_settings()
    with session_scope() as s:
        job = s.get(Job, job_id)
        if job is None or job.state != JobState.RUNNING or not (job.timings and "infer_s" in job.timings):
            state = job.state if job is not None else "missing"
            log.info("encode_results: job %s is %s; nothing to do", job_id, state, extra={"job_id": job_id})
            return
        study = s.get(Study, job.study_id)
        assert study is not None
        study_uid, study_id, revision, priority = study.study_instance_uid, study.id, job.revision, job.priority
        profile = job.output_profile
        destinations = list(job.destinations if job.destinations is not None else settings.destinations)
        sources = _sources(s, job, settings.storage_dir)
    extra = {"job_id": job_id, "study_id": study_id}
    findings = load_findings(settings.storage_dir, study_uid, job_id)
    t0 = time.monotonic()
    # idempotent: deterministic UIDs and bytes; an object already stored is kept, an export row is not duplicated
    parts.publish_results(
        findings,
        sources,
        settings=settings,
        study_id=study_id,
        job_id=job_id,
        revision=revision,
        destinations=destinations,
        default_profile=profile,
    )
    log.info("results encoded and stored in %.2fs", time.monotonic() - t0, extra=extra)
    with session_scope() as s:
        job = s.get(Job, job_id)
        study = s.get(Study, study_id)
        assert job is not None and study is not None
        if job.state != JobState.RUNNING:
            return
        job.state = check_job(job.state, JobState.SUCCEEDED)
        job.finished_at = now()
        job.claimed_by = None
        _record_tracking_uids(s, job_id, finding_tracking_uids(findings, sources, revision=revision))
        if study.state in {StudyState.QUEUED, StudyState.INFERRING}:
            if study.state == StudyState.QUEUED:
                _move_study(study, StudyState.INFERRING)
            _move_study(study, StudyState.RESULTS_READY)
            study.error = None
        audit.record(s, "worker", "results.stored", study_id, {"job_id": job_id, "destinations": destinations})
        export_ids = _pending_exports(s, job_id)
        completed_at = study.completed_at
    if completed_at is not None:
        metrics.observe_results_latency(completed_at)
    send_exports(export_ids, priority, settings)


def _record_tracking_uids(s: Session, job_id: int, tracking: list[list[str]]) -> None:
    """Each finding row gets the Tracking UID of its first SR group, so a radiologist's rejection removes it."""
    rows = s.scalars(select(Finding).where(Finding.job_id == job_id).order_by(Finding.id)).all()
    if len(rows) != len(tracking):
        log.warning("job %s: %d finding rows but %d encoded findings", job_id, len(rows), len(tracking))
        return
    for row, uids in zip(rows, tracking, strict=True):
        row.tracking_uid = uids[0] if uids else None


@pipeline_task("encode_results", "job_id", job_failed, "encode_time_limit_s")
def encode_results(job_id: int) -> None:
    """Encodes the stored findings as SR/SEG/KOS, stores them with their outbox rows, then queues the exports."""
    run_encode(job_id)


# --- export_object -----------------------------------------------------------------------------------------


def mark_exported_if_complete(study_id: int) -> bool:
    """results_ready → exported once every export of the study's current results is done."""
    with session_scope() as s:
        study = s.get(Study, study_id)
        if study is None or study.state != StudyState.RESULTS_READY:
            return False
        job_id = s.scalar(
            select(Job.id)
            .where(Job.study_id == study_id, Job.state == JobState.SUCCEEDED)
            .order_by(Job.revision.desc(), Job.id.desc())
        )
        states = s.scalars(
            select(Export.state)
            .join(ResultObject, Export.result_object_id == ResultObject.id)
            .where(ResultObject.job_id == job_id)
        ).all()
        if not states or any(st != ExportState.DONE for st in states):
            return False
        _move_study(study, StudyState.EXPORTED)
        audit.record(s, "exporter", "results.exported", study_id, {"job_id": job_id, "exports": len(states)})
        return True


def settle_exported() -> int:
    """Marks exported every results_ready study whose exports are all done (the exporter loop sends too)."""
    with session_scope() as s:
        ids = list(s.scalars(select(Study.id).where(Study.state == StudyState.RESULTS_READY)))
    return sum(mark_exported_if_complete(study_id) for study_id in ids)


def run_export(export_id: int) -> None:
    with session_scope() as s:
        row = s.get(Export, export_id)
        if row is None or row.state in {ExportState.DONE, ExportState.DEAD}:
            return
        study_id = s.scalar(select(ResultObject.study_id).where(ResultObject.id == row.result_object_id))
    parts.deliver(export_id, get_settings())
    if study_id is not None:
        mark_exported_if_complete(study_id)


@pipeline_task("export_object", "export_id", export_failed, "export_time_limit_s")
def export_object(export_id: int) -> None:
    """Delivers one outbox row (the outbox records attempts, backoff and ``dead``)."""
    run_export(export_id)
