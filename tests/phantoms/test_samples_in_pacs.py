"""The committed samples flow through a real PACS: dcmtk's storescu sends them to Orthanc over a DICOM
association, Orthanc files them as three studies with the right instance counts and can render every kind
(including the RLE-compressed CT)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.peers import Orthanc, dcmtk

SAMPLES = Path(__file__).resolve().parents[2] / "samples"

pytestmark = [pytest.mark.slow, pytest.mark.orthanc, pytest.mark.dcmtk]


def test_samples_are_accepted_and_decoded_by_orthanc(orthanc: Orthanc, dcmtk_tools: None) -> None:
    files = sorted(str(p) for p in SAMPLES.rglob("*.dcm"))
    assert len(files) == 1 + 64 + 96
    proc = subprocess.run(
        [
            dcmtk("storescu"),
            "--propose-rle",
            "-aet",
            "PHANTOMS",
            "-aec",
            orthanc.aet,
            "127.0.0.1",
            str(orthanc.dicom_port),
            *files,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    studies = orthanc.get("/studies")
    assert len(studies) == 3
    counts = {}
    for study_id in studies:
        series = orthanc.get(f"/studies/{study_id}/series")
        assert len(series) == 1
        tags = series[0]["MainDicomTags"]
        counts[tags["Modality"]] = len(series[0]["Instances"])
        truth_dir = {"DX": "cxr", "CT": "ct", "PT": "pet"}[tags["Modality"]]
        truth = json.loads((SAMPLES / truth_dir / "ground_truth.json").read_text("utf-8"))
        assert tags["SeriesInstanceUID"] == truth["series_instance_uid"]
        # Orthanc decodes the pixel data to render a preview (PNG signature).
        png = orthanc.get(f"/instances/{series[0]['Instances'][0]}/preview")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert counts == {"DX": 1, "CT": 64, "PT": 96}
