"""``dicom-agent samples make``: works, fails clearly, and reproduces the committed samples byte for byte."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_agent", "samples", *args], cwd=ROOT, capture_output=True, text=True, timeout=240
    )


def test_make_one_kind_with_a_seed(tmp_path: Path) -> None:
    proc = _cli("make", str(tmp_path), "--kind", "cxr", "--seed", "3", "--transfer-syntax", "jpegls")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cxr"]
    truth = json.loads((tmp_path / "cxr" / "ground_truth.json").read_text("utf-8"))
    assert truth["seed"] == 3 and truth["kind"] == "cxr"
    ds = pydicom.dcmread(tmp_path / "cxr" / "IM0001.dcm")
    assert ds.StudyInstanceUID == truth["study_instance_uid"]
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLSLossless == truth["transfer_syntax"]
    assert ds.pixel_array.shape == tuple(truth["shape"])
    assert "1 instance(s)" in proc.stdout


def test_make_a_finer_ct(tmp_path: Path) -> None:
    """The committed CT's seed at 2x its in-plane pixels and slices, as a thin-slice acquisition sends it."""
    proc = _cli("make", str(tmp_path), "--kind", "ct", "--size", "512", "--depth", "128")
    assert proc.returncode == 0, proc.stderr
    truth = json.loads((tmp_path / "ct" / "ground_truth.json").read_text("utf-8"))
    committed = json.loads((SAMPLES / "ct" / "ground_truth.json").read_text("utf-8"))
    assert truth["shape"] == [128, 512, 512] and committed["shape"] == [64, 256, 256]
    assert "128 instance(s)" in proc.stdout
    ds = pydicom.dcmread(tmp_path / "ct" / "IM0001.dcm", stop_before_pixels=True)
    assert float(ds.PixelSpacing[0]) == pytest.approx(350.0 / 512) and float(ds.SliceThickness) == pytest.approx(2.5)
    proc = _cli("make", str(tmp_path / "x"), "--kind", "ct", "--size", "8")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr


def test_bad_arguments_fail_with_one_clear_line(tmp_path: Path) -> None:
    proc = _cli("make", str(tmp_path), "--kind", "mri")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == ["dicom-agent: unknown kind 'mri': expected cxr, ct, pet or all"]
    proc = _cli("make", str(tmp_path), "--transfer-syntax", "jpeg-xl")
    assert proc.returncode != 0 and "unknown transfer syntax" in proc.stderr
    assert not any(tmp_path.iterdir())
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = _cli("make", str(blocker / "out"), "--kind", "cxr")
    assert proc.returncode != 0
    assert proc.stderr.startswith("dicom-agent: cannot write samples to") and "Traceback" not in proc.stderr


def _assert_same_but_rounding(made: Path, committed: Path) -> None:
    """Every element but the pixels identical, and the pixels within 1 LSB on at most 0.01 % of them: numpy
    releases round a few float pixels differently (numpy 2.4.6 moved 4 of the radiograph's 262,144 by 1)."""
    a, b = pydicom.dcmread(made), pydicom.dcmread(committed)
    assert a.file_meta == b.file_meta, made
    assert [e for e in a if e.keyword != "PixelData"] == [e for e in b if e.keyword != "PixelData"], made
    diff = np.abs(a.pixel_array.astype(np.int64) - b.pixel_array.astype(np.int64))
    assert diff.max() <= 1 and np.count_nonzero(diff) <= diff.size // 10_000, (made, int(np.count_nonzero(diff)))


def test_committed_samples_are_reproduced(tmp_path: Path) -> None:
    proc = _cli("make", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    committed = sorted(p.relative_to(SAMPLES) for p in SAMPLES.rglob("*") if p.is_file() and p.name != "README.md")
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert committed == made and len(made) == 1 + 64 + 96 + 3 * 2
    for rel in made:
        if (tmp_path / rel).read_bytes() != (SAMPLES / rel).read_bytes():
            _assert_same_but_rounding(tmp_path / rel, SAMPLES / rel)
    total = sum((SAMPLES / rel).stat().st_size for rel in committed)
    assert total <= 12 * 1024 * 1024
