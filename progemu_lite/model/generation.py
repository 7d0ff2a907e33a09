"""Constrained generation of the follow-up image and the interpretation.

Every generated sequence has the official shape: ``h`` rows of ``w`` visual tokens each closed
by EOL, then EOF, ``<|image end|>``, at least ``min_text_tokens`` text tokens, text or EOS up to
``max_text_tokens``, then EOS is forced. :class:`GridConstraint` enforces this for a whole
batch at once (a table of allowed-token masks indexed by each row's phase), and works both
as a transformers ``LogitsProcessor`` and inside :func:`generate`'s own decoding loop.

:func:`generate` is a small loop over ``Emu3ForConditionalGeneration.forward`` with a static
KV cache: left-padded batches, greedy or sampled decoding (temperature, top-k, top-p) from a seeded
``torch.Generator``, and classifier-free guidance against the null condition computed in the
same batch. It returns the generated ids and the probability of each chosen token. With
``compiled=True`` the one-token decode steps run through ``torch.compile`` (the prefill stays
eager): at batch 1 on a CPU most of a step's time is Python overhead in the transformers
layers, which the compiled graph removes.
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import AttentionInterface, LogitsProcessor
from transformers.cache_utils import Cache, StaticLayer
from transformers.integrations.sdpa_attention import pack_gqa, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from progemu_lite.tokenization.text import TokenIds

DEFAULT_MAX_TEXT_TOKENS = 195  # official: text allowed up to ~200 tokens after the image
DEFAULT_MIN_TEXT_TOKENS = 2  # official: the first two tokens after the image must be text
DEFAULT_TOP_K = 2048  # official sampling setting

# Phases of a row; each has a row in the allowed-token table (GridConstraint.allowed), which
# the lesson widgets read to show what the decoder enforces.
(
    PHASE_VISUAL,
    PHASE_EOL,
    PHASE_EOF,
    PHASE_EOI,
    PHASE_TEXT,
    PHASE_TEXT_OR_EOS,
    PHASE_EOS,
    PHASE_DONE,
) = range(8)


class GridConstraint(LogitsProcessor):
    """Masks the logits of a batch so that generation follows the ProgEmu output layout.

    ``offset`` of a row = number of tokens generated after the follow-up's ``<|image token|>``
    plus one (1 for the first generated token). Rows whose phase is done may only emit padding.
    """

    def __init__(
        self,
        ids: TokenIds,
        grid: tuple[int, int],
        vocab_size: int,
        *,
        max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS,
        min_text_tokens: int = DEFAULT_MIN_TEXT_TOKENS,
        device: torch.device | str = "cpu",
    ):
        if max_text_tokens < min_text_tokens:
            raise ValueError(
                f"max_text_tokens ({max_text_tokens}) must be >= min_text_tokens ({min_text_tokens})"
            )
        if min_text_tokens < 0:
            raise ValueError("min_text_tokens must be >= 0")
        self.ids = ids
        self.h, self.w = (int(v) for v in grid)
        self.max_text_tokens = int(max_text_tokens)
        self.min_text_tokens = int(min_text_tokens)
        self.image_tokens = self.h * (self.w + 1)  # rows incl. their EOL
        # Longest possible output: grid, EOF, EOI, text, EOS.
        self.max_new_tokens = self.image_tokens + 2 + self.max_text_tokens + 1

        allowed = torch.zeros((8, vocab_size), dtype=torch.bool)
        allowed[PHASE_VISUAL, ids.visual_offset : ids.visual_offset + ids.codebook_size] = True
        allowed[PHASE_EOL, ids.eol] = True
        allowed[PHASE_EOF, ids.eof] = True
        allowed[PHASE_EOI, ids.eoi] = True
        allowed[PHASE_TEXT, : ids.text_vocab_size] = True
        allowed[PHASE_TEXT_OR_EOS, : ids.text_vocab_size] = True
        allowed[PHASE_TEXT_OR_EOS, ids.eos] = True
        allowed[PHASE_EOS, ids.eos] = True
        allowed[PHASE_DONE, ids.pad] = True
        self.allowed = allowed.to(device)

    def phases(self, offsets: torch.Tensor, finished: torch.Tensor | None = None) -> torch.Tensor:
        """The phase of each row, vectorised over the batch."""
        o = offsets.long()
        text_index = o - (self.image_tokens + 2)  # 1 for the first text token
        phase = torch.full_like(o, PHASE_DONE)
        phase = torch.where(text_index <= self.max_text_tokens + 1, PHASE_EOS, phase)
        phase = torch.where(text_index <= self.max_text_tokens, PHASE_TEXT_OR_EOS, phase)
        phase = torch.where(text_index <= self.min_text_tokens, PHASE_TEXT, phase)
        phase = torch.where(o == self.image_tokens + 2, PHASE_EOI, phase)
        phase = torch.where(o == self.image_tokens + 1, PHASE_EOF, phase)
        in_grid = o <= self.image_tokens
        phase = torch.where(in_grid & (o % (self.w + 1) == 0), PHASE_EOL, phase)
        phase = torch.where(in_grid & (o % (self.w + 1) != 0), PHASE_VISUAL, phase)
        if finished is not None:
            phase = torch.where(finished, PHASE_DONE, phase)
        return phase

    def mask(
        self, scores: torch.Tensor, offsets: torch.Tensor, finished: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``scores`` with every token the layout forbids set to -inf."""
        allowed = self.allowed[self.phases(offsets, finished)]
        return scores.masked_fill(~allowed[:, : scores.shape[-1]], float("-inf"))

    def offsets_from_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Offsets from the position of the last ``<|image token|>`` in each row."""
        is_img = input_ids == self.ids.img
        if not bool(is_img.any(dim=1).all()):
            raise ValueError("every row must contain the follow-up's <|image token|>")
        length = input_ids.shape[1]
        last = length - 1 - torch.argmax(is_img.flip(1).int(), dim=1)
        return length - last

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        offsets = self.offsets_from_input_ids(input_ids)
        # After EOS only padding (transformers pads finished rows itself).
        after = (
            torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
            > (input_ids.shape[1] - offsets)[:, None]
        )
        finished = ((input_ids == self.ids.eos) & after).any(dim=1)
        return self.mask(scores, offsets, finished)


@dataclass
class SamplingSettings:
    """How tokens are chosen. ``temperature=0`` means greedy decoding. ``text_temperature``:
    the interpretation's own temperature (None: ``temperature``); a small model's sampled text
    drifts from what its image shows, greedy text (0) reads it more faithfully.
    ``text_guidance_scale``: the interpretation's own guidance scale (None: ``guidance_scale``,
    as the official code guides every token); 1 guides the image only."""

    temperature: float = 1.0
    text_temperature: float | None = None
    top_k: int | None = DEFAULT_TOP_K
    top_p: float | None = None
    guidance_scale: float = 1.0  # 1 = no classifier-free guidance; official uses 3
    text_guidance_scale: float | None = None  # the interpretation's own (None: guidance_scale)
    seed: int | None = None
    max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS
    min_text_tokens: int = DEFAULT_MIN_TEXT_TOKENS

    def check(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.text_temperature is not None and self.text_temperature < 0:
            raise ValueError(f"text_temperature must be >= 0, got {self.text_temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if self.text_guidance_scale is not None and self.text_guidance_scale < 0:
            raise ValueError(f"text_guidance_scale must be >= 0, got {self.text_guidance_scale}")
        if self.max_text_tokens < self.min_text_tokens:
            raise ValueError(
                f"max_text_tokens must be >= {self.min_text_tokens}, got {self.max_text_tokens}"
            )


@dataclass
class GenerationOutput:
    """Generated ids (after the prefix) and the probability of each chosen token."""

    sequences: torch.Tensor  # (B, T) long, padded with the pad id after EOS
    probabilities: torch.Tensor  # (B, T) float32, probability of each token; 0 on padding
    lengths: torch.Tensor  # (B,) number of generated tokens including EOS
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        n = int(self.lengths[i])
        return (
            self.sequences[i, :n].cpu().numpy(),
            self.probabilities[i, :n].float().cpu().numpy(),
        )


def guided_log_probs(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on log-probabilities (as transformers' unbatched CFG does):
    ``log p_u + scale * (log p_c - log p_u)``; scale 1 gives ``log p_c`` exactly."""
    cond = torch.log_softmax(cond.float(), dim=-1)
    if scale == 1.0:
        return cond
    uncond = torch.log_softmax(uncond.float(), dim=-1)
    return uncond + scale * (cond - uncond)


def _filter_top_k_top_p(scores: torch.Tensor, top_k: int | None, top_p: float | None):
    if top_k is not None and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p (keeps at least one).
        drop_sorted = (cumulative - torch.softmax(sorted_scores, dim=-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


def left_pad(prefixes: list, pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id sequences into ``(input_ids, attention_mask)``."""
    length = max(len(p) for p in prefixes)
    input_ids = torch.full((len(prefixes), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prefixes), length), dtype=torch.long)
    for i, p in enumerate(prefixes):
        if len(p):
            input_ids[i, length - len(p) :] = torch.as_tensor(np.asarray(p), dtype=torch.long)
            mask[i, length - len(p) :] = 1
    return input_ids.to(device), mask.to(device)


# The compiled decode step is specialised to its shapes (batch rows, cache length, masked or
# not) until a second call with other shapes makes them symbolic; cache lengths are rounded up
# to a multiple of this so that prompts of different lengths share one cache shape.
COMPILED_CACHE_BUCKET = 256
# Attention reads the static cache only up to the slots written so far, rounded up to a
# multiple of this: the slots beyond are masked anyway, and reading the keys and values is
# much of a step's time (measured 6-15% faster generation; docs/model_card.md, Speed).
CACHE_WINDOW = 128
_compiled_forwards: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# transformers' sdpa attention, with one change that torch.compile needs (below).
PACKED_GQA_SDPA = "progemu_sdpa_packed_gqa"


def _sdpa_packed_gqa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kw):
    """transformers' ``sdpa`` attention, except that a one-token step with a mask always
    folds the query heads onto the key/value heads (transformers' own ``pack_gqa``). Eager
    transformers does this too, but while torch.compile traces it repeats the key/value heads
    instead, which copies the whole static cache every step: measured, compiled steps at
    batch 16 became 3-4x slower than eager ones. Same numbers either way."""
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1 and query.shape[2] == 1 and attention_mask is not None:
        out = torch.nn.functional.scaled_dot_product_attention(
            pack_gqa(query, groups),
            key,
            value,
            attn_mask=pack_gqa(attention_mask, groups),
            dropout_p=dropout,
            scale=scaling,
        )
        out = out.reshape(out.shape[0], -1, 1, value.shape[-1])
        return out.transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kw
    )


AttentionInterface.register(PACKED_GQA_SDPA, _sdpa_packed_gqa)
AttentionMaskInterface.register(PACKED_GQA_SDPA, sdpa_mask)


class WindowedStaticLayer(StaticLayer):
    """transformers' static cache layer, except that attention sees only its first
    ``window`` slots (all of them until it is set); :func:`generate` moves the window forward
    as the sequence grows. Same numbers: the slots cut off are the masked future ones."""

    def __init__(self, max_cache_len: int, **kwargs):
        super().__init__(max_cache_len=max_cache_len, **kwargs)
        self.window = max_cache_len

    def update(self, key_states, value_states, *args, **kwargs):
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        return keys[:, :, : self.window], values[:, :, : self.window]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.window, 0


def windowed_static_cache(model, max_cache_len: int) -> Cache:
    """A preallocated KV cache of :class:`WindowedStaticLayer`, one per decoder layer."""
    n_layers = model.config.get_text_config(decoder=True).num_hidden_layers
    return Cache(layers=[WindowedStaticLayer(max_cache_len=max_cache_len) for _ in range(n_layers)])


def compiled_forward(model):
    """``torch.compile(model.forward)``, made once per model and compiled lazily: the first
    call compiles for its shapes, and the first one with other shapes (the cache window moving
    on, another batch size) compiles once more with those sizes symbolic (torch's automatic
    dynamic shapes), a graph that then serves every size; each compile takes seconds to tens
    of seconds. A model on transformers' ``sdpa`` attention is switched to
    :data:`PACKED_GQA_SDPA` first."""
    forward = _compiled_forwards.get(model)
    if forward is None:
        if model.config._attn_implementation == "sdpa":
            model.set_attn_implementation(PACKED_GQA_SDPA)
        # dynamic=None, not False: the window changes a few times in every generation, and a
        # graph per window and batch size would mean several compiles per new batch size.
        forward = torch.compile(model.forward, dynamic=None)
        _compiled_forwards[model] = forward
    return forward


@torch.inference_mode()
def generate(
    model,
    prefixes: list,
    ids: TokenIds,
    grid: tuple[int, int],
    settings: SamplingSettings | None = None,
    *,
    null_prefix=None,
    use_cache: bool = True,
    compiled: bool = False,
    max_new_tokens: int | None = None,
) -> GenerationOutput:
    """Generate image + interpretation for a batch of inference prefixes.

    ``prefixes``: id sequences ending with the follow-up's ``<|image token|>`` (see
    ``SequenceBuilder.prefix_ids``): the image is drawn, then interpreted. Prefixes that end
    with the follow-up's ``<|image end|>`` (``SequenceBuilder.interpretation_prefix_ids``)
    already hold the image: only its interpretation is generated. ``null_prefix``: the
    null-condition prefix, required when ``settings.guidance_scale != 1`` (drawing only).
    ``use_cache=False`` recomputes the whole sequence at every step (the naive baseline of the
    speed benchmark). ``compiled=True`` runs the decode steps through :func:`compiled_forward`
    (same tokens; needs a C++ compiler on a CPU). ``max_new_tokens`` stops early (the output
    is then cut inside the layout; for benchmarks).
    """
    settings = settings or SamplingSettings()
    settings.check()
    if not prefixes:
        raise ValueError("no prefixes to generate from")
    device = model.device
    vocab_size = model.config.text_config.vocab_size
    constraint = GridConstraint(
        ids,
        grid,
        vocab_size,
        max_text_tokens=settings.max_text_tokens,
        min_text_tokens=settings.min_text_tokens,
        device=device,
    )
    # Where every row starts in the output layout: offset 1 draws the image, offset
    # image_tokens + 3 (after EOF and <|image end|>) writes the interpretation of a given image.
    ends = {int(np.asarray(p)[-1]) if len(p) else None for p in prefixes}
    if ends == {ids.img}:
        first_offset = 1
    elif ends == {ids.eoi}:
        first_offset = constraint.image_tokens + 3
    else:
        raise ValueError(
            "every prefix must end with the follow-up's <|image token|> (to draw it) or every "
            "one with its <|image end|> (to interpret a given image); got a mix or neither"
        )
    image_scale = settings.guidance_scale
    text_scale = settings.text_guidance_scale
    if text_scale is None:
        text_scale = image_scale
    guided = image_scale != 1.0 or text_scale != 1.0
    if guided and first_offset != 1:
        raise ValueError(
            "classifier-free guidance applies to drawing the image, not to reading one"
        )
    if guided and null_prefix is None:
        raise ValueError("classifier-free guidance needs the null-condition prefix")
    batch = len(prefixes)
    rows = list(prefixes) + ([null_prefix] * batch if guided else [])
    input_ids, attention_mask = left_pad(rows, ids.pad, device)

    text_temperature = (
        settings.temperature if settings.text_temperature is None else settings.text_temperature
    )
    generator = None
    if settings.temperature > 0 or text_temperature > 0:
        generator = torch.Generator(device=device)
        seed = settings.seed
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        generator.manual_seed(int(seed))

    steps = constraint.max_new_tokens - (first_offset - 1)
    if max_new_tokens is not None:
        steps = int(max_new_tokens)
    out_ids = torch.full((batch, steps), ids.pad, dtype=torch.long, device=device)
    out_probs = torch.zeros((batch, steps), dtype=torch.float32, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch, dtype=torch.long, device=device)

    start = time.perf_counter()
    compiled = compiled and use_cache
    cache_len = input_ids.shape[1] + steps
    if compiled:
        cache_len = math.ceil(cache_len / COMPILED_CACHE_BUCKET) * COMPILED_CACHE_BUCKET
    # A preallocated cache: DynamicCache concatenates every step, which copies the whole cache
    # (tens of MB per step at batch 16); results are identical.
    cache = windowed_static_cache(model, cache_len) if use_cache else None
    prefix_len = input_ids.shape[1]
    step_ids = input_ids
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    # Without padding the causal mask is implied; skipping the 2-D mask saves work every step.
    padded = not bool(attention_mask.all())
    decode_forward = compiled_forward(model) if compiled else model
    if compiled and padded:
        # A fixed-shape mask over the whole cache for the compiled steps; the slots not yet
        # written are masked anyway because they lie in each query's future.
        full_mask = attention_mask.new_ones((len(rows), cache_len))
        full_mask[:, : attention_mask.shape[1]] = attention_mask
    # All rows start right after the prefix, so they share the offset: one phase per step.
    schedule = constraint.phases(torch.arange(first_offset, first_offset + steps, device=device))
    done_row = constraint.allowed[PHASE_DONE]
    text_steps = (schedule >= PHASE_TEXT).tolist()  # at the text temperature and guidance
    no_filter = (settings.top_k is None or settings.top_k >= vocab_size) and (
        settings.top_p is None or settings.top_p >= 1.0
    )
    n_done = 0
    for step in range(steps):
        if use_cache:
            decode_step = step > 0
            # Slots written after this step: the prefix, then one token a step.
            window = min(cache_len, math.ceil((prefix_len + step) / CACHE_WINDOW) * CACHE_WINDOW)
            for layer in cache.layers:
                layer.window = window
            if decode_step and compiled and padded:
                step_mask = full_mask[:, :window]
            else:
                step_mask = attention_mask if padded else None
            out = (decode_forward if decode_step else model)(
                input_ids=step_ids,
                attention_mask=step_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            cache = out.cache
        else:
            full_positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            out = model(
                input_ids=step_ids,
                attention_mask=attention_mask,
                position_ids=full_positions,
                use_cache=False,
                logits_to_keep=1,
            )
        logits = out.logits[:, -1, :].float()
        cond = logits[:batch]
        scale = text_scale if text_steps[step] else image_scale
        scores = guided_log_probs(cond, logits[batch:] if guided else cond, scale)
        allowed = torch.where(finished[:, None], done_row, constraint.allowed[schedule[step]])
        scores = scores.masked_fill(~allowed[:, : scores.shape[-1]], float("-inf"))
        probs = torch.softmax(scores, dim=-1)

        temperature = text_temperature if text_steps[step] else settings.temperature
        if temperature == 0:
            token = torch.argmax(scores, dim=-1)
        elif temperature == 1.0 and no_filter:
            token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            sample_scores = _filter_top_k_top_p(
                scores / temperature, settings.top_k, settings.top_p
            )
            token = torch.multinomial(
                torch.softmax(sample_scores, dim=-1), 1, generator=generator
            ).squeeze(1)
        token = torch.where(finished, torch.full_like(token, ids.pad), token)
        out_ids[:, step] = token
        out_probs[:, step] = torch.where(
            finished, torch.zeros_like(probs[:, 0]), probs.gather(1, token[:, None]).squeeze(1)
        )
        lengths += (~finished).long()
        finished = finished | (token == ids.eos)
        n_done = step + 1
        if bool(finished.all()):
            break

        next_ids = torch.cat([token, token]) if guided else token
        if not (compiled and padded):
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(rows), 1))], 1)
        if use_cache:
            step_ids = next_ids[:, None]
            position_ids = position_ids[:, -1:] + 1
        else:
            step_ids = torch.cat([step_ids, next_ids[:, None]], dim=1)
    seconds = time.perf_counter() - start
    return GenerationOutput(
        sequences=out_ids[:, :n_done],
        probabilities=out_probs[:, :n_done],
        lengths=lengths,
        seconds=seconds,
        extra={"steps": n_done},
    )
