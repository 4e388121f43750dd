"""The verified final SR built from a draft, and the golden content tree of a CT draft."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import highdicom as hd
import pytest
from pydicom import dcmread

from dicom_agent.encode.objects import dataset_bytes
from dicom_agent.encode.signed import build_signed_sr, draft_groups
from dicom_agent.errors import EncodeError
from tests.results import findings as F
from tests.results import validators as V
from tests.results.conftest import Case
from tests.results.test_encode import group_templates
from tests.results.tree import dump_tree

GOLDEN = Path(__file__).parent / "golden" / "ct_sr_tree.txt"
SIGNED_AT = datetime(2026, 1, 2, 9, 30, tzinfo=UTC)


def sign(draft_path: Path, **kw: object) -> object:
    args: dict[str, object] = {
        "report_en": "Solid nodule in the right upper lobe, 8 mm. Follow-up CT in 3 months.",
        "report_zh": "右肺上叶实性结节，约8毫米。建议3个月后复查CT。",
        "verifier_name": "Wang^Li",
        "verifier_organization": "示范医院放射科",
        "verified_at": SIGNED_AT,
        "rejected_codes": [(F.EMPHYSEMA.value, F.EMPHYSEMA.scheme)],
    }
    args.update(kw)
    return build_signed_sr(dcmread(draft_path), **args)  # type: ignore[arg-type]


def test_signed_sr_supersedes_the_draft(ct_case: Case, tmp_path: Path) -> None:
    draft = dcmread(ct_case.one("sr"))
    signed = sign(ct_case.one("sr"))
    path = tmp_path / "signed.dcm"
    path.write_bytes(dataset_bytes(signed))  # type: ignore[arg-type]
    ds = dcmread(path)
    assert (ds.CompletionFlag, ds.VerificationFlag, ds.PreliminaryFlag) == ("COMPLETE", "VERIFIED", "FINAL")
    assert ds.SeriesDescription == "Final report (verified)"
    assert ds.SeriesInstanceUID != draft.SeriesInstanceUID and ds.SOPInstanceUID != draft.SOPInstanceUID
    assert ds.StudyInstanceUID == draft.StudyInstanceUID
    observer = ds.VerifyingObserverSequence[0]
    assert str(observer.VerifyingObserverName) == "Wang^Li"
    assert observer.VerifyingOrganization == "示范医院放射科"
    assert str(observer.VerificationDateTime).startswith("20260102093000")
    pred = ds.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert pred.ReferencedSOPInstanceUID == draft.SOPInstanceUID

    findings = {g.finding.value for g in draft_groups(ds)}
    assert F.EMPHYSEMA.value not in findings  # rejected finding left out
    assert {F.NODULE.value, F.PNEUMOTHORAX.value} <= findings

    observer_types = [
        item.ConceptCodeSequence[0].CodeMeaning
        for item in ds.ContentSequence
        if item.RelationshipType == "HAS OBS CONTEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121005"
    ]
    assert observer_types == ["Person", "Device"]  # person added, device kept

    from tests.results.test_encode import impressions

    assert impressions(path)["zh-CN"] == "右肺上叶实性结节，约8毫米。建议3个月后复查CT。"
    report = V.dciodvfy(path)
    assert not report.errors and not report.warnings, report.text
    assert "示范医院放射科" in V.dsrdump(path)
    hd.sr.srread(path)  # re-parses


def test_signed_sr_passes_pixelmed(ct_case: Case, tmp_path: Path) -> None:
    path = tmp_path / "signed.dcm"
    path.write_bytes(dataset_bytes(sign(ct_case.one("sr"), impression="结节，建议随访。")))  # type: ignore[arg-type]
    report = V.pixelmed_sr(path, group_templates(path))
    assert not report.errors, report.text


def test_signing_is_deterministic_and_content_addressed(ct_case: Case) -> None:
    a = dataset_bytes(sign(ct_case.one("sr")))  # type: ignore[arg-type]
    b = dataset_bytes(sign(ct_case.one("sr")))  # type: ignore[arg-type]
    assert a == b
    other = sign(ct_case.one("sr"), report_en="Different text.")
    assert other.SOPInstanceUID != dcmread(__import__("io").BytesIO(a)).SOPInstanceUID  # type: ignore[attr-defined]


def test_rejecting_by_tracking_uid(ct_case: Case) -> None:
    draft = dcmread(ct_case.one("sr"))
    box_group = next(g for g in draft_groups(draft) if g.tracking_id.endswith("box 1"))
    signed = sign(ct_case.one("sr"), rejected_codes=[], rejected_tracking_uids=[box_group.tracking_uid])
    uids = {g.tracking_uid for g in draft_groups(signed)}  # type: ignore[arg-type]
    assert box_group.tracking_uid not in uids and len(uids) == len(draft_groups(draft)) - 1


def test_signing_needs_a_verifier(ct_case: Case) -> None:
    with pytest.raises(EncodeError):
        sign(ct_case.one("sr"), verifier_name=" ")
    with pytest.raises(EncodeError):
        sign(ct_case.one("kos"))


def test_golden_ct_sr_tree(ct_case: Case) -> None:
    """The content tree of the CT draft equals the reviewed file (regenerate: DICOM_AGENT_WRITE_GOLDEN=1)."""
    text = dump_tree(dcmread(ct_case.one("sr")))
    if os.environ.get("DICOM_AGENT_WRITE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8")
