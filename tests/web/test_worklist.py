"""Worklist ordering, filters, paging, hostile input and the refresh endpoints."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from dicom_agent.db.orm import Review, Study
from tests.web.factories import add_finding, add_job, add_study, login


def order(html: str) -> list[int]:
    return [int(x) for x in re.findall(r'data-href="/studies/(\d+)"', html)]


def make(db: Session, name: str, minutes_ago: int, **kw) -> Study:  # type: ignore[no-untyped-def]
    critical = kw.pop("critical", None)
    study = add_study(db, name=name, received=datetime.now(UTC) - timedelta(minutes=minutes_ago), **kw)
    job = add_job(db, study)
    if critical is not None:
        add_finding(db, job, "pneumothorax" if critical else "nodule", critical=critical, probability=0.9)
    return study


def test_critical_then_stat_then_oldest_first(client: TestClient, users: dict[str, int], db: Session) -> None:
    routine_old = make(db, "Routine^Old", 300)
    routine_new = make(db, "Routine^New", 10)
    stat = make(db, "Stat^Only", 5, priority="stat", rank=10)
    critical_new = make(db, "Critical^New", 1, critical=True)
    critical_stat = make(db, "Critical^Stat", 2, critical=True, priority="stat", rank=10)
    noncritical_finding = make(db, "Nodule^Only", 400, critical=False)
    # a critical finding of a superseded job does not count
    old = add_study(db, name="Superseded^Critical", received=datetime.now(UTC) - timedelta(minutes=500))
    add_finding(db, add_job(db, old, state="superseded"), "pneumothorax", critical=True)
    add_job(db, old, revision=1)
    db.commit()
    login(client, "rad")
    got = order(client.get("/").text)
    assert got == [
        critical_stat.id,
        critical_new.id,
        stat.id,
        old.id,
        noncritical_finding.id,
        routine_old.id,
        routine_new.id,
    ]


def test_columns_and_badges(client: TestClient, users: dict[str, int], db: Session) -> None:
    study = make(db, "Zhang^San=张^三", 90, critical=True, modality="CR", accession="ACC-9")
    db.commit()
    login(client, "rad")
    html = client.get("/").text
    assert "Zhang, San (张三)" in html and "ACC-9" in html
    assert "badge-critical" in html and "Pneumothorax" in html and "90%" in html
    assert "1 h 30 min" in html
    assert f'data-href="/studies/{study.id}"' in html
    zh = client.get("/lang/zh?next=/").text
    assert "危急" in zh and "新" in zh


def test_only_studies_with_ai_results_are_listed(client: TestClient, users: dict[str, int], db: Session) -> None:
    listed = make(db, "Has^Result", 5)
    hidden = add_study(db, name="Still^Receiving", state="receiving")
    complete = add_study(db, name="Not^Routed", state="ignored")
    db.commit()
    login(client, "rad")
    got = order(client.get("/?state=all").text)
    assert listed.id in got and hidden.id not in got and complete.id not in got


def test_review_state_filter(client: TestClient, users: dict[str, int], db: Session) -> None:
    new = make(db, "A^New", 5)
    in_review = make(db, "B^Review", 6)
    signed = make(db, "C^Signed", 7)
    rejected = make(db, "D^Rejected", 8)
    for study, state in ((in_review, "in_review"), (signed, "signed"), (rejected, "rejected")):
        db.add(Review(study_id=study.id, job_id=study.jobs[0].id, state=state))
    db.commit()
    login(client, "rad")
    assert set(order(client.get("/").text)) == {new.id, in_review.id}  # default: open work
    assert set(order(client.get("/?state=all").text)) == {new.id, in_review.id, signed.id, rejected.id}
    for state, study in (("new", new), ("in_review", in_review), ("signed", signed), ("rejected", rejected)):
        assert order(client.get(f"/?state={state}").text) == [study.id], state
    assert client.get("/?state=bogus").status_code == 422


def test_modality_date_and_text_filters(client: TestClient, users: dict[str, int], db: Session) -> None:
    ct = make(db, "Ct^Patient", 5, modality="CT", study_date="20260110", description="CT chest")
    cr = make(db, "Cr^Patient", 6, modality="CR", study_date="20260120", patient_id="MRN-77")
    pet = make(db, "Pet^Patient", 7, modality="CT\\PT", study_date="20260130")
    db.commit()
    login(client, "rad")
    assert set(order(client.get("/?modality=CT").text)) == {ct.id, pet.id}
    assert order(client.get("/?modality=PT").text) == [pet.id]
    assert set(order(client.get("/?date_from=2026-01-15").text)) == {cr.id, pet.id}
    assert order(client.get("/?date_from=2026-01-15&date_to=2026-01-25").text) == [cr.id]
    assert order(client.get("/?q=mrn-77").text) == [cr.id]
    assert order(client.get("/?q=ct chest").text) == [ct.id]
    assert order(client.get("/?q=pet^pat").text) == [pet.id]
    assert client.get("/?date_from=yesterday").status_code == 422


def test_sql_meta_characters_in_search_are_literal(client: TestClient, users: dict[str, int], db: Session) -> None:
    plain = make(db, "Plain^Name", 5)
    odd = make(db, "O'Brien^100%_sure", 6)
    db.commit()
    login(client, "rad")
    for probe in ("' OR '1'='1", "'; DROP TABLE study; --", '" OR 1=1 --', "\\", "%%", "_"):
        r = client.get("/", params={"q": probe, "state": "all"})
        assert r.status_code == 200, probe
        assert plain.id not in order(r.text), probe
    assert order(client.get("/", params={"q": "O'Brien"}).text) == [odd.id]
    assert order(client.get("/", params={"q": "100%_"}).text) == [odd.id]
    assert order(client.get("/", params={"q": "%"}).text) == [odd.id]  # % matches only a literal percent
    assert order(client.get("/?state=all").text)  # the table is still there


def test_hostile_patient_data_is_escaped(client: TestClient, users: dict[str, int], db: Session) -> None:
    make(db, "<script>alert(1)</script>^X", 5, description='"><img src=x onerror=alert(2)>')
    db.commit()
    login(client, "rad")
    html = client.get("/").text
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(2)&gt;" in html


def test_paging(client: TestClient, users: dict[str, int], db: Session) -> None:
    ids = [make(db, f"P^{i:02d}", 100 - i).id for i in range(12)]
    db.commit()
    login(client, "rad")
    first = order(client.get("/?per_page=5").text)
    second = order(client.get("/?per_page=5&page=2").text)
    third = client.get("/?per_page=5&page=3").text
    assert first == ids[:5] and second == ids[5:10] and order(third) == ids[10:]
    assert "12 studies" in third and "Page 3 of 3" in third
    assert client.get("/?per_page=100000").status_code == 422


def test_rows_fragment_and_version_token(client: TestClient, users: dict[str, int], db: Session) -> None:
    make(db, "First^One", 5)
    db.commit()
    login(client, "rad")
    v1 = client.get("/worklist/version.json").json()["token"]
    fragment = client.get("/worklist/rows?state=all").text
    assert "<html" not in fragment and "First, One" in fragment
    assert client.get("/worklist/version.json").json()["token"] == v1
    make(db, "Second^One", 1, critical=True)
    db.commit()
    v2 = client.get("/worklist/version.json").json()["token"]
    assert v2 != v1
    assert "Second, One" in client.get("/worklist/rows?state=all").text
    page = client.get("/").text
    assert f'data-version="{v2}"' in page
