"""Web test fixtures: a migrated database, the app on it, a client, and a session to create rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from dicom_agent.config import Settings, get_settings
from dicom_agent.db.session import engine_for
from dicom_agent.web.app import create_app
from dicom_agent.web.routes.auth import throttle
from tests.web.factories import add_user


@pytest.fixture
def web_settings(database_url: str, settings_env: Path) -> Settings:
    (settings_env / "storage").mkdir(exist_ok=True)
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture
def db(web_settings: Settings) -> Iterator[Session]:
    session = sessionmaker(bind=engine_for(web_settings.database_url), expire_on_commit=False)()
    yield session
    session.close()


@pytest.fixture
def client(web_settings: Settings) -> Iterator[TestClient]:
    throttle._failures.clear()
    with TestClient(create_app(web_settings)) as c:
        yield c


@pytest.fixture
def users(db: Session) -> dict[str, int]:
    rad = add_user(db, "rad", "radiologist", full_name="Dr. Ada Rad", organization="General Hospital")
    adm = add_user(db, "adm", "admin")
    db.commit()
    return {"rad": rad.id, "adm": adm.id}
