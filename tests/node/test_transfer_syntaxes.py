"""Every accepted transfer syntax is stored as received and its pixels decode from the stored file
(pylibjpeg / pyjpegls / python-gdcm), since inference reads them later."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSNearLossless,
)
from sqlalchemy import select

from dicom_agent.config import get_settings
from dicom_agent.db.orm import Instance
from dicom_agent.db.session import session_scope
from dicom_agent.receive.contexts import TRANSFER_SYNTAXES
from dicom_agent.receive.server import ServerHandle
from tests.node.conftest import send
from tests.node.factory import make_instance, write
from tests.peers import dcmtk, have_dcmtk

LOSSY = {JPEGBaseline8Bit, JPEGExtended12Bit, JPEG2000, JPEGLSNearLossless}
DCMCJPEG = {
    JPEGBaseline8Bit: ["+eb"],
    JPEGExtended12Bit: ["+ee"],
    JPEGLossless: ["+el", "+sv", "6"],
    JPEGLosslessSV1: ["+e1"],
}


def _eight_bit(ds: Dataset) -> Dataset:
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = (np.frombuffer(ds.PixelData, np.uint16) // 16).astype(np.uint8).tobytes()
    return ds


def _encoded(ts: UID, tmp_path: Path) -> tuple[Dataset, np.ndarray]:
    """An instance in ``ts`` and the pixels it was made from."""
    ds = make_instance(size=64, seed=7)
    yy, xx = np.mgrid[0:64, 0:64]
    ds.PixelData = (2000 + 1500 * np.sin(xx / 9.0) * np.cos(yy / 13.0)).astype(np.uint16).tobytes()  # smooth
    if ts == JPEGBaseline8Bit:
        ds = _eight_bit(ds)
    original = ds.pixel_array.copy()
    if ts in DCMCJPEG:
        if not have_dcmtk():
            pytest.skip("dcmtk's dcmcjpeg makes the JPEG process 1/2/4/14 test files")
        src, out = write(ds, tmp_path / "src.dcm"), tmp_path / "out.dcm"
        subprocess.run([dcmtk("dcmcjpeg"), *DCMCJPEG[ts], str(src), str(out)], check=True, timeout=60)
        encoded = dcmread(out)
        assert encoded.file_meta.TransferSyntaxUID == ts
        return encoded, original
    if ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = ts
        return ds, original
    options = {JPEGLSNearLossless: {"jls_error": 2}, JPEG2000: {"j2k_cr": [10]}}.get(ts, {})
    ds.compress(ts, **options)
    return ds, original


@pytest.mark.parametrize("ts", [t for t in TRANSFER_SYNTAXES], ids=lambda t: UID(t).name)
def test_transfer_syntax_stored_as_received_and_decodable(node: ServerHandle, ts: UID, tmp_path: Path) -> None:
    ds, original = _encoded(UID(ts), tmp_path)
    assert send(node.port, [ds]) == [0]
    settings = get_settings()
    with session_scope(settings.database_url) as s:
        row = s.scalars(select(Instance)).one()
    stored = dcmread(settings.storage_dir / row.path)
    assert row.transfer_syntax_uid == ts == stored.file_meta.TransferSyntaxUID
    pixels = stored.pixel_array
    assert pixels.shape == original.shape
    if UID(ts) in LOSSY:
        # dcmcjpeg rescales into the lossy bit depth, so compare the image, not the raw values
        assert np.corrcoef(pixels.ravel().astype(float), original.ravel().astype(float))[0, 1] > 0.99
    else:
        assert np.array_equal(pixels, original)
