"""The exporter role: a loop that sends due outbox rows, sleeping until the next one is due or it is woken.

On start, rows left in ``sending`` by a crash go back to ``pending``: they may be sent twice, which is harmless
because the objects' UIDs are deterministic and a PACS treats a re-sent instance as the same instance.
Other processes (the worker) insert rows without being able to wake this one, so the sleep is capped by
``export_poll_s``; in one process, ``wake()`` ends the sleep at once.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_agent.db.orm import Export, utcnow
from dicom_agent.db.session import session_factory
from dicom_agent.db.states import ExportState
from dicom_agent.export.sender import RetryPolicy, claim, due_ids, send_claimed

log = logging.getLogger(__name__)

_WAKE = threading.Event()


def wake() -> None:
    """New rows are committed: an exporter in this process looks now instead of at its next poll."""
    _WAKE.set()


def _aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def recover_interrupted(factory: sessionmaker[Session]) -> int:
    """``sending`` rows of a process that died mid-send become ``pending`` again (due now)."""
    with factory() as s, s.begin():
        result = s.execute(
            update(Export)
            .where(Export.state == ExportState.SENDING)
            .values(state=ExportState.PENDING, next_try_at=utcnow(), updated_at=utcnow())
        )
        count = int(result.rowcount or 0)  # type: ignore[attr-defined]
    if count:
        log.warning("resumed %d export(s) interrupted while sending", count)
    return count


def next_due(factory: sessionmaker[Session]) -> datetime | None:
    with factory() as s:
        value = s.scalar(select(func.min(Export.next_try_at)).where(Export.state == ExportState.PENDING))
    return _aware(value) if value is not None else None


class Exporter:
    """Sends what is due; one instance per process (several processes may run: claiming is safe)."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.factory = session_factory(settings.database_url)
        self.policy = RetryPolicy.from_settings(settings)
        self.timeout_s = settings.export_timeout_s or settings.dimse_timeout_s
        self.poll_s = settings.export_poll_s

    def run_once(self) -> dict[int, ExportState]:
        """Claims and sends every row due when the pass starts; returns the new state per export id.

        A row that fails is due again only after its backoff, which ends after the pass started: one attempt
        per row per pass, however short the backoff.
        """
        outcomes: dict[int, ExportState] = {}
        started = utcnow()
        while True:
            ids = claim(self.factory, due_ids(self.factory, started), started)
            if not ids:
                return outcomes
            outcomes.update(self.send(ids))

    def send(self, ids: list[int]) -> dict[int, ExportState]:
        return send_claimed(
            self.factory,
            ids,
            storage_root=self.settings.storage_dir,
            calling_aet=self.settings.ae_title,
            timeout_s=self.timeout_s,
            policy=self.policy,
        )

    def sleep_seconds(self) -> float:
        due = next_due(self.factory)
        if due is None:
            return self.poll_s
        return max(0.0, min(self.poll_s, (due - datetime.now(UTC)).total_seconds()))

    def run_forever(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        recover_interrupted(self.factory)
        log.info("exporter running (poll %.1fs, max %d attempts)", self.poll_s, self.policy.max_attempts)
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:  # a database hiccup must not end the role; it is logged and retried
                log.exception("exporter pass failed")
            _WAKE.wait(self.sleep_seconds())
            _WAKE.clear()


def run_exporter(settings: Any, stop: threading.Event | None = None) -> None:
    """The ``dicom-agent exporter`` role (also started by ``serve``)."""
    Exporter(settings).run_forever(stop)


def deliver(export_id: int, settings: Any) -> ExportState | None:
    """Sends one row now if it is pending and due (for a Celery task); None when another process has it."""
    exporter = Exporter(settings)
    ids = claim(exporter.factory, [export_id], utcnow())
    if not ids:
        return None
    return exporter.send(ids).get(export_id)
