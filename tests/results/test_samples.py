"""The committed samples (phantom ground truth as findings, not a model): valid objects, and the demo command
pushes them into Orthanc."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_agent.encode import encode_study
from dicom_agent.encode.ground_truth import load_sample
from tests.peers import Orthanc
from tests.results import validators as V

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples"


def sample(kind: str) -> Path:
    folder = SAMPLES / kind
    if not (folder / "ground_truth.json").is_file():
        pytest.skip(f"no committed sample {kind}")
    return folder


@pytest.mark.parametrize("kind", ["cxr", "ct", "pet"])
def test_sample_objects_validate(kind: str, tmp_path: Path) -> None:
    findings, sources = load_sample(sample(kind))
    objects = encode_study(findings, sources)
    assert [o.kind for o in objects] == ["sr", "seg", "kos"]
    paths = []
    for obj in objects:
        path = tmp_path / f"{obj.kind}.dcm"
        path.write_bytes(obj.to_bytes())
        paths.append(path)
        report = V.dciodvfy(path)
        assert not report.errors and not report.warnings, report.text
    report = V.dcentvfy([*sorted(sample(kind).glob("*.dcm")), *paths])
    assert not report.errors and not report.warnings, report.text
    assert findings.impression["zh"] in V.dsrdump(tmp_path / "sr.dcm")


@pytest.mark.orthanc
def test_encode_sample_command_pushes_to_orthanc(orthanc: Orthanc, tmp_path: Path) -> None:
    folder = sample("cxr")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicom_agent",
            "exports",
            "encode-sample",
            str(folder),
            "--out",
            str(tmp_path / "out"),
            "--to",
            f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "sent 3/3" in run.stdout
    ours = {dcmread(p).SOPInstanceUID for p in (tmp_path / "out").glob("*.dcm")}
    theirs = {orthanc.get(f"/instances/{i}/tags?simplify")["SOPInstanceUID"] for i in orthanc.instances()}
    assert ours == theirs and len(ours) == 3


def test_encode_sample_refuses_a_folder_without_ground_truth(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "dicom_agent", "exports", "encode-sample", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0 and "ground_truth.json" in run.stderr
