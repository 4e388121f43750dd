"""Detection by lesion size: the figure that shows where a label's misses are when its pooled AUROC hides it."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluate import by_size, format_tables


def test_each_size_bin_is_scored_against_every_negative() -> None:
    # negatives at 0.1-0.4; small positives (6-9 mm) drawn among them, large ones (25 mm) above all of them
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=np.float32)
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.15, 0.35, 0.9, 0.95])
    largest = np.array([0, 0, 0, 0, 6.0, 9.0, 25.0, 25.0])
    bins = by_size(y, p, largest, threshold=0.3, edges=(10.0, 15.0, 20.0))
    assert [(b["from_mm"], b["to_mm"], b["n"]) for b in bins] == [
        (0.0, 10.0, 2),
        (20.0, None, 2),
    ]  # empty bins left out
    small, large = bins
    # 0.15 ranks above 1 of the 4 negatives, 0.35 above 3: (1 + 3) / (2 * 4)
    assert small["auroc"] == pytest.approx(0.5)
    assert small["recall"] == 0.5  # 0.35 >= 0.3, 0.15 not
    assert large["auroc"] == 1.0 and large["recall"] == 1.0


def test_the_eval_tables_name_each_bin() -> None:
    bins = [
        {"from_mm": 0.0, "to_mm": 10.0, "n": 4, "auroc": 0.5, "recall": 0.25},
        {"from_mm": 10.0, "to_mm": 15.0, "n": 3, "auroc": 0.6, "recall": 0.0},
        {"from_mm": 20.0, "to_mm": None, "n": 9, "auroc": 0.94, "recall": 0.9},
    ]
    label = {"auroc": 0.8, "f1": 0.7, "positives": 16, "by_size": bins}
    held_out = {
        "n": 30,
        "auroc": 0.8,
        "ece": 0.1,
        "f1": 0.7,
        "map50": None,
        "dice": None,
        "per_label": {"nodule": label},
    }
    text = format_tables({"modalities": {"ct": {"held_out": held_out}}})
    assert "| ct | nodule | < 10 mm | 4 | 0.500 | 0.250 |" in text
    assert "| ct | nodule | 10–15 mm | 3 | 0.600 | 0.000 |" in text
    assert "| ct | nodule | ≥ 20 mm | 9 | 0.940 | 0.900 |" in text


def test_effusion_heights_pair_sides_and_keep_the_sign() -> None:
    """Each effusion side both drawn and reported with a height is one pair (a side only reported, a finding
    without a height or another label is none); the median error keeps its sign: the runtime's heights run short."""
    from types import SimpleNamespace as Ns

    from models.evaluate import effusion_heights, height_agreement

    lesions = [
        Ns(label="pleural_effusion", laterality="right", size_mm=48.5),
        Ns(label="nodule", laterality="right", size_mm=12.0),
    ]
    findings = [
        Ns(label="pleural_effusion", laterality="right", size_mm=57.1),
        Ns(label="pleural_effusion", laterality="left", size_mm=43.7),  # not drawn there
        Ns(label="nodule", laterality="right", size_mm=12.0),
    ]
    assert effusion_heights(lesions, findings) == [(57.1, 48.5)]
    summary = height_agreement([-20.0, -12.0, 5.0])
    assert summary == {"cases": 3, "within_10mm": pytest.approx(1 / 3), "median_error": -12.0, "median_abs_error": 12.0}
