"""The findings text a training prompt carries: the ground truth rendered exactly as the runtime renders the heads.

At inference the decoder's prompt starts with the impression the deterministic renderer wrote from the heads'
findings (``dicom_agent.inference.render``); in stage 2 the same renderer writes it from the phantom's ground
truth, so the decoder learns to answer from that text. The runtime sometimes cannot give a finding its side,
location or size (an empty mask, no box): ``drop`` removes those attributes at random so that the decoder also
learns to fall back on the image when the text is silent; ``missed`` removes the findings a question asks about, as
when the heads miss a lesion, so that a question about where or how large it is still gets an answer (trained on
the image's; 0.14.0 learnt the most frequent place from it, docs/model.md). ``counterfactual`` moves and resizes
the findings so that some answers are in the text only: the decoder learns to copy from it instead of recognising
the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from dicom_agent.inference.parse import question_labels
from dicom_agent.inference.render import prompt_findings
from dicom_agent.inference.types import Finding
from dicom_agent.inference.vocabulary import Vocabulary, project_vocabulary

# label, location, laterality, size_mm, suv_max (PET lesions; None elsewhere)
LesionFacts = tuple[str, str | None, str | None, float | None, float | None]


@lru_cache(maxsize=1)
def _vocabulary() -> Vocabulary:
    return project_vocabulary()


def findings_of(
    lesions: Sequence[LesionFacts], rng: np.random.Generator | None = None, drop: float = 0.0
) -> list[Finding]:
    """Present findings from ground-truth lesion facts; with ``rng``, each attribute is dropped with ``drop``."""
    vocab = _vocabulary()
    out = []
    for label, location, laterality, size_mm, suv_max in lesions:
        spec = vocab.labels[label]
        if rng is not None and rng.random() < drop:
            location = laterality = None
        if rng is not None and rng.random() < drop:
            size_mm = None
        if rng is not None and suv_max is not None and rng.random() < drop:
            suv_max = None
        loc = vocab.location(location)
        out.append(
            Finding(
                label=label,
                code=spec.code,
                name_en=spec.name_en,
                name_zh=spec.name_zh,
                probability=1.0,
                present=True,
                critical=spec.critical,
                location=location,
                location_en=loc.name_en if loc else None,
                location_zh=loc.name_zh if loc else None,
                laterality=laterality or (loc.laterality if loc else None),
                size_mm=round(float(size_mm), 1) if size_mm is not None else None,
                suv_max=round(float(suv_max), 1) if suv_max is not None else None,
            )
        )
    return out


def missed(findings: Sequence[Finding], question: str, lang: str) -> list[Finding]:
    """``findings`` without those of the labels ``question`` names: the prompt says "No <finding>." as the
    runtime's does when the heads missed it. Training's answer stays the image's (where it is, how large), which
    the decoder of 0.13.0 never saw after such a text and got wrong (a lobe in English, a broken character in
    Chinese) where 0.12.0's had answered right."""
    about = question_labels(question, lang, _vocabulary())
    return [f for f in findings if f.label not in about]


Places = dict[tuple[str, str], list[tuple[str | None, str | None]]]  # (kind, label) -> (location, laterality)


def places_of(lesions_by_kind: dict[str, list[Sequence[LesionFacts]]]) -> Places:
    """Every (location, laterality) each kind's phantoms give each label: where a counterfactual may move it."""
    out: Places = {}
    for kind, cases in lesions_by_kind.items():
        for lesions in cases:
            for label, location, laterality, *_ in lesions:
                seen = out.setdefault((kind, label), [])
                if (location, laterality) not in seen:
                    seen.append((location, laterality))
    return out


def counterfactual(
    kind: str, lesions: Sequence[LesionFacts], places: Places, rng: np.random.Generator, spread: float = 0.4
) -> list[LesionFacts]:
    """The same findings moved to other places the phantoms use for them and resized by up to ``spread`` (log
    scale), and their SUVmax scaled likewise: facts the image does not show. A decoder asked about them can only
    answer from the findings text, which is what it must do at inference, where the text is the heads' result of
    record."""
    out: list[LesionFacts] = []
    for label, location, laterality, size_mm, suv_max in lesions:
        options = places.get((kind, label)) or [(location, laterality)]
        location, laterality = options[int(rng.integers(len(options)))]
        if size_mm is not None:
            size_mm = round(float(size_mm) * float(np.exp(rng.uniform(-spread, spread))), 1)
        if suv_max is not None:
            suv_max = round(float(suv_max) * float(np.exp(rng.uniform(-spread, spread))), 1)
        out.append((label, location, laterality, size_mm, suv_max))
    return out


def findings_text(
    findings: Sequence[Finding],
    lang: str,
    question: str | None = None,
    uptake: bool = False,
    answer_forms: bool = False,
) -> str:
    """The prompt's findings text (about what ``question`` names, if given), as the runtime writes it."""
    return prompt_findings(findings, lang, _vocabulary(), question, uptake, answer_forms)
