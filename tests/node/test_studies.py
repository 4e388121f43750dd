"""Study grouping: quiet-period completion, one event per completion, reopening by late instances."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from dicom_agent.config import Settings, get_settings
from dicom_agent.db.orm import Study
from dicom_agent.db.session import session_scope
from dicom_agent.db.states import StudyState, check_study
from dicom_agent.receive.server import ServerHandle
from dicom_agent.studies.events import register_completion_hook, unregister_completion_hook
from dicom_agent.studies.stability import is_complete
from dicom_agent.studies.sweep import Sweeper, sweep_once
from tests.node.conftest import StartNode, send
from tests.node.factory import make_instance


@pytest.fixture
def completed() -> Iterator[list[int]]:
    seen: list[int] = []
    register_completion_hook(seen.append)
    yield seen
    unregister_completion_hook(seen.append)


def _study(settings: Settings, uid: str) -> Study:
    with session_scope(settings.database_url) as s:
        return s.scalars(select(Study).where(Study.study_instance_uid == uid)).one()


def test_quiet_period_per_modality() -> None:
    s = Settings(study_quiet_seconds=10, study_quiet_overrides={"CR": 2.0, "CT": 20.0})
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    assert is_complete(s, "CR", t0, t0 + timedelta(seconds=3))
    assert not is_complete(s, "CT", t0, t0 + timedelta(seconds=15))
    assert not is_complete(s, "CR,CT", t0, t0 + timedelta(seconds=15))  # the longest override wins
    assert is_complete(s, "MR", t0.replace(tzinfo=None), t0 + timedelta(seconds=10))  # naive = UTC (SQLite)


def test_sweep_completes_once_and_emits_once(node: ServerHandle, completed: list[int]) -> None:
    settings = get_settings()
    cr, ct = make_instance(modality="CR"), make_instance()
    assert send(node.port, [cr, ct]) == [0, 0]
    now = datetime.now(UTC)
    assert sweep_once(settings, now) == []  # still within the quiet period
    later = now + timedelta(seconds=settings.study_quiet_seconds + 1)
    ids = sweep_once(settings, later)
    assert len(ids) == 2 and sorted(completed) == sorted(ids)
    assert sweep_once(settings, later + timedelta(hours=1)) == []
    assert len(completed) == 2
    study = _study(settings, ct.StudyInstanceUID)
    assert study.state == "complete" and study.completed_at is not None


def test_modality_override_completes_radiographs_first(start_node: StartNode, completed: list[int]) -> None:
    node = start_node(study_quiet_seconds=10, study_quiet_overrides="CR=1,CT=30")
    settings = get_settings()
    cr, ct = make_instance(modality="CR"), make_instance()
    assert send(node.port, [cr, ct]) == [0, 0]
    ids = sweep_once(settings, datetime.now(UTC) + timedelta(seconds=5))
    assert ids == [_study(settings, cr.StudyInstanceUID).id]


def test_late_instance_reopens_complete_study(node: ServerHandle, completed: list[int]) -> None:
    settings = get_settings()
    first = make_instance()
    assert send(node.port, [first]) == [0]
    future = datetime.now(UTC) + timedelta(seconds=settings.study_quiet_seconds + 1)
    assert len(sweep_once(settings, future)) == 1
    late = make_instance(first.StudyInstanceUID, first.SeriesInstanceUID, number=2)
    assert send(node.port, [late]) == [0]
    study = _study(settings, first.StudyInstanceUID)
    assert (study.state, study.revision, study.needs_rerun, study.instance_count) == ("receiving", 1, True, 2)
    assert study.completed_at is None
    # and it completes again, with a second event
    assert sweep_once(settings, future + timedelta(seconds=settings.study_quiet_seconds + 5)) == [study.id]
    assert completed == [study.id, study.id]


def test_every_later_state_may_reopen() -> None:
    for state in StudyState:
        if state is not StudyState.RECEIVING:
            assert check_study(state, StudyState.RECEIVING) is StudyState.RECEIVING


def test_sweeper_thread_completes_after_restart(start_node: StartNode, completed: list[int]) -> None:
    """A study received by one server is completed by a sweeper started later, from the database alone."""
    node = start_node(study_quiet_seconds=0.5)
    ds = make_instance()
    assert send(node.port, [ds]) == [0]
    node.shutdown()
    sweeper = Sweeper(get_settings(), interval=0.1).start()
    try:
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while not completed and datetime.now(UTC) < deadline:
            sweeper._stop.wait(0.1)
    finally:
        sweeper.stop()
    assert completed == [_study(get_settings(), ds.StudyInstanceUID).id]
