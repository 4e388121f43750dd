"""Bilingual (English / Simplified Chinese) report and VQA templates for the phantoms.

The wording varies (several paraphrases per finding, picked by the case's seed) but stays inside a small, fixed
vocabulary so that text can be parsed back into facts with a lexicon. The vocabulary, which evaluation parsers
may rely on:

* Finding names: ``Label.name_en`` / ``Label.name_zh`` from ``models.terminology`` appear verbatim, contiguous,
  in every sentence about that finding (EN lowercase except a sentence-initial capital; ZH exact). A finding name
  in a report ALWAYS means the finding is present: reports never name absent findings (no negations).
  A normal study is one of ``NORMAL_EN[kind]`` / ``NORMAL_ZH[kind]`` (these contain no finding name).
  Abnormal reports may end with ``OTHER_NORMAL_EN`` / ``OTHER_NORMAL_ZH``.
* One sentence per lesion (EN ends with ". ", ZH with "。"); sentences are ordered by LABELS order, then size.
* Location: ``Location.name_en`` (e.g. "right upper lobe", "liver") / ``Location.name_zh`` (e.g. "右肺上叶").
  Pleural findings (effusion, pneumothorax) name the side instead: EN "right" / "left", ZH "右侧" / "左侧"
  (see ``SIDE_EN``/``SIDE_ZH``); a bilateral effusion is two sentences, one per side.
* Size: EN ``<int> mm`` (regex ``(\\d+) mm``), ZH ``<int>毫米`` (regex ``(\\d+)毫米``); integers, rounded.
* Effusion severity: EN small / moderate / large, ZH 少量 / 中量 / 大量 (``SEVERITY_ZH``).
* Cardiothoracic ratio: EN "cardiothoracic ratio ... 0.NN", ZH "心胸比...0.NN" (two decimals).
* PET uptake: "SUVmax <float, 1 decimal>" in both languages (ZH may put "约" between).

VQA answers are canonical: yes/no ↔ 是/否; location names; ``<int> mm`` ↔ ``<int>毫米``; sides right / left /
both ↔ 右侧 / 左侧 / 双侧; counts as ASCII digits; ratios and SUVs as decimals. ``QA.kind`` is one of
``QA_KINDS``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.synthetic.case import QA, Lesion
from models.terminology import LABELS, LOCATIONS, labels_for

QA_KINDS = ("presence", "presence_side", "laterality", "location", "size", "count", "normal", "ratio", "suv")

SIDE_EN = {"right": "right", "left": "left", "bilateral": "both"}
SIDE_ZH = {"right": "右侧", "left": "左侧", "bilateral": "双侧"}
SEVERITY_ZH = {"small": "少量", "moderate": "中量", "large": "大量"}
YES_NO_EN = {True: "yes", False: "no"}
YES_NO_ZH = {True: "是", False: "否"}

# --- report sentences -------------------------------------------------------------------------------------------
# Placeholders: {a} article before the size ("a"/"an"), {size} int mm, {loc} location name, {side} side word,
# {sev} severity word, {ctr} two-decimal ratio, {suv} one-decimal SUVmax.
REPORT_EN: dict[str, tuple[str, ...]] = {
    "nodule": (
        "{A} {size} mm nodule in the {loc}.",
        "There is {a} {size} mm nodule in the {loc}.",
        "Nodule in the {loc} measuring {size} mm.",
        "A nodule of {size} mm is seen in the {loc}.",
    ),
    "mass": (
        "{A} {size} mm mass in the {loc}.",
        "There is {a} {size} mm mass in the {loc}.",
        "Mass in the {loc} measuring {size} mm.",
        "A lobulated mass of {size} mm is seen in the {loc}.",
    ),
    "consolidation": (
        "Patchy consolidation in the {loc}, about {size} mm in extent.",
        "There is consolidation in the {loc} measuring {size} mm.",
        "Airspace consolidation in the {loc}, {size} mm.",
    ),
    "pleural_effusion": (
        "A {sev} {side} pleural effusion measuring {size} mm.",
        "There is a {sev} {side} pleural effusion, {size} mm.",
        "{Sev} {side} pleural effusion measuring {size} mm.",
    ),
    "pneumothorax": (
        "A {side} pneumothorax with a {size} mm rim.",
        "There is a {side} pneumothorax; the pleural line lies {size} mm from the chest wall.",
        "{Side} pneumothorax, rim {size} mm.",
    ),
    "cardiomegaly": (
        "Cardiomegaly with a cardiothoracic ratio of {ctr}.",
        "The heart is enlarged (cardiomegaly); cardiothoracic ratio {ctr}.",
        "Cardiomegaly, cardiothoracic ratio {ctr}.",
    ),
    "hypermetabolic_lesion": (
        "A hypermetabolic lesion in the {loc}, {size} mm, SUVmax {suv}.",
        "There is {a} {size} mm hypermetabolic lesion in the {loc} with SUVmax {suv}.",
        "Hypermetabolic lesion in the {loc} measuring {size} mm (SUVmax {suv}).",
    ),
}
REPORT_ZH: dict[str, tuple[str, ...]] = {
    "nodule": ("{loc}见一结节，直径约{size}毫米。", "{loc}可见结节，大小约{size}毫米。", "{loc}结节，直径{size}毫米。"),
    "mass": (
        "{loc}见一肿块，直径约{size}毫米。",
        "{loc}可见分叶状肿块，大小约{size}毫米。",
        "{loc}肿块，直径{size}毫米。",
    ),
    "consolidation": (
        "{loc}见片状实变，范围约{size}毫米。",
        "{loc}可见实变，范围{size}毫米。",
        "{loc}实变，范围约{size}毫米。",
    ),
    "pleural_effusion": (
        "{side}{sev}胸腔积液，约{size}毫米。",
        "{side}胸腔积液（{sev}），约{size}毫米。",
        "可见{side}{sev}胸腔积液，约{size}毫米。",
    ),
    "pneumothorax": (
        "{side}气胸，气胸带宽约{size}毫米。",
        "可见{side}气胸，肺组织受压，宽约{size}毫米。",
        "{side}气胸，宽{size}毫米。",
    ),
    "cardiomegaly": ("心影增大，心胸比约{ctr}。", "心影增大，心胸比{ctr}。", "可见心影增大，心胸比为{ctr}。"),
    "hypermetabolic_lesion": (
        "{loc}见一高代谢病灶，直径约{size}毫米，SUVmax {suv}。",
        "{loc}可见高代谢病灶，大小约{size}毫米，SUVmax约{suv}。",
        "{loc}高代谢病灶，直径{size}毫米，SUVmax {suv}。",
    ),
}
NORMAL_EN = {
    "cxr": (
        "The lungs are clear. The heart size is normal.",
        "No acute cardiopulmonary abnormality.",
        "Normal chest radiograph.",
    ),
    "ct": ("The lungs are clear. No abnormality in the chest.", "No abnormality in the chest.", "Normal chest CT."),
    "pet": ("No abnormal FDG uptake.", "Physiological FDG distribution only.", "Normal FDG PET."),
}
NORMAL_ZH = {
    "cxr": ("双肺清晰，心影大小正常。", "心肺未见明显异常。", "胸部平片未见异常。"),
    "ct": ("双肺未见异常。", "胸部CT未见异常。", "胸部未见明显异常。"),
    "pet": ("未见异常FDG摄取。", "FDG分布未见异常。", "PET检查未见异常。"),
}
OTHER_NORMAL_EN = "No other abnormality."
OTHER_NORMAL_ZH = "余未见明显异常。"

# --- VQA --------------------------------------------------------------------------------------------------------
_ARTICLE = {"consolidation": "", "cardiomegaly": ""}  # uncountable in English questions
_PLURAL_EN = {"nodule": "nodules", "mass": "masses", "hypermetabolic_lesion": "hypermetabolic lesions"}
QUESTIONS_EN: dict[str, tuple[str, ...]] = {
    "presence": ("Is there {art}{name}?", "Is {art}{name} present?", "Does the image show {art}{name}?"),
    "presence_side": ("Is there {art}{name} on the {side}?", "Is there {art}{side} {name}?"),
    "laterality": ("Which side is the {name} on?", "On which side is the {name}?"),
    "location": ("Where is the largest {name}?", "In which location is the largest {name}?"),
    "size": ("How large is the largest {name}?", "What is the size of the largest {name}?"),
    "count": ("How many {plural} are there?", "How many {plural} are seen?"),
    "normal": ("Is this study normal?", "Is the examination normal?"),
    "ratio": ("What is the cardiothoracic ratio?",),
    "suv": ("What is the highest SUVmax?", "What is the SUVmax of the most active hypermetabolic lesion?"),
}
QUESTIONS_ZH: dict[str, tuple[str, ...]] = {
    "presence": ("是否有{name}？", "有没有{name}？", "图像中是否可见{name}？"),
    "presence_side": ("{side}是否有{name}？", "{side}有没有{name}？"),
    "laterality": ("{name}位于哪一侧？", "{name}在哪一侧？"),
    "location": ("最大的{name}位于哪里？", "最大的{name}在什么部位？"),
    "size": ("最大的{name}有多大？", "最大的{name}大小是多少？"),
    "count": ("有几个{name}？", "共有多少个{name}？"),
    "normal": ("该检查是否正常？", "这项检查正常吗？"),
    "ratio": ("心胸比是多少？",),
    "suv": ("最高SUVmax是多少？", "最活跃的高代谢病灶SUVmax是多少？"),
}
_SIDED = ("pleural_effusion", "pneumothorax")
_COUNTED = ("nodule", "mass", "hypermetabolic_lesion")


def _an(n: int) -> str:
    """English article before a spoken number ("an 8 mm", "an 11 mm", "a 12 mm")."""
    return "an" if str(n).startswith("8") or n in (11, 18) else "a"


def mm(value: float) -> int:
    """Sizes are written as whole millimetres."""
    return max(1, round(value))


def _facts(lesion: Lesion, lang: str) -> dict[str, str]:
    size = mm(lesion.size_mm or 0.0)
    loc = LOCATIONS[lesion.location] if lesion.location else None
    side = lesion.laterality or ""
    sev = str(lesion.attrs.get("severity", ""))
    facts = {
        "size": str(size),
        "a": _an(size),
        "A": _an(size).capitalize(),
        "ctr": f"{lesion.attrs.get('ctr', 0.0):.2f}",
        "suv": f"{lesion.attrs.get('suv_max', 0.0):.1f}",
    }
    if lang == "en":
        facts |= {
            "loc": loc.name_en if loc else "",
            "side": SIDE_EN.get(side, side),
            "Side": SIDE_EN.get(side, side).capitalize(),
            "sev": sev,
            "Sev": sev.capitalize(),
        }
    else:
        facts |= {"loc": loc.name_zh if loc else "", "side": SIDE_ZH.get(side, ""), "sev": SEVERITY_ZH.get(sev, "")}
    return facts


def ordered(lesions: Sequence[Lesion]) -> list[Lesion]:
    """Report order: LABELS order, then larger first."""
    order = {key: i for i, key in enumerate(LABELS)}
    return sorted(lesions, key=lambda les: (order[les.label], -(les.size_mm or 0.0)))


def render_report(kind: str, lesions: Sequence[Lesion], rng: np.random.Generator) -> dict[str, str]:
    """The findings paragraph in English and Chinese: same facts, independently varied wording."""
    if not lesions:
        return {
            "en": NORMAL_EN[kind][int(rng.integers(len(NORMAL_EN[kind])))],
            "zh": NORMAL_ZH[kind][int(rng.integers(len(NORMAL_ZH[kind])))],
        }
    en: list[str] = []
    zh: list[str] = []
    for lesion in ordered(lesions):
        t_en = REPORT_EN[lesion.label]
        t_zh = REPORT_ZH[lesion.label]
        en.append(t_en[int(rng.integers(len(t_en)))].format(**_facts(lesion, "en")))
        zh.append(t_zh[int(rng.integers(len(t_zh)))].format(**_facts(lesion, "zh")))
    if rng.random() < 0.5:
        en.append(OTHER_NORMAL_EN)
        zh.append(OTHER_NORMAL_ZH)
    return {"en": " ".join(en), "zh": "".join(zh)}


def _pick(rng: np.random.Generator, templates: tuple[str, ...]) -> str:
    return templates[int(rng.integers(len(templates)))]


def _pair(rng: np.random.Generator, kind: str, fill: dict[str, str], answers: tuple[str, str]) -> list[QA]:
    fill_en = {k: v for k, v in fill.items() if not k.endswith("_zh")}
    fill_zh = {k[:-3]: v for k, v in fill.items() if k.endswith("_zh")}
    return [
        QA("en", _pick(rng, QUESTIONS_EN[kind]).format(**fill_en), answers[0], kind),
        QA("zh", _pick(rng, QUESTIONS_ZH[kind]).format(**fill_zh), answers[1], kind),
    ]


def make_qa(kind: str, lesions: Sequence[Lesion], meta: dict[str, object], rng: np.random.Generator) -> list[QA]:
    """Question-answer pairs (each fact asked once in EN and once in ZH) derived from the ground truth."""
    qa: list[QA] = []
    present = {les.label for les in lesions}
    for key in labels_for(kind):
        label = LABELS[key]
        names = {"art": _ARTICLE.get(key, "a "), "name": label.name_en, "name_zh": label.name_zh}
        yes = key in present
        qa += _pair(rng, "presence", names, (YES_NO_EN[yes], YES_NO_ZH[yes]))
        mine = [les for les in lesions if les.label == key]
        if key in _SIDED:
            side = "right" if rng.random() < 0.5 else "left"
            on_side = any(les.laterality == side for les in mine)
            fill = names | {"side": side, "side_zh": SIDE_ZH[side]}
            qa += _pair(rng, "presence_side", fill, (YES_NO_EN[on_side], YES_NO_ZH[on_side]))
            if mine:
                sides = {les.laterality for les in mine}
                which = "bilateral" if len(sides) > 1 else next(iter(sides)) or "right"
                qa += _pair(rng, "laterality", names, (SIDE_EN[which], SIDE_ZH[which]))
        if key in _COUNTED:
            fill = names | {"plural": _PLURAL_EN[key]}
            qa += _pair(rng, "count", fill, (str(len(mine)), str(len(mine))))
        if mine and label.focal:
            largest = max(mine, key=lambda les: les.size_mm or 0.0)
            loc = LOCATIONS[largest.location] if largest.location else None
            if loc is not None:
                qa += _pair(rng, "location", names, (loc.name_en, loc.name_zh))
            size = mm(largest.size_mm or 0.0)
            qa += _pair(rng, "size", names, (f"{size} mm", f"{size}毫米"))
    normal = not lesions
    qa += _pair(rng, "normal", {}, (YES_NO_EN[normal], YES_NO_ZH[normal]))
    if kind == "cxr" and "ctr" in meta:
        ratio = f"{float(meta['ctr']):.2f}"  # type: ignore[arg-type]
        qa += _pair(rng, "ratio", {}, (ratio, ratio))
    suvs = [float(les.attrs["suv_max"]) for les in lesions if "suv_max" in les.attrs]
    if suvs:
        top = f"{max(suvs):.1f}"
        qa += _pair(rng, "suv", {}, (top, top))
    return qa
