"""Small, valid source DICOM made in the test: a CT series, a DX chest radiograph, a PET series (one study).

The geometry is real (positions, orientation, spacing, Frame of Reference) so that highdicom and dciodvfy
see what a scanner would write; pixel content is a smooth phantom with a bright blob.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
)

from dicom_agent.dicom.uids import derived_uid

STUDY_UID = derived_uid("test-study", "results")
FOR_UID = derived_uid("test-for", "results")


def _base(sop_class: str, sop_uid: str, series_uid: str, modality: str, series_number: int, number: int) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.10.1234.1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"  # a Latin-1 source: the encoders must still write UTF-8
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.InstanceNumber = number
    ds.PatientName = "Phantom^Test"
    ds.PatientID = "PH-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "080000"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC0001"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic phantom study"
    ds.Manufacturer = "dicom_agent tests"
    ds.SeriesDate = "20260101"
    ds.SeriesTime = "080000"
    ds.ContentDate = "20260101"
    ds.ContentTime = "080000"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _phantom(size: int, z: float = 0.0) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    c = size / 2
    body = ((xx - c) ** 2 + (yy - c) ** 2) < (0.45 * size) ** 2
    blob = ((xx - 0.65 * size) ** 2 + (yy - 0.4 * size) ** 2 + (z * 4) ** 2) < (0.08 * size) ** 2
    return (body * 400 + blob * 600).astype(np.uint16)


def _volume(modality: str, sop_class: str, n: int, size: int, series_number: int) -> list[Dataset]:
    series_uid = derived_uid("test-series", modality)
    out = []
    for k in range(n):
        ds = _base(
            sop_class, derived_uid("test-instance", modality, str(k)), series_uid, modality, series_number, k + 1
        )
        ds.FrameOfReferenceUID = FOR_UID
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [-32.0, -32.0, float(k * 2.5)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [1.0, 1.0]
        ds.SliceThickness = 2.5
        ds.Rows = ds.Columns = size
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PatientPosition = "HFS"
        ds.BodyPartExamined = "CHEST"
        ds.PixelData = _phantom(size, k - n / 2).tobytes()
        if modality == "CT":
            ds.RescaleIntercept = -1024
            ds.RescaleSlope = 1
            ds.KVP = 120
            ds.AcquisitionNumber = 1
        out.append(ds)
    if modality == "PT":
        _pet_attributes(out)
    return out


def _pet_attributes(slices: list[Dataset]) -> None:
    for k, ds in enumerate(slices):
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.Units = "BQML"
        ds.CountsSource = "EMISSION"
        ds.SeriesType = ["STATIC", "IMAGE"]
        ds.CorrectedImage = ["ATTN", "DECY"]
        ds.DecayCorrection = "START"
        ds.RandomsCorrectionMethod = "NONE"
        ds.AttenuationCorrectionMethod = "CT"
        ds.ReconstructionMethod = "OSEM"
        ds.CollimatorType = "NONE"
        ds.NumberOfSlices = len(slices)
        ds.ImageIndex = k + 1
        ds.FrameReferenceTime = 0
        ds.ActualFrameDuration = 1000
        ds.AcquisitionDate = "20260101"
        ds.AcquisitionTime = "080000"
        ds.DecayFactor = 1.0
        ds.PrimaryPromptsCountsAccumulated = 1000
        info = Dataset()
        info.Radiopharmaceutical = "Fluorodeoxyglucose"
        info.RadionuclideTotalDose = 370000000
        info.RadionuclideHalfLife = 6586.2
        info.RadiopharmaceuticalStartTime = "070000"
        info.RadionuclideCodeSequence = [_code("77004003", "SCT", "^18^Fluorine")]
        ds.RadiopharmaceuticalInformationSequence = [info]
        ds.PatientOrientationCodeSequence = []
        ds.PatientGantryRelationshipCodeSequence = []
        del ds.PatientPosition


def ct_series(n: int = 16, size: int = 64) -> list[Dataset]:
    return _volume("CT", CTImageStorage, n, size, 2)


def pet_series(n: int = 8, size: int = 32) -> list[Dataset]:
    return _volume("PT", PositronEmissionTomographyImageStorage, n, size, 3)


def dx_image(size: int = 128) -> Dataset:
    uid = derived_uid("test-instance", "DX", "0")
    ds = _base(DigitalXRayImageStorageForPresentation, uid, derived_uid("test-series", "DX"), "DX", 1, 1)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientOrientation = ["L", "F"]
    ds.ViewPosition = "PA"
    ds.BodyPartExamined = "CHEST"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PresentationLUTShape = "IDENTITY"
    ds.ImagerPixelSpacing = [0.5, 0.5]
    ds.PixelSpacing = [0.5, 0.5]
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = 512
    ds.WindowWidth = 1024
    ds.BurnedInAnnotation = "NO"
    ds.DetectorType = "SCINTILLATOR"
    ds.AcquisitionDate = "20260101"
    ds.AcquisitionTime = "080000"
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.ImageLaterality = "U"
    ds.AnatomicRegionSequence = [_code("51185008", "SCT", "Chest")]
    ds.LossyImageCompression = "00"
    ds.PositionerType = "NONE"
    ds.AcquisitionContextSequence = []
    ds.ViewCodeSequence = [_code("399348003", "SCT", "postero-anterior")]
    ds.PixelData = (_phantom(size) // 2).tobytes()
    return ds


def write_all(datasets: list[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.Modality}-{ds.InstanceNumber:03d}-{ds.SOPInstanceUID[-8:]}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
