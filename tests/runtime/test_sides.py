"""Which sides a non-focal finding (effusion, pneumothorax) is reported on, from its mask."""

from __future__ import annotations

import numpy as np

from dicom_agent.inference.bundle_adapter import MIN_PART_PIXELS, MIN_SIDE_SHARE, _sides


def _mask(right: int, left: int, ndim: int = 2) -> np.ndarray:
    """A 64-column mask with ``right`` pixels on the patient's right (low columns) and ``left`` on the left."""
    mask = np.zeros((40, 64), bool)
    mask.flat[[r * 64 + c for r in range(40) for c in range(32)][:right]] = True
    mask.flat[[r * 64 + c for r in range(40) for c in range(32, 64)][:left]] = True
    return mask if ndim == 2 else np.stack([mask, np.zeros_like(mask)])


def test_spill_over_is_not_a_second_side() -> None:
    assert [side for side, _ in _sides(_mask(400, 60), 32)] == ["right"]  # 15 %: one-sided
    assert [side for side, _ in _sides(_mask(400, 180), 32)] == ["right", "left"]  # 45 %: bilateral
    assert [side for side, _ in _sides(_mask(40, round(40 * MIN_SIDE_SHARE)), 32)] == ["right", "left"]
    assert [side for side, _ in _sides(_mask(0, 300, ndim=3), 32)] == ["left"]  # volumes: columns are last too


def test_each_side_keeps_only_its_own_pixels_and_tiny_masks_are_noise() -> None:
    (side, part), (_, other) = _sides(_mask(300, 200), 32)
    assert side == "right" and part[:, :32].sum() == 300 and not part[:, 32:].any() and other[:, 32:].sum() == 200
    assert _sides(_mask(MIN_PART_PIXELS - 1, 0), 32) == []


def test_a_label_whose_masks_do_not_tell_the_side_is_reported_without_one() -> None:
    from pathlib import Path
    from types import SimpleNamespace

    from dicom_agent.inference.bundle_adapter import BundleAdapter
    from dicom_agent.inference.grid import Letterbox
    from dicom_agent.inference.manifest import load_bundle
    from dicom_agent.inference.types import ImageRef

    bundle = Path(__file__).resolve().parents[2] / "models" / "bundled"
    adapter = BundleAdapter.__new__(BundleAdapter)  # the map-back stage only
    adapter.vocabulary = load_bundle(bundle, verify=False).vocabulary
    spec = next(lab for lab in adapter.vocabulary.labels.values() if not lab.focal)
    ref = ImageRef("1.2", "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.1.1")
    radiograph = SimpleNamespace(grid=Letterbox.fit(64, 64, 64), spacing_mm=(1.0, 1.0), ref=ref)
    both = np.concatenate([_mask(400, 380), np.zeros((24, 64), bool)])  # on the 64 x 64 model grid
    adapter.runner = SimpleNamespace(unsided={})
    sided = adapter._sided_2d(spec, 0.9, radiograph, both)  # type: ignore[arg-type]
    assert [f.laterality for f in sided] == ["right", "left"]
    adapter.runner = SimpleNamespace(unsided={"cxr": {spec.key}})
    (unsided,) = adapter._sided_2d(spec, 0.9, radiograph, both)  # type: ignore[arg-type]
    assert unsided.laterality is None and unsided.location is None and unsided.mask is not None
    assert int(unsided.mask.pixels.sum()) == 780  # the whole mask still goes into the SEG


def test_an_effusion_is_measured_on_its_confident_core() -> None:
    """The faint mask (drawn for overlap) reaches higher than the fluid; the height is the core's."""
    from pathlib import Path
    from types import SimpleNamespace

    from dicom_agent.inference.bundle_adapter import BundleAdapter
    from dicom_agent.inference.grid import Letterbox
    from dicom_agent.inference.manifest import load_bundle
    from dicom_agent.inference.types import ImageRef

    bundle = Path(__file__).resolve().parents[2] / "models" / "bundled"
    adapter = BundleAdapter.__new__(BundleAdapter)
    adapter.vocabulary = load_bundle(bundle, verify=False).vocabulary
    adapter.runner = SimpleNamespace(unsided={})
    spec = adapter.vocabulary.labels["pleural_effusion"]
    ref = ImageRef("1.2", "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.1.1")
    radiograph = SimpleNamespace(grid=Letterbox.fit(128, 128, 64), spacing_mm=(0.5, 0.5), ref=ref)  # 1 mm per cell
    faint = np.zeros((64, 64), bool)
    faint[20:60, 4:28] = True  # 40 rows
    core = np.zeros_like(faint)
    core[45:60, 4:28] = True  # 15 rows
    (finding,) = adapter._sided_2d(spec, 0.9, radiograph, faint, core)  # type: ignore[arg-type]
    assert finding.laterality == "right" and finding.size_mm == 15.0 and finding.mask is not None
    assert int(finding.mask.pixels.sum()) == 40 * 24 * 4  # the SEG still shows the faint mask (2 x 2 source pixels)
    (without,) = adapter._sided_2d(spec, 0.9, radiograph, faint)  # type: ignore[arg-type]
    assert without.size_mm == 40.0


def test_an_effusion_is_as_high_as_its_fluid_surface_where_lowest() -> None:
    """The phantoms' own effusion masks on the model grid, on a 512² source of 0.84 mm pixels: the height from the
    lowest pixel up to the fluid surface where it is lowest (the meniscus climbs laterally) is the height the
    phantom states, within 5 mm; the mask's whole height, which the runtime reported before, is 30 mm or more too
    high on each of them."""
    from dicom_agent.inference.bundle_adapter import _fluid_height_mm
    from dicom_agent.inference.grid import Letterbox
    from dicom_agent.inference.preprocess2d import Radiograph
    from dicom_agent.inference.types import ImageRef
    from models.dataset import make_samples
    from models.labels import LABEL_KEYS
    from models.synthetic.cxr import FOV_MM

    effusion = LABEL_KEYS.index("pleural_effusion")
    sides = []
    for sample in make_samples("cxr", 24, 500_000):
        size = sample.image.shape[0]
        radiograph = Radiograph(
            np.zeros((size, size), np.float32),
            ImageRef("1.2", "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.1.1"),
            Letterbox.fit(512, 512, size),
            (FOV_MM / 512, FOV_MM / 512),
            "PixelSpacing",
        )
        drawn = sample.cls == effusion + 1
        for label, _, side, height, _ in sample.extra["lesions"]:  # type: ignore[attr-defined]
            if label == "pleural_effusion":
                part = next(part for s, part in _sides(drawn, size / 2) if s == side)
                rows = np.flatnonzero(part.any(axis=1))
                whole = (rows[-1] + 1 - rows[0]) * FOV_MM / size
                sides.append((height, _fluid_height_mm(part, radiograph), whole))
    assert len(sides) >= 4
    for height, measured, whole in sides:
        assert measured is not None and abs(measured - height) <= 5.0 and whole - height >= 30.0
