"""The ProgEmu token sequence, exactly as the official code lays it out (no chat template)::

    BOS + image(prior) + prompt + image(follow-up) + interpretation + EOS

    image(codes) = <|image start|> + "{h}*{w}" + <|image token|>
                   + rows of <|visual token NNNNNN|> joined by EOL + EOL + EOF + <|image end|>

The follow-up image comes BEFORE the interpretation. At inference the model is given the prefix
up to and including the follow-up's ``<|image token|>`` and generates the rest. The null
condition (what classifier-free guidance contrasts with, and what training shows with p=0.01)
drops the prior image and the prompt: ``BOS + <|image start|>{h}*{w}<|image token|>``.

:func:`render_sequence` is the one definition of the layout as a string (checked by a golden
test); :class:`SequenceBuilder` produces the same ids directly from code grids (fast, for
training and generation) and parses generated ids back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from progemu_lite.tokenization.text import (
    BOI,
    BOS,
    EOF,
    EOI,
    EOL,
    EOS,
    IMG,
    TokenIds,
    visual_token,
)

IGNORE_INDEX = -100  # label value the loss skips (padding)

# Official augmentation probabilities (datasets_ti2ti.py).
NULL_CONDITION_PROB = 0.01
SHUFFLE_SENTENCES_PROB = 0.05
DROP_NEGATIVE_SENTENCE_PROB = 0.05
NEGATIVE_SENTENCE_STARTS = ("No", "Unchanged", "Persistent")


def _check_codes(codes) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.size == 0:
        raise ValueError(
            f"an image code grid must be a non-empty 2-D array, got shape {codes.shape}"
        )
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"image codes must be integers, got {codes.dtype}")
    if codes.min() < 0:
        raise ValueError("image codes must be non-negative")
    return codes


def _check_grid(grid) -> tuple[int, int]:
    if len(grid) != 2 or min(grid) < 1:
        raise ValueError(f"a grid must be (h, w) with positive sides, got {tuple(grid)}")
    return int(grid[0]), int(grid[1])


def render_image(codes) -> str:
    """image(codes) as a token string (part of the one layout definition below)."""
    codes = _check_codes(codes)
    h, w = codes.shape
    rows = ["".join(visual_token(c) for c in row) for row in codes.tolist()]
    return BOI + f"{h}*{w}" + IMG + EOL.join(rows) + EOL + EOF + EOI


def render_sequence(
    prior_codes,
    prompt: str,
    followup_codes=None,
    interpretation: str | None = None,
    *,
    grid: tuple[int, int] | None = None,
) -> str:
    """The ProgEmu sequence as a token string.

    ``prior_codes=None`` renders the null condition (no prior image; pass ``prompt=""`` too).
    With ``followup_codes`` and ``interpretation`` it is the full training sequence ending in
    EOS; with ``followup_codes=None`` it is the inference prefix, which ends with the follow-up's
    ``<|image start|>{h}*{w}<|image token|>`` (``grid``, default: the prior's grid).
    """
    prior = render_image(prior_codes) if prior_codes is not None else ""
    if followup_codes is None:
        if grid is None:
            if prior_codes is None:
                raise ValueError("an inference prefix without a prior image needs grid=(h, w)")
            grid = _check_codes(prior_codes).shape
        h, w = _check_grid(grid)
        return BOS + prior + prompt + BOI + f"{h}*{w}" + IMG
    if interpretation is None:
        raise ValueError("a full sequence needs the interpretation text (may be empty)")
    return BOS + prior + prompt + render_image(followup_codes) + interpretation + EOS


@dataclass(frozen=True)
class ParsedOutput:
    """Generated ids split back into their parts."""

    codes: np.ndarray  # (h, w) int64 VQ codes of the follow-up image
    text_ids: np.ndarray  # the interpretation's token ids (no EOS)
    text: str
    ended: bool  # True when the interpretation ended with EOS


class SequenceBuilder:
    """Token ids of ProgEmu sequences, built without tokenising visual tokens as strings."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids = TokenIds.from_tokenizer(tokenizer)
        self._meta_cache: dict[tuple[int, int], list[int]] = {}

    # -- pieces -------------------------------------------------------------------------------
    def encode_text(self, text: str) -> np.ndarray:
        """Ids of plain text; raises if the text spells a special or visual token."""
        ids = np.asarray(self.tokenizer.encode(text, add_special_tokens=False), dtype=np.int64)
        if ids.size and ids.max() >= self.ids.text_vocab_size:
            bad = self.tokenizer.convert_ids_to_tokens(
                [int(i) for i in ids if i >= self.ids.text_vocab_size]
            )
            raise ValueError(f"text contains special tokens {bad[:3]}: {text[:60]!r}")
        return ids

    def decode_text(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def _meta(self, h: int, w: int) -> list[int]:
        key = (int(h), int(w))
        if key not in self._meta_cache:
            self._meta_cache[key] = self.encode_text(f"{h}*{w}").tolist()
        return self._meta_cache[key]

    def image_header_ids(self, grid: tuple[int, int]) -> np.ndarray:
        """``<|image start|>{h}*{w}<|image token|>``: what generation starts after."""
        h, w = _check_grid(grid)
        return np.asarray([self.ids.boi, *self._meta(h, w), self.ids.img], dtype=np.int64)

    def grid_ids(self, codes) -> np.ndarray:
        """The visual part of image(codes): each row of visual ids followed by EOL."""
        codes = _check_codes(codes).astype(np.int64)
        if codes.max() >= self.ids.codebook_size:
            raise ValueError(
                f"image code {codes.max()} outside the tokenizer codebook ({self.ids.codebook_size})"
            )
        h, _ = codes.shape
        eol = np.full((h, 1), self.ids.eol, dtype=np.int64)
        return np.concatenate([codes + self.ids.visual_offset, eol], axis=1).reshape(-1)

    def image_ids(self, codes) -> np.ndarray:
        codes = _check_codes(codes)
        return np.concatenate(
            [
                self.image_header_ids(codes.shape),
                self.grid_ids(codes),
                np.asarray([self.ids.eof, self.ids.eoi], dtype=np.int64),
            ]
        )

    def _text(self, text) -> np.ndarray:
        if isinstance(text, str):
            return self.encode_text(text)
        return np.asarray(text, dtype=np.int64)

    # -- sequences ----------------------------------------------------------------------------
    def prefix_ids(self, prior_codes, prompt, grid: tuple[int, int] | None = None) -> np.ndarray:
        """Inference prefix: BOS + image(prior) + prompt + follow-up image header.

        ``prior_codes=None`` and ``prompt=""`` give the null condition used by CFG.
        ``prompt`` may be a string or already-encoded text ids.
        """
        if grid is None:
            if prior_codes is None:
                raise ValueError("a prefix without a prior image needs grid=(h, w)")
            grid = np.asarray(prior_codes).shape
        parts = [np.asarray([self.ids.bos], dtype=np.int64)]
        if prior_codes is not None:
            parts.append(self.image_ids(prior_codes))
        parts += [self._text(prompt), self.image_header_ids(grid)]
        return np.concatenate(parts)

    def null_prefix_ids(self, grid: tuple[int, int]) -> np.ndarray:
        return self.prefix_ids(None, "", grid)

    def interpretation_prefix_ids(self, prior_codes, prompt, followup_codes) -> np.ndarray:
        """Everything before the interpretation: the inference prefix plus the follow-up's
        codes, EOF and ``<|image end|>``. Generating from it interprets a GIVEN follow-up."""
        followup_codes = np.asarray(followup_codes)
        return np.concatenate(
            [
                self.prefix_ids(prior_codes, prompt, followup_codes.shape),
                self.grid_ids(followup_codes),
                np.asarray([self.ids.eof, self.ids.eoi], dtype=np.int64),
            ]
        )

    def training_ids(
        self, prior_codes, prompt, followup_codes, interpretation
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, labels)`` of one full sequence. The loss covers the whole sequence
        (as the official training does); transformers shifts the labels itself."""
        input_ids = np.concatenate(
            [
                self.interpretation_prefix_ids(prior_codes, prompt, followup_codes),
                self._text(interpretation),
                np.asarray([self.ids.eos], dtype=np.int64),
            ]
        )
        return input_ids, input_ids.copy()

    def collate(
        self, examples: list[tuple[np.ndarray, np.ndarray]], *, padding_side: str = "right"
    ) -> dict:
        """Pad ``(input_ids, labels)`` pairs into torch tensors with an attention mask."""
        import torch

        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        length = max(len(ids) for ids, _ in examples)
        n = len(examples)
        input_ids = torch.full((n, length), self.ids.pad, dtype=torch.long)
        labels = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((n, length), dtype=torch.long)
        for i, (ids, lab) in enumerate(examples):
            span = slice(0, len(ids)) if padding_side == "right" else slice(length - len(ids), None)
            input_ids[i, span] = torch.as_tensor(ids)
            labels[i, span] = torch.as_tensor(lab)
            mask[i, span] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}

    # -- parsing ------------------------------------------------------------------------------
    def parse_generated(self, generated, grid: tuple[int, int]) -> ParsedOutput:
        """Split ids generated after the prefix into the code grid and the interpretation.

        Expects ``h`` rows of ``w`` visual ids each followed by EOL, then EOF, EOI, text ids and
        EOS (padding after EOS is ignored). Raises ValueError naming the first misplaced token.
        """
        ids = self.ids
        generated = np.asarray(generated, dtype=np.int64).reshape(-1)
        h, w = _check_grid(grid)
        n_grid = h * (w + 1)
        if generated.size < n_grid + 2:
            raise ValueError(
                f"generated {generated.size} tokens; an {h}x{w} image needs {n_grid + 2}"
            )
        rows = generated[:n_grid].reshape(h, w + 1)
        visual = rows[:, :w]
        bad = (visual < ids.visual_offset) | (visual >= ids.visual_offset + ids.codebook_size)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise ValueError(
                f"token {int(visual[r, c])} at image row {r}, column {c} is not visual"
            )
        if (rows[:, w] != ids.eol).any():
            r = int(np.argmax(rows[:, w] != ids.eol))
            raise ValueError(f"image row {r} does not end with EOL")
        if generated[n_grid] != ids.eof or generated[n_grid + 1] != ids.eoi:
            raise ValueError("the image grid is not followed by EOF and <|image end|>")
        tail = generated[n_grid + 2 :]
        eos_at = np.flatnonzero(tail == ids.eos)
        ended = eos_at.size > 0
        text_ids = tail[: eos_at[0]] if ended else tail
        if text_ids.size and text_ids.max() >= ids.text_vocab_size:
            raise ValueError("the interpretation contains non-text tokens")
        return ParsedOutput(
            codes=visual - ids.visual_offset,
            text_ids=text_ids,
            text=self.decode_text(text_ids),
            ended=ended,
        )


# -- training augmentations (official ProgEmu dataset) -----------------------------------------
def augment_sentences(
    text: str,
    rng: np.random.Generator,
    *,
    shuffle_prob: float = SHUFFLE_SENTENCES_PROB,
    drop_negative_prob: float = DROP_NEGATIVE_SENTENCE_PROB,
) -> str:
    """Shuffle the sentences (p=shuffle_prob) and drop the first one starting with
    "No"/"Unchanged"/"Persistent" (p=drop_negative_prob), as the official dataset does.
    Single-sentence texts are returned unchanged."""
    if not text:
        return text
    sentences = text.strip().split(". ")
    if len(sentences) == 1:
        return text
    if sentences[-1].endswith("."):
        sentences[-1] = sentences[-1][:-1]
    sentences = [s for s in sentences if s]
    if rng.random() < shuffle_prob:
        sentences = [sentences[i] for i in rng.permutation(len(sentences))]
    if rng.random() < drop_negative_prob:
        for i, sentence in enumerate(sentences):
            if sentence.startswith(NEGATIVE_SENTENCE_STARTS) and len(sentences) > 1:
                del sentences[i]
                break
    return ". ".join(sentences) + "."


def augment_condition(
    prior_codes,
    prompt: str,
    rng: np.random.Generator,
    *,
    null_prob: float = NULL_CONDITION_PROB,
    shuffle_prob: float = SHUFFLE_SENTENCES_PROB,
    drop_negative_prob: float = DROP_NEGATIVE_SENTENCE_PROB,
):
    """The official training augmentation of the condition: ``(prior_codes or None, prompt)``.

    The prompt's sentences are augmented first; then with p=null_prob both the prior image and
    the prompt are dropped (the null condition classifier-free guidance contrasts with).
    """
    prompt = augment_sentences(
        prompt, rng, shuffle_prob=shuffle_prob, drop_negative_prob=drop_negative_prob
    )
    if rng.random() < null_prob:
        return None, ""
    return prior_codes, prompt
