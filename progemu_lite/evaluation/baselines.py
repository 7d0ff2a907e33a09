"""Systems the evaluator compares: anything that maps a batch of (prior image, prompt) to
(follow-up image, interpretation text).

A system has a ``name``, a ``cache_key`` (None: cheap, never cached; else a string that changes
whenever its outputs would: checkpoint identity, seed) and ``generate(cases)`` returning one
:class:`Output` per :class:`Case`. Baselines (all evaluated on the same cases by the same code):

* :class:`CopyPrior`: the prior image unchanged, the prompt echoed as the interpretation;
* :class:`NearestNeighbour`: the training pair with the same prompt (else the same requested
  progression, else the same finding and direction, else any) whose prior is most similar
  (mean squared difference of 32x32 thumbnails) gives its follow-up and interpretation;
* :class:`VQReconstruction`: the true follow-up encoded and decoded by a VQ tokenizer (the image
  upper bound of a token model), with the true interpretation;
* :class:`TrueFollowup`: the true follow-up and interpretation (upper bound for alignment and
  the labeler);
* :class:`ModelSystem`: a ProgEmu pipeline (:mod:`progemu_lite.model.pipeline`).

Systems see a case's prior and prompt; only the upper bounds look at the truth, by design.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

THUMB = 32


# What ``ModelSystem(reads=...)`` can hand the model to interpret instead of its own drawing.
READABLE_FOLLOWUPS = {"true": "true follow-up", "prior": "unchanged prior"}


@dataclass
class Case:
    """One evaluated pair: inputs, truth and what the scores need."""

    pair_id: str
    prior: np.ndarray
    prompt: str
    followup: np.ndarray
    reference: str  # the true interpretation (ICG-CXR ``changes-of-findings``)
    annotation: list | None  # expert annotation entries (dicts), None if missing
    progression: dict | None  # requested progression {finding, location, direction, severity}
    problems: list[str] = field(default_factory=list)  # e.g. a malformed annotation


@dataclass
class Output:
    image: np.ndarray
    text: str


def _normalise_prompt(prompt: str) -> str:
    return " ".join(prompt.lower().split())


def _thumb(image: np.ndarray) -> np.ndarray:
    from PIL import Image

    small = Image.fromarray(np.asarray(image, np.uint8)).resize((THUMB, THUMB))
    return np.asarray(small, dtype=np.float32).ravel() / 255.0


class CopyPrior:
    name = "copy-prior"
    cache_key = None
    description = "prior image unchanged; the prompt echoed as the interpretation"

    def generate(self, cases: list[Case]) -> list[Output]:
        return [Output(c.prior.copy(), c.prompt) for c in cases]


class TrueFollowup:
    name = "true-follow-up"
    cache_key = None
    description = "the real follow-up and interpretation (upper bound)"

    def generate(self, cases: list[Case]) -> list[Output]:
        return [Output(c.followup.copy(), c.reference) for c in cases]


class NearestNeighbour:
    """Retrieval from training pairs (see the module docstring for the matching order)."""

    name = "nearest-neighbour"
    cache_key = None
    description = "training pair with the same prompt (else progression) and the most similar prior"

    def __init__(self, train_cases: list[Case]):
        if not train_cases:
            raise ValueError("nearest-neighbour retrieval needs training pairs; none were found")
        self.train = train_cases
        self.thumbs = np.stack([_thumb(c.prior) for c in train_cases])
        self.by_prompt: dict[str, list[int]] = {}
        self.by_progression: dict[str, list[int]] = {}
        self.by_change: dict[tuple, list[int]] = {}
        for i, c in enumerate(train_cases):
            self.by_prompt.setdefault(_normalise_prompt(c.prompt), []).append(i)
            if c.progression:
                self.by_progression.setdefault(_progression_key(c.progression), []).append(i)
                self.by_change.setdefault(_change_key(c.progression), []).append(i)
        self.match_levels: dict[str, int] = {}

    def candidates(self, case: Case) -> tuple[list[int], str]:
        same = self.by_prompt.get(_normalise_prompt(case.prompt))
        if same:
            return same, "prompt"
        if case.progression:
            same = self.by_progression.get(_progression_key(case.progression))
            if same:
                return same, "progression"
            same = self.by_change.get(_change_key(case.progression))
            if same:
                return same, "finding and direction"
        return list(range(len(self.train))), "any"

    def generate(self, cases: list[Case]) -> list[Output]:
        outputs = []
        self.match_levels = {}
        for case in cases:
            pool, level = self.candidates(case)
            self.match_levels[level] = self.match_levels.get(level, 0) + 1
            distances = ((self.thumbs[pool] - _thumb(case.prior)) ** 2).mean(axis=1)
            best = self.train[pool[int(np.argmin(distances))]]
            image = best.followup
            if image.shape != case.prior.shape:
                from .classifier import resize_images

                image = resize_images([image], case.prior.shape[0])[0]
            outputs.append(Output(image.copy(), best.reference))
        return outputs


def _progression_key(p: dict) -> str:
    return json.dumps([p.get("finding"), p.get("location"), p.get("direction"), p.get("severity")])


def _change_key(p: dict) -> tuple:
    return (p.get("finding"), p.get("direction"))


def _folder_identity(folder: Path) -> str:
    """A short hash of a checkpoint folder's file names, sizes and modification times."""
    items = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            stat = path.stat()
            items.append((str(path.relative_to(folder)), stat.st_size, int(stat.st_mtime)))
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()[:16]


class VQReconstruction:
    name = "vq-reconstruction"
    description = "true follow-up through the VQ tokenizer (image upper bound)"

    def __init__(self, vq_path):
        from ..tokenization.vq import load_vq

        self.path = Path(vq_path)
        self.vq = load_vq(self.path)
        self.size = int(getattr(self.vq.config, "resolution", 0) or 0)
        self.cache_key = f"vq-{_folder_identity(self.path)}"

    def generate(self, cases: list[Case]) -> list[Output]:
        from ..tokenization.vq import decode_codes, encode_images
        from .classifier import resize_images

        if not cases:
            return []
        side = cases[0].followup.shape[0]
        images = np.stack([c.followup for c in cases])
        recon = decode_codes(self.vq, encode_images(self.vq, images))
        if recon.shape[1:] != images.shape[1:]:
            recon = resize_images(recon, side)
        return [Output(r, c.reference) for r, c in zip(recon, cases, strict=True)]


class ModelSystem:
    """A ProgEmu pipeline; ``seed`` makes its sampling (and so its cache entry) reproducible.
    ``reads``: instead of drawing, the model interprets a given follow-up
    (``ProgEmuPipeline.interpret_batch``): ``"true"`` each case's true follow-up, ``"prior"``
    its unchanged prior. The row's image is then that image as the model read it."""

    def __init__(
        self,
        pipeline,
        *,
        name: str,
        folder: Path | None,
        seed: int,
        reads: str | None = None,
        **sampling,
    ):
        if reads not in (None, *READABLE_FOLLOWUPS):
            raise ValueError(f"reads must be one of {READABLE_FOLLOWUPS} or None, got {reads!r}")
        self.pipeline = pipeline
        self.name = name
        self.seed = seed
        self.reads = reads
        self.sampling = sampling
        self.description = (
            f"ProgEmu interpretation of the {READABLE_FOLLOWUPS[reads]}"
            if reads
            else "ProgEmu pipeline"
        )
        self.progress = True  # the pipeline's tqdm bar over batches
        identity = _folder_identity(folder) if folder is not None else "in-memory"
        mode = {"reads": reads} if reads else {}
        settings = json.dumps({**sampling, **mode}, sort_keys=True)
        self.cache_key = (
            f"model-{identity}-seed{seed}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}"
        )

    def generate(self, cases: list[Case]) -> list[Output]:
        from .classifier import resize_images

        if not cases:
            return []
        priors, prompts = [c.prior for c in cases], [c.prompt for c in cases]
        if self.reads:
            results = self.pipeline.interpret_batch(
                priors,
                prompts,
                [c.followup if self.reads == "true" else c.prior for c in cases],
                seed=self.seed,
                progress=self.progress,
                **self.sampling,
            )
        else:
            results = self.pipeline.batch(
                priors, prompts, seed=self.seed, progress=self.progress, **self.sampling
            )
        side = cases[0].prior.shape[0]
        outputs = []
        for result in results:
            image = result.image
            if image.shape != (side, side):
                image = resize_images([image], side)[0]
            outputs.append(Output(image, result.interpretation))
        return outputs


def load_model_system(
    checkpoint: str, *, seed: int, reads: str | None = None, **sampling
) -> tuple[object | None, str]:
    """``(ModelSystem, "")`` when ``checkpoint`` resolves to loadable weights, else
    ``(None, reason)``: the model package missing, no weights, a broken checkpoint."""
    try:
        from .. import hub
        from ..model.pipeline import load
    except ImportError as err:
        return None, f"the model package is not importable yet ({err})"
    try:
        resolved = hub.resolve(checkpoint, download=False, progress=False)
        folder = resolved.path
        pipeline = load(folder)
    except (FileNotFoundError, ValueError, OSError, ImportError, KeyError) as err:
        return None, f"no usable weights for checkpoint {checkpoint!r}: {err}"
    # Non-default sampling shows in the row's name: "model:lite (temperature=0.7)".
    settings = [f"{k}={v}" for k, v in sorted(sampling.items())]
    if reads:
        settings.insert(0, f"reads the {READABLE_FOLLOWUPS[reads]}")
    name = f"model:{checkpoint}" + (f" ({', '.join(settings)})" if settings else "")
    system = ModelSystem(
        pipeline,
        name=name,
        folder=Path(folder),
        seed=seed,
        reads=reads,
        **sampling,
    )
    return system, ""
