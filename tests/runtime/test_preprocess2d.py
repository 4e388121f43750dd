"""Radiograph preprocessing: pixel chain (rescale, window, MONOCHROME1, compressed syntaxes) and exact mapping back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEGLSLossless, RLELossless

from dicom_agent.inference.grid import Letterbox
from dicom_agent.inference.preprocess2d import load_radiographs, window
from tests.runtime import dicom_factory

SIZE = 128
# a bright lesion drawn at these source pixels: columns [120, 150), rows [50, 80)
BOX = (120.0, 50.0, 150.0, 80.0)


def _image(rows: int = 300, cols: int = 200, background: int = 1000, lesion: int = 3000) -> np.ndarray:
    stored = np.full((rows, cols), background, dtype=np.uint16)
    x0, y0, x1, y1 = (int(v) for v in BOX)
    stored[y0:y1, x0:x1] = lesion
    return stored


def _bright_box(pixels: np.ndarray, threshold: float) -> tuple[float, float, float, float]:
    """The bounding box (pixel edges) of the model-space pixels brighter than ``threshold``."""
    rows = np.flatnonzero((pixels > threshold).any(axis=1))
    cols = np.flatnonzero((pixels > threshold).any(axis=0))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def _assert_box_maps_back(radiograph, tolerance_model_px: float = 1.0) -> None:
    grid = radiograph.grid
    found = grid.box_to_source(*_bright_box(radiograph.pixels, 0.5))
    # one model pixel of interpolation blur, expressed in source pixels
    tol = tolerance_model_px / min(grid.scale_x, grid.scale_y)
    assert np.allclose(found, BOX, atol=tol), (found, BOX, tol)


@pytest.mark.parametrize("syntax", [None, RLELossless, JPEGLSLossless])
def test_box_drawn_in_source_comes_back_at_same_source_pixels(tmp_path: Path, syntax: str | None) -> None:
    path = tmp_path / "dx.dcm"
    dicom_factory.radiograph(path, _image(), compress=syntax)
    if syntax:
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax  # really compressed on disk
    (radiograph,) = load_radiographs(path, SIZE)
    assert radiograph.pixels.shape == (SIZE, SIZE) and radiograph.pixels.dtype == np.float32
    assert radiograph.ref.sop_instance_uid == pydicom.dcmread(path).SOPInstanceUID
    assert radiograph.ref.frame_number is None
    _assert_box_maps_back(radiograph)


def test_monochrome1_is_inverted_so_dense_is_bright(tmp_path: Path) -> None:
    """MONOCHROME1 stores dense tissue as LOW values: after preprocessing the lesion must still be the bright one."""
    path = tmp_path / "cr.dcm"
    dicom_factory.radiograph(path, _image(background=3000, lesion=1000), photometric="MONOCHROME1")
    (radiograph,) = load_radiographs(path, SIZE)
    _assert_box_maps_back(radiograph)
    mono2 = tmp_path / "mono2.dcm"
    dicom_factory.radiograph(mono2, _image(background=3000, lesion=1000), photometric="MONOCHROME2")
    (plain,) = load_radiographs(mono2, SIZE)
    assert np.allclose(radiograph.pixels[plain.pixels > 0], 1.0 - plain.pixels[plain.pixels > 0], atol=1e-5)


def test_patient_orientation_mirror_maps_back(tmp_path: Path) -> None:
    """Columns running toward patient right (R) are mirrored for the model and mirrored back for the box."""
    path = tmp_path / "flipped.dcm"
    dicom_factory.radiograph(path, _image(), orientation=("R", "H"))
    (radiograph,) = load_radiographs(path, SIZE)
    assert radiograph.grid.flip_x and radiograph.grid.flip_y
    model_box = _bright_box(radiograph.pixels, 0.5)
    # on the model the lesion sits mirrored: near the left and bottom edges of the content
    assert model_box[0] < SIZE / 2 and model_box[1] > SIZE / 2
    _assert_box_maps_back(radiograph)


def test_multiframe_gives_one_input_per_frame_with_frame_numbers(tmp_path: Path) -> None:
    frames = np.stack([_image(), _image(lesion=1000)])
    path = tmp_path / "mf.dcm"
    dicom_factory.radiograph(path, frames, frames=2)
    first, second = load_radiographs(path, SIZE)
    assert (first.ref.frame_number, second.ref.frame_number) == (1, 2)
    _assert_box_maps_back(first)
    assert second.pixels.max() < 0.5  # the second frame has no lesion


def test_rescale_then_window_in_modality_units(tmp_path: Path) -> None:
    """The window applies to rescaled values (PS3.4 N.2): slope 2 puts the lesion at 6000, top of a 5000–6000 window."""
    path = tmp_path / "rescaled.dcm"
    dicom_factory.radiograph(path, _image(), rescale=(2.0, 0.0), window=(5500.0, 1000.0))
    (radiograph,) = load_radiographs(path, SIZE)
    inner = radiograph.pixels[radiograph.grid.pad_top + 10, radiograph.grid.pad_left + 5]
    assert inner == pytest.approx(0.0)  # background 2000 is far below the window
    _assert_box_maps_back(radiograph, tolerance_model_px=1.0)


def test_window_functions_follow_ps33() -> None:
    values = np.array([-1000.0, 40.0, 1000.0])
    assert window(values, 40, 400).tolist()[1] == pytest.approx(0.5 + 0.5 / 399)
    assert window(values, 40, 400, "LINEAR_EXACT").tolist() == pytest.approx([0.0 - 840 / 400, 0.5, 1160 / 400])
    assert window(values, 40, 400, "SIGMOID")[1] == pytest.approx(0.5)


def test_letterbox_round_trip_and_mask_back_to_source() -> None:
    grid = Letterbox.fit(300, 200, SIZE, flip_x=True)
    for x, y in [(0.0, 0.0), (17.25, 123.5), (200.0, 300.0)]:
        assert grid.to_source(*grid.to_model(x, y)) == pytest.approx((x, y))
    model_mask = np.zeros((SIZE, SIZE), dtype=bool)
    model_mask[40:60, 30:50] = True
    source = grid.mask_to_source(model_mask)
    assert source.shape == (300, 200)
    rows = np.flatnonzero(source.any(axis=1))
    cols = np.flatnonzero(source.any(axis=0))
    box = grid.box_to_source(30, 40, 50, 60)
    assert (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1) == pytest.approx(box, abs=1 / grid.scale_x)


def test_stretch_mode_maps_back(tmp_path: Path) -> None:
    """A model trained on stretched inputs (aspect not kept): per-axis scales, no padding, still exact."""
    path = tmp_path / "dx.dcm"
    dicom_factory.radiograph(path, _image())
    (radiograph,) = load_radiographs(path, SIZE, keep_aspect=False)
    assert (radiograph.grid.inner_rows, radiograph.grid.inner_cols, radiograph.grid.pad_left) == (SIZE, SIZE, 0)
    _assert_box_maps_back(radiograph)
