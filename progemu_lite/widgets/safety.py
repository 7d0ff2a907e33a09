"""Lesson 8 widgets: domain shift, the simulated population, seeds, and a clinical-safety list.

Everything here measures or shows; nothing claims a statistic about real patients. The real
radiograph is pydicom-data's chest CR, de-identified before its pixels are read (as in lesson 1).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import ipywidgets as widgets
import numpy as np

from ..phantom.findings import FINDINGS
from .figures import (
    OKABE_ITO,
    FigurePanel,
    StaticFigure,
    figure_html,
    matplotlib_png,
    mean_pairwise_difference,
    png_bytes,
)

SPLITS = ("train", "val", "test")
# Okabe-Ito colours, each named beside its colour in the legends and captions.
SOURCE_COLORS = {"simulated": OKABE_ITO["blue"], "real": OKABE_ITO["vermillion"]}
SPLIT_COLORS = {"train": OKABE_ITO["blue"], "val": OKABE_ITO["orange"], "test": OKABE_ITO["green"]}
SEX_COLORS = {"female": OKABE_ITO["vermillion"], "male": OKABE_ITO["sky_blue"]}


def real_radiograph(size: int, path=None) -> np.ndarray:
    """A real chest radiograph as the model would see it: uint8 ``(size, size)``.

    The DICOM file (pydicom-data's ``RG1_UNCR.dcm`` by default) is de-identified first
    (:func:`~progemu_lite.widgets.radiographs.load_deidentified`), then read, padded to a square
    and resized exactly as the pipeline prepares a prior.
    """
    from ..data.dicom import read_radiograph
    from ..model.pipeline import prepare_image
    from .radiographs import load_deidentified

    dataset, _ = load_deidentified(path)
    pixels = read_radiograph(dataset, size).pixels
    return prepare_image(pixels, size, what="the real radiograph")


def intensity_stats(image: np.ndarray) -> dict:
    """Mean, standard deviation, share of pure black (<= 2) and share of bright (>= 200) pixels."""
    values = np.asarray(image, dtype=np.float32)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"expected a non-empty 2-D gray image, got shape {values.shape}")
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "black": float((values <= 2).mean()),
        "bright": float((values >= 200).mean()),
    }


def histogram_figure(images: dict[str, list[np.ndarray]], bins: int = 32) -> StaticFigure:
    """Gray-level histograms (share of pixels) of each group of images, side by side."""
    from matplotlib.figure import Figure

    if not images or any(len(group) == 0 for group in images.values()):
        raise ValueError("give at least one image for every group")
    fig = Figure(figsize=(4.2 * len(images), 3.0), dpi=100)
    axes = fig.subplots(1, len(images), sharey=True, squeeze=False)[0]
    edges = np.linspace(0, 256, bins + 1)
    for ax, (name, group) in zip(axes, images.items(), strict=True):
        values = np.concatenate([np.asarray(g, dtype=np.float32).ravel() for g in group])
        share, _ = np.histogram(values, bins=edges)
        color = SOURCE_COLORS.get(name, OKABE_ITO["green"])
        ax.bar(edges[:-1], share / share.sum(), width=256 / bins, align="edge", color=color)
        ax.set_title(f"{name} ({len(group)} image{'s' if len(group) > 1 else ''})")
        ax.set_xlabel("gray level (0 black, 255 white)")
    axes[0].set_ylabel("share of pixels")
    fig.tight_layout()
    names = " and ".join(images)
    return StaticFigure(
        matplotlib_png(fig),
        alt=f"Side-by-side histograms of gray levels for the {names} images.",
        caption=(
            f"Gray-level histograms: {names} (blue = simulated, vermillion = real). A model "
            "trained on one histogram meets a different one: that is domain shift. The real "
            "image's black padding (it is not square) shows as a spike at 0."
        ),
    )


@dataclass
class DomainShift:
    """The simulated priors and the real radiograph, each through the same model and prompt."""

    model: object  # CourseModel
    prompt: str
    seed: int
    simulated: list[np.ndarray]
    real: np.ndarray
    simulated_results: list = field(default_factory=list)
    real_result: object = None
    # VQ round trip (encode -> decode): PSNR in dB and SSIM, how well the image tokenizer keeps
    # each image.
    simulated_vq_psnr: list[float] = field(default_factory=list)
    real_vq_psnr: float = 0.0
    simulated_vq_ssim: list[float] = field(default_factory=list)
    real_vq_ssim: float = 0.0

    def table(self) -> str:
        """One row per image: intensity statistics and the VQ round trip's PSNR and SSIM."""
        lines = [
            f"{'image':<14}{'mean':>7}{'std':>7}{'black':>7}{'bright':>8}{'VQ PSNR':>9}"
            f"{'VQ SSIM':>9}"
        ]
        rows = [
            (f"simulated {k}", im, p, q)
            for k, (im, p, q) in enumerate(
                zip(self.simulated, self.simulated_vq_psnr, self.simulated_vq_ssim, strict=True)
            )
        ]
        rows.append(("real", self.real, self.real_vq_psnr, self.real_vq_ssim))
        for name, image, psnr, ssim in rows:
            s = intensity_stats(image)
            lines.append(
                f"{name:<14}{s['mean']:7.1f}{s['std']:7.1f}{s['black']:7.2f}{s['bright']:8.2f}"
                f"{psnr:9.2f}{ssim:9.3f}"
            )
        return "\n".join(lines)

    def tokenizer_comparison(self) -> str:
        """Whether this model's tokenizer keeps the simulated priors or the real radiograph
        better, measured (mean PSNR and SSIM of the simulated round trips vs the real one)."""
        sim_psnr = float(np.mean(self.simulated_vq_psnr))
        sim_ssim = float(np.mean(self.simulated_vq_ssim))
        gap = sim_psnr - self.real_vq_psnr
        if abs(gap) < 0.5:  # half a dB: too small a difference to read anything into
            verdict = "about as well as"
        else:
            verdict = "better than" if gap > 0 else "worse than"
        return (
            f"VQ round trip, simulated priors (mean of {len(self.simulated)}): "
            f"PSNR {sim_psnr:.2f} dB, SSIM {sim_ssim:.3f}\n"
            f"VQ round trip, real radiograph: PSNR {self.real_vq_psnr:.2f} dB, "
            f"SSIM {self.real_vq_ssim:.3f}\n"
            f"This tokenizer keeps the simulated images {verdict} the real one "
            f"(PSNR difference {gap:+.2f} dB)."
        )

    def _repr_html_(self) -> str:
        size = 192
        weights = "" if self.model.trained else " Untrained weights: the output is noise."
        cells = []
        pairs = [
            (f"simulated prior {k}", im, r)
            for k, (im, r) in enumerate(zip(self.simulated, self.simulated_results, strict=True))
        ]
        pairs.append(("real radiograph", self.real, self.real_result))
        for name, prior, result in pairs:
            cells.append(
                "<div style='display:flex'>"
                + figure_html(png_bytes(prior), f"The {name}.", f"Prior: {name}.", size)
                + figure_html(
                    png_bytes(result.image),
                    f"The model's follow-up for the {name} with the prompt: {self.prompt}",
                    f"Counterfactual for the {name}.{weights}",
                    size,
                )
                + f"<p style='max-width:260px'><b>Interpretation:</b> "
                f"{html.escape(result.interpretation)}</p></div>"
            )
        return self.model.notice_html() + "".join(cells)


def domain_shift_study(
    model, simulated: list[np.ndarray], prompt: str, *, seed: int = 0, max_text_tokens: int = 48
) -> DomainShift:
    """Run the simulated priors and the real radiograph through ``model`` with one prompt/seed."""
    if not simulated:
        raise ValueError("give at least one simulated prior")
    pipe = model.pipe
    real = real_radiograph(pipe.image_size)
    from ..model.pipeline import prepare_image
    from ..tokenization.vq import psnr, ssim

    simulated = [prepare_image(im, pipe.image_size, what="a simulated prior") for im in simulated]
    study = DomainShift(model, prompt, seed, simulated, real)
    for image in simulated + [real]:
        result = pipe(image, prompt, seed=seed, max_text_tokens=max_text_tokens)
        if image is real:
            study.real_result = result
        else:
            study.simulated_results.append(result)
    images = np.stack(simulated + [real])
    recons = pipe.decode_codes(pipe.encode_images(images))
    scores = [psnr(a, b) for a, b in zip(images, recons, strict=True)]
    study.simulated_vq_psnr, study.real_vq_psnr = scores[:-1], scores[-1]
    similarity = [ssim(a, b) for a, b in zip(images, recons, strict=True)]
    study.simulated_vq_ssim, study.real_vq_ssim = similarity[:-1], similarity[-1]
    return study


# -- bias: who is in the simulated population ---------------------------------------------------


@dataclass
class Population:
    """The phantom generator's patients (priors): split, sex, habitus and findings."""

    seed: int
    split: list[str]
    sex: list[str]
    chest_wall: np.ndarray  # cm of chest-wall soft tissue: the generator's habitus (thin..broad)
    findings: dict[str, np.ndarray]  # finding -> bool per patient (present at any location)

    def table(self) -> str:
        """Counts per split: patients, share female, mean chest wall (cm), prevalence of findings."""
        names = list(self.findings)
        head = f"{'split':<6}{'n':>5}{'female':>8}{'wall cm':>9}" + "".join(
            f"{n[:12]:>14}" for n in names
        )
        lines = [head]
        split = np.array(self.split)
        female = np.array(self.sex) == "female"
        for name in (*SPLITS, "all"):
            chosen = np.ones(len(split), bool) if name == "all" else split == name
            n = int(chosen.sum())
            if n == 0:
                lines.append(f"{name:<6}{0:>5}")
                continue
            row = (
                f"{name:<6}{n:>5}{female[chosen].mean():8.2f}{self.chest_wall[chosen].mean():9.2f}"
            )
            row += "".join(f"{self.findings[f][chosen].mean():14.2f}" for f in names)
            lines.append(row)
        return "\n".join(lines)

    def figure(self) -> StaticFigure:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10, 3.4), dpi=100)
        left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2]})
        sex = np.array(self.sex)
        bins = np.linspace(0.3, 5.0, 16)
        for name, color in SEX_COLORS.items():
            left.hist(self.chest_wall[sex == name], bins=bins, color=color, alpha=0.6, label=name)
        left.set_xlabel("chest-wall soft tissue, cm (thin .. broad)")
        left.set_ylabel("patients")
        left.legend(title="sex")
        split = np.array(self.split)
        names = list(self.findings)
        x = np.arange(len(names))
        width = 0.8 / len(SPLITS)
        for k, name in enumerate(SPLITS):
            chosen = split == name
            share = [self.findings[f][chosen].mean() if chosen.any() else 0.0 for f in names]
            right.bar(x + k * width, share, width, color=SPLIT_COLORS[name], label=name)
        right.set_xticks(x + width, [n.replace("_", " ") for n in names], rotation=25, ha="right")
        right.set_ylabel("share of priors with the finding")
        right.legend(title="split")
        fig.tight_layout()
        return StaticFigure(
            matplotlib_png(fig),
            alt="Left: histograms of chest-wall thickness for female and male simulated patients. Right: "
            "bars of how often each finding is present in the train, val and test priors.",
            caption=(
                "The simulated population. Left: chest-wall thickness (habitus) by sex (vermillion = female, sky blue "
                "= male). Right: prevalence of each finding on the prior, by split (blue = "
                "train, orange = val, green = test). These are properties of our generator, "
                "chosen by its authors; they say nothing about any real population."
            ),
        )


def simulated_population(patients: int, seed: int = 0) -> Population:
    """The priors the phantom generator would draw for ``patients`` patients with ``seed``.

    Uses the generator's own per-patient random stream and split rule, without rendering
    images, so it describes exactly the population of ``progemu-lite phantom generate``.
    """
    from ..phantom.anatomy import sample_patient
    from ..phantom.dataset import patient_seed_sequence, patient_split
    from ..phantom.progression import sample_prior_state

    if patients < 1:
        raise ValueError(f"patients must be at least 1, got {patients}")
    splits, sexes, walls = [], [], []
    present = {name: np.zeros(patients, bool) for name in FINDINGS}
    for index in range(patients):
        # Same stream and order of draws as phantom.dataset.simulate_patient.
        rng = np.random.default_rng(patient_seed_sequence(seed, index, 0))
        anatomy = sample_patient(rng)
        state = sample_prior_state(rng)
        splits.append(patient_split(seed, index))
        sexes.append(anatomy.sex)
        walls.append(anatomy.chest_wall)
        for finding in state.findings:
            present[finding.name][index] = True
    return Population(seed, splits, sexes, np.array(walls, dtype=np.float32), present)


# -- a counterfactual is not a prediction -------------------------------------------------------


class SeedComparison(widgets.VBox):
    """Same prior, same prompt, several seeds: the follow-ups differ only by the random draw.

    Headless: set ``first_seed.value`` / ``samples.value`` and call ``button.click()``;
    ``results`` holds the Counterfactuals and ``panels`` the images shown.
    """

    def __init__(
        self,
        model,
        prior: np.ndarray,
        prompt: str,
        *,
        samples: int = 3,
        max_text_tokens: int = 32,
        image_width: int = 160,
    ):
        from ..model.pipeline import prepare_image

        self.model = model
        self.prior = prepare_image(prior, model.pipe.image_size)
        self.prompt = prompt
        self.max_text_tokens = max_text_tokens
        self.first_seed = widgets.IntSlider(value=0, min=0, max=99, description="first seed")
        self.samples = widgets.IntSlider(value=samples, min=2, max=6, description="samples")
        self.button = widgets.Button(description="Generate", button_style="primary")
        self.status = widgets.HTML()
        self.panels_box = widgets.HBox()
        self.image_width = image_width
        self.panels: list[FigurePanel] = []
        self.results: list = []
        self.button.on_click(lambda _b: self.generate())
        super().__init__(
            [
                widgets.HTML(model.notice_html()),
                widgets.HTML(f"<p><b>Prompt:</b> {html.escape(prompt)}</p>"),
                widgets.HBox([self.first_seed, self.samples, self.button]),
                self.status,
                self.panels_box,
            ]
        )

    def seeds(self) -> list[int]:
        return [self.first_seed.value + k for k in range(self.samples.value)]

    def generate(self) -> list:
        self.results = [
            self.model.pipe(self.prior, self.prompt, seed=s, max_text_tokens=self.max_text_tokens)
            for s in self.seeds()
        ]
        weights = "" if self.model.trained else " (untrained weights: noise)"
        self.panels = []
        for seed, result in zip(self.seeds(), self.results, strict=True):
            panel = FigurePanel(width=self.image_width)
            panel.show(
                result.image,
                f"Counterfactual follow-up with seed {seed} for the prompt: {self.prompt}",
                f"Seed {seed}{weights}: {result.interpretation}",
            )
            self.panels.append(panel)
        self.panels_box.children = tuple(self.panels)
        spread = self.pixel_spread()
        self.status.value = (
            f"<span class='progemu-status'>{len(self.results)} samples; mean absolute "
            f"difference between samples: {spread:.1f} gray levels.</span>"
        )
        return self.results

    def pixel_spread(self) -> float:
        """Mean absolute gray-level difference over every pair of samples (0 = all identical)."""
        if len(self.results) < 2:
            raise ValueError("generate at least two samples first")
        return mean_pairwise_difference([r.image for r in self.results])


# -- does the interpretation read the image? -----------------------------------------------------


@dataclass
class ReadingCheck:
    """One simulated pair's prior and prompt, and the model's interpretation of three
    follow-ups: the one it draws itself, the true one, and the unchanged prior. When the three
    texts say the same, the interpretation follows the prompt, not the image."""

    prompt: str
    reference: str  # the pair's true interpretation (the simulator's)
    readings: list[tuple[str, np.ndarray, str]]  # (follow-up, image as the model read it, text)
    trained: bool

    def table(self) -> str:
        width = max(len(label) for label, _, _ in self.readings)
        lines = [f"prompt: {self.prompt}", f"{'true interpretation':<{width}}  {self.reference}"]
        lines += [f"{label:<{width}}  {text}" for label, _, text in self.readings]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        from .explorer import findings_badges_html

        weights = "" if self.trained else " (untrained weights: noise)"
        cells = []
        for label, image, text in self.readings:
            figure = figure_html(
                png_bytes(image),
                f"The follow-up the model read: {label}",
                f"The model reads {label}{weights}: {text}",
                160,
            )
            cells.append(
                f"<div style='display:inline-block; vertical-align:top; width:220px; "
                f"margin-right:12px'>{figure}{findings_badges_html(text)}</div>"
            )
        return (
            f"<p><b>Prompt:</b> {html.escape(self.prompt)}<br><b>True interpretation:</b> "
            f"{html.escape(self.reference)}</p><div>{''.join(cells)}</div>"
        )


def reading_check(
    model, *, seed: int = 0, max_text_tokens: int = 32, patients: int = 50
) -> ReadingCheck:
    """Interpretations (greedy) of three follow-ups for one simulated prior and prompt, with
    :meth:`~progemu_lite.model.pipeline.ProgEmuPipeline.interpret`. The pair is the first of
    ``patients`` simulated ones (same generator as the course data) whose prior has a finding
    that stays, so a reading of the image has something to report beyond the prompt."""
    from ..phantom.dataset import PhantomConfig, simulate_patient

    config = PhantomConfig(
        patients=patients, pairs_per_patient=1, size=model.pipe.image_size, seed=seed
    )
    pair = None
    for index in range(patients):
        pair = next(simulate_patient(config, index))
        if any(entry.direction == "stable" for entry in pair.annotation):
            break
    prior, followup = pair.prior.image, pair.followup.image
    prompt = pair.record.prompt
    pipe = model.pipe
    drawn = pipe(prior, prompt, seed=seed, text_temperature=0, max_text_tokens=max_text_tokens)
    true = pipe.interpret(prior, prompt, followup, max_text_tokens=max_text_tokens)
    unchanged = pipe.interpret(prior, prompt, prior, max_text_tokens=max_text_tokens)
    return ReadingCheck(
        prompt=prompt,
        reference=pair.record.interpretation,
        readings=[
            ("its own drawing", drawn.image, drawn.interpretation),
            ("the true follow-up", true.image, true.interpretation),
            ("the unchanged prior", unchanged.image, unchanged.interpretation),
        ],
        trained=model.trained,
    )


# -- clinical safety ----------------------------------------------------------------------------

INTENDED_USE = (
    "ProgEmu-Lite is teaching software. It shows how a generative model can emulate disease "
    "progression on chest radiographs. It is NOT a medical device and NOT for clinical use: "
    "never use its images or texts to diagnose, triage, predict or treat a patient."
)

SAFETY_CHECKLIST = (
    ("Intended use", "Is the use teaching or research, with no effect on any patient's care?"),
    ("Data", "Was every real image de-identified before it was shown, stored or shared?"),
    (
        "Domain",
        "Does the input come from the distribution the model was trained on (view, "
        "device, population, preprocessing)? If not, expect failures with no warning.",
    ),
    (
        "Counterfactual",
        "Is every output read as 'what this prompt would look like', never as "
        "'what will happen to this patient'?",
    ),
    (
        "Uncertainty",
        "Were several seeds shown, so readers see the spread, not one confident image?",
    ),
    (
        "Bias",
        "Which groups are under-represented in the training data, and were results "
        "checked per group?",
    ),
    ("Labelling", "Is every generated image marked as synthetic wherever it is shown or saved?"),
    ("Human oversight", "Does a qualified person, not the model, make every clinical judgement?"),
)


def safety_checklist_html() -> str:
    """The intended-use statement and the checklist as HTML."""
    items = "".join(
        f"<li><b>{html.escape(k)}:</b> {html.escape(q)}</li>" for k, q in SAFETY_CHECKLIST
    )
    return (
        '<div role="note" style="border: 3px solid #D55E00; padding: 8px 12px; color: black; '
        f'background: #FFF4E5"><b>Intended use.</b> {html.escape(INTENDED_USE)}</div>'
        f"<ol>{items}</ol>"
    )
