"""Small synthetic DICOM instances for the node tests (CT- and CR-like), written with pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

CT = UID("1.2.840.10008.5.1.4.1.1.2")
CR = UID("1.2.840.10008.5.1.4.1.1.1")


def make_instance(
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    modality: str = "CT",
    number: int = 1,
    size: int = 16,
    seed: int = 0,
    transfer_syntax: UID = ExplicitVRLittleEndian,
) -> Dataset:
    """A valid CT (or CR with ``modality="CR"``) instance with ``size``×``size`` 16-bit pixels."""
    ds = Dataset()
    ds.SOPClassUID = CR if modality == "CR" else CT
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = modality
    ds.PatientName = "Test^Node"
    ds.PatientID = "NODE-1"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC1"
    ds.StudyDescription = "node test"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    rng = np.random.default_rng(seed + number)
    ds.PixelData = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    return ds


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_series(folder: Path, count: int, study_uid: str | None = None, modality: str = "CT") -> list[Path]:
    """``count`` instances of one series written to ``folder``."""
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    return [
        write(make_instance(study_uid, series_uid, modality=modality, number=i + 1), folder / f"{i:04d}.dcm")
        for i in range(count)
    ]


# --- raw encodings for bad-input tests -------------------------------------------------------------------


def encode_body(ds: Dataset, implicit: bool = False) -> bytes:
    """The dataset's bytes without preamble or File Meta (what travels in P-DATA)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = implicit
    body = Dataset()
    body.update(ds)  # without file_meta
    write_dataset(buf, body)
    return buf.getvalue()


def file_bytes(body: bytes, sop_class: str, sop_uid: str, transfer_syntax: str) -> bytes:
    """A DICOM file (PS3.10) around an arbitrary encoded body, whatever the body contains."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = False
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=False)
    return buf.getvalue() + body


def _implicit(group: int, element: int, value: bytes) -> bytes:
    import struct

    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHI", group, element, len(value)) + value


def nested_sequences(depth: int, sop_uid: str, sop_class: str = CT) -> bytes:
    """Implicit VR body with ``depth`` Content Sequences nested inside each other (undefined lengths)."""
    import struct

    out = bytearray()
    out += _implicit(0x0008, 0x0016, sop_class.encode())
    out += _implicit(0x0008, 0x0018, sop_uid.encode())
    out += _implicit(0x0020, 0x000D, generate_uid().encode())
    out += _implicit(0x0020, 0x000E, generate_uid().encode())
    opening = struct.pack("<HHI", 0x0040, 0xA730, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return bytes(out + opening * depth + closing * depth)


def deflate_bomb(header: Dataset, inflated_bytes: int) -> bytes:
    """A Deflated Explicit VR body (PS3.5 A.5) of a few hundred KB that inflates to ``inflated_bytes``:
    the header, then an OB element of zeros. Compressing a 1 MiB zero block after a sync flush gives the
    same bytes each time (the window is all zeros), so the block is repeated instead of compressing
    gigabytes."""
    import struct
    import zlib

    block = 1 << 20
    count = max(1, inflated_bytes // block)
    head = encode_body(header) + struct.pack("<HH2sHI", 0x0042, 0x0011, b"OB", 0, count * block)
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(block)
    out = bytearray(comp.compress(head) + comp.flush(zlib.Z_SYNC_FLUSH))
    out += comp.compress(zeros) + comp.flush(zlib.Z_SYNC_FLUSH)
    repeat = comp.compress(zeros) + comp.flush(zlib.Z_SYNC_FLUSH) if count > 1 else b""
    out += repeat * (count - 1)
    out += comp.flush(zlib.Z_FINISH)
    return bytes(out)
