"""Write a phantom ``Case`` as real DICOM (pydicom) plus its ground truth, so it can flow through the node.

* CXR → Digital X-Ray Image Storage - For Presentation (PS3.3 A.26: DX Series, DX Anatomy Imaged, DX Image,
  DX Detector, VOI LUT), 12-bit, MONOCHROME2 by default or MONOCHROME1, PixelSpacing at the patient plane (the phantom's
  spacing; ground-truth sizes use it) and ImagerPixelSpacing at the detector (× the 1.125 magnification),
  PatientOrientation L\\F (PA view: image left = patient right).
* CT → CT Image Storage, one instance per slice (PS3.3 A.3), HU through RescaleSlope/Intercept (signed int16
  with intercept 0, or unsigned with intercept -1024), lung and mediastinal windows, one FrameOfReferenceUID.
* PET → PET Image Storage (PS3.3 A.21), Units BQML, DecayCorrection START, per-slice RescaleSlope, an FDG
  RadiopharmaceuticalInformationSequence, PatientWeight, so SUVbw = value × weight / decayed dose.

Everything is deterministic: UIDs are ``derived_uid`` of the case identity, dates and times come from the seed,
so the same case gives byte-identical files (for a given pydicom version). Files are named ``IM0001.dcm`` ...
in InstanceNumber order; ``ground_truth.json`` and ``mask.npy.gz`` (the label map, gzip without timestamp)
lie beside them.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from dicom_agent.dicom.uids import derived_uid
from models.synthetic.case import Case
from models.terminology import LABELS, LATERALITY_CODES, LOCATIONS

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_IMAGE = "1.2.840.10008.5.1.4.1.1.128"
SOP_CLASS = {"cxr": DX_FOR_PRESENTATION, "ct": CT_IMAGE, "pet": PET_IMAGE}
MODALITY = {"cxr": "DX", "ct": "CT", "pet": "PT"}
TRANSFER_SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg2000": JPEG2000Lossless,  # pylibjpeg-openjpeg encoder
    "jpegls": JPEGLSLossless,  # pyjpegls encoder
}
_ENCODER_PLUGIN = {"rle": "pydicom", "jpeg2000": "pylibjpeg", "jpegls": "pyjpegls"}
MANUFACTURER = "dicom_agent"
MODEL_NAME = "synthetic phantom"
_REFERRING = ("LIN^HUA", "MILLER^ROSE", "ZHOU^MING", "KOWALSKI^ADAM")


@dataclass(frozen=True)
class WrittenStudy:
    """Where a case went: its folder, instance files (InstanceNumber order), ground truth and UIDs."""

    directory: Path
    files: list[Path]
    ground_truth: Path
    study_instance_uid: str
    series_instance_uid: str


def case_uid(case: Case, *role: str) -> str:
    """Deterministic UID for one object of a case (study, series, frame of reference, instance k)."""
    identity = (
        "dicom_agent.phantom",
        case.kind,
        str(case.seed),
        "oor" if case.meta.get("out_of_range") else "in",
        "x".join(str(n) for n in case.image.shape),
    )
    return derived_uid(*identity, *role)


def _study_datetime(seed: int) -> dt.datetime:
    day = dt.date(2025, 1, 1) + dt.timedelta(days=(seed * 7) % 365)
    return dt.datetime.combine(day, dt.time(8, 0)) + dt.timedelta(minutes=(seed * 13) % 540)


def _code_item(code: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    return item


def _common(case: Case, when: dt.datetime) -> Dataset:
    """Patient, study, series and equipment attributes shared by every instance of the case."""
    patient = case.meta["patient"]
    kind = case.kind
    ds = Dataset()
    ds.SOPClassUID = SOP_CLASS[kind]
    ds.PatientName = patient["name"]
    ds.PatientID = patient["id"]
    ds.IssuerOfPatientID = "DICOM_AGENT_PHANTOMS"
    ds.PatientBirthDate = patient["birth_date"]
    ds.PatientSex = patient["sex"]
    ds.PatientAge = f"{int(patient['age']):03d}Y"
    ds.PatientWeight = f"{float(patient['weight_kg']):.1f}"
    ds.PatientSize = f"{float(patient['height_m']):.2f}"
    ds.StudyInstanceUID = case_uid(case, "study")
    ds.StudyDate = when.strftime("%Y%m%d")
    ds.StudyTime = when.strftime("%H%M%S")
    ds.ReferringPhysicianName = _REFERRING[case.seed % len(_REFERRING)]
    ds.StudyID = f"{case.seed % 1_000_000}"
    ds.AccessionNumber = f"ACC{'XCP'[['cxr', 'ct', 'pet'].index(kind)]}{case.seed:08d}"
    ds.StudyDescription = {
        "cxr": "XR CHEST PA (synthetic phantom)",
        "ct": "CT CHEST (synthetic phantom)",
        "pet": "PET FDG WHOLE BODY (synthetic phantom)",
    }[kind]
    ds.Modality = MODALITY[kind]
    ds.SeriesInstanceUID = case_uid(case, "series")
    ds.SeriesNumber = 1
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = ds.StudyTime
    ds.SeriesDescription = {"cxr": "PA", "ct": "Chest 5mm", "pet": "PET AC"}[kind]
    ds.BodyPartExamined = "CHEST" if kind != "pet" else "WHOLEBODY"
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.InstitutionName = "dicom_agent test site"
    ds.StationName = "PHANTOM1"
    ds.SoftwareVersions = "1"
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.AcquisitionDate = ds.StudyDate
    ds.AcquisitionTime = ds.StudyTime
    ds.InstanceCreationDate = ds.StudyDate
    ds.InstanceCreationTime = ds.StudyTime
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    return ds


def _finish(ds: Dataset, path: Path, transfer_syntax: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DICOM_AGENT_1"
    ds.file_meta = meta
    if transfer_syntax != "explicit":
        ds.compress(
            TRANSFER_SYNTAXES[transfer_syntax],
            encoding_plugin=_ENCODER_PLUGIN[transfer_syntax],
            generate_instance_uid=False,
        )
    ds.save_as(path, enforce_file_format=True)


def _cxr(
    case: Case, base: Dataset, directory: Path, transfer_syntax: str, photometric: str, xray_class: str
) -> list[Path]:
    ds = Dataset()
    ds.update(base)
    ds.SOPInstanceUID = case_uid(case, "instance", "0")
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "U"
    ds.AnatomicRegionSequence = Sequence([_code_item(("51185008", "SCT", "Chest"))])
    ds.ViewCodeSequence = Sequence([_code_item(("399348003", "SCT", "postero-anterior"))])
    ds.KVP = "120"
    ds.ExposureTime = "8"
    ds.XRayTubeCurrent = "250"
    ds.DistanceSourceToDetector = "1800"
    ds.DistanceSourceToPatient = "1600"
    ds.EstimatedRadiographicMagnificationFactor = "1.125"
    ds.PositionerType = "COLUMN"
    ds.AcquisitionContextSequence = Sequence([])
    ds.DetectorType = "SCINTILLATOR"
    ds.DetectorConfiguration = "AREA"
    ds.DetectorID = "PHANTOM-DET"
    ds.Rows, ds.Columns = case.image.shape
    spacing = [f"{case.spacing[0]:.10g}", f"{case.spacing[1]:.10g}"]
    magnification = 1800.0 / 1600.0  # DistanceSourceToDetector / DistanceSourceToPatient
    ds.PixelSpacing = spacing
    ds.ImagerPixelSpacing = [f"{v * magnification:.10g}" for v in case.spacing]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "phantom geometry"
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1  # higher values = less beam intensity (denser)
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    stored = np.rint(np.clip(case.image, 0.0, 1.0) * 4095.0).astype(np.uint16)
    lo, hi = np.percentile(stored, [1, 99.5])
    center, width = 0.5 * (lo + hi), max(hi - lo, 64.0)
    if photometric == "MONOCHROME1":
        stored = (4095 - stored).astype(np.uint16)
        center = 4095 - center
        ds.PresentationLUTShape = "INVERSE"
    else:
        ds.PresentationLUTShape = "IDENTITY"
    ds.PhotometricInterpretation = photometric
    ds.WindowCenter = f"{center:.0f}"
    ds.WindowWidth = f"{width:.0f}"
    ds.VOILUTFunction = "LINEAR"
    ds.PixelData = stored.tobytes()
    if xray_class == "CR":  # Computed Radiography Image Storage (PS3.3 A.2): no DX-only modules
        ds.SOPClassUID = CR_IMAGE
        ds.Modality = "CR"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        for keyword in (
            "PresentationIntentType",
            "PositionerType",
            "AcquisitionContextSequence",
            "PixelIntensityRelationship",
            "PixelIntensityRelationshipSign",
            "DetectorType",
            "DetectorConfiguration",
            "DetectorID",
            "PixelSpacingCalibrationType",
            "PixelSpacingCalibrationDescription",
            "ViewCodeSequence",
            "ImageLaterality",
            "EstimatedRadiographicMagnificationFactor",
        ):
            delattr(ds, keyword)
        ds.PlateID = "PHANTOM-PLATE"
    path = directory / "IM0001.dcm"
    _finish(ds, path, transfer_syntax)
    return [path]


def _volume_geometry(case: Case) -> tuple[list[float], float, float]:
    """Origin (x, y) of the top-left voxel centre in LPS mm, and z of slice 0; the volume is centred on 0."""
    dz, dy, dx = case.spacing
    d, h, w = case.image.shape
    x0 = -(w / 2 - 0.5) * dx
    y0 = -(h / 2 - 0.5) * dy
    z0 = -(d / 2 - 0.5) * dz
    return [x0, y0], z0, dz


def _slice_base(case: Case, base: Dataset) -> Dataset:
    ds = Dataset()
    ds.update(base)
    dz, dy, dx = case.spacing
    ds.FrameOfReferenceUID = case_uid(case, "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    if case.kind == "ct":  # PET carries the coded orientation sequences instead (PS3.3 C.7.3.1)
        ds.PatientPosition = "HFS"
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [f"{dy:.10g}", f"{dx:.10g}"]
    ds.SliceThickness = f"{dz:.10g}"
    ds.SpacingBetweenSlices = f"{dz:.10g}"
    ds.Rows, ds.Columns = case.image.shape[1:]
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    return ds


def _instance_number(case: Case, k: int) -> int:
    """InstanceNumber 1 is the most superior slice (a head-first acquisition order); k = 0 is the lowest."""
    return int(case.image.shape[0] - k)


def _ct(case: Case, base: Dataset, directory: Path, transfer_syntax: str, signed: bool) -> list[Path]:
    common = _slice_base(case, base)
    common.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    common.KVP = "120"
    common.XRayTubeCurrent = "200"
    common.ExposureTime = "500"
    common.ConvolutionKernel = "STANDARD"
    common.AcquisitionNumber = 1
    common.RescaleSlope = "1"
    common.RescaleType = "HU"
    common.WindowCenter = ["-600", "40"]
    common.WindowWidth = ["1500", "400"]
    common.WindowCenterWidthExplanation = ["LUNG", "MEDIASTINUM"]
    common.PixelRepresentation = 1 if signed else 0
    common.RescaleIntercept = "0" if signed else "-1024"
    (x0, y0), z0, dz = _volume_geometry(case)
    files = []
    for k in range(case.image.shape[0]):
        ds = Dataset()
        ds.update(common)
        number = _instance_number(case, k)
        ds.SOPInstanceUID = case_uid(case, "instance", str(k))
        ds.InstanceNumber = number
        z = z0 + k * dz
        ds.ImagePositionPatient = [f"{x0:.10g}", f"{y0:.10g}", f"{z:.10g}"]
        ds.SliceLocation = f"{z:.10g}"
        hu = case.image[k].astype(np.int32)
        ds.PixelData = (hu.astype(np.int16) if signed else np.clip(hu + 1024, 0, 65535).astype(np.uint16)).tobytes()
        path = directory / f"IM{number:04d}.dcm"
        _finish(ds, path, transfer_syntax)
        files.append(path)
    return files


def pet_activity_factor(case: Case) -> float:
    """Bq/mL per SUV unit: decayed dose / body weight in grams (DecayCorrection START, PS3.3 C.8.9.1)."""
    dose = float(case.meta["injected_dose_bq"])
    delay = float(case.meta["injection_delay_s"])
    decayed = dose * math.exp(-math.log(2) * delay / float(case.meta["half_life_s"]))
    return decayed / (float(case.meta["patient"]["weight_kg"]) * 1000.0)


def _pet(case: Case, base: Dataset, directory: Path, transfer_syntax: str, when: dt.datetime) -> list[Path]:
    common = _slice_base(case, base)
    common.ImageType = ["ORIGINAL", "PRIMARY"]
    common.Units = "BQML"
    common.CountsSource = "EMISSION"
    common.SeriesType = ["WHOLE BODY", "IMAGE"]
    common.CorrectedImage = ["DECY", "ATTN", "SCAT", "DTIM", "RAN", "NORM"]
    common.DecayCorrection = "START"
    common.RandomsCorrectionMethod = "DLYD"
    common.AttenuationCorrectionMethod = "CT-based"
    common.ReconstructionMethod = "OSEM"
    common.CollimatorType = "NONE"
    common.NumberOfSlices = case.image.shape[0]
    common.ImageIndex = 1  # set per slice below
    common.AcquisitionNumber = 1
    common.PixelRepresentation = 0
    common.RescaleIntercept = "0"
    common.PatientOrientationCodeSequence = Sequence([_code_item(("102538003", "SCT", "recumbent"))])
    common.PatientOrientationCodeSequence[0].PatientOrientationModifierCodeSequence = Sequence(
        [_code_item(("40199007", "SCT", "supine"))]
    )
    common.PatientGantryRelationshipCodeSequence = Sequence([_code_item(("102540008", "SCT", "headfirst"))])
    injection = when - dt.timedelta(seconds=int(case.meta["injection_delay_s"]))
    radio = Dataset()
    radio.Radiopharmaceutical = "Fluorodeoxyglucose"
    radio.RadiopharmaceuticalStartTime = injection.strftime("%H%M%S")
    radio.RadiopharmaceuticalStartDateTime = injection.strftime("%Y%m%d%H%M%S")
    radio.RadionuclideTotalDose = f"{float(case.meta['injected_dose_bq']):.10g}"
    radio.RadionuclideHalfLife = f"{float(case.meta['half_life_s']):.10g}"
    radio.RadionuclidePositronFraction = "0.9673"
    radio.RadionuclideCodeSequence = Sequence([_code_item(("77004003", "SCT", "^18^Fluorine"))])
    radio.RadiopharmaceuticalCodeSequence = Sequence([_code_item(("35321007", "SCT", "Fluorodeoxyglucose F^18^"))])
    common.RadiopharmaceuticalInformationSequence = Sequence([radio])
    common.FrameReferenceTime = "0"
    common.ActualFrameDuration = 120000
    common.DecayFactor = "1"
    common.DoseCalibrationFactor = "1"
    common.SliceSensitivityFactor = "1"
    factor = pet_activity_factor(case)
    common.WindowCenter = f"{3.5 * factor:.1f}"
    common.WindowWidth = f"{7.0 * factor:.1f}"
    (x0, y0), z0, dz = _volume_geometry(case)
    files = []
    for k in range(case.image.shape[0]):
        ds = Dataset()
        ds.update(common)
        number = _instance_number(case, k)
        ds.SOPInstanceUID = case_uid(case, "instance", str(k))
        ds.InstanceNumber = number
        ds.ImageIndex = number
        z = z0 + k * dz
        ds.ImagePositionPatient = [f"{x0:.10g}", f"{y0:.10g}", f"{z:.10g}"]
        ds.SliceLocation = f"{z:.10g}"
        activity = case.image[k].astype(np.float64) * factor
        peak = float(activity.max())
        slope = peak / 65535.0 if peak > 0 else 1.0
        slope = float(f"{slope:.8g}")  # what the DS string holds is what readers multiply by
        ds.RescaleSlope = f"{slope:.8g}"
        ds.LargestImagePixelValue = int(np.rint(peak / slope)) if peak > 0 else 0
        ds.SmallestImagePixelValue = 0
        ds["LargestImagePixelValue"].VR = "US"
        ds["SmallestImagePixelValue"].VR = "US"
        ds.PixelData = np.clip(np.rint(activity / slope), 0, 65535).astype(np.uint16).tobytes()
        path = directory / f"IM{number:04d}.dcm"
        _finish(ds, path, transfer_syntax)
        files.append(path)
    return files


def ground_truth(case: Case, files: list[Path]) -> dict[str, Any]:
    """The JSON ground truth: boxes in source pixel coordinates on the named SOP instance."""
    volume = case.kind != "cxr"
    sop = {k: case_uid(case, "instance", str(k)) for k in range(case.image.shape[0] if volume else 1)}
    lesions = []
    for i, lesion in enumerate(case.lesions):
        label = LABELS[lesion.label]
        entry: dict[str, Any] = {
            "index": i + 1,
            "label": lesion.label,
            "code": list(label.code),
            "name_en": label.name_en,
            "name_zh": label.name_zh,
            "focal": label.focal,
            "location": lesion.location,
            "location_code": list(LOCATIONS[lesion.location].code) if lesion.location else None,
            "laterality": lesion.laterality,
            "laterality_code": list(LATERALITY_CODES[lesion.laterality]) if lesion.laterality else None,
            "size_mm": lesion.size_mm,
            "attrs": {k: v for k, v in lesion.attrs.items() if not k.startswith("_")},
        }
        if volume:
            entry["slices"] = [
                {
                    "index": k,
                    "instance_number": _instance_number(case, k),
                    "sop_instance_uid": sop[k],
                    "box": list(lesion.slice_boxes[k]) if k in lesion.slice_boxes else None,
                }
                for k in lesion.slices
            ]
        else:
            entry["sop_instance_uid"] = sop[0]
            entry["box"] = list(lesion.box) if lesion.box else None
        lesions.append(entry)
    return {
        "kind": case.kind,
        "seed": case.seed,
        "out_of_range": bool(case.meta.get("out_of_range")),
        "modality": MODALITY[case.kind],
        "sop_class_uid": SOP_CLASS[case.kind],
        "study_instance_uid": case_uid(case, "study"),
        "series_instance_uid": case_uid(case, "series"),
        "shape": list(case.image.shape),
        "spacing_mm": list(case.spacing),
        "box_convention": "(x0, y0, x1, y1) source pixel coordinates, (0, 0) = top-left corner of the top-left pixel",
        "slice_order": "index 0 = most inferior slice; instance_number 1 = most superior" if volume else None,
        "labels": sorted(case.labels),
        "lesions": lesions,
        "report": case.report,
        "qa": [{"lang": q.lang, "kind": q.kind, "question": q.question, "answer": q.answer} for q in case.qa],
        "meta": {k: v for k, v in case.meta.items()},
        "files": [p.name for p in files],
        "mask_file": "mask.npy.gz",
    }


def _write_mask(mask: np.ndarray, path: Path) -> None:
    raw = io.BytesIO()
    np.save(raw, mask, allow_pickle=False)
    with path.open("wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())


def read_mask(path: Path) -> np.ndarray:
    """Load a ``mask.npy.gz`` written beside a study."""
    with gzip.open(path, "rb") as gz:
        return np.load(io.BytesIO(gz.read()), allow_pickle=False)


def write_case(
    case: Case,
    directory: Path,
    *,
    transfer_syntax: str = "explicit",
    photometric: str = "MONOCHROME2",
    ct_signed: bool = True,
    xray_class: str = "DX",
) -> WrittenStudy:
    """Write one case's instances, ground truth JSON and mask into ``directory`` (created if missing).

    Files of the form ``IM0001.dcm`` left in ``directory`` by an earlier, larger study are removed.

    ``transfer_syntax``: "explicit" (Explicit VR Little Endian, default), "rle" (RLE Lossless, pydicom's encoder),
    "jpeg2000" / "jpegls" (lossless, pylibjpeg-openjpeg / pyjpegls encoders) for the node's decoding tests.
    ``photometric``: CXR only, "MONOCHROME2" or "MONOCHROME1". ``xray_class``: CXR only, "DX" (Digital X-Ray
    For Presentation) or "CR" (Computed Radiography). ``ct_signed``: CT stored as signed int16
    (intercept 0) or unsigned (intercept -1024).
    """
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer syntax {transfer_syntax!r}: expected one of {', '.join(TRANSFER_SYNTAXES)}")
    if xray_class not in ("DX", "CR"):
        raise ValueError(f"x-ray class {xray_class!r}: expected DX or CR")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric interpretation {photometric!r}: expected MONOCHROME1 or MONOCHROME2")
    directory.mkdir(parents=True, exist_ok=True)
    when = _study_datetime(case.seed)
    base = _common(case, when)
    if case.kind == "cxr":
        files = _cxr(case, base, directory, transfer_syntax, photometric, xray_class)
    elif case.kind == "ct":
        files = _ct(case, base, directory, transfer_syntax, ct_signed)
    else:
        files = _pet(case, base, directory, transfer_syntax, when)
    files.sort(key=lambda p: p.name)
    # A folder rewritten with fewer slices must not keep instances of the previous study (same file pattern only).
    for stale in sorted(set(directory.glob("IM[0-9][0-9][0-9][0-9].dcm")) - set(files)):
        stale.unlink()
    truth = ground_truth(case, files)
    truth["transfer_syntax"] = str(TRANSFER_SYNTAXES[transfer_syntax])
    if case.kind == "cxr" and xray_class == "CR":
        truth["modality"], truth["sop_class_uid"] = "CR", CR_IMAGE
    truth_path = directory / "ground_truth.json"
    truth_path.write_text(json.dumps(truth, ensure_ascii=False, indent=1, default=_json_default) + "\n", "utf-8")
    _write_mask(case.mask, directory / "mask.npy.gz")
    return WrittenStudy(directory, files, truth_path, truth["study_instance_uid"], truth["series_instance_uid"])


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
