"""The ICG-CXR folder layout: read a real ICG-CXR download, and write simulated pairs the same way.

A pair lives in its own folder, at any depth below a branch folder::

    <root>/<branch>/.../<patient>/<pair>/<pair>.json
                                        /<pair>-ref-reg.png   (prior, registered)
                                        /<pair>-flu-reg.png   (follow-up, registered)

e.g. ``mimic_cxr/pa/1/p10/p10000032/<pair>/`` in the real data and
``simulated/pa/<patient>/<pair>/`` for the phantom. The JSON holds ``progression-description``
(the prompt) and ``changes-of-findings`` (the interpretation), and optionally ``time-interval``,
``view``, ``subject-id``, ``split``, ``reference-diseases`` / ``followup-diseases`` (14 CheXpert
labels, -100 = missing) and, for simulated pairs, ``expert-annotation``.

Writing is atomic: a pair is written into a hidden temporary folder next to its final place, then
renamed, so a pair folder is either complete or absent (an interrupted writer leaves only a
``.tmp-*`` folder, which readers skip and :func:`remove_stale_temp_folders` deletes).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..phantom.findings import CHEXPERT_LABELS
from ..phantom.progression import AnnotationEntry

PRIOR_SUFFIX = "-ref-reg.png"
FOLLOWUP_SUFFIX = "-flu-reg.png"
TEMP_PREFIX = ".tmp-"
MISSING_LABEL = -100

# JSON field names, in the order we write them.
_KNOWN_FIELDS = (
    "subject-id",
    "split",
    "view",
    "time-interval",
    "progression-description",
    "changes-of-findings",
    "reference-diseases",
    "followup-diseases",
    "expert-annotation",
)


@dataclass
class PairRecord:
    """One ICG-CXR pair: where its files are and what its JSON says.

    ``folder`` is the pair folder; relative to the dataset root when handed to
    :func:`write_pair`, absolute when it comes from :func:`iter_pairs`. Optional fields are None
    when the JSON lacks them; ``extra`` keeps JSON fields this class does not know.
    """

    pair_id: str
    folder: Path
    prompt: str
    interpretation: str
    split: str | None = None
    subject_id: str | None = None
    annotation: list[AnnotationEntry] | None = None
    reference_labels: list[int] | None = None
    followup_labels: list[int] | None = None
    time_interval: int | float | str | None = None
    view: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)

    @property
    def json_path(self) -> Path:
        return self.folder / f"{self.pair_id}.json"

    @property
    def prior_path(self) -> Path:
        return self.folder / f"{self.pair_id}{PRIOR_SUFFIX}"

    @property
    def followup_path(self) -> Path:
        return self.folder / f"{self.pair_id}{FOLLOWUP_SUFFIX}"

    def to_json(self) -> dict:
        data = {
            "subject-id": self.subject_id,
            "split": self.split,
            "view": self.view,
            "time-interval": self.time_interval,
            "progression-description": self.prompt,
            "changes-of-findings": self.interpretation,
            "reference-diseases": self.reference_labels,
            "followup-diseases": self.followup_labels,
            "expert-annotation": (
                None if self.annotation is None else [e.to_dict() for e in self.annotation]
            ),
        }
        data = {key: value for key, value in data.items() if value is not None}
        return {**data, **self.extra}

    @classmethod
    def from_json(cls, data: object, folder: Path, pair_id: str, source: Path) -> PairRecord:
        """Parse one pair's JSON; errors name ``source``."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")

        def text(key: str, required: bool) -> str | None:
            value = data.get(key)
            if value is None:
                if required:
                    raise ValueError(f"{source}: missing required field {key!r}")
                return None
            if not isinstance(value, str | int):
                raise ValueError(f"{source}: field {key!r} should be text, got {value!r}")
            return str(value)

        annotation = None
        if data.get("expert-annotation") is not None:
            raw = data["expert-annotation"]
            if not isinstance(raw, list):
                raise ValueError(f"{source}: 'expert-annotation' should be a list")
            try:
                annotation = [AnnotationEntry.from_dict(entry) for entry in raw]
            except (ValueError, TypeError) as err:
                raise ValueError(f"{source}: bad 'expert-annotation': {err}") from None
        interval = data.get("time-interval")
        if interval is not None and not isinstance(interval, int | float | str):
            raise ValueError(f"{source}: 'time-interval' should be a number or text")
        return cls(
            pair_id=pair_id,
            folder=folder,
            prompt=text("progression-description", required=True),
            interpretation=text("changes-of-findings", required=False) or "",
            split=text("split", required=False),
            # Real ICG-CXR sometimes omits it: the patient folder is the subject.
            subject_id=text("subject-id", required=False) or folder.parent.name,
            annotation=annotation,
            reference_labels=_labels(data.get("reference-diseases"), "reference-diseases", source),
            followup_labels=_labels(data.get("followup-diseases"), "followup-diseases", source),
            time_interval=interval,
            view=text("view", required=False),
            extra={k: v for k, v in data.items() if k not in _KNOWN_FIELDS},
        )


def _labels(value: object, key: str, source: Path) -> list[int] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != len(CHEXPERT_LABELS)
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(
            f"{source}: {key!r} should be a list of {len(CHEXPERT_LABELS)} numeric CheXpert "
            f"labels (-100 = missing), got {value!r}"
        )
    return [int(v) for v in value]


def _check_image(image: np.ndarray, what: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(
            f"{what} image must be a 2-D uint8 grayscale array, got shape {image.shape} "
            f"dtype {image.dtype}"
        )
    return image


def _save_png(image: np.ndarray, path: Path, compress_level: int) -> None:
    from PIL import Image

    Image.fromarray(image, mode="L").save(path, format="PNG", compress_level=compress_level)


def write_pair(
    root: str | os.PathLike,
    record: PairRecord,
    prior_img: np.ndarray,
    followup_img: np.ndarray,
    *,
    overwrite: bool = False,
    compress_level: int = 3,
) -> Path:
    """Write one pair under ``root`` at ``record.folder``, atomically; return the pair folder.

    An existing pair folder is a FileExistsError unless ``overwrite``.
    """
    root = Path(root)
    prior_img = _check_image(prior_img, "prior")
    followup_img = _check_image(followup_img, "follow-up")
    if prior_img.shape != followup_img.shape:
        raise ValueError(
            f"prior {prior_img.shape} and follow-up {followup_img.shape} differ in size"
        )
    if not record.pair_id or "/" in record.pair_id or record.pair_id.startswith("."):
        raise ValueError(f"bad pair id {record.pair_id!r}")
    final = record.folder if record.folder.is_absolute() else root / record.folder
    if final.name != record.pair_id:
        raise ValueError(f"pair folder {final} must be named after its pair id {record.pair_id}")
    if final.exists() and not overwrite:
        raise FileExistsError(f"pair folder already exists: {final}")
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{record.pair_id}-", dir=final.parent))
    try:
        _save_png(prior_img, temp / f"{record.pair_id}{PRIOR_SUFFIX}", compress_level)
        _save_png(followup_img, temp / f"{record.pair_id}{FOLLOWUP_SUFFIX}", compress_level)
        text = json.dumps(record.to_json(), indent=2, ensure_ascii=False) + "\n"
        (temp / f"{record.pair_id}.json").write_text(text, encoding="utf-8")
        # mkdtemp makes 0700 folders; give the pair the usual permissions.
        os.chmod(temp, 0o755)
        if final.exists():
            old = final.parent / f"{TEMP_PREFIX}old-{record.pair_id}"
            os.rename(final, old)
            os.rename(temp, final)
            shutil.rmtree(old)
        else:
            os.rename(temp, final)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return final


def remove_stale_temp_folders(root: str | os.PathLike) -> int:
    """Delete the ``.tmp-*`` folders an interrupted writer left; return how many."""
    removed = 0
    for dirpath, dirnames, _ in os.walk(root):
        for name in [d for d in dirnames if d.startswith(TEMP_PREFIX)]:
            shutil.rmtree(Path(dirpath) / name, ignore_errors=True)
            removed += 1
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return removed


def read_pair(folder: str | os.PathLike) -> PairRecord:
    """The record of one pair folder (``<folder>/<folder name>.json``)."""
    folder = Path(folder).absolute()
    source = folder / f"{folder.name}.json"
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: malformed JSON: {err}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{source}: not UTF-8 text: {err}") from None
    return PairRecord.from_json(data, folder=folder, pair_id=folder.name, source=source)


def iter_pairs(root: str | os.PathLike, split: str | None = None) -> Iterator[PairRecord]:
    """Every pair below ``root`` (any nesting), in sorted path order; only ``split`` if given.

    A folder is a pair when it holds a JSON named after itself. Hidden folders (temporary ones
    included) are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no ICG-CXR folder at {root}")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folder = Path(dirpath)
        if f"{folder.name}.json" in filenames:
            record = read_pair(folder)
            if split is None or record.split == split:
                yield record


def _load_gray(path: Path) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"missing image {path}")
    with Image.open(path) as image:
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit PNGs: keep the top 8 bits.
            array = np.asarray(image, dtype=np.int64)
            return np.clip(array // 257, 0, 255).astype(np.uint8)
        return np.asarray(image.convert("L"), dtype=np.uint8)


def load_pair_images(record: PairRecord) -> tuple[np.ndarray, np.ndarray]:
    """(prior, follow-up) as 2-D uint8 arrays."""
    return _load_gray(record.prior_path), _load_gray(record.followup_path)
