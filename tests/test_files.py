"""progemu_lite.files: atomic single-file writes and folder swaps."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from progemu_lite.files import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    current_umask,
    replace_folder,
)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_text_bytes_and_json_content(tmp_path):
    assert atomic_write_text(tmp_path / "a.txt", "héllo\n") == tmp_path / "a.txt"
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01\xff")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01\xff"
    atomic_write_json(tmp_path / "c.json", {"x": [1, 2], "y": None}, indent=2)
    text = (tmp_path / "c.json").read_text()
    assert json.loads(text) == {"x": [1, 2], "y": None}
    assert text == json.dumps({"x": [1, 2], "y": None}, indent=2) + "\n"
    assert _names(tmp_path) == ["a.txt", "b.bin", "c.json"]  # no temporary left behind


def test_overwrites_and_creates_parent_folders(tmp_path):
    target = tmp_path / "deep" / "er" / "f.txt"
    atomic_write_text(target, "one")
    atomic_write_text(str(target), "two")  # str paths work too
    assert target.read_text() == "two"
    assert _names(target.parent) == ["f.txt"]


def test_temporary_is_hidden_in_the_same_folder(tmp_path):
    seen: list[Path] = []

    def write(temporary: Path) -> None:
        seen.append(temporary)
        assert temporary.exists()  # handed over as an existing, empty file
        temporary.write_text("x")

    atomic_write(tmp_path / "out.txt", write)
    (temporary,) = seen
    assert temporary.parent == tmp_path
    assert temporary.name.startswith(".out.txt.")
    assert not temporary.exists()


def test_suffix_is_kept_for_extension_sniffing_writers(tmp_path):
    codes = np.arange(12, dtype=np.int16).reshape(3, 4)
    # np.save appends ".npy" to any name not ending in it, which would strand the real data.
    atomic_write(tmp_path / "codes.npy", lambda p: np.save(p, codes), suffix=".npy")
    np.testing.assert_array_equal(np.load(tmp_path / "codes.npy"), codes)
    assert _names(tmp_path) == ["codes.npy"]

    from PIL import Image

    image = Image.fromarray(np.full((4, 5), 128, dtype=np.uint8))
    atomic_write(tmp_path / "im.png", image.save, suffix=".png")  # PIL infers PNG from suffix
    assert (tmp_path / "im.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    seen: list[str] = []
    atomic_write(tmp_path / "s.txt", lambda p: (seen.append(p.name), p.write_text("s")))
    assert not seen[0].endswith(".txt")  # no suffix unless asked for


def test_failure_leaves_no_temporary_and_no_target(tmp_path):
    def write(temporary: Path) -> None:
        temporary.write_text("half")
        raise RuntimeError("writer broke")

    with pytest.raises(RuntimeError, match="writer broke"):
        atomic_write(tmp_path / "new.txt", write)
    assert _names(tmp_path) == []


def test_failure_keeps_existing_target(tmp_path):
    target = tmp_path / "keep.json"
    atomic_write_json(target, {"v": 1})
    before = target.read_bytes()

    def write(temporary: Path) -> None:
        temporary.write_text('{"v": 2, "trunc')
        raise KeyboardInterrupt  # also cleaned up on BaseException (Ctrl-C)

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, write)
    assert target.read_bytes() == before
    assert _names(tmp_path) == ["keep.json"]


def test_unserialisable_json_touches_nothing(tmp_path):
    target = tmp_path / "r.json"
    atomic_write_json(target, [1])
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == [1]
    assert _names(tmp_path) == ["r.json"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_result_is_readable_by_group_and_others(tmp_path):
    old = os.umask(0o022)
    try:
        assert current_umask() == 0o022
        path = atomic_write_bytes(tmp_path / "shared.bin", b"data")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # mkstemp alone would give 0o600
        os.umask(0o027)
        assert current_umask() == 0o027
        path = atomic_write_text(tmp_path / "group.txt", "g")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640  # the umask is respected
    finally:
        os.umask(old)


def test_replace_folder_swaps_whole_folders_with_readable_modes(tmp_path):
    import tempfile

    target = tmp_path / "checkpoint"
    for version in ("old", "new"):
        staging = Path(tempfile.mkdtemp(prefix=".checkpoint.tmp-", dir=tmp_path))  # mode 0o700
        (staging / "sub").mkdir()
        (staging / "sub" / "weights.bin").write_text(version)
        assert replace_folder(staging, target) == target
    assert (target / "sub" / "weights.bin").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # nothing left over
    umask = current_umask()
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((target / "sub" / "weights.bin").stat().st_mode) == 0o666 & ~umask


def test_staged_folder_replaces_on_success_and_leaves_the_old_folder_on_error(tmp_path):
    from progemu_lite.files import staged_folder

    folder = tmp_path / "ckpt"
    with staged_folder(folder, marker="index.json", foreign="is not ours") as staging:
        (staging / "index.json").write_text("1")
    assert (folder / "index.json").read_text() == "1"
    with pytest.raises(RuntimeError), staged_folder(folder, marker="index.json", foreign="x") as s:
        (s / "index.json").write_text("2")
        raise RuntimeError("interrupted")
    assert (folder / "index.json").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging left behind
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("mine")
    refused = pytest.raises(FileExistsError, match="is a non-empty folder that is not ours")
    with refused, staged_folder(other, marker="index.json", foreign="is not ours"):
        pass
