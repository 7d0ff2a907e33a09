"""The simulated ICG-CXR dataset: K counterfactual follow-ups per simulated patient.

Each patient gets one anatomy, one prior state and one prior radiograph; each of its K pairs applies
a different sampled progression to that same prior, so the pairs of one patient are true
counterfactuals of each other. Pairs are written in the ICG-CXR layout under
``simulated/pa/<patient>/<pair>/`` (see :mod:`progemu_lite.data.icgcxr`).

Determinism: patient ``i`` draws from ``SeedSequence(seed, spawn_key=(i, 0))`` and its pair ``k``
from ``spawn_key=(i, k + 1)``, so patient ``i`` is the same whatever the number of patients, and a
pair is the same whether or not its siblings were generated in the same run (resume). The split
(train/val/test, 80/10/10) is a hash of the patient seed, so a patient's pairs never straddle
splits.

Generator versions: ``generator_version`` picks how the subtlest signs are drawn
(:data:`signs.GENERATOR_VERSIONS`): the same patients, states, texts and annotations, with
images that differ only where a small nodule, mild edema or a plate of atelectasis is drawn.

Streaming: each patient is rendered and written before the next starts (constant memory), by one
process or a pool of workers. A pair folder appears complete or not at all; rerunning skips
complete pairs. ``<out>/manifest.json`` records the arguments; a rerun with different arguments
is refused.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..data.icgcxr import (
    FOLLOWUP_SUFFIX,
    PRIOR_SUFFIX,
    PairRecord,
    remove_stale_temp_folders,
    write_pair,
)
from ..files import atomic_write_json
from .progression import (
    AnnotationEntry,
    Progression,
    apply_progression,
    sample_prior_state,
    sample_progression,
)
from .signs import DEFAULT_GENERATOR_VERSION, check_generator_version
from .state import ChestState
from .text import chexpert_labels, interpretation_text, prompt_text

BRANCH = Path("simulated") / "pa"
VIEW = "PA"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "progemu-lite-phantom"
# A change that makes the same arguments produce different files needs a new entry in
# signs.GENERATOR_VERSIONS, so that old folders are not resumed and stay reproducible.
SPLIT_FRACTIONS: tuple[tuple[str, float], ...] = (("train", 0.8), ("val", 0.1), ("test", 0.1))
# The renderer's range (render.check_size); multiples of 16 keep the VQ grid (factor 8) even.
MIN_SIZE = 64
MAX_SIZE = 1024
SIZE_STEP = 16


@dataclass(frozen=True)
class PhantomConfig:
    """What determines a simulated dataset's files."""

    patients: int
    pairs_per_patient: int
    size: int
    seed: int
    generator_version: int = DEFAULT_GENERATOR_VERSION

    def __post_init__(self) -> None:
        if self.patients < 1:
            raise ValueError(f"--patients must be at least 1, got {self.patients}")
        if self.pairs_per_patient < 1:
            raise ValueError(
                f"--pairs-per-patient must be at least 1, got {self.pairs_per_patient}"
            )
        if not MIN_SIZE <= self.size <= MAX_SIZE or self.size % SIZE_STEP:
            raise ValueError(
                f"--size must be a multiple of {SIZE_STEP} between {MIN_SIZE} and {MAX_SIZE}, "
                f"got {self.size}"
            )
        if self.seed < 0:
            raise ValueError(f"--seed must be non-negative, got {self.seed}")
        try:
            check_generator_version(self.generator_version)
        except ValueError as err:
            raise ValueError(f"--generator-version: {err}") from None

    def manifest(self) -> dict:
        args = asdict(self)
        del args["generator_version"]  # recorded beside the arguments, as before version 2
        return {
            "format": MANIFEST_FORMAT,
            "generator-version": self.generator_version,
            "args": args,
        }

    @classmethod
    def from_manifest(cls, manifest: dict) -> PhantomConfig:
        """The config a manifest records (ValueError, TypeError or KeyError if it is not one)."""
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"not a {MANIFEST_FORMAT} manifest")
        return cls(**manifest["args"], generator_version=manifest["generator-version"])


@dataclass
class SimulatedPair:
    """One generated pair, in memory."""

    record: PairRecord
    prior_state: ChestState
    followup_state: ChestState
    progression: Progression
    annotation: list[AnnotationEntry]
    prior: object  # render.Radiograph
    followup: object  # render.Radiograph


def patient_id(index: int) -> str:
    return f"sim{index:06d}"


def pair_id(index: int, k: int) -> str:
    return f"{patient_id(index)}_{k:02d}"


def pair_folder(index: int, k: int) -> Path:
    """A pair's folder relative to the dataset root."""
    return BRANCH / patient_id(index) / pair_id(index, k)


def patient_seed_sequence(seed: int, index: int, stream: int) -> np.random.SeedSequence:
    """The random stream of patient ``index``: stream 0 draws the patient and its prior,
    stream k + 1 the k-th pair. Public so that analyses (lesson 8) can redraw the population."""
    return np.random.SeedSequence(seed, spawn_key=(index, stream))


def patient_seed(seed: int, index: int) -> int:
    """A 64-bit number that identifies patient ``index`` of a run with ``seed``."""
    words = patient_seed_sequence(seed, index, 0).generate_state(2, dtype=np.uint32)
    return int(words[0]) << 32 | int(words[1])


def patient_split(seed: int, index: int) -> str:
    """train/val/test from a hash of the patient seed (80/10/10)."""
    digest = hashlib.sha256(str(patient_seed(seed, index)).encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for name, share in SPLIT_FRACTIONS:
        cumulative += share
        if fraction < cumulative:
            return name
    return SPLIT_FRACTIONS[-1][0]


def simulate_patient(
    config: PhantomConfig,
    index: int,
    only: set[int] | None = None,
    reuse_renderer: bool = True,
) -> Iterator[SimulatedPair]:
    """Yield patient ``index``'s pairs (only the pair numbers in ``only`` if given), one by one.

    ``reuse_renderer=False`` builds a fresh renderer for every image (the benchmark's baseline
    for the per-patient anatomy cache); the images are identical either way.
    """
    from .anatomy import sample_patient
    from .render import PatientRenderer, followup_acquisition, sample_acquisition

    rng = np.random.default_rng(patient_seed_sequence(config.seed, index, 0))
    anatomy = sample_patient(rng)
    prior_state = sample_prior_state(rng)
    prior_acq = sample_acquisition(rng)
    # All K progressions come from the patient's stream, so they can be kept distinct.
    progressions = distinct_progressions(prior_state, config.pairs_per_patient, rng)

    def new_renderer() -> PatientRenderer:
        return PatientRenderer(anatomy, config.size, config.generator_version)

    shared = new_renderer() if reuse_renderer else None

    def renderer() -> PatientRenderer:
        return shared if shared is not None else new_renderer()

    prior = renderer().render(prior_state, prior_acq)
    subject, split = patient_id(index), patient_split(config.seed, index)
    prior_labels = chexpert_labels(prior_state)
    for k in range(config.pairs_per_patient):
        if only is not None and k not in only:
            continue
        pair_rng = np.random.default_rng(patient_seed_sequence(config.seed, index, k + 1))
        progression = progressions[k]
        followup_state, annotation = apply_progression(prior_state, progression, pair_rng)
        followup_acq = followup_acquisition(prior_acq, pair_rng)
        followup = renderer().render(followup_state, followup_acq)
        record = PairRecord(
            pair_id=pair_id(index, k),
            folder=pair_folder(index, k),
            prompt=prompt_text(progression, prior_state, pair_rng),
            interpretation=interpretation_text(annotation, pair_rng),
            split=split,
            subject_id=subject,
            annotation=annotation,
            reference_labels=prior_labels,
            followup_labels=chexpert_labels(followup_state),
            # Days between the studies, as in a typical inpatient/outpatient follow-up.
            time_interval=int(pair_rng.integers(1, 181)),
            view=VIEW,
            extra={"requested-progression": progression.to_dict()},
        )
        yield SimulatedPair(
            record, prior_state, followup_state, progression, annotation, prior, followup
        )


def distinct_progressions(
    prior: ChestState, count: int, rng: np.random.Generator, tries: int = 100
) -> list[Progression]:
    """``count`` sampled progressions from ``prior``, all different while that is possible."""
    chosen: list[Progression] = []
    for _ in range(count):
        for _ in range(tries):
            progression = sample_progression(prior, rng)
            if progression not in chosen:
                break
        chosen.append(progression)
    return chosen


def pair_complete(out: Path, index: int, k: int) -> bool:
    """Whether pair ``k`` of patient ``index`` is on disk with all three files. Our writer never
    leaves a partial pair folder; this also catches one damaged by hand."""
    folder = out / pair_folder(index, k)
    name = pair_id(index, k)
    return all(
        (folder / f"{name}{suffix}").is_file()
        for suffix in (".json", PRIOR_SUFFIX, FOLLOWUP_SUFFIX)
    )


def missing_pairs(out: Path, config: PhantomConfig, index: int) -> set[int]:
    """Pair numbers of patient ``index`` not yet (completely) on disk."""
    return {k for k in range(config.pairs_per_patient) if not pair_complete(out, index, k)}


def write_patient(out: Path, config: PhantomConfig, index: int, reuse_renderer: bool = True) -> int:
    """Write patient ``index``'s missing pairs; return how many were written."""
    todo = missing_pairs(out, config, index)
    if not todo:
        return 0
    written = 0
    for pair in simulate_patient(config, index, only=todo, reuse_renderer=reuse_renderer):
        # overwrite: replaces a damaged pair folder, if any.
        write_pair(out, pair.record, pair.prior.image, pair.followup.image, overwrite=True)
        written += 1
    return written


def _write_patient_job(job: tuple[str, dict, int, bool]) -> int:
    out, config, index, reuse_renderer = job
    return write_patient(Path(out), PhantomConfig(**config), index, reuse_renderer)


def prepare_output(out: Path, config: PhantomConfig) -> None:
    """Create ``out`` (or check it can be resumed) and write its manifest."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise PermissionError(f"cannot write to output folder {out}: {err.strerror}") from None
    manifest_path = out / MANIFEST_NAME
    wanted = config.manifest()
    if manifest_path.exists():
        try:
            found = json.loads(manifest_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{manifest_path}: malformed JSON: {err}") from None
        if found != wanted:
            raise ValueError(
                f"{out} holds a dataset made with different arguments "
                f"({_describe(found)}); this run asks for ({_describe(wanted)}). "
                "Rerun with the same arguments to resume, or choose another --out"
            )
        return
    leftovers = [p.name for p in out.iterdir() if not p.name.startswith(".")]
    if leftovers:
        raise ValueError(
            f"{out} is not empty and has no {MANIFEST_NAME} (found {', '.join(sorted(leftovers)[:5])}); "
            "choose an empty or new --out"
        )
    atomic_write_json(manifest_path, wanted, indent=2)


def _describe(manifest: object) -> str:
    if isinstance(manifest, dict) and isinstance(manifest.get("args"), dict):
        text = ", ".join(f"{k}={v}" for k, v in manifest["args"].items())
        return f"{text}, generator-version={manifest.get('generator-version')}"
    return repr(manifest)


def generate(
    out: str | os.PathLike,
    config: PhantomConfig,
    workers: int = 1,
    progress: bool = True,
    reuse_renderer: bool = True,
) -> dict:
    """Write (or finish writing) the dataset; return counts of written and skipped pairs."""
    out = Path(out)
    prepare_output(out, config)
    remove_stale_temp_folders(out)
    total = config.patients * config.pairs_per_patient
    done_before = sum(
        1
        for index in range(config.patients)
        for k in range(config.pairs_per_patient)
        if pair_complete(out, index, k)
    )
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total,
        initial=done_before,
        unit="pair",
        desc="phantom",
        disable=not progress,
        file=sys.stderr,
    )
    jobs = [(str(out), asdict(config), index, reuse_renderer) for index in range(config.patients)]
    written = 0
    with bar:
        if workers <= 1 or config.patients == 1:
            for job in jobs:
                count = _write_patient_job(job)
                written += count
                bar.update(count)
        else:
            # fork: the workers inherit the imported modules instead of importing them again.
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else None)
            with context.Pool(workers) as pool:
                for count in pool.imap(_write_patient_job, jobs, chunksize=1):
                    written += count
                    bar.update(count)
    return {"written": written, "skipped": done_before, "total": total}
