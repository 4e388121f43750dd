"""Held-out evaluation of an exported bundle on synthetic phantoms (``dicom-agent model eval``).

Measures what ships: the ONNX graphs through :class:`dicom_agent.inference.onnx_runner.BundleRunner`.
Per modality: per-finding AUROC, calibration (ECE, 10 bins), box mAP@0.5 (per slice for volumes), Dice,
lesion-slice hit rate (volumes), VQA exact match per language and per question kind, decoder/heads
disagreement on presence questions; the same on an out-of-range split (sizes/positions outside the training
ranges) and, for CT and PET, on volumes drawn finer than the training data (thin slices); blank- and
shuffled-image controls (VQA should fall to the answer prior); corruptions in the spirit of MedMNIST-C (noise,
blur, contrast) side by side.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dicom_agent.inference.agreement import NO as ANSWER_NO
from dicom_agent.inference.agreement import YES as ANSWER_YES
from dicom_agent.inference.agreement import largest_located, normalize_answer
from dicom_agent.inference.onnx_runner import box_iou
from models.dataset import Batch, Sample, collate, in_chunks, make_samples, sample_pool
from models.export import write_manifest
from models.labels import KINDS, LABEL_KEYS, label_mask
from models.network import UnifiedModel
from models.synthetic.text import mm

log = logging.getLogger(__name__)

EVAL_SEED = 900_000  # held out: training uses 1_000.., validation 500_000..
YES = set(ANSWER_YES.values())
NO = set(ANSWER_NO.values())


# Volumes drawn finer than the training data (x 2 in-plane; CT slices 2.5 instead of 5 mm, PET 4 instead of 8 mm),
# as thin-slice acquisitions are: the runtime brings them to the training resolution first (``volume.cell_blocks``)
FINER = {"ct": (256, 128), "pet": (256, 192)}
# Detection by size (as lung nodule CAD is reported): the round-lesion labels' cases binned by their largest
# lesion's drawn diameter at these edges (mm), each bin's positives against all the label's negatives
SIZE_BIN_EDGES = {"nodule": (10.0, 15.0, 20.0), "hypermetabolic_lesion": (10.0, 15.0, 20.0)}


@dataclass
class EvalConfig:
    cases: int = 300
    oor_cases: int = 100
    finer_cases: int = 100  # CT and PET drawn at FINER
    vqa_cases: int = 100
    corruptions: bool = True
    report_cases: int = 0  # cases per modality written as DICOM and run through the adapter (rendered text)
    narrative_cases: int = 40  # of those, the first ones whose decoder narrative is written and checked (slow)
    kinds: tuple[str, ...] = KINDS
    seed: int = EVAL_SEED
    workers: int = 2  # processes the phantoms and the runtime's cases run in (the figures do not depend on it)


@torch.no_grad()
def torch_outputs(
    model: UnifiedModel, samples: list[Sample], batch: int = 32
) -> Iterator[tuple[Batch, dict[str, torch.Tensor]]]:
    """The torch model's outputs on samples of one kind, batch by batch (volumes 8 times fewer per batch),
    without gradients; the caller sets the model's mode."""
    kind = samples[0].kind
    step = batch if kind == "cxr" else max(1, batch // 8)
    for i in range(0, len(samples), step):
        b = collate(samples[i : i + step])
        yield (
            b,
            model.forward_2d(b.image, b.modality) if kind == "cxr" else model.forward_3d(b.image, b.modality, b.dot),
        )


def predict_probs(model: UnifiedModel, samples: list[Sample], batch: int = 32) -> np.ndarray:
    """Label probabilities (N,L) from the torch model (used to choose thresholds on validation phantoms)."""
    model.eval()
    return np.concatenate([torch.sigmoid(o["logits"]).numpy() for _, o in torch_outputs(model, samples, batch)])


# ---- metric primitives --------------------------------------------------------------------------------------
def auroc(y: np.ndarray, p: np.ndarray) -> float | None:
    """Mann-Whitney AUROC with tie handling; None when only one class is present."""
    y = np.asarray(y) > 0.5
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return None
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    sp = np.asarray(p)[order]
    i = 0
    while i < len(sp):
        j = i
        while j + 1 < len(sp) and sp[j + 1] == sp[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of binary probabilities (equal-width bins)."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    if p.size == 0:
        return float("nan")
    idx = np.minimum((p * bins).astype(int), bins - 1)
    err = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            err += m.mean() * abs(p[m].mean() - y[m].mean())
    return float(err)


def average_precision(
    dets: list[tuple[float, Any, tuple[float, ...]]], gts: dict[Any, list[tuple[float, ...]]]
) -> float | None:
    """VOC-style AP (all-point interpolation) at IoU 0.5; ``dets`` (score, image key, box), ``gts`` per image key."""
    n_gt = sum(len(v) for v in gts.values())
    if n_gt == 0:
        return None
    used = {k: [False] * len(v) for k, v in gts.items()}
    tp, fp = [], []
    for _score, key, box in sorted(dets, key=lambda d: -d[0]):
        best, best_j = 0.0, -1
        for j, g in enumerate(gts.get(key, [])):
            o = box_iou(box, g)
            if o > best:
                best, best_j = o, j
        if best >= 0.5 and not used[key][best_j]:
            used[key][best_j] = True
            tp.append(1.0)
            fp.append(0.0)
        else:
            tp.append(0.0)
            fp.append(1.0)
    if not tp:
        return 0.0
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    rec = ctp / n_gt
    prec = ctp / np.maximum(ctp + cfp, 1e-9)
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    s = float(pred.sum() + gt.sum())
    return 1.0 if s == 0 else 2.0 * float((pred & gt).sum()) / s


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(vals)) if vals else None


# ---- corruptions (MedMNIST-C spirit) -----------------------------------------------------------------------
def corrupt(images: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
    """Apply one corruption to preprocessed inputs (N,S,S) or (D,s,s) in [0,1]."""
    x = np.asarray(images, np.float32)
    if name == "noise":
        return np.clip(x + rng.normal(0, 0.05, x.shape).astype(np.float32), 0, 1)
    if name == "contrast":
        m = x.mean(axis=(-1, -2), keepdims=True)
        return np.clip((x - m) * 0.6 + m, 0, 1).astype(np.float32)
    if name == "blur":
        k = np.exp(-0.5 * (np.arange(-3, 4) / 1.0) ** 2)
        kernel = torch.tensor(k / k.sum(), dtype=torch.float32)
        t = torch.from_numpy(x.reshape(-1, 1, *x.shape[-2:]))
        t = F.conv2d(F.pad(t, (3, 3, 0, 0), mode="replicate"), kernel.view(1, 1, 1, 7))
        t = F.conv2d(F.pad(t, (0, 0, 3, 3), mode="replicate"), kernel.view(1, 1, 7, 1))
        return t.reshape(x.shape).numpy()
    raise ValueError(name)


# ---- running the bundle -----------------------------------------------------------------------------------
def raw_outputs(runner: Any, samples: list[Sample], images: np.ndarray | None = None) -> Iterator[dict[str, Any]]:
    """The graphs' outputs per case, undecoded (probabilities, heatmaps, segmentation probabilities, ...):
    :mod:`models.decoding` chooses the decoding settings on them, :func:`decode` applies them. ``images`` stand in
    for the samples' own (the corruptions); a volume keeps the fine-grid channels of its clean volume (computed on a
    grid finer than the one the corruptions apply to)."""
    kind = samples[0].kind
    imgs = np.stack([s.image.astype(np.float32) for s in samples]) if images is None else images
    if kind == "cxr":
        for i in range(0, len(samples), 16):
            o = runner._run("enc2d", {"image": imgs[i : i + 16, None]})
            for j in range(o["probs"].shape[0]):
                yield {k: o[k][j] for k in ("probs", "heatmap", "size", "offset", "seg")} | {"image": imgs[i + j]}
        return
    for i, sample in enumerate(samples):
        dot = None if sample.dot is None else np.asarray(sample.dot, np.float32)
        o = runner._run("enc3d", runner.volume_feeds(imgs[i], kind, dot))
        yield {k: o[k][0] for k in ("probs", "heatmap", "size", "offset", "seg", "relevance")} | {
            "top": o["top_slices"][0],
            "image": imgs[i],
        }


def decode(runner: Any, kind: str, raw: dict[str, Any], box_source: str | None = None) -> dict[str, Any]:
    """One case's raw outputs as the runtime decodes them: probabilities (L,), detections
    [(score, slice or -1, label, box)], seg (bool, label axis first) at each label's mask threshold (delineated
    where the manifest says so), and for volumes the slice relevance and top slices. ``box_source`` forces
    "heatmap" or "mask" for every label."""
    if kind == "cxr":
        heads = raw["heatmap"], raw["size"], raw["offset"]
        masks = runner.outline(kind, runner.binarize(kind, raw["seg"], axis=0), raw["image"], axis=0)
        dets = runner.boxes(kind, *heads, raw["seg"], raw["probs"], 0.02, 10, box_source, masks, raw["image"])
        return {
            "probs": raw["probs"],
            "dets": [(b.score, -1, b.label, (b.x0, b.y0, b.x1, b.y1)) for b in dets],
            "seg": masks,
        }
    masks = runner.outline(kind, runner.binarize(kind, raw["seg"], axis=1), raw["image"], axis=1)  # (D,L,s,s)
    slice_dets: list[tuple[float, int, str, tuple[float, float, float, float]]] = []
    for z in range(raw["seg"].shape[0]):
        heads = raw["heatmap"][z], raw["size"][z], raw["offset"][z]
        for b in runner.boxes(kind, *heads, raw["seg"][z], raw["probs"], 0.02, 5, box_source, masks[z]):
            slice_dets.append((b.score, z, b.label, (b.x0, b.y0, b.x1, b.y1)))
    return {
        "probs": raw["probs"],
        "dets": slice_dets,
        "seg": np.moveaxis(masks, 1, 0),  # (L,D,s,s)
        "relevance": raw["relevance"],
        "top": raw["top"],
    }


def run_bundle(
    runner: Any, samples: list[Sample], images: np.ndarray | None = None, box_source: str | None = None
) -> list[dict[str, Any]]:
    """Decoded per-case outputs (see :func:`decode`) of ``samples``, or of ``images`` standing in for theirs."""
    kind = samples[0].kind
    return [decode(runner, kind, raw, box_source) for raw in raw_outputs(runner, samples, images)]


def by_size(
    y: np.ndarray, p: np.ndarray, largest: np.ndarray, threshold: float, edges: Sequence[float]
) -> list[dict[str, Any]]:
    """One label's detection by lesion size: for each bin of the positives' largest diameter ``largest`` (mm;
    bins split at ``edges``), the bin's count, its AUROC against every negative case and its recall at
    ``threshold``. A label whose small lesions go unseen shows it here; the pooled AUROC averages it away."""
    bounds = [0.0, *edges, math.inf]
    negatives = y == 0
    out = []
    for lo, hi in itertools.pairwise(bounds):
        chosen = (y > 0) & (largest >= lo) & (largest < hi)
        if not chosen.any():
            continue
        both = chosen | negatives
        out.append(
            {
                "from_mm": lo,
                "to_mm": None if math.isinf(hi) else hi,
                "n": int(chosen.sum()),
                "auroc": auroc((y[both] > 0).astype(np.float32), p[both]),
                "recall": float((p[chosen] >= threshold).mean()),
            }
        )
    return out


def _largest_drawn(sample: Sample, key: str) -> float:
    """The diameter (mm) of the sample's largest drawn lesion of ``key``; 0 without one."""
    lesions: list[tuple[Any, ...]] = sample.extra["lesions"]  # type: ignore[assignment]
    return max((float(les[3] or 0.0) for les in lesions if les[0] == key), default=0.0)


def structured_metrics(
    samples: list[Sample], outs: list[dict[str, Any]], thresholds: dict[str, float]
) -> dict[str, Any]:
    """AUROC, ECE, F1 at the manifest thresholds, mAP@0.5, Dice, slice hit rate."""
    kind = samples[0].kind
    keep = label_mask(kind)
    y = np.stack([s.present for s in samples])
    p = np.stack([o["probs"] for o in outs])
    per_label: dict[str, dict[str, Any]] = {}
    all_y, all_p = [], []
    for li, key in enumerate(LABEL_KEYS):
        if not keep[li]:
            continue
        yl, pl = y[:, li], p[:, li]
        all_y.append(yl)
        all_p.append(pl)
        pred = pl >= thresholds.get(key, 0.5)
        tp = float((pred & (yl > 0)).sum())
        f1 = 2 * tp / max(1.0, float(pred.sum() + (yl > 0).sum())) if (yl > 0).any() or pred.any() else None
        per_label[key] = {"auroc": auroc(yl, pl), "f1": f1, "positives": int(yl.sum())}
        if key in SIZE_BIN_EDGES:
            largest = np.array([_largest_drawn(s, key) for s in samples])
            per_label[key]["by_size"] = by_size(yl, pl, largest, thresholds.get(key, 0.5), SIZE_BIN_EDGES[key])
        # detection (focal labels with boxes)
        gts: dict[Any, list[tuple[float, ...]]] = defaultdict(list)
        for ci, s in enumerate(samples):
            for z, lab, x0, y0, x1, y1 in s.boxes:
                if lab == li:
                    gts[(ci, z)].append((x0, y0, x1, y1))
        if gts:
            dets = [(sc, (ci, z), box) for ci, o in enumerate(outs) for sc, z, lab, box in o["dets"] if lab == key]
            per_label[key]["ap50"] = average_precision(dets, gts)
        # segmentation on cases where the finding has a mask
        dices = []
        for s, o in zip(samples, outs, strict=True):
            gt = s.cls == li + 1
            if gt.any():
                dices.append(dice(o["seg"][li], gt))
        if dices:
            per_label[key]["dice"] = float(np.mean(dices))
    res: dict[str, Any] = {
        "n": len(samples),
        "auroc": _mean([v["auroc"] for v in per_label.values()]),
        "ece": ece(np.concatenate(all_y), np.concatenate(all_p)),
        "f1": _mean([v["f1"] for v in per_label.values()]),
        "map50": _mean([v["ap50"] for v in per_label.values() if v.get("ap50") is not None]),
        "dice": _mean([v["dice"] for v in per_label.values() if v.get("dice") is not None]),
        "per_label": per_label,
    }
    if kind != "cxr":
        hits, hits_k, n = 0, 0, 0
        for s, o in zip(samples, outs, strict=True):
            lesion_slices = set(np.flatnonzero(s.cls.any(axis=(1, 2))).tolist())
            if not lesion_slices:
                continue
            n += 1
            hits += int(int(np.argmax(o["relevance"])) in lesion_slices)
            hits_k += int(bool(lesion_slices & {int(z) for z in o["top"]}))
        res["slice_hit"] = hits / n if n else None
        res["slice_hit_topk"] = hits_k / n if n else None
    return res


class _VqaTally:
    """Exact match per language and question kind, the answer prior, decoder vs heads on presence questions."""

    def __init__(self) -> None:
        self.correct: dict[str, list[int]] = defaultdict(list)
        self.by_kind: dict[str, list[int]] = defaultdict(list)
        self.disagree: list[int] = []
        self.where_disagree: list[int] = []
        self.answers_seen: dict[tuple[str, str, str], Counter[str]] = defaultdict(Counter)
        self.records: list[tuple[tuple[str, str, str], str]] = []

    def add(
        self,
        qa: tuple[str, str, str, str],
        got: str,
        heads_present: set[str],
        heads_where: dict[str, dict[str, str]] | None = None,
    ) -> None:
        """One answer; ``heads_where``: per label, the location (by language) of its largest finding."""
        lang, q, a, qkind = qa
        ok = int(normalize_answer(got) == normalize_answer(a))
        self.correct[lang].append(ok)
        self.by_kind[qkind].append(ok)
        family = (lang, qkind, _label_in_question(q) or "")
        self.answers_seen[family][normalize_answer(a)] += 1
        self.records.append((family, normalize_answer(a)))
        key = _label_in_question(q)
        dec = normalize_answer(got)
        if qkind == "presence" and key is not None and (dec in YES or dec in NO):
            self.disagree.append(int((dec in YES) != (key in heads_present)))
        where = (heads_where or {}).get(key or "")
        if qkind == "location" and where is not None:
            self.where_disagree.append(int(dec != normalize_answer(where[lang])))

    def merge(self, other: _VqaTally) -> None:
        """Add ``other``'s answers after this tally's (the cases that follow, tallied in another process)."""
        for lang, oks in other.correct.items():
            self.correct[lang].extend(oks)
        for qkind, oks in other.by_kind.items():
            self.by_kind[qkind].extend(oks)
        self.disagree.extend(other.disagree)
        self.where_disagree.extend(other.where_disagree)
        for family, seen in other.answers_seen.items():
            self.answers_seen[family].update(seen)  # new answers after the known ones: ties break as in one pass
        self.records.extend(other.records)

    def summary(self) -> dict[str, Any]:
        # prior: always give the most frequent answer of the question's family (language, kind, finding)
        prior = [int(ans == self.answers_seen[fam].most_common(1)[0][0]) for fam, ans in self.records]
        return {
            "exact_match": {lang: float(np.mean(v)) for lang, v in self.correct.items()},
            "by_kind": {k: float(np.mean(v)) for k, v in sorted(self.by_kind.items())},
            "questions": len(self.records),
            "prior": float(np.mean(prior)) if prior else None,
            "decoder_heads_disagreement": float(np.mean(self.disagree)) if self.disagree else None,
            # location answers that name another place than the heads' largest finding of that label
            "location_disagreement": float(np.mean(self.where_disagree)) if self.where_disagree else None,
        }


def _place(location: str | None, laterality: str | None, focal: bool) -> str | None:
    """What "finding + location" compares: the location key of a focal finding, the side of a non-focal one."""
    return location if focal else laterality


def runtime_metrics(
    bundle: Path,
    kind: str,
    seed: int,
    workdir: Path,
    report_cases: int,
    vqa_cases: int,
    controls: bool = True,
    narrative: bool = True,
    narrative_cases: int | None = None,
    pool: Executor | None = None,
) -> dict[str, Any]:
    """What a user gets from the node, end to end: phantoms written as DICOM and run through
    :class:`~dicom_agent.inference.bundle_adapter.BundleAdapter` (the runtime's preprocessing, heads, map-back,
    bilingual renderer and decoder).

    ``report``: the EN and ZH impressions parsed back with the per-language lexicons and compared with the
    ground truth — finding F1 (labels) and finding + location F1 ((label, place) pairs; place = location key
    of focal findings, side of non-focal ones), micro-averaged over cases, per language; EN/ZH consistency =
    share of cases where parse(EN) == parse(ZH); narrative disagreement = share of cases whose decoder
    narrative in that language disagrees with the heads (``decoder_disagrees`` — the draft SR's comment; with
    ``narrative`` False no narrative is decoded and the figure is left out).
    ``sizes``: on every case analysed, the largest nodule, mass or PET lesion stated against the largest drawn
    (whole mm), per label shown by both (:func:`largest_sizes`).
    ``vqa``: every question of the first ``vqa_cases`` cases asked through ``BundleAdapter.answer`` (the
    decoder's prompt carries the findings when the bundle takes them); controls: the same questions about a
    blank image (the model input replaced by zeros, findings and all) and about the previous case's image.
    With a ``pool`` (:func:`~models.dataset.sample_pool`) the cases run in its processes, ``RUNTIME_CHUNK`` at a
    time, each chunk starting from its previous case's analysis: the figures are the same as in one process."""
    narrated = report_cases if narrative_cases is None else min(narrative_cases, report_cases)
    job = _RuntimeJob(bundle, kind, seed, workdir, 0, max(report_cases, vqa_cases), report_cases, vqa_cases)
    job = replace(job, controls=controls, narrative=narrative, narrated=narrated)

    def part(start: int, stop: int, threads: int | None) -> _RuntimeJob:
        return replace(job, start=start, stop=stop, threads=threads)

    tally = _RuntimeTally()
    for counted in in_chunks(pool, _runtime_cases, part, job.stop, RUNTIME_CHUNK):
        tally.merge(counted)
    return tally.summary(job)


RUNTIME_CHUNK = 25  # cases per task when the runtime metrics run in several processes
VQA_RUNS = ("vqa", "blank", "shuffled")  # the questions asked about the case, a blank image, the previous case


@dataclass(frozen=True)
class _RuntimeJob:
    """Cases ``start``..``stop`` (from ``seed``) of :func:`runtime_metrics`; ``threads``: ONNX Runtime's."""

    bundle: Path
    kind: str
    seed: int
    workdir: Path
    start: int
    stop: int
    report_cases: int
    vqa_cases: int
    controls: bool = True
    narrative: bool = True
    narrated: int = 0
    threads: int | None = None


@dataclass
class _RuntimeTally:
    """What :func:`runtime_metrics` adds up over cases; a later chunk of cases merges after an earlier one."""

    counts: dict[str, dict[str, list[int]]] = field(
        default_factory=lambda: {lang: {"f": [0, 0, 0], "fl": [0, 0, 0]} for lang in ("en", "zh")}  # tp, fp, fn
    )
    consistent: int = 0
    disagreeing: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("en", "zh"), 0))
    uptake_errors: list[float] = field(default_factory=list)  # highest SUVmax reported - the phantom's
    size_errors: list[float] = field(default_factory=list)  # largest size reported - drawn, whole mm, per label
    height_errors: list[float] = field(default_factory=list)  # radiograph effusion height reported - drawn (mm)
    drawn_pairs: int = 0
    tallies: dict[str, _VqaTally] = field(default_factory=lambda: {n: _VqaTally() for n in VQA_RUNS})

    def merge(self, other: _RuntimeTally) -> None:
        for lang, by_key in other.counts.items():
            for key, c in by_key.items():
                self.counts[lang][key] = [a + b for a, b in zip(self.counts[lang][key], c, strict=True)]
        self.consistent += other.consistent
        for lang, n in other.disagreeing.items():
            self.disagreeing[lang] += n
        self.uptake_errors += other.uptake_errors
        self.size_errors += other.size_errors
        self.height_errors += other.height_errors
        self.drawn_pairs += other.drawn_pairs
        for name, tally in other.tallies.items():
            self.tallies[name].merge(tally)

    def summary(self, job: _RuntimeJob) -> dict[str, Any]:
        def f1(c: list[int]) -> float:
            return 2 * c[0] / max(1, 2 * c[0] + c[1] + c[2])

        out: dict[str, Any] = {"sizes": size_agreement(self.size_errors)}
        if self.height_errors:
            out["effusion_heights"] = height_agreement(self.height_errors)
        if job.report_cases:
            out["report"] = {
                "n": job.report_cases,
                "drawn_pairs": self.drawn_pairs,
                "finding_f1": {lang: f1(c["f"]) for lang, c in self.counts.items()},
                "finding_location_f1": {lang: f1(c["fl"]) for lang, c in self.counts.items()},
                "consistency": self.consistent / job.report_cases,
            }
            if job.narrative and job.narrated:
                out["report"]["narrative_n"] = job.narrated
                out["report"]["narrative_disagreement"] = {
                    lang: n / job.narrated for lang, n in self.disagreeing.items()
                }
            if self.uptake_errors:  # PET: the highest SUVmax stated, against the phantom's, to the stated decimal
                out["report"]["suvmax"] = agreement(self.uptake_errors, 0.05)
        if job.vqa_cases:
            out["vqa"] = self.tallies["vqa"].summary() | {"cases": job.vqa_cases}
            if job.controls:
                out["control_blank"] = {"vqa": self.tallies["blank"].summary()}
                out["control_shuffled"] = {"vqa": self.tallies["shuffled"].summary()}
        return out


_ADAPTERS: dict[tuple[Path, int | None, str], Any] = {}  # per process: a bundle is loaded once for its chunks


def _adapter(bundle: Path, threads: int | None) -> Any:
    """This process's adapter of ``bundle``, loaded again when its manifest has changed (a re-calibration)."""
    from dicom_agent.inference.bundle_adapter import BundleAdapter
    from dicom_agent.inference.onnx_runner import sha256_file

    key = (bundle, threads, sha256_file(bundle / "manifest.json"))
    if key not in _ADAPTERS:
        _ADAPTERS[key] = BundleAdapter(bundle, device="cpu", narrative=False, threads=threads)
    return _ADAPTERS[key]


def _runtime_cases(job: _RuntimeJob) -> _RuntimeTally:
    """:func:`runtime_metrics`' cases ``job.start``..``job.stop`` tallied (the previous case's analysis, the
    shuffled control's image, is made again for a chunk that starts after case 0)."""
    import shutil

    from dicom_agent.inference.parse import parse
    from models.terminology import LABELS

    adapter = _adapter(job.bundle, job.threads)
    vocab = adapter.vocabulary
    kind, t = job.kind, _RuntimeTally()

    def analysed(i: int, folder: Path) -> tuple[Any, Any, Any]:
        case, study = phantom_case_study(kind, job.seed + i, folder)
        return case, study, adapter.analyse(study, narrative=job.narrative and i < job.narrated)

    previous = None
    if job.controls and 0 < job.start <= job.vqa_cases:
        again = job.workdir / f"{kind}{job.start - 1}-again"  # the chunk before may still be writing its own
        previous = analysed(job.start - 1, again)[2]
        shutil.rmtree(again, ignore_errors=True)
    for i in range(job.start, job.stop):
        case, study, analysis = analysed(i, job.workdir / f"{kind}{i}")
        if i < job.vqa_cases:
            qa = [(q.lang, q.question, q.answer, q.kind) for q in case.qa]
            runs = [("vqa", analysis)]
            if job.controls:
                runs.append(("blank", adapter.analyse(study, replace_pixels=np.zeros_like)))
                if previous is not None:
                    runs.append(("shuffled", previous))
            for name, used in runs:
                heads = used.inputs[0].findings if used.inputs else []
                present, places = {f.label for f in heads}, _largest_places(heads)
                for item in qa:
                    t.tallies[name].add(item, adapter.answer(used, item[1], item[0]), present, places)
            previous = analysis
        shutil.rmtree(job.workdir / f"{kind}{i}", ignore_errors=True)
        result = analysis.result
        t.size_errors.extend(mm(got) - truth for got, truth in largest_sizes(case.lesions, result.present).values())
        if kind == "cxr":
            t.height_errors.extend(got - drawn for got, drawn in effusion_heights(case.lesions, result.present))
        if i >= job.report_cases:
            continue
        drawn = [float(les.attrs["suv_max"]) for les in case.lesions if "suv_max" in les.attrs]
        reported = [f.suv_max for f in result.present if f.suv_max is not None]
        if drawn and reported:
            t.uptake_errors.append(round(max(reported) - max(drawn), 1))
        truth_f = {les.label for les in case.lesions}
        truth_fl = {(les.label, _place(les.location, les.laterality, LABELS[les.label].focal)) for les in case.lesions}
        t.drawn_pairs += len(truth_fl)
        parsed = {}
        for lang in ("en", "zh"):
            found = [f for f in parse(result.impression[lang], lang, vocab) if not f.negated]
            got_f = {f.label for f in found}
            got_fl = {
                (f.label, _place(f.location, f.laterality, vocab.labels[f.label].focal))
                for f in found
                if f.label in vocab.labels
            }
            parsed[lang] = got_fl
            for key, got, truth in (("f", got_f, truth_f), ("fl", got_fl, truth_fl)):
                c = t.counts[lang][key]
                c[0] += len(got & truth)
                c[1] += len(got - truth)
                c[2] += len(truth - got)
        t.consistent += int(parsed["en"] == parsed["zh"])
        for lang in t.disagreeing:
            t.disagreeing[lang] += int(f"decoder_disagrees:{lang}" in result.flags)
    return t


DIAMETER_LABELS = ("nodule", "mass", "hypermetabolic_lesion")  # the phantoms' sizes of these are diameters


def phantom_case_study(kind: str, seed: int, folder: Path) -> tuple[Any, Any]:
    """Phantom ``seed`` of ``kind`` written as DICOM under ``folder``: (the case, its StudyInput for the adapter)."""
    from dicom_agent.inference.types import SeriesInput, StudyInput
    from models.synthetic import make_case
    from models.synthetic.dicom_writer import write_case

    case = make_case(kind, seed)
    written = write_case(case, folder)
    modality = json.loads(written.ground_truth.read_text(encoding="utf-8"))["modality"]
    study = StudyInput(written.study_instance_uid, [SeriesInput(written.series_instance_uid, modality, written.files)])
    return case, study


def largest_sizes(lesions: list[Any], findings: list[Any]) -> dict[str, tuple[float, int]]:
    """Per diameter label both drawn and reported with a size: (the largest reported size, the largest drawn in
    whole mm) — what "How large is the largest nodule?" is answered from (the findings text names the largest
    first) and against."""
    out: dict[str, tuple[float, int]] = {}
    for label in DIAMETER_LABELS:
        drawn = [float(les.size_mm) for les in lesions if les.label == label and les.size_mm]
        reported = [float(f.size_mm) for f in findings if f.label == label and f.size_mm is not None]
        if drawn and reported:
            out[label] = (max(reported), mm(max(drawn)))
    return out


def effusion_heights(lesions: list[Any], findings: list[Any]) -> list[tuple[float, float]]:
    """(reported, drawn) height in mm of each pleural effusion side both drawn and reported with a size (the
    phantoms state a radiograph effusion's height from the costophrenic angle to the fluid surface where lowest)."""
    drawn = {les.laterality: float(les.size_mm) for les in lesions if les.label == "pleural_effusion" and les.size_mm}
    return [
        (float(f.size_mm), drawn[f.laterality])
        for f in findings
        if f.label == "pleural_effusion" and f.size_mm is not None and f.laterality in drawn
    ]


def height_agreement(errors: list[float]) -> dict[str, Any]:
    """Reported minus drawn effusion heights (mm): how many, the share within 10 mm, the median error (signed: the
    direction the runtime misses in) and the median absolute error."""
    return {
        "cases": len(errors),
        "within_10mm": float(np.mean([abs(e) <= 10 for e in errors])),
        "median_error": float(np.median(errors)),
        "median_abs_error": float(np.median(np.abs(errors))),
    }


def agreement(errors: list[float], exact_within: float) -> dict[str, Any]:
    """Reported minus drawn values summarised: how many, how often they agree (``|error| < exact_within``: to
    the stated digit), the median miss."""
    return {
        "cases": len(errors),
        "exact": float(np.mean([abs(e) < exact_within for e in errors])) if errors else None,
        "median_abs_error": float(np.median(np.abs(errors))) if errors else None,
    }


def size_agreement(errors: list[float]) -> dict[str, Any]:
    """Reported minus drawn sizes (whole mm): :func:`agreement` to the mm, and how often within 2 mm."""
    within = float(np.mean([abs(e) <= 2 for e in errors])) if errors else None
    return agreement(errors, 0.5) | {"within_2mm": within}


def _largest_places(findings: list[Any]) -> dict[str, dict[str, str]]:
    """Per label, the location names of its largest located finding: what a location question's answer
    copies from the findings text (which names each label's findings largest first)."""
    out: dict[str, dict[str, str]] = {}
    for label in {f.label for f in findings}:
        largest = largest_located(findings, label)
        if largest is not None and largest.location_en and largest.location_zh:
            out[label] = {"en": largest.location_en, "zh": largest.location_zh}
    return out


_NAMES: dict[str, str] | None = None


def _label_in_question(question: str) -> str | None:
    """Which label a presence question asks about (by its English or Chinese name; longest name first)."""
    global _NAMES
    if _NAMES is None:
        from models.terminology import LABELS

        names = {}
        for key, lab in LABELS.items():
            names[lab.name_en.lower()] = key
            names[lab.name_zh] = key
        _NAMES = dict(sorted(names.items(), key=lambda kv: -len(kv[0])))
    low = question.lower()
    for name, key in _NAMES.items():
        if name in low:
            return key
    return None


def run_eval(bundle: Path, cfg: EvalConfig) -> dict[str, Any]:
    """All metrics of ``bundle`` on the held-out phantoms (see module docstring)."""
    from dicom_agent.inference.onnx_runner import BundleRunner
    from models.train import available_kinds

    runner = BundleRunner(bundle, device="cpu")
    result: dict[str, Any] = {
        "held_out_seed_start": cfg.seed,
        "bundle_sha256": runner.bundle_sha256,
        "modalities": {},
    }
    with sample_pool(cfg.workers) as pool:
        for kind in [k for k in cfg.kinds if k in available_kinds()]:
            result["modalities"][kind] = _eval_kind(runner, bundle, kind, cfg, pool)
    return result


def _eval_kind(runner: Any, bundle: Path, kind: str, cfg: EvalConfig, pool: Executor | None) -> dict[str, Any]:
    """:func:`run_eval`'s metrics of one kind; phantoms and the runtime's cases in ``pool``'s processes."""
    t0 = time.time()
    samples = make_samples(kind, cfg.cases, cfg.seed, pool=pool)
    thresholds = {key: runner.threshold_of(kind, key) for key in runner.label_keys}
    outs = run_bundle(runner, samples)
    m: dict[str, Any] = {"held_out": structured_metrics(samples, outs, thresholds)}
    if cfg.oor_cases:
        oor = make_samples(kind, cfg.oor_cases, cfg.seed, out_of_range=True, pool=pool)
        m["out_of_range"] = structured_metrics(oor, run_bundle(runner, oor), thresholds)
    if cfg.finer_cases and kind in FINER:
        size, depth = FINER[kind]
        fine = make_samples(kind, cfg.finer_cases, cfg.seed, size=size, depth=depth, pool=pool)
        m["finer"] = structured_metrics(fine, run_bundle(runner, fine), thresholds) | {"drawn": [size, depth]}
    if cfg.corruptions:
        # one noise stream per kind: a kind's figures do not depend on which kinds ran before it
        rng = np.random.default_rng([cfg.seed, KINDS.index(kind)])
        base = np.stack([s.image.astype(np.float32) for s in samples])
        m["corruptions"] = {}
        for name in ("noise", "blur", "contrast"):
            imgs = np.stack([corrupt(x, name, rng) for x in base])
            m["corruptions"][name] = structured_metrics(samples, run_bundle(runner, samples, imgs), thresholds)
    if cfg.report_cases or cfg.vqa_cases:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            m |= runtime_metrics(
                bundle,
                kind,
                cfg.seed,
                Path(tmp),
                cfg.report_cases,
                cfg.vqa_cases,
                narrative_cases=cfg.narrative_cases,
                pool=pool,
            )
    m["seconds"] = round(time.time() - t0, 1)
    log.info("eval %s done in %.0fs", kind, m["seconds"])
    return m


def _fmt(v: Any) -> str:
    return "—" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _size_span(size_bin: dict[str, Any]) -> str:
    """A :func:`by_size` bin's diameters as the tables name them: "< 10 mm", "10–15 mm", "≥ 20 mm"."""
    lo, hi = size_bin["from_mm"], size_bin["to_mm"]
    if hi is None:
        return f"≥ {lo:g} mm"
    return f"< {hi:g} mm" if lo == 0 else f"{lo:g}–{hi:g} mm"


def format_tables(metrics: dict[str, Any]) -> str:
    """Markdown tables: one row per modality and split; then per-label detail."""
    lines = [
        "| modality | split | n | AUROC | ECE | F1@thr | mAP@0.5 | Dice | slice hit (top-1 / top-k) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, m in metrics["modalities"].items():
        splits = [("held-out", m["held_out"])]
        if "out_of_range" in m:
            splits.append(("out-of-range", m["out_of_range"]))
        if "finer" in m:
            splits.append(("finer ({}² × {})".format(*m["finer"]["drawn"]), m["finer"]))
        for name, c in m.get("corruptions", {}).items():
            splits.append((name, c))
        for split, r in splits:
            hit = f"{_fmt(r.get('slice_hit'))} / {_fmt(r.get('slice_hit_topk'))}" if "slice_hit" in r else "—"
            lines.append(
                f"| {kind} | {split} | {r['n']} | {_fmt(r['auroc'])} | {_fmt(r['ece'])} | {_fmt(r['f1'])} | "
                f"{_fmt(r['map50'])} | {_fmt(r['dice'])} | {hit} |"
            )
    lines += [
        "",
        "| modality | VQA EN | VQA ZH | questions | answer prior | blank image | shuffled image | decoder≠heads "
        "(presence / location) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, m in metrics["modalities"].items():
        if "vqa" not in m:
            continue
        v, b, s = m["vqa"], m["control_blank"]["vqa"], m["control_shuffled"]["vqa"]

        def both(x: dict[str, Any]) -> str:
            em = x["exact_match"]
            return f"{_fmt(em.get('en'))}/{_fmt(em.get('zh'))}"

        lines.append(
            f"| {kind} | {_fmt(v['exact_match'].get('en'))} | {_fmt(v['exact_match'].get('zh'))} | {v['questions']} | "
            f"{_fmt(v['prior'])} | {both(b)} | {both(s)} | {_fmt(v['decoder_heads_disagreement'])} / "
            f"{_fmt(v.get('location_disagreement'))} |"
        )
    if any("report" in m for m in metrics["modalities"].values()):
        lines += [
            "",
            "| modality | rendered text: cases (drawn pairs) | finding F1 EN / ZH | finding+location F1 EN / ZH | "
            "EN=ZH | narrative≠heads EN / ZH (cases) |",
            "|---|---|---|---|---|---|",
        ]
        for kind, m in metrics["modalities"].items():
            if "report" in m:
                r = m["report"]
                nd = r.get("narrative_disagreement", {})
                pairs = f" ({r['drawn_pairs']})" if "drawn_pairs" in r else ""
                narrated_n = f" ({r.get('narrative_n', r['n'])})" if nd else ""
                lines.append(
                    f"| {kind} | {r['n']}{pairs} | {_fmt(r['finding_f1']['en'])} / {_fmt(r['finding_f1']['zh'])} | "
                    f"{_fmt(r['finding_location_f1']['en'])} / {_fmt(r['finding_location_f1']['zh'])} | "
                    f"{_fmt(r['consistency'])} | {_fmt(nd.get('en'))} / {_fmt(nd.get('zh'))}{narrated_n} |"
                )
    for kind, m in metrics["modalities"].items():
        sizes = m.get("sizes")
        if sizes and sizes["cases"]:
            lines.append(
                f"\n{kind}: largest nodule / mass / lesion size stated = the phantom's (whole mm) in "
                f"{_fmt(sizes['exact'])} of {sizes['cases']} (case, label) pairs with both, within 2 mm in "
                f"{_fmt(sizes.get('within_2mm'))}; median absolute error {_fmt(sizes['median_abs_error'])} mm"
            )
        heights = m.get("effusion_heights")
        if heights:
            lines.append(
                f"\n{kind}: pleural effusion height stated within 10 mm of the phantom's in "
                f"{_fmt(heights['within_10mm'])} of {heights['cases']} sides with both; median error "
                f"{heights['median_error']:+.1f} mm (absolute {heights['median_abs_error']:.1f} mm)"
            )
        suv = m.get("report", {}).get("suvmax")
        if suv:
            lines.append(
                f"\n{kind}: highest SUVmax stated = the phantom's (to 0.1) in {_fmt(suv['exact'])} of "
                f"{suv['cases']} cases with both; median absolute error {_fmt(suv['median_abs_error'])}"
            )
    lines += ["", "| modality | VQA by question kind |", "|---|---|"]
    for kind, m in metrics["modalities"].items():
        if "vqa" in m:
            lines.append(f"| {kind} | " + ", ".join(f"{k} {_fmt(v)}" for k, v in m["vqa"]["by_kind"].items()) + " |")
    sized = [
        (kind, key, b)
        for kind, m in metrics["modalities"].items()
        for key, r in m["held_out"]["per_label"].items()
        for b in r.get("by_size", [])
    ]
    if sized:
        lines += [
            "",
            "| modality | label | largest lesion | positives | AUROC (against all negatives) | "
            "recall at the threshold |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {kind} | {key} | {_size_span(b)} | {b['n']} | {_fmt(b['auroc'])} | {_fmt(b['recall'])} |"
            for kind, key, b in sized
        ]
    lines += ["", "| modality | label | AUROC | F1@thr | AP@0.5 | Dice | positives |", "|---|---|---|---|---|---|---|"]
    for kind, m in metrics["modalities"].items():
        for key, r in m["held_out"]["per_label"].items():
            lines.append(
                f"| {kind} | {key} | {_fmt(r['auroc'])} | {_fmt(r['f1'])} | {_fmt(r.get('ap50'))} | "
                f"{_fmt(r.get('dice'))} | {r['positives']} |"
            )
    return "\n".join(lines)


def write_metrics(bundle: Path, metrics: dict[str, Any]) -> None:
    """Put the summary metrics into manifest.json (the manifest itself is not in its own hash list)."""
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    summary: dict[str, Any] = {"held_out_seed_start": metrics["held_out_seed_start"], "modalities": {}}
    for kind, m in metrics["modalities"].items():
        h = m["held_out"]
        entry = {k: h.get(k) for k in ("n", "auroc", "ece", "f1", "map50", "dice", "slice_hit", "slice_hit_topk")}
        entry["per_label"] = h["per_label"]
        if "vqa" in m:
            entry["vqa_exact_match"] = m["vqa"]["exact_match"]
            entry["vqa_prior"] = m["vqa"]["prior"]
            entry["vqa_blank_image"] = m["control_blank"]["vqa"]["exact_match"]
            entry["vqa_shuffled_image"] = m["control_shuffled"]["vqa"]["exact_match"]
            entry["decoder_heads_disagreement"] = m["vqa"]["decoder_heads_disagreement"]
            entry["location_disagreement"] = m["vqa"].get("location_disagreement")
        if "report" in m:
            entry["rendered_text"] = m["report"]
        if "sizes" in m:
            entry["sizes"] = m["sizes"]
        if "effusion_heights" in m:
            entry["effusion_heights"] = m["effusion_heights"]
        if "out_of_range" in m:
            o = m["out_of_range"]
            entry["out_of_range"] = {k: o.get(k) for k in ("n", "auroc", "map50", "dice", "slice_hit")}
        if "finer" in m:
            f = m["finer"]
            entry["finer"] = {k: f.get(k) for k in ("n", "drawn", "auroc", "f1", "map50", "dice", "slice_hit")}
        if "corruptions" in m:
            entry["corruptions"] = {
                n: {k: c.get(k) for k in ("auroc", "map50", "dice", "slice_hit")} for n, c in m["corruptions"].items()
            }
        summary["modalities"][kind] = entry
    manifest["metrics"] = summary
    write_manifest(path, manifest)
