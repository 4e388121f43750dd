"""From a model run to durable deliveries: encode per destination profile, store, queue, commit, wake.

This is what the pipeline calls after inference (and the web after signing, with ``objects`` already built).
Nothing is sent here: the rows are committed first and the exporter sends them (style.md 7).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydicom import Dataset

from dicom_agent.db.session import session_scope
from dicom_agent.encode.objects import EncodedObject
from dicom_agent.encode.study import encode_study
from dicom_agent.export import outbox
from dicom_agent.export.destinations import Destination, configured_destinations
from dicom_agent.inference.types import StudyFindings


def publish_results(
    findings: StudyFindings,
    sources: list[Dataset],
    *,
    settings: Any,
    study_id: int,
    job_id: int | None = None,
    revision: int = 0,
    created_at: datetime | None = None,
    destinations: Sequence[Destination] | None = None,
) -> list[outbox.Stored]:
    """Encodes the run once per profile in use (``full`` is always stored, for review), stores and queues it."""
    targets = list(destinations) if destinations is not None else configured_destinations(settings)
    profiles = dict.fromkeys(["full", *(d.profile for d in targets)])
    manufacturer = settings.manufacturer
    stored: list[outbox.Stored] = []
    with session_scope(settings.database_url) as session:
        for profile in profiles:
            objects = encode_study(
                findings, sources, profile=profile, revision=revision, manufacturer=manufacturer, created_at=created_at
            )
            addresses = [d.address for d in targets if d.profile == profile]
            stored.extend(
                outbox.enqueue(session, settings.storage_dir, objects, addresses, study_id=study_id, job_id=job_id)
            )
    _wake()
    return stored


def publish_objects(
    objects: Sequence[EncodedObject],
    *,
    settings: Any,
    study_id: int,
    job_id: int | None = None,
    destinations: Sequence[Destination] | None = None,
) -> list[outbox.Stored]:
    """Stores already encoded objects (e.g. a signed SR) and queues them for every destination."""
    targets = list(destinations) if destinations is not None else configured_destinations(settings)
    with session_scope(settings.database_url) as session:
        stored = outbox.enqueue(
            session, settings.storage_dir, objects, [d.address for d in targets], study_id=study_id, job_id=job_id
        )
    _wake()
    return stored


def _wake() -> None:
    from dicom_agent.export.runner import wake

    wake()
