"""Small helpers of the outbox tests: a study row, test settings, and the CT results published to destinations."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from pydicom import Dataset
from sqlalchemy import select

from dicom_agent.config import Settings, get_settings
from dicom_agent.db.orm import Export, ResultObject, Study
from dicom_agent.db.session import session_scope
from dicom_agent.export.deliveries import publish_results
from dicom_agent.export.destinations import Destination
from tests.results import findings as F
from tests.results import sources as S


def fast_settings(monkeypatch: pytest.MonkeyPatch, **env: object) -> Settings:
    """Short retries and timeouts so fault tests take seconds."""
    values = {
        "EXPORT_RETRY_BASE_S": 0.05,
        "EXPORT_RETRY_CAP_S": 0.2,
        "EXPORT_MAX_ATTEMPTS": 3,
        "DIMSE_TIMEOUT_S": 2,
        "ACSE_TIMEOUT_S": 2,
        "NETWORK_TIMEOUT_S": 2,
        **env,
    }
    for key, value in values.items():
        monkeypatch.setenv(f"DICOM_AGENT_{key}", str(value))
    get_settings.cache_clear()
    return get_settings()


def add_study(url: str, sources: Sequence[Dataset]) -> int:
    with session_scope(url) as s:
        study = Study(study_instance_uid=str(sources[0].StudyInstanceUID), modalities="CT")
        s.add(study)
        s.flush()
        return study.id


def publish_ct(settings: Settings, destinations: list[str], revision: int = 0) -> tuple[int, list[Dataset]]:
    sources = S.ct_series()
    study_id = add_study(settings.database_url, sources)
    publish_results(
        F.ct_findings(sources),
        sources,
        settings=settings,
        study_id=study_id,
        revision=revision,
        destinations=[Destination.parse(d) for d in destinations],
    )
    return study_id, sources


def export_rows(url: str) -> list[tuple[int, str, str, str, int, str | None]]:
    """(id, kind, destination, state, attempts, last_error) per row."""
    with session_scope(url) as s:
        rows = s.execute(
            select(Export.id, ResultObject.kind, Export.destination, Export.state, Export.attempts, Export.last_error)
            .join(ResultObject, Export.result_object_id == ResultObject.id)
            .order_by(Export.id)
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]
