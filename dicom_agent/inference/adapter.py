"""One interface for every model the node can run (design notes, "Model interface").

An adapter turns a routed study into :class:`StudyFindings` and answers questions about it. Two ship:
:class:`~dicom_agent.inference.bundle_adapter.BundleAdapter` for an exported ONNX bundle (manifest.json), and
:class:`~dicom_agent.inference.hf_adapter.HFImageTextAdapter` for a transformers image-text-to-text checkpoint a
site holds locally. :func:`load_adapter` picks one by what the model directory contains.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from dicom_agent.errors import PermanentInferenceError
from dicom_agent.inference.types import StudyFindings, StudyInput

log = logging.getLogger(__name__)


@runtime_checkable
class ModelAdapter(Protocol):
    """What the worker calls. Implementations are loaded once per worker process and reused for every study."""

    def predict(self, study: StudyInput) -> StudyFindings:
        """Findings (with boxes/masks on source images where the model gives them) and EN/ZH text."""
        ...

    def ask(self, study: StudyInput, question: str, lang: str = "en") -> str:
        """A free-text answer to a question about the study (VQA), in ``lang``."""
        ...


def torch_device(device: str) -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without a GPU falls back with a warning."""
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        log.warning("DEVICE=cuda but torch sees no GPU; running on CPU")
    return "cpu"


def is_image_text_checkpoint(directory: Path) -> bool:
    """A transformers checkpoint directory: config.json with a vision part (image-text-to-text)."""
    config = directory / "config.json"
    if not config.is_file():
        return False
    try:
        data: dict[str, Any] = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return "vision_config" in data or any("ConditionalGeneration" in a for a in data.get("architectures", []))


def load_adapter(settings: Any, model_dir: Path | None = None, device: str | None = None) -> ModelAdapter:
    """The adapter for ``settings.model_dir`` (or ``model_dir``): a bundle by its manifest, else a checkpoint."""
    directory = Path(model_dir or settings.model_dir)
    device = str(device or settings.device)
    languages = tuple(settings.languages)
    if (directory / "manifest.json").is_file():
        from dicom_agent.inference.bundle_adapter import BundleAdapter

        return BundleAdapter(directory, device=device, languages=languages)
    if is_image_text_checkpoint(directory):
        from dicom_agent.inference.hf_adapter import HFImageTextAdapter

        return HFImageTextAdapter(directory, device=device, languages=languages)
    raise PermanentInferenceError(
        f"MODEL_DIR {directory} holds neither a bundle (manifest.json) nor a transformers checkpoint (config.json)"
    )
