"""What a radiograph opacity looks like (``dicom_agent.inference.opacity``): its features, the region model in the
manifest, and the weighing of focal boxes by it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dicom_agent.inference.onnx_runner import DetectedBox
from dicom_agent.inference.opacity import FEATURES, RegionModel, high_pass, opacity_features, weigh_by_opacity

F = {name: i for i, name in enumerate(FEATURES)}


def disc(size: int = 64, centre: tuple[float, float] = (32.0, 32.0), radius: float = 8.0) -> np.ndarray:
    """A homogeneous round opacity on a flat background (a mass as the phantoms draw it, without its lobes)."""
    y, x = np.mgrid[:size, :size].astype(np.float64)
    inside = np.clip(radius + 0.5 - np.hypot(x - centre[0], y - centre[1]), 0.0, 1.0)
    return 0.2 + 0.5 * inside


def patchy_band(size: int = 64, seed: int = 0) -> np.ndarray:
    """An elongated opacity whose density varies pixel to pixel (a consolidation with aerated lung in it)."""
    y, x = np.mgrid[:size, :size].astype(np.float64)
    inside = ((x - 32) / 22) ** 2 + ((y - 32) / 7) ** 2 <= 1.0
    texture = 0.55 + 0.6 * np.random.default_rng(seed).random((size, size))
    return 0.2 + 0.4 * inside * texture


def features(image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    return opacity_features(image, high_pass(image), box)


def test_a_round_homogeneous_opacity_and_a_patchy_elongated_one_measure_apart() -> None:
    mass = features(disc(), (23.0, 23.0, 42.0, 42.0))
    band = features(patchy_band(), (10.0, 25.0, 55.0, 40.0))
    assert math.exp(mass[F["log_elongation"]]) < 1.1 < 2.0 < math.exp(band[F["log_elongation"]])
    assert mass[F["roundness"]] > band[F["roundness"]]
    assert mass[F["fill"]] > 0.8 > band[F["fill"]]
    assert mass[F["flatness"]] > 0.9 > band[F["flatness"]]  # its inside is at its contrast throughout
    assert band[F["texture"]] > 2 * mass[F["texture"]]
    assert (mass[F["log_width"]], band[F["log_width"]]) == (math.log(19), math.log(45))


def test_a_box_on_nothing_has_no_outline_and_a_box_off_the_image_is_clipped() -> None:
    flat = np.full((64, 64), 0.3)
    empty = features(flat, (10.0, 10.0, 20.0, 20.0))
    assert np.isnan(empty[: F["log_width"]]).all() and empty[F["log_width"]] == math.log(10)
    edge = features(disc(centre=(60.0, 60.0)), (55.0, 55.0, 80.0, 90.0))
    assert not np.isnan(edge).any() and edge[F["log_width"]] == edge[F["log_height"]] == math.log(9)


def test_the_region_model_round_trips_through_the_manifest_and_refuses_other_features() -> None:
    model = RegionModel(("mass", "consolidation"), np.arange(7.0), np.ones(7), np.arange(16.0).reshape(8, 2), 2.0)
    entry = model.to_manifest()
    back = RegionModel.from_manifest(entry)
    rows = np.random.default_rng(1).normal(size=(5, 7))
    assert back.labels == model.labels and back.power == 2.0
    assert np.allclose(back.probabilities(rows), model.probabilities(rows))
    assert np.allclose(model.probabilities(rows).sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="measured on"):
        RegionModel.from_manifest(entry | {"features": [*FEATURES[:-1], "contrast"]})


def test_boxes_are_weighed_by_how_likely_their_label_is_against_the_likeliest() -> None:
    """A model that says 'consolidation' three times as likely as 'mass' for every opacity (biases only): a mass box
    is scored x (1/3) ** power, a consolidation box keeps its score, a nodule box (not the model's) is untouched."""
    weights = np.zeros((len(FEATURES) + 1, 2))
    weights[-1] = [0.0, math.log(3.0)]
    model = RegionModel(("mass", "consolidation"), np.zeros(7), np.ones(7), weights, power=0.5)
    boxes = [
        DetectedBox("mass", 0.9, 23.0, 23.0, 42.0, 42.0),
        DetectedBox("consolidation", 0.6, 23.0, 23.0, 42.0, 42.0),
        DetectedBox("nodule", 0.4, 5.0, 5.0, 9.0, 9.0),
    ]
    weighed = weigh_by_opacity(boxes, disc(), model)
    assert [b.label for b in weighed] == ["mass", "consolidation", "nodule"]
    assert weighed[0].score == pytest.approx(0.9 * 3.0**-0.5)
    assert weighed[1:] == boxes[1:]
    assert weigh_by_opacity(boxes[2:], disc(), model) == boxes[2:]


def test_the_numpy_outline_steps_equal_simpleitks_filters() -> None:
    """The features were first measured with SimpleITK's filters (a region model fitted on them is in the
    manifest); their numpy stand-ins (milliseconds less per box) must give the same component, erosion and
    Feret diameter, ties between equal components included."""
    import SimpleITK as sitk

    from dicom_agent.inference.opacity import _eroded, _feret_diameter, _largest_component

    rng = np.random.default_rng(7)
    masks = [rng.random((rows, cols)) > level for rows, cols, level in [(9, 14, 0.45), (20, 11, 0.3), (16, 16, 0.6)]]
    masks += [np.eye(6, dtype=bool) | np.eye(6, dtype=bool)[::-1], np.pad(np.ones((3, 3), bool), 2)]
    twins = np.zeros((7, 9), bool)
    twins[1:3, 1:3] = twins[4:6, 5:7] = True  # two components of one size: the first in raster order wins
    for mask in [*masks, *(rng.random((12, 12)) > 0.4 for _ in range(40)), twins]:
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        largest = sitk.GetArrayFromImage(sitk.RelabelComponent(sitk.ConnectedComponent(image))) == 1
        assert np.array_equal(_largest_component(mask), largest)
        eroded = sitk.GetArrayFromImage(sitk.BinaryErode(image, [1, 1])).astype(bool)
        assert np.array_equal(_eroded(mask), eroded)
        shape = sitk.LabelShapeStatisticsImageFilter()
        shape.ComputeFeretDiameterOn()
        shape.Execute(sitk.GetImageFromArray(largest.astype(np.uint8)))
        assert _feret_diameter(largest) == pytest.approx(shape.GetFeretDiameter(1), abs=1e-9)
    assert _largest_component(twins)[1, 1] and not _largest_component(twins)[4, 5]
