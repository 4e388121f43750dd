"""Two-stage training of the unified model on synthetic phantoms, budgeted by STEPS with a fixed seed.

Stage 1 (UMIT "feature alignment", UniMedI report-guided space): everything trainable — finding, detection,
segmentation and slice-relevance heads, report captioning, and a CLIP-style image <-> report loss.
Stage 2 (UMIT "instruction tuning"): the vision side (encoder, heads, slice attention) is frozen; its outputs
are computed once per training image and the decoder (+ the memory adapter) learns VQA and reports from
instruction templates in English and Chinese.

Never budget by wall time: the machine is shared and step speed varies up to 9× (model notes).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from dicom_agent.inference.onnx_runner import mask_components
from dicom_agent.inference.types import Finding
from models.context import LesionFacts, Places, counterfactual, findings_of, findings_text, missed, places_of
from models.dataset import KIND_INDEX, Batch, Sample, collate, make_samples, sample_pool
from models.labels import LABEL_KEYS, label_entries, label_mask
from models.network import NetConfig, UnifiedModel, count_parameters
from models.prompts import TEMPLATES, instruction, with_context
from models.tokenizer import EOS, PAD, prompt_ids, token_id, train_tokenizer

log = logging.getLogger(__name__)

TRAIN_SEED = 1_000
VAL_SEED = 500_000  # thresholds are chosen here; evaluation uses its own held-out seed (models.evaluate)
SEG_POS_WEIGHT = 3.0  # segmentation BCE: positives weighted up (10 pushed high-prior regions over 0.5 everywhere)
# English answers after a findings text start with a space so that their words are the same byte-level BPE
# tokens as mid-sentence in that text ("Ġright Ġmiddle Ġlobe", "Ġ44 Ġmm"): an answer copied from it is a plain copy.
# Chinese text has no spaces, except before an SUVmax ("SUVmax 13.3"): such an answer gets one too
ANSWER_PREFIX = {"en": " ", "zh": ""}
# question kinds that presume the finding they ask about (``TrainConfig.context_miss``)
MISS_KINDS = frozenset({"location", "laterality", "size"})
CLS_WEIGHT = 5.0  # finding logits learn slowest: the dense heads dominate the shared encoder's gradient


@dataclass
class TrainConfig:
    """The recipe of the shipped bundle (defaults) — ``dicom-agent model train`` overrides steps/seed/sizes."""

    seed: int = 0
    steps1: int = 2800
    steps2: int = 1800
    n_cxr: int = 2000
    n_ct: int = 300
    n_pet: int = 300
    n_val: int = 60  # per kind, for thresholds
    batch_2d: int = 8
    batch_3d: int = 2
    caption_every: int = 16  # stage-1 report captioning on every 16th step (compute budget); 0 = never
    batch_text: int = 64
    report_share: float = 0.15  # stage-2 steps on narrative reports (VQA the rest); the text of record is rendered
    # stage-2 prompts start with the findings text (ground truth rendered like the runtime renders the heads);
    # each finding's side/location and size are dropped with this probability (the runtime cannot always give
    # them). On since bundle 0.6.0: with the heads of 0.5.0 it took VQA above the answer prior on every kind
    # (session 8, docs/model.md); with the weaker heads of session 4 the bound answers had fallen below it
    context: bool = True
    context_drop: float = 0.15
    # the findings text states each PET lesion's SUVmax, as the runtime measures it on the source voxels since
    # 0.10.0 (manifest ``prompts.context_uptake``): "What is the highest SUVmax?" is answered from the text
    context_uptake: bool = True
    # for questions, each answer worded as the question asks it (``render.context_text``: a count for "How many
    # …?", "on both sides", the largest alone, English sides after the name; manifest
    # ``prompts.context_answer_forms``, since 0.13.0): the decoder of 0.12.0 answered "2" for 3 or 4 listed PET
    # lesions, the first side named for a bilateral effusion and "liver" for the mediastinum in English
    context_answer_forms: bool = True
    # share of stage-2 questions of a kind that presumes the finding (``MISS_KINDS``: where, which side, how large)
    # whose findings text leaves that finding out (``models.context.missed``: "No nodule."), the answer still the
    # image's: at inference the text says so when the heads missed a lesion. 0.13.0, trained without, answered
    # such CT location questions with a lobe the image did not show (6 answers on 40 held-out CTs, docs/model.md)
    context_miss: float = 0.15
    # stage-2 VQA picks a question kind uniformly among a case's kinds, then a question of it: sampled by question,
    # presence questions (a dozen per radiograph) drowned the few location / size / side questions
    qa_balance: bool = True
    # question kinds drawn more often than the others (kind-balanced sampling): the answers copied from the
    # findings text (SUVmax since 0.10.0). At equal shares the decoder of 0.8.x answered every location, side and
    # size question with one constant whatever the text said (docs/model.md, "Copying from the findings text")
    qa_weights: dict[str, float] = field(
        default_factory=lambda: {"location": 3.0, "laterality": 3.0, "size": 3.0, "suv": 3.0}
    )
    # share of stage-2 questions asked about counterfactual findings (``models.context.counterfactual``: the
    # case's findings moved and resized, the findings text and the answer rendered from them): the answer is in
    # the text only. Without them the decoder recognised the training image (300 volumes, each asked hundreds of
    # times) and answered from it, whatever the text said
    context_swap: float = 0.5
    # the decoder's pointer head (``NetConfig.copy``); a stage-2 start without one (``vision_from`` a 0.8 bundle)
    # gets a new one
    copy_head: bool = True
    # neighbouring slices on each side a volume slice is encoded with (``NetConfig.slice_context``, 2.5D). Two
    # (session 32) found more CT nodules but lost CT and PET masks: not shipped (docs/model.md, "CT nodules under
    # 16 mm")
    slice_context: int = 1
    # CT slices also see the Hessian dot enhancement of the grid twice as fine (``NetConfig.dot``): on the model
    # grid alone nodules under 15 mm were at chance (session 32)
    dot_channel: bool = True
    # and the dark-tube filter beside it (a second fine-grid channel): the air bronchograms that tell consolidation
    # from a mass are 2-3 mm bronchi, gone on the model grid, where 0.17.0 confused the two (AUROC 0.92 / 0.91)
    tube_channel: bool = True
    # and the water band of each CT slice (``NetConfig.water``), for CT effusion masks (session 34)
    water_channel: bool = True
    # PET slices see their own hot-blob dot (``NetConfig.pet_dot``) in the first fine-grid slot: the network missed
    # liver lesions (SUVmax 4.5-10 in a liver of 2-3) that the model grid's 24 mm slices average away (session 37)
    pet_dot: bool = True
    lr1: float = 2e-3
    lr2: float = 1.5e-3
    clip1: float = 50.0  # stage-1 grad-norm clip: the heads' norm is ~45, a clip of 2 scaled every step ~20x down
    clip2: float = 5.0
    heat_weight: float = 0.5  # the focal heatmap loss otherwise dominates the gradient
    # segmentation BCE weight of positive pixels per label (others: SEG_POS_WEIGHT). The radiograph pneumothorax
    # rim never left zero at 3 (mean p inside it <= 0.05 in every bundle up to 0.7.0); in 1200-step radiograph-only
    # runs its Dice at 0.5 went 0.000 -> 0.587 at 10 and 0.836 at 30. Effusion masks (radiograph and CT) were
    # under-confident too; at 10 (against 3, both runs with pneumothorax 30) held-out Dice went 0.716 -> 0.792 on
    # radiographs and 0.286 -> 0.348 on CT (docs/model.md, "Under-confident masks")
    seg_pos_weight: dict[str, float] = field(default_factory=lambda: {"pneumothorax": 30.0, "pleural_effusion": 10.0})
    # per kind, (reference pixels, cap) of the segmentation BCE's weights for small lesions (``lesion_weights``);
    # off in the shipped recipe. Tried for CT at (16, 8) in session 32: held-out CT nodules under 16 mm stayed as
    # unseen as in 0.16.0 (docs/model.md, "CT nodules under 16 mm")
    small_lesions: dict[str, tuple[float, float]] = field(default_factory=dict)
    vocab_size: int = 2000
    threads: int = 2
    log_every: int = 25
    net: dict[str, int] = field(default_factory=dict)  # NetConfig overrides (tests use a smaller network)
    # share of stage-1 steps per kind (renormalised over the kinds present); radiographs have six labels and
    # the subtlest ones (pneumothorax), so they get the most steps
    kind_share: dict[str, float] = field(default_factory=lambda: {"cxr": 0.42, "ct": 0.33, "pet": 0.25})
    # stage-1 mask health: every ``check_every`` steps and at the end, each kind's validation masks (the first
    # ``check_cases`` validation phantoms) are scored and logged, and the trajectory goes into the manifest. Longer
    # runs lost their CT masks with nobody looking (session 10); eval mode without gradients and without random
    # draws leaves the run's result unchanged. 0 = off
    check_every: int = 500
    check_cases: int = 24


def available_kinds() -> list[str]:
    """Kinds whose phantom generator exists (CT/PET land after CXR)."""
    import importlib.util

    return ["cxr"] + [k for k in ("ct", "pet") if importlib.util.find_spec(f"models.synthetic.{k}") is not None]


# ---- text --------------------------------------------------------------------------------------------------
def corpus(samples: list[Sample]) -> list[str]:
    """The tokenizer's training text: reports, questions and answers, templates. Not the findings texts of
    ``context`` prompts: their words are the reports' words, and a vocabulary that does not depend on the
    stage-2 recipe keeps stage 1 identical whichever decoder recipe follows (``stage1_from``)."""
    texts: list[str] = []
    for s in samples:
        texts += [s.report["en"], s.report["zh"]]
        texts += [t for qa in s.qa for t in (qa[1], qa[2])]
    for by_lang in TEMPLATES.values():
        for opts in by_lang.values():
            texts += [o.format(question="") for o in opts]
    return texts


def text_example(
    tok: Tokenizer,
    task: str,
    lang: str,
    answer: str,
    question: str | None,
    variant: int,
    findings: str | None = None,
) -> tuple[list[int], int]:
    """Token ids of prompt (findings text, if any, then the instruction) + answer + <eos>, and the prompt length
    (loss only on what follows)."""
    prompt = prompt_ids(tok, task, lang, with_context(instruction(task, lang, question, variant), lang, findings))
    prefix = ""
    if findings is not None:
        prefix = " " if f" {answer}" in findings else ANSWER_PREFIX[lang]
    ans = tok.encode(prefix + answer, add_special_tokens=False).ids
    return prompt + ans + [token_id(tok, EOS)], len(prompt)


def pad_batch(examples: list[tuple[list[int], int]], pad_id: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (N,T) and shifted targets (N,T) with -100 on the prompt and padding."""
    seqs = [ids[:max_len] for ids, _ in examples]
    t = max(len(s) for s in seqs)
    inp = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    tgt = torch.full((len(seqs), t), -100, dtype=torch.long)
    for i, (s, (_, plen)) in enumerate(zip(seqs, examples, strict=True)):
        inp[i, : len(s)] = torch.tensor(s)
        tgt[i, plen - 1 : len(s) - 1] = torch.tensor(s[plen:])
    return inp, tgt


# ---- losses ------------------------------------------------------------------------------------------------
def focal_heatmap_loss(logits: torch.Tensor, gt: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss over the label channels in ``keep`` (channel axis -3)."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = (gt >= 0.999).float()
    neg_w = (1 - gt) ** 4
    loss = -(pos * (1 - p) ** 2 * torch.log(p) + (1 - pos) * neg_w * p**2 * torch.log(1 - p))
    shape = [1] * loss.dim()
    shape[-3] = -1
    loss = loss * keep.float().view(shape)
    return loss.sum() / pos.sum().clamp(min=1.0)


def seg_pos_weights(overrides: dict[str, float]) -> torch.Tensor:
    """Per-label weight of the segmentation BCE's positive pixels: ``SEG_POS_WEIGHT`` unless overridden."""
    unknown = set(overrides) - set(LABEL_KEYS)
    if unknown:
        raise ValueError(f"seg_pos_weight names unknown labels: {sorted(unknown)}")
    return torch.tensor([overrides.get(key, SEG_POS_WEIGHT) for key in LABEL_KEYS], dtype=torch.float32)


def lesion_weights(gt: torch.Tensor, label_axis: int, reference: float, cap: float) -> torch.Tensor:
    """Per-pixel weights of the segmentation BCE (``gt``'s shape): each connected lesion of each label weighted
    ``reference / its pixel count`` (between 1 and ``cap``), 1 off the lesions. A pixel loss weighs a lesion by its
    size, so a 1-voxel nodule beside a 40-voxel one is 2 % of its label's positives; weighting small ones up
    towards ``reference`` pixels gives each lesion a say (the "blob loss" argument, Kofler et al. 2022)."""
    labels = gt.movedim(label_axis, 1).numpy() > 0.5  # (N, L, ...)
    out = np.ones(labels.shape, dtype=np.float32)
    for n, li in zip(*np.nonzero(labels.reshape(labels.shape[0], labels.shape[1], -1).any(-1)), strict=True):
        _, parts, sizes = np.unique(mask_components(labels[n, li]), return_inverse=True, return_counts=True)
        scale = np.clip(reference / sizes.astype(np.float32), 1.0, cap)
        scale[0] = 1.0  # background (component label 0 sorts first)
        out[n, li] = scale[parts].reshape(labels.shape[2:])
    return torch.from_numpy(out).movedim(1, label_axis)


def seg_loss(
    logits: torch.Tensor,
    gt: torch.Tensor,
    keep: torch.Tensor,
    label_axis: int,
    pos_weights: torch.Tensor | None = None,
    pixel_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """BCE (positives weighted per label, ``pos_weights`` (L,), default ``SEG_POS_WEIGHT``; and per pixel by
    ``pixel_weights``, ``gt``'s shape, see :func:`lesion_weights`) plus soft Dice."""
    shape = [1] * logits.dim()
    shape[label_axis] = -1
    k = keep.float().view(shape)
    # positives weighted up: with a plain mean over mostly-background pixels every probability collapsed to ~0,
    # where the sigmoid's slope also starved the Dice term (Dice stayed 0.000 after 300 steps)
    if pos_weights is None:
        pos_weights = torch.full((logits.shape[label_axis],), SEG_POS_WEIGHT)
    pos_weight = pos_weights.view(shape)
    bce = F.binary_cross_entropy_with_logits(logits, gt, reduction="none", pos_weight=pos_weight)
    if pixel_weights is not None:
        bce = bce * pixel_weights
    bce = (bce * k).sum() / (k.sum() * gt[0].numel() / gt.shape[label_axis] * gt.shape[0])
    p = torch.sigmoid(logits)
    dims = [d for d in range(logits.dim()) if d != label_axis]
    inter = (p * gt).sum(dims)
    dice = 1 - (2 * inter + 1) / (p.sum(dims) + gt.sum(dims) + 1)
    # soft Dice only for labels with a mask in the batch (BCE alone handles the absent ones): on an empty target
    # it is 1 - 1/(sum p + 1), a pull to exactly zero on every pixel that, in a batch of two CT volumes where
    # most labels are absent, outweighed the positives and killed the CT masks (docs/model.md, session 11)
    scored = keep.float() * (gt.sum(dims) > 0).float()
    dice = (dice * scored).sum() / scored.sum().clamp(min=1.0)
    return bce * 2 + dice


def vision_losses(
    model: UnifiedModel,
    b: Batch,
    heat_weight: float = 0.5,
    seg_pos: torch.Tensor | None = None,
    small_lesions: dict[str, tuple[float, float]] | None = None,
) -> tuple[torch.Tensor, dict[str, Any], dict[str, float]]:
    """Stage 1's vision loss of one batch: (total, outputs, named parts). ``small_lesions``: per kind, the
    (reference pixels, cap) of :func:`lesion_weights` for its segmentation BCE."""
    keep = b.label_mask
    label_axis = 1 if b.kind == "cxr" else 2  # of the masks: (N, L, S, S) or (N, D, L, s, s)
    small = (small_lesions or {}).get(b.kind)
    pixel_weights = lesion_weights(b.seg, label_axis, *small) if small else None
    if b.kind == "cxr":
        o = model.forward_2d(b.image, b.modality)
        seg = seg_loss(o["seg"], b.seg, keep, label_axis, seg_pos, pixel_weights)
        heat = focal_heatmap_loss(o["heatmap"], b.heat, keep)
        reg = b.reg[:, None]
        extra = torch.zeros(())
    else:
        o = model.forward_3d(b.image, b.modality, b.dot)
        seg = seg_loss(o["seg"], b.seg, keep, label_axis, seg_pos, pixel_weights)
        heat = focal_heatmap_loss(o["heatmap"], b.heat, keep)
        reg = b.reg[:, :, None]
        assert b.slice_present is not None
        sl = F.binary_cross_entropy_with_logits(o["slice_logits"], b.slice_present, reduction="none")
        sl = (sl * keep.float()).sum() / (keep.float().sum() * sl.shape[0] * sl.shape[1])
        rel_t = b.slice_present.amax(-1)
        rel = F.binary_cross_entropy_with_logits(o["relevance_logit"], rel_t)
        extra = sl + rel
    cls = F.binary_cross_entropy_with_logits(o["logits"], b.present, reduction="none")
    cls = (cls * keep.float()).sum() / (keep.float().sum() * cls.shape[0])
    nreg = reg.sum().clamp(min=1.0)
    box = ((o["size"] - b.size).abs() * reg).sum() / nreg * 5 + ((o["offset"] - b.offset).abs() * reg).sum() / nreg
    total = CLS_WEIGHT * cls + heat_weight * heat + box + seg + extra
    named = (("cls", cls), ("heat", heat), ("box", box), ("seg", seg), ("slice", extra))
    parts = {k: float(v.detach()) for k, v in named}
    return total, o, parts


def clip_loss(model: UnifiedModel, img_emb: torch.Tensor, txt_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    if img_emb.shape[0] < 2:
        return torch.zeros(())
    a = F.normalize(model.align_img(img_emb), dim=-1)
    t = F.normalize(model.align_txt(model.text_embedding(txt_ids, pad_id)), dim=-1)
    logits = a @ t.t() * model.logit_scale.exp().clamp(max=100)
    target = torch.arange(a.shape[0])
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def kind_schedule(kinds: Sequence[str], share: dict[str, float], steps: int) -> list[str]:
    """Deterministic interleaving of kinds with the given shares (each step goes to the kind furthest behind)."""
    raw = {k: max(share.get(k, 0.0), 0.0) for k in kinds}
    total = sum(raw.values())
    weights = {k: raw[k] / total for k in kinds} if total > 0 else dict.fromkeys(kinds, 1.0 / len(kinds))
    done = dict.fromkeys(kinds, 0)
    out = []
    for step in range(steps):
        kind = max(kinds, key=lambda k: weights[k] * (step + 1) - done[k])
        done[kind] += 1
        out.append(kind)
    return out


def lr_at(step: int, total: int, base: float, warmup: int = 40) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# ---- the two stages ---------------------------------------------------------------------------------------
# A label's masks at stage 1's last check (``mask_health``) under either floor have stopped or never started
# segmenting: a seed-1 run of 0.17.0's recipe lost CT effusion (Dice 0.0, mean probability in truth 0.10), session
# 34's seed-0 run of 0.18.0's barely had it (Dice 0.137; held out its effusion AUROC fell 1.0 -> 0.81). Every label
# of the shipped 0.17.0 run was at Dice 0.41 and mean probability 0.55 or more. Stage 2 freezes the encoder and
# heads, so nothing after it mends them.
COLLAPSE_DICE = 0.25
COLLAPSE_FLOOR = 0.25


def collapsed_labels(health: Sequence[dict[str, Any]]) -> list[str]:
    """ "kind/label" of every label whose masks collapsed by the last mask health check: Dice at 0.5 under
    ``COLLAPSE_DICE`` or mean probability inside the truth under ``COLLAPSE_FLOOR``."""
    if not health:
        return []
    last: dict[str, dict[str, list[float]]] = health[-1]["masks"]
    return sorted(
        f"{kind}/{label}"
        for kind, labels in last.items()
        for label, (dice_at_half, mean_p) in labels.items()
        if dice_at_half < COLLAPSE_DICE or mean_p < COLLAPSE_FLOOR
    )


def mask_health(model: UnifiedModel, val: dict[str, list[Sample]], cases: int) -> dict[str, dict[str, list[float]]]:
    """Per kind and label with a true mask among the first ``cases`` validation phantoms: the Dice of the masks at
    0.5 pooled over the cases, and the mean probability inside the true masks (near 0: the label has stopped
    segmenting, whatever its losses say)."""
    from models.evaluate import dice, torch_outputs

    was_training = model.training
    model.eval()
    out: dict[str, dict[str, list[float]]] = {}
    for kind, samples in val.items():
        axis = 1 if kind == "cxr" else 2
        outputs = list(torch_outputs(model, samples[:cases]))
        prob = np.concatenate([torch.sigmoid(o["seg"]).numpy() for _, o in outputs])
        truth = np.concatenate([b.seg.numpy() > 0.5 for b, _ in outputs])
        keep = label_mask(kind)
        out[kind] = {}
        for li, key in enumerate(LABEL_KEYS):
            gt, p = np.take(truth, li, axis=axis), np.take(prob, li, axis=axis)
            if keep[li] and gt.any():
                out[kind][key] = [round(dice(p >= 0.5, gt), 3), round(float(p[gt].mean()), 3)]
    model.train(was_training)
    return out


def stage1(
    model: UnifiedModel,
    pools: dict[str, list[Sample]],
    tok: Tokenizer,
    cfg: TrainConfig,
    rng: np.random.Generator,
    val: dict[str, list[Sample]] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Alignment + heads: all parameters train; the kinds interleave by ``cfg.kind_share``. Returns the step
    history and, with ``val``, the mask health (``mask_health``) every ``cfg.check_every`` steps and at the end."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr1, weight_decay=0.01)
    kinds = [k for k in ("cxr", "ct", "pet") if k in pools]
    schedule = kind_schedule(kinds, cfg.kind_share, cfg.steps1)
    pad = token_id(tok, PAD)
    seg_pos = seg_pos_weights(cfg.seg_pos_weight)
    history = []
    health: list[dict[str, Any]] = []
    model.train()
    t0 = time.time()
    for step in range(cfg.steps1):
        kind = schedule[step]
        pool = pools[kind]
        n = cfg.batch_2d if kind == "cxr" else cfg.batch_3d
        batch_samples = [pool[int(i)] for i in rng.choice(len(pool), n, replace=len(pool) < n)]
        b = collate(batch_samples, augment=rng)
        vis, o, parts = vision_losses(model, b, cfg.heat_weight, seg_pos, cfg.small_lesions)
        langs = ["en" if rng.random() < 0.5 else "zh" for _ in batch_samples]
        lm = torch.zeros(())
        if cfg.caption_every and step % cfg.caption_every == 0:
            ex = [
                text_example(tok, "report", lang, s.report[lang], None, int(rng.integers(3)))
                for s, lang in zip(batch_samples, langs, strict=True)
            ]
            inp, tgt = pad_batch(ex, pad, model.cfg.max_len)
            lm = model.text_loss(inp, tgt, o["memory"])
        rep_ids = [
            tok.encode(s.report[lang], add_special_tokens=False).ids
            for s, lang in zip(batch_samples, langs, strict=True)
        ]
        width = max(len(r) for r in rep_ids)
        rep = torch.full((len(rep_ids), width), pad, dtype=torch.long)
        for i, r in enumerate(rep_ids):
            rep[i, : len(r)] = torch.tensor(r)
        align = clip_loss(model, o["embedding"], rep, pad)
        loss = vis + 0.5 * lm + 0.2 * align
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.steps1, cfg.lr1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip1)
        opt.step()
        rec = {
            "stage": 1,
            "step": step,
            "kind": kind,
            "loss": float(loss.detach()),
            "grad_norm": float(gnorm),
            "lm": float(lm.detach()),
            "align": float(align.detach()),
            **parts,
        }
        history.append(rec)
        if step % cfg.log_every == 0 or step == cfg.steps1 - 1:
            log.info(
                "stage1 %d/%d %.0fs %s",
                step,
                cfg.steps1,
                time.time() - t0,
                json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items()}),
            )
        done = step + 1
        if val and cfg.check_every and (done % cfg.check_every == 0 or done == cfg.steps1):
            check = {"step": done, "masks": mask_health(model, val, cfg.check_cases)}
            log.info("stage1 %d/%d mask health (Dice at 0.5, mean p in truth) %s", done, cfg.steps1, check["masks"])
            health.append(check)
    return history, health


def pick_question(
    qa: Sequence[tuple[str, str, str, str]],
    rng: np.random.Generator,
    balance: bool,
    weights: dict[str, float] | None = None,
) -> tuple[str, str, str, str]:
    """One (lang, question, answer, kind) of a case; with ``balance``, a kind first (uniformly, or in proportion
    to ``weights``, 1 for a kind not named), then a question of it."""
    if not balance:
        return qa[int(rng.integers(len(qa)))]
    kinds = sorted({item[3] for item in qa})
    p = np.array([weights.get(k, 1.0) for k in kinds]) if weights else None
    if p is not None and p.sum() > 0:
        kind = kinds[int(rng.choice(len(kinds), p=p / p.sum()))]
    else:  # uniform (also when every kind of this case weighs 0)
        kind = kinds[int(rng.integers(len(kinds)))]
    of_kind = [item for item in qa if item[3] == kind]
    return of_kind[int(rng.integers(len(of_kind)))]


def questions_about(
    kind: str, lesions: Sequence[LesionFacts], rng: np.random.Generator
) -> list[tuple[str, str, str, str]]:
    """The phantom generator's questions and answers for these findings (no ratio: not in the facts)."""
    from models.synthetic.case import Lesion
    from models.synthetic.text import make_qa

    found = [
        Lesion(label, location, laterality, size_mm, attrs={} if suv is None else {"suv_max": suv})
        for label, location, laterality, size_mm, suv in lesions
    ]
    return [(q.lang, q.question, q.answer, q.kind) for q in make_qa(kind, found, {}, rng)]


@torch.no_grad()
def vision_features(model: UnifiedModel, samples: list[Sample], batch: int = 32) -> dict[str, torch.Tensor]:
    """Frozen-encoder inputs of the decoder memory for every sample: tokens, label features, probabilities and
    label attention centroids."""
    model.eval()
    toks, feats, probs, where = [], [], [], []
    kind = samples[0].kind
    step = batch if kind == "cxr" else max(1, batch // 8)
    for i in range(0, len(samples), step):
        b = collate(samples[i : i + step])
        o = model.forward_2d(b.image, b.modality) if kind == "cxr" else model.forward_3d(b.image, b.modality, b.dot)
        toks.append(o["mem_tokens"].half())
        feats.append(o["mem_feats"].half())
        probs.append(torch.sigmoid(o["logits"]))
        where.append(o["mem_where"])
    return {"tokens": torch.cat(toks), "feats": torch.cat(feats), "probs": torch.cat(probs), "where": torch.cat(where)}


def stage2_batch(
    pools: dict[str, list[Sample]],
    index: list[tuple[str, int]],
    places: Places,
    tok: Tokenizer,
    cfg: TrainConfig,
    rng: np.random.Generator,
) -> tuple[list[tuple[str, int]], list[tuple[list[int], int]]]:
    """One stage-2 batch: the (kind, index) of each training image and its example (prompt + answer ids, prompt
    length). All reports or all VQA: padding short VQA pairs to report length wasted most of the compute."""
    reports = rng.random() < cfg.report_share
    n = cfg.batch_text // 2 if reports else cfg.batch_text
    picks = [index[int(j)] for j in rng.choice(len(index), n, replace=len(index) < n)]
    ex = []
    for kind, i in picks:
        s = pools[kind][i]
        variant = int(rng.integers(3))
        facts = findings_of(s.extra["lesions"], rng, cfg.context_drop) if cfg.context else None  # type: ignore[arg-type]
        if reports or not s.qa:
            lang = "en" if rng.random() < 0.5 else "zh"
            context = _context_text(facts, lang, None, cfg)
            ex.append(text_example(tok, "report", lang, s.report[lang], None, variant, context))
        else:
            qa = s.qa
            swapped = facts is not None and bool(cfg.context_swap) and rng.random() < cfg.context_swap
            if swapped:
                moved = counterfactual(kind, s.extra["lesions"], places, rng)  # type: ignore[arg-type]
                facts, qa = findings_of(moved), questions_about(kind, moved, rng)  # the text is the only source
            lang, q, a, asked = pick_question(qa, rng, cfg.qa_balance, cfg.qa_weights)
            if facts is not None and not swapped and asked in MISS_KINDS and rng.random() < cfg.context_miss:
                facts = missed(facts, q, lang)  # the image is the only source
            ex.append(text_example(tok, "vqa", lang, a, q, variant, _context_text(facts, lang, q, cfg)))
    return picks, ex


def _context_text(facts: list[Finding] | None, lang: str, question: str | None, cfg: TrainConfig) -> str | None:
    """The findings text a stage-2 prompt starts with (None: the recipe gives none), worded for ``question``."""
    if facts is None:
        return None
    return findings_text(facts, lang, question, cfg.context_uptake, cfg.context_answer_forms)


def stage2_sampling(pools: dict[str, list[Sample]]) -> tuple[list[tuple[str, int]], Places]:
    """What :func:`stage2_batch` draws from: every (kind, index) of the pools, and the places each kind's phantoms
    use for each label (where a counterfactual may move a finding)."""
    index = [(k, i) for k, pool in pools.items() for i in range(len(pool))]
    places = places_of({k: [smp.extra["lesions"] for smp in pool] for k, pool in pools.items()})  # type: ignore[misc]
    return index, places


def freeze_vision(model: UnifiedModel) -> list[torch.nn.Parameter]:
    """Stage 2 trains the decoder and the memory adapter only: freezes the rest, returns what trains."""
    for m in (model.encoder, model.heads, model.slice_score, model.align_img, model.align_txt):
        m.requires_grad_(False)
    model.logit_scale.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def memory_inputs(feats: dict[str, dict[str, torch.Tensor]], picks: list[tuple[str, int]]) -> list[torch.Tensor]:
    """The frozen vision features of a stage-2 batch (tokens, label features, probabilities, where), float32:
    ``UnifiedModel._memory``'s arguments."""
    names = ("tokens", "feats", "probs", "where")
    return [torch.stack([feats[k][name][i] for k, i in picks]).float() for name in names]


def stage2(
    model: UnifiedModel, pools: dict[str, list[Sample]], tok: Tokenizer, cfg: TrainConfig, rng: np.random.Generator
) -> list[dict[str, Any]]:
    """Instruction tuning: vision side frozen (features computed once), decoder + memory adapter train."""
    t0 = time.time()
    feats = {k: vision_features(model, pool) for k, pool in pools.items()}
    log.info("stage2: vision features of %d images in %.0fs", sum(len(p) for p in pools.values()), time.time() - t0)
    params = freeze_vision(model)
    opt = torch.optim.AdamW(params, lr=cfg.lr2, weight_decay=0.01)
    pad = token_id(tok, PAD)
    index, places = stage2_sampling(pools)
    history = []
    model.train()
    for step in range(cfg.steps2):
        picks, ex = stage2_batch(pools, index, places, tok, cfg, rng)
        inp, tgt = pad_batch(ex, pad, model.cfg.max_len)
        memory = model._memory(*memory_inputs(feats, picks))
        loss = model.text_loss(inp, tgt, memory)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.steps2, cfg.lr2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.clip2)
        opt.step()
        history.append({"stage": 2, "step": step, "loss": float(loss.detach()), "grad_norm": float(gnorm)})
        if step % cfg.log_every == 0 or step == cfg.steps2 - 1:
            log.info("stage2 %d/%d %.0fs loss %.4f", step, cfg.steps2, time.time() - t0, float(loss.detach()))
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return history


def best_f1_threshold(p: np.ndarray, y: np.ndarray) -> float:
    """The probability threshold (0.05 .. 0.95 in steps of 0.01) with the best F1 of ``p`` against ``y``;
    0.5 where ``y`` has no positive."""
    if y.size == 0 or y.sum() == 0:
        return 0.5
    best, best_t = -1.0, 0.5
    for t in np.linspace(0.05, 0.95, 91):
        pred = p >= t
        tp = float((pred & (y > 0)).sum())
        f1 = 2 * tp / max(1.0, float(pred.sum() + (y > 0).sum()))
        if f1 > best + 1e-9:
            best, best_t = f1, float(t)
    return round(best_t, 3)


@torch.no_grad()
def choose_thresholds(model: UnifiedModel, val: dict[str, list[Sample]]) -> dict[str, float]:
    """Per-label threshold maximising F1 on the validation phantoms (pooled over the kinds the label applies to;
    the export chooses one per kind on the exported graphs, ``models.decoding.choose_thresholds``)."""
    from models.evaluate import predict_probs

    scores: dict[str, list[float]] = {k: [] for k in LABEL_KEYS}
    truth: dict[str, list[float]] = {k: [] for k in LABEL_KEYS}
    for kind, samples in val.items():
        probs = predict_probs(model, samples)
        keep = label_mask(kind)
        for li, key in enumerate(LABEL_KEYS):
            if keep[li]:
                scores[key] += probs[:, li].tolist()
                truth[key] += [float(s.present[li]) for s in samples]
    return {key: best_f1_threshold(np.asarray(scores[key]), np.asarray(truth[key])) for key in LABEL_KEYS}


def fit_coarse_stats(model: UnifiedModel, pools: dict[str, list[Sample]]) -> None:
    """Standardisation of the coarse pathway per modality, from the training images (volumes: every slice)."""
    if model.coarse_in is None:
        return
    for kind, samples in pools.items():
        # the images alone: collate would also build every target map (gigabytes for 2000 radiographs)
        image = torch.from_numpy(np.stack([s.image.astype(np.float32) for s in samples]))
        model.fit_coarse_stats(KIND_INDEX[kind], image.reshape(-1, 1, *image.shape[-2:]))


STAGE1_FILE = "stage1.pt"  # the model after stage 1: ``stage1_from`` trains another decoder recipe on it


def _stage1_state(run: Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, float]]:
    """Another run's stage-1 model, its stage-1 history and the seconds it took (data generation included)."""
    state = torch.load(run / STAGE1_FILE, map_location="cpu", weights_only=False)
    history = json.loads((run / "history.json").read_text(encoding="utf-8"))
    return state, [h for h in history if h["stage"] == 1], state["seconds"]


def with_copy_head(model: UnifiedModel) -> UnifiedModel:
    """The same network with a freshly initialised copy head (its gate starts at p(generate) = 0.88)."""
    out = UnifiedModel(NetConfig(**{**model.cfg.to_dict(), "copy": 1}))
    missing, unexpected = out.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("decoder.copy_") for k in missing), (missing, unexpected)
    return out


def _bundle_start(bundle: Path) -> tuple[UnifiedModel, Tokenizer, dict[str, Any]]:
    """A bundle's network and tokenizer, and what the manifest says of them (version, graph hashes, training)."""
    from models.readback import model_from_bundle

    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    model, untrained = model_from_bundle(bundle)
    log.info("network read back from %s %s (in no graph, as initialised: %s)", bundle, manifest["version"], untrained)
    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    files = {name: entry["sha256"] for name, entry in manifest["files"].items()}
    return model, tok, {"bundle": manifest["version"], "files": files, "training": manifest.get("training")}


def _fine_channels_for(net: NetConfig, *pools: dict[str, list[Sample]]) -> None:
    """Drop the PET samples' fine-grid channels where ``net`` does not read them (``NetConfig.pet_dot`` 0: zeros
    in those slots, as it was trained)."""
    if not net.pet_dot:
        for pool in pools:
            for sample in pool.get("pet", []):
                sample.dot = None


def train(cfg: TrainConfig, out_dir: Path, stage1_from: Path | None = None, vision_from: Path | None = None) -> Path:
    """Run both stages; writes ``checkpoint.pt``, ``stage1.pt``, ``tokenizer.json`` and ``history.json`` into
    ``out_dir``.

    ``stage1_from``: a run directory whose stage-1 model (and tokenizer) to take instead of training stage 1
    again. Stage 2 draws from its own seeded generator, so this gives exactly what the full recipe gives with
    the same settings without stage 1 (16 of the shipped recipe's 27 minutes): how a decoder recipe is tried on a
    fixed vision side.

    ``vision_from``: a bundle directory whose network (read back from its graphs, :mod:`models.readback`) and
    tokenizer to take; stage 2 then continues from the bundle's decoder. How a decoder recipe is applied to a
    shipped vision side whose training run is gone; the manifest names the bundle and its own training.
    """
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    kinds = available_kinds()
    sizes = {"cxr": cfg.n_cxr, "ct": cfg.n_ct, "pet": cfg.n_pet}
    t0, c0 = time.time(), time.process_time()
    with sample_pool(cfg.threads) as pool:
        pools = {k: make_samples(k, sizes[k], TRAIN_SEED, pool=pool) for k in kinds if sizes[k] > 0}
        val = {k: make_samples(k, cfg.n_val, VAL_SEED, pool=pool) for k in pools}
    t_data = time.time() - t0
    log.info("data: %s in %.0fs", {k: len(v) for k, v in pools.items()}, t_data)
    previous: dict[str, Any] | None = None
    if vision_from is not None:
        model, tok, previous = _bundle_start(vision_from)
        net = model.cfg
        h1: list[dict[str, Any]] = []
        health = (previous.get("training") or {}).get("stage1_mask_health", [])
        seconds1 = {"data": round(t_data, 1), "stage1": 0.0, "wall": round(time.time() - t0, 1), "cpu": 0.0}
        start = {"config": net.to_dict(), "state_dict": model.state_dict(), "seconds": seconds1}
        torch.save(start, out_dir / STAGE1_FILE)
        t2 = time.time()
    elif stage1_from is None:
        tok = train_tokenizer(corpus([s for p in pools.values() for s in p]), cfg.vocab_size)
        sizes = {"n_labels": len(LABEL_KEYS), "vocab_size": tok.get_vocab_size(), "copy": int(cfg.copy_head)}
        sizes["slice_context"] = cfg.slice_context
        sizes["dot"] = int(cfg.dot_channel) * (1 + int(cfg.tube_channel))
        sizes["water"] = int(cfg.water_channel)
        sizes["pet_dot"] = int(cfg.pet_dot and cfg.dot_channel)
        net = NetConfig(**{**sizes, **cfg.net})
        model = UnifiedModel(net)
        _fine_channels_for(net, pools, val)
        fit_coarse_stats(model, pools)
        log.info("model: %d parameters, vocab %d", count_parameters(model), net.vocab_size)
        t1 = time.time()
        h1, health = stage1(model, pools, tok, cfg, rng, val)
        t2 = time.time()
        seconds1 = {
            "data": round(t_data, 1),
            "stage1": round(t2 - t1, 1),
            "wall": round(t2 - t0, 1),  # data, tokenizer and stage 1
            "cpu": round(time.process_time() - c0, 1),
        }
        stage1_state = {
            "config": net.to_dict(),
            "state_dict": model.state_dict(),
            "seconds": seconds1,
            "health": health,
        }
        torch.save(stage1_state, out_dir / STAGE1_FILE)
    else:
        state, h1, seconds1 = _stage1_state(stage1_from)
        health = state.get("health", [])
        tok = Tokenizer.from_file(str(stage1_from / "tokenizer.json"))
        net = NetConfig(**state["config"])
        model = UnifiedModel(net)
        model.load_state_dict(state["state_dict"])
        (out_dir / STAGE1_FILE).write_bytes((stage1_from / STAGE1_FILE).read_bytes())
        log.info("stage 1 from %s (%d steps)", stage1_from, len(h1))
        t2 = time.time()
    _fine_channels_for(net, pools, val)  # a network from another run or bundle: its own inputs
    collapsed = collapsed_labels(health)
    if collapsed:
        log.error(
            "stage 1 left collapsed masks for %s (Dice at 0.5 under %.2f or mean probability inside the truth "
            "under %.2f): this draw will not segment them and `dicom-agent model export` refuses it; rerun with "
            "another --seed",
            ", ".join(collapsed),
            COLLAPSE_DICE,
            COLLAPSE_FLOOR,
        )
    if cfg.copy_head and not model.cfg.copy:  # a start made without the copy head gets a new one
        model = with_copy_head(model)
        net = model.cfg
    c2 = time.process_time()
    tok.save(str(out_dir / "tokenizer.json"))
    # its own generator: stage 2 samples the same whether stage 1 ran here or came from another run
    h2 = stage2(model, pools, tok, cfg, np.random.default_rng([cfg.seed, 2]))
    t3 = time.time()
    thresholds = choose_thresholds(model, val)
    # the recipe's cost: stage 1 as measured where it ran (here or in ``stage1_from``), stage 2 here; on a
    # bundle's network, that bundle's whole training comes first
    before = (previous or {}).get("training") or {}
    cpu = seconds1["cpu"] + time.process_time() - c2 + before.get("cpu_seconds", 0.0)
    total = seconds1["wall"] + time.time() - t2 + before.get("seconds", {}).get("total", 0.0)
    training = {
        "data": "synthetic phantoms generated by models/synthetic (make_case); not for clinical use",
        "train_seed_start": TRAIN_SEED,
        "train_cases": {k: len(v) for k, v in pools.items()},
        "validation_seed_start": VAL_SEED,
        "validation_cases": {k: len(v) for k, v in val.items()},
        "seed": cfg.seed,
        "recipe": {k: v for k, v in cfg.__dict__.items()},
        "stages": {
            "1": "alignment + heads, all parameters (UMIT stage 1 / UniMedI report-guided)",
            "2": "instruction tuning (VQA + report, EN/ZH templates), vision encoder and heads frozen",
        },
        "seconds": {
            "data": seconds1["data"],
            "stage1": seconds1["stage1"],
            "stage2": round(t3 - t2, 1),
            "total": round(total, 1),
        },
        "stage1_from": str(stage1_from) if stage1_from is not None else None,
        "vision_from": previous,
        "stage1_mask_health": health,
        "stage1_collapsed": collapsed,
        # CPU seconds of the process: on a shared machine wall time overstates the cost; cpu / threads is the
        # wall time the recipe would take with its cores to itself
        "cpu_seconds": round(cpu, 1),
        "threads": cfg.threads,
        "parameters": count_parameters(model),
        "final_loss": {"stage1": h1[-1]["loss"] if h1 else None, "stage2": h2[-1]["loss"] if h2 else None},
    }
    ckpt = out_dir / "checkpoint.pt"
    torch.save(
        {
            "config": net.to_dict(),
            "state_dict": model.state_dict(),
            "labels": label_entries(),
            "thresholds": thresholds,
            "training": training,
        },
        ckpt,
    )
    (out_dir / "history.json").write_text(json.dumps(h1 + h2) + "\n", encoding="utf-8")
    log.info("trained in %.0fs; thresholds %s", time.time() - t0, thresholds)
    return ckpt
