"""Sign: a new VERIFIED / FINAL SR in a new series, predecessor → the draft, rejected findings left out,
the reviewed text in both languages, queued in the outbox for every destination."""

from __future__ import annotations

import pydicom
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_agent.config import Settings
from dicom_agent.db.orm import AuditEvent, Export, ResultObject, Review, Study
from dicom_agent.encode.signed import draft_groups
from tests.web.factories import login
from tests.web.scenario import Seeded, seed

DESTS = "PACS@127.0.0.1:11999,ARCHIVE@127.0.0.1:11998"


@pytest.fixture
def ct(db: Session, web_settings: Settings, users: dict[str, int]) -> Seeded:
    return seed(db, web_settings.storage_dir, "ct")


@pytest.fixture
def sign_client(client: TestClient, web_settings: Settings) -> TestClient:
    client.app.state.settings = web_settings.model_copy(update={"destinations": DESTS.split(",")})  # type: ignore[attr-defined]
    return client


def texts(ds: pydicom.Dataset) -> dict[str, str]:
    """Impression TEXT items by language (zh when tagged zh-CN)."""
    out: dict[str, str] = {}

    def walk(items):  # type: ignore[no-untyped-def]
        for item in items or []:
            names = item.get("ConceptNameCodeSequence") or []
            if item.get("ValueType") == "TEXT" and names and names[0].CodeValue == "121073":
                lang = "en"
                for child in item.get("ContentSequence", []):
                    code = child.get("ConceptCodeSequence") or []
                    if code and str(code[0].CodeValue).startswith("zh"):
                        lang = "zh"
                out[lang] = str(item.TextValue)
            walk(item.get("ContentSequence"))

    walk(ds.ContentSequence)
    return out


def test_sign_builds_a_verified_sr_and_queues_it(
    sign_client: TestClient, ct: Seeded, db: Session, web_settings: Settings
) -> None:
    client = sign_client
    token = login(client, "rad")
    emphysema = ct.findings["emphysema"].id
    client.post(
        f"/studies/{ct.study.id}/findings/{emphysema}/decision", data={"csrf_token": token, "decision": "reject"}
    )
    client.post(
        f"/studies/{ct.study.id}/findings/{ct.findings['nodule'].id}/decision",
        data={"csrf_token": token, "decision": "accept"},
    )
    r = client.post(
        f"/studies/{ct.study.id}/sign",
        data={
            "csrf_token": token,
            "report_en": "Right upper lobe nodule, 8 mm. Follow-up CT in 3 months.",
            "report_zh": "右肺上叶结节，约8毫米。建议3个月后复查CT。",
            "impression": "",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303 and "error" not in r.headers["location"], r.headers["location"]
    db.expire_all()
    review = db.scalar(select(Review).where(Review.study_id == ct.study.id))
    assert review is not None and review.state == "signed" and review.signed_at is not None
    signed_row = db.get(ResultObject, review.signed_object_id)
    assert signed_row is not None and signed_row.kind == "sr_signed" and signed_row.job_id == ct.job.id
    study = db.get(Study, ct.study.id)
    assert study is not None and study.state == "signed"

    ds = pydicom.dcmread(web_settings.storage_dir / signed_row.path)
    draft = ct.objects["sr"]
    assert ds.CompletionFlag == "COMPLETE" and ds.VerificationFlag == "VERIFIED" and ds.PreliminaryFlag == "FINAL"
    observer = ds.VerifyingObserverSequence[0]
    assert str(observer.VerifyingObserverName) == "Rad^Ada^^Dr."
    assert observer.VerifyingOrganization == "General Hospital" and observer.VerificationDateTime
    predecessor = ds.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == draft.sop_instance_uid
    assert ds.SeriesInstanceUID != draft.series_instance_uid and ds.SOPInstanceUID != draft.sop_instance_uid
    assert texts(ds) == {
        "en": "Right upper lobe nodule, 8 mm. Follow-up CT in 3 months.",
        "zh": "右肺上叶结节，约8毫米。建议3个月后复查CT。",
    }
    found = {g.finding.value for g in draft_groups(ds)}
    assert "27925004" in found  # the accepted nodule stays
    assert "87433001" not in found  # the rejected emphysema is left out
    assert "87433001" in {g.finding.value for g in draft_groups(pydicom.dcmread(web_settings.storage_dir / draft.path))}

    exports = db.scalars(select(Export).where(Export.result_object_id == signed_row.id)).all()
    assert sorted(e.destination for e in exports) == sorted(DESTS.split(",")) and {e.state for e in exports} == {
        "pending"
    }
    event = db.scalar(select(AuditEvent).where(AuditEvent.action == "report_signed"))
    assert event is not None and event.detail["predecessor"] == draft.sop_instance_uid
    assert event.detail["left_out"] == [emphysema]
    html = client.get(f"/studies/{ct.study.id}").text
    assert "Signed by Dr. Ada Rad" in html and 'name="report_zh"' not in html
    # signed is final: no second signature, no further decisions
    again = client.post(f"/studies/{ct.study.id}/sign", data={"csrf_token": token}, follow_redirects=False)
    assert again.headers["location"].endswith("error=review_closed")
    assert "state-signed" in client.get("/?state=signed").text


@pytest.mark.parametrize(
    ("display", "pn"),
    [("Dr. Ada Rad", "Rad^Ada^^Dr."), ("Ada B. Rad", "Rad^Ada^B."), ("王丽", "王丽^"), ("Rad^Ada", "Rad^Ada")],
)
def test_person_name(display: str, pn: str) -> None:
    from dicom_agent.web.signing import person_name

    assert person_name(display) == pn


def test_sign_without_a_draft_fails_cleanly(sign_client: TestClient, ct: Seeded, db: Session) -> None:
    token = login(sign_client, "rad")
    draft = db.get(ResultObject, ct.objects["sr"].id)
    assert draft is not None
    draft.kind = "sr_old"  # no draft SR for this job any more
    db.commit()
    r = sign_client.post(
        f"/studies/{ct.study.id}/sign",
        data={"csrf_token": token, "report_en": "kept", "report_zh": "保留"},
        follow_redirects=False,
    )
    assert r.headers["location"].endswith("error=sign_failed")
    db.expire_all()
    review = db.scalar(select(Review).where(Review.study_id == ct.study.id))
    assert review is not None and review.state == "in_review" and review.report_zh == "保留"
    assert db.scalar(select(Export)) is None


def test_rejecting_one_of_two_same_code_findings_drops_only_its_boxes(
    sign_client: TestClient, db: Session, web_settings: Settings, users: dict[str, int], tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """The committed CXR sample has two nodules (same SNOMED code): rejecting one keeps the other's box group."""
    from tests.web.demo import sample_dir, seed_phantom

    demo = seed_phantom(db, web_settings.storage_dir, sample_dir("cxr", tmp_path))
    nodules = [f for f in demo.findings if f.label == "nodule"]
    assert len(nodules) == 2
    token = login(sign_client, "rad")
    sign_client.post(
        f"/studies/{demo.study.id}/findings/{nodules[0].id}/decision", data={"csrf_token": token, "decision": "reject"}
    )
    r = sign_client.post(f"/studies/{demo.study.id}/sign", data={"csrf_token": token}, follow_redirects=False)
    assert "error" not in r.headers["location"]
    db.expire_all()
    review = db.scalar(select(Review).where(Review.study_id == demo.study.id))
    assert review is not None and review.state == "signed"
    signed = pydicom.dcmread(web_settings.storage_dir / db.get(ResultObject, review.signed_object_id).path)  # type: ignore[union-attr]
    draft = pydicom.dcmread(web_settings.storage_dir / demo.draft.path)
    from dicom_agent.web.signing import _group_boxes

    def boxes(ds: pydicom.Dataset) -> set[tuple[float, ...]]:
        return {tuple(round(v, 1) for v in bbox) for _uid, _sop, bbox in _group_boxes(ds)}

    kept, dropped = (tuple(float(v) for v in n.boxes[0]["xy"]) for n in (nodules[1], nodules[0]))  # type: ignore[index]
    assert kept in boxes(draft) and dropped in boxes(draft)
    assert kept in boxes(signed) and dropped not in boxes(signed)
    # the draft's own (AI) report is signed when the radiologist did not edit it
    assert texts(signed)["en"] == texts(draft)["en"]


def test_a_review_signed_meanwhile_is_not_signed_twice(
    ct: Seeded, db: Session, web_settings: Settings, users: dict[str, int]
) -> None:
    """Two radiologists press Sign on the same study: the second finds the review already claimed."""
    from dicom_agent.db.orm import User
    from dicom_agent.db.session import engine_for
    from dicom_agent.web.review_service import ReviewClosedError
    from dicom_agent.web.signing import sign_review

    review = Review(study_id=ct.study.id, job_id=ct.job.id, state="in_review", decisions={})
    db.add(review)
    db.commit()
    user = db.get(User, users["rad"])
    other = Session(engine_for(web_settings.database_url), expire_on_commit=False)
    stale = other.get(Review, review.id)  # the second request loaded the review while it was still in review
    assert stale is not None and user is not None
    sign_review(db, web_settings, review, user)
    with pytest.raises(ReviewClosedError):
        sign_review(other, web_settings, stale, other.get(User, users["rad"]))  # type: ignore[arg-type]
    other.rollback()
    other.close()
    db.expire_all()
    assert len(db.scalars(select(ResultObject).where(ResultObject.kind == "sr_signed")).all()) == 1
