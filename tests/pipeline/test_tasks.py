"""Celery tasks on a real broker: the happy path, idempotent re-delivery, revisions, failures, recovery."""

from __future__ import annotations

from sqlalchemy import func, select

from dicom_agent.db.orm import AuditEvent, Export, Finding, Job, ResultObject, Study
from dicom_agent.db.queries import study_table
from dicom_agent.db.session import session_scope
from dicom_agent.db.states import JobState, StudyState
from dicom_agent.errors import PermanentInferenceError, TransientInferenceError
from dicom_agent.tasks.claims import try_claim
from dicom_agent.tasks.enqueue import recover, route_study
from dicom_agent.tasks.pipeline import encode_results, export_object, infer_study, send_infer
from tests.pipeline.conftest import Pipeline, store_study, study_state, wait_for


def _count(model: type, *where: object) -> int:
    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where)) or 0  # type: ignore[arg-type]


def _job(job_id: int) -> Job:
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def test_complete_study_flows_to_exported_and_redelivery_does_nothing(pipeline: Pipeline) -> None:
    study_id = store_study(pipeline.storage)
    job_id = route_study(study_id)
    assert job_id is not None and study_state(study_id) == StudyState.QUEUED
    with pipeline.start_worker():
        wait_for(lambda: study_state(study_id) == StudyState.EXPORTED, what="study exported")
        job = _job(job_id)
        assert job.state == JobState.SUCCEEDED and job.attempts == 1 and job.timings and "infer_s" in job.timings
        kinds = sorted(k for (k,) in _rows(ResultObject.kind, ResultObject.job_id == job_id))
        assert kinds == ["kos", "sr"]  # the stand-in has a box and no mask: no SEG
        assert _count(Finding, Finding.job_id == job_id) == 1
        ((tracking_uid,),) = _rows(Finding.tracking_uid, Finding.job_id == job_id)
        ((sr_path,),) = _rows(ResultObject.path, ResultObject.job_id == job_id, ResultObject.kind == "sr")
        assert isinstance(tracking_uid, str) and isinstance(sr_path, str)
        assert tracking_uid.encode() in (pipeline.storage / sr_path).read_bytes()  # the review can reject it
        delivered = list(pipeline.sink.received)
        assert len(delivered) == 2 and _count(Export, Export.state == "done") == 2
        export_ids = [e for (e,) in _rows(Export.id)]

        # the same messages again: every task sees its row past its stage and returns
        infer_study.delay(job_id)
        encode_results.delay(job_id)
        for export_id in export_ids:
            export_object.delay(export_id)
        wait_for(lambda: _queues_drained(pipeline), what="duplicates consumed")
    assert pipeline.adapter.calls == 1
    assert _job(job_id).attempts == 1
    assert _count(ResultObject, ResultObject.job_id == job_id) == 2
    assert pipeline.sink.received == delivered
    actions = [a for (a,) in _rows(AuditEvent.action, AuditEvent.study_id == study_id)]
    assert actions[:2] == ["study.queued", "inference.started"] and "results.exported" in actions


def _rows(col: object, *where: object) -> list[tuple[object, ...]]:
    with session_scope() as s:
        return [tuple(r) for r in s.execute(select(col).where(*where)).all()]  # type: ignore[call-overload]


def _queues_drained(p: Pipeline) -> bool:
    from dicom_agent.config import get_settings
    from dicom_agent.tasks.app import QUEUES, configure, queue_name

    app = configure(get_settings())
    with app.connection_for_write() as conn:
        ch = conn.default_channel
        return all(ch.queue_declare(queue_name(get_settings(), q), passive=True).message_count == 0 for q in QUEUES)


def test_reopened_study_runs_as_a_new_revision_and_the_old_job_is_superseded(embedded_pipeline: Pipeline) -> None:
    study_id = store_study(embedded_pipeline.storage)
    first = route_study(study_id)
    assert first is not None
    with embedded_pipeline.start_worker():
        wait_for(lambda: study_state(study_id) == StudyState.EXPORTED, what="first run")
    with session_scope() as s:  # late instances reopened it; the node declares it complete again
        study = s.get(Study, study_id)
        assert study is not None
        uid = study.study_instance_uid
        study.state = StudyState.RECEIVING
    store_study(embedded_pipeline.storage, study_uid=uid, count=8)
    second = route_study(study_id)
    assert second is not None and second != first
    assert _job(first).state == JobState.SUPERSEDED
    assert (_job(second).revision, _job(second).state) == (1, JobState.QUEUED)
    with embedded_pipeline.start_worker():
        infer_study.delay(first)  # a stale message for the superseded run
        wait_for(lambda: study_state(study_id) == StudyState.EXPORTED, what="second run")
    assert embedded_pipeline.adapter.calls == 2
    sr_uids = [u for (u,) in _rows(ResultObject.sop_instance_uid, ResultObject.kind == "sr")]
    assert len(sr_uids) == 2 and len(set(sr_uids)) == 2  # revision 1 gets new UIDs


def test_permanent_error_fails_job_and_study_with_the_error(embedded_pipeline: Pipeline) -> None:
    embedded_pipeline.adapter.fail_with.append(PermanentInferenceError("CT has no axial series the model accepts"))
    study_id = store_study(embedded_pipeline.storage)
    job_id = route_study(study_id)
    assert job_id is not None
    with embedded_pipeline.start_worker():
        wait_for(lambda: study_state(study_id) == StudyState.FAILED, what="study failed")
    assert _job(job_id).state == JobState.FAILED and embedded_pipeline.adapter.calls == 1
    row = next(r for r in study_table() if r[0] == study_id)
    assert "no axial series" in str(row[-1])
    assert _count(Export) == 0


def test_transient_error_is_retried_with_backoff_then_succeeds(embedded_pipeline: Pipeline) -> None:
    embedded_pipeline.adapter.fail_with.append(TransientInferenceError("CUDA out of memory"))
    study_id = store_study(embedded_pipeline.storage)
    job_id = route_study(study_id)
    assert job_id is not None
    with embedded_pipeline.start_worker():
        wait_for(lambda: study_state(study_id) == StudyState.EXPORTED, what="study exported after retry")
    job = _job(job_id)
    assert embedded_pipeline.adapter.calls == 2 and job.attempts == 2 and job.state == JobState.SUCCEEDED


def test_ignored_study_is_recorded_with_the_reason_and_sends_nothing(embedded_pipeline: Pipeline) -> None:
    study_id = store_study(embedded_pipeline.storage, body_part="HEAD")
    assert route_study(study_id) is None
    with session_scope() as s:
        study = s.get(Study, study_id)
        assert study is not None
        assert study.state == StudyState.IGNORED and study.route_rule is None
        assert study.route_detail and study.route_detail["reason"] == "no rule matched"
    assert _count(Job) == 0


def test_a_live_claim_blocks_duplicates_and_a_stale_or_dead_one_is_taken_over(embedded_pipeline: Pipeline) -> None:
    from datetime import timedelta

    from dicom_agent.tasks.claims import HOST, now

    study_id = store_study(embedded_pipeline.storage)
    job_id = route_study(study_id)
    assert job_id is not None
    assert try_claim(job_id, stale_s=60)
    with session_scope() as s:  # another live process of another host holds it
        job = s.get(Job, job_id)
        assert job is not None
        job.claimed_by = "otherhost:1"
    assert not try_claim(job_id, stale_s=60)
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.heartbeat_at = now() - timedelta(seconds=120)
    assert try_claim(job_id, stale_s=60)
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.claimed_by, job.heartbeat_at = f"{HOST}:999999999", now()
    assert not try_claim(job_id, stale_s=60)
    assert try_claim(job_id, stale_s=60, dead_claim=f"{HOST}:999999999")


def test_recovery_takes_a_job_back_only_under_the_claim_it_saw(embedded_pipeline: Pipeline) -> None:
    """Recovery reads a dead claim, then a redelivered message lets another worker take it over before
    recovery writes: the write must not undo that claim (it made the job run a third time)."""
    from dicom_agent.tasks.claims import now
    from dicom_agent.tasks.enqueue import take_back

    job_id = route_study(store_study(embedded_pipeline.storage))
    assert job_id is not None and try_claim(job_id, stale_s=60)
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.claimed_by = "otherhost:2"  # the worker that took the dead claim "otherhost:1" over
    with session_scope() as s:
        assert not take_back(s, job_id, "otherhost:1", now())
    assert (_job(job_id).state, _job(job_id).claimed_by) == (JobState.RUNNING, "otherhost:2")
    with session_scope() as s:
        assert take_back(s, job_id, "otherhost:2", now())
    assert (_job(job_id).state, _job(job_id).claimed_by) == (JobState.QUEUED, None)


def test_recovery_resends_jobs_the_broker_never_got_and_jobs_of_dead_workers(pipeline: Pipeline) -> None:
    from datetime import timedelta

    from dicom_agent.tasks.claims import now

    lost = store_study(pipeline.storage)
    dead = store_study(pipeline.storage)
    # committed but never sent: as if the process died between commit and send
    from dicom_agent.tasks import enqueue

    sent: list[int] = []
    orig = enqueue.route_study.__globals__["_record"]
    lost_job = orig(lost, enqueue.decide(enqueue.rules_for(_settings()), _facts(lost)), _settings())
    dead_job = orig(dead, enqueue.decide(enqueue.rules_for(_settings()), _facts(dead)), _settings())
    assert lost_job and dead_job and not sent
    assert try_claim(dead_job, stale_s=60)
    with session_scope() as s:  # its worker vanished a while ago with the message
        job = s.get(Job, dead_job)
        assert job is not None
        job.claimed_by, job.heartbeat_at = "gone:1", now() - timedelta(seconds=600)
    assert recover(resend_all_queued=True) == {"infer": 2, "encode": 0, "exported": 0, "routed": 0}
    with pipeline.start_worker():
        wait_for(lambda: study_state(lost) == study_state(dead) == StudyState.EXPORTED, what="both recovered")
    assert _job(dead_job).attempts == 2 and _job(lost_job).attempts == 1
    assert pipeline.adapter.calls == 2


def test_recovery_routes_a_study_left_complete_by_a_crash(embedded_pipeline: Pipeline) -> None:
    """The sweep committed ``complete`` and its process died before the hook routed the study."""
    from datetime import timedelta

    from dicom_agent.tasks.claims import now

    stranded = store_study(embedded_pipeline.storage)
    fresh = store_study(embedded_pipeline.storage)  # just completed: its own hook is about to route it
    with session_scope() as s:
        for study_id, age_s in ((stranded, 60), (fresh, 0)):
            study = s.get(Study, study_id)
            assert study is not None
            study.completed_at = now() - timedelta(seconds=age_s)
    assert recover()["routed"] == 1
    assert study_state(stranded) == StudyState.QUEUED and study_state(fresh) == StudyState.COMPLETE
    assert recover()["routed"] == 0  # routed once, never twice
    with embedded_pipeline.start_worker():
        wait_for(lambda: study_state(stranded) == StudyState.EXPORTED, what="stranded study exported")
    assert embedded_pipeline.adapter.calls == 1


def _settings():  # type: ignore[no-untyped-def]
    from dicom_agent.config import get_settings

    return get_settings()


def _facts(study_id: int):  # type: ignore[no-untyped-def]
    from dicom_agent.routing.facts import facts_from_db

    return facts_from_db(study_id, _settings().storage_dir)


def test_a_duplicate_stat_message_is_consumed_without_a_second_run(embedded_pipeline: Pipeline) -> None:
    study_id = store_study(embedded_pipeline.storage)
    job_id = route_study(study_id)
    assert job_id is not None
    send_infer(job_id, "cpu", "stat")  # a duplicate with stat priority (ignored by the SQLAlchemy transport)
    with embedded_pipeline.start_worker():
        wait_for(lambda: study_state(study_id) == StudyState.EXPORTED, what="exported")
        wait_for(lambda: _queues_drained(embedded_pipeline), what="drained")
    assert embedded_pipeline.adapter.calls == 1
