"""The preprocessing the shipped bundle declares is the one training applies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models import dataset, preprocess
from models.synthetic import ct, pet

BUNDLE = Path(__file__).resolve().parents[2] / "models" / "bundled"


def test_the_shipped_manifest_declares_the_training_preprocessing() -> None:
    manifest = json.loads((BUNDLE / "manifest.json").read_text(encoding="utf-8"))
    dot, pet_dot = int(manifest["config"].get("dot", 0)), bool(manifest["config"].get("pet_dot", 0))
    assert manifest["inputs"] == json.loads(json.dumps(preprocess.spec(dot=dot, pet_dot=pet_dot)))


def test_drawn_whole_blocks_of_the_phantoms() -> None:
    """The runtime averages a finer series down to ``DRAWN`` (``volume.cell_blocks``) as training does: the
    phantoms are drawn at it or a whole number of times finer (PET: three 8 mm slices per ``DRAWN`` slice)."""
    grid = (preprocess.SLICE_SIZE, preprocess.SLICE_SIZE, preprocess.DEPTH)
    blocks = {}
    for kind, module in (("ct", ct), ("pet", pet)):
        drawn = (module.DEFAULT_SIZE, module.DEFAULT_SIZE, module.DEFAULT_DEPTH)
        blocks[kind] = tuple(d / g / m for d, g, m in zip(drawn, grid, preprocess.DRAWN[kind], strict=True))
    assert blocks == {"ct": (1.0, 1.0, 1.0), "pet": (1.0, 1.0, 3.0)}


def test_pet_slices_are_averaged_onto_the_grid() -> None:
    """A lesion on one of every three PET slices reaches the grid: linear resampling at exactly 3x would take only
    the middle slice of each three and drop it (11 of 18 missed validation lesions, session 22)."""
    volume = np.zeros((pet.DEFAULT_DEPTH, pet.DEFAULT_SIZE, pet.DEFAULT_SIZE), np.float32)
    volume[30, 60:68, 60:68] = 9.0  # slice 30 = the first of the three the model's slice 10 covers
    prepared = preprocess.prepare_volume(volume, "pet")
    assert prepared[10, 30:34, 30:34] == pytest.approx(0.3, abs=1e-6)  # 9 SUV / 3, windowed by 10
    assert prepared[[9, 11]].max() == 0.0


def test_a_thin_pet_lesion_keeps_its_training_target() -> None:
    """The target mask is brought to the grid as its image is: a lesion on one 8 mm slice, invisible to linear
    sampling at 3x when it is not the middle slice of its three, keeps a mask (and so boxes) on the grid."""
    mask = np.zeros((pet.DEFAULT_DEPTH, pet.DEFAULT_SIZE, pet.DEFAULT_SIZE), bool)
    mask[30, 60:68, 60:68] = True
    small = dataset._resize_mask(mask, (preprocess.DEPTH, preprocess.SLICE_SIZE, preprocess.SLICE_SIZE), "pet")
    assert np.flatnonzero(small.any(axis=(1, 2))).tolist() == [10]
    assert small[10, 30:34, 30:34].all() and small.sum() == 16


def test_pet_samples_carry_their_dot_unless_the_network_reads_none() -> None:
    """A PET phantom's sample holds its one fine-grid channel (the hot-blob dot on the acquired slices, brightest
    at a drawn lesion); training drops it for a network without ``pet_dot`` (a stage 1 or bundle from before it),
    which learnt on zeros there."""
    from models.network import NetConfig
    from models.train import _fine_channels_for

    samples = dataset.make_samples("pet", 6, 1_000)
    assert all(s.dot is not None and s.dot.shape == (1, *s.image.shape) for s in samples)
    with_lesion = next(s for s in samples if s.cls.any())
    dot = np.asarray(with_lesion.dot[0], np.float32)
    assert dot[with_lesion.cls > 0].max() > 0.1
    _fine_channels_for(NetConfig(pet_dot=1), {"pet": samples})
    assert all(s.dot is not None for s in samples)
    _fine_channels_for(NetConfig(pet_dot=0), {"pet": samples}, {"pet": samples[:2]})
    assert all(s.dot is None for s in samples)


def test_samples_made_in_processes_are_the_ones_made_here() -> None:
    """Training makes its phantoms on all its cores (``sample_pool``); each is seeded on its own, so the samples,
    their order and their fine-grid channels are those made one by one."""
    here = dataset.make_samples("pet", 3, 1_000) + dataset.make_samples("ct", 2, 1_000)
    with dataset.sample_pool(2) as pool:
        there = dataset.make_samples("pet", 3, 1_000, pool=pool) + dataset.make_samples("ct", 2, 1_000, pool=pool)
    assert [s.kind for s in there] == [s.kind for s in here]
    for a, b in zip(here, there, strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.cls, b.cls) and a.report == b.report
        assert a.dot is not None and b.dot is not None and np.array_equal(a.dot, b.dot)
