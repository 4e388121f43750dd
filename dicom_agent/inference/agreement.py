"""Decoder text versus the heads: the structured findings are the result of record, the text is checked.

A feasibility run measured a free-running decoder right on finding + location only ~59% of the time, so its
narrative is parsed back (:mod:`parse`) and every disagreement is written into the output as a flag that the
worklist shows: a finding the text omits or places elsewhere (on the :class:`Finding`), and a finding the text
adds that the heads did not find (on the :class:`StudyFindings`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from dicom_agent.inference.parse import asks_count, asks_ratio, asks_size, asks_uptake, parse, question_labels, size_mm
from dicom_agent.inference.render import format_mm, plural_en
from dicom_agent.inference.types import Finding
from dicom_agent.inference.vocabulary import Vocabulary

DECODER_FLAG = "decoder_"  # every flag below starts so: "decoder_omits:en", "decoder_adds:zh:mass"


def split_flag(flag: str) -> tuple[str, str, str]:
    """``"decoder_adds:zh:mass"`` -> ``("decoder_adds", "zh", "mass")``; missing parts are empty strings."""
    kind, _, rest = str(flag).partition(":")
    lang, _, label = rest.partition(":")
    return kind, lang, label


def flag_disagreements(findings: list[Finding], text: str, lang: str, vocabulary: Vocabulary) -> list[str]:
    """Adds per-finding flags for ``text`` in ``lang`` and returns the study-level flags."""
    stated = [p for p in parse(text, lang, vocabulary) if not p.negated]
    denied = {p.label for p in parse(text, lang, vocabulary) if p.negated}
    said = {(p.label, vocabulary.where(p.label, p.location, p.laterality)) for p in stated}
    said_labels = {p.label for p in stated}
    study_flags: list[str] = []
    present = [f for f in findings if f.present]
    for finding in present:
        where = vocabulary.where(finding.label, finding.location, finding.laterality)
        if finding.label in denied and finding.label not in said_labels:
            flag = f"decoder_denies:{lang}"
        elif finding.label not in said_labels:
            flag = f"decoder_omits:{lang}"
        elif where is not None and (finding.label, where) not in said:
            flag = f"decoder_location_differs:{lang}"
        else:
            continue
        if flag not in finding.flags:
            finding.flags.append(flag)
    head_labels = {f.label for f in present}
    for label in sorted(said_labels - head_labels):
        study_flags.append(f"decoder_adds:{lang}:{label}")
    if study_flags or any(flag.endswith(f":{lang}") for f in present for flag in f.flags):
        study_flags.insert(0, f"decoder_disagrees:{lang}")
    return study_flags


# The SR's comment on a disagreement, per language of the narrative it is about (the worklist shows the same
# flags): the sentence around the statements, and one statement per flag kind
_FRAME = {
    "en": {
        "intro": "AI narrative check (the coded findings are the result of record): the model's free text ",
        "join": "; ",
        "end": ".",
        "where": "{name} ({where})",
    },
    "zh": {
        "intro": "AI 叙述核对（以编码所见为准）：模型自由文本",
        "join": "；",
        "end": "。",
        "where": "{name}（{where}）",
    },
}
_STATEMENT = {
    "en": {
        "decoder_omits": "omits {name}",
        "decoder_denies": "denies {name}",
        "decoder_location_differs": "places {name} elsewhere",
        "decoder_adds": "also states {name}, which the detector did not find",
    },
    "zh": {
        "decoder_omits": "未提及{name}",
        "decoder_denies": "否认{name}",
        "decoder_location_differs": "所述{name}部位不同",
        "decoder_adds": "另述{name}（检测未发现）",
    },
}


def disagreement_comment(findings: Sequence[Finding], study_flags: Sequence[str], lang: str) -> str | None:
    """One sentence in ``lang`` stating where that language's narrative disagrees with the findings, or None.

    Written into the AI draft SR, so a reader outside the worklist (a viewer, the PACS) sees the same warning.
    A finding is named with its location when it has one (two nodules are two different statements); a
    statement is made once."""
    frame, statement = _FRAME.get(lang), _STATEMENT.get(lang)
    if frame is None or statement is None:
        return None
    names = {f.label: f.name_en.lower() if lang == "en" else f.name_zh for f in findings}
    parts: list[str] = []
    for finding in findings:
        where = finding.location_en if lang == "en" else finding.location_zh
        name = frame["where"].format(name=names[finding.label], where=where) if where else names[finding.label]
        for flag in finding.flags:
            kind, flag_lang, _ = split_flag(flag)
            if flag_lang == lang and kind in statement:
                parts.append(statement[kind].format(name=name))
    for flag in study_flags:
        kind, flag_lang, label = split_flag(flag)
        if kind == "decoder_adds" and flag_lang == lang:
            parts.append(statement[kind].format(name=names.get(label, label.replace("_", " "))))
    if not parts:
        return None
    return frame["intro"] + frame["join"].join(dict.fromkeys(parts)) + frame["end"]


_UNPLACED = {
    "en": "The classifier also scored {items} as present, but no region was theirs (another finding's, or none), so "
    "they are not reported as findings.",
    "zh": "分类器另判{items}为阳性，但未定位到其自身区域（属于其他所见或无区域），故未作为所见报告。",
}


def unplaced_comment(unplaced: Mapping[str, Mapping[str, Any]], lang: str) -> str | None:
    """One sentence in ``lang`` naming the labels present by probability that the map-back left without a place
    (``StudyFindings.extra["unplaced"]``: label -> probability and names), or None: the draft SR says so rather
    than drop them silently, since some are real (4 of 11 on 60 validation radiographs, bundle 0.10.2)."""
    if lang not in _UNPLACED or not unplaced:
        return None
    name = "name_en" if lang == "en" else "name_zh"
    ordered = sorted(unplaced.items(), key=lambda kv: -float(kv[1]["probability"]))
    item = "{name} ({p:.0%})" if lang == "en" else "{name}（{p:.0%}）"
    items = [item.format(name=entry[name] or key, p=float(entry["probability"])) for key, entry in ordered]
    return _UNPLACED[lang].format(items=(", " if lang == "en" else "、").join(items))


# ---- VQA answers ---------------------------------------------------------------------------------------------
YES = {"en": "yes", "zh": "是"}  # the closed answers the decoder is trained to give, per language
NO = {"en": "no", "zh": "否"}
_ANSWER_NOTE = {
    "en": {
        "present": "Note: the coded findings include {name}.",
        "absent": "Note: the coded findings do not include {name}.",
        "where": "Note: the coded findings place the largest {name} in the {where}.",
        "uptake": "Note: the highest SUVmax of the coded findings is {suv}.",
        "no_uptake": "Note: no SUVmax was measured in this study (no lesion found, or the series gives no SUV).",
        "ratio": "Note: the coded findings carry no cardiothoracic ratio (it is not measured); this answer is the "
        "text decoder's estimate.",
        "unplaced": "Note: the classifier scored {name} present ({percent} %), but no region of the image was given "
        "to it, so the coded findings do not include it.",
        "count": "Note: the coded findings list {count} {names}.",
        "size": "Note: the coded findings measure the largest {name} {size} mm.",
    },
    "zh": {
        "present": "注意：编码所见包含{name}。",
        "absent": "注意：编码所见不包含{name}。",
        "where": "注意：编码所见中最大的{name}位于{where}。",
        "uptake": "注意：编码所见的最高SUVmax为{suv}。",
        "no_uptake": "注意：本检查未测得SUVmax（未发现病灶，或该序列无法计算SUV）。",
        "ratio": "注意：编码所见不含心胸比（未测量）；该回答为文本解码器的估计。",
        "unplaced": "注意：分类器判定{name}为阳性（{percent}%），但图像中没有区域归属于它，故编码所见不包含{name}。",
        "count": "注意：编码所见共有{count}个{name}。",
        "size": "注意：编码所见中最大的{name}为{size}毫米。",
    },
}


def normalize_answer(text: str) -> str:
    """An answer as compared: without surrounding space or a final full stop (either script), lower case."""
    return text.strip().strip("。.").strip().lower()


def largest_located(findings: Sequence[Finding], label: str) -> Finding | None:
    """The largest present finding of ``label`` that has a location: what "where is the largest …" asks about,
    and the one the decoder's findings text names first."""
    located = [f for f in findings if f.present and f.label == label and f.location]
    return max(located, key=lambda f: f.size_mm or 0.0) if located else None


def answer_disagreement(
    question: str,
    answer: str,
    lang: str,
    findings: Sequence[Finding],
    vocabulary: Vocabulary,
    unplaced: Mapping[str, float] | None = None,
) -> str | None:
    """A note in ``lang`` when a VQA answer contradicts the findings of record, else None.

    Checked where the answer can be read without guessing: a yes/no answer to a question about one finding
    (present or not), and a location answer (a location name of the vocabulary) about one focal finding, against
    the place of the largest such finding, and a number answering a question about the most active lesion,
    against the highest SUVmax measured, and since session 26 a number answering how many findings of one label
    there are, against how many the coded findings list, and a size answering how large the largest is, against
    the size the findings text states for it (whole mm): 0.12.0's decoder answers "2" for three or four lesions.
    A question about the cardiothoracic ratio is always noted: no finding carries one, so the decoder's number
    (right on 0.15 of the phantoms' ratio questions) is not a measurement. Any answer about one label the study
    left *unplaced* (``unplaced``: label -> probability; present by the classifier, no region of its own) gets a
    note saying so, whatever it says: "no" agrees with the coded findings and not with the classifier."""
    if lang not in _ANSWER_NOTE:
        return None
    if asks_ratio(question):
        return _ANSWER_NOTE[lang]["ratio"]
    if asks_uptake(question):
        return _uptake_disagreement(answer, lang, findings)
    labels = question_labels(question, lang, vocabulary)
    if len(labels) != 1:
        return None
    (label,) = labels
    spec = vocabulary.labels.get(label)
    if spec is None:
        return None
    name = spec.name_en.lower() if lang == "en" else spec.name_zh
    said = normalize_answer(answer)
    mine = [f for f in findings if f.present and f.label == label]
    notes = _ANSWER_NOTE[lang]
    if not mine and unplaced and label in unplaced:
        return notes["unplaced"].format(name=name, percent=round(100 * float(unplaced[label])))
    if asks_count(question):
        return _count_disagreement(said, lang, name, len(mine))
    if asks_size(question):
        return _size_disagreement(said, lang, name, mine)
    if said in (YES[lang], NO[lang]):
        if (said == YES[lang]) == bool(mine):
            return None
        return notes["present" if mine else "absent"].format(name=name)
    places = {(loc.name_en if lang == "en" else loc.name_zh).lower(): key for key, loc in vocabulary.locations.items()}
    if said not in places:
        return None
    largest = largest_located(findings, label)
    if largest is None or places[said] == largest.location:
        return None
    where = largest.location_en if lang == "en" else largest.location_zh
    return notes["where"].format(name=name, where=where or largest.location)


def _count_disagreement(said: str, lang: str, name: str, listed: int) -> str | None:
    """A note when a whole-number answer is not how many findings of the label the coded findings list."""
    if not re.fullmatch(r"\d+", said) or int(said) == listed:
        return None
    names = plural_en(name, listed) if lang == "en" else name
    return _ANSWER_NOTE[lang]["count"].format(count=listed, names=names, name=name)


def _size_disagreement(said: str, lang: str, name: str, mine: Sequence[Finding]) -> str | None:
    """A note when a size answer is not the largest size the findings text states (whole mm), if one is stated."""
    answered = size_mm(said, lang)
    sized = [f.size_mm for f in mine if f.size_mm is not None]
    if answered is None or not sized:
        return None
    stated = format_mm(max(sized))
    if format_mm(answered) == stated:
        return None
    return _ANSWER_NOTE[lang]["size"].format(name=name, size=stated)


def _uptake_disagreement(answer: str, lang: str, findings: Sequence[Finding]) -> str | None:
    """A note when a numeric answer is not the highest SUVmax of the findings (to its stated decimal), or
    when there is none to give: the decoder answers a number even where no lesion was found (the phantoms
    never ask about uptake without one)."""
    measured = [f.suv_max for f in findings if f.present and f.suv_max is not None]
    number = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*", normalize_answer(answer))
    if number is None:
        return None
    if not measured:
        return _ANSWER_NOTE[lang]["no_uptake"]
    if abs(float(number.group(1)) - max(measured)) < 0.05:
        return None
    return _ANSWER_NOTE[lang]["uptake"].format(suv=f"{max(measured):.1f}")
