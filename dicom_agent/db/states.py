"""State enums and their allowed transitions, checked in one place."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from dicom_agent.errors import StateTransitionError


class StudyState(StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"
    IGNORED = "ignored"
    QUEUED = "queued"
    INFERRING = "inferring"
    RESULTS_READY = "results_ready"
    EXPORTED = "exported"
    SIGNED = "signed"
    FAILED = "failed"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SUPERSEDED = "superseded"


class ExportState(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    DONE = "done"
    DEAD = "dead"


class ReviewState(StrEnum):
    NEW = "new"
    IN_REVIEW = "in_review"
    SIGNED = "signed"
    REJECTED = "rejected"


S = StudyState
_STUDY_NEXT: dict[StudyState, frozenset[StudyState]] = {
    S.RECEIVING: frozenset({S.COMPLETE}),
    S.COMPLETE: frozenset({S.QUEUED, S.IGNORED, S.FAILED}),
    S.IGNORED: frozenset(),
    S.QUEUED: frozenset({S.INFERRING, S.FAILED}),
    S.INFERRING: frozenset({S.RESULTS_READY, S.FAILED, S.QUEUED}),
    S.RESULTS_READY: frozenset({S.EXPORTED, S.SIGNED, S.FAILED}),
    S.EXPORTED: frozenset({S.SIGNED}),
    S.SIGNED: frozenset(),
    S.FAILED: frozenset({S.QUEUED}),
}

# A late instance reopens any study that is past receiving (see study_can_reopen): its next run is a new revision.
for _state in S:
    if _state is not S.RECEIVING:
        _STUDY_NEXT[_state] = _STUDY_NEXT[_state] | {S.RECEIVING}

J = JobState
_JOB_NEXT: dict[JobState, frozenset[JobState]] = {
    J.QUEUED: frozenset({J.RUNNING, J.FAILED, J.SUPERSEDED}),
    J.RUNNING: frozenset({J.SUCCEEDED, J.FAILED, J.QUEUED, J.SUPERSEDED}),
    J.SUCCEEDED: frozenset({J.SUPERSEDED}),
    J.FAILED: frozenset({J.QUEUED, J.SUPERSEDED}),
    J.SUPERSEDED: frozenset(),
}

E = ExportState
_EXPORT_NEXT: dict[ExportState, frozenset[ExportState]] = {
    E.PENDING: frozenset({E.SENDING, E.DEAD}),
    E.SENDING: frozenset({E.DONE, E.PENDING, E.DEAD}),
    E.DONE: frozenset({E.PENDING}),  # an explicit replay
    E.DEAD: frozenset({E.PENDING}),  # an explicit replay
}


def study_can_reopen(state: StudyState) -> bool:
    """Late instances reopen any study that is not still receiving (the next run is a new revision)."""
    return state is not StudyState.RECEIVING


def check_study(current: str, new: StudyState) -> StudyState:
    return _check(_STUDY_NEXT, StudyState(current), new, "study")


def check_job(current: str, new: JobState) -> JobState:
    return _check(_JOB_NEXT, JobState(current), new, "job")


def check_export(current: str, new: ExportState) -> ExportState:
    return _check(_EXPORT_NEXT, ExportState(current), new, "export")


T = TypeVar("T", bound=StrEnum)


def _check(table: dict[T, frozenset[T]], current: T, new: T, what: str) -> T:
    if new == current or new in table[current]:
        return new
    raise StateTransitionError(f"{what} cannot go from {current} to {new}")
