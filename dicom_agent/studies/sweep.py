"""The study sweeper: marks quiet studies complete, working from the database only.

Because it reads nothing but the index, studies half-received before a crash or restart are completed
after it, never dropped. The state change is a compare-and-set (``WHERE state = 'receiving' AND
last_received_at = <what we saw>``), so an instance arriving meanwhile wins, and several sweepers (one per
SCP host) complete a study once; the completion event is emitted only by the sweeper whose update won,
after its commit.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from sqlalchemy import select, update

from dicom_agent import metrics
from dicom_agent.config import Settings
from dicom_agent.db.orm import Study
from dicom_agent.db.session import session_factory
from dicom_agent.db.states import StudyState, check_study
from dicom_agent.studies.events import emit_study_completed
from dicom_agent.studies.stability import is_complete, shortest_quiet_period

log = logging.getLogger(__name__)


def sweep_once(settings: Settings, now: datetime | None = None) -> list[int]:
    """Completes every receiving study whose quiet period has passed; returns their ids."""
    now = now or datetime.now(UTC)
    horizon = now - shortest_quiet_period(settings)
    completed: list[int] = []
    with session_factory(settings.database_url)() as session:
        candidates = session.execute(
            select(Study.id, Study.modalities, Study.last_received_at, Study.first_received_at).where(
                Study.state == StudyState.RECEIVING.value,
                Study.last_received_at <= horizon,
                Study.instance_count > 0,
            )
        ).all()
        for study_id, modalities, last_received_at, first_received_at in candidates:
            if not is_complete(settings, modalities, last_received_at, now):
                continue
            new_state = check_study(StudyState.RECEIVING, StudyState.COMPLETE)
            won = session.execute(  # type: ignore[attr-defined]
                update(Study)
                .where(
                    Study.id == study_id,
                    Study.state == StudyState.RECEIVING.value,
                    Study.last_received_at == last_received_at,
                )
                .values(state=new_state.value, completed_at=now)
            ).rowcount
            session.commit()
            if won:
                completed.append(study_id)
                log.info("study %s complete", study_id)
                if first_received_at is not None:
                    metrics.observe_study_completed(first_received_at)
                emit_study_completed(study_id)
    return completed


class Sweeper:
    """Runs ``sweep_once`` in a background thread every ``interval`` seconds until ``stop()``."""

    def __init__(self, settings: Settings, interval: float | None = None) -> None:
        self.settings = settings
        quiet = shortest_quiet_period(settings).total_seconds()
        self.interval = interval if interval is not None else min(max(quiet / 4, 0.2), 5.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dicom-agent-sweeper", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sweep_once(self.settings)
            except Exception:  # the database may be away for a moment; try again next round
                log.exception("study sweep failed")
            self._stop.wait(self.interval)
