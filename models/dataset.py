"""Training/evaluation samples: phantoms from ``models.synthetic`` brought to the model grid with their targets.

Each :class:`Sample` holds the preprocessed image (exactly what the runtime feeds the graphs, see
``models.preprocess``), a class map on the model grid (0 background, label index + 1), boxes in model pixel
coordinates (per slice for volumes), the presence vector, and the texts (reports and VQA pairs).
Batches add the CenterNet targets (Zhou et al., "Objects as Points", 2019).
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from models import preprocess
from models.labels import LABEL_KEYS, label_mask
from models.synthetic import Case, make_case
from models.terminology import LABELS

LABEL_INDEX = {k: i for i, k in enumerate(LABEL_KEYS)}
KIND_INDEX = {"cxr": 0, "ct": 1, "pet": 2}
STRIDE = 8
Job = TypeVar("Job")
Result = TypeVar("Result")


@dataclass
class Sample:
    kind: str
    seed: int
    image: np.ndarray  # float16 (S,S) or (D,s,s) in [0,1]
    cls: np.ndarray  # uint8 class map, same shape as image
    present: np.ndarray  # float32 (L,)
    boxes: list[tuple[int, int, float, float, float, float]]  # (z or -1, label index, x0, y0, x1, y1)
    report: dict[str, str]
    qa: list[tuple[str, str, str, str]]  # (lang, question, answer, kind)
    out_of_range: bool = False
    extra: dict[str, object] = field(default_factory=dict)
    dot: np.ndarray | None = None  # float16 (K,D,s,s) in [0,1]: fine-grid channels (``preprocess.prepare_dot``)


def _resize_mask(mask: np.ndarray, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """Area-style resize of a binary mask (2D or 3D) by its image's own resize, with a 0.5 cut; tiny lesions keep at
    least their peak."""
    values = mask.astype(np.float32)
    if mask.ndim == 2:
        arr = preprocess.resize_2d(values, shape[0])
    else:
        arr = preprocess.resize_3d(values, shape[0], shape[1], preprocess.DRAWN[kind])
    out = arr >= 0.5
    if not out.any() and arr.max() > 0.05:
        out = arr >= 0.5 * arr.max()
    return out


def _tight_box(m: np.ndarray) -> tuple[float, float, float, float] | None:
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def sample_from_case(case: Case) -> Sample:
    """Bring one phantom to the model grid (same preprocessing as the runtime) and derive the targets."""
    dot = None
    if case.kind == "cxr":
        image = preprocess.prepare_cxr(case.image)
        shape: tuple[int, ...] = image.shape
        scale = shape[0] / case.image.shape[0]
    else:
        values = case.image.astype(np.float32)
        image = preprocess.prepare_volume(values, case.kind)
        shape = image.shape
        dot = preprocess.prepare_dot(values, case.spacing, case.kind).astype(np.float16)
        scale = shape[1] / case.image.shape[1]
    cls = np.zeros(shape, np.uint8)
    boxes: list[tuple[int, int, float, float, float, float]] = []
    for i, lesion in enumerate(case.lesions):
        li = LABEL_INDEX[lesion.label]
        lm = case.mask == i + 1
        if lm.any():
            small = _resize_mask(lm, shape, case.kind)
            cls[small & (cls == 0)] = li + 1
        else:
            small = np.zeros(shape, bool)
        if not LABELS[lesion.label].focal:
            continue
        if case.kind == "cxr":
            if lesion.box is not None:
                x0, y0, x1, y1 = (v * scale for v in lesion.box)
                boxes.append((-1, li, x0, y0, x1, y1))
        else:
            for z in np.flatnonzero(small.any(axis=(1, 2))):
                b = _tight_box(small[z])
                if b is not None:
                    boxes.append((int(z), li, *b))
    present = np.zeros(len(LABEL_KEYS), np.float32)
    for key in case.labels:
        present[LABEL_INDEX[key]] = 1.0
    return Sample(
        kind=case.kind,
        seed=case.seed,
        image=image.astype(np.float16),
        cls=cls,
        present=present,
        boxes=boxes,
        report=dict(case.report),
        qa=[(q.lang, q.question, q.answer, q.kind) for q in case.qa],
        out_of_range=bool(case.meta.get("out_of_range", False)),
        dot=dot,
        extra={
            "lesions": [
                (les.label, les.location, les.laterality, les.size_mm, les.attrs.get("suv_max")) for les in case.lesions
            ]
        },
    )


def make_samples(
    kind: str,
    n: int,
    seed: int,
    *,
    out_of_range: bool = False,
    size: int | None = None,
    depth: int | None = None,
    pool: Executor | None = None,
) -> list[Sample]:
    """``n`` phantoms from ``seed`` on the model grid; ``size`` and ``depth`` draw them at another resolution than
    the generator's default (which is the training data's). With a ``pool`` (:func:`sample_pool`) the phantoms are
    made in its processes: each is seeded on its own, so the samples are the same, in the same order."""
    drawn = [(kind, seed + i, out_of_range, size, depth) for i in range(n)]
    if pool is None:
        return [_sample(d) for d in drawn]
    return list(pool.map(_sample, drawn, chunksize=8))


def _sample(drawn: tuple[str, int, bool, int | None, int | None]) -> Sample:
    kind, seed, out_of_range, size, depth = drawn
    return sample_from_case(make_case(kind, seed, out_of_range=out_of_range, size=size, depth=depth))


@contextlib.contextmanager
def sample_pool(workers: int) -> Iterator[Executor | None]:
    """``workers`` processes to make phantoms in (None for one: the caller's own). Drawing and filtering a phantom
    is numpy on one core; the training data (2660 phantoms, PET's and CT's Hessian channels) took 6 minutes of the
    recipe's 30 on one. Spawned, each with one torch thread: a forked child of a process whose OpenMP pool is up
    can hang."""
    if workers <= 1:
        yield None
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
        yield pool


def _one_thread() -> None:
    torch.set_num_threads(1)


def in_chunks(
    pool: Executor | None,
    run: Callable[[Job], Result],
    job: Callable[[int, int, int | None], Job],
    stop: int,
    chunk: int,
) -> list[Result]:
    """``run`` over cases 0..``stop``: one ``job(0, stop, None)`` in this process, or with a ``pool``
    (:func:`sample_pool`) ``job(start, end, 1)`` for each ``chunk`` of cases in its processes (one ONNX Runtime
    thread each); results in case order, so merging them in turn gives what one pass gives."""
    if pool is None:
        return [run(job(0, stop, None))]
    return list(pool.map(run, [job(i, min(i + chunk, stop), 1) for i in range(0, stop, chunk)]))


# ---- batches ------------------------------------------------------------------------------------------------
def centernet_targets(
    boxes: Iterable[tuple[float, float, float, float, int]], side: int, n_labels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Heatmap (L,g,g) of Gaussians at box centres, size (2,g,g) as fraction of ``side``, offset (2,g,g), mask."""
    g = side // STRIDE
    heat = np.zeros((n_labels, g, g), np.float32)
    size = np.zeros((2, g, g), np.float32)
    off = np.zeros((2, g, g), np.float32)
    reg = np.zeros((g, g), np.float32)
    yy, xx = np.mgrid[0:g, 0:g].astype(np.float32)
    for x0, y0, x1, y1, li in boxes:
        cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
        ix, iy = min(int(cx), g - 1), min(int(cy), g - 1)
        sigma = max(0.5, max(x1 - x0, y1 - y0) / STRIDE / 6.0)
        gauss = np.exp(-((xx - ix) ** 2 + (yy - iy) ** 2) / (2 * sigma**2))
        heat[li] = np.maximum(heat[li], gauss)
        heat[li, iy, ix] = 1.0
        size[:, iy, ix] = ((x1 - x0) / side, (y1 - y0) / side)
        off[:, iy, ix] = (cx - ix, cy - iy)
        reg[iy, ix] = 1.0
    return heat, size, off, reg


@dataclass
class Batch:
    kind: str
    image: torch.Tensor  # (N,1,S,S) or (N,D,s,s)
    modality: torch.Tensor  # (N,)
    present: torch.Tensor  # (N,L)
    label_mask: torch.Tensor  # (L,) bool: labels that apply to this kind
    seg: torch.Tensor  # (N,L,S,S) or (N,D,L,s,s) float
    heat: torch.Tensor  # (N,L,g,g) or (N,D,L,g,g)
    size: torch.Tensor
    offset: torch.Tensor
    reg: torch.Tensor
    slice_present: torch.Tensor | None  # (N,D,L) volumes only
    dot: torch.Tensor | None = None  # (N,K,D,s,s) CT only


def collate(samples: Sequence[Sample], augment: np.random.Generator | None = None) -> Batch:
    """Stack samples of ONE kind; ``augment`` adds mild intensity jitter and noise (never flips: laterality)."""
    kind = samples[0].kind
    n_labels = len(LABEL_KEYS)
    imgs = np.stack([s.image.astype(np.float32) for s in samples])
    if augment is not None:
        gain = augment.uniform(0.9, 1.1, (len(samples),) + (1,) * (imgs.ndim - 1)).astype(np.float32)
        bias = augment.uniform(-0.05, 0.05, gain.shape).astype(np.float32)
        noise = augment.normal(0, 0.01, imgs.shape).astype(np.float32)
        imgs = np.clip(imgs * gain + bias + noise, 0.0, 1.0)
    cls = torch.from_numpy(np.stack([s.cls for s in samples]).astype(np.int64))
    onehot = F.one_hot(cls, n_labels + 1)[..., 1:].float()  # (N,[D],S,S,L)
    if kind == "cxr":
        seg = onehot.permute(0, 3, 1, 2)
        side = imgs.shape[-1]
        tg = [centernet_targets([(b[2], b[3], b[4], b[5], b[1]) for b in s.boxes], side, n_labels) for s in samples]
        heat, size, off, reg = (torch.from_numpy(np.stack(x)) for x in zip(*tg, strict=True))
        image = torch.from_numpy(imgs)[:, None]
        slice_present = None
    else:
        seg = onehot.permute(0, 1, 4, 2, 3)
        depth, side = imgs.shape[1], imgs.shape[-1]
        per = []
        for s in samples:
            rows = []
            for z in range(depth):
                rows.append(
                    centernet_targets([(b[2], b[3], b[4], b[5], b[1]) for b in s.boxes if b[0] == z], side, n_labels)
                )
            per.append([np.stack(x) for x in zip(*rows, strict=True)])
        heat, size, off, reg = (torch.from_numpy(np.stack(x)) for x in zip(*per, strict=True))
        image = torch.from_numpy(imgs)
        slice_present = seg.amax(dim=(-1, -2))  # (N,D,L)
    return Batch(
        kind=kind,
        image=image,
        modality=torch.full((len(samples),), KIND_INDEX[kind], dtype=torch.long),
        present=torch.from_numpy(np.stack([s.present for s in samples])),
        label_mask=torch.tensor(label_mask(kind)),
        seg=seg,
        heat=heat,
        size=size,
        offset=off,
        reg=reg,
        slice_present=slice_present,
        dot=stack_dots(samples),
    )


def stack_dots(samples: Sequence[Sample]) -> torch.Tensor | None:
    """The samples' fine-grid channels (N,K,D,s,s) float32, or None where they have none (radiographs; PET for a
    model without ``NetConfig.pet_dot``)."""
    if any(s.dot is None for s in samples):
        return None
    return torch.from_numpy(np.stack([np.asarray(s.dot, np.float32) for s in samples]))
