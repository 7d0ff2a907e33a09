"""Lesson 5: the counterfactual explorer, the course's main app.

Pick a simulated patient (or upload a PNG or DICOM prior), choose a progression (finding,
location, direction, severity: the prompt is written by the phantom's own text generator) or
type one, set the sampling, press **Generate**: prior | counterfactual | difference, the
interpretation with its findings highlighted (the course labeler) and each token's probability
as colour, and N samples with different random draws side by side to show the model's
uncertainty. Runs headless: set values, call ``generate_button.click()``.
"""

from __future__ import annotations

import html
import io
import time
from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np

from ..evaluation.labeler import label_report
from ..phantom.findings import FINDINGS, PROGRESSION_DIRECTIONS, finding_spec, location_text
from ..phantom.state import ChestState
from .figures import OKABE_ITO, FigurePanel, difference_image, mean_pairwise_difference
from .grading import labeler_html
from .tokens import text_probability_html

UPLOADED = "(uploaded image)"


@dataclass(frozen=True)
class SimulatedPrior:
    """A simulated patient's prior radiograph and the findings it shows."""

    name: str
    image: np.ndarray  # uint8 (size, size)
    state: ChestState
    seed: int


def simulated_priors(count: int = 4, size: int = 128, seed: int = 0) -> list[SimulatedPrior]:
    """``count`` simulated patients' prior radiographs (anatomy, findings, exposure sampled)."""
    from ..phantom.anatomy import sample_patient
    from ..phantom.progression import sample_prior_state
    from ..phantom.render import PatientRenderer, sample_acquisition

    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    priors = []
    for k in range(count):
        rng = np.random.default_rng([seed, k])
        anatomy = sample_patient(rng)
        state = sample_prior_state(rng)
        image = PatientRenderer(anatomy, size).render(state, sample_acquisition(rng)).image
        priors.append(SimulatedPrior(f"patient {k}: {describe_state(state)}", image, state, seed))
    return priors


def describe_state(state: ChestState) -> str:
    """``moderate left pleural effusion, mild cardiomegaly`` or ``no findings``."""
    parts = []
    for name, spec in FINDINGS.items():
        for location in spec.locations:
            severity = state.severity(name, location)
            if severity:
                where = location_text(location)
                parts.append(
                    " ".join(p for p in (spec.severity_word(severity), where, spec.text) if p)
                )
    return ", ".join(parts) or "no findings"


def progression_prompt(
    prior_state: ChestState, finding: str, location, direction: str, severity: int, seed: int = 0
) -> str:
    """The progression prompt in the phantom's own words (ValueError if impossible from
    ``prior_state``, e.g. a new effusion where there already is one)."""
    from ..phantom.progression import Progression
    from ..phantom.text import prompt_text

    if direction == "resolved":
        severity = 0
    progression = Progression(finding, location, direction, int(severity))
    return prompt_text(progression, prior_state, np.random.default_rng(seed))


def read_upload(name: str, content: bytes, size: int) -> np.ndarray:
    """An uploaded PNG/JPEG or DICOM as a uint8 (size, size) prior. DICOM is de-identified
    (PS3.15 Basic Profile) before its pixels are read; errors name the problem."""
    from ..model.pipeline import prepare_image

    if not content:
        raise ValueError(f"the uploaded file {name!r} is empty")
    if name.lower().endswith((".dcm", ".dicom")) or content[128:132] == b"DICM":
        import pydicom

        from ..data.deid import Deidentifier
        from ..data.dicom import read_radiograph
        from .radiographs import COURSE_SALT

        try:
            dataset = pydicom.dcmread(io.BytesIO(content))
        except Exception as err:  # pydicom raises several types for a broken file
            raise ValueError(f"{name} is not a readable DICOM file: {err}") from err
        dataset, _ = Deidentifier(salt=COURSE_SALT).deidentify(dataset)
        pixels = read_radiograph(dataset, size).pixels
        return prepare_image(pixels, size, what=f"uploaded {name}")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(content)) as im:
            im.load()
            array = np.asarray(
                im if im.mode in ("L", "RGB", "RGBA", "I;16", "I") else im.convert("L")
            )
    except UnidentifiedImageError as err:
        raise ValueError(f"{name} is neither a DICOM file nor an image PIL can read") from err
    return prepare_image(array, size, what=f"uploaded {name}")


def findings_badges_html(text: str) -> str:
    """What the labeler reads in a generated text, as Okabe-Ito badges with words
    (claims blue, pertinent negatives sky blue, uncertain ones orange)."""
    findings = label_report(text)
    if not findings:
        return "<p><i>The labeler finds no findings in this text.</i></p>"
    items = []
    for f in findings:
        if f.certainty == "uncertain":
            kind, colour = "uncertain", OKABE_ITO["orange"]
        elif f.is_claim:
            kind, colour = "claimed", OKABE_ITO["blue"]
        else:
            kind, colour = "negated", OKABE_ITO["sky_blue"]
        words = " ".join(
            p
            for p in (f.direction or "", location_text(f.location), f.finding.replace("_", " "))
            if p
        )
        items.append(
            f'<li class="progemu-{kind}"><span style="border-left: 6px solid {colour}; '
            f'padding-left: 4px"><b>{kind}:</b> {html.escape(words)}</span></li>'
        )
    return "<ul style='list-style: none; padding-left: 0'>" + "".join(items) + "</ul>"


def _finding_words(f) -> str:
    """``new right pleural effusion`` for a labeled finding (direction, side, name)."""
    direction = None if f.direction == "absent" else f.direction
    return " ".join(w for w in (direction, f.laterality, f.finding.replace("_", " ")) if w)


class CounterfactualExplorer(widgets.VBox):
    """Prior + progression -> counterfactual follow-up and interpretation, N samples at a time."""

    def __init__(
        self,
        model,
        *,
        patients: int = 4,
        samples: int = 2,
        max_text_tokens: int = 48,
        seed: int = 0,
        image_width: int = 192,
    ):
        self.model = model
        self.pipe = model.pipe
        size = self.pipe.image_size
        self.priors = simulated_priors(patients, size, seed)
        self.max_text_tokens = max_text_tokens
        self.uploaded: np.ndarray | None = None
        self.results: list = []
        self.seconds = 0.0
        self.runs = 0
        style = {"description_width": "110px"}

        self.patient = widgets.Dropdown(
            description="Prior",
            options=[(p.name, i) for i, p in enumerate(self.priors)],
            style=style,
            layout=widgets.Layout(width="520px"),
        )
        self.upload = widgets.FileUpload(
            accept=".png,.jpg,.jpeg,.dcm,.dicom", multiple=False, description="Upload prior"
        )
        self.finding = widgets.Dropdown(
            description="Finding", options=[(s.text, n) for n, s in FINDINGS.items()], style=style
        )
        self.location = widgets.Dropdown(description="Location", style=style)
        self.direction = widgets.Dropdown(
            description="Direction", options=list(PROGRESSION_DIRECTIONS), style=style
        )
        self.severity = widgets.IntSlider(
            description="Severity", min=1, max=3, value=2, style=style, continuous_update=False
        )
        self.prompt = widgets.Textarea(
            description="Prompt", style=style, layout=widgets.Layout(width="640px", height="60px")
        )
        self.temperature = widgets.FloatSlider(
            description="Temperature", min=0.0, max=2.0, step=0.1, value=1.0, style=style
        )
        self.top_k = widgets.IntSlider(
            description="Top-k", min=1, max=2048, value=2048, style=style
        )
        self.guidance = widgets.FloatSlider(
            description="Guidance scale", min=1.0, max=5.0, step=0.5, value=1.0, style=style
        )
        self.seed = widgets.IntText(description="Seed", value=seed, style=style)
        self.samples = widgets.IntSlider(
            description="Samples", min=1, max=6, value=samples, style=style
        )
        self.generate_button = widgets.Button(
            description="Generate", button_style="primary", icon="play"
        )
        self.progress = widgets.IntProgress(min=0, max=3, value=0, description="")
        self.status = widgets.HTML("<span class='progemu-status'>Ready.</span>")
        self.prior_panel = FigurePanel(width=image_width)
        self.counterfactual_panel = FigurePanel(width=image_width)
        self.difference_panel = FigurePanel(width=image_width)
        self.interpretation = widgets.HTML()
        self.samples_box = widgets.HBox()

        self._set_locations()
        self.finding.observe(lambda _: (self._set_locations(), self._write_prompt()), names="value")
        for control in (self.location, self.direction, self.severity):
            control.observe(lambda _: self._write_prompt(), names="value")
        self.patient.observe(self._on_patient, names="value")
        self.direction.observe(self._on_direction, names="value")
        self.upload.observe(self._on_upload, names="value")
        self.generate_button.on_click(lambda _: self._on_generate())
        super().__init__(
            [
                widgets.HTML(model.notice_html()),
                widgets.HBox([self.patient, self.upload]),
                widgets.HBox([self.finding, self.location]),
                widgets.HBox([self.direction, self.severity]),
                self.prompt,
                widgets.HBox([self.temperature, self.top_k]),
                widgets.HBox([self.guidance, self.seed, self.samples]),
                widgets.HBox([self.generate_button, self.progress, self.status]),
                widgets.HBox([self.prior_panel, self.counterfactual_panel, self.difference_panel]),
                self.interpretation,
                self.samples_box,
            ]
        )
        self._write_prompt()
        self._show_prior()

    # -- inputs ---------------------------------------------------------------------------------
    def _set_locations(self) -> None:
        spec = finding_spec(self.finding.value)
        self.location.options = [
            ("(one place)" if loc is None else location_text(loc), loc) for loc in spec.locations
        ]
        self.location.value = spec.locations[0]

    def _on_direction(self, _change) -> None:
        self.severity.disabled = self.direction.value == "resolved"

    def prior_image(self) -> np.ndarray:
        if self.uploaded is not None:
            return self.uploaded
        return self.priors[self.patient.value].image

    def prior_state(self) -> ChestState:
        """The simulated prior's findings (an upload's are unknown: taken as none)."""
        return ChestState() if self.uploaded is not None else self.priors[self.patient.value].state

    def _write_prompt(self) -> None:
        try:
            self.prompt.value = progression_prompt(
                self.prior_state(),
                self.finding.value,
                self.location.value,
                self.direction.value,
                self.severity.value,
                seed=self.seed.value,
            )
            self.status.value = "<span class='progemu-status'>Ready.</span>"
        except ValueError as err:  # impossible for this prior: say why, keep the old prompt
            self.status.value = (
                f"<span class='progemu-status'><b>Not possible here:</b> "
                f"{html.escape(str(err))}. Type your own prompt or pick another change.</span>"
            )

    def _on_upload(self, change) -> None:
        files = change["new"]
        if not files:
            return
        item = files[0]
        name = item["name"] if isinstance(item, dict) else item.name
        content = item["content"] if isinstance(item, dict) else item.content
        self.load_upload(name, bytes(content))

    def load_upload(self, name: str, content: bytes) -> None:
        """Use an uploaded PNG/JPEG/DICOM as the prior (what the FileUpload calls)."""
        try:
            image = read_upload(name, content, self.pipe.image_size)
        except ValueError as err:
            self.status.value = (
                f"<span class='progemu-status'><b>Upload refused:</b> {html.escape(str(err))}"
                "</span>"
            )
            raise
        # New options reset the dropdown (which forgets an upload), so set the image after.
        self.patient.options = [
            *[(p.name, i) for i, p in enumerate(self.priors)],
            (f"{UPLOADED} {name}", -1),
        ]
        self.uploaded = image
        self.patient.value = -1
        self._write_prompt()
        self._show_prior()

    def _on_patient(self, _change) -> None:
        if self.patient.value != -1:  # back to a simulated patient: forget the upload
            self.uploaded = None
        self._write_prompt()
        self._show_prior()

    def _show_prior(self) -> None:
        self.prior_panel.show(
            self.prior_image(),
            alt="The prior chest radiograph the model starts from",
            caption=f"Prior: {self.patient.label}.",
        )

    # -- generation -----------------------------------------------------------------------------
    def _on_generate(self) -> None:
        try:
            self.generate()
        except ValueError as err:  # bad prompt or settings: shown, not a traceback in class
            self.status.value = (
                f"<span class='progemu-status'><b>Cannot generate:</b> "
                f"{html.escape(str(err))}</span>"
            )
            self.progress.bar_style = "danger"

    def generate(self) -> list:
        """Run the pipeline with the current settings; fills every panel. Returns the samples."""
        self.generate_button.disabled = True
        self.progress.value, self.progress.bar_style = 0, "info"
        self.status.value = "<span class='progemu-status'>Generating&hellip;</span>"
        start = time.perf_counter()
        try:
            n = self.samples.value
            prior = self.prior_image()
            self.progress.value = 1
            self.results = self.pipe.batch(
                [prior] * n,
                [self.prompt.value] * n,
                temperature=self.temperature.value,
                top_k=self.top_k.value,
                guidance_scale=self.guidance.value,
                seed=self.seed.value,
                max_text_tokens=self.max_text_tokens,
                batch_size=n,
            )
            self.progress.value = 2
            self._show_results(prior)
        finally:
            self.generate_button.disabled = False
        self.seconds = time.perf_counter() - start
        self.runs += 1
        self.progress.value, self.progress.bar_style = 3, "success"
        self.status.value = (
            f"<span class='progemu-status progemu-done'>Done: {len(self.results)} sample(s) "
            f"in {self.seconds:.1f} s.</span>"
        )
        return self.results

    def samples_summary(self) -> str:
        """How far the last click's samples agree, measured: per sample the mean probability of
        its interpretation tokens and what the labeler reads in it (claims, and findings it rules
        out); how many samples claim the prompt's finding on the prompt's side; how much the
        images differ. (A trained model should agree on what the prompt fixes; random weights
        give unrelated noise.)"""
        if not self.results:
            raise ValueError("no samples yet: press Generate first")
        # What the prompt asks for: (finding, side or None) of each claim it makes.
        prompted = {
            (f.finding, f.laterality) for f in label_report(self.results[0].prompt) if f.is_claim
        }
        lines, stating = [], 0
        for k, result in enumerate(self.results, start=1):
            read = label_report(result.interpretation)
            claims = [f for f in read if f.is_claim]
            stating += any(
                f.finding == finding and side in (None, f.laterality)
                for f in claims
                for finding, side in prompted
            )
            probabilities = result.text_probabilities
            mean = f"{float(np.mean(probabilities)):.3f}" if len(probabilities) else "-"
            line = f"sample {k}: mean token probability {mean}; claims: "
            line += ", ".join(_finding_words(f) for f in claims) or "no finding"
            ruled_out = [_finding_words(f) for f in read if not f.is_claim]
            if ruled_out:
                line += "; rules out: " + ", ".join(ruled_out)
            lines.append(line)
        wanted = ", ".join(
            " ".join(w for w in (side, finding.replace("_", " ")) if w)
            for finding, side in sorted(prompted, key=str)
        )
        lines.append(
            f"the prompt's finding ({wanted or 'none the labeler knows'}) is claimed in "
            f"{stating} of {len(self.results)} samples"
        )
        if len(self.results) > 1:
            spread = mean_pairwise_difference([r.image for r in self.results])
            lines.append(
                f"mean absolute difference between the sample images: {spread:.1f} gray levels"
            )
        return "\n".join(lines)

    def _show_results(self, prior: np.ndarray) -> None:
        first = self.results[0]
        difference, limit = difference_image(prior, first.image)
        weights = "" if self.model.trained else " (untrained weights: noise)"
        self.counterfactual_panel.show(
            first.image,
            alt=f"Generated counterfactual follow-up for the prompt: {first.prompt}",
            caption=f"Counterfactual, sample 1, seed {self.seed.value}{weights}.",
        )
        self.difference_panel.show(
            difference,
            alt="Difference map counterfactual minus prior",
            caption=(
                f"Counterfactual minus prior (PuOr): orange = denser, purple = darker; full "
                f"colour at {limit:.0f} gray levels."
            ),
        )
        self.interpretation.value = self._interpretation_html(first, 1)
        boxes = []
        for k, result in enumerate(self.results[1:], start=2):
            panel = FigurePanel(width=128)
            panel.show(
                result.image,
                alt=f"Counterfactual sample {k}",
                caption=f"Sample {k} (another random draw).",
            )
            boxes.append(
                widgets.VBox(
                    [panel, widgets.HTML(self._interpretation_html(result, k, short=True))],
                    layout=widgets.Layout(width="300px"),
                )
            )
        self.samples_box.children = boxes

    def _interpretation_html(self, result, k: int, short: bool = False) -> str:
        n_image = self.pipe.grid[0] * (self.pipe.grid[1] + 1) + 2
        text_ids = result.token_ids[n_image : n_image + len(result.text_probabilities)]
        coloured = text_probability_html(self.pipe.builder, text_ids, result.text_probabilities)
        cut = " <i>(cut at the token limit)</i>" if result.truncated else ""
        body = (
            f'<div class="progemu-interpretation"><p><b>Interpretation, sample {k}</b>{cut}:</p>'
            f"{coloured}{findings_badges_html(result.interpretation)}"
        )
        if not short:
            body += (
                "<details><summary>What the labeler read</summary>"
                f"{labeler_html(label_report(result.interpretation))}</details>"
            )
        return body + "</div>"
