"""Per-language lexicon parsers: report or answer text (EN or ZH) back to structured facts.

Used to check the renderer (parse(EN) == parse(ZH) == the structured findings), to flag a decoder narrative
that disagrees with the heads, to turn a text-only checkpoint's report into findings, and by the model
evaluation (report finding / finding+location F1 per language). The lexicon is built from the bundle's
vocabulary (names and synonyms of labels and locations) plus a few per-language cue words, so BLEU-like
surface similarity never stands in for "states the same facts".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from dicom_agent.inference.types import LANGUAGES
from dicom_agent.inference.vocabulary import Vocabulary

_SENTENCE = {"en": re.compile(r"(?<!\d)[.!?\n]+|[.!?\n]+(?!\d)"), "zh": re.compile(r"[。！？!?\n]+")}
_CLAUSE = {"en": re.compile(r"[,;]|\bbut\b|\bwhile\b|\bhowever\b", re.I), "zh": re.compile(r"[，,、；;]|但|而")}
_NEG_BEFORE = {
    "en": re.compile(
        r"\b(no|not|without|negative for|free of|neither|nor|absence of|rules? out|ruled out|exclude[sd]?)\b", re.I
    ),
    "zh": re.compile(r"未见|未发现|未显示|无|没有|不伴|排除|否认|未"),
}
_NEG_AFTER = {
    "en": re.compile(r"\b(absent|not (seen|present|identified|detected|visible)|excluded|ruled out)\b", re.I),
    "zh": re.compile(r"未见|不明显|阴性|消失|：无|:无"),
}
_SIZE = {
    "en": re.compile(r"(\d+(?:\.\d+)?)\s*(mm|cm|millimet(?:er|re)s?|centimet(?:er|re)s?)\b", re.I),
    "zh": re.compile(r"(\d+(?:\.\d+)?)\s*(mm|cm|毫米|厘米|公分)", re.I),
}
_SUV = re.compile(r"SUV\s*max\s*(?:of|is|was|:|：|约|为)?\s*(\d+(?:\.\d+)?)", re.I)  # both languages
# a question about the most active lesion (its answer is the highest SUVmax, not the largest lesion's)
_UPTAKE_QUESTION = re.compile(r"SUV|most (?:active|intense|avid)|hottest|最活跃|最高摄取|代谢最高", re.I)
_RATIO_QUESTION = re.compile(r"cardio-?thoracic|\bCTR\b|心胸比", re.I)
_COUNT_QUESTION = re.compile(r"\bhow many\b|几个|多少个", re.I)
_LARGEST_QUESTION = re.compile(r"\blargest\b|\bbiggest\b|最大的", re.I)
_SIDE_QUESTION = re.compile(r"\bwhich side\b|哪一侧|哪侧", re.I)
_SIZE_QUESTION = re.compile(r"\bhow (?:large|big)\b|\bsize\b|多大|大小", re.I)
_LATERALITY = {
    "en": [
        ("bilateral", re.compile(r"\b(bilateral(ly)?|both)\b", re.I)),
        ("right", re.compile(r"\bright(-sided)?\b", re.I)),
        ("left", re.compile(r"\bleft(-sided)?\b", re.I)),
    ],
    "zh": [("bilateral", re.compile(r"双侧|两侧|双")), ("right", re.compile(r"右")), ("left", re.compile(r"左"))],
}


@dataclass(frozen=True)
class ParsedFinding:
    """One finding stated in a text: which label, where, how large, and whether the text denies it."""

    label: str
    location: str | None = None
    laterality: str | None = None
    size_mm: float | None = None
    negated: bool = False
    suv_max: float | None = None


@dataclass(frozen=True)
class _Mention:
    key: str
    start: int
    end: int


def _en_pattern(term: str) -> str:
    """A word-bounded, case-insensitive, plural-tolerant pattern for an English term."""
    words = [re.escape(w) for w in term.lower().split()]
    body = r"[\s-]+".join(words)
    return rf"\b{body}(?:e?s)?\b"


@dataclass(frozen=True)
class Lexicon:
    """Compiled term patterns of one language for one vocabulary."""

    lang: str
    labels: re.Pattern[str]
    label_keys: dict[str, str]
    locations: re.Pattern[str] | None
    location_keys: dict[str, str]


def _compile(terms: dict[str, str], lang: str) -> tuple[re.Pattern[str] | None, dict[str, str]]:
    """One alternation, longest term first, each term in its own named group mapped back to its key."""
    if not terms:
        return None, {}
    ordered = sorted(terms, key=len, reverse=True)
    groups = {f"t{i}": terms[term] for i, term in enumerate(ordered)}
    parts = [f"(?P<t{i}>{_en_pattern(term) if lang == 'en' else re.escape(term)})" for i, term in enumerate(ordered)]
    return re.compile("|".join(parts), re.I if lang == "en" else 0), groups


def lexicon(vocabulary: Vocabulary, lang: str) -> Lexicon:
    if lang not in LANGUAGES:
        raise ValueError(f"unsupported language {lang!r}")
    return _lexicon_cached(_VocabKey(vocabulary), lang)


class _VocabKey:
    """Hashes a vocabulary by identity so lexicons are compiled once per loaded bundle."""

    def __init__(self, vocabulary: Vocabulary) -> None:
        self.vocabulary = vocabulary

    def __hash__(self) -> int:
        return id(self.vocabulary)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _VocabKey) and other.vocabulary is self.vocabulary


@lru_cache(maxsize=32)
def _lexicon_cached(key: _VocabKey, lang: str) -> Lexicon:
    vocabulary = key.vocabulary
    label_terms: dict[str, str] = {}
    for spec in vocabulary.labels.values():
        names = (spec.name_en, *spec.synonyms_en) if lang == "en" else (spec.name_zh, *spec.synonyms_zh)
        for name in names:
            label_terms.setdefault(name.lower() if lang == "en" else name, spec.key)
    location_terms: dict[str, str] = {}
    for loc in vocabulary.locations.values():
        names = (loc.name_en, *loc.synonyms_en) if lang == "en" else (loc.name_zh, *loc.synonyms_zh)
        for name in names:
            location_terms.setdefault(name.lower() if lang == "en" else name, loc.key)
    labels, label_keys = _compile(label_terms, lang)
    locations, location_keys = _compile(location_terms, lang)
    assert labels is not None
    return Lexicon(lang, labels, label_keys, locations, location_keys)


def _mentions(pattern: re.Pattern[str] | None, keys: dict[str, str], text: str) -> list[_Mention]:
    if pattern is None:
        return []
    out = []
    for match in pattern.finditer(text):
        group = match.lastgroup
        if group:
            out.append(_Mention(keys[group], match.start(), match.end()))
    return out


def _spans(pattern: re.Pattern[str], text: str) -> list[tuple[int, int]]:
    """Segments of ``text`` between separators matched by ``pattern``."""
    spans, start = [], 0
    for match in pattern.finditer(text):
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(text)))
    return [(a, b) for a, b in spans if b > a]


def _nearest(mention: _Mention, candidates: list[_Mention], claimed: set[int]) -> _Mention | None:
    free = [c for c in candidates if id(c) not in claimed]
    if not free:
        return None
    return min(free, key=lambda c: min(abs(c.start - mention.end), abs(mention.start - c.end)))


def _negated(lang: str, clause: str, offset: int, mention: _Mention) -> bool:
    before = clause[: mention.start - offset]
    after = clause[mention.end - offset :]
    return bool(
        _NEG_BEFORE[lang].search(before)
        or _NEG_AFTER[lang].match(after.lstrip())
        or _NEG_AFTER[lang].search(after[:24])
    )


def parse(text: str, lang: str, vocabulary: Vocabulary) -> list[ParsedFinding]:
    """Every label mention in ``text`` with its nearest location, laterality and size in the same sentence."""
    lex = lexicon(vocabulary, lang)
    out: list[ParsedFinding] = []
    for s0, s1 in _spans(_SENTENCE[lang], text):
        sentence = text[s0:s1]
        labels = _mentions(lex.labels, lex.label_keys, sentence)
        if not labels:
            continue
        locations = _mentions(lex.locations, lex.location_keys, sentence)
        sizes = [_Mention(str(_mm(m.group(1), m.group(2))), m.start(), m.end()) for m in _SIZE[lang].finditer(sentence)]
        suvs = [_Mention(m.group(1), m.start(), m.end()) for m in _SUV.finditer(sentence)]
        clauses = _spans(_CLAUSE[lang], sentence)
        claimed_loc: set[int] = set()
        claimed_size: set[int] = set()
        claimed_suv: set[int] = set()
        found: list[ParsedFinding] = []
        for mention in labels:
            c0, c1 = next(((a, b) for a, b in clauses if a <= mention.start < b), (0, len(sentence)))
            clause = sentence[c0:c1]
            same_clause = [m for m in locations if c0 <= m.start < c1]
            location = _nearest(mention, same_clause, claimed_loc)
            if location is None and len(labels) == 1:
                location = _nearest(mention, locations, claimed_loc)
            if location is not None:
                claimed_loc.add(id(location))
            size = _nearest(mention, [s for s in sizes if s.start >= mention.start or len(labels) == 1], claimed_size)
            if size is not None:
                claimed_size.add(id(size))
            suv = _nearest(mention, [v for v in suvs if v.start >= mention.start or len(labels) == 1], claimed_suv)
            if suv is not None:
                claimed_suv.add(id(suv))
            loc_spec = vocabulary.location(location.key) if location else None
            laterality = (
                loc_spec.laterality if loc_spec else _laterality(lang, clause, mention.start - c0, mention.end - c0)
            )
            found.append(
                ParsedFinding(
                    label=mention.key,
                    location=location.key if location else None,
                    laterality=laterality,
                    size_mm=float(size.key) if size else None,
                    negated=_negated(lang, clause, c0, mention),
                    suv_max=float(suv.key) if suv else None,
                )
            )
        out.extend(_merge_repeats(found))
    return out


def _merge_repeats(found: list[ParsedFinding]) -> list[ParsedFinding]:
    """A label named twice in one sentence ("左侧气胸，气胸带宽约24毫米") is one finding unless placed differently."""
    merged: list[ParsedFinding] = []
    for item in found:
        twin = next(
            (
                m
                for m in merged
                if m.label == item.label
                and m.negated == item.negated
                and (m.location is None or item.location is None or m.location == item.location)
                and (m.laterality is None or item.laterality is None or m.laterality == item.laterality)
            ),
            None,
        )
        if twin is None:
            merged.append(item)
            continue
        merged[merged.index(twin)] = ParsedFinding(
            label=twin.label,
            location=twin.location or item.location,
            laterality=twin.laterality or item.laterality,
            size_mm=twin.size_mm if twin.size_mm is not None else item.size_mm,
            negated=twin.negated,
            suv_max=twin.suv_max if twin.suv_max is not None else item.suv_max,
        )
    return merged


def _mm(value: str, unit: str) -> float:
    number = float(value)
    return number * 10.0 if unit.lower().startswith(("cm", "centi", "厘", "公")) else number


def _laterality(lang: str, clause: str, position: int, end: int) -> str | None:
    """The laterality word closest before the mention (EN "left pleural effusion", ZH "左侧胸腔积液"), else the
    first after it in the clause ("Pleural effusion on both sides")."""
    before: tuple[int, str] | None = None
    after: tuple[int, str] | None = None
    for key, pattern in _LATERALITY[lang]:
        for match in pattern.finditer(clause):
            if match.end() <= position and (before is None or match.start() > before[0]):
                before = (match.start(), key)
            elif match.start() >= end and (after is None or match.start() < after[0]):
                after = (match.start(), key)
    best = before or after
    return best[1] if best else None


Fact = tuple[str, str | None, int | None]


def fact(
    vocabulary: Vocabulary,
    label: str,
    location: str | None,
    laterality: str | None,
    size_mm: float | None,
    with_size: bool = True,
) -> Fact:
    """A comparable statement: (label, where, size in whole mm); "where" per :meth:`Vocabulary.where`."""
    size = round(size_mm) if with_size and size_mm is not None else None
    return label, vocabulary.where(label, location, laterality), size


def facts(parsed: Iterable[ParsedFinding], vocabulary: Vocabulary, with_size: bool = True) -> set[Fact]:
    """The positive statements of a parsed text."""
    return {fact(vocabulary, p.label, p.location, p.laterality, p.size_mm, with_size) for p in parsed if not p.negated}


def yes_no(text: str, lang: str) -> bool | None:
    """A closed VQA answer: True for yes, False for no, None when the text says neither."""
    head = text.strip().lower()[:12]
    if lang == "en":
        if re.match(r"(yes|there is|present)\b", head):
            return True
        if re.match(r"(no|none|absent|there is no)\b", head):
            return False
        return None
    if re.match(r"(否|无|没有|未见|不)", head):
        return False
    if re.match(r"(是|有|可见|见)", head):
        return True
    return None


def question_labels(question: str, lang: str, vocabulary: Vocabulary) -> set[str]:
    """The labels a question names ("Is there a pleural effusion?" -> {"pleural_effusion"})."""
    return {f.label for f in parse(question, lang, vocabulary)}


def asks_uptake(question: str) -> bool:
    """Whether a question asks about the most active lesion ("What is the highest SUVmax?", "最高SUVmax是多少？")."""
    return bool(_UPTAKE_QUESTION.search(question))


def asks_count(question: str) -> bool:
    """Whether a question asks how many findings there are ("How many nodules are there?", "有几个结节？")."""
    return bool(_COUNT_QUESTION.search(question))


def asks_largest(question: str) -> bool:
    """Whether a question asks about the largest finding of a label ("Where is the largest nodule?")."""
    return bool(_LARGEST_QUESTION.search(question))


def asks_side(question: str) -> bool:
    """Whether a question asks which side a finding is on ("Which side is the effusion on?", "气胸在哪一侧？")."""
    return bool(_SIDE_QUESTION.search(question))


def asks_size(question: str) -> bool:
    """Whether a question asks a finding's size ("How large is the largest mass?", "最大的肿块有多大？")."""
    return bool(_SIZE_QUESTION.search(question))


def size_mm(text: str, lang: str) -> float | None:
    """The first size ``text`` states, in mm ("15 mm", "1.5 cm", "15毫米"), else None."""
    match = _SIZE[lang].search(text)
    return _mm(match.group(1), match.group(2)) if match else None


def asks_ratio(question: str) -> bool:
    """Whether a question asks about the cardiothoracic ratio (EN "cardiothoracic", ZH "心胸比")."""
    return bool(_RATIO_QUESTION.search(question))
