"""When is a study complete? DICOM has no "end of study" message, so a study is complete once no new
instance has arrived for its quiet period (``STUDY_QUIET_SECONDS``, per-modality overrides: the longest
override among its modalities wins). Pure functions, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dicom_agent.config import Settings


def modalities_of(text: str) -> set[str]:
    """The study row keeps modalities as ``CT,PT``."""
    return {m for m in (part.strip().upper() for part in text.split(",")) if m}


def as_utc(moment: datetime) -> datetime:
    """SQLite returns naive datetimes; every time the node writes is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def quiet_period(settings: Settings, modalities: str) -> timedelta:
    return timedelta(seconds=settings.quiet_seconds_for(modalities_of(modalities)))


def is_complete(settings: Settings, modalities: str, last_received_at: datetime, now: datetime) -> bool:
    return as_utc(now) - as_utc(last_received_at) >= quiet_period(settings, modalities)


def shortest_quiet_period(settings: Settings) -> timedelta:
    """No study can be complete before this; bounds the sweeper's query."""
    values = [settings.study_quiet_seconds, *settings.study_quiet_overrides.values()]
    return timedelta(seconds=min(values))
