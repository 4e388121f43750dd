"""The byte-level BPE tokenizer: exact round trips (EN, ZH, full-width punctuation, unseen characters) and
decoding that never emits half a character (model notes, "Tokenizer")."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from models.tokenizer import SPECIAL_TOKENS, decode_bytes, prompt_ids, train_tokenizer

BUNDLE_TOKENIZER = Path(__file__).resolve().parents[2] / "models" / "bundled" / "tokenizer.json"

CORPUS = [
    "A 12 mm nodule in the right upper lobe.",
    "右肺上叶见一结节，大小约12毫米。",
    "左侧胸腔积液（少量）。",
    "Is there a pleural effusion on the left?",
    "左侧是否有胸腔积液？",
] * 10

SAMPLES = [
    "肺门区未见淋巴结肿大。",  # the string Unigram + Metaspace mangled in the feasibility run
    "右肺上叶见一结节，大小约12毫米；边界清楚！“磨玻璃”影？",
    "Cardiothoracic ratio 0.58; no pneumothorax.",
    "罕见字：龘靐齉爩。emoji 🫁 and accents é ü ñ",  # characters the corpus never saw
    "  leading and trailing spaces  ",
    "全角ＡＢＣ１２３，半角ABC123,",
]


@pytest.fixture(scope="module")
def fresh() -> Tokenizer:
    return train_tokenizer(CORPUS, vocab_size=400)


@pytest.fixture(scope="module")
def shipped() -> Tokenizer:
    return Tokenizer.from_file(str(BUNDLE_TOKENIZER))


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_fresh_and_shipped(fresh: Tokenizer, shipped: Tokenizer, text: str) -> None:
    for tok in (fresh, shipped):
        ids = tok.encode(text, add_special_tokens=False).ids
        assert decode_bytes(tok, ids) == text
        assert tok.decode(ids) == text


def test_full_width_punctuation_is_not_folded(fresh: Tokenizer) -> None:
    ids = fresh.encode("积液，无气胸。", add_special_tokens=False).ids
    assert "，" in decode_bytes(fresh, ids) and "。" in decode_bytes(fresh, ids)


def test_special_tokens_have_fixed_ids_and_are_skipped(fresh: Tokenizer) -> None:
    assert [fresh.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    ids = prompt_ids(fresh, "vqa", "zh", "左侧是否有胸腔积液？")
    assert ids[:3] == [fresh.token_to_id("<bos>"), fresh.token_to_id("<vqa>"), fresh.token_to_id("<zh>")]
    assert decode_bytes(fresh, ids) == "左侧是否有胸腔积液？"


def test_partial_utf8_at_the_end_is_dropped_not_garbled(fresh: Tokenizer) -> None:
    text = "结节🫁"
    ids = fresh.encode(text, add_special_tokens=False).ids
    seen = set()
    for cut in range(1, len(ids) + 1):
        out = decode_bytes(fresh, ids[:cut])
        assert "\ufffd" not in out
        assert text.startswith(out)
        seen.add(out)
    assert "结节" in seen or "结" in seen


def test_shipped_bundle_runner_decodes_the_same(shipped: Tokenizer) -> None:
    from dicom_agent.inference.onnx_runner import BundleRunner

    runner = BundleRunner(BUNDLE_TOKENIZER.parent, device="cpu")
    for text in SAMPLES:
        ids = shipped.encode(text, add_special_tokens=False).ids
        assert runner.decode(ids) == text
        assert "\ufffd" not in runner.decode(ids[:-1])
