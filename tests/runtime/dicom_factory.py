"""Builds small synthetic DICOM files with pydicom for the runtime tests (geometry and pixel values known exactly)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    generate_uid,
)

STUDY_UID = "1.2.826.0.1.3680043.10.1361.1"


def _base(sop_class: str, modality: str, series_uid: str, study_uid: str = STUDY_UID) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientID = "PHANTOM"
    ds.PatientName = "Phantom^Test"
    ds.StudyDate = "20260101"
    ds.SeriesDate = "20260101"
    return ds


def _pixels(ds: Dataset, stored: np.ndarray, signed: bool) -> None:
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = int(stored.shape[-2]), int(stored.shape[-1])
    ds.BitsAllocated = 16
    ds.BitsStored = 16 if signed else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()


def radiograph(
    path: Path,
    stored: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = (2048.0, 4096.0),
    rescale: tuple[float, float] | None = None,
    spacing: tuple[float, float] = (0.5, 0.5),
    orientation: tuple[str, str] | None = ("L", "F"),
    compress: str | None = None,
    frames: int = 1,
) -> Dataset:
    """A DX image (``stored`` = unsigned 12-bit values, (rows, cols) or (frames, rows, cols))."""
    ds = _base(DigitalXRayImageStorageForPresentation, "DX", generate_uid())
    ds.PhotometricInterpretation = photometric
    _pixels(ds, stored, signed=False)
    if frames > 1:
        ds.NumberOfFrames = frames
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.ImagerPixelSpacing = list(spacing)
    if orientation:
        ds.PatientOrientation = list(orientation)
    ds.ViewPosition = "PA"
    if compress:
        ds.compress(compress, stored.astype(np.uint16), encoding_plugin="pylibjpeg" if "RLE" in compress else "")
    ds.save_as(path, enforce_file_format=True)
    return ds


def series(
    directory: Path,
    volume: np.ndarray,
    *,
    modality: str = "CT",
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.5),
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    origin: Sequence[float] = (-100.0, -120.0, -40.0),
    rescale: tuple[float, float] = (1.0, -1024.0),
    instance_numbers: Sequence[int] | None = None,
    extra: dict[str, object] | None = None,
    slice_slopes: Sequence[float] | None = None,
) -> list[tuple[Path, Dataset]]:
    """One file per slice of ``volume`` (k, rows, cols) = values after rescale; slice k at origin + k·dz·normal."""
    directory.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    sop = CTImageStorage if modality == "CT" else PositronEmissionTomographyImageStorage
    iop = np.asarray(orientation, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    out = []
    for k, plane in enumerate(volume):
        ds = _base(sop, modality, series_uid)
        ds.PhotometricInterpretation = "MONOCHROME2"
        slope = slice_slopes[k] if slice_slopes else rescale[0]
        stored = np.round((plane - rescale[1]) / slope)
        _pixels(ds, stored, signed=True)
        ds.RescaleSlope, ds.RescaleIntercept = slope, rescale[1]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * spacing[2] * normal]
        ds.InstanceNumber = instance_numbers[k] if instance_numbers is not None else k + 1
        ds.FrameOfReferenceUID = STUDY_UID + ".9"
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        path = directory / f"slice{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append((path, ds))
    return out
