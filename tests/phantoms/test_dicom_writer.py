"""The DICOM the phantoms write: dciodvfy-clean, re-read by pydicom and SimpleITK with the right values and
geometry, ground truth pointing at the right instances, byte-identical on a re-run."""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.pixels import apply_modality_lut
from pydicom.uid import RLELossless

from dicom_agent.dicom.uids import is_valid_uid
from models.synthetic import Case, make_case
from models.synthetic.dicom_writer import read_mask, write_case

SMALL = {"cxr": {"size": 128}, "ct": {"size": 64, "depth": 16}, "pet": {"size": 48, "depth": 16}}
SEED = {"cxr": 52, "ct": 56, "pet": 5}  # seeds with findings
DCIODVFY = Path(sys.executable).parent / "dciodvfy"
DCENTVFY = Path(sys.executable).parent / "dcentvfy"


def _case(kind: str) -> Case:
    return make_case(kind, SEED[kind], **SMALL[kind])


def _errors(tool: Path, files: list[Path]) -> list[str]:
    proc = subprocess.run([str(tool), *map(str, files)], capture_output=True, text=True, timeout=120)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


def _sorted_by_z(files: list[Path]) -> list[pydicom.Dataset]:
    datasets = [pydicom.dcmread(f) for f in files]
    return sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))


needs_dicom3tools = pytest.mark.skipif(not DCIODVFY.exists(), reason="dicom3tools (dciodvfy) not in the venv")


@needs_dicom3tools
@pytest.mark.parametrize("syntax", ["explicit", "rle", "jpeg2000", "jpegls"])
@pytest.mark.parametrize("kind", ["cxr", "ct", "pet"])
def test_every_written_instance_passes_dciodvfy(kind: str, syntax: str, tmp_path: Path) -> None:
    study = write_case(_case(kind), tmp_path, transfer_syntax=syntax)
    files = study.files if kind == "cxr" else study.files[:: max(1, len(study.files) // 4)]
    for f in files:
        assert _errors(DCIODVFY, [f]) == [], f
    assert _errors(DCENTVFY, study.files) == []


@needs_dicom3tools
def test_monochrome1_cr_and_unsigned_ct_variants_pass_dciodvfy(tmp_path: Path) -> None:
    m1 = write_case(_case("cxr"), tmp_path / "m1", photometric="MONOCHROME1")
    cr = write_case(_case("cxr"), tmp_path / "cr", xray_class="CR", photometric="MONOCHROME1")
    ct = write_case(_case("ct"), tmp_path / "ct", ct_signed=False)
    assert _errors(DCIODVFY, m1.files) == []
    assert _errors(DCIODVFY, cr.files) == []
    assert _errors(DCIODVFY, ct.files[:2]) == []
    ds = pydicom.dcmread(cr.files[0])
    assert ds.Modality == "CR" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1"
    truth = json.loads(cr.ground_truth.read_text("utf-8"))
    assert truth["modality"] == "CR" and truth["sop_class_uid"] == ds.SOPClassUID


SYNTAX_UIDS = {
    "explicit": pydicom.uid.ExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg2000": pydicom.uid.JPEG2000Lossless,
    "jpegls": pydicom.uid.JPEGLSLossless,
}


@pytest.mark.parametrize("syntax", list(SYNTAX_UIDS))
def test_radiograph_round_trip(syntax: str, tmp_path: Path) -> None:
    case = _case("cxr")
    study = write_case(case, tmp_path, transfer_syntax=syntax)
    ds = pydicom.dcmread(study.files[0])
    assert ds.Modality == "DX" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"
    assert ds.file_meta.TransferSyntaxUID == SYNTAX_UIDS[syntax]
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.ViewPosition == "PA"
    assert list(ds.PatientOrientation) == ["L", "F"] and ds.BodyPartExamined == "CHEST"
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx(case.spacing)
    magnification = float(ds.DistanceSourceToDetector) / float(ds.DistanceSourceToPatient)
    assert float(ds.EstimatedRadiographicMagnificationFactor) == pytest.approx(magnification)
    assert [float(v) for v in ds.ImagerPixelSpacing] == pytest.approx([v * magnification for v in case.spacing])
    assert "WindowCenter" in ds and "WindowWidth" in ds
    pixels = ds.pixel_array.astype(np.float64) / 4095.0
    assert np.abs(pixels - case.image).max() <= 0.5 / 4095 + 1e-6


def test_monochrome1_stores_inverted_values(tmp_path: Path) -> None:
    case = _case("cxr")
    ds = pydicom.dcmread(write_case(case, tmp_path, photometric="MONOCHROME1").files[0])
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.PresentationLUTShape == "INVERSE"
    restored = (4095 - ds.pixel_array.astype(np.float64)) / 4095.0
    assert np.abs(restored - case.image).max() <= 0.5 / 4095 + 1e-6


@pytest.mark.parametrize(("signed", "syntax"), [(True, "rle"), (False, "rle"), (True, "jpeg2000"), (True, "jpegls")])
def test_ct_series_hounsfield_and_geometry(signed: bool, syntax: str, tmp_path: Path) -> None:
    case = _case("ct")
    study = write_case(case, tmp_path, transfer_syntax=syntax, ct_signed=signed)
    datasets = _sorted_by_z(study.files)
    assert len(datasets) == case.image.shape[0]
    dz, dy, dx = case.spacing
    frame_of_ref = {ds.FrameOfReferenceUID for ds in datasets}
    assert len(frame_of_ref) == 1 and is_valid_uid(frame_of_ref.pop())
    for k, ds in enumerate(datasets):
        assert ds.PixelRepresentation == (1 if signed else 0)
        assert float(ds.RescaleIntercept) == (0.0 if signed else -1024.0)
        assert np.array_equal(apply_modality_lut(ds.pixel_array, ds), case.image[k])
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.PixelSpacing] == [dy, dx]
        assert float(ds.SliceThickness) == pytest.approx(dz, rel=1e-8)
        if k:
            step = float(ds.ImagePositionPatient[2]) - float(datasets[k - 1].ImagePositionPatient[2])
            assert step == pytest.approx(dz)


@pytest.mark.parametrize("kind", ["ct", "pet"])
def test_simpleitk_reads_the_series_with_the_right_spacing_orientation_and_voxels(kind: str, tmp_path: Path) -> None:
    case = _case(kind)
    study = write_case(case, tmp_path)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
    image = reader.Execute()
    dz, dy, dx = case.spacing
    assert image.GetSize() == (case.image.shape[2], case.image.shape[1], case.image.shape[0])
    assert image.GetSpacing() == pytest.approx((dx, dy, dz))
    assert image.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    array = sitk.GetArrayFromImage(image)  # index 0 = lowest z, like Case.image
    if kind == "ct":
        assert np.array_equal(array, case.image)
    else:
        truth = json.loads(study.ground_truth.read_text("utf-8"))
        assert truth["modality"] == "PT"
        assert np.corrcoef(array.ravel(), case.image.ravel())[0, 1] > 0.9999


def _suv_from_header(ds: pydicom.Dataset) -> np.ndarray:
    """SUVbw computed from the DICOM header alone (Units BQML, DecayCorrection START)."""
    assert ds.Units == "BQML" and ds.DecayCorrection == "START"
    radio = ds.RadiopharmaceuticalInformationSequence[0]
    start = dt.datetime.strptime(radio.RadiopharmaceuticalStartDateTime, "%Y%m%d%H%M%S")
    series = dt.datetime.strptime(ds.SeriesDate + ds.SeriesTime, "%Y%m%d%H%M%S")
    decayed = float(radio.RadionuclideTotalDose) * math.exp(
        -math.log(2) * (series - start).total_seconds() / float(radio.RadionuclideHalfLife)
    )
    return apply_modality_lut(ds.pixel_array, ds) * float(ds.PatientWeight) * 1000.0 / decayed


def test_pet_values_give_back_suv_from_the_header(tmp_path: Path) -> None:
    case = _case("pet")
    datasets = _sorted_by_z(write_case(case, tmp_path).files)
    for k, ds in enumerate(datasets):
        assert ds.Modality == "PT" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.128"
        assert "Fluorodeoxyglucose" in ds.RadiopharmaceuticalInformationSequence[0].Radiopharmaceutical
        suv = _suv_from_header(ds)
        tolerance = 1e-3 * max(float(case.image[k].max()), 1e-3)
        assert np.abs(suv - case.image[k]).max() <= tolerance


@pytest.mark.parametrize("kind", ["cxr", "ct", "pet"])
def test_ground_truth_points_at_the_right_instances(kind: str, tmp_path: Path) -> None:
    case = _case(kind)
    study = write_case(case, tmp_path)
    truth = json.loads(study.ground_truth.read_text("utf-8"))
    by_uid = {}
    for f in study.files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert ds.StudyInstanceUID == truth["study_instance_uid"] == study.study_instance_uid
        assert ds.SeriesInstanceUID == truth["series_instance_uid"] == study.series_instance_uid
        assert ds.PatientID == case.meta["patient"]["id"] and ds.AccessionNumber
        by_uid[ds.SOPInstanceUID] = ds
    assert all(is_valid_uid(uid) for uid in by_uid)
    assert truth["labels"] == sorted(case.labels) and truth["report"] == case.report
    assert len(truth["lesions"]) == len(case.lesions) and case.lesions
    mask = read_mask(tmp_path / truth["mask_file"])
    assert np.array_equal(mask, case.mask)
    rows, cols = case.image.shape[-2:]
    for entry, lesion in zip(truth["lesions"], case.lesions, strict=True):
        assert entry["label"] == lesion.label and entry["size_mm"] == lesion.size_mm
        if kind == "cxr":
            assert entry["sop_instance_uid"] in by_uid
            if entry["box"]:
                x0, y0, x1, y1 = entry["box"]
                assert 0 <= x0 < x1 <= cols and 0 <= y0 < y1 <= rows
        else:
            dz = case.spacing[0]
            z_of_index0 = min(float(ds.ImagePositionPatient[2]) for ds in by_uid.values())
            for sl in entry["slices"]:
                ds = by_uid[sl["sop_instance_uid"]]
                assert int(ds.InstanceNumber) == sl["instance_number"]
                assert float(ds.ImagePositionPatient[2]) == pytest.approx(z_of_index0 + sl["index"] * dz)
                assert (mask[sl["index"]] == entry["index"]).any()
                if sl["box"]:
                    x0, y0, x1, y1 = sl["box"]
                    assert 0 <= x0 < x1 <= cols and 0 <= y0 < y1 <= rows


@pytest.mark.parametrize("kind", ["cxr", "ct", "pet"])
def test_rewriting_gives_byte_identical_files(kind: str, tmp_path: Path) -> None:
    first = write_case(_case(kind), tmp_path / "a", transfer_syntax="rle")
    second = write_case(_case(kind), tmp_path / "b", transfer_syntax="rle")
    names = sorted(p.name for p in first.directory.iterdir())
    assert names == sorted(p.name for p in second.directory.iterdir())
    for name in names:
        assert (first.directory / name).read_bytes() == (second.directory / name).read_bytes(), name


def test_rewriting_a_folder_with_a_smaller_series_leaves_no_stale_instances(tmp_path: Path) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("kept")
    write_case(make_case("ct", 3, size=32, depth=10), tmp_path)
    second = write_case(make_case("ct", 3, size=32, depth=6), tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.dcm")) == [p.name for p in second.files]
    assert len(second.files) == 6 and other.read_text() == "kept"


def test_different_cases_get_different_uids(tmp_path: Path) -> None:
    a = write_case(make_case("cxr", 1, size=64), tmp_path / "a")
    b = write_case(make_case("cxr", 2, size=64), tmp_path / "b")
    c = write_case(make_case("cxr", 1, size=64, out_of_range=True), tmp_path / "c")
    assert len({a.study_instance_uid, b.study_instance_uid, c.study_instance_uid}) == 3


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="transfer syntax"):
        write_case(_case("cxr"), tmp_path, transfer_syntax="jpeg")
    with pytest.raises(ValueError, match="photometric"):
        write_case(_case("cxr"), tmp_path, photometric="RGB")
    with pytest.raises(ValueError, match="x-ray class"):
        write_case(_case("cxr"), tmp_path, xray_class="MG")
    shutil.rmtree(tmp_path, ignore_errors=True)
