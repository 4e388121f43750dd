"""The shipped bundle end to end on the committed sample studies (real DICOM files, ONNX Runtime, no mocks).

Each sample's ``ground_truth.json`` says what is drawn in; the adapter must find those findings with boxes on the
right source images, masks on the source grid (CT/PET), and EN + ZH text that parses back to the same facts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread

from dicom_agent.inference.bundle_adapter import BundleAdapter
from dicom_agent.inference.parse import parse
from dicom_agent.inference.types import SeriesInput, StudyFindings, StudyInput
from models.evaluate import phantom_case_study
from models.terminology import LABELS

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "models" / "bundled"
SAMPLES = REPO / "samples"


@pytest.fixture(scope="module")
def adapter() -> BundleAdapter:
    return BundleAdapter(BUNDLE, device="cpu", threads=2)


def _study(kind: str) -> tuple[StudyInput, dict[str, Any]]:
    folder = SAMPLES / kind
    truth = json.loads((folder / "ground_truth.json").read_text(encoding="utf-8"))
    files = sorted(folder.glob("*.dcm"))
    series = SeriesInput(truth["series_instance_uid"], truth["modality"], files)
    return StudyInput(truth["study_instance_uid"], [series]), truth


@pytest.fixture(scope="module", params=["cxr", "ct", "pet"])
def predicted(request: pytest.FixtureRequest, adapter: BundleAdapter) -> tuple[str, StudyFindings, dict[str, Any]]:
    study, truth = _study(request.param)
    return request.param, adapter.predict(study), truth


def test_sample_findings_include_drawn_labels(predicted: tuple[str, StudyFindings, dict[str, Any]]) -> None:
    """Quality is the floor test's job; here: the study yields present findings, and some are really drawn in."""
    kind, result, truth = predicted
    found = {f.label for f in result.present}
    assert found & set(truth["labels"]), (kind, found, truth["labels"])
    assert result.model.bundle_sha256 and result.series_uids == [truth["series_instance_uid"]]


def test_focal_findings_have_boxes_on_source_images(predicted: tuple[str, StudyFindings, dict[str, Any]]) -> None:
    kind, result, truth = predicted
    sop_uids = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in (SAMPLES / kind).glob("*.dcm")}
    # the focal findings reported: the sample radiograph's two nodules (among both effusions, a pneumothorax and
    # cardiomegaly) were masses to 0.18.x and are missed by 0.19.0 (docs/model.md), so a radiograph's boxes are
    # also checked on a phantom with one mass (test_a_radiograph_mass_is_boxed_on_its_image)
    focal = [f for f in result.present if LABELS[f.label].focal]
    assert kind == "cxr" or [f for f in focal if f.boxes], (kind, [f.label for f in result.present])
    rows, cols = truth["shape"][-2:]
    for finding in focal:
        assert finding.boxes
        for box in finding.boxes:
            assert box.image.sop_instance_uid in sop_uids
            assert 0 <= box.x0 < box.x1 <= cols and 0 <= box.y0 < box.y1 <= rows


def test_volume_findings_have_masks_on_the_source_grid(predicted: tuple[str, StudyFindings, dict[str, Any]]) -> None:
    kind, result, truth = predicted
    if kind == "cxr":
        pytest.skip("masks of radiographs are optional")
    masked = [f for f in result.present if f.mask is not None]
    assert masked
    for finding in masked:
        assert finding.mask is not None
        assert finding.mask.pixels.shape == tuple(truth["shape"]) and finding.mask.volume_voxels() > 0


def test_report_text_in_both_languages_states_the_same_findings(
    predicted: tuple[str, StudyFindings, dict[str, Any]], adapter: BundleAdapter
) -> None:
    """The rendered text of record: EN and ZH parse back to the same facts, and to the present findings."""
    _, result, _ = predicted
    parsed = {}
    for lang in ("en", "zh"):
        text = result.impression[lang]
        assert text.strip()
        parsed[lang] = {(p.label, p.location, p.laterality) for p in parse(text, lang, adapter.vocabulary)}
    assert parsed["en"] == parsed["zh"]
    assert {label for label, _, _ in parsed["en"]} == {f.label for f in result.present}
    assert all(f.text_en and f.text_zh for f in result.present)


@pytest.fixture(scope="module")
def one_mass(adapter: BundleAdapter, tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyInput, Any, Any]:
    """The first validation radiograph whose only drawn finding is a mass (a 36 mm left upper lobe mass, seed
    500013; chosen by what is drawn, not by what the bundle reports), as DICOM through the adapter: (study, case,
    analysis). 0.18.1 and 0.19.0 both report it as a consolidation in the left upper lobe."""
    case, study = phantom_case_study("cxr", 500_013, tmp_path_factory.mktemp("one-mass"))
    assert [les.label for les in case.lesions] == ["mass"]
    return study, case, adapter.analyse(study)


def test_a_radiograph_mass_is_boxed_on_its_image(one_mass: tuple[StudyInput, Any, Any]) -> None:
    """The radiograph's focal finding is placed where the mass is drawn, its box on the source image's pixel grid
    over the drawn box."""
    study, case, analysis = one_mass
    focal = [f for f in analysis.inputs[0].findings if f.present and LABELS[f.label].focal]
    assert focal, "the mass is found"
    drawn = case.lesions[0]
    uid = str(dcmread(study.series[0].files[0], stop_before_pixels=True).SOPInstanceUID)
    at_mass = [f for f in focal if f.location == drawn.location and f.boxes]
    assert at_mass
    x0, y0, x1, y1 = drawn.box
    for box in at_mass[0].boxes:
        assert box.image.sop_instance_uid == uid
        overlap = max(0.0, min(x1, box.x1) - max(x0, box.x0)) * max(0.0, min(y1, box.y1) - max(y0, box.y0))
        assert overlap > 0.3 * (x1 - x0) * (y1 - y0)


def test_vqa_answers_are_checked_against_the_findings_of_record(
    adapter: BundleAdapter, one_mass: tuple[StudyInput, Any, Any]
) -> None:
    """A radiograph through the shipped bundle: its location answer names the heads' place (0.9.0's decoder copies
    it from the findings text), and an answer naming another place gets a note naming the heads' one."""
    _, _, analysis = one_mass
    found = [f for f in analysis.inputs[0].findings if f.present and LABELS[f.label].focal and f.location]
    assert found, "the radiograph's focal lesion is found and placed"
    label = found[0].label
    largest = max((f for f in found if f.label == label), key=lambda f: f.size_mm or 0.0)
    question = f"Where is the largest {label}?"
    said = adapter.answer(analysis, question, "en")
    assert said.strip() == largest.location_en
    assert adapter.check_answer(analysis, question, "en", said) is None
    other = next(loc for key, loc in adapter.vocabulary.locations.items() if key != largest.location)
    note = adapter.check_answer(analysis, question, "en", other.name_en)
    assert note is not None and str(largest.location_en) in note


def test_pet_lesions_carry_the_suvmax_of_their_source_voxels(adapter: BundleAdapter) -> None:
    """The sample PET's lesions: each found lesion whose slices are a drawn lesion's reports that lesion's SUVmax
    as the phantom measured it on the same voxels (to the stated decimal), on the box of the slice holding it."""
    study, truth = _study("pet")
    result = adapter.predict(study)
    lesions = [f for f in result.present if f.label == "hypermetabolic_lesion" and f.mask is not None]
    assert lesions and all(f.suv_max is not None and f.suv_on is not None for f in lesions)
    matched = 0
    for drawn in truth["lesions"]:
        slices = {s["sop_instance_uid"] for s in drawn["slices"]}
        for found in lesions:
            assert found.suv_on is not None
            if found.boxes[found.suv_on].image.sop_instance_uid in slices:
                assert found.suv_max == pytest.approx(drawn["attrs"]["suv_max"], abs=0.051)
                matched += 1
    assert matched
    hottest = max(lesions, key=lambda f: f.suv_max or 0.0)
    assert f"SUVmax {hottest.suv_max:.1f}" in result.impression["en"] and "SUVmax" in result.impression["zh"]


def test_the_ct_effusion_mask_holds_fluid_not_aerated_lung(adapter: BundleAdapter) -> None:
    """The sample CT's pleural effusion SEG, on the acquired voxels: every voxel at least as dense as the fluid
    level of the manifest (``decoding.fluid``; −440 HU), none of the lung (−850 HU) the model grid's 5 mm steps
    overlap. With the model grid's rule alone 108 of its 3744 voxels lay below −440 HU. And mostly fluid (10 HU in
    the phantom), not the chest wall (40 HU) beside it: the median voxel is 13 HU with the water band on the model
    grid (``decoding.fluid_band``, session 25), 22 HU without it."""
    if "pleural_effusion" not in adapter.runner.fluid.get("ct", {}):
        pytest.skip("the shipped bundle's calibration keeps CT effusions to no fluid level (0.18.0: it gained 0.009)")
    study, _ = _study("ct")
    result = adapter.predict(study)
    effusions = [f for f in result.present if f.label == "pleural_effusion" and f.mask is not None]
    assert effusions
    files = {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID): path for path in study.series[0].files}
    level = adapter.runner.fluid["ct"]["pleural_effusion"]
    low, high = adapter.windows["ct"]
    inside: list[np.ndarray] = []
    for finding in effusions:
        assert finding.mask is not None
        for k, ref in enumerate(finding.mask.images):
            if not finding.mask.pixels[k].any():
                continue
            ds = dcmread(files[ref.sop_instance_uid])
            hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            assert hu[finding.mask.pixels[k]].min() >= low + level * (high - low)
            inside.append(hu[finding.mask.pixels[k]])
    assert float(np.median(np.concatenate(inside))) < 20.0
