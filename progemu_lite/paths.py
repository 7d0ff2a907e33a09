"""Where data and downloads live: ``PROGEMU_HOME`` (default: the user's cache directory).

A JupyterHub admin can point ``PROGEMU_HOME`` at a shared, read-only folder; code that only
reads from it must never try to write there.
"""

from __future__ import annotations

import os
from pathlib import Path


def progemu_home() -> Path:
    """The cache folder: ``$PROGEMU_HOME``, else ``$XDG_CACHE_HOME/progemu-lite``."""
    env = os.environ.get("PROGEMU_HOME")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "progemu-lite"
