"""``ProgEmuPipeline``: prior image + progression prompt -> counterfactual image + interpretation.

One folder holds a checkpoint: ``model.safetensors`` and ``config.json`` (transformers'
``Emu3ForConditionalGeneration``, VQ-VAE included), the tokenizer files and ``progemu.json``
(preset, image size, grid, library versions)::

    pipe = ProgEmuPipeline.from_pretrained("path/to/checkpoint")
    result = pipe(prior, "The left pleural effusion becomes moderate.", seed=0)
    result.image, result.interpretation, result.token_probabilities

Anything that is not an existing local folder (a registry name such as ``progemu``, a hub id
``org/name[@rev]``) goes through :func:`progemu_lite.hub.native_checkpoint`, which downloads
and converts as needed. A converted folder has no ``progemu.json``: its preset and image
geometry are then read from its ``config.json`` (the VQ config fixes the preset, e.g. the
3-channel 32768-code Emu3 tokenizer means ``full``: 512 x 512 images, a 64 x 64 grid).

The 8B ``full`` model goes to CUDA when there is one (bf16, flash attention 2 when
``flash_attn`` is installed, else sdpa; ``device_map="auto"`` offload on GPUs under 24 GB).
On a CPU it is refused *before* any weight is read, with the expected memory and time, unless
``force=True`` (see :func:`estimate_resources` and :func:`check_resources`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from progemu_lite.files import staged_folder
from progemu_lite.model.config import PRESETS, build_model, config_mismatches
from progemu_lite.model.generation import (
    DEFAULT_MAX_TEXT_TOKENS,
    DEFAULT_MIN_TEXT_TOKENS,
    DEFAULT_TOP_K,
    SamplingSettings,
    generate,
)
from progemu_lite.tokenization.sequence import SequenceBuilder
from progemu_lite.tokenization.text import load_text_tokenizer, train_text_tokenizer
from progemu_lite.tokenization.vq import IMAGE_SIZES, SPATIAL_FACTOR, vq_preset

PIPELINE_FILE = "progemu.json"
PIPELINE_FORMAT = "progemu-lite/1"
DICOM_SUFFIXES = (".dcm", ".dicom")


class ImageConversionWarning(UserWarning):
    """An input image was converted (colour to gray, 16-bit to 8-bit)."""


@dataclass
class Counterfactual:
    """One generated follow-up: the image, the interpretation and how it was produced."""

    image: np.ndarray  # uint8 (H, W): the counterfactual follow-up image
    interpretation: str
    token_ids: np.ndarray  # every generated id after the prefix, EOS included
    token_probabilities: np.ndarray  # probability of each of those ids when it was chosen
    codes: np.ndarray  # (h, w) VQ codes of the image
    prior: np.ndarray | None  # uint8 (H, W): the prior as the model saw it
    prompt: str
    truncated: bool  # True when the interpretation was cut at max_text_tokens (EOS forced)
    text_probabilities: np.ndarray  # probabilities of the interpretation's tokens (no EOS)
    settings: dict = field(default_factory=dict)


def _versions() -> dict:
    import tokenizers
    import torch
    import transformers

    from progemu_lite import __version__

    return {
        "progemu_lite": __version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "torch": torch.__version__,
    }


def _to_gray_uint8(array: np.ndarray, what: str) -> np.ndarray:
    """A 2-D uint8 image from gray/RGB(A), 8/16-bit or float [0, 1] input."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        warnings.warn(
            f"{what} is colour ({array.shape[-1]} channels); converted to grayscale",
            ImageConversionWarning,
            stacklevel=3,
        )
        # ITU-R BT.601 luma, kept in the input's number type so the checks below still apply.
        luma = array[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        if np.issubdtype(array.dtype, np.integer):
            luma = np.rint(luma).astype(array.dtype)
        array = luma
    if array.ndim != 2:
        raise ValueError(f"{what} must be a 2-D grayscale image, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{what} is empty")
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        raise ValueError(f"{what} is a boolean mask, not an image")
    if np.issubdtype(array.dtype, np.integer):
        lo, hi = int(array.min()), int(array.max())
        if lo >= 0 and hi <= 255:
            return array.astype(np.uint8)
        warnings.warn(
            f"{what} has values up to {hi} (more than 8 bits); rescaled from [{lo}, {hi}] to 8-bit",
            ImageConversionWarning,
            stacklevel=3,
        )
        scaled = (array.astype(np.float64) - lo) / max(hi - lo, 1)
        return np.rint(scaled * 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{what} contains NaN or infinite values")
        if array.min() < 0 or array.max() > 1:
            raise ValueError(
                f"{what} is a float image with values in [{array.min():.3g}, {array.max():.3g}]; "
                "float images must lie in [0, 1]"
            )
        return np.rint(array * 255).astype(np.uint8)
    raise ValueError(f"{what} has unsupported dtype {array.dtype}")


def _read_image_file(path: Path, size: int) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.suffix.lower() in DICOM_SUFFIXES:
        from progemu_lite.data.dicom import read_radiograph  # lazy: pydicom is heavy

        return read_radiograph(path, size).pixels  # float [0, 1], padded to a square
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.asarray(im).astype(np.int64)
            if im.mode not in ("L", "RGB", "RGBA"):
                im = im.convert("RGB")
            return np.asarray(im)
    except UnidentifiedImageError as err:
        raise ValueError(f"{path} is not an image file PIL can read") from err


def prepare_image(image, size: int, *, what: str = "prior image") -> np.ndarray:
    """An uint8 ``(size, size)`` grayscale image from an array, a PIL image or a file path
    (PNG/JPEG/..., or DICOM via ``progemu_lite.data.dicom.read_radiograph``).

    Colour and 16-bit inputs are converted with an :class:`ImageConversionWarning`; a
    non-square image is padded to a square (``progemu_lite.data.dicom.fit_square``), then resized.
    """
    from PIL import Image

    if image is None:
        raise ValueError(f"{what} is missing (None)")
    if isinstance(image, str | os.PathLike):
        array = _read_image_file(Path(image), size)
        what = f"{what} {Path(image).name}"
    elif isinstance(image, Image.Image):
        array = np.asarray(image)
    else:
        array = np.asarray(image)
    gray = _to_gray_uint8(array, what)
    if gray.shape[0] != gray.shape[1]:
        from progemu_lite.data.dicom import fit_square  # one home for "make it square"

        square, _ = fit_square(gray.astype(np.float32) / 255.0, size)
        gray = np.rint(square * 255).astype(np.uint8)
    if gray.shape != (size, size):
        gray = np.asarray(
            Image.fromarray(gray).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8
        )
    return gray


# -- where a checkpoint lives, and whether this machine can run it ---------------------------

# GPUs with less memory than this get ``device_map="auto"`` (layers offloaded to CPU RAM).
OFFLOAD_BELOW_GIB = 24
# Rough rates behind the time estimates. Decoding one token reads every weight once, so it is
# bound by memory bandwidth; the prompt pass is bound by arithmetic. Typical sustained figures:
# a CPU socket ~20 GB/s and ~0.2 TFLOP/s (fp32), a data-centre GPU ~2 TB/s and ~300 TFLOP/s (bf16).
RATES = {
    "cpu": {"bytes_per_s": 20e9, "flops": 0.2e12},
    "cuda": {"bytes_per_s": 2.0e12, "flops": 300e12},
}
_DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "float64": 8}


class ResourceError(ValueError):
    """The model is too big for the chosen device (raised before any weight is read)."""


@dataclass(frozen=True)
class ResourceEstimate:
    """What running a checkpoint will cost, worked out from its config alone."""

    preset: str
    device: str  # "cpu" or "cuda"
    parameters: int
    bytes_per_parameter: int
    prefix_tokens: int  # BOS + prior image + prompt: one forward pass
    new_tokens: int  # image rows + EOL/EOF/EOI + interpretation: one decode step each
    seconds_per_token: float
    seconds_per_counterfactual: float

    @property
    def weight_bytes(self) -> int:
        return self.parameters * self.bytes_per_parameter

    def describe(self) -> str:
        dtype = {4: "float32", 2: "16-bit", 8: "float64"}.get(self.bytes_per_parameter, "?")
        return (
            f"{self.parameters / 1e9:.1f}B parameters need about {self.weight_bytes / 1e9:.0f} GB "
            f"of memory in {dtype} on {self.device}; decoding takes about "
            f"{self.seconds_per_token:.2g} s per token, so one counterfactual "
            f"({self.new_tokens} new tokens after a {self.prefix_tokens}-token prefix) takes "
            f"about {_duration(self.seconds_per_counterfactual)}"
        )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _size(n_bytes: int) -> str:
    if n_bytes >= 2**30:
        return f"{n_bytes / 2**30:.2f} GiB"
    return f"{n_bytes / 2**20:.1f} MiB"


def dtype_bytes(dtype) -> int:
    """Bytes per element of a torch dtype or its name (``"bfloat16"``, ``torch.float32``)."""
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return _DTYPE_BYTES[name]


def count_parameters(config) -> int:
    """Parameters of ``Emu3ForConditionalGeneration(config)``, counted on the meta device
    (no memory is allocated, so this is instant even for the 8B shapes)."""
    import torch
    from transformers import Emu3ForConditionalGeneration

    with torch.device("meta"):
        model = Emu3ForConditionalGeneration(config)
    return sum(p.numel() for p in model.parameters())


def estimate_resources(
    config,
    preset: str,
    *,
    device: str = "cpu",
    dtype=None,
    max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS,
    prompt_tokens: int = 32,
) -> ResourceEstimate:
    """Memory and time for one counterfactual with ``config`` on ``device`` ("cpu"/"cuda").

    ``dtype``: what the weights will be loaded as; default the checkpoint's own (``config.dtype``),
    else float32. The time is a lower bound from :data:`RATES` (the KV-cache reads that grow
    with the sequence are left out).
    """
    kind = str(device).split(":")[0]
    if kind not in RATES:
        raise ValueError(f"no resource figures for device {device!r}; use cpu or cuda")
    if dtype is None:
        dtype = getattr(config, "dtype", None) or getattr(config.text_config, "dtype", None)
    per_parameter = dtype_bytes(dtype) if dtype is not None else 4
    parameters = count_parameters(config)
    side = IMAGE_SIZES[preset] // SPATIAL_FACTOR
    image_tokens = side * (side + 1)  # rows of codes, each followed by EOL
    prefix = 1 + 3 + 3 + image_tokens + 2 + prompt_tokens  # BOS, header, "h*w", grid, EOF/EOI
    new = image_tokens + 3 + max_text_tokens
    rates = RATES[kind]
    per_token = parameters * per_parameter / rates["bytes_per_s"]
    prefill = 2 * parameters * prefix / rates["flops"]
    return ResourceEstimate(
        preset=preset,
        device=kind,
        parameters=parameters,
        bytes_per_parameter=per_parameter,
        prefix_tokens=prefix,
        new_tokens=new,
        seconds_per_token=per_token,
        seconds_per_counterfactual=prefill + new * per_token,
    )


def check_resources(estimate: ResourceEstimate, *, force: bool = False) -> None:
    """Refuse the 8B ``full`` model on a CPU (a :class:`ResourceError` saying the expected memory
    and time) unless ``force``; every other combination is allowed."""
    if estimate.device != "cpu" or estimate.preset != "full" or force:
        return
    raise ResourceError(
        "refusing to load the full 8B ProgEmu on a CPU: "
        + estimate.describe()
        + ". Run it on a CUDA GPU (see docs/gpu.md), or pass force=True (--force) to load it "
        "on the CPU anyway"
    )


def attention_implementation() -> str:
    """``flash_attention_2`` when the ``flash_attn`` package is installed, else ``sdpa``."""
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") else "sdpa"


def preset_from_config(config, where: str = "the checkpoint") -> str:
    """The preset whose VQ tokenizer ``config`` has (for folders without ``progemu.json``,
    e.g. a converted ``progemu``: the RGB 32768-code Emu3 tokenizer means ``full``)."""
    have = config.vq_config
    preset = vq_preset(have)
    if preset is None:
        raise ValueError(
            f"{where} has no {PIPELINE_FILE} and its VQ config (codebook "
            f"{getattr(have, 'codebook_size', None)}, {getattr(have, 'in_channels', None)} channels, "
            f"base_channels {getattr(have, 'base_channels', None)}) matches no preset "
            f"({', '.join(PRESETS)})"
        )
    return preset


def checkpoint_folder(
    name_or_path: str | os.PathLike,
    *,
    download: bool = True,
    revision: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> Path:
    """A local folder for a checkpoint: an existing folder as is; a registry name (``progemu``,
    ``lite``), hub id (``org/name[@rev]``) or URL through :func:`progemu_lite.hub.native_checkpoint`
    (cache, download, conversion), with the hub's errors (e.g. ``OfflineError``)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    from progemu_lite import hub  # lazy: only named weights need it

    name = str(name_or_path)
    if path.exists():
        raise FileNotFoundError(f"{name} is a file; pass the folder that holds the checkpoint")
    # An absolute or ./~ path names a folder, never a hub id: say so instead of going online.
    if name not in hub.REGISTRY and (path.is_absolute() or name.startswith((".", "~"))):
        raise FileNotFoundError(
            f"no checkpoint folder at {name!r}; pass a folder written by "
            f"ProgEmuPipeline.save_pretrained, a registered name ({', '.join(sorted(hub.REGISTRY))}),"
            " a hub id org/name[@revision] or an http(s) URL"
        )
    return hub.native_checkpoint(
        name, download=download, revision=revision, sha256=sha256, progress=progress
    )


def _target_device(device, preset: str):
    """``device`` as a torch device; ``None``: CUDA for the full model when there is a GPU."""
    import torch

    if device is None:
        if preset == "full" and torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    return torch.device(device)


def _cuda_device_map(target, estimate: ResourceEstimate):
    """``"auto"`` (offload to CPU RAM) on a GPU under OFFLOAD_BELOW_GIB GiB that cannot hold the
    weights with ~20% to spare for activations and the KV cache; else everything on ``target``."""
    import torch

    index = target.index if target.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    if total < OFFLOAD_BELOW_GIB * 2**30 and estimate.weight_bytes * 1.2 > total:
        if importlib.util.find_spec("accelerate") is None:
            raise ResourceError(
                f"the {estimate.weight_bytes / 1e9:.0f} GB of weights do not fit this "
                f"{total / 2**30:.0f} GiB GPU and offloading needs accelerate: "
                "pip install -e .[gpu]"
            )
        return "auto"
    return {"": target}


def _read_info(path: Path) -> dict | None:
    info_file = path / PIPELINE_FILE
    if not info_file.is_file():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} is not a ProgEmu checkpoint (no {PIPELINE_FILE} and no config.json)"
            )
        return None
    try:
        info = json.loads(info_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{info_file} is not valid JSON: {err}") from err
    if info.get("format") != PIPELINE_FORMAT:
        raise ValueError(
            f"{info_file} has format {info.get('format')!r}; this library reads {PIPELINE_FORMAT!r}"
        )
    saved_preset = info.get("preset")
    if saved_preset not in PRESETS:
        raise ValueError(f"{info_file} names unknown preset {saved_preset!r}")
    if info.get("image_size") != IMAGE_SIZES[saved_preset]:
        raise ValueError(
            f"checkpoint image_size {info.get('image_size')} does not match preset "
            f"{saved_preset!r} ({IMAGE_SIZES[saved_preset]})"
        )
    return info


def _load_tokenizer(path: Path):
    try:
        return load_text_tokenizer(path)
    except ValueError as err:
        raise ValueError(
            f"the tokenizer in {path} is not a ProgEmu tokenizer ({err}): it needs the Emu3 "
            "special tokens and contiguous visual tokens above the text ids"
        ) from err


class ProgEmuPipeline:
    """A ProgEmu model (transformers' ``Emu3ForConditionalGeneration``) with its tokenizer."""

    def __init__(self, model, tokenizer, preset: str, *, metadata: dict | None = None):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.preset = preset
        self.builder = SequenceBuilder(tokenizer)
        self.image_size = IMAGE_SIZES[preset]
        side = self.image_size // SPATIAL_FACTOR
        self.grid = (side, side)
        self.metadata = dict(metadata or {})
        self.compiled = False

    def compile(self, enabled: bool = True) -> ProgEmuPipeline:
        """Run the one-token decode steps through ``torch.compile`` from now on (same tokens,
        faster steps: benchmarks/generate_speed.py measures it). Each new batch size or
        prompt-length bucket compiles once, which takes seconds to tens of seconds, so this
        pays off for repeated generation, not for one call. On a CPU it needs a C++ compiler.
        Returns self."""
        self.compiled = bool(enabled)
        return self

    # -- devices --------------------------------------------------------------------------------
    @property
    def device(self):
        return self.model.device

    def to(self, device=None, dtype=None) -> ProgEmuPipeline:
        """Move the model (e.g. ``pipe.to("cuda", torch.bfloat16)``); returns self."""
        self.model.to(device=device, dtype=dtype)
        return self

    # -- persistence ----------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike, *, metadata: dict | None = None) -> Path:
        """Write the checkpoint folder atomically (a sibling temporary folder, then a rename)."""
        path = Path(path)
        foreign = "is not a ProgEmu checkpoint"
        with staged_folder(path, marker=PIPELINE_FILE, foreign=foreign) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            info = {
                "format": PIPELINE_FORMAT,
                "preset": self.preset,
                "image_size": self.image_size,
                "grid": list(self.grid),
                "codebook_size": self.builder.ids.codebook_size,
                "text_vocab_size": self.builder.ids.text_vocab_size,
                "versions": _versions(),
                **self.metadata,
                **(metadata or {}),
            }
            (tmp / PIPELINE_FILE).write_text(json.dumps(info, indent=2) + "\n")
        return path

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        preset: str | None = None,
        device=None,
        dtype=None,
        force: bool = False,
        device_map=None,
        attn_implementation: str | None = None,
        download: bool = True,
        revision: str | None = None,
        sha256: str | None = None,
        progress: bool = True,
        verbose: bool | None = None,
    ) -> ProgEmuPipeline:
        """Load a checkpoint: a folder written by :meth:`save_pretrained`, a native transformers
        Emu3 folder, or a name the hub module resolves (``"progemu"``, ``org/name[@rev]``, URL
        with ``sha256``; see :func:`checkpoint_folder`).

        ``preset``: the configuration you expect; a checkpoint of another one is an error.
        ``device``: e.g. ``"cuda"``; default CPU, except the ``full`` model, which goes to CUDA
        when there is a GPU. ``dtype``: default float32 on the CPU, whatever the file holds. On
        CUDA the defaults are bf16 (``dtype``), flash attention 2 when
        ``flash_attn`` is installed else sdpa (``attn_implementation``) and, on GPUs under
        :data:`OFFLOAD_BELOW_GIB` GiB that the weights do not fit, ``device_map="auto"``.
        ``force``: load the ``full`` model on a CPU anyway (refused by default, before any
        weight is read, with the expected memory and time). ``verbose``: print the device,
        dtype, attention and memory footprint (default: for the ``full`` model or on CUDA).
        """
        import torch
        from safetensors import SafetensorError
        from transformers import Emu3Config, Emu3ForConditionalGeneration

        path = checkpoint_folder(
            name_or_path, download=download, revision=revision, sha256=sha256, progress=progress
        )
        info = _read_info(path)
        config = Emu3Config.from_pretrained(path)
        saved_preset = info["preset"] if info else preset_from_config(config, str(path))
        if preset is not None and preset != saved_preset:
            raise ValueError(f"checkpoint {path} is preset {saved_preset!r}, expected {preset!r}")

        target = _target_device(device, saved_preset)
        on_cuda = target.type == "cuda"
        if dtype is None:
            # CPU: float32 even for half-precision files (the shipped lite weights are float16):
            # half-precision matmuls on a CPU are slow and lose accuracy step after step.
            dtype = torch.bfloat16 if on_cuda else torch.float32
        # Before reading a single weight: refuse what this machine cannot run.
        estimate = estimate_resources(config, saved_preset, device=target.type, dtype=dtype)
        check_resources(estimate, force=force)

        tokenizer = _load_tokenizer(path)
        problems = config_mismatches(config, saved_preset, tokenizer)
        if problems:
            raise ValueError(
                f"checkpoint {path} does not match preset {saved_preset!r}: " + "; ".join(problems)
            )
        load_kwargs: dict = {}
        if on_cuda:
            if attn_implementation is None:
                # Only the text decoder's attention is swapped; the VQ keeps sdpa.
                attn_implementation = attention_implementation()
            if device_map is None:
                device_map = _cuda_device_map(target, estimate)
        if attn_implementation is not None:
            load_kwargs["attn_implementation"] = {
                "text_config": attn_implementation,
                "vq_config": "sdpa",
            }
        if device_map is not None:
            load_kwargs["device_map"] = device_map
        try:
            model, loading = Emu3ForConditionalGeneration.from_pretrained(
                path,
                config=config,
                dtype=dtype,
                output_loading_info=True,
                use_safetensors=True,
                **load_kwargs,
            )
        except (OSError, SafetensorError) as err:  # missing, truncated or corrupt weights
            raise ValueError(f"cannot read the weights in {path}: {err}") from err
        bad = {k: v for k, v in loading.items() if v and k != "error_msgs"}
        if bad or loading.get("error_msgs"):
            details = "; ".join(f"{k}: {sorted(v)[:3]}" for k, v in loading.items() if v)
            raise ValueError(f"weights in {path} do not fit the model: {details}")
        if device_map is None and target.type != "cpu":
            model.to(target)
        extra = {
            k: v
            for k, v in (info or {"weights": str(path)}).items()
            if k
            not in (
                "format",
                "preset",
                "image_size",
                "grid",
                "codebook_size",
                "text_vocab_size",
                "versions",
            )
        }
        pipe = cls(model, tokenizer, saved_preset, metadata=extra)
        pipe.loading = {
            "path": str(path),
            "device": str(pipe.device),
            "dtype": str(model.dtype).removeprefix("torch."),
            "attention": model.config.text_config._attn_implementation,
            "device_map": device_map if isinstance(device_map, str) else None,
            "memory_footprint": int(model.get_memory_footprint()),
            "estimate": estimate,
        }
        if verbose or (verbose is None and (saved_preset == "full" or on_cuda)):
            print(pipe.describe_loading())
        return pipe

    def describe_loading(self) -> str:
        """One line: preset, device, dtype, attention, offload and memory footprint."""
        info = getattr(self, "loading", None)
        if not info:
            return f"ProgEmu {self.preset} on {self.device} ({self.model.dtype})"
        offload = f", device_map={info['device_map']}" if info["device_map"] else ""
        return (
            f"ProgEmu {self.preset} ({self.image_size}x{self.image_size} images, "
            f"{self.grid[0]}x{self.grid[1]} grid) on {info['device']}{offload}: {info['dtype']}, "
            f"attention {info['attention']}, memory footprint "
            f"{_size(info['memory_footprint'])}"
        )

    # -- images ---------------------------------------------------------------------------------
    def prepare_image(self, image, *, what: str = "prior image") -> np.ndarray:
        return prepare_image(image, self.image_size, what=what)

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``(N, H, W)`` -> int64 ``(N, h, w)`` VQ codes."""
        from progemu_lite.tokenization.vq import encode_images

        return encode_images(self.model.model.vqmodel, images)

    def decode_codes(self, codes: np.ndarray) -> np.ndarray:
        """int ``(N, h, w)`` VQ codes -> uint8 ``(N, H, W)`` images."""
        from progemu_lite.tokenization.vq import decode_codes

        return decode_codes(self.model.model.vqmodel, codes)

    # -- generation -----------------------------------------------------------------------------
    def _prefix(self, prior_codes, prompt: str | None, unconditional: bool) -> np.ndarray:
        if unconditional:
            return self.builder.null_prefix_ids(self.grid)
        return self.builder.prefix_ids(prior_codes, prompt, self.grid)

    def _check_prompt(self, prompt, unconditional: bool, what: str) -> str:
        if prompt is None:
            prompt = ""
        if not isinstance(prompt, str):
            raise ValueError(f"{what} must be a string, got {type(prompt).__name__}")
        if unconditional:
            if prompt.strip():
                raise ValueError(
                    "unconditional generation takes no prompt (it drops the condition)"
                )
            return ""
        if not prompt.strip():
            raise ValueError(
                f"{what} is empty; describe the progression, or pass unconditional=True"
            )
        return prompt.strip()

    def _settings(self, max_text_tokens: int, **sampling) -> SamplingSettings:
        settings = SamplingSettings(
            max_text_tokens=max_text_tokens,
            min_text_tokens=min(DEFAULT_MIN_TEXT_TOKENS, max_text_tokens),
            **sampling,
        )
        settings.check()
        return settings

    def _check_fits(self, prefixes, prompts: Sequence[str], settings: SamplingSettings) -> None:
        """A clear error when a prompt leaves too little room for the tokens still to come."""
        limit = self.model.config.text_config.max_position_embeddings
        image_tokens = self.grid[0] * (self.grid[1] + 1) + 2  # grid rows + EOF + EOI
        for i, prefix in enumerate(prefixes):
            drawn = 0 if prefix[-1] == self.builder.ids.eoi else image_tokens
            overflow = len(prefix) + drawn + settings.max_text_tokens + 1 - limit
            if overflow > 0:
                n_prompt = len(self.builder.encode_text(prompts[i]))
                raise ValueError(
                    f"prompt {i} is {n_prompt} tokens; with max_text_tokens="
                    f"{settings.max_text_tokens} this model allows at most "
                    f"{max(n_prompt - overflow, 0)} (max_position_embeddings={limit})"
                )

    def _generate_chunks(self, prefixes, settings, batch_size: int, progress: bool, null_prefix):
        """An iterator of ``(start, settings, GenerationOutput)``, one per chunk of
        ``batch_size`` prefixes; a seeded run gives chunk k the seed ``seed + k``."""
        from tqdm.auto import tqdm

        if batch_size < 1:  # checked now, not when the iteration starts
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")

        def chunks():
            starts = range(0, len(prefixes), batch_size)
            for chunk, start in enumerate(tqdm(starts, disable=not progress, desc="generating")):
                chunk_settings = settings
                if settings.seed is not None and chunk:
                    chunk_settings = SamplingSettings(
                        **{**settings.__dict__, "seed": settings.seed + chunk}
                    )
                out = generate(
                    self.model,
                    prefixes[start : start + batch_size],
                    self.builder.ids,
                    self.grid,
                    chunk_settings,
                    null_prefix=null_prefix,
                    compiled=self.compiled,
                )
                yield start, chunk_settings, out

        return chunks()

    def batch(
        self,
        priors: Sequence,
        prompts: Sequence[str],
        *,
        temperature: float = 1.0,
        text_temperature: float | None = None,
        top_k: int | None = DEFAULT_TOP_K,
        top_p: float | None = None,
        guidance_scale: float = 1.0,
        text_guidance_scale: float | None = None,
        seed: int | None = None,
        max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS,
        unconditional: bool = False,
        batch_size: int = 16,
        progress: bool = False,
    ) -> list[Counterfactual]:
        """Counterfactuals for several (prior, prompt) pairs, ``batch_size`` at a time."""
        import torch

        if unconditional:
            priors = list(priors) if priors is not None else [None] * len(prompts)
        if len(priors) != len(prompts):
            raise ValueError(f"{len(priors)} prior images but {len(prompts)} prompts")
        if not prompts:
            return []
        settings = self._settings(
            max_text_tokens,
            temperature=temperature,
            text_temperature=text_temperature,
            top_k=top_k,
            top_p=top_p,
            guidance_scale=guidance_scale,
            text_guidance_scale=text_guidance_scale,
            seed=seed,
        )
        clean_prompts = [
            self._check_prompt(p, unconditional, f"prompt {i}") for i, p in enumerate(prompts)
        ]
        if unconditional:
            if any(p is not None for p in priors):
                raise ValueError("unconditional generation takes no prior image (pass None)")
            images = [None] * len(prompts)
            codes = [None] * len(prompts)
        else:
            images = [self.prepare_image(p, what=f"prior image {i}") for i, p in enumerate(priors)]
            codes = list(self.encode_images(np.stack(images)))
        prefixes = [
            self._prefix(c, p, unconditional) for c, p in zip(codes, clean_prompts, strict=True)
        ]
        self._check_fits(prefixes, clean_prompts, settings)
        null_prefix = self.builder.null_prefix_ids(self.grid)

        results: list[Counterfactual] = []
        n_image = self.grid[0] * (self.grid[1] + 1) + 2  # grid rows + EOF + EOI
        chunks = self._generate_chunks(prefixes, settings, batch_size, progress, null_prefix)
        for start, chunk_settings, out in chunks:
            parsed = []
            for i in range(len(out.lengths)):
                ids_i, probs_i = out.row(i)
                parsed.append((ids_i, probs_i, self.builder.parse_generated(ids_i, self.grid)))
            with torch.inference_mode():
                pictures = self.decode_codes(np.stack([p.codes for _, _, p in parsed]))
            for j, (ids_i, probs_i, p) in enumerate(parsed):
                k = start + j
                results.append(
                    Counterfactual(
                        image=pictures[j],
                        interpretation=p.text.strip(),
                        token_ids=ids_i,
                        token_probabilities=probs_i,
                        codes=p.codes,
                        prior=images[k],
                        prompt=clean_prompts[k],
                        truncated=len(p.text_ids) >= max_text_tokens,
                        text_probabilities=probs_i[n_image : n_image + len(p.text_ids)],
                        settings={**chunk_settings.__dict__, "unconditional": unconditional},
                    )
                )
        return results

    def __call__(
        self,
        prior,
        prompt: str | None = None,
        *,
        temperature: float = 1.0,
        text_temperature: float | None = None,
        top_k: int | None = DEFAULT_TOP_K,
        top_p: float | None = None,
        guidance_scale: float = 1.0,
        text_guidance_scale: float | None = None,
        seed: int | None = None,
        max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS,
        unconditional: bool = False,
    ) -> Counterfactual:
        """One counterfactual. ``prior``: uint8/16-bit/float array, PIL image, PNG or DICOM
        path. ``temperature=0`` decodes greedily; ``text_temperature``: the interpretation's
        own (default: ``temperature``); ``guidance_scale`` > 1 applies classifier-free
        guidance against the null condition (official: 3) and ``text_guidance_scale`` is the
        interpretation's own (default: ``guidance_scale``; 1 = guide the image only)."""
        return self.batch(
            [prior],
            [prompt],
            temperature=temperature,
            text_temperature=text_temperature,
            top_k=top_k,
            top_p=top_p,
            guidance_scale=guidance_scale,
            text_guidance_scale=text_guidance_scale,
            seed=seed,
            max_text_tokens=max_text_tokens,
            unconditional=unconditional,
        )[0]

    def interpret_batch(
        self,
        priors: Sequence,
        prompts: Sequence[str],
        followups: Sequence,
        *,
        temperature: float = 0.0,
        text_temperature: float | None = None,
        top_k: int | None = DEFAULT_TOP_K,
        top_p: float | None = None,
        seed: int | None = None,
        max_text_tokens: int = DEFAULT_MAX_TEXT_TOKENS,
        batch_size: int = 16,
        progress: bool = False,
    ) -> list[Counterfactual]:
        """The model's interpretation of GIVEN follow-up images (a true follow-up, another
        model's image, the prior itself) instead of one it draws: the same sequence with the
        follow-up's codes filled in, then only the text generated. Comparing it with
        :meth:`batch` separates what the text reads from the image from what it takes from the
        prompt. Greedy by default; ``text_temperature`` (if given) overrides ``temperature``.
        Each result's ``image`` is the follow-up as the model read it (its VQ round trip)."""
        if not len(priors) == len(prompts) == len(followups):
            raise ValueError(
                f"{len(priors)} prior images, {len(prompts)} prompts and {len(followups)} "
                "follow-up images: one of each per case"
            )
        if not prompts:
            return []
        settings = self._settings(
            max_text_tokens,
            temperature=temperature if text_temperature is None else text_temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
        )
        clean_prompts = [self._check_prompt(p, False, f"prompt {i}") for i, p in enumerate(prompts)]
        images = [self.prepare_image(p, what=f"prior image {i}") for i, p in enumerate(priors)]
        given = [
            self.prepare_image(f, what=f"follow-up image {i}") for i, f in enumerate(followups)
        ]
        prior_codes = self.encode_images(np.stack(images))
        followup_codes = self.encode_images(np.stack(given))
        prefixes = [
            self.builder.interpretation_prefix_ids(c, p, f)
            for c, p, f in zip(prior_codes, clean_prompts, followup_codes, strict=True)
        ]
        self._check_fits(prefixes, clean_prompts, settings)
        seen = self.decode_codes(followup_codes)

        results: list[Counterfactual] = []
        for start, chunk_settings, out in self._generate_chunks(
            prefixes, settings, batch_size, progress, None
        ):
            for j in range(len(out.lengths)):
                ids_j, probs_j = out.row(j)
                text_ids = ids_j[:-1]  # the layout always ends the text with EOS
                k = start + j
                results.append(
                    Counterfactual(
                        image=seen[k],
                        interpretation=self.builder.decode_text(text_ids).strip(),
                        token_ids=ids_j,
                        token_probabilities=probs_j,
                        codes=followup_codes[k],
                        prior=images[k],
                        prompt=clean_prompts[k],
                        truncated=len(text_ids) >= max_text_tokens,
                        text_probabilities=probs_j[: len(text_ids)],
                        settings={**chunk_settings.__dict__, "given_followup": True},
                    )
                )
        return results

    def interpret(self, prior, prompt: str, followup, **sampling) -> Counterfactual:
        """The model's interpretation of one given follow-up image (see :meth:`interpret_batch`)."""
        return self.interpret_batch([prior], [prompt], [followup], **sampling)[0]


def build_random(
    preset: str = "tiny",
    *,
    seed: int = 0,
    texts: Sequence[str] | None = None,
    text_vocab_size: int = 1024,
) -> ProgEmuPipeline:
    """A pipeline with random weights (tests, speed benchmarks) and a tokenizer trained on
    the findings vocabulary (plus ``texts``)."""
    from progemu_lite.tokenization.text import vocabulary_corpus
    from progemu_lite.tokenization.vq import vq_config

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    corpus = vocabulary_corpus() + list(texts or [])
    tokenizer = train_text_tokenizer(
        corpus, vq_config(preset).codebook_size, vocab_size=text_vocab_size
    )
    model = build_model(preset, tokenizer, seed=seed)
    return ProgEmuPipeline(model, tokenizer, preset, metadata={"weights": "random"})


def load(name_or_path: str | os.PathLike, **kwargs) -> ProgEmuPipeline:
    """A pipeline from a checkpoint folder or a name (``progemu_lite.load("progemu")``); the
    keyword arguments are those of :meth:`ProgEmuPipeline.from_pretrained`. Applies the
    course's torch thread policy first (:func:`progemu_lite.runtime.configure_torch_threads`:
    one thread on a machine with 2 CPUs or fewer, unless ``PROGEMU_THREADS`` says otherwise)."""
    from progemu_lite.runtime import configure_torch_threads

    configure_torch_threads()
    return ProgEmuPipeline.from_pretrained(name_or_path, **kwargs)
