"""Admin pages: outbox with dead letters and replay, routing rule test, model/worker status, audit log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_agent.config import Settings
from dicom_agent.db.orm import AuditEvent, Export
from tests.web.factories import login
from tests.web.scenario import Seeded, seed


@pytest.fixture
def ct(db: Session, web_settings: Settings, users: dict[str, int]) -> Seeded:
    return seed(db, web_settings.storage_dir, "ct")


@pytest.fixture
def exports(db: Session, ct: Seeded) -> dict[str, int]:
    dead = Export(
        result_object_id=ct.objects["sr"].id,
        destination="PACS@127.0.0.1:104",
        state="dead",
        attempts=8,
        last_error="association rejected <b>twice</b>",
    )
    pending = Export(result_object_id=ct.objects["seg"].id, destination="PACS@127.0.0.1:104", state="pending")
    db.add_all([dead, pending])
    db.commit()
    return {"dead": dead.id, "pending": pending.id}


def test_outbox_lists_dead_letters(client: TestClient, exports: dict[str, int]) -> None:
    login(client, "adm")
    html = client.get("/admin/exports?state=dead").text
    assert f'id="export-{exports["dead"]}"' in html and f'id="export-{exports["pending"]}"' not in html
    assert "association rejected &lt;b&gt;twice&lt;/b&gt;" in html
    assert "Replay" in html
    everything = client.get("/admin/exports").text
    assert f'id="export-{exports["pending"]}"' in everything
    home = client.get("/admin").text
    assert "Export outbox" in home and "rad" in home


def test_replay_moves_dead_to_pending(client: TestClient, exports: dict[str, int], db: Session) -> None:
    token = login(client, "adm")
    r = client.post(f"/admin/exports/{exports['dead']}/replay", data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303
    db.expire_all()
    row = db.get(Export, exports["dead"])
    assert row is not None and row.state == "pending" and row.attempts == 0
    event = db.scalar(select(AuditEvent).where(AuditEvent.action == "export_replayed"))
    assert event is not None and event.actor == "user:adm" and event.detail["from"] == "dead"
    # pending cannot be "replayed"; an unknown row is 404; no CSRF is 403
    assert client.post(f"/admin/exports/{exports['pending']}/replay", data={"csrf_token": token}).status_code == 409
    assert client.post("/admin/exports/999999/replay", data={"csrf_token": token}).status_code == 404
    assert client.post(f"/admin/exports/{exports['dead']}/replay").status_code == 403


def test_routing_rule_test_on_hand_facts_and_on_a_stored_study(client: TestClient, ct: Seeded) -> None:
    token = login(client, "adm")
    assert "Routing rule test" in client.get("/admin/routing").text
    r = client.post(
        "/admin/routing",
        data={"csrf_token": token, "modality": "CT", "body_part": "CHEST", "instances": "120", "description": "CT"},
    )
    assert r.status_code == 200 and 'id="routing-result"' in r.text
    assert "&#34;action&#34;" in r.text or "&quot;action&quot;" in r.text or '"action"' in r.text
    stored = client.post("/admin/routing", data={"csrf_token": token, "study_id": str(ct.study.id)})
    assert stored.status_code == 200 and "trace" in stored.text
    missing = client.post("/admin/routing", data={"csrf_token": token, "study_id": "999999"})
    assert "not found" in missing.text


def test_status_shows_manifest_and_jobs(client: TestClient, ct: Seeded, web_settings: Settings, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"name": "unified-test", "version": "9.9.9"}))
    client.app.state.settings = web_settings.model_copy(update={"model_dir": bundle})  # type: ignore[attr-defined]
    login(client, "adm")
    html = client.get("/admin/status").text
    assert "unified-test" in html and "9.9.9" in html
    assert ct.job.model_name in html and "succeeded" in html


def test_audit_log_lists_events(client: TestClient, ct: Seeded, db: Session) -> None:
    db.add(AuditEvent(actor="scp", action="conflicting_resend", security=True, detail={"note": "<x>"}))
    db.commit()
    login(client, "adm")
    client.get(f"/studies/{ct.study.id}")
    html = client.get("/admin/audit").text
    assert "study_viewed" in html and "login" in html and "conflicting_resend" in html
    sec = client.get("/admin/audit?security=true").text
    assert "conflicting_resend" in sec and "study_viewed" not in sec
    assert "<x>" not in html
