"""Lesson 6 widgets: n-gram scores against finding-level scores, and an interactive grader.

Text scores come from :mod:`progemu_lite.evaluation.text_metrics` (pycocoevalcap, as the paper),
clinical correctness from :mod:`progemu_lite.evaluation.finding_scores` (the rule-based labeler
against the expert annotation). Highlights use Okabe-Ito colours AND a word (matched,
hallucinated, omitted), so nothing depends on telling colours apart.
"""

from __future__ import annotations

import html
import shutil
from dataclasses import dataclass, field

import ipywidgets as widgets

from ..evaluation.finding_scores import CaseScore, score_case, summarize
from ..evaluation.labeler import LabeledFinding
from ..evaluation.text_metrics import corpus_text_metrics
from ..phantom.findings import location_text
from .figures import OKABE_ITO

TYPE_YOUR_OWN = "(type your own)"
SHOWN_METRICS = ("bleu_1", "bleu_3", "meteor", "rouge_l")


@dataclass(frozen=True)
class GradingCase:
    """A reference interpretation, its expert annotation, and candidate interpretations."""

    reference: str
    annotation: list[dict]
    candidates: dict[str, str] = field(default_factory=dict)


_REFERENCE = "New moderate left pleural effusion. Stable mild cardiomegaly. No pneumothorax."
GRADING_EXAMPLE = GradingCase(
    reference=_REFERENCE,
    annotation=[
        {
            "finding": "pleural_effusion",
            "location": "left",
            "direction": "new",
            "severity_before": "absent",
            "severity_after": "moderate",
        },
        {
            "finding": "cardiomegaly",
            "location": None,
            "direction": "stable",
            "severity_before": "mild",
            "severity_after": "mild",
        },
    ],
    candidates={
        "copy of the reference": _REFERENCE,
        "paraphrase (clinically correct)": (
            "Interval development of a moderate-sized effusion on the left side. "
            "The heart remains mildly enlarged, unchanged. No pneumothorax."
        ),
        "negation flip (one word)": (
            "No new moderate left pleural effusion. Stable mild cardiomegaly. No pneumothorax."
        ),
        "wrong side": (
            "New moderate right pleural effusion. Stable mild cardiomegaly. No pneumothorax."
        ),
        "hallucination": (
            "New moderate left pleural effusion. Stable mild cardiomegaly. "
            "New small right pneumothorax."
        ),
        "omission": "New moderate left pleural effusion. No pneumothorax.",
    },
)


def java_available() -> bool:
    """METEOR runs in Java (Debian ``default-jre-headless``)."""
    return shutil.which("java") is not None


@dataclass
class Grade:
    """The scores of one candidate interpretation."""

    candidate: str
    text_scores: dict[str, float]
    case: CaseScore

    @property
    def finding_f1(self) -> float:
        return summarize([self.case])["micro"]["f1"]


def grade_many(
    candidates: list[str], reference: str, annotation: list[dict], include_meteor: bool = True
) -> list[Grade]:
    """Score every candidate against one reference and annotation (METEOR: one JVM for all)."""
    if not candidates:
        raise ValueError("no candidate interpretations to grade")
    scores = corpus_text_metrics(
        candidates, [reference] * len(candidates), include_meteor=include_meteor, per_case=True
    )["per_case"]
    grades = []
    for i, text in enumerate(candidates):
        text_scores = {name: values[i] for name, values in scores.items() if name != "cider"}
        grades.append(Grade(text, text_scores, score_case(text, annotation)))
    return grades


def compare_interpretations(
    case: GradingCase = GRADING_EXAMPLE, include_meteor: bool = True
) -> dict[str, Grade]:
    """Every candidate of ``case`` graded, by name."""
    names = list(case.candidates)
    grades = grade_many(
        [case.candidates[n] for n in names], case.reference, case.annotation, include_meteor
    )
    return dict(zip(names, grades, strict=True))


def score_table(grades: dict[str, Grade]) -> str:
    """A fixed-width text table (3 decimals): n-gram scores beside finding F1 and errors."""
    metrics = [m for m in SHOWN_METRICS if any(m in g.text_scores for g in grades.values())]
    width = max(len(name) for name in grades) + 2
    header = "candidate".ljust(width) + "".join(m.rjust(9) for m in metrics)
    header += "finding_f1".rjust(11) + "halluc".rjust(8) + "omit".rjust(6)
    lines = [header]
    for name, g in grades.items():
        row = name.ljust(width) + "".join(f"{g.text_scores[m]:9.3f}" for m in metrics)
        row += f"{g.finding_f1:11.3f}{g.case.fp:8d}{g.case.fn:6d}"
        lines.append(row)
    return "\n".join(lines)


def _finding_words(finding: str, location: str | None, direction: str | None) -> str:
    parts = [direction or "(no change stated)", location_text(location), finding.replace("_", " ")]
    return " ".join(p for p in parts if p)


def labeler_html(findings: list[LabeledFinding]) -> str:
    """What the labeler read in a text, one row per finding."""
    if not findings:
        return "<p><i>The labeler found no findings in this text.</i></p>"
    head = (
        "<tr><th>Finding</th><th>Location</th><th>Change</th><th>Certainty</th>"
        "<th>Severity after</th><th>Sentence</th></tr>"
    )
    rows = "".join(
        "<tr>"
        f"<td>{html.escape(f.finding.replace('_', ' '))}</td>"
        f"<td>{html.escape(location_text(f.location) or '-')}</td>"
        f"<td>{html.escape(f.direction or '-')}</td>"
        f"<td>{html.escape(f.certainty)}</td>"
        f"<td>{html.escape(f.severity_after or '-')}</td>"
        f"<td>{html.escape(f.sentence)}</td>"
        "</tr>"
        for f in findings
    )
    return f"<table>{head}{rows}</table>"


def _badge(kind: str, color: str, text: str) -> str:
    return (
        f'<li class="progemu-{kind}"><span style="border-left: 6px solid {color}; '
        f'padding-left: 4px"><b>{kind}:</b> {html.escape(text)}</span></li>'
    )


def findings_html(case: CaseScore) -> str:
    """Matched, hallucinated and omitted findings as a labelled, colour-coded list."""
    items = [
        _badge("matched", OKABE_ITO["blue"], _finding_words(a.finding, a.location, a.direction))
        for a, _ in case.matched
    ]
    items += [
        _badge(
            "hallucinated",
            OKABE_ITO["vermillion"],
            _finding_words(c.finding, c.location, c.direction) + f' ("{c.sentence}")',
        )
        for c in case.hallucinated
    ]
    items += [
        _badge("omitted", OKABE_ITO["orange"], _finding_words(a.finding, a.location, a.direction))
        for a in case.omitted
    ]
    return "<ul style='list-style: none; padding-left: 0'>" + "".join(items) + "</ul>"


def grade_html(grade: Grade) -> str:
    scores = " &middot; ".join(
        f"<b>{name.upper().replace('_', '-')}</b> {grade.text_scores[name]:.3f}"
        for name in SHOWN_METRICS
        if name in grade.text_scores
    )
    return (
        f"<p>{scores} &middot; <b>finding F1</b> {grade.finding_f1:.3f}</p>"
        f"{findings_html(grade.case)}"
        "<details><summary>What the labeler read</summary>"
        f"{labeler_html(grade.case.claims)}</details>"
    )


class InterpretationGrader(widgets.VBox):
    """Type or pick an interpretation; Grade shows its n-gram scores and finding-level result."""

    def __init__(self, case: GradingCase = GRADING_EXAMPLE, include_meteor: bool | None = None):
        self.case = case
        if include_meteor is None:
            include_meteor = java_available()
        self.pick = widgets.Dropdown(
            description="Example", options=[*case.candidates, TYPE_YOUR_OWN]
        )
        self.text = widgets.Textarea(
            description="Interpretation",
            layout=widgets.Layout(width="640px", height="80px"),
            style={"description_width": "100px"},
        )
        self.meteor = widgets.Checkbox(
            description="METEOR (starts Java, a few seconds)",
            value=include_meteor,
            disabled=not java_available(),
        )
        self.grade_button = widgets.Button(description="Grade", button_style="primary")
        self.reference = widgets.HTML(
            f"<p><b>Reference:</b> {html.escape(case.reference)}</p>"
            "<details><summary>Expert annotation</summary>"
            f"<pre>{html.escape(_annotation_lines(case.annotation))}</pre></details>"
        )
        self.result = widgets.HTML()
        self.last: Grade | None = None
        self.pick.observe(self._on_pick, names="value")
        self.grade_button.on_click(lambda _: self.grade())
        super().__init__(
            [
                self.reference,
                self.pick,
                self.text,
                widgets.HBox([self.grade_button, self.meteor]),
                self.result,
            ]
        )
        self._on_pick(None)

    def _on_pick(self, _change) -> None:
        if self.pick.value != TYPE_YOUR_OWN:
            self.text.value = self.case.candidates[self.pick.value]

    def grade(self) -> Grade:
        text = self.text.value
        if not text.strip():
            self.result.value = "<p><b>Type an interpretation first.</b></p>"
            raise ValueError("empty interpretation: type one or pick an example")
        self.last = grade_many(
            [text], self.case.reference, self.case.annotation, self.meteor.value
        )[0]
        self.result.value = grade_html(self.last)
        return self.last


def _annotation_lines(annotation: list[dict]) -> str:
    return "\n".join(
        f"{e['finding']} {e.get('location') or ''}: {e['direction']} "
        f"({e.get('severity_before')} -> {e.get('severity_after')})"
        for e in annotation
    )
