"""A bundle's weights read back into torch, and stage 2 trained on them (``dicom-agent model train --vision-from``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.readback import model_from_bundle

TRAINING_ONLY = {"align_img.weight", "align_img.bias", "align_txt.weight", "align_txt.bias", "logit_scale"}


def test_bundle_weights_read_back_into_torch_are_the_checkpoints(smoke_run: Path, smoke_bundle: Path) -> None:
    """Every tensor a graph holds comes back exactly, whatever the exporter renamed, transposed or split;
    only the stage-1 alignment projections, which no graph uses, are missing."""
    model, missing = model_from_bundle(smoke_bundle)
    assert set(missing) == TRAINING_ONLY
    trained = torch.load(smoke_run / "checkpoint.pt", weights_only=False)["state_dict"]
    state = model.state_dict()
    assert state.keys() == trained.keys()
    differ = [k for k in trained if k not in TRAINING_ONLY and not torch.equal(state[k], trained[k])]
    assert differ == []


def test_stage2_on_a_bundles_network_keeps_its_vision_side(smoke_run: Path, smoke_bundle: Path, tmp_path: Path) -> None:
    """``vision_from``: the decoder trains on, the encoder and heads stay the bundle's, and the manifest's
    training record names the bundle and carries its training."""
    from models.train import train
    from tests.model.conftest import smoke_config

    train(smoke_config(), tmp_path, vision_from=smoke_bundle)
    before = torch.load(smoke_run / "checkpoint.pt", weights_only=False)
    after = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    vision = [k for k in before["state_dict"] if k.startswith(("encoder.", "heads.", "slice_score.", "coarse_"))]
    assert vision and all(torch.equal(before["state_dict"][k], after["state_dict"][k]) for k in vision)
    assert not torch.equal(before["state_dict"]["decoder.tok.weight"], after["state_dict"]["decoder.tok.weight"])
    assert after["thresholds"] == before["thresholds"]
    record = after["training"]["vision_from"]
    manifest = json.loads((smoke_bundle / "manifest.json").read_text(encoding="utf-8"))
    assert record["bundle"] == manifest["version"]
    assert record["training"]["recipe"] == manifest["training"]["recipe"]
    assert after["training"]["stage1_mask_health"] == manifest["training"]["stage1_mask_health"] != []
    assert after["training"]["seconds"]["total"] > manifest["training"]["seconds"]["total"]
