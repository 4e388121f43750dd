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
