"""A site-held transformers image-text-to-text checkpoint (e.g. MedGemma) as a :class:`ModelAdapter`.

Such models write text only (report, VQA): no boxes, no masks, no calibrated probabilities. The adapter asks for
a report per language, parses it with the per-language lexicons (:mod:`parse`) into coded findings of the
project's vocabulary, renders the text of record from those findings, keeps the model's own words as the
narrative, and flags everything it could not vouch for (``text_only_model``, ``low_confidence``,
``model_text_unparsed``, EN/ZH disagreement). Text the parsers cannot read (e.g. a random test model's junk)
gives "no findings" with those flags — still a valid :class:`StudyFindings` that the encoders can write.

Weights are never downloaded: ``local_files_only=True`` and ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dicom_agent.errors import PermanentInferenceError
from dicom_agent.inference.adapter import torch_device
from dicom_agent.inference.parse import facts, parse
from dicom_agent.inference.preprocess2d import load_radiographs
from dicom_agent.inference.render import render
from dicom_agent.inference.series import select_series
from dicom_agent.inference.types import LANGUAGES, Finding, ModelIdentity, StudyFindings, StudyInput
from dicom_agent.inference.vocabulary import Vocabulary, project_vocabulary
from dicom_agent.inference.volume import VolumeGrid, load_volume, window

log = logging.getLogger(__name__)

REPORT_PROMPT = {
    "en": "Describe the findings of this medical image in English: name each finding, its location, side and size.",
    "zh": "请用中文描述该医学影像的所见：写出每个病灶的名称、部位、侧别和大小。",
}
_UNDERSTOOD = {
    "en": re.compile(r"\b(no (acute )?(abnormalit|finding|lesion)|normal|unremarkable|clear)", re.I),
    "zh": re.compile(r"未见|正常|清晰|无异常"),
}
FULL_HASH_LIMIT = 512 * 1024**2  # above this the identity hashes file names and sizes, not contents
VOLUME_PREVIEW = {"ct": (VolumeGrid(depth=32, size=256), (-1000.0, 400.0)), "pet": (VolumeGrid(32, 256), (0.0, 10.0))}


def checkpoint_sha256(directory: Path) -> tuple[str, str]:
    """A digest naming the checkpoint: of every file's bytes when small, else of config + names and sizes."""
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    total = sum(p.stat().st_size for p in files)
    digest = hashlib.sha256()
    full = total <= FULL_HASH_LIMIT
    for path in files:
        digest.update(str(path.relative_to(directory)).encode())
        if full or path.name == "config.json":
            digest.update(path.read_bytes())
        else:
            digest.update(str(path.stat().st_size).encode())
    return digest.hexdigest(), "content" if full else "names+sizes"


class HFImageTextAdapter:
    """Loads the processor and model once from a local directory; text generation is greedy (deterministic)."""

    def __init__(
        self,
        model_dir: Path | str,
        device: str = "auto",
        languages: tuple[str, ...] = LANGUAGES,
        max_new_tokens: int = 128,
        vocabulary: Vocabulary | None = None,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.directory = Path(model_dir)
        self.device = torch_device(device)
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        try:
            self.processor = AutoProcessor.from_pretrained(self.directory, local_files_only=True)
            model = AutoModelForImageTextToText.from_pretrained(self.directory, local_files_only=True, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise PermanentInferenceError(f"cannot load checkpoint from {self.directory}: {exc}") from exc
        self.model = model.to(self.device).eval()  # type: ignore[arg-type]  # transformers types `to` as unbound
        self.languages = tuple(lang for lang in languages if lang in REPORT_PROMPT) or ("en",)
        self.max_new_tokens = max_new_tokens
        self.vocabulary = vocabulary or project_vocabulary()
        self.image_size = _image_size(self.processor)
        config = json.loads((self.directory / "config.json").read_text(encoding="utf-8"))
        digest, how = checkpoint_sha256(self.directory)
        architecture = (config.get("architectures") or [config.get("model_type", "unknown")])[0]
        self.identity = ModelIdentity(
            name=f"{self.directory.name} ({architecture})",
            version=str(config.get("transformers_version", "unknown")),
            manufacturer="site-provided checkpoint",
            bundle_sha256=digest,
            description=f"transformers image-text-to-text checkpoint, text only (no boxes or masks); "
            f"findings parsed from generated text; sha256 over {how}",
        )
        log.info("checkpoint %s loaded on %s", self.identity.name, self.device)

    # ---- inputs --------------------------------------------------------------------------------------------
    def images(self, study: StudyInput) -> list[Image.Image]:
        """One image per selected series: each radiograph frame's first; a CT's middle axial slice (HU window
        −1000…400); a PET's coronal maximum-intensity projection (SUV 0…10), as readers look at them."""
        selection = select_series(study)
        out: list[Image.Image] = []
        for series in selection.radiographs:
            for path in sorted(series.files):
                radiographs = load_radiographs(path, self.image_size, study.study_instance_uid)
                if radiographs:
                    out.append(_pil(radiographs[0].pixels))
        for kind, series in selection.volumes.items():
            grid, (low, high) = VOLUME_PREVIEW[kind]
            volume = load_volume(series.files, grid, study.study_instance_uid)
            values = window(volume.values, low, high)
            picture = values[values.shape[0] // 2] if kind == "ct" else values.max(axis=1)[::-1]
            out.append(_pil(picture))
        if not out:
            raise PermanentInferenceError("no radiograph, CT or PET series in study")
        return out

    def generate(self, images: list[Image.Image], prompt: str) -> str:
        import torch

        inputs = self._inputs(images, prompt)
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        return str(self.processor.decode(new_tokens, skip_special_tokens=True)).strip()

    def _inputs(self, images: list[Image.Image], prompt: str) -> Any:
        """Chat template when the checkpoint has one; else one image marker per image before the prompt."""
        if getattr(self.processor, "chat_template", None):
            content: list[dict[str, Any]] = [{"type": "image", "image": image} for image in images]
            content.append({"type": "text", "text": prompt})
            messages = [{"role": "user", "content": content}]
            inputs = self.processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
            )
        else:
            marker = getattr(self.processor, "boi_token", None) or getattr(self.processor, "image_token", "<image>")
            text = "".join(f"{marker}\n" for _ in images) + prompt
            inputs = self.processor(text=text, images=images, return_tensors="pt")
        return inputs.to(self.device)

    # ---- adapter interface ---------------------------------------------------------------------------------
    def predict(self, study: StudyInput) -> StudyFindings:
        start = time.perf_counter()
        timings: dict[str, float] = {}
        images = self.images(study)
        timings["preprocess_s"] = time.perf_counter() - start
        narrative: dict[str, str] = {}
        for lang in self.languages:
            t0 = time.perf_counter()
            narrative[lang] = self.generate(images, REPORT_PROMPT[lang])
            timings[f"generate_{lang}_s"] = time.perf_counter() - t0
        flags = ["text_only_model", "low_confidence"]
        findings = findings_from_text(narrative, self.languages, self.vocabulary, flags)
        impression = render(findings, self.languages, self.vocabulary)
        timings["total_s"] = time.perf_counter() - start
        return StudyFindings(
            study_instance_uid=study.study_instance_uid,
            model=self.identity,
            findings=findings,
            impression=impression,
            narrative=narrative,
            key_images=[],
            series_uids=select_series(study).series_uids,
            flags=flags,
            timings=timings,
            extra={"device": self.device},
        )

    def ask(self, study: StudyInput, question: str, lang: str = "en") -> str:
        if lang not in REPORT_PROMPT:
            raise ValueError(f"unsupported language {lang!r}")
        return self.generate(self.images(study), question)


def findings_from_text(
    narrative: dict[str, str], languages: tuple[str, ...], vocabulary: Vocabulary, flags: list[str]
) -> list[Finding]:
    """Findings stated in the first language's text; the other languages are checked against it (flags)."""
    parsed = {lang: parse(text, lang, vocabulary) for lang, text in narrative.items()}
    for lang, text in narrative.items():
        if not parsed[lang] and not _UNDERSTOOD[lang].search(text):
            flags.append(f"model_text_unparsed:{lang}")
    primary = languages[0]
    stated = [p for p in parsed[primary] if not p.negated]
    reference = facts(parsed[primary], vocabulary, with_size=False)
    for lang in languages[1:]:
        if facts(parsed[lang], vocabulary, with_size=False) != reference:
            flags.append(f"text_languages_disagree:{primary}:{lang}")
    findings: list[Finding] = []
    for item in stated:
        spec = vocabulary.labels[item.label]
        location = vocabulary.location(item.location)
        findings.append(
            Finding(
                label=spec.key,
                code=spec.code,
                name_en=spec.name_en,
                name_zh=spec.name_zh,
                probability=spec.threshold,  # text carries no probability: the least that counts as present
                present=True,
                critical=spec.critical,
                finding_site=location.code if location else None,
                location=item.location,
                location_en=location.name_en if location else None,
                location_zh=location.name_zh if location else None,
                laterality=item.laterality,
                size_mm=item.size_mm,
                suv_max=item.suv_max,  # as the text states it (flagged text_only): not measured on the voxels
                flags=["text_only", "probability_unavailable"],
            )
        )
    return findings


def _image_size(processor: Any) -> int:
    """The processor's square input side (Gemma 3: ``size = {"height", "width"}``), default 896."""
    size = getattr(getattr(processor, "image_processor", None), "size", None) or {}
    if isinstance(size, dict):
        return int(size.get("height") or size.get("shortest_edge") or 896)
    return int(getattr(size, "height", None) or 896)


def _pil(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(values * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
