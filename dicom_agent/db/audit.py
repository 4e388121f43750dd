"""Audit trail: who or what touched which study (``audit_event``), written in the caller's transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from dicom_agent.db.orm import AuditEvent


def record(
    session: Session,
    actor: str,
    action: str,
    study_id: int | None,
    detail: dict[str, Any] | None = None,
    security: bool = False,
) -> None:
    """Adds one event; ``actor`` is ``user:<name>``, ``scp``, ``router``, ``worker`` or ``exporter``."""
    session.add(AuditEvent(actor=actor, action=action, study_id=study_id, detail=detail, security=security))
