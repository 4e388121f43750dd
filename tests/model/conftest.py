"""Shared fixtures: one tiny trained run (a few steps, small network) exported once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.train import TrainConfig

SMALL_NET = {"d": 64, "heads": 4, "enc_layers": 1, "dec_layers": 2, "max_len": 96}


def smoke_config() -> TrainConfig:
    """A step-budgeted smoke training (4 + 3 steps) of a small network on a handful of phantoms, with the
    findings text in the stage-2 prompts so that path is exported and checked."""
    return TrainConfig(
        steps1=4,
        steps2=3,
        n_cxr=12,
        n_ct=3,
        n_pet=3,
        n_val=3,
        batch_2d=6,
        batch_3d=2,
        batch_text=8,
        net=SMALL_NET,
        context=True,
        check_every=2,
        check_cases=3,
    )


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.train import train

    out = tmp_path_factory.mktemp("run")
    train(smoke_config(), out)
    return out


@pytest.fixture(scope="session")
def smoke_bundle(smoke_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models.export import write_bundle

    out = tmp_path_factory.mktemp("bundle")
    # a run of a few steps segments little: its masks are "collapsed" by the export's guard
    write_bundle(smoke_run / "checkpoint.pt", smoke_run / "tokenizer.json", out, box_cases=3, allow_collapsed=True)
    return out
