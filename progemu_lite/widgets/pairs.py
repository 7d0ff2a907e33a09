"""Lesson 2 widgets: a course copy of the simulated ICG-CXR data and a pair browser."""

from __future__ import annotations

import html
import os
from collections import defaultdict
from pathlib import Path

import ipywidgets as widgets

from ..data.icgcxr import PairRecord, iter_pairs, load_pair_images
from ..phantom.findings import location_text
from ..phantom.progression import AnnotationEntry
from .figures import FigurePanel, difference_image

ALL_SPLITS = "(all)"


def course_dataset(
    patients: int = 12,
    pairs_per_patient: int = 2,
    size: int = 256,
    seed: int = 0,
    progress: bool = False,
    generator_version: int | None = None,
) -> Path:
    """The simulated ICG-CXR dataset of these settings under ``PROGEMU_HOME``; made if missing.

    Each combination of settings has its own folder, so a fast CI run never mixes with the
    classroom copy; an interrupted generation is finished on the next call.
    ``generator_version``: how the subtlest findings are drawn (None: the phantom's default;
    ``progemu-lite phantom --help``).
    """
    from ..paths import progemu_home
    from ..phantom.dataset import PhantomConfig, generate
    from ..phantom.signs import DEFAULT_GENERATOR_VERSION

    version = DEFAULT_GENERATOR_VERSION if generator_version is None else generator_version
    config = PhantomConfig(
        patients=patients,
        pairs_per_patient=pairs_per_patient,
        size=size,
        seed=seed,
        generator_version=version,
    )
    # Version 1 folders keep the name they had before versions could be chosen.
    name = f"phantom-{patients}x{pairs_per_patient}-{size}px-seed{seed}"
    if version != 1:
        name += f"-generator{version}"
    out = progemu_home() / "datasets" / name
    generate(out, config, progress=progress)
    return out


def dataset_summary(records: list[PairRecord]) -> str:
    """Counts of pairs, patients and annotated changes per split, as plain text."""
    from collections import Counter

    if not records:
        raise ValueError("no pairs to summarise")
    lines = []
    for split in sorted({str(r.split) for r in records}):
        chosen = [r for r in records if str(r.split) == split]
        patients = len({r.subject_id for r in chosen})
        lines.append(f"{split}: {len(chosen)} pairs from {patients} patients")
    directions = Counter(e.direction for r in records for e in (r.annotation or []))
    changes = ", ".join(f"{d} {directions[d]}" for d in sorted(directions))
    lines.append(f"annotated changes: {changes}")
    return "\n".join(lines)


def annotation_html(entries: list[AnnotationEntry] | None) -> str:
    """The expert annotation as a table: finding, location, direction, severity before/after."""
    if not entries:
        return "<p><i>No expert annotation in this pair.</i></p>"
    rows = "".join(
        "<tr>"
        f"<td>{html.escape(e.finding.replace('_', ' '))}</td>"
        f"<td>{html.escape(location_text(e.location) or '-')}</td>"
        f"<td>{html.escape(e.direction)}</td>"
        f"<td>{html.escape(e.severity_before)}</td>"
        f"<td>{html.escape(e.severity_after)}</td>"
        "</tr>"
        for e in entries
    )
    head = "<tr><th>Finding</th><th>Location</th><th>Change</th><th>Before</th><th>After</th></tr>"
    return f"<table>{head}{rows}</table>"


def pair_json_html(record: PairRecord) -> str:
    """The pair's JSON file exactly as stored, in a <pre> block."""
    return f"<pre>{html.escape(record.json_path.read_text(encoding='utf-8'))}</pre>"


def pair_texts_html(record: PairRecord) -> str:
    """Prompt, interpretation, interval and annotation of a pair, for display."""
    interval = record.time_interval
    days = "unknown" if interval is None else f"{interval} days"
    return (
        f"<p><b>Pair</b> {html.escape(record.pair_id)} &middot; <b>split</b> "
        f"{html.escape(str(record.split))} &middot; <b>interval</b> {html.escape(days)}</p>"
        f"<p><b>Prompt (progression description):</b> {html.escape(record.prompt)}</p>"
        f"<p><b>Interpretation (changes of findings):</b> {html.escape(record.interpretation)}</p>"
        f"<p><b>Expert annotation:</b></p>{annotation_html(record.annotation)}"
    )


class PairBrowser(widgets.VBox):
    """Browse an ICG-CXR folder: split -> patient -> pair; prior | follow-up | difference + texts."""

    def __init__(self, root: str | os.PathLike, image_width: int = 256):
        self.root = Path(root)
        self.records = list(iter_pairs(self.root))
        if not self.records:
            raise ValueError(f"no ICG-CXR pairs found under {self.root}")
        self._by_split: dict[str, dict[str, list[PairRecord]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for record in self.records:
            subject = record.subject_id or record.folder.parent.name
            self._by_split[str(record.split)][subject].append(record)
            self._by_split[ALL_SPLITS][subject].append(record)
        splits = sorted(s for s in self._by_split if s != ALL_SPLITS)
        self.split = widgets.Dropdown(description="Split", options=[ALL_SPLITS, *splits])
        self.patient = widgets.Dropdown(description="Patient")
        self.pair = widgets.Dropdown(description="Pair")
        self.prior_panel = FigurePanel(width=image_width)
        self.followup_panel = FigurePanel(width=image_width)
        self.difference_panel = FigurePanel(width=image_width)
        self.texts = widgets.HTML()
        self.json = widgets.HTML()
        self.shown: PairRecord | None = None
        self._busy = False
        self._fill_patients()
        self.split.observe(lambda _: self._cascade(self._fill_patients), names="value")
        self.patient.observe(lambda _: self._cascade(self._fill_pairs), names="value")
        self.pair.observe(lambda _: self.redraw(), names="value")
        super().__init__(
            [
                widgets.HBox([self.split, self.patient, self.pair]),
                widgets.HBox([self.prior_panel, self.followup_panel, self.difference_panel]),
                self.texts,
                self.json,
            ]
        )
        self.redraw()

    def _cascade(self, fill) -> None:
        """Refill the dependent dropdowns, then draw once (nested changes draw nothing)."""
        outer = not self._busy
        self._busy = True
        try:
            fill()
        finally:
            if outer:
                self._busy = False
        if outer:
            self.redraw()

    def _fill_patients(self) -> None:
        patients = sorted(self._by_split[self.split.value])
        self.patient.options = patients
        self.patient.value = patients[0]
        self._fill_pairs()

    def _fill_pairs(self) -> None:
        records = self._by_split[self.split.value][self.patient.value]
        self.pair.options = [(r.pair_id, r) for r in records]
        self.pair.value = records[0]

    def select(self, pair_id: str) -> PairRecord:
        """Show the pair with this id (sets all three dropdowns)."""
        for record in self.records:
            if record.pair_id == pair_id:
                self._busy = True
                try:
                    self.split.value = ALL_SPLITS
                    self.patient.value = record.subject_id or record.folder.parent.name
                    self._fill_pairs()
                    self.pair.value = record
                finally:
                    self._busy = False
                self.redraw()
                return record
        raise KeyError(f"no pair {pair_id!r} under {self.root}")

    def redraw(self) -> None:
        if self._busy:
            return
        record = self.pair.value
        prior, followup = load_pair_images(record)
        difference, limit = difference_image(prior, followup)
        self.prior_panel.show(
            prior,
            alt=f"Prior chest radiograph of pair {record.pair_id}",
            caption="Prior (reference) image.",
        )
        self.followup_panel.show(
            followup,
            alt=f"Follow-up chest radiograph of pair {record.pair_id}: {record.interpretation}",
            caption="Follow-up image (registered to the prior).",
        )
        self.difference_panel.show(
            difference,
            alt=f"Difference map follow-up minus prior of pair {record.pair_id}",
            caption=(
                f"Follow-up minus prior (PuOr): orange = denser on the follow-up, purple = "
                f"darker; full colour at {limit:.0f} gray levels. A faint overall tint comes from "
                "the two exposures differing."
            ),
        )
        self.texts.value = pair_texts_html(record)
        self.json.value = (
            f"<details><summary>{html.escape(record.json_path.name)}</summary>"
            f"{pair_json_html(record)}</details>"
        )
        self.shown = record
