"""The encoded objects: valid for dciodvfy, PixelMed, dcentvfy, dcmtk and highdicom; Chinese text intact;
deterministic bytes; UIDs that change with the revision."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread

from dicom_agent.encode import encode_study
from dicom_agent.encode.secondary_capture import BANNER
from dicom_agent.errors import EncodeError
from tests.results import findings as F
from tests.results import sources as S
from tests.results import validators as V
from tests.results.conftest import Case, make_case


def group_templates(path: Path) -> list[str]:
    """Which template each measurement group is, read from the file (region → 1410, segment → 1411, else 1501)."""
    ds = dcmread(path)
    measurements = next(i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    out = []
    for group in measurements.ContentSequence:
        names = {item.ConceptNameCodeSequence[0].CodeValue for item in group.ContentSequence}
        out.append("1410" if "111030" in names else "1411" if "121191" in names else "1501")
    return out


def impressions(path: Path, concept: str = "121073") -> dict[str, str]:
    """language code → impression text (or the TEXT items of another ``concept``), read back from the file."""
    ds = dcmread(path)
    container = next(i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375")
    out = {}
    for item in container.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == concept:
            lang = item.ContentSequence[0].ConceptCodeSequence[0].CodeValue
            out[lang] = item.TextValue
    return out


def test_full_profile_objects(ct_case: Case, pet_case: Case) -> None:
    assert sorted(ct_case.paths) == ["kos", "seg", "sr"]
    assert sorted(pet_case.paths) == ["seg", "sr"]  # no box → no key image → no KOS


def test_every_object_passes_dciodvfy(any_case: Case) -> None:
    for kind, paths in any_case.paths.items():
        for path in paths:
            report = V.dciodvfy(path)
            assert not report.errors, f"{kind}: {report.text}"
            assert not report.warnings, f"{kind}: {report.text}"


def test_key_images_profile_passes_dciodvfy(tmp_path: Path) -> None:
    for name in ("ct", "dx"):
        case = make_case(tmp_path / name, name, profile="key-images+gsps")
        assert sorted(case.paths) == ["gsps", "sc"]
        for paths in case.paths.values():
            for path in paths:
                report = V.dciodvfy(path)
                assert not report.errors and not report.warnings, report.text
        sc = dcmread(case.one("sc"))
        assert sc.BurnedInAnnotation == "YES"
        assert sc.SpecificCharacterSet == "ISO_IR 192"
        top = sc.pixel_array[:16]  # the red banner row
        assert (top[..., 0] > 100).mean() > 0.5 and BANNER.startswith("NOT FOR DIAGNOSIS")
        gsps = dcmread(case.one("gsps"))
        data = gsps.GraphicAnnotationSequence[0].GraphicObjectSequence[0].GraphicData
        assert len(data) == 10 and data[:2] == data[-2:]  # closed 5-point polyline


def test_ct_sr_and_seg_pass_pixelmed(ct_case: Case) -> None:
    path = ct_case.one("sr")
    report = V.pixelmed_sr(path, group_templates(path))
    assert not report.errors, report.text
    report = V.pixelmed_instance(ct_case.one("seg"))
    assert not report.errors, report.text


@pytest.mark.slow
def test_every_sr_and_seg_pass_pixelmed(any_case: Case) -> None:
    """The same for CT, DX and PET (PixelMed takes ~15 s per SR on this machine)."""
    path = any_case.one("sr")
    report = V.pixelmed_sr(path, group_templates(path))
    assert not report.errors, report.text
    report = V.pixelmed_instance(any_case.one("seg"))
    assert not report.errors, report.text


def test_dcentvfy_over_sources_and_outputs(any_case: Case) -> None:
    outputs = [p for paths in any_case.paths.values() for p in paths]
    report = V.dcentvfy([*any_case.source_paths, *outputs])
    assert not report.errors and not report.warnings, report.text


def test_highdicom_reparses_everything(ct_case: Case) -> None:
    sr = hd.sr.srread(ct_case.one("sr"))
    planar = sr.content.get_planar_roi_measurement_groups()
    assert len(planar) == 1
    region = planar[0].roi
    assert region is not None and region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    points = region.value
    assert points.shape == (5, 2) and np.array_equal(points[0], points[-1])
    nodule_slice = ct_case.sources[7]
    assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == nodule_slice.SOPInstanceUID
    prob = planar[0].get_measurements(name=hd.sr.CodedConcept("122157", "DCM", "Probability"))[0]
    assert prob.value == pytest.approx(87.0) and prob.unit.value == "%"
    children = {item.ConceptNameCodeSequence[0].CodeValue for item in prob[0].ContentSequence}
    assert {"111001", "111003"} <= children  # TID 4019 algorithm name + version on the NUM
    volumetric = sr.content.get_volumetric_roi_measurement_groups()
    assert len(volumetric) == 1

    seg = hd.seg.segread(ct_case.one("seg"))
    assert seg.SegmentationType == "BINARY"
    desc = seg.get_segment_description(1)
    assert desc.tracking_uid == volumetric[0].tracking_uid  # SR group and SEG segment share the tracking UID
    assert desc.algorithm_identification[0].AlgorithmFamilyCodeSequence[0].CodeValue == "123110"
    mask = seg.get_volume().array if hasattr(seg, "get_volume") else None
    assert mask is None or mask.sum() == 3 * 8 * 8

    kos = hd.ko.KeyObjectSelectionDocument.from_dataset(dcmread(ct_case.one("kos")))
    assert kos.ConceptNameCodeSequence[0].CodeValue == "113000"
    for item in kos.ContentSequence:
        if item.ValueType in ("IMAGE", "COMPOSITE"):
            assert "ConceptNameCodeSequence" not in item  # TID 2010


def test_draft_flags_and_series(ct_case: Case) -> None:
    sr = dcmread(ct_case.one("sr"))
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("COMPLETE", "UNVERIFIED", "PRELIMINARY")
    assert sr.SeriesDescription == "AI Results (unverified)"
    assert sr.SpecificCharacterSet == "ISO_IR 192"
    assert sr.StudyInstanceUID == ct_case.sources[0].StudyInstanceUID
    series = {dcmread(p).SeriesInstanceUID for paths in ct_case.paths.values() for p in paths}
    assert len(series) == 3 and not series & {ct_case.sources[0].SeriesInstanceUID}
    for paths in ct_case.paths.values():
        for path in paths:
            assert dcmread(path).SOPInstanceUID.startswith("2.25.")


def test_chinese_text_round_trips(any_case: Case) -> None:
    assert any_case.sources[0].SpecificCharacterSet == "ISO_IR 100"  # a Latin-1 source must not leak its charset
    texts = impressions(any_case.one("sr"))
    assert texts == {"en-US": any_case.findings.impression["en"], "zh-CN": any_case.findings.impression["zh"]}


def test_decoder_disagreement_is_a_comment_in_both_languages(dx_case: Case, ct_case: Case) -> None:
    """The DX case's narrative omitted the pneumothorax (EN) and added an effusion (ZH): the SR says so, in the
    language of the narrative concerned, after the impressions; a case without disagreement has no comment."""
    comments = impressions(dx_case.one("sr"), "121106")
    assert comments == {
        "en-US": "AI narrative check (the coded findings are the result of record): the model's free text omits "
        "pneumothorax.",
        "zh-CN": "AI 叙述核对（以编码所见为准）：模型自由文本另述胸腔积液（检测未发现）。",
    }
    assert impressions(ct_case.one("sr"), "121106") == {}
    dump = V.dsrdump(dx_case.one("sr"))
    assert "胸腔积液" in dump and "??" not in dump


def test_labels_left_unplaced_are_named_in_the_comment(tmp_path: Path) -> None:
    """Labels present by probability that no region was given (``extra["unplaced"]``) are not coded findings;
    the draft SR's comment names them with their probability, in both languages, and stays valid."""
    sources = S.ct_series()
    base = F.ct_findings(sources)
    unplaced = {  # named most probable first
        "consolidation": {"probability": 0.31, "name_en": "consolidation", "name_zh": "实变"},
        "mass": {"probability": 0.84, "name_en": "mass", "name_zh": "肿块"},
    }
    objects = encode_study(replace(base, extra=base.extra | {"unplaced": unplaced}), sources, profile="sr-only")
    path = tmp_path / "sr.dcm"
    objects[0].dataset.save_as(path, enforce_file_format=True)
    assert impressions(path, "121106") == {
        "en-US": "The classifier also scored mass (84%), consolidation (31%) as present, but no region was theirs "
        "(another finding's, or none), so they are not reported as findings.",
        "zh-CN": "分类器另判肿块（84%）、实变（31%）为阳性，但未定位到其自身区域（属于其他所见或无区域），"
        "故未作为所见报告。",
    }
    report = V.dciodvfy(path)
    assert not report.errors and not report.warnings, report.text
    # beside a narrative note: one Comment per language, sentences spaced in English, not in Chinese
    source = S.dx_image()
    dx = F.dx_findings(source)
    objects = encode_study(replace(dx, extra=dx.extra | {"unplaced": unplaced}), [source], profile="sr-only")
    objects[0].dataset.save_as(path, enforce_file_format=True)
    comments = impressions(path, "121106")
    assert comments["en-US"].startswith("AI narrative check") and ". The classifier also scored" in comments["en-US"]
    assert "（检测未发现）。分类器另判肿块（84%）" in comments["zh-CN"]


def test_dsrdump_prints_chinese(ct_case: Case) -> None:
    dump = V.dsrdump(ct_case.one("sr"))
    assert F.IMPRESSION_ZH in dump
    assert '(zh-CN,RFC5646,"Chinese (S)")' in dump
    assert "Imaging Measurement Report" in dump and "Bounded by" in dump
    assert "??" not in dump


def test_dx_seg_copies_patient_orientation(dx_case: Case) -> None:
    seg = dcmread(dx_case.one("seg"))
    assert list(seg.PatientOrientation) == ["L", "F"]


def test_re_encoding_is_byte_identical(tmp_path: Path) -> None:
    sources = S.ct_series()
    first = encode_study(F.ct_findings(sources), sources)
    again = encode_study(F.ct_findings(S.ct_series()), S.ct_series())
    assert [o.sop_instance_uid for o in first] == [o.sop_instance_uid for o in again]
    assert [o.sha256() for o in first] == [o.sha256() for o in again]
    assert [hashlib.sha256(o.to_bytes()).hexdigest() for o in first] == [o.sha256() for o in first]


def test_new_revision_changes_every_uid() -> None:
    sources = S.ct_series()
    r0 = encode_study(F.ct_findings(sources), sources, revision=0)
    r1 = encode_study(F.ct_findings(sources, probability=0.91), sources, revision=1)
    uids0 = {o.sop_instance_uid for o in r0} | {o.series_instance_uid for o in r0}
    uids1 = {o.sop_instance_uid for o in r1} | {o.series_instance_uid for o in r1}
    assert not uids0 & uids1
    tracking0 = {
        g.tracking_uid
        for g in hd.sr.Comprehensive3DSR.from_dataset(r0[0].dataset).content.get_planar_roi_measurement_groups()
    }
    tracking1 = {
        g.tracking_uid
        for g in hd.sr.Comprehensive3DSR.from_dataset(r1[0].dataset).content.get_planar_roi_measurement_groups()
    }
    assert not tracking0 & tracking1


def test_pinned_time_comes_from_the_caller() -> None:
    sources = S.ct_series()
    when = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    sr = encode_study(F.ct_findings(sources), sources, created_at=when)[0].dataset
    assert (str(sr.ContentDate), str(sr.ContentTime), str(sr.InstanceCreationDate)) == (
        "20260304",
        "050607",
        "20260304",
    )
    for item in sr.ContributingEquipmentSequence:
        assert str(item.ContributionDateTime).startswith("20260304050607")


def test_no_masks_means_no_seg_and_no_1411() -> None:
    sources = S.ct_series()
    objects = encode_study(F.ct_findings(sources, with_mask=False), sources)
    assert [o.kind for o in objects] == ["sr", "kos"]
    sr = hd.sr.Comprehensive3DSR.from_dataset(objects[0].dataset)
    assert sr.content.get_volumetric_roi_measurement_groups() == []


def test_empty_mask_gives_no_segment() -> None:
    sources = S.ct_series()
    findings = F.ct_findings(sources)
    assert findings.findings[0].mask is not None
    findings.findings[0].mask.pixels[:] = False
    assert [o.kind for o in encode_study(findings, sources)] == ["sr", "kos"]


def test_no_findings_at_all_still_gives_a_valid_sr(tmp_path: Path) -> None:
    """An adapter may return nothing (e.g. a site checkpoint whose text parses to no finding)."""
    sources = S.ct_series()
    objects = encode_study(replace(F.ct_findings(sources), findings=[]), sources)
    assert [o.kind for o in objects] == ["sr"]  # no boxes: no key images; no masks: no SEG
    path = tmp_path / "sr.dcm"
    objects[0].dataset.save_as(path, enforce_file_format=True)
    assert group_templates(path) == ["1501"]
    report = V.dciodvfy(path)
    assert not report.errors and not report.warnings, report.text
    assert set(impressions(path)) == {"en-US", "zh-CN"}


def test_sr_only_profile() -> None:
    sources = S.ct_series()
    full = encode_study(F.ct_findings(sources), sources)
    only = encode_study(F.ct_findings(sources), sources, profile="sr-only")
    assert [o.kind for o in only] == ["sr"] and only[0].sha256() == full[0].sha256()


def test_bad_input_is_refused() -> None:
    sources = S.ct_series()
    with pytest.raises(EncodeError):
        encode_study(F.ct_findings(sources), sources, profile="everything")
    with pytest.raises(EncodeError):
        encode_study(F.ct_findings(sources), [S.dx_image().__class__()])  # empty dataset, wrong study
    with pytest.raises(EncodeError):
        encode_study(F.ct_findings(sources), sources[:5])  # the box's slice is missing


def test_finding_tracking_uids_match_the_sr(any_case: Case) -> None:
    from dicom_agent.encode import finding_tracking_uids
    from dicom_agent.encode.signed import draft_groups

    per_finding = finding_tracking_uids(any_case.findings, any_case.sources)
    assert len(per_finding) == len(any_case.findings.findings) and all(per_finding)
    in_sr = [g.tracking_uid for g in draft_groups(dcmread(any_case.one("sr")))]
    assert sorted(uid for uids in per_finding for uid in uids) == sorted(in_sr)


def test_masks_on_multi_frame_images_are_skipped_not_mangled() -> None:
    import dataclasses

    sources = S.ct_series()
    findings = F.ct_findings(sources)
    mask = findings.findings[0].mask
    assert mask is not None
    mask.images = [dataclasses.replace(ref, frame_number=1) for ref in mask.images]
    assert [o.kind for o in encode_study(findings, sources)] == ["sr", "kos"]


def test_key_images_profile_is_deterministic() -> None:
    sources = S.ct_series()
    first = encode_study(F.ct_findings(sources), sources, profile="key-images+gsps")
    again = encode_study(F.ct_findings(sources), sources, profile="key-images+gsps")
    assert [o.kind for o in first] == ["sc", "gsps"]
    assert [o.sha256() for o in first] == [o.sha256() for o in again]


def test_pixelmed_allowance_is_narrow() -> None:
    """The cross-template allowance lets through only errors about a group of ANOTHER template."""
    line = (
        'Error: Template 1410 PlanarROIMeasurements/[Row 1] CONTAINER (125007,DCM,"Measurement Group")/[Row 5] '
        'SCOORD (111030,DCM,"Image Region"): within 1.10.{n}: /CONTAINER (126000,DCM,"Imaging Measurement Report")'
        '/CONTAINER (126010,DCM,"Imaging Measurements")/CONTAINER (125007,DCM,"Measurement Group"): '
        "Missing conditional content item"
    )
    templates = ["1501", "1410"]
    assert V.sr_errors_not_allowed(line.format(n=1), templates) == []  # a 1501 group checked as 1410
    assert V.sr_errors_not_allowed(line.format(n=2), templates) == [line.format(n=2)]  # a real 1410 error
    assert V.sr_errors_not_allowed(line.format(n=3), templates) == [line.format(n=3)]  # no such group
    other = "Error: something else entirely"
    assert V.sr_errors_not_allowed(other, templates) == [other]


def test_pet_lesion_measurements_sit_on_the_boxes_they_were_measured_on(tmp_path: Path) -> None:
    """Diameter (SCT Diameter, mm) on the box of the slice it was measured on; SUVmax (DCM SUVbw, derivation
    SCT Maximum, UCUM g/ml{SUVbw}) on the box of the slice holding that voxel; other boxes: probability only."""
    sources = S.pet_series()
    objects = encode_study(F.pet_measured_findings(sources), sources)
    path = tmp_path / "sr.dcm"
    next(o for o in objects if o.kind == "sr").dataset.save_as(path, enforce_file_format=True)
    report = V.dciodvfy(path)
    assert not report.errors and not report.warnings, report.text
    sr = hd.sr.srread(path)
    planar = sr.content.get_planar_roi_measurement_groups()
    assert len(planar) == 3
    by_slice = {}
    for group in planar:
        sop = group.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        by_slice[sop] = {m.name.value: m for m in group.get_measurements()}
    slices = [str(sources[k].SOPInstanceUID) for k in (3, 4, 5)]
    assert set(by_slice[slices[0]]) == {"122157"}
    assert set(by_slice[slices[1]]) == {"122157", "81827009"}
    diameter = by_slice[slices[1]]["81827009"]
    assert diameter.value == pytest.approx(24.0) and diameter.unit.value == "mm"
    assert set(by_slice[slices[2]]) == {"122157", "126401"}
    suv = by_slice[slices[2]]["126401"]
    assert suv.value == pytest.approx(8.3) and suv.unit.value == "g/ml{SUVbw}"
    assert suv.derivation is not None and suv.derivation.value == "56851009"
    assert "SUVbw" in V.dsrdump(path)


@pytest.mark.slow
def test_pet_lesion_measurements_pass_pixelmed(tmp_path: Path) -> None:
    sources = S.pet_series()
    objects = encode_study(F.pet_measured_findings(sources), sources)
    path = tmp_path / "sr.dcm"
    next(o for o in objects if o.kind == "sr").dataset.save_as(path, enforce_file_format=True)
    report = V.pixelmed_sr(path, group_templates(path))
    assert not report.errors, report.text
