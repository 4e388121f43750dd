"""ONNX export of a trained checkpoint into a bundle directory with ``manifest.json``.

Three graphs with flat tensor I/O (model notes, "Export and runtime recipe"): ``enc2d``, ``enc3d`` and
``dec_step``. Exported with ``torch.onnx.export(dynamo=True, opset_version=18)``; every dynamic axis gets an
example of size >= 2, because a size-1 example silently froze the batch axis in the feasibility run
(``tests/model`` asserts the exported dims are symbolic). The decoder step accepts a past of length 0, so the
prompt goes through the same graph (no prefill graph).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import preprocess
from models.network import NetConfig, UnifiedModel
from models.prompts import prompts_of
from models.tokenizer import SPECIAL_TOKENS

log = logging.getLogger(__name__)

BUNDLE_NAME = "dicom-agent-unimodal"
BUNDLE_VERSION = "0.19.3"
OPSET = 18


class Enc2D(nn.Module):
    """Radiograph encoder + heads: probabilities, CenterNet maps, segmentation, decoder cross K/V."""

    def __init__(self, model: UnifiedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        modality = torch.zeros(image.shape[0], dtype=torch.long, device=image.device)
        o = self.model.forward_2d(image, modality)
        ck, cv = self.model.decoder.cross_kv(o["memory"])
        return (
            torch.sigmoid(o["logits"]),
            torch.sigmoid(o["heatmap"]),
            o["size"],
            o["offset"],
            torch.sigmoid(o["seg"]),
            o["embedding"],
            ck,
            cv,
        )


ENC2D_OUTPUTS = ["probs", "heatmap", "size", "offset", "seg", "image_embedding", "cross_k", "cross_v"]


class Enc3D(nn.Module):
    """Volume encoder: per-slice heads, slice relevance (attention pooling), volume probabilities, cross K/V."""

    def __init__(self, model: UnifiedModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, volume: torch.Tensor, modality: torch.Tensor, dot: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        o = self.model.forward_3d(volume, modality, dot)
        ck, cv = self.model.decoder.cross_kv(o["memory"])
        return (
            torch.sigmoid(o["logits"]),
            torch.sigmoid(o["slice_logits"]),
            o["relevance"],
            o["top_slices"],
            torch.sigmoid(o["heatmap"]),
            o["size"],
            o["offset"],
            torch.sigmoid(o["seg"]),
            o["embedding"],
            ck,
            cv,
        )


ENC3D_OUTPUTS = [
    "probs",
    "slice_probs",
    "relevance",
    "top_slices",
    "heatmap",
    "size",
    "offset",
    "seg",
    "image_embedding",
    "cross_k",
    "cross_v",
]


class DecStep(nn.Module):
    """One decoder step over ``t`` new tokens given the cache: returns the LAST position's logits. A decoder with
    the copy head also takes ``past_ids``, the tokens of the cached positions (what it may copy)."""

    def __init__(self, model: UnifiedModel) -> None:
        super().__init__()
        self.decoder = model.decoder

    def forward(
        self,
        input_ids: torch.Tensor,
        cross_k: torch.Tensor,
        cross_v: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        past_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, pk, pv = self.decoder(input_ids, cross_k, cross_v, past_k, past_v, past_ids)
        return logits[:, -1], pk, pv


def dec_inputs(cfg: NetConfig) -> list[str]:
    """The decoder step graph's inputs (``past_ids`` only with the copy head)."""
    return ["input_ids", "cross_k", "cross_v", "past_k", "past_v"] + (["past_ids"] if cfg.copy else [])


DEC_OUTPUTS = ["logits", "present_k", "present_v"]


def load_checkpoint(path: Path) -> tuple[UnifiedModel, dict[str, Any]]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = UnifiedModel(NetConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt


def enc3d_inputs(cfg: NetConfig) -> list[str]:
    """The volume graph's inputs: a model with fine-grid channels (``NetConfig.dot``) takes them as a third."""
    return ["volume", "modality", *(["dot"] if cfg.dot else [])]


def example_inputs(cfg: NetConfig, batch: int = 2) -> dict[str, tuple[torch.Tensor, ...]]:
    """Example inputs with size >= 2 on every dynamic axis (batch, tokens, past, memory)."""
    g = torch.Generator().manual_seed(0)
    dh = cfg.d // cfg.heads
    mem = (cfg.image_size // cfg.stride) ** 2 + cfg.n_labels
    kv = (cfg.dec_layers, batch, cfg.heads, mem, dh)
    past = (cfg.dec_layers, batch, cfg.heads, 3, dh)
    return {
        "enc2d": (torch.rand(batch, 1, cfg.image_size, cfg.image_size, generator=g),),
        "enc3d": (
            torch.rand(batch, cfg.depth, cfg.slice_size, cfg.slice_size, generator=g),
            torch.tensor([1, 2] * (batch // 2) + [1] * (batch % 2), dtype=torch.long),
            *([torch.rand(batch, cfg.dot, cfg.depth, cfg.slice_size, cfg.slice_size, generator=g)] if cfg.dot else []),
        ),
        "dec_step": (
            torch.randint(0, cfg.vocab_size, (batch, 2), generator=g),
            torch.randn(kv, generator=g),
            torch.randn(kv, generator=g),
            torch.randn(past, generator=g),
            torch.randn(past, generator=g),
            *([torch.randint(0, cfg.vocab_size, (batch, 3), generator=g)] if cfg.copy else []),
        ),
    }


def export_graphs(model: UnifiedModel, out_dir: Path) -> dict[str, Path]:
    """Write enc2d.onnx, enc3d.onnx, dec_step.onnx into ``out_dir``; returns their paths."""
    from torch.export import Dim

    model.eval()
    cfg = model.cfg
    ex = example_inputs(cfg)
    batch = Dim("batch", min=1, max=1024)
    tokens = Dim("tokens", min=1, max=cfg.max_len)
    past = Dim("past", min=0, max=cfg.max_len)
    memory = Dim("memory", min=1, max=4096)
    specs: dict[str, tuple[nn.Module, list[str], list[str], Any]] = {
        "enc2d": (Enc2D(model), ["image"], ENC2D_OUTPUTS, {"image": {0: batch}}),
        "enc3d": (Enc3D(model), enc3d_inputs(cfg), ENC3D_OUTPUTS, {name: {0: batch} for name in enc3d_inputs(cfg)}),
        "dec_step": (
            DecStep(model),
            dec_inputs(cfg),
            DEC_OUTPUTS,
            {
                "input_ids": {0: batch, 1: tokens},
                "cross_k": {1: batch, 3: memory},
                "cross_v": {1: batch, 3: memory},
                "past_k": {1: batch, 3: past},
                "past_v": {1: batch, 3: past},
                **({"past_ids": {0: batch, 1: past}} if cfg.copy else {}),
            },
        ),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (module, in_names, out_names, dyn) in specs.items():
        module.eval()
        path = out_dir / f"{name}.onnx"
        with torch.no_grad():
            program = torch.onnx.export(
                module,
                ex[name],
                dynamo=True,
                opset_version=OPSET,
                input_names=in_names,
                output_names=out_names,
                dynamic_shapes=dyn,
                external_data=False,
                verbose=False,
            )
        assert program is not None
        program.save(str(path), external_data=False)
        paths[name] = path
    return paths


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of MatMul/Gemm weights (ORT); measured against fp32 by ``model eval``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def outputs_spec(cfg: NetConfig) -> dict[str, Any]:
    """Human- and machine-readable description of every graph's I/O (shapes use symbolic names)."""
    L, S, s, D, g2, g3 = (
        cfg.n_labels,
        cfg.image_size,
        cfg.slice_size,
        cfg.depth,
        cfg.image_size // 8,
        cfg.slice_size // 8,
    )
    kv = f"[dec_layers={cfg.dec_layers}, N, heads={cfg.heads}, M, dh={cfg.d // cfg.heads}]"
    return {
        "enc2d": {
            "inputs": {"image": f"[N, 1, {S}, {S}] float32 in [0,1]"},
            "outputs": {
                "probs": f"[N, {L}] sigmoid probability per label (label order of 'labels')",
                "heatmap": f"[N, {L}, {g2}, {g2}] CenterNet centre heatmaps (sigmoid)",
                "size": f"[N, 2, {g2}, {g2}] box width, height as fraction of the image side",
                "offset": f"[N, 2, {g2}, {g2}] centre offset within the cell (x, y), cells",
                "seg": f"[N, {L}, {S}, {S}] segmentation probability per label",
                "image_embedding": f"[N, {cfg.d}] image embedding (report-aligned space)",
                "cross_k": f"{kv} decoder cross-attention keys, M = {g2 * g2 + L}",
                "cross_v": f"{kv} decoder cross-attention values",
            },
        },
        "enc3d": {
            "inputs": {
                "volume": f"[N, {D}, {s}, {s}] float32 in [0,1]",
                "modality": "[N] int64: 1 = CT, 2 = PET",
                **(
                    {
                        "dot": f"[N, {cfg.dot}, {D}, {s}, {s}] float32 in [0,1]: CT's fine-grid channels "
                        "(inputs.ct.dot); PET's (inputs.pet.dot) where the manifest lists them, else zeros"
                    }
                    if cfg.dot
                    else {}
                ),
            },
            "outputs": {
                "probs": f"[N, {L}] volume-level probability per label",
                "slice_probs": f"[N, {D}, {L}] per-slice probability per label",
                "relevance": f"[N, {D}] slice attention weights (softmax over slices)",
                "top_slices": f"[N, {cfg.top_k}] int64 the most relevant slices (feed the decoder)",
                "heatmap": f"[N, {D}, {L}, {g3}, {g3}] per-slice CenterNet heatmaps",
                "size": f"[N, {D}, 2, {g3}, {g3}]",
                "offset": f"[N, {D}, 2, {g3}, {g3}]",
                "seg": f"[N, {D}, {L}, {s}, {s}] per-slice segmentation probability",
                "image_embedding": f"[N, {cfg.d}]",
                "cross_k": f"{kv}, M = {cfg.top_k * g3 * g3 + L}",
                "cross_v": kv,
            },
        },
        "dec_step": {
            "inputs": {
                "input_ids": "[N, t] int64 (t >= 1: the whole prompt on the first step, then 1)",
                "cross_k": kv,
                "cross_v": kv,
                "past_k": f"[{cfg.dec_layers}, N, {cfg.heads}, P, {cfg.d // cfg.heads}] (P = 0 on the first step)",
                "past_v": "same as past_k",
                **({"past_ids": "[N, P] int64 the tokens of the cached positions (copy head)"} if cfg.copy else {}),
            },
            "outputs": {
                "logits": f"[N, {cfg.vocab_size}] "
                + ("log probabilities (vocabulary + copy)" if cfg.copy else "logits")
                + " of the last position",
                "present_k": "past_k with the t new positions appended (P + t)",
                "present_v": "same as present_k",
            },
        },
    }


BOX_CASES = 300  # validation phantoms per kind that choose each label's mask threshold and box source (~2 min)


class CollapsedMasks(ValueError):
    """A run not worth a bundle: a label's masks collapsed in stage 1 (``write_bundle``)."""


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """The one format of manifest.json (UTF-8, Chinese names unescaped, one-space indent)."""
    path.write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def write_bundle(
    ckpt_path: Path,
    tokenizer_path: Path,
    out_dir: Path,
    *,
    int8: bool = False,
    metrics: dict[str, Any] | None = None,
    box_cases: int = BOX_CASES,
    allow_collapsed: bool = False,
) -> dict[str, Any]:
    """Export a checkpoint into ``out_dir`` (ONNX graphs, tokenizer.json, manifest.json); returns the manifest.
    ``box_cases`` validation phantoms per kind choose each label's mask threshold and box source
    (:mod:`models.decoding`; 0: the defaults, 0.5 and CenterNet peaks, for all). A run whose stage 1 left a label's
    masks collapsed (``models.train.collapsed_labels``) is refused unless ``allow_collapsed``."""
    from tokenizers import Tokenizer

    from models.train import collapsed_labels

    model, ckpt = load_checkpoint(ckpt_path)
    collapsed = collapsed_labels(ckpt.get("training", {}).get("stage1_mask_health", []))
    if collapsed and not allow_collapsed:
        raise CollapsedMasks(
            f"{ckpt_path}: stage 1 left collapsed masks for {', '.join(collapsed)} (at its last check, Dice at 0.5 "
            "or mean probability inside the truth under models.train's floors); retrain with another --seed"
        )
    tmp = out_dir / ".export"
    if tmp.exists():
        shutil.rmtree(tmp)
    paths = export_graphs(model, tmp)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.onnx"):
        old.unlink()
    files: dict[str, dict[str, str]] = {}
    for name, path in paths.items():
        final = out_dir / path.name
        if int8 and name != "enc3d":
            quantize_int8(path, final)
        else:
            shutil.copyfile(path, final)
        files[name] = {"path": final.name}
    shutil.rmtree(tmp)
    shutil.copyfile(tokenizer_path, out_dir / "tokenizer.json")
    files["tokenizer"] = {"path": "tokenizer.json"}
    for entry in files.values():
        entry["sha256"] = sha256(out_dir / entry["path"])
    tok = Tokenizer.from_file(str(out_dir / "tokenizer.json"))
    thresholds = ckpt.get("thresholds", {})
    labels = [dict(lab, threshold=float(thresholds.get(lab["key"], 0.5))) for lab in ckpt["labels"]]
    manifest = {
        "name": BUNDLE_NAME,
        "version": BUNDLE_VERSION,
        "manufacturer": "dicom_agent project",
        "description": "Unified multimodal model (radiograph, CT, PET): findings, boxes, masks, EN/ZH text. "
        "Trained only on synthetic phantoms; not for clinical use.",
        "format": "onnx",
        "opset": OPSET,
        "precision": "int8-dynamic (enc2d, dec_step)" if int8 else "fp32",
        "files": files,
        "config": model.cfg.to_dict(),
        "inputs": preprocess.spec(dot=model.cfg.dot, pet_dot=bool(model.cfg.pet_dot)),
        "graphs": outputs_spec(model.cfg),
        "labels": labels,
        "special_tokens": {t: tok.token_to_id(t) for t in SPECIAL_TOKENS},
        "prompts": prompts_of(ckpt.get("training", {}).get("recipe", {})),
        "decoding": {"box_min_score": 0.3, "mask_threshold": 0.5, "greedy": True},
        "training": ckpt.get("training", {}),
        "metrics": metrics if metrics is not None else ckpt.get("metrics", {}),
    }
    write_manifest(out_dir / "manifest.json", manifest)
    if box_cases:  # measured on the exported graphs (the runner reads the manifest just written), then recorded
        from models.decoding import write_calibration

        manifest = write_calibration(out_dir, box_cases)
    log.info("bundle written to %s", out_dir)
    return manifest
