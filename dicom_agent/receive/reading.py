"""Reads the header of a spooled instance with bounded memory.

pydicom reads a file up to the pixel data with ``stop_before_pixels``; large non-pixel values are deferred
(``defer_size``) rather than loaded. Deflated Explicit VR Little Endian (PS3.5 A.5) is the exception:
pydicom inflates the whole stream in memory, even with ``stop_before_pixels``, so a few kilobytes of
deflated zeros could claim gigabytes. We inflate it ourselves in bounded steps into a scratch file inside
the storage root, counting, and refuse it once it passes the dataset size limit.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_agent.errors import DatasetTooLargeError, UnreadableDatasetError
from dicom_agent.receive.contexts import DOCUMENT_SOP_CLASSES

DEFER_SIZE = 256 * 1024  # non-pixel values above this stay on disk until asked for
_CHUNK = 1 << 20
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # (FFFE,E0DD), length 0
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def read_header(path: Path, transfer_syntax: str, max_dataset_bytes: int, scratch_dir: Path) -> Dataset:
    """The dataset up to (not including) Pixel Data; raises UnreadableDatasetError / DatasetTooLargeError."""
    try:
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            return _read_deflated_header(path, max_dataset_bytes, scratch_dir)
        return _read_checked(path, implicit=transfer_syntax == ImplicitVRLittleEndian)
    except (DatasetTooLargeError, UnreadableDatasetError):
        raise
    except RecursionError as exc:  # thousands of nested sequences
        raise UnreadableDatasetError("sequences nested too deeply") from exc
    except Exception as exc:  # pydicom raises many kinds for malformed input
        raise UnreadableDatasetError(f"cannot parse dataset: {type(exc).__name__}") from exc


def dataset_offset(fh: BinaryIO) -> int:
    """Offset of the dataset after the 128-byte preamble, 'DICM' and the File Meta group (PS3.10 7.1).

    The node wrote this meta itself (pynetdicom, with the group length first), so the group length is there.
    """
    fh.seek(128)
    head = fh.read(16)
    if len(head) < 16 or head[:4] != b"DICM" or head[4:8] != b"\x02\x00\x00\x00" or head[8:10] != b"UL":
        raise UnreadableDatasetError("file meta information without group length")
    (group_length,) = struct.unpack("<I", head[12:16])
    return 132 + 12 + group_length


def _read_checked(path: Path, implicit: bool) -> Dataset:
    """Reads the header, then checks that the Pixel Data element is all there: pydicom stops before it
    and would not notice a dataset cut short by a dropped sender."""
    with open(path, "rb") as fh:
        ds = dcmread(fh, stop_before_pixels=True, defer_size=DEFER_SIZE)
        position, size = fh.tell(), os.fstat(fh.fileno()).st_size
        if position >= size:
            if str(ds.get("SOPClassUID", "")) not in DOCUMENT_SOP_CLASSES:
                raise UnreadableDatasetError("image dataset without Pixel Data (truncated?)")
            return ds
        head = fh.read(12)
        if len(head) < 8:
            raise UnreadableDatasetError("dataset ends inside an element header")
        if implicit:
            (length,) = struct.unpack("<I", head[4:8])
            value_at = position + 8
        elif head[4:6] in _LONG_VRS:
            if len(head) < 12:
                raise UnreadableDatasetError("dataset ends inside an element header")
            (length,) = struct.unpack("<I", head[8:12])
            value_at = position + 12
        else:
            (length,) = struct.unpack("<H", head[6:8])
            value_at = position + 8
        if length == 0xFFFFFFFF:  # encapsulated (PS3.5 A.4): must end with a sequence delimiter
            fh.seek(max(value_at, size - 1024))
            if _SEQUENCE_DELIMITER not in fh.read():
                raise UnreadableDatasetError("encapsulated Pixel Data without its end (truncated?)")
        elif value_at + length > size:
            raise UnreadableDatasetError(f"Pixel Data is {value_at + length - size} bytes short (truncated?)")
    return ds


def _read_deflated_header(path: Path, max_dataset_bytes: int, scratch_dir: Path) -> Dataset:
    fd, scratch_name = tempfile.mkstemp(dir=scratch_dir, suffix=".inflated")
    scratch = Path(scratch_name)
    try:
        with open(path, "rb") as src, os.fdopen(fd, "wb") as out:
            offset = dataset_offset(src)
            src.seek(0)
            meta = bytearray(src.read(offset))
            # Same meta, transfer syntax rewritten to the inflated form so pydicom does not inflate again.
            old, new = DeflatedExplicitVRLittleEndian.encode(), ExplicitVRLittleEndian.encode()
            new = new + b"\x00" * (len(old) - len(new))  # UI values are NUL padded; keeps the group length
            meta = meta.replace(old, new, 1)
            out.write(meta)
            _inflate_bounded(src, out, max_dataset_bytes)
        return _read_checked(scratch, implicit=False)
    finally:
        with contextlib.suppress(OSError):
            scratch.unlink()


def _inflate_bounded(src: BinaryIO, out: BinaryIO, limit: int) -> None:
    """Raw DEFLATE (RFC 1951, no zlib header) from ``src`` to ``out``, never more than ``limit`` bytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while chunk := src.read(_CHUNK):
            data = inflater.decompress(chunk, _CHUNK)
            while True:
                total += len(data)
                if total > limit:
                    raise DatasetTooLargeError(f"deflated dataset inflates past {limit} bytes")
                out.write(data)
                if not inflater.unconsumed_tail:
                    break
                data = inflater.decompress(inflater.unconsumed_tail, _CHUNK)
            if inflater.eof:
                break
        tail = inflater.flush()
        if not inflater.eof:
            raise UnreadableDatasetError("deflate stream ends early (truncated?)")
    except zlib.error as exc:
        raise UnreadableDatasetError("corrupt deflate stream") from exc
    if total + len(tail) > limit:
        raise DatasetTooLargeError(f"deflated dataset inflates past {limit} bytes")
    out.write(tail)
