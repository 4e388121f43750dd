"""Shared fixtures: isolated settings per test, database backends, real peers."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import Orthanc, free_port, have_dcmtk, have_orthanc

# highdicom writes non-Latin text as '??' with only a UserWarning when the charset is wrong: make it fatal.
warnings.filterwarnings("error", category=UserWarning, module="highdicom")

TEST_PG_URL = os.environ.get("DICOM_AGENT_TEST_DATABASE_URL")


def _reset_caches() -> None:
    from dicom_agent.config import get_settings
    from dicom_agent.db.session import engine_for

    get_settings.cache_clear()
    engine_for.cache_clear()


@pytest.fixture
def settings_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Points every setting at the test's own temporary directory (SQLite, storage, broker)."""
    monkeypatch.setenv("DICOM_AGENT_STORAGE_DIR", str(tmp_path / "storage"))
    monkeypatch.setenv("DICOM_AGENT_DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite'}")
    monkeypatch.setenv("DICOM_AGENT_BROKER_URL", f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}")
    monkeypatch.setenv("DICOM_AGENT_MIN_FREE_BYTES", "0")
    monkeypatch.setenv("DICOM_AGENT_DICOM_HOST", "127.0.0.1")
    monkeypatch.setenv("DICOM_AGENT_DICOM_PORT", str(free_port()))
    monkeypatch.setenv("DICOM_AGENT_WEB_PORT", str(free_port()))
    _reset_caches()
    yield tmp_path
    _reset_caches()


def _database_params() -> list[object]:
    params: list[object] = ["sqlite"]
    params.append(
        pytest.param(
            "postgresql", marks=pytest.mark.skipif(not TEST_PG_URL, reason="DICOM_AGENT_TEST_DATABASE_URL unset")
        )
    )
    return params


@pytest.fixture(params=_database_params())
def database_url(request: pytest.FixtureRequest, settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A migrated, empty database: SQLite in the test's directory, or a fresh schema on PostgreSQL."""
    from dicom_agent.db.migrate import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{settings_env / 'db.sqlite'}"
        upgrade(url)
        yield url
        return
    import uuid

    import sqlalchemy as sa

    assert TEST_PG_URL is not None
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(TEST_PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in TEST_PG_URL else "?"
    url = f"{TEST_PG_URL}{sep}options=-csearch_path%3D{schema}"
    monkeypatch.setenv("DICOM_AGENT_DATABASE_URL", url)
    _reset_caches()
    upgrade(url)
    yield url
    _reset_caches()
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


REQUIRE_PEERS = os.environ.get("DICOM_AGENT_REQUIRE_PEERS") == "1"


def skip_or_fail(reason: str) -> None:
    """A missing peer skips a developer's run but fails CI, where scripts/setup.sh --peers installs it."""
    if REQUIRE_PEERS:
        pytest.fail(f"required peer missing: {reason}")
    pytest.skip(reason)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    if not have_orthanc():
        skip_or_fail("Orthanc not installed (scripts/setup.sh --peers)")
    peer = Orthanc(tmp_path / "orthanc").start()
    yield peer
    peer.stop()


@pytest.fixture
def dcmtk_tools() -> None:
    if not have_dcmtk():
        skip_or_fail("dcmtk not installed (scripts/setup.sh --peers)")
