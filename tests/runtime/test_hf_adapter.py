"""The real-checkpoint adapter end to end on a tiny random Gemma 3 built offline (its text is junk by design)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from dicom_agent.inference.adapter import ModelAdapter, load_adapter
from dicom_agent.inference.hf_adapter import findings_from_text
from dicom_agent.inference.types import SeriesInput, StudyFindings, StudyInput
from dicom_agent.inference.vocabulary import project_vocabulary
from tests.runtime import dicom_factory, tiny_gemma

VOCAB = project_vocabulary()
LANGS = ("en", "zh")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_gemma.build(tmp_path_factory.mktemp("tiny-gemma3"))


def _study(tmp_path: Path) -> StudyInput:
    stored = np.full((96, 80), 1200, dtype=np.uint16)
    stored[30:50, 20:40] = 3000
    ds = dicom_factory.radiograph(tmp_path / "dx.dcm", stored)
    series = SeriesInput(str(ds.SeriesInstanceUID), "DX", [tmp_path / "dx.dcm"])
    return StudyInput(str(ds.StudyInstanceUID), [series])


@pytest.mark.slow
def test_random_gemma3_gives_a_valid_low_confidence_study_findings(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = SimpleNamespace(model_dir=checkpoint, device="cpu", languages=["en", "zh"])
    adapter = load_adapter(settings)
    assert type(adapter).__name__ == "HFImageTextAdapter"
    assert isinstance(adapter, ModelAdapter)
    study = _study(tmp_path)
    result = adapter.predict(study)
    assert isinstance(result, StudyFindings)
    assert result.study_instance_uid == study.study_instance_uid
    assert result.series_uids == [study.series[0].series_instance_uid]
    assert {"text_only_model", "low_confidence"} <= set(result.flags)
    assert set(result.narrative) == {"en", "zh"} and all(isinstance(t, str) for t in result.narrative.values())
    assert set(result.impression) == {"en", "zh"}
    assert len(result.model.bundle_sha256) == 64 and "text only" in result.model.description
    for finding in result.findings:  # whatever the junk text happened to name: flagged, no boxes, no masks
        assert finding.present and "text_only" in finding.flags and not finding.boxes and finding.mask is None
    if not result.findings:
        assert result.impression == {"en": "No abnormality detected.", "zh": "未见明显异常。"}
    answer = adapter.ask(study, "Is there a pleural effusion?", "en")
    assert isinstance(answer, str)


def test_unparseable_text_becomes_no_findings_with_flags() -> None:
    """The parsing step on its own: junk in both languages → no findings and unparsed flags."""
    flags: list[str] = []
    findings = findings_from_text({"en": "effusio 88 ���", "zh": "肺肺肺 ��"}, LANGS, VOCAB, flags)
    assert findings == []
    assert flags == ["model_text_unparsed:en", "model_text_unparsed:zh"]
    stated: list[str] = []
    findings = findings_from_text(
        {"en": "A 12 mm nodule in the right upper lobe.", "zh": "左肺下叶见结节。"}, LANGS, VOCAB, stated
    )
    assert [(f.label, f.location, f.size_mm) for f in findings] == [("nodule", "right_upper_lobe", 12.0)]
    assert stated == ["text_languages_disagree:en:zh"]
