"""Parse report text back into findings with the per-language lexicon of ``models.terminology`` (evaluation).

``parse_report(text, lang)`` reads any English or Chinese findings text — the phantoms' reports, text rendered
from the model's structured heads, or free text from a decoder — and returns the findings it states, one per
sentence that names a finding: label, location (lobe / organ), laterality, size in mm, and the CTR or SUVmax
when given. Sentences that negate the finding ("No pleural effusion.", "未见胸腔积液。") and sentences without a
finding name are skipped, so junk text parses to ``[]``. ``facts_of(lesions)`` gives the same records from
ground truth, so ``parse_report(report, lang) == facts_of(case.lesions)`` is the finding+location check, and
comparing ``(label, laterality-or-location)`` pairs alone the finding check.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from models.synthetic.case import Lesion
from models.terminology import LABELS, LOCATIONS

_PLEURAL = ("pleural_effusion", "pneumothorax")
_NEGATION_EN = re.compile(r"\b(no|without|negative for|absence of|not)\b")
_NEGATION_ZH = ("未见", "无", "没有", "未发现", "排除")


@dataclass(frozen=True, order=True)
class ParsedFinding:
    """One finding stated in text. ``location`` is a LOCATIONS key (pleural findings: the side's pleura)."""

    label: str
    location: str | None
    laterality: str | None
    size_mm: int | None
    ctr: float | None = None
    suv_max: float | None = None

    def key(self) -> tuple[str, str | None]:
        """(label, where): the finding+location identity used for F1."""
        return (self.label, self.location if self.label not in _PLEURAL else self.laterality)


def _sentences(text: str, lang: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+|\n+", text) if lang == "en" else re.split(r"(?<=[。！？；;])|\n+", text)
    return [p.strip() for p in parts if p and p.strip()]


def _longest(sentence: str, names: dict[str, str]) -> tuple[str, int] | None:
    """Key of the longest name found in the sentence, and where it starts."""
    best: tuple[str, int] | None = None
    for key, name in names.items():
        at = sentence.find(name)
        if at >= 0 and (best is None or len(name) > len(names[best[0]])):
            best = (key, at)
    return best


def _negated(sentence: str, at: int, lang: str) -> bool:
    before = sentence[:at]
    if lang == "en":
        return _NEGATION_EN.search(before) is not None
    return any(word in before for word in _NEGATION_ZH)


def _number(pattern: str, sentence: str) -> float | None:
    match = re.search(pattern, sentence)
    return float(match.group(1)) if match else None


def parse_report(text: str, lang: str) -> list[ParsedFinding]:
    """Findings stated in ``text`` (``lang`` "en" or "zh"), sorted; see the module docstring."""
    if lang not in ("en", "zh"):
        raise ValueError(f"language {lang!r}: expected en or zh")
    label_names = {k: (v.name_en if lang == "en" else v.name_zh) for k, v in LABELS.items()}
    loc_names = {k: (v.name_en if lang == "en" else v.name_zh) for k, v in LOCATIONS.items() if "pleura" not in k}
    found = []
    for raw in _sentences(text, lang):
        sentence = raw.lower() if lang == "en" else raw
        hit = _longest(sentence, label_names)
        if hit is None or _negated(sentence, hit[1], lang):
            continue
        label = hit[0]
        laterality: str | None = None
        if lang == "en":
            side = re.search(r"\b(bilateral|both|right|left)\b", sentence)
            laterality = side.group(1) if side else None
            laterality = "bilateral" if laterality == "both" else laterality
        else:
            laterality = "bilateral" if "双侧" in sentence else "right" if "右" in sentence else None
            laterality = laterality or ("left" if "左" in sentence else None)
        if label in _PLEURAL:
            location = f"{laterality}_pleura" if laterality in ("right", "left") else None
        elif label == "cardiomegaly":
            location, laterality = "heart", None
        else:
            loc_hit = _longest(sentence, loc_names)
            location = loc_hit[0] if loc_hit else None
            laterality = LOCATIONS[location].laterality if location else laterality
        size = _number(r"(\d+(?:\.\d+)?)\s*mm\b" if lang == "en" else r"(\d+(?:\.\d+)?)\s*(?:毫米|mm)", sentence)
        ctr = _number(r"(0\.\d+)", sentence) if label == "cardiomegaly" else None
        suv = _number(r"suvmax\D{0,4}?(\d+(?:\.\d+)?)", sentence.lower())
        found.append(
            ParsedFinding(
                label,
                location,
                laterality,
                round(size) if size is not None and label != "cardiomegaly" else None,
                ctr,
                suv,
            )
        )
    return sorted(found, key=repr)


def facts_of(lesions: Sequence[Lesion]) -> list[ParsedFinding]:
    """The ground-truth lesions as the records ``parse_report`` returns for a faithful report."""
    from models.synthetic.text import mm

    out = []
    for lesion in lesions:
        if lesion.label == "cardiomegaly":
            out.append(ParsedFinding("cardiomegaly", "heart", None, None, ctr=float(f"{lesion.attrs['ctr']:.2f}")))
            continue
        suv = lesion.attrs.get("suv_max")
        out.append(
            ParsedFinding(
                lesion.label,
                lesion.location,
                lesion.laterality,
                mm(lesion.size_mm) if lesion.size_mm is not None else None,
                suv_max=float(f"{suv:.1f}") if suv is not None else None,
            )
        )
    return sorted(out, key=repr)
