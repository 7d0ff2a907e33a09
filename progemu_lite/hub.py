"""Where the model weights come from: a registry of named checkpoints, downloads, and safe loading.

A *source* is what a user names: a registry name (``lite``, ``progemu``), a local folder, a Hugging
Face hub id (``org/name`` or ``org/name@revision``) or an ``http(s)://`` URL. :func:`resolve` turns
it into local folders, downloading into the shared cache (:func:`progemu_lite.paths.progemu_home`)
when needed and allowed.

Rules this module keeps:

- Hub downloads go through ``huggingface_hub.snapshot_download`` with a pinned revision; the
  cache layout is the hub's own (``models--org--name/blobs|snapshots|refs``), so an admin can copy
  a ``progemu-lite download`` result, or an existing ``$HF_HOME`` cache, to a class machine.
- ``HF_HUB_OFFLINE=1`` (or no network) with nothing cached gives a :class:`OfflineError` that says
  how to pre-fetch. Reading a complete cache writes nothing, so a read-only shared cache works.
- URL downloads are checked against a sha256, resumed with HTTP ``Range``, written to a ``.part``
  file and renamed into place; a file lock serialises two processes fetching the same file.
- Only safetensors are loaded by default; pickle checkpoints need an explicit opt-in and are then
  read with ``torch.load(weights_only=True)``. Names from URLs or archives may not escape the
  cache folder.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .paths import progemu_home

PACKAGE_WEIGHTS = Path(__file__).resolve().parent / "weights"
SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_CHUNK = 1 << 20


class OfflineError(FileNotFoundError):
    """Weights are needed, are not in any cache, and this machine may not download them."""


class ChecksumError(ValueError):
    """A downloaded file's sha256 differs from the one recorded for it."""


class DownloadInterrupted(OSError):
    """The connection ended before the whole file arrived; the ``.part`` file is kept to resume."""


class UnsafePathError(ValueError):
    """A name from a URL or an archive would land outside the cache folder."""


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubRepo:
    """A Hugging Face model repository at a pinned revision (a commit hash where one is known)."""

    repo_id: str
    revision: str = "main"
    allow_patterns: tuple[str, ...] | None = None

    def describe(self) -> str:
        return f"huggingface.co/{self.repo_id}@{self.revision}"


@dataclass(frozen=True)
class UrlFile:
    """One file (or a .tar/.tar.gz/.zip archive to unpack) on a plain web server, with its sha256."""

    url: str
    sha256: str
    filename: str | None = None

    def describe(self) -> str:
        return self.url


@dataclass(frozen=True)
class LocalFolder:
    path: Path

    def describe(self) -> str:
        return str(self.path)


Source = HubRepo | UrlFile | LocalFolder


@dataclass(frozen=True)
class CheckpointSpec:
    """A named checkpoint: which source gives each part, and in which layout the weights are.

    ``layout`` is ``"native"`` (a transformers ``Emu3ForConditionalGeneration`` folder) or
    ``"original"`` (BAAI remote-code Emu3 layout, convert it with ``progemu-lite convert``).
    ``parts`` maps a role (``model``; or ``lm``, ``vq``, ``tokenizer`` for the original layout)
    to its source.
    """

    name: str
    description: str
    layout: str
    parts: dict[str, Source] = field(default_factory=dict)


# Revisions: the commit hashes of these repositories could not be looked up from this machine
# (no network), so they are pinned to "main"; pin real commits with `progemu-lite download
# progemu --revision` or by editing here once they are known.
REGISTRY: dict[str, CheckpointSpec] = {
    "lite": CheckpointSpec(
        name="lite",
        description="the small ProgEmu-Lite model trained for the course (shipped in the package)",
        layout="native",
        parts={"model": LocalFolder(PACKAGE_WEIGHTS / "lite")},
    ),
    "progemu": CheckpointSpec(
        name="progemu",
        description=(
            "the published 8B ProgEmu weights (Ma et al., MICCAI 2025) in the original BAAI Emu3 "
            "layout, with BAAI's Emu3 vision tokenizer and the Emu3-Gen-hf tokenizer"
        ),
        layout="original",
        parts={
            "lm": HubRepo("massaki75/progemu", "main"),
            "vq": HubRepo("BAAI/Emu3-VisionTokenizer", "main"),
            "tokenizer": HubRepo(
                "BAAI/Emu3-Gen-hf",
                "main",
                allow_patterns=(
                    "tokenizer*",
                    "special_tokens_map.json",
                    "vocab.json",
                    "merges.txt",
                    "preprocessor_config.json",
                    "processor_config.json",
                    "chat_template*",
                ),
            ),
        },
    ),
}


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """Local folders for every part of a checkpoint."""

    name: str
    layout: str
    parts: dict[str, Path]

    @property
    def path(self) -> Path:
        """The single folder of a native checkpoint (``parts['model']``)."""
        if "model" not in self.parts:
            raise ValueError(
                f"{self.name!r} is in the original Emu3 layout (parts: {sorted(self.parts)}); "
                "convert it first with `progemu-lite convert`"
            )
        return self.parts["model"]


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(@[A-Za-z0-9_./-]+)?$")


def parse_source(source: str, *, sha256: str | None = None, revision: str | None = None) -> Source:
    """Classify what a user typed: URL, existing local folder, or hub id (``org/name[@rev]``)."""
    if source.startswith(("http://", "https://")):
        if not sha256:
            raise ValueError(
                f"a URL source needs its sha256 so the download can be verified: pass --sha256 "
                f"(got {source})"
            )
        return UrlFile(source, sha256.lower())
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{source} is a file; name the folder that holds the checkpoint")
        return LocalFolder(path.resolve())
    if _HUB_ID.match(source) and ".." not in source:
        repo_id, _, rev = source.partition("@")
        return HubRepo(repo_id, revision or rev or "main")
    known = ", ".join(sorted(REGISTRY))
    raise FileNotFoundError(
        f"unknown weights {source!r}: not a registered name ({known}), an existing folder, "
        "a hub id like org/name[@revision], or an http(s) URL"
    )


def layout_of(folder: Path) -> str:
    """``native`` for a transformers Emu3 folder, ``original`` for the BAAI remote-code layout."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        return "unknown"
    config = json.loads(config_file.read_text())
    if "text_config" in config or config.get("model_type") == "emu3":
        return "native"
    if (
        str(config.get("model_type", "")).lower() in ("emu3", "emu3visionvq")
        or "vocab_size" in config
    ):
        return "original"
    return "unknown"


def resolve(
    source: str,
    *,
    download: bool = True,
    sha256: str | None = None,
    revision: str | None = None,
    progress: bool = True,
) -> ResolvedCheckpoint:
    """Local folders for ``source`` (see the module docstring), downloading if needed and allowed.

    ``download=False`` only looks in caches; a miss raises :class:`OfflineError`.
    """
    if source in REGISTRY:
        spec = REGISTRY[source]
        if revision is not None:
            spec = _with_revision(spec, revision)
        parts = {
            role: fetch_source(part, name=source, download=download, progress=progress)
            for role, part in spec.parts.items()
        }
        return ResolvedCheckpoint(source, spec.layout, parts)
    parsed = parse_source(source, sha256=sha256, revision=revision)
    folder = fetch_source(parsed, name=source, download=download, progress=progress)
    return ResolvedCheckpoint(source, layout_of(folder), {"model": folder})


def converted_dir(name: str, spec: CheckpointSpec) -> Path:
    """Where the native conversion of a registered original-layout checkpoint is cached: named
    after the sources and revisions (not local paths), so a copied cache is still found."""
    sources = json.dumps({role: part.describe() for role, part in sorted(spec.parts.items())})
    key = hashlib.sha256(sources.encode()).hexdigest()[:12]
    return progemu_home() / "converted" / f"{safe_name(name.replace('/', '--'))}-{key}"


def native_checkpoint(
    source: str,
    *,
    download: bool = True,
    sha256: str | None = None,
    revision: str | None = None,
    progress: bool = True,
) -> Path:
    """A folder ``Emu3ForConditionalGeneration.from_pretrained`` can load, for any source.

    Registered original-layout checkpoints (``progemu``) are converted once into
    ``PROGEMU_HOME/converted/``; a finished conversion there is used as is, so a read-only
    shared cache prepared with ``progemu-lite download NAME`` + one load works for everyone.
    """
    from .model.convert import convert_checkpoint, is_converted

    resolved = resolve(
        source, download=download, sha256=sha256, revision=revision, progress=progress
    )
    if resolved.layout == "native":
        return resolved.path
    if source not in REGISTRY or "lm" not in resolved.parts:
        raise ValueError(
            f"{source} is not a native Emu3ForConditionalGeneration folder (layout: "
            f"{resolved.layout}); convert an original-layout checkpoint with "
            "`progemu-lite convert LM_FOLDER DST --vq VQ_FOLDER` and pass DST"
        )
    spec = REGISTRY[source]
    if revision is not None:
        spec = _with_revision(spec, revision)
    dst = converted_dir(source, spec)
    if is_converted(dst):
        return dst
    return convert_checkpoint(
        resolved.parts["lm"],
        resolved.parts["vq"],
        dst,
        tokenizer_dir=resolved.parts.get("tokenizer"),
        progress=progress,
    )


def _with_revision(spec: CheckpointSpec, revision: str) -> CheckpointSpec:
    """``spec`` with its main weights (``lm`` or ``model``) pinned to ``revision``."""
    return CheckpointSpec(
        spec.name,
        spec.description,
        spec.layout,
        {
            role: HubRepo(part.repo_id, revision, part.allow_patterns)
            if isinstance(part, HubRepo) and role in ("lm", "model")
            else part
            for role, part in spec.parts.items()
        },
    )


def fetch_source(part: Source, *, name: str, download: bool = True, progress: bool = True) -> Path:
    """One part's local folder."""
    if isinstance(part, LocalFolder):
        if not part.path.is_dir() or not any(part.path.iterdir()):
            if part.path == PACKAGE_WEIGHTS / "lite":
                raise FileNotFoundError(
                    "the 'lite' checkpoint is not shipped in this version of progemu-lite "
                    f"({part.path} is empty): train one with `progemu-lite train --preset lite "
                    "--data DATA --vq VQ --out FOLDER` and pass FOLDER instead of 'lite'"
                )
            raise FileNotFoundError(f"weights folder {part.path} does not exist or is empty")
        return part.path
    if isinstance(part, HubRepo):
        return hub_snapshot(part, name=name, download=download, progress=progress)
    return url_snapshot(part, name=name, download=download, progress=progress)


# --------------------------------------------------------------------------------------------
# Hugging Face hub
# --------------------------------------------------------------------------------------------


def hub_cache_dir() -> Path:
    """Where ``progemu-lite download`` puts hub snapshots (hub layout, inside PROGEMU_HOME)."""
    return progemu_home() / "hub"


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` read now (huggingface_hub reads it once, at import)."""
    value = os.environ.get("HF_HUB_OFFLINE", "")
    if value.strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _prefetch_advice(name: str) -> str:
    return (
        f"on a machine with internet access run `progemu-lite download {name}`, then copy its "
        f"cache folder ({progemu_home()}) to this machine and point PROGEMU_HOME at it"
    )


def _silent_tqdm_class():
    from tqdm.auto import tqdm

    class Silent(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent


def hub_snapshot(repo: HubRepo, *, name: str, download: bool = True, progress: bool = True) -> Path:
    """The local snapshot folder of ``repo``: from the PROGEMU_HOME cache, else the user's
    ``$HF_HOME`` cache, else downloaded into the PROGEMU_HOME cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = list(repo.allow_patterns) if repo.allow_patterns else None
    # Cache lookups first: they read refs/ and snapshots/ and write nothing.
    for cache_dir in (hub_cache_dir(), None):
        try:
            return Path(
                snapshot_download(
                    repo.repo_id,
                    revision=repo.revision,
                    cache_dir=cache_dir,
                    local_files_only=True,
                    allow_patterns=patterns,
                )
            )
        except OSError:  # LocalEntryNotFoundError (and IncompleteSnapshotError) included
            continue
    if not download or hub_offline():
        why = "HF_HUB_OFFLINE is set" if hub_offline() else "downloads were not allowed"
        raise OfflineError(
            f"{repo.describe()} (part of {name!r}) is not in the cache and {why}: "
            + _prefetch_advice(name)
        )
    cache = hub_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    try:
        # snapshot_download resumes partial blobs and locks each one itself (filelock).
        return Path(
            snapshot_download(
                repo.repo_id,
                revision=repo.revision,
                cache_dir=cache,
                allow_patterns=patterns,
                tqdm_class=None if progress else _silent_tqdm_class(),
            )
        )
    except LocalEntryNotFoundError as err:
        raise OfflineError(
            f"could not reach the hub for {repo.describe()} and it is not cached: "
            + _prefetch_advice(name)
        ) from err


# --------------------------------------------------------------------------------------------
# Plain URLs
# --------------------------------------------------------------------------------------------


def safe_name(name: str) -> str:
    """``name`` as a single relative path inside a folder; raises :class:`UnsafePathError` for
    absolute names, ``..`` parts, drive letters or backslashes."""
    if not name or "\x00" in name or "\\" in name:
        raise UnsafePathError(f"refusing the file name {name!r}: empty or not a plain path")
    posix = PurePosixPath(name)
    if posix.is_absolute() or re.match(r"^[A-Za-z]:", name):
        raise UnsafePathError(
            f"refusing the absolute file name {name!r}: it would escape the cache"
        )
    if any(part == ".." for part in posix.parts):
        raise UnsafePathError(f"refusing the file name {name!r}: '..' would escape the cache")
    parts = [p for p in posix.parts if p not in ("", ".")]
    if not parts:
        raise UnsafePathError(f"refusing the file name {name!r}: it names no file")
    return "/".join(parts)


def inside(folder: Path, name: str) -> Path:
    """``folder / name`` after checking, by name alone, that it stays inside ``folder``.

    The check is lexical on purpose: hub snapshots are symlinks into ``blobs/``, which is fine;
    what must never happen is a name with ``..`` or an absolute path (see :func:`safe_name`).
    """
    return folder / safe_name(name)


def url_filename(url: str) -> str:
    """The file name a URL names (its last path segment, percent-decoded), checked to be safe."""
    path = urllib.parse.urlparse(url).path
    # Decode after splitting, so an encoded "..%2F" cannot hide a path in the last segment.
    return safe_name(urllib.parse.unquote(path.rsplit("/", 1)[-1]))


def url_cache_dir(url: str) -> Path:
    """A per-URL folder in the cache, named by the URL's hash (stable, no user text in it)."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return progemu_home() / "url" / digest


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def file_lock(path: Path, timeout: float = 3600) -> Iterator[None]:
    """An inter-process lock (``filelock``) held while one process writes ``path``."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=timeout):
        yield


def download_url(
    url: str,
    folder: Path,
    *,
    sha256: str,
    filename: str | None = None,
    progress: bool = True,
    timeout: float = 60,
) -> Path:
    """Download ``url`` to ``folder/filename`` (default: the URL's last segment) and return it.

    An existing final file is trusted (it only gets there after its checksum matched). A
    ``.part`` file left by an interrupted transfer is resumed with an HTTP Range request. On a
    checksum mismatch the partial data is deleted and :class:`ChecksumError` says so.
    """
    from tqdm.auto import tqdm

    name = safe_name(filename) if filename else url_filename(url)
    target = inside(folder, name)
    if target.is_file():
        return target
    expected = sha256.lower()
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    with file_lock(target):
        if target.is_file():  # another process finished it while we waited
            return target
        part = target.with_name(target.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "progemu-lite"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # nothing left to send: the part may be whole
                response = None
            elif err.code == 404:
                raise FileNotFoundError(f"{url} was not found on the server (HTTP 404)") from err
            else:
                raise OSError(f"downloading {url} failed: HTTP {err.code} {err.reason}") from err
        except urllib.error.URLError as err:
            raise OfflineError(
                f"cannot reach {url} ({err.reason}); download it on a connected machine with "
                "`progemu-lite download URL --sha256 ...` and copy the cache folder "
                f"({progemu_home()}) here, pointing PROGEMU_HOME at it"
            ) from err
        digest = hashlib.sha256()
        if response is not None:
            with response:
                resumed = have and response.status == 206
                if resumed:
                    with open(part, "rb") as handle:
                        for chunk in iter(lambda: handle.read(_CHUNK), b""):
                            digest.update(chunk)
                else:
                    have = 0  # the server ignored Range: start over
                length = response.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                with (
                    open(part, "ab" if resumed else "wb") as out,
                    tqdm(
                        total=total,
                        initial=have,
                        unit="B",
                        unit_scale=True,
                        desc=name,
                        disable=not progress,
                    ) as bar,
                ):
                    try:
                        for chunk in iter(lambda: response.read(_CHUNK), b""):
                            out.write(chunk)
                            digest.update(chunk)
                            bar.update(len(chunk))
                    except (OSError, http.client.HTTPException):
                        pass  # what arrived stays in the .part file; the size check reports it
                    out.flush()
                    os.fsync(out.fileno())
                if total is not None and part.stat().st_size != total:
                    raise DownloadInterrupted(
                        f"download of {url} stopped early ({part.stat().st_size} of {total} "
                        "bytes); run the same command again to resume"
                    )
            actual = digest.hexdigest()
        else:
            actual = sha256_of(part)
        if actual != expected:
            part.unlink(missing_ok=True)
            raise ChecksumError(
                f"checksum mismatch for {url}: expected sha256 {expected}, got {actual}; "
                "the downloaded file was deleted"
            )
        os.replace(part, target)
    return target


def share_like_a_normal_folder(folder: Path) -> None:
    """mkdtemp makes 0700 folders; a cache others read (a class's shared PROGEMU_HOME) needs the
    permissions a plain mkdir would give under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)


ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


def extract_archive(archive: Path, dest: Path) -> Path:
    """Unpack a .tar/.tar.gz/.zip into ``dest`` atomically (temp folder, then rename).

    Every member name is checked with :func:`safe_name`; links and device files are refused.
    """
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", suffix=".tmp", dir=dest.parent))
    try:
        share_like_a_normal_folder(tmp)
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    target = inside(tmp, info.filename)
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, _CHUNK)
        else:
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                for member in members:
                    inside(tmp, member.name)
                    if not (member.isfile() or member.isdir()):
                        raise UnsafePathError(
                            f"refusing archive member {member.name!r}: only plain files and "
                            "folders are allowed (no links or devices)"
                        )
                tf.extractall(tmp, members=members, filter="data")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def url_snapshot(part: UrlFile, *, name: str, download: bool = True, progress: bool = True) -> Path:
    """The folder holding a URL source: the file itself, or the unpacked archive."""
    folder = url_cache_dir(part.url)
    filename = safe_name(part.filename) if part.filename else url_filename(part.url)
    is_archive = filename.endswith(ARCHIVE_SUFFIXES)
    unpacked = folder / "unpacked"
    if (is_archive and unpacked.is_dir()) or (not is_archive and (folder / filename).is_file()):
        return unpacked if is_archive else folder
    if not download:
        raise OfflineError(
            f"{part.url} (for {name!r}) is not in the cache: " + _prefetch_advice(name)
        )
    path = download_url(part.url, folder, sha256=part.sha256, filename=filename, progress=progress)
    if is_archive:
        with file_lock(unpacked):
            return extract_archive(path, unpacked)
    return folder


# --------------------------------------------------------------------------------------------
# Loading weights
# --------------------------------------------------------------------------------------------


def load_weights_file(path: str | Path, *, allow_pickle: bool = False) -> dict:
    """A state dict from one weights file. safetensors only, unless ``allow_pickle`` is given:
    then ``.bin/.pt/...`` files are read with ``torch.load(weights_only=True)`` (no code runs)."""
    path = Path(path)
    if path.name.endswith(SAFE_SUFFIXES):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # SafetensorError is not an OSError/ValueError
            raise ValueError(
                f"{path} is not a readable safetensors file ({err}); it may be truncated: "
                "delete it and download it again"
            ) from err
    if path.name.endswith(PICKLE_SUFFIXES):
        if not allow_pickle:
            raise PermissionError(
                f"refusing to load the pickle checkpoint {path.name}: pickle files can run code. "
                "Use a .safetensors copy, or opt in explicitly (allow_pickle=True / "
                "--allow-pickle); it is then read with torch.load(weights_only=True)"
            )
        import torch

        return torch.load(str(path), map_location="cpu", weights_only=True)
    raise ValueError(f"{path.name}: not a weights file this loader knows (.safetensors)")


def weight_files(folder: Path, *, allow_pickle: bool = False) -> list[Path]:
    """The weight shards of a checkpoint folder, in index order when an index exists."""
    for index_name, allowed in (
        ("model.safetensors.index.json", True),
        ("pytorch_model.bin.index.json", allow_pickle),
    ):
        index = folder / index_name
        if index.is_file() and allowed:
            weight_map = json.loads(index.read_text())["weight_map"]
            names = list(dict.fromkeys(weight_map.values()))
            return [inside(folder, n) for n in names]
    safe = sorted(folder.glob("*.safetensors"))
    if safe:
        return safe
    pickles = sorted(p for s in PICKLE_SUFFIXES for p in folder.glob(f"*{s}"))
    if pickles and not allow_pickle:
        raise PermissionError(
            f"{folder} holds only pickle checkpoints ({', '.join(p.name for p in pickles)}); "
            "refusing them unless you opt in with --allow-pickle (read with weights_only=True)"
        )
    if pickles:
        return pickles
    raise FileNotFoundError(f"no weight files (*.safetensors) in {folder}")
