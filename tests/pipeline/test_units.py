"""Small pure parts of the pipeline: device pinning, broker capabilities, the findings artefact round trip."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from dicom_agent.config import Settings
from dicom_agent.dicom.codes import Code
from dicom_agent.inference.types import Box, Finding, ImageRef, Mask, ModelIdentity, StudyFindings
from dicom_agent.tasks.app import broker_kind, celery_config, priority_for, queue_name
from dicom_agent.tasks.artifacts import load_findings, save_findings
from dicom_agent.tasks.worker import pin_device


def test_pin_device_sets_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert pin_device("cuda:3") == "cuda" and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert pin_device("cpu") == "cpu" and os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert pin_device(None) is None
    for bad in ("cuda:x", "tpu"):
        with pytest.raises(ValueError):
            pin_device(bad)


@pytest.mark.parametrize(
    ("url", "kind", "stat", "routine"),
    [
        ("sqla+sqlite:///./var/broker.db", "sqlalchemy", None, None),
        ("amqp://guest:guest@127.0.0.1:5672//", "amqp", 9, 4),
        ("redis://127.0.0.1:6379/0", "redis", 0, 5),
    ],
)
def test_priorities_only_where_the_broker_has_them(url: str, kind: str, stat: int | None, routine: int | None) -> None:
    s = Settings(broker_url=url)
    assert broker_kind(url) == kind
    assert (priority_for(s, "stat"), priority_for(s, "routine")) == (stat, routine)
    conf = celery_config(s)
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"] and conf["worker_prefetch_multiplier"] == 1
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    args = [q.queue_arguments for q in conf["task_queues"]]
    assert all(a == ({"x-max-priority": 10} if kind == "amqp" else None) for a in args)


def test_queue_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOM_AGENT_QUEUE_PREFIX", "site1.")
    assert queue_name(Settings(), "gpu") == "site1.gpu"
    with pytest.raises(ValueError):
        queue_name(Settings(), "tpu")


def test_findings_artefact_round_trips_boxes_masks_and_text(tmp_path: Path) -> None:
    ref = ImageRef("1.2.3", "1.2.3.4", "1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.2", None)
    pixels = np.zeros((1, 5, 13), bool)
    pixels[0, 1:3, 2:11] = True
    finding = Finding(
        "nodule",
        Code("27925004", "SCT", "Nodule"),
        "Nodule",
        "结节",
        0.8,
        True,
        finding_site=Code("39607008", "SCT", "Lung"),
        boxes=[Box(ref, 1.5, 2.5, 10.0, 4.0, score=0.7)],
        mask=Mask("1.2.3.4", [ref], pixels),
        text_zh="右肺结节。",
        flags=["decoder_disagrees"],
    )
    sf = StudyFindings("1.2.3", ModelIdentity("m", "1", "x", "0" * 64), [finding], {"en": "N.", "zh": "结节。"})
    save_findings(tmp_path, "1.2.3", 7, sf)
    back = load_findings(tmp_path, "1.2.3", 7)
    [f] = back.findings
    assert f.code == finding.code and f.finding_site == finding.finding_site and f.boxes == finding.boxes
    assert f.mask is not None and np.array_equal(f.mask.pixels, pixels) and f.mask.images == [ref]
    assert (f.text_zh, f.flags, back.impression, back.model) == (
        finding.text_zh,
        finding.flags,
        sf.impression,
        sf.model,
    )


def test_the_job_records_the_device_inference_ran_on_not_the_one_requested() -> None:
    """A CUDA request on a machine whose ONNX Runtime has no CUDA provider runs on the CPU, and says so."""
    import onnxruntime as ort

    from dicom_agent.inference.bundle_adapter import BundleAdapter
    from dicom_agent.tasks.pipeline import ran_on

    adapter = BundleAdapter(Path(__file__).resolve().parents[2] / "models" / "bundled", device="cuda", threads=1)
    expected = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    assert ran_on(adapter, "cuda") == expected
    assert ran_on(object(), "cuda:1") == "cuda:1"  # an adapter that says nothing: the setting
