"""The text tokenizer: a small byte-level BPE plus Emu3's special and visual tokens.

Id layout (what every other module relies on)::

    [0, text_vocab_size)                       byte-level BPE text tokens
    [text_vocab_size, visual_offset)           Emu3 special tokens (SPECIAL_TOKENS order)
    [visual_offset, visual_offset + codebook)  <|visual token 000000|> ... in code order

so "text" is an id range (the constrained generator allows exactly that range after the image)
and a visual code ``c`` is the id ``visual_offset + c`` (no string look-ups on the hot path).

The spellings are the ones transformers' Emu3 hard-codes (DESIGN.md section 4): the ``<image>``
placeholder, EOL ``<|extra_200|>`` and visual tokens ``<|visual token 000123|>`` whose index is
read back from the name. The tokenizer is a ``PreTrainedTokenizerFast`` with the attributes
``Emu3Processor`` reads (``image_token``, ``boi_token``, ``eoi_token``, ``image_wrapper_token``,
``eof_token``), saved next to the model weights.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD = "<|endoftext|>"
BOS = "<|extra_203|>"
EOS = "<|extra_204|>"
BOI = "<|image start|>"
EOI = "<|image end|>"
IMG = "<|image token|>"  # Emu3's "image wrapper": separates the "{h}*{w}" meta text from the grid
EOL = "<|extra_200|>"
EOF = "<|extra_201|>"
PLACEHOLDER = "<image>"  # what Emu3Processor expands into pixel placeholders

# Order fixes the ids right after the text range; never reorder (checkpoints depend on it).
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, BOI, EOI, IMG, EOL, EOF, PLACEHOLDER)

VISUAL_TOKEN_FORMAT = "<|visual token {:06d}|>"

# Attribute names transformers' Emu3Processor reads from the tokenizer.
_EXTRA_SPECIAL_TOKENS = {
    "image_token": PLACEHOLDER,
    "boi_token": BOI,
    "eoi_token": EOI,
    "image_wrapper_token": IMG,
    "eof_token": EOF,
    "eol_token": EOL,
}


def visual_token(code: int) -> str:
    """The token string of VQ code ``code``: ``<|visual token 000123|>``."""
    return VISUAL_TOKEN_FORMAT.format(int(code))


@dataclass(frozen=True)
class TokenIds:
    """The ids of the special tokens and the id ranges of a ProgEmu tokenizer."""

    pad: int
    bos: int
    eos: int
    boi: int
    eoi: int
    img: int
    eol: int
    eof: int
    placeholder: int | None  # None in the original BAAI vocabulary, which has no ``<image>``
    text_vocab_size: int  # text ids are [0, text_vocab_size)
    visual_offset: int  # visual code c has id visual_offset + c
    codebook_size: int

    @property
    def vocab_size(self) -> int:
        return self.visual_offset + self.codebook_size

    @classmethod
    def from_tokenizer(cls, tokenizer) -> TokenIds:
        """Read and check the id layout of a ProgEmu tokenizer.

        Two layouts are accepted: ours (:func:`train_text_tokenizer`: text, then
        ``SPECIAL_TOKENS`` in order, then the visual tokens) and the original Emu3 one that
        ``progemu-lite convert`` keeps (text, ``<|endoftext|>``, chat and ``<|extra_N|>``
        tokens, then the visual tokens, and no ``<image>``). In both, text is every id below
        the first special token and the visual tokens are contiguous and in code order.
        """
        vocab = tokenizer.get_vocab()
        required = [t for t in SPECIAL_TOKENS if t != PLACEHOLDER]
        missing = [t for t in required if t not in vocab]
        if missing:
            raise ValueError(f"tokenizer lacks the Emu3 special tokens {missing}")
        special_ids = [vocab[t] for t in required]
        placeholder = vocab.get(PLACEHOLDER)
        text_vocab_size = min(special_ids + ([placeholder] if placeholder is not None else []))
        visual_offset = vocab.get(visual_token(0))
        if visual_offset is None or visual_offset < text_vocab_size:
            raise ValueError("tokenizer has no visual tokens above its text and special ids")
        codebook_size = sum(1 for token in vocab if token.startswith("<|visual token "))
        if vocab.get(visual_token(codebook_size - 1)) != visual_offset + codebook_size - 1:
            raise ValueError("tokenizer visual tokens are not contiguous and in code order")
        if any(i >= visual_offset for i in special_ids):
            raise ValueError("tokenizer special tokens must sit below the visual tokens")
        return cls(*special_ids, placeholder, text_vocab_size, visual_offset, codebook_size)


def _special_token(text: str):
    from tokenizers import AddedToken

    return AddedToken(text, special=True, normalized=False, single_word=False, lstrip=False)


def train_text_tokenizer(
    texts: Iterable[str],
    codebook_size: int,
    *,
    vocab_size: int = 1024,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and add the Emu3 special and visual tokens.

    ``vocab_size`` bounds the text part only (the byte alphabet alone is 256 tokens, so every
    string is encodable); the trainer stops earlier when the texts have no more merges.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if codebook_size < 1:
        raise ValueError(f"codebook_size must be positive, got {codebook_size}")
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be at least 256 (the byte alphabet), got {vocab_size}")
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("no texts to train the tokenizer on")

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],  # added afterwards so that they sit above the text ids
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    backend.add_special_tokens([_special_token(t) for t in SPECIAL_TOKENS])
    backend.add_special_tokens([_special_token(visual_token(c)) for c in range(codebook_size)])

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",  # generation pads on the left
        extra_special_tokens=dict(_EXTRA_SPECIAL_TOKENS),
    )
    TokenIds.from_tokenizer(tokenizer)  # the layout promise, checked once here
    return tokenizer


def load_text_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved with ``save_pretrained`` and check its ProgEmu id layout."""
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {path}")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
    TokenIds.from_tokenizer(tokenizer)
    return tokenizer


def vocabulary_corpus() -> list[str]:
    """Sentences built from the shared findings vocabulary (phantom/findings.py).

    Enough to give a tokenizer sensible merges when no report texts are at hand (random-weight
    models, tests); a trained model's tokenizer is trained on its real prompts and reports.
    """
    from progemu_lite.phantom.findings import (
        FINDINGS,
        LOCATION_TEXT,
        PROGRESSION_DIRECTIONS,
        REPORT_DIRECTIONS,
    )

    sentences = []
    for spec in FINDINGS.values():
        for location in spec.locations:
            where = f"{LOCATION_TEXT[location]} " if location else ""
            thing = f"{where}{spec.text}"
            for word in spec.severity_words:
                sentences.append(f"The {thing} becomes {word}.")
                sentences.append(f"{word.capitalize()} {thing}.")
            for direction in PROGRESSION_DIRECTIONS + REPORT_DIRECTIONS:
                sentences.append(f"The {thing} is {direction}.")
            sentences.append(f"No {thing}.")
            sentences.append(f"Unchanged {thing}.")
            sentences.append(f"Persistent {thing}.")
    return sentences
