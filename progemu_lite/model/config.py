"""Model presets: transformers' ``Emu3Config`` (Llama-style text decoder + Emu3 VQ-VAE).

========  ====================================  =========  ======================================
preset    text decoder                          images     what for
========  ====================================  =========  ======================================
tiny      2 layers x 64, 4 heads                64 x 64    tests (random weights, fast)
lite      4 layers x 256, 4 heads (2 KV), 768   128 x 128  the shipped CPU model (16 x 16 grid)
full      32 x 4096, 32 heads (8 KV), 14336     512 x 512  Emu3-Gen 8B shapes (64 x 64 grid)
========  ====================================  =========  ======================================

The model class is ``Emu3ForConditionalGeneration`` with its ``Emu3VQVAE``; nothing home-made.
A preset's depth is where training from scratch starts: ``train --grow-layers`` deepens a trained
model (progemu_lite.model.grow), so a checkpoint may have more layers than its preset, never fewer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from progemu_lite.tokenization.text import TokenIds
from progemu_lite.tokenization.vq import CHECKED_VQ_FIELDS

if TYPE_CHECKING:
    import transformers

PRESETS = ("tiny", "lite", "full")

# Text decoder shapes. max_position_embeddings covers two images plus prompt and report:
# lite: 2 x (16*17 + 2 + 6) = 560 image tokens + up to ~460 text tokens.
_TEXT: dict[str, dict] = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_theta=10000.0,
    ),
    "lite": dict(
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_theta=10000.0,
    ),
    # Emu3-Gen (BAAI/Emu3-Gen-hf) shapes, as in DESIGN.md section 3.
    "full": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=9216,
        rope_theta=1_000_000.0,
        vocab_size=184622,
    ),
}

# Fields that must agree between a checkpoint and the preset it claims to be.
CHECKED_TEXT_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "vocab_size",
)


def _check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")


def build_config(preset: str, tokenizer) -> transformers.Emu3Config:
    """The ``Emu3Config`` of a preset, with the special ids and vocabulary of ``tokenizer``."""
    from transformers import Emu3Config, Emu3TextConfig

    from progemu_lite.tokenization.vq import vq_config

    _check_preset(preset)
    ids = TokenIds.from_tokenizer(tokenizer)
    vq = vq_config(preset)
    if vq.codebook_size != ids.codebook_size:
        raise ValueError(
            f"tokenizer has {ids.codebook_size} visual tokens but the {preset!r} VQ codebook "
            f"has {vq.codebook_size}"
        )
    shapes = dict(_TEXT[preset])
    rope_theta = shapes.pop("rope_theta")
    vocab_size = shapes.pop("vocab_size", len(tokenizer))
    if vocab_size < len(tokenizer):
        raise ValueError(
            f"tokenizer has {len(tokenizer)} tokens; preset {preset!r} allows {vocab_size}"
        )
    text = Emu3TextConfig(
        **shapes,
        vocab_size=vocab_size,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        pad_token_id=ids.pad,
        bos_token_id=ids.bos,
        eos_token_id=ids.eos,
        attention_dropout=0.0,  # transformers' default is 0.1
        tie_word_embeddings=False,
    )
    config = Emu3Config(
        vq_config=vq.to_dict(),
        text_config=text.to_dict(),
        vocabulary_map=dict(tokenizer.get_vocab()),
    )
    config.pad_token_id, config.bos_token_id, config.eos_token_id = ids.pad, ids.bos, ids.eos
    return config


def config_mismatches(config, preset: str, tokenizer) -> list[str]:
    """How ``config`` differs from ``build_config(preset, tokenizer)``, one line per field."""
    expected = build_config(preset, tokenizer)
    problems = []
    for section, fields in (("text", CHECKED_TEXT_FIELDS), ("vq", CHECKED_VQ_FIELDS)):
        have = getattr(config, f"{section}_config")
        want = getattr(expected, f"{section}_config")
        for name in fields:
            a, b = getattr(have, name, None), getattr(want, name, None)
            if isinstance(a, tuple | list) and isinstance(b, tuple | list):
                a, b = list(a), list(b)
            if name == "num_hidden_layers" and a is not None and b is not None and a > b:
                continue  # deepened by train --grow-layers
            if a != b:
                problems.append(f"{section}_config.{name}: checkpoint {a}, preset {preset!r} {b}")
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        a, b = getattr(config.text_config, name), getattr(expected.text_config, name)
        if a != b:
            problems.append(f"text_config.{name}: checkpoint {a}, tokenizer {b}")
    return problems


def build_model(preset: str, tokenizer, *, seed: int | None = 0):
    """A randomly initialised ``Emu3ForConditionalGeneration`` of a preset (eval mode)."""
    import torch
    from transformers import Emu3ForConditionalGeneration

    config = build_config(preset, tokenizer)
    if seed is not None:
        torch.manual_seed(seed)
    model = Emu3ForConditionalGeneration(config)
    return model.eval()
