"""The model the lessons use: the shipped ``lite`` weights when there are some, else random ones.

:func:`course_pipeline` is the one place a lesson gets its model from, so when the trained
``lite`` weights ship, every lesson uses them with no change to the notebooks. Without them (and
in fast mode, which CI uses) it builds a model of the same shapes with **random weights** and
says so loudly: the returned :class:`CourseModel` carries the notice, shows it as a banner
when displayed, and a :class:`UntrainedWeightsWarning` is raised once per build.

Loading a course model also applies the course's CPU thread policy
(:func:`progemu_lite.runtime.configure_torch_threads`: one thread on machines with 2 CPUs or
fewer, ``PROGEMU_THREADS`` to choose), because two contending threads made a Generate click
about 50 times slower on a busy 2-core machine.
"""

from __future__ import annotations

import functools
import html
import warnings
from dataclasses import dataclass

from ..hub import PACKAGE_WEIGHTS

# Where the trained lite pipeline ships inside the package (the hub's ``lite`` entry).
SHIPPED_LITE = PACKAGE_WEIGHTS / "lite"

UNTRAINED_NOTICE = (
    "UNTRAINED WEIGHTS: this lesson uses a model of the ProgEmu-Lite design with random "
    "weights. Its images and interpretations are noise: they show how the mechanics work (the "
    "token stream, the constrained grid, sampling settings, uncertainty), not what a trained "
    "model would say."
)
# Why the random model stands in, appended to UNTRAINED_NOTICE.
FAST_MODE_REASON = (
    "the lesson runs in fast mode (the tiny shapes CI uses), not on the trained 'lite' weights"
)
MISSING_REASON = "the trained {name!r} weights are not available here; {error}"


# Course models that may stand in with random weights while their trained weights are missing.
COURSE_PRESETS = ("lite", "tiny")


def lite_weights_shipped() -> bool:
    """True when the trained ``lite`` pipeline is installed in the package (its config.json is
    there), so lessons use it instead of stand-ins."""
    return (SHIPPED_LITE / "config.json").is_file()


class UntrainedWeightsWarning(UserWarning):
    """A lesson runs on random weights: its outputs only show the mechanics."""


@dataclass
class CourseModel:
    """A pipeline for the lessons and whether its weights are trained."""

    pipe: object  # progemu_lite.model.pipeline.ProgEmuPipeline
    name: str
    trained: bool
    notice: str  # "" for trained weights, else UNTRAINED_NOTICE plus why
    threads: str = ""  # the CPU thread setting in force (progemu_lite.runtime), in words

    def notice_html(self) -> str:
        """A banner for the top of a lesson or widget (empty for trained weights)."""
        if self.trained:
            return ""
        return (
            '<div class="progemu-untrained" role="alert" style="border: 3px solid #D55E00; '
            'background: #FFF4E5; padding: 8px 12px; margin: 6px 0; color: black">'
            f"<b>&#9888; {html.escape(self.notice)}</b></div>"
        )

    def describe(self) -> str:
        pipe = self.pipe
        weights = "trained" if self.trained else "RANDOM (untrained)"
        return (
            f"model {self.name!r}: preset {pipe.preset}, {pipe.image_size}x{pipe.image_size} "
            f"images, {pipe.grid[0]}x{pipe.grid[1]} token grid, {weights} weights"
        )

    def _repr_html_(self) -> str:
        return f"<p>{html.escape(self.describe())}</p>{self.notice_html()}"

    def __repr__(self) -> str:
        banner = f"\n{self.notice}" if self.notice else ""
        return self.describe() + banner


@functools.lru_cache(maxsize=4)
def _random_pipeline(preset: str, seed: int):
    from ..model.pipeline import build_random

    return build_random(preset, seed=seed)


def course_pipeline(name: str = "lite", *, fast: bool = False, seed: int = 0) -> CourseModel:
    """The lessons' model: ``progemu_lite.load(name)`` when those weights are available.

    For the course presets (``lite``, ``tiny``) whose weights are not available, or with
    ``fast=True`` (the ``tiny`` shapes, for CI), a model of that preset with random weights
    (``build_random``, cached per process so several widgets share it) and the untrained notice,
    also raised as an :class:`UntrainedWeightsWarning`. Any other name (a folder, a hub id) must
    load; its errors, like a corrupt checkpoint's, are raised, never papered over. Applies the
    CPU thread policy first (:func:`progemu_lite.runtime.configure_torch_threads`).
    """
    from ..model.pipeline import load
    from ..runtime import configure_torch_threads

    threads = configure_torch_threads().describe()
    fallback = name in COURSE_PRESETS
    if fast:
        preset, why = "tiny", FAST_MODE_REASON
    else:
        try:
            return CourseModel(load(name, progress=False), name, True, "", threads)
        except FileNotFoundError as err:  # not shipped / not cached (hub.OfflineError too)
            if not fallback:
                raise
            preset, why = name, MISSING_REASON.format(name=name, error=str(err).rstrip("."))
    notice = f"{UNTRAINED_NOTICE} Why: {why}."
    warnings.warn(notice, UntrainedWeightsWarning, stacklevel=2)
    return CourseModel(_random_pipeline(preset, seed), f"random-{preset}", False, notice, threads)


# -- lesson 9: the full 8B ProgEmu --------------------------------------------------------------


@dataclass
class FullModelPlan:
    """Whether this machine can run the full ProgEmu, and what it would cost here and on a GPU."""

    cuda: bool
    device_name: str
    device_memory_gib: float | None
    cpu: object  # ResourceEstimate for float32 on the CPU
    gpu: object  # ResourceEstimate for bfloat16 on CUDA

    @property
    def can_run(self) -> bool:
        return self.cuda

    def describe(self) -> str:
        lines = [
            f"This machine: {self.device_name}"
            + (f" ({self.device_memory_gib:.0f} GiB)" if self.device_memory_gib else ""),
            f"On a CUDA GPU: {self.gpu.describe()}.",
            f"On this CPU: {self.cpu.describe()}.",
        ]
        if self.cuda:
            lines.append("A CUDA GPU is present: the cells below load and run the full model.")
        else:
            lines.append(
                "No CUDA GPU here: the cells below skip the full model (nothing is downloaded). "
                "Run this lesson on a machine with a GPU of 24 GB or more (see docs/gpu.md)."
            )
        return "\n".join(lines)


def full_model_plan(max_text_tokens: int = 195) -> FullModelPlan:
    """The full preset's memory and time, worked out from its config alone (no weights read)."""
    import torch

    from ..model.config import build_config
    from ..model.pipeline import estimate_resources
    from ..tokenization.text import train_text_tokenizer, vocabulary_corpus
    from ..tokenization.vq import vq_config

    tokenizer = train_text_tokenizer(vocabulary_corpus(), vq_config("full").codebook_size)
    config = build_config("full", tokenizer)
    cuda = torch.cuda.is_available()
    name, memory = "CPU only (no CUDA GPU)", None
    if cuda:
        name = torch.cuda.get_device_name(0)
        memory = torch.cuda.get_device_properties(0).total_memory / 2**30
    kwargs = {"max_text_tokens": max_text_tokens}
    return FullModelPlan(
        cuda=cuda,
        device_name=name,
        device_memory_gib=memory,
        cpu=estimate_resources(config, "full", device="cpu", dtype=torch.float32, **kwargs),
        gpu=estimate_resources(config, "full", device="cuda", dtype=torch.bfloat16, **kwargs),
    )


@dataclass
class FullModelRun:
    """What lesson 9's run did: the result, or why it was skipped."""

    result: object | None  # a Counterfactual, or None when skipped
    message: str
    seconds: float = 0.0

    @property
    def skipped(self) -> bool:
        return self.result is None

    def _repr_html_(self) -> str:
        if self.result is None:
            return f"<p><b>Skipped:</b> {html.escape(self.message)}</p>"
        from .figures import figure_html, png_bytes

        r = self.result
        return (
            f"<p>{html.escape(self.message)}</p><div style='display:flex'>"
            + figure_html(png_bytes(r.prior), "The prior radiograph", "Prior.", 256)
            + figure_html(
                png_bytes(r.image),
                f"Counterfactual from the full ProgEmu for: {r.prompt}",
                "Counterfactual (full ProgEmu).",
                256,
            )
            + f"</div><p><b>Interpretation:</b> {html.escape(r.interpretation)}</p>"
        )


def run_full_model(
    plan: FullModelPlan,
    prior,
    prompt: str,
    *,
    name: str = "progemu",
    seed: int = 0,
    guidance_scale: float = 3.0,
    max_text_tokens: int = 195,
) -> FullModelRun:
    """Load the published ProgEmu (``progemu_lite.load(name)``) and generate one counterfactual
    on CUDA. Without a GPU, or when the weights are neither cached nor downloadable, it skips
    with the reason (no error), so the lesson runs everywhere."""
    import time

    from ..model.pipeline import load

    if not plan.can_run:
        return FullModelRun(None, "no CUDA GPU on this machine; the estimates above say why")
    try:
        pipe = load(name, progress=True)
    except FileNotFoundError as err:  # OfflineError: not cached and no network
        return FullModelRun(None, f"the {name!r} weights are not available here: {err}")
    start = time.perf_counter()
    result = pipe(
        prior, prompt, seed=seed, guidance_scale=guidance_scale, max_text_tokens=max_text_tokens
    )
    seconds = time.perf_counter() - start
    return FullModelRun(result, f"{pipe.describe_loading()}; generated in {seconds:.0f} s", seconds)
