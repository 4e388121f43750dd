"""The whole review in a real browser (Playwright driving Debian's Chromium) against a live server, with a real
Orthanc as the export destination: sign in, open the top study, toggle an overlay, reject one finding, edit the
Chinese report, sign, deliver from the outbox, and read back the VERIFIED SR that Orthanc stored.

Screenshots of the worklist and the study view are taken into the test's temporary directory and copied to
``docs/screenshots/`` only with ``DICOM_AGENT_SCREENSHOTS=1`` (so a test run leaves the checkout clean).
"""

from __future__ import annotations

import io
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import uvicorn
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_agent.config import Settings
from dicom_agent.db.orm import Export, ResultObject, Review
from dicom_agent.web.app import create_app
from tests.peers import Orthanc, free_port, wait_port
from tests.web.demo import phantom_dir, sample_dir, seed_phantom
from tests.web.factories import PASSWORD, add_finding, add_job, add_study

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.orthanc]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
EDIT_ZH = "左侧气胸，建议立即临床处理。放射科医师已审核并修改。"


@pytest.fixture
def live(web_settings: Settings, orthanc: Orthanc) -> Iterator[tuple[str, Settings]]:
    settings = web_settings.model_copy(
        update={"destinations": [f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"], "web_port": free_port()}
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=settings.web_port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_port(settings.web_port)
    yield f"http://127.0.0.1:{settings.web_port}", settings
    server.should_exit = True
    thread.join(15)


def _seed(db: Session, settings: Settings, tmp: Path) -> tuple[int, int, int]:
    from tests.web.factories import add_user

    add_user(db, "rad", "radiologist", full_name="Dr. Ada Rad", organization="General Hospital")
    add_user(db, "adm", "admin", full_name="Site Admin")
    storage = settings.storage_dir
    top = seed_phantom(
        db,
        storage,
        phantom_dir("cxr", 1, tmp / "ptx", want="pneumothorax", min_findings=2),
        priority="stat",
        minutes_ago=12,
        description="Chest PA",
    )
    ct = seed_phantom(db, storage, sample_dir("ct", tmp), minutes_ago=95, description="CT chest")
    db.add(
        Export(
            result_object_id=ct.draft.id,
            destination="PACS@10.0.0.9:104",
            state="dead",
            attempts=8,
            last_error="association rejected: called AE title not recognised (0x01/0x03)",
        )
    )
    seed_phantom(db, storage, sample_dir("pet", tmp), priority="urgent", minutes_ago=40, description="FDG PET/CT")
    in_review = seed_phantom(db, storage, sample_dir("cxr", tmp), minutes_ago=65, description="Chest PA")
    db.add(Review(study_id=in_review.study.id, job_id=in_review.job.id, state="in_review", decisions={}))
    # rows without images, so the list shows every AI state a radiologist meets
    queued = add_study(
        db,
        name="CHEN^JUN",
        patient_id="PH-7741",
        modality="CT",
        state="inferring",
        description="CT abdomen",
        study_date="20260310",
    )
    add_job(db, queued, state="running")
    normal = add_study(
        db, name="GARCIA^MARIA", patient_id="PH-5512", modality="DX", description="Chest AP", study_date="20260311"
    )
    add_finding(db, add_job(db, normal), "nodule", present=False, probability=0.12, name_en="Nodule")
    failed = add_study(
        db,
        name="MULLER^PETER",
        patient_id="PH-3390",
        modality="PT",
        state="failed",
        description="FDG PET",
        study_date="20260309",
    )
    add_job(db, failed, state="failed")
    db.commit()
    finding = next(f for f in top.findings if not f.critical)
    return top.study.id, finding.id, ct.study.id


def test_review_and_sign_in_a_real_browser(
    live: tuple[str, Settings], db: Session, orthanc: Orthanc, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        from tests.conftest import skip_or_fail

        skip_or_fail("Debian chromium not installed")
    base, settings = live
    top_id, reject_id, ct_id = _seed(db, settings, tmp_path)
    shots = tmp_path / "shots"
    shots.mkdir()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1480, "height": 960})
        try:
            page.goto(base + "/")
            assert "/login" in page.url
            page.fill("input[name=username]", "rad")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("table.worklist-table")
            rows = page.locator("table.worklist-table tbody tr")
            assert rows.count() >= 5
            assert rows.first.locator(".badge-critical").count() == 1
            page.screenshot(path=str(shots / "worklist.png"), full_page=True)

            # a result that arrives now shows up without a reload (the page polls a change token)
            page.evaluate("window.__same_document = true")
            late = add_study(db, name="LATE^ARRIVAL", patient_id="PH-9001", modality="CR", description="Chest AP")
            add_job(db, late)
            db.commit()
            page.wait_for_selector("text=LATE, ARRIVAL", timeout=15_000)
            assert page.evaluate("window.__same_document === true")

            # open the top study
            rows.first.locator("a.study-link").click()
            page.wait_for_url(f"**/studies/{top_id}")
            page.wait_for_function(
                "() => { const i = document.getElementById('slice-img'); "
                "return i && i.complete && i.naturalWidth > 0; }"
            )
            boxes = page.locator("#box-layer rect.box")
            page.wait_for_function("() => document.querySelectorAll('#mask-layer img.mask').length > 0")
            before = boxes.count()
            assert before >= 1
            # toggle one finding's overlay off and on
            toggle = page.locator(f"input.overlay-toggle[data-finding='{reject_id}']")
            mine = f"#box-layer rect.box[data-finding='{reject_id}']"
            assert page.locator(mine).count() >= 1
            toggle.uncheck()
            assert page.locator(mine).count() == 0 and boxes.count() < before
            toggle.check()
            assert page.locator(mine).count() >= 1
            page.wait_for_timeout(300)
            page.screenshot(path=str(shots / "study.png"), full_page=True)

            # reject one finding
            decision_url = f"/findings/{reject_id}/decision"
            with page.expect_response(lambda r: r.url.endswith(decision_url), timeout=60_000) as posted:
                page.locator(f"#finding-{reject_id} button[data-action=reject]").click()
            assert posted.value.status in (200, 302, 303), posted.value.status
            # the decision is saved only where the redirect says so (an error also redirects back to the study)
            assert "saved=1" in posted.value.headers.get("location", ""), posted.value.headers
            page.wait_for_selector(f"#finding-{reject_id}.is-rejected", timeout=60_000)

            # edit the Chinese report text and sign (the confirm dialog is accepted)
            page.fill("textarea[name=report_zh]", EDIT_ZH)
            page.once("dialog", lambda dialog: dialog.accept())
            page.click("#sign-button")
            page.wait_for_selector(".closed-note")
            assert "Signed by" in page.inner_text(".closed-note")

            page.goto(base + "/lang/zh?next=/")
            page.wait_for_selector("table.worklist-table")
            page.screenshot(path=str(shots / "worklist-zh.png"), full_page=True)

            # a CT study in the lung window, opened on the slice of the top finding, slice scrolling works
            page.goto(base + f"/lang/en?next=/studies/{ct_id}")
            page.wait_for_selector("#slice-range")
            page.click("button.preset[data-preset=lung]")
            page.wait_for_function("() => document.getElementById('slice-img').src.includes('preset=lung')")
            start = page.input_value("#slice-range")
            page.keyboard.press("ArrowDown")
            assert page.input_value("#slice-range") == str(int(start) + 1)
            page.keyboard.press("ArrowUp")
            page.wait_for_function(
                "() => { const i = document.getElementById('slice-img'); return i.complete && i.naturalWidth > 0; }"
            )
            page.wait_for_timeout(400)
            page.screenshot(path=str(shots / "study-ct.png"), full_page=True)

            # an admin replays a dead letter from the outbox page
            page.click("text=Sign out")
            page.wait_for_url("**/login")
            page.fill("input[name=username]", "adm")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.goto(base + "/admin/exports?state=dead")
            page.wait_for_selector("table.worklist-table")
            page.screenshot(path=str(shots / "admin-exports.png"), full_page=True)
            page.locator("table.worklist-table tbody tr").first.locator("button", has_text="Replay").click()
            page.wait_for_selector("text=—")  # the dead-letter list is empty now
        finally:
            browser.close()

    # the signed SR is in the outbox; deliver it now (what the exporter does on its next wake-up)
    from dicom_agent.export.runner import deliver

    db.expire_all()
    review = db.scalar(select(Review).where(Review.study_id == top_id))
    assert review is not None and review.state == "signed" and review.report_zh == EDIT_ZH
    signed_row = db.get(ResultObject, review.signed_object_id)
    draft_row = db.scalar(select(ResultObject).where(ResultObject.job_id == review.job_id, ResultObject.kind == "sr"))
    assert signed_row is not None and draft_row is not None
    exports = db.scalars(select(Export).where(Export.result_object_id == signed_row.id)).all()
    assert len(exports) == 1
    for row in exports:
        assert str(deliver(row.id, settings)) == "done"

    received = [pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{i}/file"))) for i in orthanc.instances()]
    signed = [ds for ds in received if ds.get("VerificationFlag") == "VERIFIED"]
    assert len(signed) == 1
    ds = signed[0]
    assert ds.SOPInstanceUID == signed_row.sop_instance_uid and ds.PreliminaryFlag == "FINAL"
    predecessor = ds.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == draft_row.sop_instance_uid
    zh_texts = _impressions(ds, "zh")
    assert zh_texts == [EDIT_ZH]
    assert str(ds.VerifyingObserverSequence[0].VerifyingObserverName) == "Rad^Ada^^Dr."

    dead = db.scalar(select(Export).where(Export.destination == "PACS@10.0.0.9:104"))
    assert dead is not None and dead.state == "pending" and dead.attempts == 0
    names = ("worklist.png", "study.png", "worklist-zh.png", "study-ct.png", "admin-exports.png")
    assert all((shots / name).stat().st_size > 10_000 for name in names)  # a blank page is a few KB
    if os.environ.get("DICOM_AGENT_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(shots / name, SCREENSHOTS / name)


def _impressions(ds: pydicom.Dataset, lang: str) -> list[str]:
    out: list[str] = []

    def walk(items) -> None:  # type: ignore[no-untyped-def]
        for item in items or []:
            names = item.get("ConceptNameCodeSequence") or []
            if item.get("ValueType") == "TEXT" and names and names[0].CodeValue == "121073":
                codes = [c.get("ConceptCodeSequence") for c in item.get("ContentSequence", [])]
                is_zh = any(c and str(c[0].CodeValue).startswith("zh") for c in codes)
                if is_zh == (lang == "zh"):
                    out.append(str(item.TextValue))
            walk(item.get("ContentSequence"))

    walk(ds.ContentSequence)
    return out
