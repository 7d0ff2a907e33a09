"""Lesson 4 widgets: one token stream for image and text, the grid constraint, and a stepper.

The stream is coloured by what each token is (Okabe-Ito colours, each with its word in a
legend): prior image, prompt, follow-up image, EOL/EOF line ends, image markers, the
interpretation and the control tokens. The constraint views read the allowed-token table of
:class:`progemu_lite.model.generation.GridConstraint` itself, so they show exactly what the
decoder enforces.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np

from ..model.generation import (
    PHASE_DONE,
    PHASE_EOF,
    PHASE_EOI,
    PHASE_EOL,
    PHASE_EOS,
    PHASE_TEXT,
    PHASE_TEXT_OR_EOS,
    PHASE_VISUAL,
    GridConstraint,
)
from .figures import OKABE_ITO, SEQUENTIAL_CMAP, FigurePanel, StaticFigure, colorize, matplotlib_png

# What a token is -> (colour, legend text). Order = legend order.
TOKEN_KINDS: dict[str, tuple[str, str]] = {
    "control": (OKABE_ITO["vermillion"], "BOS / EOS (start and end of the sequence)"),
    "image marker": (OKABE_ITO["purple"], "image start, size 'h*w', image token, image end"),
    "prior image": (OKABE_ITO["sky_blue"], "prior image (visual tokens)"),
    "line end": (OKABE_ITO["yellow"], "EOL after each image row, EOF after the last"),
    "prompt": (OKABE_ITO["orange"], "progression prompt (text)"),
    "follow-up image": (OKABE_ITO["blue"], "follow-up image (visual tokens, generated)"),
    "interpretation": (OKABE_ITO["green"], "interpretation (text, generated)"),
}
PHASE_NAMES = {
    PHASE_VISUAL: "visual token",
    PHASE_EOL: "EOL (end of row)",
    PHASE_EOF: "EOF (end of image)",
    PHASE_EOI: "image end",
    PHASE_TEXT: "text only",
    PHASE_TEXT_OR_EOS: "text or EOS",
    PHASE_EOS: "EOS (forced)",
    PHASE_DONE: "padding (finished)",
}


def token_kinds(builder, ids) -> list[str]:
    """The kind (a key of :data:`TOKEN_KINDS`) of every id of a ProgEmu sequence or prefix.

    The last image block is the follow-up; an earlier one is the prior. Text before the
    follow-up is the prompt, text after it the interpretation.
    """
    t = builder.ids
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    starts = [i for i, v in enumerate(ids) if v == t.boi]
    follow_start = starts[-1] if starts else len(ids)
    kinds, inside, seen_followup = [], False, False
    for i, v in enumerate(ids):
        if v in (t.bos, t.eos, t.pad):
            kind = "control"
        elif v == t.boi:
            inside, seen_followup = True, i == follow_start
            kind = "image marker"
        elif v == t.eoi:
            inside = False
            kind = "image marker"
        elif v in (t.eol, t.eof):
            kind = "line end"
        elif t.visual_offset <= v < t.visual_offset + t.codebook_size:
            kind = "follow-up image" if seen_followup else "prior image"
        elif inside:  # the "h*w" text and the image token inside an image header
            kind = "image marker"
        else:
            kind = "interpretation" if seen_followup else "prompt"
        kinds.append(kind)
    return kinds


def full_sequence(pipe, result) -> np.ndarray:
    """BOS + prior + prompt + follow-up + interpretation + EOS of a ``Counterfactual``."""
    codes = pipe.encode_images(result.prior[None])[0]
    return np.concatenate([pipe.builder.prefix_ids(codes, result.prompt), result.token_ids])


def _token_label(builder, token: int) -> str:
    t = builder.ids
    if t.visual_offset <= token < t.visual_offset + t.codebook_size:
        return f"v{token - t.visual_offset}"
    if token < t.text_vocab_size:
        return builder.decode_text([token]).replace(" ", "\u2423") or "\u2205"
    names = {t.bos: "BOS", t.eos: "EOS", t.boi: "BOI", t.eoi: "EOI", t.img: "IMG"}
    names.update({t.eol: "EOL", t.eof: "EOF", t.pad: "PAD"})
    return names.get(token, str(token))


def legend_html() -> str:
    items = "".join(
        f'<span style="display:inline-block; margin-right:12px"><span style="display:'
        f"inline-block; width:14px; height:14px; background:{colour}; vertical-align:middle; "
        f'border:1px solid #333"></span> <b>{html.escape(kind)}</b>: {html.escape(text)}</span>'
        for kind, (colour, text) in TOKEN_KINDS.items()
    )
    return f'<div class="progemu-legend" style="line-height:1.8">{items}</div>'


def token_stream_html(builder, ids, probabilities=None, max_tokens: int | None = None) -> str:
    """The sequence as coloured chips (visual tokens ``vN``, text as text), with a legend.

    Hovering a chip shows its id, kind and, for generated tokens, its probability.
    ``probabilities`` align with the *last* ``len(probabilities)`` ids (the generated part).
    """
    ids = np.asarray(ids).reshape(-1)
    kinds = token_kinds(builder, ids)
    shown = len(ids) if max_tokens is None else min(len(ids), max_tokens)
    first_generated = len(ids) - (0 if probabilities is None else len(probabilities))
    chips = []
    for i in range(shown):
        colour = TOKEN_KINDS[kinds[i]][0]
        title = f"#{i} id {int(ids[i])}: {kinds[i]}"
        if probabilities is not None and i >= first_generated:
            title += f", p = {float(probabilities[i - first_generated]):.3f}"
        label = html.escape(_token_label(builder, int(ids[i])))
        chips.append(
            f'<span title="{html.escape(title)}" style="background:{colour}; color:black; '
            "font-family:monospace; font-size:80%; padding:0 2px; margin:1px; "
            f'display:inline-block; border-radius:2px">{label}</span>'
        )
    more = f" &hellip; ({len(ids) - shown} more)" if shown < len(ids) else ""
    return (
        f"{legend_html()}<div style='line-height:1.6'>{''.join(chips)}{more}</div>"
        f"<p><i>{len(ids)} tokens; hover a chip for its id and kind.</i></p>"
    )


def kind_counts(builder, ids) -> dict[str, int]:
    """How many tokens of each kind the sequence has (legend order)."""
    kinds = token_kinds(builder, ids)
    return {kind: kinds.count(kind) for kind in TOKEN_KINDS}


def token_stream_figure(builder, ids, per_row: int = 40) -> StaticFigure:
    """The sequence as a PNG: one coloured cell per token, ``per_row`` per line, with a legend."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    kinds = token_kinds(builder, ids)
    order = list(TOKEN_KINDS)
    rows = -(-len(kinds) // per_row)
    cells = np.full(rows * per_row, np.nan)
    cells[: len(kinds)] = [order.index(k) for k in kinds]
    fig = Figure(figsize=(8, 0.18 * rows + 1.6), dpi=100)
    ax = fig.add_axes((0.08, 0.3, 0.9, 0.68))
    cmap = ListedColormap([TOKEN_KINDS[k][0] for k in order]).with_extremes(bad="white")
    ax.imshow(cells.reshape(rows, per_row), cmap=cmap, vmin=-0.5, vmax=len(order) - 0.5)
    ax.set_xticks([])
    ax.set_yticks(range(0, rows, max(1, rows // 6)))
    ax.set_yticklabels([str(r * per_row) for r in range(0, rows, max(1, rows // 6))], fontsize=7)
    ax.set_ylabel("token index", fontsize=8)
    counts = kind_counts(builder, ids)
    handles = [Patch(color=TOKEN_KINDS[k][0], label=f"{k} ({counts[k]})") for k in order]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=7, frameon=False)
    summary = ", ".join(f"{counts[k]} {k}" for k in order if counts[k])
    return StaticFigure(
        matplotlib_png(fig),
        alt=f"The ProgEmu token stream as coloured cells, {per_row} per line: {summary}",
        caption=(
            f"One sequence of {len(kinds)} tokens read left to right, top to bottom, coloured "
            "by kind (legend below the cells; Okabe-Ito colours). The yellow line ends split "
            "each image into rows."
        ),
        width=720,
    )


# -- the constrained decoder --------------------------------------------------------------------


@dataclass(frozen=True)
class MaskPosition:
    offset: int  # 1 = the first generated token
    label: str
    phase: str
    allowed: int  # number of allowed ids
    ranges: str  # which id ranges are allowed


def _ranges(mask: np.ndarray) -> str:
    where = np.flatnonzero(mask)
    if where.size == 0:
        return "none"
    breaks = np.flatnonzero(np.diff(where) > 1)
    starts = np.concatenate([[where[0]], where[breaks + 1]])
    ends = np.concatenate([where[breaks], [where[-1]]])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in zip(starts, ends, strict=True))


def grid_constraint(pipe, max_text_tokens: int = 195) -> GridConstraint:
    """The constraint the pipeline's decoder applies (same ids, grid and vocabulary)."""
    vocab = pipe.model.config.text_config.vocab_size
    return GridConstraint(pipe.builder.ids, pipe.grid, vocab, max_text_tokens=max_text_tokens)


def mask_positions(pipe, max_text_tokens: int = 195) -> list[MaskPosition]:
    """The allowed tokens at telling positions: first code, first EOL, EOF, image end, text."""
    c = grid_constraint(pipe, max_text_tokens)
    w = c.w
    picks = [
        (1, "first token of the image"),
        (w, "last code of row 1"),
        (w + 1, "end of row 1"),
        (c.image_tokens + 1, "after the last row"),
        (c.image_tokens + 2, "after EOF"),
        (c.image_tokens + 3, "first interpretation token"),
        (c.image_tokens + 3 + c.min_text_tokens, "later in the interpretation"),
        (c.image_tokens + 3 + c.max_text_tokens, "text limit reached"),
    ]
    import torch

    phases = c.phases(torch.tensor([o for o, _ in picks])).tolist()
    out = []
    for (offset, label), phase in zip(picks, phases, strict=True):
        mask = c.allowed[phase].numpy()
        out.append(MaskPosition(offset, label, PHASE_NAMES[phase], int(mask.sum()), _ranges(mask)))
    return out


def mask_table(positions: list[MaskPosition]) -> str:
    """Fixed-width text: offset, position, phase, number allowed, allowed id ranges."""
    lines = [f"{'offset':>6}  {'position':<28}{'phase':<20}{'allowed':>8}  ids"]
    for p in positions:
        lines.append(f"{p.offset:>6}  {p.label:<28}{p.phase:<20}{p.allowed:>8}  {p.ranges}")
    return "\n".join(lines)


def mask_figure(pipe, max_text_tokens: int = 195) -> StaticFigure:
    """One bar per position over the whole vocabulary: allowed ids dark, forbidden pale."""
    import torch
    from matplotlib.figure import Figure

    c = grid_constraint(pipe, max_text_tokens)
    positions = mask_positions(pipe, max_text_tokens)
    phases = c.phases(torch.tensor([p.offset for p in positions])).tolist()
    t = pipe.builder.ids
    vocab = c.allowed.shape[1]
    # A single allowed id (EOL, EOF, ...) would be one pixel wide: draw every run at least
    # 1/120 of the axis so it stays visible.
    least = vocab / 120
    fig = Figure(figsize=(8, 0.42 * len(positions) + 1.4), dpi=100)
    ax = fig.add_axes((0.36, 0.2, 0.61, 0.74))
    for row, phase in enumerate(phases):
        mask = c.allowed[phase].numpy()
        ax.broken_barh([(0, vocab)], (row - 0.4, 0.8), color="#E8E8E8")
        where = np.flatnonzero(mask)
        breaks = np.flatnonzero(np.diff(where) > 1)
        starts = np.concatenate([[where[0]], where[breaks + 1]])
        ends = np.concatenate([where[breaks], [where[-1]]])
        runs = [(a, max(b - a + 1, least)) for a, b in zip(starts, ends, strict=True)]
        ax.broken_barh(runs, (row - 0.4, 0.8), color=OKABE_ITO["blue"])
    ax.set_xlim(0, vocab)
    ax.set_ylim(len(positions) - 0.5, -0.5)
    ax.set_yticks(range(len(positions)))
    ax.set_yticklabels([f"{p.label} ({p.phase})" for p in positions], fontsize=7)
    bounds = [0, t.text_vocab_size, t.visual_offset]
    for x in bounds[1:]:
        ax.axvline(x, color="black", lw=0.8, ls=":")
    ax.set_xticks([0, t.text_vocab_size, vocab])  # the special range is too narrow to label
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xlabel(
        f"token id: text 0-{t.text_vocab_size - 1} | special {t.text_vocab_size}-"
        f"{t.visual_offset - 1} | visual {t.visual_offset}-{vocab - 1} (blue = allowed)",
        fontsize=8,
    )
    summary = "; ".join(f"{p.label}: {p.allowed} allowed" for p in positions)
    return StaticFigure(
        matplotlib_png(fig),
        alt=f"Allowed-token masks of the grid constraint at {len(positions)} positions: {summary}",
        caption=(
            "What the constrained decoder lets the model choose, position by position (blue = "
            "allowed, gray = forbidden; single allowed ids drawn wider). Inside a row only visual tokens; at a row's end only EOL; then "
            "EOF, image end, and text, with EOS allowed once the interpretation has begun."
        ),
        width=720,
    )


def next_token_predictions(pipe, prefix_ids, k: int = 5) -> dict[str, list[tuple[str, float]]]:
    """The model's top-``k`` next tokens after an inference prefix, raw and after the mask.

    Returns ``{"raw": [(token, p), ...], "constrained": [...]}``: what the network alone
    predicts for the first generated token, and what the decoder may actually pick.
    """
    import torch

    c = grid_constraint(pipe)
    logits = _next_logits(pipe, prefix_ids)
    out = {}
    masked = c.mask(logits, torch.ones(1, dtype=torch.long))
    for name, scores in (("raw", logits), ("constrained", masked)):
        probs = torch.softmax(scores, dim=-1)[0]
        top = torch.topk(probs, k)
        out[name] = [
            (pipe.builder.tokenizer.convert_ids_to_tokens(int(i)), float(p))
            for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        ]
    return out


def _next_logits(pipe, prefix_ids):
    """The network's logits for the token after ``prefix_ids``: float ``(1, vocab)``."""
    import torch

    ids = torch.as_tensor(np.asarray(prefix_ids), dtype=torch.long)[None].to(pipe.device)
    with torch.inference_mode():
        return pipe.model(input_ids=ids, logits_to_keep=1).logits[:, -1, :].float()


def allowed_probability(pipe, prefix_ids) -> tuple[float, float]:
    """``(raw, uniform)`` for the first generated token: the probability the network alone puts
    on the tokens the grid rule allows there (the visual tokens), and the share of the
    vocabulary those tokens are (what a network with no idea of the layout would put there)."""
    import torch

    logits = _next_logits(pipe, prefix_ids)
    allowed = grid_constraint(pipe).allowed[PHASE_VISUAL, : logits.shape[-1]].to(logits.device)
    probs = torch.softmax(logits, dim=-1)[0]
    return float(probs[allowed].sum()), float(allowed.sum()) / logits.shape[-1]


def predictions_table(predictions: dict[str, list[tuple[str, float]]]) -> str:
    lines = []
    for name, rows in predictions.items():
        lines.append(f"{name}:")
        lines += [f"  {p:6.3f}  {token}" for token, p in rows]
    return "\n".join(lines)


# -- probabilities as colour ------------------------------------------------------------------


def text_probability_html(builder, text_ids, probabilities) -> str:
    """The interpretation token by token, each on a cividis background by its probability
    (dark = unlikely, yellow = likely; the number is in the tooltip and a scale follows)."""
    text_ids = np.asarray(text_ids).reshape(-1)
    probabilities = np.asarray(probabilities, dtype=float).reshape(-1)
    if len(text_ids) != len(probabilities):
        raise ValueError(f"{len(text_ids)} tokens but {len(probabilities)} probabilities")
    if len(text_ids) == 0:
        return "<p><i>(empty interpretation)</i></p>"
    rgb = colorize(probabilities[None, :], SEQUENTIAL_CMAP, 0.0, 1.0)[0]
    chips = []
    for token, p, (r, g, b) in zip(text_ids, probabilities, rgb, strict=True):
        text_colour = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "white"
        piece = html.escape(builder.decode_text([int(token)]))
        chips.append(
            f'<span title="p = {p:.3f}" style="background:rgb({r},{g},{b}); '
            f'color:{text_colour}; white-space:pre">{piece}</span>'
        )
    scale = colorize(np.linspace(0, 1, 5)[None, :], SEQUENTIAL_CMAP, 0.0, 1.0)[0]
    steps = "".join(
        f'<span style="background:rgb({r},{g},{b}); color:{"black" if v > 0.5 else "white"}; '
        f'padding:0 6px">{v:.2f}</span>'
        for v, (r, g, b) in zip(np.linspace(0, 1, 5), scale, strict=True)
    )
    return (
        f'<div class="progemu-token-probabilities" style="line-height:1.7">{"".join(chips)}</div>'
        f"<p style='font-size:85%'>Token probability: {steps} (mean "
        f"{probabilities.mean():.2f}, lowest {probabilities.min():.2f})</p>"
    )


# -- the stepper --------------------------------------------------------------------------------


def grid_progress_image(codes: np.ndarray, revealed: int, codebook_size: int, scale: int = 16):
    """RGB of the code grid with the first ``revealed`` codes coloured (cividis by code) and the
    rest white, each cell ``scale`` pixels wide."""
    h, w = codes.shape
    rgb = colorize(codes.astype(float), SEQUENTIAL_CMAP, 0.0, max(codebook_size - 1, 1))
    flat = rgb.reshape(h * w, 3).copy()
    flat[revealed:] = 255
    return np.kron(flat.reshape(h, w, 3), np.ones((scale, scale, 1), dtype=np.uint8))


class GenerationStepper(widgets.VBox):
    """Step through one generation token by token: the token, its probability, the grid filling.

    The generation is run once with the pipeline's own constrained sampler (same seed, same
    settings as in the explorer); the buttons then reveal it one token at a time.
    """

    def __init__(
        self,
        model,
        prior,
        prompt: str,
        *,
        seed: int = 0,
        temperature: float = 1.0,
        top_k: int | None = None,
        max_text_tokens: int = 24,
    ):
        self.model = model
        pipe = model.pipe
        self.result = pipe(
            prior,
            prompt,
            seed=seed,
            temperature=temperature,
            top_k=top_k,
            max_text_tokens=max_text_tokens,
        )
        self.builder = pipe.builder
        self.grid = pipe.grid
        self.kinds = token_kinds(self.builder, full_sequence(pipe, self.result))[
            -len(self.result.token_ids) :
        ]
        self.position = 0  # tokens revealed
        self.step_button = widgets.Button(description="Step", button_style="primary")
        self.step10_button = widgets.Button(description="Step 10")
        self.row_button = widgets.Button(description="Finish the image")
        self.reset_button = widgets.Button(description="Restart")
        self.token_label = widgets.HTML()
        self.grid_panel = FigurePanel(width=min(256, 16 * self.grid[1]))
        self.image_panel = FigurePanel(width=min(256, 16 * self.grid[1]))
        self.text = widgets.HTML()
        self.step_button.on_click(lambda _: self.step(1))
        self.step10_button.on_click(lambda _: self.step(10))
        self.row_button.on_click(lambda _: self.step(self._image_end() - self.position))
        self.reset_button.on_click(lambda _: self.reset())
        super().__init__(
            [
                widgets.HTML(model.notice_html()),
                widgets.HBox(
                    [self.step_button, self.step10_button, self.row_button, self.reset_button]
                ),
                self.token_label,
                widgets.HBox([self.grid_panel, self.image_panel]),
                self.text,
            ]
        )
        self.redraw()

    def _image_end(self) -> int:
        return self.grid[0] * (self.grid[1] + 1) + 2  # rows with EOL, then EOF and image end

    def step(self, n: int = 1) -> int:
        """Reveal ``n`` more tokens (stops at the end); returns the number revealed."""
        self.position = int(np.clip(self.position + max(n, 0), 0, len(self.result.token_ids)))
        self.redraw()
        return self.position

    def reset(self) -> None:
        self.position = 0
        self.redraw()

    def redraw(self) -> None:
        r, h, w = self.result, self.grid[0], self.grid[1]
        total = len(r.token_ids)
        if self.position == 0:
            self.token_label.value = (
                f"<p>Nothing generated yet. Press <b>Step</b>: the first token must be a visual "
                f"token ({total} tokens to come).</p>"
            )
        else:
            i = self.position - 1
            token = int(r.token_ids[i])
            name = self.builder.tokenizer.convert_ids_to_tokens(token)
            self.token_label.value = (
                f"<p>Token {self.position} of {total}: <code>{html.escape(name)}</code> "
                f"({html.escape(self.kinds[i])}), chosen with probability "
                f"<b>{float(r.token_probabilities[i]):.3f}</b>.</p>"
            )
        # Codes revealed so far: visual tokens among the first `position` generated tokens.
        visual = min(self.position - self.position // (w + 1), h * w)
        visual = max(visual, 0)
        self.grid_panel.show(
            grid_progress_image(r.codes, visual, self.builder.ids.codebook_size),
            alt=f"Token grid of {h} x {w} codes with {visual} filled in",
            caption=(
                f"{visual} of {h * w} image codes generated (cividis by code number; white = "
                "not yet). Rows fill left to right, then EOL starts the next row."
            ),
        )
        done_image = self.position >= self._image_end()
        shown = r.image if done_image else np.full_like(r.image, 255)
        self.image_panel.show(
            shown,
            alt="The decoded follow-up image" if done_image else "Blank: image not finished",
            caption=(
                "The VQ decoder turns the finished grid into the follow-up image."
                if done_image
                else "The image is decoded once its grid is complete."
            ),
        )
        n_text = max(0, self.position - self._image_end())
        text_ids = r.token_ids[self._image_end() : self._image_end() + n_text]
        text_ids = text_ids[text_ids < self.builder.ids.text_vocab_size]
        self.text.value = (
            "<p><b>Interpretation so far:</b> "
            f"{html.escape(self.builder.decode_text(text_ids)) or '<i>(none yet)</i>'}</p>"
        )
