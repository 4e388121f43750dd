"""Review decisions, report edits, rejecting the whole result: what is stored, who did it, what is refused."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_agent.config import Settings
from dicom_agent.db.orm import AuditEvent, Export, Review
from tests.web.factories import login
from tests.web.scenario import Seeded, seed


@pytest.fixture
def ct(db: Session, web_settings: Settings, users: dict[str, int]) -> Seeded:
    return seed(db, web_settings.storage_dir, "ct")


def review_of(db: Session, study_id: int) -> Review:
    db.expire_all()
    review = db.scalar(select(Review).where(Review.study_id == study_id))
    assert review is not None
    return review


def decide(client: TestClient, token: str, s: Seeded, which: str, decision: str, **extra: str) -> int:
    fid = s.findings[which].id
    r = client.post(
        f"/studies/{s.study.id}/findings/{fid}/decision",
        data={"csrf_token": token, "decision": decision, **extra},
        follow_redirects=False,
    )
    return r.status_code


def test_decisions_are_stored_with_who_when_and_history(
    client: TestClient, ct: Seeded, db: Session, users: dict[str, int]
) -> None:
    token = login(client, "rad")
    assert decide(client, token, ct, "nodule", "accept") == 303
    assert decide(client, token, ct, "emphysema", "reject") == 303
    assert decide(client, token, ct, "nodule", "edit", label="mass", location="right middle lobe") == 303
    review = review_of(db, ct.study.id)
    assert review.state == "in_review" and review.user_id == users["rad"]
    nodule = review.decisions[str(ct.findings["nodule"].id)]
    assert nodule["decision"] == "edit" and nodule["label"] == "mass" and nodule["location"] == "right middle lobe"
    assert nodule["by"] == "rad" and nodule["at"] and nodule["ai_label"] == "nodule"
    assert nodule["ai_probability"] == pytest.approx(0.87)
    assert [h["decision"] for h in nodule["history"]] == ["accept"]
    assert review.decisions[str(ct.findings["emphysema"].id)]["decision"] == "reject"
    actions = db.scalars(select(AuditEvent.action).where(AuditEvent.study_id == ct.study.id)).all()
    assert actions.count("finding_decision") == 3 and "review_opened" in actions
    events = db.scalars(select(AuditEvent).where(AuditEvent.action == "finding_decision").order_by(AuditEvent.id)).all()
    assert events[-1].actor == "user:rad" and events[-1].detail["previous"]["decision"] == "accept"
    html = client.get(f"/studies/{ct.study.id}").text
    assert "→ mass" in html and "right middle lobe" in html and "is-rejected" in html
    # the worklist now shows the study as in review
    assert "state-in_review" in client.get("/").text


def test_invalid_decisions_are_refused(client: TestClient, ct: Seeded, db: Session, web_settings: Settings) -> None:
    token = login(client, "rad")
    assert decide(client, token, ct, "nodule", "delete-everything") == 422
    assert decide(client, token, ct, "nodule", "edit", label="x" * 65) == 422
    other = seed(db, web_settings.storage_dir, "dx", patient=("Other^P", "OP"))
    fid = other.findings["pneumothorax"].id
    r = client.post(
        f"/studies/{ct.study.id}/findings/{fid}/decision",
        data={"csrf_token": token, "decision": "reject"},
        follow_redirects=False,
    )
    assert r.status_code == 404  # a finding of another study's result


def test_report_edits_are_stored_and_audited(client: TestClient, ct: Seeded, db: Session) -> None:
    token = login(client, "rad")
    r = client.post(
        f"/studies/{ct.study.id}/report",
        data={"csrf_token": token, "report_en": "Edited EN.", "report_zh": "修改后的报告。", "impression": "F/u."},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"].endswith("saved=1")
    review = review_of(db, ct.study.id)
    assert (review.report_en, review.report_zh, review.impression) == ("Edited EN.", "修改后的报告。", "F/u.")
    event = db.scalar(select(AuditEvent).where(AuditEvent.action == "report_edited"))
    assert event is not None and set(event.detail["fields"]) == {"report_en", "report_zh", "impression"}
    html = client.get(f"/studies/{ct.study.id}?saved=1").text
    assert "修改后的报告。" in html and "Saved." in html


def test_reject_whole_result_sends_nothing_and_closes_the_review(client: TestClient, ct: Seeded, db: Session) -> None:
    token = login(client, "rad")
    assert client.post(f"/studies/{ct.study.id}/reject", data={"csrf_token": token}).status_code == 422  # reason
    r = client.post(
        f"/studies/{ct.study.id}/reject",
        data={"csrf_token": token, "reason": "motion artefact, AI result unusable"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    review = review_of(db, ct.study.id)
    assert review.state == "rejected" and review.reject_reason == "motion artefact, AI result unusable"
    assert review.signed_object_id is None
    assert db.scalar(select(Export)) is None
    event = db.scalar(select(AuditEvent).where(AuditEvent.action == "ai_result_rejected"))
    assert event is not None and event.detail["reason"].startswith("motion")
    html = client.get(f"/studies/{ct.study.id}").text
    assert "motion artefact" in html and 'name="report_en"' not in html
    # a closed review takes no more changes
    assert decide(client, token, ct, "nodule", "accept") == 303
    r = client.post(f"/studies/{ct.study.id}/sign", data={"csrf_token": token}, follow_redirects=False)
    assert r.headers["location"].endswith("error=review_closed")
    assert review_of(db, ct.study.id).state == "rejected"
    assert "state-rejected" in client.get("/?state=rejected").text


def test_admin_may_review_but_anonymous_may_not(client: TestClient, ct: Seeded) -> None:
    token = login(client, "adm")
    assert decide(client, token, ct, "nodule", "accept") == 303


def test_a_decision_is_committed_before_its_redirect_is_sent(
    web_settings: Settings, ct: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The browser follows "saved=1" at once: the study page it loads must already hold the decision, and a commit
    that fails must not have answered "saved". So the request's transaction ends before the response starts (a
    yield dependency's default scope ends it after the response is sent: the review in a real browser once loaded
    the page before the decision was committed)."""
    from collections.abc import Awaitable, Callable, MutableMapping
    from typing import Any

    from dicom_agent.web.app import create_app
    from dicom_agent.web.routes.auth import throttle

    events: list[str] = []
    real_commit = Session.commit

    def commit(self: Session) -> None:
        real_commit(self)
        events.append("commit")

    monkeypatch.setattr(Session, "commit", commit)
    app = create_app(web_settings)
    Message = MutableMapping[str, Any]

    async def recording(
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                events.append(f"response {message['status']} {scope['method']} {scope['path']}")
            await send(message)

        await app(scope, receive, send_and_note)

    throttle._failures.clear()
    with TestClient(recording) as client:
        token = login(client, "rad")
        events.clear()
        assert decide(client, token, ct, "emphysema", "reject") == 303
    fid = ct.findings["emphysema"].id
    answered = events.index(f"response 303 POST /studies/{ct.study.id}/findings/{fid}/decision")
    assert "commit" in events[:answered], events
