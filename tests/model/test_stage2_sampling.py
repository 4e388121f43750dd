"""Stage-2 question sampling: by question (the prior recipe) or kind-balanced (rare kinds get their share)."""

from __future__ import annotations

from collections import Counter

import numpy as np

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


def test_counterfactual_findings_move_within_the_phantoms_places_and_answers_follow_the_text() -> None:
    """Counterfactual questions teach copying: their answers must be what the findings text says, and that
    text must differ from the image's truth (else nothing is learned beyond the plain questions)."""
    from models.context import counterfactual, findings_of, findings_text, places_of
    from models.dataset import make_samples
    from models.train import questions_about

    samples = make_samples("ct", 12, 1_000)
    places = places_of({"ct": [s.extra["lesions"] for s in samples]})
    rng = np.random.default_rng(0)
    moved_any = 0
    for s in samples:
        truth = s.extra["lesions"]
        moved = counterfactual("ct", truth, places, rng)
        assert [m[0] for m in moved] == [t[0] for t in truth]
        for (label, location, laterality, size), old in zip(moved, truth, strict=True):
            assert (location, laterality) in places[("ct", label)]
            if size is not None:
                assert np.exp(-0.41) <= size / old[3] <= np.exp(0.41)
        moved_any += moved != truth
        for lang, question, answer, kind in questions_about("ct", moved, rng):
            text = findings_text(findings_of(moved), lang, question)
            if kind in ("location", "size"):
                # the largest finding is named first, and the answer is its place or size as the text writes it
                assert answer.replace(" mm", "").replace("毫米", "") in text.split("." if lang == "en" else "。")[0]
    assert moved_any >= 6
