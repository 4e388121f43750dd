"""A tiny randomly initialised Gemma 3 image-text-to-text checkpoint, built offline (no download, < 1 s).

Recipe from the model notes: text hidden 32, 2 layers; SigLIP vision 64 px, patch 8, 1 layer; 16 image tokens;
``Gemma3ImageProcessorPil`` (the torchvision-based processor breaks beside the CPU torch wheel); a byte-level
BPE tokenizer trained here with ``tokenizers`` and wrapped as a fast tokenizer with Gemma 3's special tokens.
"""

from __future__ import annotations

from pathlib import Path

SPECIALS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
    "<start_of_turn>",
    "<end_of_turn>",
]
CORPUS = [
    "A 12 mm nodule in the right upper lobe.",
    "Left pleural effusion. No pneumothorax.",
    "右肺上叶见一结节，直径约12毫米。",
    "左侧胸腔积液。未见气胸。",
    "Describe the findings of this medical image in English.",
    "请用中文描述该医学影像的所见。",
]


def build(directory: Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessorPil,
        Gemma3Processor,
        PreTrainedTokenizerFast,
    )

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={
            "image_token": "<image_soft_token>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
        },
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": 64, "width": 64}, do_pan_and_scan=False),
        tokenizer=fast,
        image_seq_length=16,
    )
    ids = fast.convert_tokens_to_ids
    config = Gemma3Config(
        text_config={
            "vocab_size": len(fast),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "max_position_embeddings": 512,
            "sliding_window": 64,
        },
        vision_config={
            "image_size": 64,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        mm_tokens_per_image=16,
        image_token_index=ids("<image_soft_token>"),
        boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"),
        pad_token_id=ids("<pad>"),
        eos_token_id=ids("<eos>"),
        bos_token_id=ids("<bos>"),
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config).eval()
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
