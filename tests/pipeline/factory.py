"""Small, valid DICOM files for routing and pipeline tests (written with pydicom, pixel data tiny)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1"
PET_IMAGE = "1.2.840.10008.5.1.4.1.1.128"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SOP_BY_MODALITY = {"CT": CT_IMAGE, "CR": CR_IMAGE, "DX": DX_IMAGE, "PT": PET_IMAGE, "SR": COMPREHENSIVE_3D_SR}
AXIAL = [1, 0, 0, 0, 1, 0]
CORONAL = [1, 0, 0, 0, 0, -1]


def instance(
    study_uid: str,
    series_uid: str,
    modality: str,
    number: int = 1,
    *,
    body_part: str | None = None,
    study_description: str = "",
    series_description: str = "",
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    orientation: list[int] | None = None,
    series_number: int = 1,
    extra: dict[str, object] | None = None,
    size: int = 8,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SOP_BY_MODALITY[modality]
    ds.SOPClassUID = SOP_BY_MODALITY[modality]
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientName = "Test^Routing"
    ds.PatientID = "RT-1"
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description
    ds.SeriesNumber = series_number
    ds.InstanceNumber = number
    if body_part:
        ds.BodyPartExamined = body_part
    if modality != "SR":
        ds.ImageType = list(image_type)
        if orientation is not None:
            ds.ImageOrientationPatient = orientation
            ds.ImagePositionPatient = [0, 0, float(number)]
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = np.zeros((size, size), np.uint16).tobytes()
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    return ds


def write_series(folder: Path, count: int, study_uid: str, modality: str, **kw: object) -> str:
    """Writes ``count`` instances of one new series; returns the series UID."""
    series_uid = generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, count + 1):
        ds = instance(study_uid, series_uid, modality, i, **kw)  # type: ignore[arg-type]
        ds.save_as(folder / f"{series_uid[-12:]}_{i:04d}.dcm", enforce_file_format=True)
    return series_uid
