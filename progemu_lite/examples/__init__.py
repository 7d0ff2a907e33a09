"""Bundled example data: one simulated prior radiograph with its findings and three prompts.

``simulated_prior.png`` (128 x 128, the ``lite`` image size) and ``simulated_prior.json`` were
written once by :func:`write_example_prior` from the phantom with a fixed seed; the JSON records
the findings (the :class:`~progemu_lite.phantom.state.ChestState`), the recipe that made the
image, and three progression prompts phrased like ICG-CXR's ``progression-description``: one
worsening of an existing finding, one new finding elsewhere, one resolution. ``make demo`` runs
them (:mod:`progemu_lite.model.demo`). The patient is simulated; nothing here is clinical data.

Regenerate (only if the phantom changes on purpose; a test checks the files still match)::

    python -c "from progemu_lite.examples import write_example_prior; write_example_prior()"
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..phantom.findings import finding_spec, location_text
from ..phantom.progression import Progression
from ..phantom.state import ChestState, FindingState

EXAMPLES_DIR = Path(__file__).resolve().parent
PRIOR_PNG = "simulated_prior.png"
PRIOR_JSON = "simulated_prior.json"
EXAMPLE_FORMAT = "progemu-lite-example/1"

# The recipe. The findings are chosen, not sampled, so that the three prompts below make sense:
# a small right effusion that can worsen, a left lower lobe consolidation that can resolve, and
# a heart that can enlarge (a new finding away from both).
EXAMPLE_SEED = 7
EXAMPLE_SIZE = 128
EXAMPLE_STATE = ChestState(
    (
        FindingState("pleural_effusion", "right", 1),
        FindingState("consolidation", "left_lower_lobe", 2),
    )
)
EXAMPLE_PROGRESSIONS: tuple[Progression, ...] = (
    Progression("pleural_effusion", "right", "worse", 3),
    Progression("cardiomegaly", None, "new", 2),
    Progression("consolidation", "left_lower_lobe", "resolved", 0),
)


@dataclass(frozen=True)
class ExamplePrompt:
    """A progression and its prompt text (ICG-CXR ``progression-description`` style)."""

    progression: Progression
    text: str


@dataclass(frozen=True)
class ExamplePrior:
    """The bundled simulated prior: its image, findings, prompts and how it was made."""

    image: np.ndarray  # uint8 (size, size)
    state: ChestState
    prompts: tuple[ExamplePrompt, ...]
    recipe: dict
    description: str


def describe_findings(state: ChestState) -> str:
    """``small right pleural effusion, moderate left lower lobe consolidation``."""
    parts = []
    for f in state.findings:
        spec = finding_spec(f.name)
        words = (spec.severity_word(f.severity), location_text(f.location), spec.text)
        parts.append(" ".join(w for w in words if w))
    return ", ".join(parts) or "no findings"


def render_example_prior(
    seed: int = EXAMPLE_SEED, size: int = EXAMPLE_SIZE, state: ChestState = EXAMPLE_STATE
) -> ExamplePrior:
    """Render the example from its recipe: one patient and one acquisition drawn from
    ``default_rng(seed)``, the fixed ``state``, and prompts worded by the phantom's own text
    generator (``default_rng([seed, 1])``)."""
    from ..phantom.anatomy import sample_patient
    from ..phantom.render import PatientRenderer, sample_acquisition
    from ..phantom.text import prompt_text

    rng = np.random.default_rng(seed)
    anatomy = sample_patient(rng)
    acquisition = sample_acquisition(rng)
    image = PatientRenderer(anatomy, size).render(state, acquisition).image
    text_rng = np.random.default_rng([seed, 1])
    prompts = tuple(ExamplePrompt(p, prompt_text(p, state, text_rng)) for p in EXAMPLE_PROGRESSIONS)
    recipe = {
        "function": "progemu_lite.examples.render_example_prior",
        "seed": seed,
        "size": size,
        "anatomy": "phantom.anatomy.sample_patient(numpy.random.default_rng(seed))",
        "acquisition": asdict(acquisition),
        "prompt_wording": "phantom.text.prompt_text with numpy.random.default_rng([seed, 1])",
    }
    return ExamplePrior(image, state, prompts, recipe, describe_findings(state))


def _to_json(example: ExamplePrior) -> dict:
    return {
        "format": EXAMPLE_FORMAT,
        "image": PRIOR_PNG,
        "size": int(example.image.shape[0]),
        "description": example.description,
        "findings": [
            {
                "finding": f.name,
                "location": f.location,
                "severity": f.severity,
                "severity_word": finding_spec(f.name).severity_word(f.severity),
            }
            for f in example.state.findings
        ],
        "prompts": [
            {"progression": p.progression.to_dict(), "prompt": p.text} for p in example.prompts
        ],
        "recipe": example.recipe,
        "note": "Simulated patient (ProgEmu-Lite phantom). Not a real radiograph; not for "
        "clinical use.",
    }


def write_example_prior(folder: str | os.PathLike = EXAMPLES_DIR) -> tuple[Path, Path]:
    """Render the example and write its PNG and JSON into ``folder`` (each atomically)."""
    from PIL import Image

    from ..files import atomic_write, atomic_write_json

    folder = Path(folder)
    example = render_example_prior()
    png = atomic_write(
        folder / PRIOR_PNG,
        lambda tmp: Image.fromarray(example.image, mode="L").save(tmp, format="PNG"),
        suffix=".png",
    )
    return png, atomic_write_json(folder / PRIOR_JSON, _to_json(example), indent=2)


def load_example_prior(folder: str | os.PathLike = EXAMPLES_DIR) -> ExamplePrior:
    """The bundled example (or one written by :func:`write_example_prior` into ``folder``)."""
    from PIL import Image

    folder = Path(folder)
    json_path, png_path = folder / PRIOR_JSON, folder / PRIOR_PNG
    for path in (json_path, png_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"example file {path} is missing; reinstall progemu-lite or run "
                "progemu_lite.examples.write_example_prior()"
            )
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{json_path} is not valid JSON: {err}") from None
    if data.get("format") != EXAMPLE_FORMAT:
        raise ValueError(f"{json_path} has format {data.get('format')!r}, not {EXAMPLE_FORMAT!r}")
    with Image.open(png_path) as im:
        if im.mode != "L":
            raise ValueError(f"{png_path} must be an 8-bit grayscale PNG, got mode {im.mode!r}")
        image = np.asarray(im, dtype=np.uint8)
    state = ChestState(
        tuple(FindingState(f["finding"], f["location"], f["severity"]) for f in data["findings"])
    )
    prompts = tuple(
        ExamplePrompt(Progression(**p["progression"]), p["prompt"]) for p in data["prompts"]
    )
    for p in prompts:
        p.progression.check_applies_to(state)
    return ExamplePrior(image, state, prompts, data["recipe"], data["description"])
