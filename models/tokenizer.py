"""Byte-level BPE tokenizer trained on the project's own English + Chinese corpus.

Why byte-level BPE with NFC (model notes): every string round-trips exactly, including Chinese full-width
punctuation and characters never seen in training (they fall back to bytes); Unigram + Metaspace silently
dropped unseen characters and NFKC folded full-width punctuation to ASCII. A byte-level decoder can stop in
the middle of a UTF-8 sequence, so :func:`decode_bytes` keeps only complete characters.
"""

from __future__ import annotations

import codecs
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

PAD, UNK, BOS, EOS, SEP = "<pad>", "<unk>", "<bos>", "<eos>", "<sep>"
REPORT, VQA, EN, ZH = "<report>", "<vqa>", "<en>", "<zh>"
SPECIAL_TOKENS = [PAD, UNK, BOS, EOS, SEP, REPORT, VQA, EN, ZH]
LANG_TOKENS = {"en": EN, "zh": ZH}
TASK_TOKENS = {"report": REPORT, "vqa": VQA}


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 2048) -> Tokenizer:
    """Train BPE on ``corpus``; special tokens get ids 0..8 in SPECIAL_TOKENS order."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """The inverse of GPT-2's byte -> printable-unicode table used by the ByteLevel pre-tokenizer."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def decode_bytes(tok: Tokenizer, ids: Iterable[int]) -> str:
    """Decode ids to text, skipping special tokens; an incomplete trailing UTF-8 sequence is dropped.

    Generation can stop (max tokens) inside a multi-byte character: holding the tail back instead of
    emitting U+FFFD keeps the text valid. Invalid bytes elsewhere become U+FFFD.
    """
    table = _unicode_to_byte()
    special = set(SPECIAL_TOKENS)
    data = bytearray()
    for i in ids:
        piece = tok.id_to_token(int(i))
        if piece is None or piece in special:
            continue
        data.extend(table[ch] for ch in piece if ch in table)
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(bytes(data), final=False)


def normalize(text: str) -> str:
    """What a round trip returns: the NFC form of the input."""
    return unicodedata.normalize("NFC", text)


def prompt_ids(tok: Tokenizer, task: str, lang: str, instruction: str) -> list[int]:
    """``<bos> <task> <lang> instruction <sep>``: the decoder prompt (same layout as the runtime's)."""
    ids = tok.encode(instruction, add_special_tokens=False).ids
    head = [token_id(tok, BOS), token_id(tok, TASK_TOKENS[task]), token_id(tok, LANG_TOKENS[lang])]
    return [*head, *ids, token_id(tok, SEP)]


def token_id(tok: Tokenizer, token: str) -> int:
    """The id of a special token; a tokenizer without it is not one of ours."""
    value = tok.token_to_id(token)
    if value is None:
        raise KeyError(f"tokenizer has no {token!r}")
    return value
