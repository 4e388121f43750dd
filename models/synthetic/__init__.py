"""Synthetic studies with known ground truth: chest radiographs, chest CT and FDG PET phantoms.

API (stable; extended compatibly only):

``make_case(kind, seed, *, out_of_range=False, size=None, depth=None) -> Case``
    One phantom, deterministic by ``(kind, seed, out_of_range, size, depth)`` (same numpy version).

    * ``kind="cxr"``: PA chest radiograph, ``image`` float32 (H, W) display intensity in [0, 1] (MONOCHROME2,
      bright = dense), ``spacing`` (row, col) mm = 430 mm / size. Default size 256. Image LEFT = patient RIGHT.
    * ``kind="ct"``: chest CT, ``image`` int16 (D, H, W) in HU, ``spacing`` (z, y, x) mm. Default 64 × 128²,
      5 mm slices, 350 mm field of view. Slice 0 is the most INFERIOR slice (z increases towards the head: the
      order SimpleITK returns for a series sorted by ImagePositionPatient); row 0 anterior, column 0 patient
      right (ImageOrientationPatient 1\\0\\0\\0\\1\\0).
    * ``kind="pet"``: FDG PET, ``image`` float32 (D, H, W) in SUV (body weight), same axis conventions as CT,
      pelvis (slice 0) to head. Default 96 × 128², 4 mm pixels, 8 mm slices.

    ``size`` is the in-plane size in pixels (square). Addition to the original contract: ``depth`` (slices,
    volumes only). ``out_of_range=True`` draws sizes, uptakes, body sizes and positions outside the training
    ranges (an evaluation split); the ranges are the module constants of ``cxr``, ``ct`` and ``pet``.

``cases(kind, n, seed, **kw) -> Iterator[Case]``
    ``n`` cases with seeds ``seed, seed + 1, ...`` (so any case is reproducible alone).

``Case.mask`` is a uint8 label map: 0 background, ``i + 1`` = ``lesions[i]`` (later findings never overwrite
earlier ones: lesions do not overlap). ``Case.lesions`` lists every finding, focal or not (see ``Lesion``).
``Case.meta`` holds ``patient`` (synthetic identity: name, id, birth_date, sex, age, weight_kg, height_m),
``out_of_range``, and per kind: ``ctr``, ``rotation_deg``, ``view``/``patient_orientation`` (cxr),
``body_scale`` (all), ``injected_dose_bq``/``injection_delay_s``/``half_life_s`` (pet). Also added to the
contract: the ``Lesion.attrs`` dict (default empty), which holds ``severity`` (effusion), ``ctr``
(cardiomegaly), ``suv_max`` (PET lesions), ``hu`` (CT lesions), ``center_px``/``center_vox`` (focal lesions).
Reports and questions: see ``models.synthetic.text`` for the vocabulary. Additions beyond the original
contract: ``models.synthetic.lexicon.parse_report(text, lang)`` reads findings back from EN/ZH text (for
evaluation), ``models.synthetic.dicom_writer.write_case`` writes a case as DICOM with its ground truth, and
``models.synthetic.figure`` draws the docs montage.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from models.synthetic.case import QA, BoxTuple, Case, Lesion
from models.synthetic.text import make_qa, render_report

__all__ = ["QA", "BoxTuple", "Case", "Lesion", "cases", "make_case"]

KINDS = ("cxr", "ct", "pet")
_KIND_ID = {"cxr": 1, "ct": 2, "pet": 3}
# Independent random streams per purpose, so e.g. changing the report wording never moves a lesion.
_STREAM_ANATOMY, _STREAM_TEXT, _STREAM_PATIENT = 0, 1, 2

_FAMILY = ("WANG", "LI", "ZHANG", "LIU", "CHEN", "YANG", "HUANG", "ZHAO", "SMITH", "GARCIA", "MULLER", "JOHNSON")
_GIVEN_F = ("MEI", "LING", "XIU", "YAN", "ANNA", "MARIA", "SARAH", "JULIA")
_GIVEN_M = ("WEI", "JUN", "LEI", "TAO", "JAMES", "DAVID", "PETER", "MARCO")


def _rng(kind: str, seed: int, stream: int, out_of_range: bool) -> np.random.Generator:
    return np.random.default_rng([_KIND_ID[kind], seed, stream, int(out_of_range)])


def _patient(rng: np.random.Generator, seed: int, kind: str) -> dict[str, Any]:
    sex = "F" if rng.random() < 0.5 else "M"
    given = _GIVEN_F if sex == "F" else _GIVEN_M
    name = f"{_FAMILY[int(rng.integers(len(_FAMILY)))]}^{given[int(rng.integers(len(given)))]}"
    age = int(rng.integers(28, 86))
    birth_year = 2025 - age
    birth = f"{birth_year:04d}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    height = round(float(rng.normal(1.62 if sex == "F" else 1.75, 0.06)), 2)
    weight = round(float(np.clip(rng.normal(62 if sex == "F" else 76, 10), 42, 130)), 1)
    return {
        "name": name,
        "id": f"PH{_KIND_ID[kind]}{seed:07d}",
        "birth_date": birth,
        "sex": sex,
        "age": age,
        "weight_kg": weight,
        "height_m": height,
    }


def make_case(
    kind: str, seed: int, *, out_of_range: bool = False, size: int | None = None, depth: int | None = None
) -> Case:
    """One synthetic study; deterministic by its arguments."""
    if kind not in _KIND_ID:
        raise ValueError(f"unknown phantom kind {kind!r}; expected one of {', '.join(KINDS)}")
    anatomy = _rng(kind, seed, _STREAM_ANATOMY, out_of_range)
    patient = _patient(_rng(kind, seed, _STREAM_PATIENT, out_of_range), seed, kind)
    if kind == "cxr":
        from models.synthetic import cxr

        drawn = cxr.render(anatomy, size or cxr.DEFAULT_SIZE, out_of_range)
    elif kind == "ct":
        from models.synthetic import ct

        drawn = ct.render(anatomy, size or ct.DEFAULT_SIZE, depth or ct.DEFAULT_DEPTH, out_of_range)
    else:
        from models.synthetic import pet

        drawn = pet.render(anatomy, size or pet.DEFAULT_SIZE, depth or pet.DEFAULT_DEPTH, out_of_range, patient)
    meta: dict[str, Any] = dict(drawn.meta)
    meta["patient"] = patient
    meta["out_of_range"] = out_of_range
    text_rng = _rng(kind, seed, _STREAM_TEXT, out_of_range)
    lesions = drawn.lesions
    return Case(
        kind=kind,
        seed=seed,
        image=drawn.image,
        spacing=tuple(float(v) for v in drawn.spacing),
        mask=drawn.mask,
        lesions=lesions,
        labels={les.label for les in lesions},
        report=render_report(kind, lesions, text_rng),
        qa=make_qa(kind, lesions, meta, text_rng),
        meta=meta,
    )


def cases(kind: str, n: int, seed: int, **kw: Any) -> Iterator[Case]:
    """``n`` cases with consecutive seeds starting at ``seed``."""
    for i in range(n):
        yield make_case(kind, seed + i, **kw)
