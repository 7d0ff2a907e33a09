"""Writing single files atomically: the one home for "temporary name, then ``os.replace``".

A reader (another process, a classmate on a shared JupyterHub cache, a resumed run) must never
see a half-written file, and a crash or bad input must never leave one behind. Every writer here
therefore

1. writes to a temporary name ``.<name>.<random><suffix>`` in the *same* folder as the target
   (``os.replace`` is only atomic within one file system, and a leading dot keeps the temporary
   out of listings that skip hidden files),
2. flushes it to disk (``fsync``) so a power cut cannot publish an empty file,
3. gives it the mode a plain ``open(path, "w")`` would (``0o666`` minus the umask, usually
   ``0o644``): ``mkstemp`` creates ``0o600``, which other users of a shared cache cannot read,
4. renames it over the target, and removes the temporary on any error, leaving an existing
   target untouched.

Whole folders (a checkpoint, the shipped exercise cases) are staged the same way: written
completely into a sibling temporary folder, then swapped into place by :func:`replace_folder`.
Other folder-level patterns (an unpacked archive, a pair of DICOM files published together)
live with their callers.

Example::

    atomic_write_json(out / "report.json", {"psnr": 31.2})
    atomic_write(out / "curve.png", lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "current_umask",
]


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows.

    ``os.umask`` can only be read by setting it, which briefly changes it for every thread;
    Linux also reports it in ``/proc/self/status``, which is side-effect free.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[Path], Any], *, suffix: str = ""
) -> Path:
    """Create ``path`` by calling ``write(temporary_path)``, then renaming it into place.

    ``write`` receives the path of an existing, empty temporary file in the target's folder and
    must write the whole content there (``np.save``, ``fig.savefig``, ``Image.save``,
    ``Path.write_text``, ...). ``suffix`` ends the temporary name: give it to writers that pick
    the format from the extension (``np.save`` appends ``.npy`` to any other name, matplotlib and
    PIL guess the format from it). The parent folder is created if needed. If ``write`` raises,
    the temporary file is removed, ``path`` keeps its old content (or stays absent) and the error
    propagates. Returns ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        # Re-open to fsync: ``write`` may have used its own handle (or replaced the file).
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda temporary: temporary.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda temporary: temporary.write_text(text, encoding=encoding))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 1) -> Path:
    """Write ``obj`` as JSON (ending in a newline) to ``path`` atomically.

    The object is serialised *before* anything touches the disk, so a value JSON cannot encode
    raises ``TypeError``/``ValueError`` and leaves ``path`` as it was.
    """
    text = json.dumps(obj, indent=indent) + "\n"
    return atomic_write_text(path, text)


def replace_folder(staging: str | os.PathLike[str], folder: str | os.PathLike[str]) -> Path:
    """Swap a completely written ``staging`` folder (a sibling of ``folder``) into place.

    Readers see the old folder or the new one, never a mix. Modes are first reset to what a
    plain ``mkdir``/``open`` would give: ``tempfile.mkdtemp`` makes ``0o700`` folders, which
    the other users of a shared (JupyterHub) cache could not read.
    """
    staging, folder = Path(staging), Path(folder)
    umask = current_umask()
    for root, _, files in os.walk(staging):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~umask)
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
        os.replace(folder, old / folder.name)
        os.replace(staging, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, folder)
    return folder


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike[str], *, marker: str, foreign: str):
    """Write a whole folder atomically: yields an empty staging folder beside ``folder``; when
    the block ends without an error the staging folder replaces ``folder``
    (:func:`replace_folder`), otherwise it is removed and ``folder`` is untouched.

    Refuses to replace a file, or a non-empty folder without ``marker`` (a file the folder's
    kind always holds), with ``FileExistsError`` "``folder`` is a non-empty folder that
    ``foreign``"."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / marker).is_file():
        raise FileExistsError(f"{folder} is a non-empty folder that {foreign}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        yield staging
        replace_folder(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
