"""Runs the Alembic migrations in ``migrations/`` against a database URL (``dicom-agent db upgrade``)."""

from __future__ import annotations

import logging

from alembic import command
from alembic.config import Config

from dicom_agent.config import PROJECT_ROOT, get_settings


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", (url or get_settings().database_url).replace("%", "%%"))
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # one INFO line per plugin at start
    command.upgrade(alembic_config(url), revision)


def revision(message: str, url: str | None = None) -> None:
    """Autogenerates a new revision from the ORM (developers only)."""
    command.revision(alembic_config(url), message=message, autogenerate=True)
