"""Stage-2 question sampling: by question (the prior recipe) or kind-balanced (rare kinds get their share)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from models.synthetic import make_case
from models.train import pick_question

QA = [(q.lang, q.question, q.answer, q.kind) for q in make_case("cxr", 1_002).qa]  # a case with a focal finding


def _kinds(balance: bool, draws: int = 4000) -> Counter[str]:
    assert {"presence", "location"} <= {item[3] for item in QA}, "the case must have a focal finding"
    rng = np.random.default_rng(0)
    return Counter(pick_question(QA, rng, balance)[3] for _ in range(draws))


def test_balanced_sampling_gives_each_question_kind_an_equal_share() -> None:
    kinds = {item[3] for item in QA}
    counts = _kinds(balance=True)
    assert set(counts) == kinds
    share = 4000 / len(kinds)
    assert all(abs(n - share) < 0.2 * share for n in counts.values()), counts


def test_unbalanced_sampling_follows_the_questions() -> None:
    counts = _kinds(balance=False)
    assert counts["presence"] > 3 * counts["location"]


def test_weighted_kinds_are_drawn_in_proportion() -> None:
    kinds = {item[3] for item in QA}
    rng = np.random.default_rng(0)
    counts = Counter(pick_question(QA, rng, True, {"location": 3.0})[3] for _ in range(6000))
    share = 6000 / (len(kinds) + 2)  # location counts three times
    assert abs(counts["location"] - 3 * share) < 0.15 * 3 * share, counts
    assert all(abs(n - share) < 0.2 * share for k, n in counts.items() if k != "location"), counts


@pytest.mark.parametrize("kind", ["ct", "pet"])
def test_counterfactual_findings_move_within_the_phantoms_places_and_answers_follow_the_text(kind: str) -> None:
    """Counterfactual questions teach copying: their answers must be what the findings text says, and that
    text must differ from the image's truth (else nothing is learned beyond the plain questions)."""
    from models.context import counterfactual, findings_of, findings_text, places_of
    from models.dataset import make_samples
    from models.train import questions_about

    samples = make_samples(kind, 12 if kind == "ct" else 20, 1_000)  # 40 % of PET phantoms are normal
    places = places_of({kind: [s.extra["lesions"] for s in samples]})
    rng = np.random.default_rng(0)
    moved_any = 0
    uptake_asked = 0
    for s in samples:
        truth = s.extra["lesions"]
        moved = counterfactual(kind, truth, places, rng)
        assert [m[0] for m in moved] == [t[0] for t in truth]
        for (label, location, laterality, size, suv), old in zip(moved, truth, strict=True):
            assert (location, laterality) in places[(kind, label)]
            if size is not None:
                assert np.exp(-0.41) <= size / old[3] <= np.exp(0.41)
            assert (suv is None) == (old[4] is None) and (suv is None or np.exp(-0.41) <= suv / old[4] <= np.exp(0.41))
        moved_any += moved != truth
        for lang, question, answer, qkind in questions_about(kind, moved, rng):
            text = findings_text(findings_of(moved), lang, question, uptake=True)
            if qkind in ("location", "size"):
                # the largest finding is named first, and the answer is its place or size as the text writes it
                assert answer.replace(" mm", "").replace("毫米", "") in text.split("." if lang == "en" else "。")[0]
            if qkind == "suv":  # the hottest finding alone, its SUVmax as the answer states it
                assert text.count("SUVmax") == 1 and f"SUVmax {answer}" in text, (answer, text)
                uptake_asked += 1
    assert kind != "pet" or uptake_asked >= 6
    assert moved_any >= 6


def test_answers_copied_from_the_findings_text_are_the_same_tokens_there() -> None:
    """A copy head can only copy token ids: an answer stated in the findings text (place, size, SUVmax) must be
    a run of the prompt's own tokens, in both languages ("Ġ13 . 3" after "SUVmax", not "13 . 3")."""
    from tokenizers import Tokenizer

    from models.context import findings_of, findings_text
    from models.dataset import make_samples
    from models.train import questions_about, text_example

    tok = Tokenizer.from_file(str(Path(__file__).resolve().parents[2] / "models" / "bundled" / "tokenizer.json"))
    checked: dict[tuple[str, str], int] = {}
    rng = np.random.default_rng(1)
    for s in make_samples("pet", 16, 1_000):
        for lang, question, answer, qkind in questions_about("pet", s.extra["lesions"], rng):
            if qkind not in ("location", "size", "suv"):
                continue
            text = findings_text(findings_of(s.extra["lesions"]), lang, question, uptake=True)
            ids, plen = text_example(tok, "vqa", lang, answer, question, 0, text)
            said = ids[plen:-1]
            prompt = ids[:plen]
            runs = {tuple(prompt[i : i + len(said)]) for i in range(plen - len(said) + 1)}
            assert tuple(said) in runs, (lang, qkind, answer, text)
            checked[(lang, qkind)] = checked.get((lang, qkind), 0) + 1
    assert {k for k, n in checked.items() if n >= 3} == {
        (lang, k) for lang in ("en", "zh") for k in ("location", "size", "suv")
    }


@pytest.mark.parametrize("kind", ["cxr", "ct"])
def test_missed_findings_leave_the_answer_to_the_image(kind: str) -> None:
    """A question presuming a finding (where, which side, how large) after a text that leaves it out, as when
    the heads missed it: the text says "No <finding>." for the labels asked about only, and the answer is in
    the image, not in the text."""
    from dicom_agent.inference.render import ABSENT
    from models.context import findings_of, findings_text, missed
    from models.dataset import make_samples
    from models.train import MISS_KINDS, questions_about

    rng = np.random.default_rng(2)
    asked: Counter[str] = Counter()
    for s in make_samples(kind, 40 if kind == "cxr" else 12, 1_000):
        facts = findings_of(s.extra["lesions"])
        for lang, question, answer, qkind in questions_about(kind, s.extra["lesions"], rng):
            if qkind not in MISS_KINDS:
                continue
            kept = missed(facts, question, lang)
            gone = {f.label for f in facts} - {f.label for f in kept}
            assert len(gone) == 1, (question, gone)  # one label out: the one the text below says is absent
            text = findings_text(kept, lang, question, uptake=True, answer_forms=True)
            name = next(f.name_en if lang == "en" else f.name_zh for f in facts if f.label in gone)
            assert text == ABSENT[lang].format(name=name) and answer.strip() not in text, (question, answer, text)
            asked[qkind] += 1
    assert set(asked) == MISS_KINDS, asked  # the kinds as the phantoms' questions name them
