"""Deterministic bilingual text from structured findings: the report text of record.

Every sentence is built from the same fields (label, location, laterality, size) and the names in the bundle's
vocabulary, so the English and the Chinese text state exactly the same facts (a feasibility run measured
EN/ZH agreement 1.00 this way against 0.61 for a free-running decoder; see model notes). :mod:`parse` reads
these sentences back, and a test checks parse(EN) == parse(ZH) == the structured findings.
"""

from __future__ import annotations

from collections.abc import Iterable

from dicom_agent.inference.types import Finding
from dicom_agent.inference.vocabulary import LATERALITY_EN, LATERALITY_ZH, Vocabulary

NORMAL = {"en": "No abnormality detected.", "zh": "未见明显异常。"}
LANGUAGES = ("en", "zh")


def format_mm(size_mm: float) -> str:
    """Sizes as a radiologist writes them: whole millimetres from 10 mm, one decimal below."""
    if size_mm >= 10:
        return str(round(size_mm))
    return f"{size_mm:.1f}".rstrip("0").rstrip(".")


def sentence(finding: Finding, lang: str, vocabulary: Vocabulary | None = None) -> str:
    """One sentence for one present finding, in ``lang`` ("en" or "zh")."""
    spec = vocabulary.labels.get(finding.label) if vocabulary else None
    location = vocabulary.location(finding.location) if vocabulary else None
    location_en = location.name_en if location else finding.location_en
    location_zh = location.name_zh if location else finding.location_zh
    laterality = finding.laterality or (location.laterality if location else None)
    if spec is not None and not spec.focal:  # pleural and global findings are named by their side only
        location_en = location_zh = None
    if lang == "en":
        return _sentence_en(finding, location_en, laterality)
    if lang == "zh":
        return _sentence_zh(finding, location_zh, laterality)
    raise ValueError(f"unsupported report language {lang!r}")


def _sentence_en(finding: Finding, location: str | None, laterality: str | None) -> str:
    name = finding.name_en
    if location:
        text = f"{name[:1].upper()}{name[1:]} in the {location}"
    elif laterality in LATERALITY_EN:
        text = f"{LATERALITY_EN[laterality].capitalize()} {name.lower()}"
    else:
        text = f"{name[:1].upper()}{name[1:]}"
    if finding.size_mm is not None:
        text += f", measuring {format_mm(finding.size_mm)} mm"
    return text + "."


def _sentence_zh(finding: Finding, location: str | None, laterality: str | None) -> str:
    if location:
        text = f"{location}见{finding.name_zh}"
    elif laterality in LATERALITY_ZH:
        text = f"{LATERALITY_ZH[laterality]}见{finding.name_zh}"
    else:
        text = f"可见{finding.name_zh}"
    if finding.size_mm is not None:
        text += f"，大小约{format_mm(finding.size_mm)}毫米"
    return text + "。"


def ordered(findings: Iterable[Finding]) -> list[Finding]:
    """Present findings, critical ones first, then by descending probability (stable and deterministic)."""
    present = [f for f in findings if f.present]
    return sorted(present, key=lambda f: (not f.critical, -round(f.probability, 6), f.label, f.location or ""))


def impression(findings: Iterable[Finding], lang: str, vocabulary: Vocabulary | None = None) -> str:
    """The impression: one sentence per present finding, or the normal-study sentence."""
    present = ordered(findings)
    if not present:
        return NORMAL[lang]
    joiner = " " if lang == "en" else ""
    return joiner.join(sentence(f, lang, vocabulary) for f in present)


def render(findings: list[Finding], languages: Iterable[str], vocabulary: Vocabulary | None = None) -> dict[str, str]:
    """Fills each present finding's ``text_en``/``text_zh`` and returns the impression per language."""
    languages = tuple(languages)
    for finding in findings:
        if finding.present:
            finding.text_en = sentence(finding, "en", vocabulary)
            finding.text_zh = sentence(finding, "zh", vocabulary)
    return {lang: impression(findings, lang, vocabulary) for lang in languages if lang in LANGUAGES}
