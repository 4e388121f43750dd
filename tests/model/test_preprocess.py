"""The preprocessing the shipped bundle declares is the one training applies."""

from __future__ import annotations

import json
from pathlib import Path

from models import preprocess
from models.synthetic import ct, pet

BUNDLE = Path(__file__).resolve().parents[2] / "models" / "bundled"


def test_the_shipped_manifest_declares_the_training_preprocessing() -> None:
    manifest = json.loads((BUNDLE / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["inputs"] == json.loads(json.dumps(preprocess.spec()))


def test_drawn_is_the_resolution_the_phantoms_are_drawn_at() -> None:
    """The runtime averages a finer series down to ``DRAWN`` (``volume.cell_blocks``): it must be the generators'
    default resolution over the model grid, the data the network learnt on."""
    grid = (preprocess.SLICE_SIZE, preprocess.SLICE_SIZE, preprocess.DEPTH)
    for kind, module in (("ct", ct), ("pet", pet)):
        drawn = (module.DEFAULT_SIZE, module.DEFAULT_SIZE, module.DEFAULT_DEPTH)
        assert preprocess.DRAWN[kind] == tuple(d / g for d, g in zip(drawn, grid, strict=True)), kind
