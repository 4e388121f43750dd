"""Study page, rendered images (window presets, SUV), box and mask overlays, and path safety."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.orm import Session

from dicom_agent.config import Settings
from dicom_agent.db.orm import Instance, Review
from dicom_agent.tasks.artifacts import save_findings
from tests.results import findings as fx
from tests.results.findings import IMPRESSION_EN, IMPRESSION_ZH
from tests.web.factories import login
from tests.web.scenario import Seeded, seed


@pytest.fixture
def ct(db: Session, web_settings: Settings, users: dict[str, int]) -> Seeded:
    return seed(db, web_settings.storage_dir, "ct")


def overlay(html: str) -> dict:  # type: ignore[type-arg]
    import html as h

    match = re.search(r'data-overlay="([^"]*)"', html)
    assert match
    return json.loads(h.unescape(match.group(1)))  # type: ignore[no-any-return]


def png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_study_page_shows_findings_report_and_overlays(client: TestClient, ct: Seeded) -> None:
    login(client, "rad")
    r = client.get(f"/studies/{ct.study.id}")
    assert r.status_code == 200
    html = r.text
    for text in ("Nodule", "结节", "Emphysema", "肺气肿", "SCT 27925004", "87%", "right upper lobe"):
        assert text in html, text
    assert IMPRESSION_EN in html and IMPRESSION_ZH in html  # draft SR impressions, side by side
    data = overlay(html)
    nodule = next(f for f in data["findings"] if f["id"] == ct.findings["nodule"].id)
    assert nodule["boxes"][0]["x0"] == 37.5 and nodule["mask"] is True
    assert len(nodule["maskSops"]) == 3
    # opens on the slice with the top finding's box (instance 8 of 16)
    assert data["start"] == 7 and data["slices"][7]["sop"] == nodule["boxes"][0]["sop"]
    assert len(data["slices"]) == 16
    assert 'data-preset="lung"' in html and 'data-preset="bone"' in html and 'data-preset="mediastinum"' in html


def test_ct_presets_render_different_windows(client: TestClient, ct: Seeded) -> None:
    login(client, "rad")
    data = overlay(client.get(f"/studies/{ct.study.id}").text)
    s = data["slices"][7]
    url = f"/studies/{ct.study.id}/instances/{s['i']}/frames/1.png"
    images = {}
    for preset in ("lung", "mediastinum", "bone"):
        r = client.get(url, params={"preset": preset})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        images[preset] = png(r.content)
        assert images[preset].shape == (64, 64)
    assert not np.array_equal(images["lung"], images["mediastinum"])
    assert not np.array_equal(images["mediastinum"], images["bone"])
    assert client.get(url, params={"preset": "../../etc"}).status_code == 422


def test_dx_and_pet_render(client: TestClient, db: Session, web_settings: Settings, users: dict[str, int]) -> None:
    dx = seed(db, web_settings.storage_dir, "dx", patient=("Phantom^Dx", "PH-DX"))
    pet = seed(db, web_settings.storage_dir, "pet", patient=("Phantom^Pet", "PH-PET"))
    login(client, "rad")
    dx_data = overlay(client.get(f"/studies/{dx.study.id}").text)
    s = dx_data["slices"][0]
    assert client.get(f"/studies/{dx.study.id}/instances/{s['i']}/frames/1.png").status_code == 200
    pet_html = client.get(f"/studies/{pet.study.id}").text
    assert 'data-preset="suv"' in pet_html
    p = overlay(pet_html)["slices"][4]
    suv = png(client.get(f"/studies/{pet.study.id}/instances/{p['i']}/frames/1.png?preset=suv").content)
    raw = png(client.get(f"/studies/{pet.study.id}/instances/{p['i']}/frames/1.png?preset=default").content)
    assert suv.shape == raw.shape and not np.array_equal(suv, raw)


def test_mask_overlay_png(client: TestClient, ct: Seeded) -> None:
    login(client, "rad")
    data = overlay(client.get(f"/studies/{ct.study.id}").text)
    fid = ct.findings["nodule"].id
    on = data["slices"][7]
    off = data["slices"][0]
    r = client.get(f"/studies/{ct.study.id}/findings/{fid}/mask/{on['i']}/1.png?color=1")
    assert r.status_code == 200
    rgba = png(r.content)
    assert rgba.shape == (64, 64, 4)
    alpha = rgba[..., 3] > 0
    assert alpha[20:28, 38:46].all() and alpha.sum() == 64  # exactly the 8x8 mask of the phantom finding
    assert client.get(f"/studies/{ct.study.id}/findings/{fid}/mask/{off['i']}/1.png").status_code == 404
    assert client.get(f"/studies/{ct.study.id}/findings/{fid}/mask/{on['i']}/1.png?color=99").status_code == 422


def test_images_only_through_their_own_study(
    client: TestClient, ct: Seeded, db: Session, web_settings: Settings
) -> None:
    other = seed(db, web_settings.storage_dir, "dx", patient=("Other^Patient", "PH-O"))
    login(client, "rad")
    foreign = other.study.series[0].instances[0].id
    assert client.get(f"/studies/{ct.study.id}/instances/{foreign}/frames/1.png").status_code == 404
    assert client.get(f"/studies/{ct.study.id}/instances/999999/frames/1.png").status_code == 404
    own = ct.study.series[0].instances[0].id
    assert client.get(f"/studies/{ct.study.id}/instances/{own}/frames/2.png").status_code == 404
    assert client.get(f"/studies/{ct.study.id}/instances/{own}/frames/1.png").status_code == 200
    assert client.get("/studies/999999").status_code == 404


def test_a_database_path_outside_the_storage_root_is_not_read(
    client: TestClient, ct: Seeded, db: Session, web_settings: Settings
) -> None:
    """Even a corrupted row cannot make the app read outside the storage root (the probe stays in tmp)."""
    inst = db.get(Instance, ct.study.series[0].instances[0].id)
    assert inst is not None
    outside = Path(web_settings.storage_dir).parent / "outside.dcm"
    outside.write_bytes((Path(web_settings.storage_dir) / inst.path).read_bytes())
    inst.path = "../outside.dcm"
    db.commit()
    login(client, "rad")
    r = client.get(f"/studies/{ct.study.id}/instances/{inst.id}/frames/1.png")
    assert r.status_code == 404


def test_hostile_report_text_is_escaped(client: TestClient, ct: Seeded, db: Session, users: dict[str, int]) -> None:
    db.add(
        Review(
            study_id=ct.study.id,
            job_id=ct.job.id,
            user_id=users["rad"],
            state="in_review",
            report_en="<script>alert('x')</script>",
            report_zh="</textarea><img src=x onerror=alert(1)>",
            decisions={},
        )
    )
    db.commit()
    login(client, "rad")
    html = client.get(f"/studies/{ct.study.id}").text
    assert "<script>alert('x')</script>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "</textarea><img" not in html and "&lt;/textarea&gt;&lt;img src=x onerror=alert(1)&gt;" in html


def test_study_without_ai_result(client: TestClient, db: Session, users: dict[str, int]) -> None:
    from tests.web.factories import add_study

    study = add_study(db, state="queued")
    db.commit()
    login(client, "rad")
    html = client.get(f"/studies/{study.id}").text
    assert "No AI result for this study yet." in html and "No images stored" in html


def test_two_findings_of_one_label_get_their_own_mask(
    client: TestClient, db: Session, web_settings: Settings, users: dict[str, int], tmp_path: Path
) -> None:
    """One SEG segment per label holds both nodules of the CXR sample: each finding's overlay shows only its own."""
    from tests.web.demo import sample_dir, seed_phantom

    demo = seed_phantom(db, web_settings.storage_dir, sample_dir("cxr", tmp_path))
    a, b = (f for f in demo.findings if f.label == "nodule")
    login(client, "rad")
    inst = overlay(client.get(f"/studies/{demo.study.id}").text)["slices"][0]["i"]
    masks = {}
    for f in (a, b):
        r = client.get(f"/studies/{demo.study.id}/findings/{f.id}/mask/{inst}/1.png")
        assert r.status_code == 200
        masks[f.id] = png(r.content)[..., 3] > 0
        x0, y0, x1, y1 = f.boxes[0]["xy"]  # type: ignore[index]
        inside = masks[f.id][int(y0) : int(y1) + 1, int(x0) : int(x1) + 1].sum()
        assert inside > 0 and inside == masks[f.id].sum()  # all of it near its own box
    assert not (masks[a.id] & masks[b.id]).any()


def test_decoder_disagreements_are_shown_per_finding_and_per_study(
    client: TestClient, ct: Seeded, db: Session, web_settings: Settings
) -> None:
    """The narrative-vs-heads flags (inference.agreement) reach the radiologist, in both UI languages."""
    login(client, "rad")
    page = f"/studies/{ct.study.id}"
    assert "decoder-flag" not in client.get(page).text  # no flags, no warnings
    nodule = ct.findings["nodule"]
    nodule.flags = ["decoder_omits:zh", "decoder_location_differs:en"]
    db.commit()
    sf = fx.ct_findings(ct.sources)
    sf.flags = ["decoder_disagrees:en", "decoder_adds:en:pleural_effusion"]
    save_findings(web_settings.storage_dir, ct.study.study_instance_uid, ct.job.id, sf)
    html = client.get(page).text
    row = html[html.index(f'id="finding-{nodule.id}"') :]
    row = row[: row.index("</tr>")]
    assert "AI narrative omits this finding (ZH)" in row and "AI narrative places it elsewhere (EN)" in row
    emphysema = html[html.index(f'id="finding-{ct.findings["emphysema"].id}"') :]
    assert "decoder-flag" not in emphysema[: emphysema.index("</tr>")]
    assert "AI narrative also states a finding the detector did not find (EN): pleural effusion" in html
    zh = client.get(f"/lang/zh?next={page}").text
    assert "AI 叙述未提及此所见 (ZH)" in zh and "(EN): 胸腔积液" in zh


def test_labels_left_unplaced_are_shown_with_their_probability(
    client: TestClient, ct: Seeded, web_settings: Settings
) -> None:
    """A label the classifier called present but no region was given (extra["unplaced"]) is not a finding row,
    but the radiologist sees it, most probable first, in both UI languages."""
    login(client, "rad")
    page = f"/studies/{ct.study.id}"
    assert "no region of its own" not in client.get(page).text
    sf = fx.ct_findings(ct.sources)
    sf.extra = sf.extra | {
        "unplaced": {
            "consolidation": {"probability": 0.31, "name_en": "consolidation", "name_zh": "实变"},
            "mass": {"probability": 0.794, "name_en": "mass", "name_zh": "肿块"},
        }
    }
    save_findings(web_settings.storage_dir, ct.study.study_instance_uid, ct.job.id, sf)
    html = client.get(page).text
    mass = html.index("Classifier scored present, no region of its own (not a finding): mass (79%)")
    assert mass < html.index("(not a finding): consolidation (31%)")
    zh = client.get(f"/lang/zh?next={page}").text
    assert "分类器判为阳性，但无其自身区域（未作为所见）: 肿块 (79%)" in zh
