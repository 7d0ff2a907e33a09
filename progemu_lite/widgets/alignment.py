"""Lesson 7 widgets: "Does the image show it?" Progression alignment read by the classifier.

The alignment classifier (:mod:`progemu_lite.evaluation.classifier`) reads each finding's
severity from an image. A counterfactual is *aligned* with its prompt when the classifier reads
the prompted finding at the severity the prompt asks for. This module scores systems (baselines
of :mod:`progemu_lite.evaluation.baselines`, and the model once its weights ship) with exactly
the protocol of the evaluation report, and draws what the lesson shows: one case's per-head
probabilities, ROC curves, a gallery of failures, the paper's table beside ours, and an explorer
widget (prior | output | true follow-up with the classifier's reading).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import ipywidgets as widgets
import numpy as np

from ..evaluation.baselines import Case, Output
from ..evaluation.classifier import (
    N_CLASSES,
    AlignmentClassifier,
    alignment_pairs,
    auroc,
    expected_head_state,
    f1_at,
)
from ..phantom.findings import FINDINGS, location_text
from .figures import OKABE_ITO, FigurePanel, StaticFigure, matplotlib_png

# The decision threshold of the paper-style F1: P(expected severity) >= 0.5 reads as aligned.
THRESHOLD = 0.5

# ProgEmu's reported ICG-CXR test results (Ma et al., MICCAI 2025; DESIGN.md section 3), keyed
# like the evaluation report's columns.
PAPER_RESULTS: dict[str, float] = {
    "frechet_distance": 29.21,
    "auroc": 0.792,
    "f1": 0.891,
    "bleu_3": 0.124,
    "meteor": 0.410,
    "rouge_l": 0.261,
}
PAPER_HEADERS: dict[str, str] = {
    "frechet_distance": "gFID / FD",
    "auroc": "AUROC",
    "f1": "F1",
    "bleu_3": "BLEU-3",
    "meteor": "METEOR",
    "rouge_l": "ROUGE-L",
}
# Why the two rows of the comparison cannot be compared, in the order a reader should meet them.
NOT_COMPARABLE: tuple[str, ...] = (
    "Data: the paper scores real MIMIC-CXR / CheXpert Plus follow-ups (ICG-CXR test split, "
    "credentialed access); ours are simulated phantom radiographs with a handful of findings.",
    "Classifier: the paper's alignment classifier is its own network trained on real images; "
    "ours is a small CNN trained here for seconds to minutes on simulated images. AUROC and F1 "
    "measure the system AND the classifier that reads it.",
    "gFID vs FD: the paper's gFID is the Fréchet distance in Inception-v3 features of real "
    "images; our FD is the Fréchet distance in our classifier's 128 features, so its scale has "
    "nothing to do with gFID (our true-follow-up row is 0 by construction).",
    "Protocol and size: our positives/negatives follow this package's documented protocol "
    "(expected severity against every other severity of the same head) on tens to hundreds of "
    "cases; the paper's exact protocol and its thousands of test pairs differ.",
    "Systems: the paper's row is the 8B ProgEmu; ours are baselines (and the small course model "
    "when its weights exist). Text metrics compare against simulated template interpretations.",
)

# Line styles beside the Okabe-Ito colours, so colour is never the only cue.
_STYLES = (
    (OKABE_ITO["blue"], "-"),
    (OKABE_ITO["vermillion"], "--"),
    (OKABE_ITO["green"], "-."),
    (OKABE_ITO["orange"], ":"),
    (OKABE_ITO["purple"], (0, (5, 1, 1, 1))),
    (OKABE_ITO["sky_blue"], (0, (1, 2))),
)


# ----------------------------------------------------------------------------------------------
# The classifier of the lesson


def course_classifier(
    root,
    *,
    epochs: int = 6,
    size: int | None = None,
    max_pairs: int = 1500,
    seed: int = 0,
    progress: bool = False,
) -> AlignmentClassifier:
    """The alignment classifier for dataset ``root``, trained on its train split and cached
    under ``PROGEMU_HOME/classifiers`` (one folder per dataset and settings): re-running a
    lesson loads it instead of training again. A cached folder that cannot be read is retrained.
    """
    from ..evaluation.commands import dataset_key, train_from_dataset
    from ..paths import progemu_home

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no dataset folder at {root}")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    name = f"lesson7-{dataset_key(root)}-{size or 'native'}px-{epochs}ep-{max_pairs}p-seed{seed}"
    folder = progemu_home() / "classifiers" / name
    try:
        return AlignmentClassifier.load(folder)
    except (FileNotFoundError, ValueError):
        pass
    return train_from_dataset(
        root, folder, size=size, epochs=epochs, max_pairs=max_pairs, seed=seed, progress=progress
    )


def classifier_summary(classifier: AlignmentClassifier) -> str:
    """How the classifier was trained and how well it reads held-out images, in plain words,
    with a warning when it barely beats guessing "absent" everywhere."""
    info = classifier.info
    lines = [
        f"Trained on {info.get('train_images', '?')} images ({info.get('train_pairs', '?')} pairs) "
        f"at {classifier.size}x{classifier.size} for {info.get('epochs', '?')} epochs."
    ]
    accuracy = info.get("val_severity_accuracy")
    majority = info.get("val_majority_accuracy")
    presence = info.get("val_presence_auroc")
    if accuracy is None:
        lines.append("No validation pairs: its quality is unknown.")
        return "\n".join(lines)
    lines.append(
        f"Validation: severity accuracy {accuracy:.3f} (guessing 'absent' everywhere: "
        f"{majority:.3f}); presence AUROC {presence:.3f}."
    )
    if accuracy - majority < 0.02 or presence < 0.75:
        lines.append(
            "WEAK CLASSIFIER: it barely beats guessing 'absent'. Every alignment number below "
            "measures this classifier as much as the systems it reads."
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The systems of the lesson


def course_systems(
    train_cases: list[Case],
    *,
    include_model: bool | None = False,
    fast: bool = False,
    seed: int = 0,
    max_text_tokens: int = 48,
):
    """``(systems, model)``: the true follow-up (the classifier's own upper bound), copy-prior
    and nearest-neighbour baselines, plus the course model when ``include_model``
    (:func:`progemu_lite.widgets.models.course_pipeline`: the shipped ``lite`` weights, or
    random weights with a loud notice). ``include_model=None``: include it exactly when the
    trained ``lite`` weights are shipped and ``fast`` is off (a random model's row is noise).
    ``model`` is the :class:`CourseModel` or None."""
    from ..evaluation.baselines import CopyPrior, ModelSystem, NearestNeighbour, TrueFollowup
    from .models import course_pipeline, lite_weights_shipped

    if include_model is None:
        include_model = lite_weights_shipped() and not fast
    systems: list = [TrueFollowup(), CopyPrior(), NearestNeighbour(train_cases)]
    model = None
    if include_model:
        model = course_pipeline(fast=fast, seed=seed)
        system = ModelSystem(
            model.pipe,
            name=f"model:{model.name}",
            folder=None,
            seed=seed,
            max_text_tokens=max_text_tokens,
        )
        system.progress = False
        system.description = "ProgEmu-Lite" + ("" if model.trained else " (RANDOM weights)")
        systems.append(system)
    return systems, model


# ----------------------------------------------------------------------------------------------
# Scoring systems the way the report does


@dataclass
class SystemReading:
    """One system's outputs and the classifier's reading of them."""

    name: str
    description: str
    outputs: list[Output]
    probabilities: np.ndarray  # (cases, heads, 4)
    scores: np.ndarray  # alignment pairs (positives and negatives), see alignment_pairs
    labels: np.ndarray
    positive: np.ndarray  # per case P(expected severity); NaN where no expectation is known

    @property
    def auroc(self) -> float:
        return auroc(self.scores, self.labels)

    @property
    def f1(self) -> float:
        return f1_at(self.scores, self.labels, THRESHOLD)

    @property
    def aligned(self) -> np.ndarray:
        """Per case: read as aligned (P(expected) >= threshold); False where unknown."""
        return np.nan_to_num(self.positive, nan=-1.0) >= THRESHOLD


@dataclass
class AlignmentStudy:
    cases: list[Case]
    classifier: AlignmentClassifier
    expected: list[tuple[int, int] | None]
    readings: dict[str, SystemReading] = field(default_factory=dict)

    @property
    def known(self) -> list[int]:
        """Indices of the cases whose expected head state is known (the scored ones)."""
        return [i for i, e in enumerate(self.expected) if e is not None]

    def failures(self, system: str, *, aligned: bool, limit: int | None = None) -> list[int]:
        """Cases the classifier reads as aligned (``aligned=True``) or misaligned for
        ``system``, the most confident first."""
        reading = self.readings[system]
        chosen = [i for i in self.known if bool(reading.aligned[i]) == aligned]
        chosen.sort(key=lambda i: -reading.positive[i] if aligned else reading.positive[i])
        return chosen[:limit]


def alignment_study(cases, systems, classifier: AlignmentClassifier) -> AlignmentStudy:
    """Run every system on ``cases`` (a :class:`CaseSet` or list of :class:`Case`) and read
    the outputs with the classifier (the report's alignment protocol)."""
    from ..evaluation.report import CaseSet, run_system

    case_set = cases if isinstance(cases, CaseSet) else CaseSet(list(cases), Path("."), None)
    if not case_set.cases:
        raise ValueError("no cases to score")
    if not systems:
        raise ValueError("no systems to score")
    expected = [
        expected_head_state(c.progression, c.annotation) if c.progression else None
        for c in case_set.cases
    ]
    study = AlignmentStudy(case_set.cases, classifier, expected)
    for system in systems:
        outputs, _ = run_system(system, case_set, None)
        probs = classifier.predict([o.image for o in outputs])
        scores, labels, _ = alignment_pairs(probs, expected)
        positive = np.array(
            [
                float("nan") if e is None else float(probs[i, e[0], e[1]])
                for i, e in enumerate(expected)
            ]
        )
        study.readings[system.name] = SystemReading(
            system.name,
            getattr(system, "description", ""),
            outputs,
            probs,
            scores,
            labels,
            positive,
        )
    return study


def _fmt(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def alignment_table(study: AlignmentStudy) -> str:
    """AUROC, F1 and how many cases each system's images read as aligned, as plain text."""
    known = study.known
    rows = [("system", "AUROC", "F1", "aligned cases")]
    for name, reading in study.readings.items():
        count = int(reading.aligned[known].sum()) if known else 0
        rows.append((name, _fmt(reading.auroc), _fmt(reading.f1), f"{count}/{len(known)}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1);
    tied scores move both rates at once (so the area under the steps is :func:`auroc`)."""
    scores, labels = np.asarray(scores, float), np.asarray(labels)
    n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("a ROC curve needs both positives and negatives")
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tp = np.cumsum(labels == 1)[last_of_tie]
    fp = np.cumsum(labels == 0)[last_of_tie]
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]


# ----------------------------------------------------------------------------------------------
# Figures


def _severity_word(finding: str, severity: int) -> str:
    return "absent" if severity == 0 else FINDINGS[finding].severity_words[severity - 1]


def head_name(head: tuple[str, str | None]) -> str:
    finding, side = head
    return " ".join(w for w in (location_text(side), FINDINGS[finding].text) if w)


def head_probability_figure(
    classifier: AlignmentClassifier,
    image: np.ndarray,
    expected: tuple[int, int] | None = None,
    title: str = "",
) -> StaticFigure:
    """Stacked bars: for each head, the probability of each severity 0..3 (cividis, with the
    severity written on each wide segment); the prompted head is starred and its expected
    severity outlined."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    probs = classifier.predict([image])[0]
    heads = classifier.heads
    colours = colormaps["cividis"](np.linspace(0.0, 1.0, N_CLASSES))
    fig = Figure(figsize=(7.5, 0.35 * len(heads) + 1.3))
    ax = fig.add_subplot()
    y = np.arange(len(heads))[::-1]
    left = np.zeros(len(heads))
    for s in range(N_CLASSES):
        ax.barh(y, probs[:, s], left=left, color=colours[s], edgecolor="white", label=f"{s}")
        for h in range(len(heads)):
            if probs[h, s] > 0.12:
                ax.text(
                    left[h] + probs[h, s] / 2,
                    y[h],
                    str(s),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if s < 2 else "black",
                )
        left += probs[:, s]
    labels = [head_name(h) for h in heads]
    if expected is not None:
        head, severity = expected
        labels[head] = "★ " + labels[head]
        start = probs[head, :severity].sum()
        ax.barh(
            y[head],
            probs[head, severity],
            left=start,
            fill=False,
            edgecolor="black",
            linewidth=2.0,
        )
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability of each severity (0 = absent ... 3 = the finding's largest)")
    ax.legend(
        title="severity",
        ncol=4,
        fontsize=7,
        title_fontsize=7,
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        frameon=False,
    )
    if title:
        ax.set_title(title, fontsize=9, loc="left")
    fig.tight_layout()
    reading = "; ".join(
        f"{labels[h]}: most likely {_severity_word(heads[h][0], int(np.argmax(probs[h])))} "
        f"({probs[h].max():.2f})"
        for h in range(len(heads))
    )
    caption = (
        "The classifier's severity probabilities for each finding and side (one bar per head, "
        "severities 0-3 in cividis). "
        + (
            f"★ marks the prompted head; the outlined segment is the severity the prompt asks "
            f"for ({_severity_word(heads[expected[0]][0], expected[1])}, P = "
            f"{probs[expected[0], expected[1]]:.2f})."
            if expected is not None
            else ""
        )
    )
    return StaticFigure(
        matplotlib_png(fig), alt="Severity probabilities per head. " + reading, caption=caption
    )


def roc_figure(study: AlignmentStudy, systems: list[str] | None = None) -> StaticFigure:
    """ROC curves of the alignment pairs of each system (Okabe-Ito colours and line styles)."""
    from matplotlib.figure import Figure

    names = systems or list(study.readings)
    fig = Figure(figsize=(4.8, 4.6))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#999999", linestyle=(0, (1, 3)), linewidth=1, label="chance")
    described = []
    for k, name in enumerate(names):
        reading = study.readings[name]
        colour, style = _STYLES[k % len(_STYLES)]
        fpr, tpr = roc_curve(reading.scores, reading.labels)
        ax.plot(
            fpr,
            tpr,
            color=colour,
            linestyle=style,
            linewidth=2,
            label=f"{name} (AUROC {_fmt(reading.auroc)})",
        )
        described.append(f"{name}: AUROC {_fmt(reading.auroc)}")
    ax.set_xlabel("false-positive rate (incompatible severities read as shown)")
    ax.set_ylabel("true-positive rate (prompted severity read as shown)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    n = len(study.known)
    return StaticFigure(
        matplotlib_png(fig),
        alt="ROC curves of progression alignment. " + "; ".join(described),
        caption=(
            f"ROC of progression alignment over {n} cases (one positive and three negatives each): "
            "each line is a system, told apart by colour AND line style. The dotted diagonal is "
            "chance."
        ),
    )


def failure_gallery(
    study: AlignmentStudy, system: str, *, aligned: bool, limit: int = 4
) -> StaticFigure | None:
    """Prior | the system's image | true follow-up for the cases the classifier reads as
    ``aligned`` (True) or misaligned (False) for ``system``; None when there are none."""
    from matplotlib.figure import Figure

    picks = study.failures(system, aligned=aligned, limit=limit)
    if not picks:
        return None
    reading = study.readings[system]
    heads = study.classifier.heads
    # The true follow-up's own row would show the same image twice.
    same_as_truth = all(
        np.array_equal(reading.outputs[i].image, study.cases[i].followup) for i in picks
    )
    columns = 2 if same_as_truth else 3
    fig = Figure(figsize=(2.4 * columns, 2.75 * len(picks)))
    grid = fig.subplots(len(picks), columns, squeeze=False)
    described = []
    for row, i in enumerate(picks):
        case = study.cases[i]
        head, severity = study.expected[i]
        probs = reading.probabilities[i, head]
        read = int(np.argmax(probs))
        finding = heads[head][0]
        images = [("prior", case.prior), (f"{system}", reading.outputs[i].image)]
        if not same_as_truth:
            images.append(("true follow-up", case.followup))
        for col, (title, image) in enumerate(images):
            ax = grid[row, col]
            ax.imshow(image, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title, fontsize=8)
        grid[row, 0].set_ylabel(case.pair_id, fontsize=7)
        text = (
            f"asks: {head_name(heads[head])} {_severity_word(finding, severity)}; "
            f"read: {_severity_word(finding, read)} (P(asked) = {probs[severity]:.2f})"
        )
        grid[row, 1].set_xlabel(text, fontsize=7)
        described.append(f"{case.pair_id}, prompt '{case.prompt}': {text}")
    fig.tight_layout()
    verdict = "aligned" if aligned else "misaligned"
    return StaticFigure(
        matplotlib_png(fig),
        alt=f"Cases where {system} is read as {verdict}. " + " | ".join(described),
        caption=(
            f"{len(picks)} case(s) the classifier reads as {verdict} for {system} (P of the "
            f"prompted severity {'>=' if aligned else '<'} {THRESHOLD}). Each row: prior, "
            f"{system}'s image{'' if same_as_truth else ', true follow-up'}; below the second "
            "image, what the prompt asks and what the classifier reads."
        ),
    )


# ----------------------------------------------------------------------------------------------
# The paper's table beside ours


def paper_comparison(rows: list[dict]) -> str:
    """The paper's reported row and our rows (from :func:`evaluation.report.evaluate`'s
    ``rows``) on the paper's six columns, as plain text. Not comparable: see NOT_COMPARABLE."""
    keys = list(PAPER_RESULTS)
    table = [["system", *(PAPER_HEADERS[k] for k in keys)]]
    table.append(["ProgEmu (paper, real ICG-CXR)", *(f"{PAPER_RESULTS[k]:.3f}" for k in keys)])
    for row in rows:
        metrics = row["metrics"]
        table.append(
            [f"{row['system']} (ours, simulated)"]
            + [_fmt(metrics.get(k, {}).get("value", float("nan"))) for k in keys]
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in table
    )


def comparability_html() -> str:
    """Why the paper's numbers and ours must not be compared, as an HTML list."""
    items = "".join(f"<li>{html.escape(reason)}</li>" for reason in NOT_COMPARABLE)
    return (
        "<p><b>These numbers are not comparable.</b> Read the two rows as two different "
        f"experiments:</p><ul>{items}</ul>"
    )


# ----------------------------------------------------------------------------------------------
# The explorer widget


def reading_html(study: AlignmentStudy, system: str, index: int) -> str:
    """The classifier's reading of one system's image of one case: prompt, the prompted head's
    probabilities, and the verdict."""
    case = study.cases[index]
    reading = study.readings[system]
    expected = study.expected[index]
    parts = [
        f"<p><b>Prompt:</b> {html.escape(case.prompt)}</p>",
        f"<p><b>{html.escape(system)} interpretation:</b> "
        f"{html.escape(reading.outputs[index].text or '(empty)')}</p>",
    ]
    if expected is None:
        parts.append("<p><i>No expected severity is known for this case: not scored.</i></p>")
        return "".join(parts)
    head, severity = expected
    finding = study.classifier.heads[head][0]
    probs = reading.probabilities[index, head]
    cells = "".join(
        f"<td style='text-align:right'>{'<b>' if s == severity else ''}{probs[s]:.2f}"
        f"{'</b>' if s == severity else ''}</td>"
        for s in range(N_CLASSES)
    )
    heads_row = "".join(
        f"<th>{html.escape(_severity_word(finding, s))}{' (asked)' if s == severity else ''}</th>"
        for s in range(N_CLASSES)
    )
    aligned = bool(reading.aligned[index])
    verdict = (
        f"<span style='color:{OKABE_ITO['blue']}'>✔ aligned</span>"
        if aligned
        else f"<span style='color:{OKABE_ITO['vermillion']}'>✘ misaligned</span>"
    )
    parts.append(
        f"<p><b>Classifier reading of {html.escape(head_name(study.classifier.heads[head]))}:</b>"
        f"</p><table><tr>{heads_row}</tr><tr>{cells}</tr></table>"
        f"<p>P(asked severity) = {probs[severity]:.2f} &rarr; {verdict} (threshold "
        f"{THRESHOLD}).</p>"
    )
    return "".join(parts)


class AlignmentExplorer(widgets.VBox):
    """Pick a case and a system: prior | the system's output | true follow-up, and how the
    classifier reads the output for the prompted finding."""

    def __init__(self, study: AlignmentStudy, image_width: int = 200):
        if not study.readings:
            raise ValueError("the study has no systems to explore")
        self.study = study
        self.case = widgets.Dropdown(
            description="Case",
            options=[(f"{c.pair_id}: {c.prompt[:60]}", i) for i, c in enumerate(study.cases)],
            layout=widgets.Layout(width="520px"),
        )
        self.system = widgets.Dropdown(description="System", options=list(study.readings))
        self.prior_panel = FigurePanel(width=image_width)
        self.output_panel = FigurePanel(width=image_width)
        self.followup_panel = FigurePanel(width=image_width)
        self.reading = widgets.HTML()
        self.case.observe(lambda _: self.redraw(), names="value")
        self.system.observe(lambda _: self.redraw(), names="value")
        super().__init__(
            [
                widgets.HBox([self.case, self.system]),
                widgets.HBox([self.prior_panel, self.output_panel, self.followup_panel]),
                self.reading,
            ]
        )
        self.redraw()

    def redraw(self) -> None:
        i, name = self.case.value, self.system.value
        case = self.study.cases[i]
        output = self.study.readings[name].outputs[i]
        self.prior_panel.show(
            case.prior, alt=f"Prior radiograph of {case.pair_id}", caption="Prior."
        )
        self.output_panel.show(
            output.image,
            alt=f"Image of {name} for {case.pair_id}, prompt: {case.prompt}",
            caption=f"{name}'s follow-up.",
        )
        self.followup_panel.show(
            case.followup,
            alt=f"True follow-up radiograph of {case.pair_id}: {case.reference}",
            caption="True follow-up.",
        )
        self.reading.value = reading_html(self.study, name, i)
