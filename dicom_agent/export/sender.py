"""Delivers claimed outbox rows with C-STORE and records each attempt's outcome (PS3.4 B.2.3 statuses).

Claiming is a conditional UPDATE (``state='pending' AND next_try_at<=now``) whose row count says who won, which
is safe on SQLite and PostgreSQL alike without row locks. Outcomes:
success or warning → ``done``; transient (association refused/aborted, timeouts, 0xA7xx, 0x0110, 0x0213, lost
association) → ``pending`` again after an exponential, jittered backoff, until ``export_max_attempts`` → ``dead``;
permanent (0xA9xx, 0xCxxx, 0x0122, 0x0124, presentation context not accepted, file missing) → ``dead`` at once.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_agent import metrics
from dicom_agent.db.orm import Export, ResultObject, utcnow
from dicom_agent.db.states import ExportState, check_export
from dicom_agent.dicom.status import is_transient_failure
from dicom_agent.errors import PermanentExportError, TransientExportError
from dicom_agent.export.scu import CONTEXT_NOT_ACCEPTED, Peer, SendResult, send_files
from dicom_agent.store.atomic import resolve_inside

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    base_s: float
    cap_s: float
    max_attempts: int

    @classmethod
    def from_settings(cls, settings: Any) -> RetryPolicy:
        return cls(settings.export_retry_base_s, settings.export_retry_cap_s, settings.export_max_attempts)

    def delay(self, attempts: int) -> float:
        """Exponential backoff with jitter: between half and all of ``min(cap, base * 2^(n-1))``."""
        full = min(self.cap_s, self.base_s * 2 ** max(attempts - 1, 0))
        return full * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class Outcome:
    state: ExportState
    error: str | None


def classify(result: SendResult) -> str:
    """``done``, ``transient`` or ``permanent`` for one file's C-STORE result."""
    if result.ok:
        return "done"
    if result.status is None:
        if result.error == CONTEXT_NOT_ACCEPTED or (result.error or "").startswith("unreadable"):
            return "permanent"
        return "transient"  # association lost, no response (DIMSE timeout)
    return "transient" if is_transient_failure(result.status) else "permanent"


def describe(result: SendResult) -> str:
    if result.status is not None:
        return f"C-STORE status 0x{result.status:04X}"
    return result.error or "no response"


def claim(session_factory: sessionmaker[Session], export_ids: Sequence[int], now: datetime) -> list[int]:
    """Moves due pending rows to ``sending``; returns the ids this process won."""
    won = []
    for export_id in export_ids:
        with session_factory() as s, s.begin():
            result = s.execute(
                update(Export)
                .where(Export.id == export_id, Export.state == ExportState.PENDING, Export.next_try_at <= now)
                .values(state=ExportState.SENDING, updated_at=now)
            )
            if result.rowcount == 1:  # type: ignore[attr-defined]
                won.append(export_id)
    return won


def due_ids(session_factory: sessionmaker[Session], now: datetime, limit: int = 64) -> list[int]:
    with session_factory() as s:
        return list(
            s.scalars(
                select(Export.id)
                .where(Export.state == ExportState.PENDING, Export.next_try_at <= now)
                .order_by(Export.next_try_at, Export.id)
                .limit(limit)
            )
        )


def send_claimed(
    session_factory: sessionmaker[Session],
    export_ids: Sequence[int],
    *,
    storage_root: Path,
    calling_aet: str,
    timeout_s: float,
    policy: RetryPolicy,
) -> dict[int, ExportState]:
    """Sends claimed rows, one association per destination, and records every row's outcome."""
    with session_factory() as s:
        rows = s.execute(
            select(Export.id, Export.destination, ResultObject.path)
            .join(ResultObject, Export.result_object_id == ResultObject.id)
            .where(Export.id.in_(export_ids))
        ).all()
    by_destination: dict[str, list[tuple[int, Path]]] = {}
    outcomes: dict[int, Outcome] = {}
    for export_id, destination, relpath in rows:
        try:
            path = resolve_inside(storage_root, relpath)
        except ValueError as exc:
            outcomes[export_id] = Outcome(ExportState.DEAD, str(exc))
            continue
        if not path.is_file():
            outcomes[export_id] = Outcome(ExportState.DEAD, "result file missing from the storage root")
            continue
        by_destination.setdefault(destination, []).append((export_id, path))

    for destination, items in by_destination.items():
        outcomes.update(_send_to(destination, items, calling_aet, timeout_s))
    return _record(session_factory, outcomes, policy)


def _send_to(destination: str, items: list[tuple[int, Path]], calling_aet: str, timeout_s: float) -> dict[int, Outcome]:
    try:
        peer = Peer.parse(destination)
    except ValueError as exc:
        return {export_id: Outcome(ExportState.DEAD, str(exc)) for export_id, _ in items}
    try:
        results = {r.path: r for r in send_files([p for _, p in items], peer, calling_aet, timeout_s)}
    except TransientExportError as exc:
        return {export_id: Outcome(ExportState.PENDING, str(exc)) for export_id, _ in items}
    except PermanentExportError as exc:
        return {export_id: Outcome(ExportState.DEAD, str(exc)) for export_id, _ in items}
    except OSError as exc:  # connection refused before any association exists
        return {export_id: Outcome(ExportState.PENDING, f"{peer}: {exc}") for export_id, _ in items}
    out = {}
    for export_id, path in items:
        result = results.get(path)
        if result is None:
            out[export_id] = Outcome(ExportState.PENDING, "not sent")
            continue
        kind = classify(result)
        state = {"done": ExportState.DONE, "transient": ExportState.PENDING, "permanent": ExportState.DEAD}[kind]
        out[export_id] = Outcome(state, None if kind == "done" else f"{peer}: {describe(result)}")
    return out


def _record(
    session_factory: sessionmaker[Session], outcomes: dict[int, Outcome], policy: RetryPolicy
) -> dict[int, ExportState]:
    """One transaction per row: attempts+1, and done / pending with next_try_at / dead with last_error."""
    final: dict[int, ExportState] = {}
    for export_id, outcome in outcomes.items():
        with session_factory() as s, s.begin():
            row = s.get(Export, export_id)
            if row is None or row.state != ExportState.SENDING:
                continue  # replayed or removed meanwhile: leave it to its new owner
            now = utcnow()
            row.attempts += 1
            metrics.EXPORT_ATTEMPTS.labels(destination=row.destination).inc()
            state = outcome.state
            if state is ExportState.PENDING and row.attempts >= policy.max_attempts:
                state = ExportState.DEAD
            row.state = check_export(row.state, state)
            row.updated_at = now
            if state is ExportState.DONE:
                row.sent_at = now
                row.last_error = None
                log.info("export %d to %s delivered (attempt %d)", export_id, row.destination, row.attempts)
            else:
                metrics.EXPORT_FAILURES.labels(destination=row.destination, kind=state.value).inc()
            if state is ExportState.PENDING:
                delay = policy.delay(row.attempts)
                row.next_try_at = now + timedelta(seconds=delay)
                row.last_error = outcome.error
                log.warning(
                    "export %d to %s failed (attempt %d/%d): %s; retry in %.1fs",
                    export_id, row.destination, row.attempts, policy.max_attempts, outcome.error, delay,
                )  # fmt: skip
            elif state is ExportState.DEAD:
                metrics.EXPORT_DEAD.labels(destination=row.destination).inc()
                row.last_error = outcome.error
                log.error(
                    "export %d to %s dead after %d attempt(s): %s",
                    export_id,
                    row.destination,
                    row.attempts,
                    outcome.error,
                )
            final[export_id] = state
    return final
