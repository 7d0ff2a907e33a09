"""progemu_lite.hub: URL downloads against a real HTTP server on 127.0.0.1, hub loading from a
hub-layout cache with HF_HUB_OFFLINE=1, read-only shared caches, locking, and safety rules."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from progemu_lite import cli, hub

sys.path.insert(0, str(Path(__file__).parent))
from hub_layout import COMMIT, make_hub_cache  # noqa: E402


@pytest.fixture(autouse=True)
def _own_caches(tmp_path, monkeypatch):
    """Each test gets an empty PROGEMU_HOME and an empty default hub cache, so nothing cached
    by another test (or on this machine) can make a miss look like a hit."""
    monkeypatch.setenv("PROGEMU_HOME", str(tmp_path / "progemu_home"))
    import huggingface_hub.constants as constants

    empty = tmp_path / "hf-default-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(empty))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(empty))


PAYLOAD = bytes(range(256)) * 2048  # 512 KiB, not all one byte, so offsets matter
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.files.get(self.path.split("?")[0])
        if body is None:
            self.send_error(404)
            return
        start = 0
        range_header = self.headers.get("Range")
        if range_header and server.honour_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        data = body[start:]
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        cut = server.cut_after
        if cut is not None:
            server.cut_after = None  # only the first transfer breaks
            self.wfile.write(data[:cut])
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection drops mid-file
            return
        for offset in range(0, len(data), 65536):
            self.wfile.write(data[offset : offset + 65536])
            if server.delay:
                time.sleep(server.delay)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files = {"/weights/model.safetensors": PAYLOAD}
    httpd.requests = []
    httpd.cut_after = None
    httpd.honour_range = True
    httpd.delay = 0.0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_download_then_cached(server, tmp_path):
    url = server.url + "/weights/model.safetensors"
    path = hub.download_url(url, tmp_path, sha256=PAYLOAD_SHA, progress=False)
    assert path == tmp_path / "model.safetensors"
    assert path.read_bytes() == PAYLOAD
    again = hub.download_url(url, tmp_path, sha256=PAYLOAD_SHA, progress=False)
    assert again == path
    assert len(server.requests) == 1  # the second call did not touch the network
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.safetensors",
        "model.safetensors.lock",
    ]


def test_interrupted_transfer_resumes_with_range(server, tmp_path):
    url = server.url + "/weights/model.safetensors"
    server.cut_after = 200_000
    with pytest.raises(hub.DownloadInterrupted, match="resume"):
        hub.download_url(url, tmp_path, sha256=PAYLOAD_SHA, progress=False)
    part = tmp_path / "model.safetensors.part"
    assert part.is_file() and 0 < part.stat().st_size < len(PAYLOAD)
    assert not (tmp_path / "model.safetensors").exists()
    kept = part.stat().st_size

    path = hub.download_url(url, tmp_path, sha256=PAYLOAD_SHA, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/weights/model.safetensors", f"bytes={kept}-")
    assert not part.exists()


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    url = server.url + "/weights/model.safetensors"
    (tmp_path / "model.safetensors.part").write_bytes(b"garbage that must not be kept")
    server.honour_range = False
    path = hub.download_url(url, tmp_path, sha256=PAYLOAD_SHA, progress=False)
    assert path.read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_the_file(server, tmp_path):
    url = server.url + "/weights/model.safetensors"
    wrong = "0" * 64
    with pytest.raises(hub.ChecksumError, match="checksum mismatch.*deleted"):
        hub.download_url(url, tmp_path, sha256=wrong, progress=False)
    assert not (tmp_path / "model.safetensors").exists()
    assert not (tmp_path / "model.safetensors.part").exists()


def test_404_is_a_clear_error(server, tmp_path):
    with pytest.raises(FileNotFoundError, match="404"):
        hub.download_url(server.url + "/nope.safetensors", tmp_path, sha256=PAYLOAD_SHA)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_cli_download_url(server, capsys):
    url = server.url + "/weights/model.safetensors"
    assert cli.main(["download", url, "--sha256", PAYLOAD_SHA]) == 0
    folder = Path(capsys.readouterr().out.strip().split(": ", 1)[1])
    assert (folder / "model.safetensors").read_bytes() == PAYLOAD
    assert folder.is_relative_to(hub.progemu_home())
    # a URL without a checksum is refused with one line, not a traceback
    assert cli.main(["download", url]) == 2
    assert "sha256" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name", ["../escape.bin", "a/../../escape.bin", "/etc/passwd", "..", "C:\\x", ""]
)
def test_unsafe_names_are_rejected(name, tmp_path):
    with pytest.raises(hub.UnsafePathError):
        hub.inside(tmp_path, name)


def test_unsafe_name_from_url_is_rejected(server, tmp_path):
    server.files["/..%2F..%2Fescape.bin"] = PAYLOAD
    with pytest.raises(hub.UnsafePathError):
        hub.download_url(server.url + "/..%2F..%2Fescape.bin", tmp_path, sha256=PAYLOAD_SHA)
    with pytest.raises(hub.UnsafePathError):
        hub.download_url(
            server.url + "/weights/model.safetensors",
            tmp_path,
            sha256=PAYLOAD_SHA,
            filename="/tmp/escape.bin",
        )
    assert server.requests == []  # rejected before anything was fetched


def _tar_with(names: list[str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 3
            archive.addfile(info, io.BytesIO(b"abc"))
    return buffer.getvalue()


@pytest.mark.parametrize("evil", ["../evil.txt", "/tmp/evil-progemu.txt", "ok/../../evil.txt"])
def test_archive_members_may_not_escape(evil, tmp_path):
    archive = tmp_path / "weights.tar.gz"
    archive.write_bytes(_tar_with(["config.json", evil]))
    dest = tmp_path / "cache" / "unpacked"
    with pytest.raises(hub.UnsafePathError):
        hub.extract_archive(archive, dest)
    assert not dest.exists()
    assert not (tmp_path / "evil.txt").exists()
    assert list((tmp_path / "cache").iterdir()) == []  # the temporary folder is gone too

    zipped = tmp_path / "weights.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("config.json", "{}")
        zf.writestr(evil, "x")
    with pytest.raises(hub.UnsafePathError):
        hub.extract_archive(zipped, dest)
    assert not dest.exists()


def test_archive_url_source_is_unpacked(server):
    archive = _tar_with(["ckpt/config.json", "ckpt/model.safetensors"])
    server.files["/mirror/ckpt.tar.gz"] = archive
    source = hub.UrlFile(server.url + "/mirror/ckpt.tar.gz", hashlib.sha256(archive).hexdigest())
    folder = hub.url_snapshot(source, name="mirror", progress=False)
    assert (folder / "ckpt" / "config.json").read_bytes() == b"abc"
    assert hub.url_snapshot(source, name="mirror", download=False) == folder


# --- Hugging Face hub cache -----------------------------------------------------------------

NATIVE_CONFIG = json.dumps({"model_type": "emu3", "text_config": {}, "vq_config": {}}).encode()


def test_offline_hub_loading_from_hub_layout(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = make_hub_cache(
        hub.hub_cache_dir(), "course/tiny-emu3", {"config.json": NATIVE_CONFIG, "a/b.txt": b"x"}
    )
    resolved = hub.resolve("course/tiny-emu3")
    assert resolved.path == snapshot
    assert resolved.layout == "native"
    assert (resolved.path / "config.json").read_bytes() == NATIVE_CONFIG
    # a pinned commit resolves without refs/main
    assert hub.resolve(f"course/tiny-emu3@{COMMIT}").path == snapshot


def test_offline_falls_back_to_the_users_hf_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf_cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_cache))
    snapshot = make_hub_cache(hf_cache, "course/in-hf-home", {"config.json": NATIVE_CONFIG})
    assert hub.resolve("course/in-hf-home").path == snapshot


def test_offline_and_not_cached_says_how_to_prefetch(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.OfflineError) as err:
        hub.resolve("progemu")
    message = str(err.value)
    assert "progemu-lite download progemu" in message
    assert "PROGEMU_HOME" in message
    assert cli.main(["download", "progemu"]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err


def test_lite_not_shipped_is_a_clear_error():
    folder = hub.PACKAGE_WEIGHTS / "lite"
    if folder.is_dir() and any(folder.iterdir()):
        pytest.skip("this build ships the lite weights")
    with pytest.raises(FileNotFoundError, match="not shipped in this version"):
        hub.resolve("lite")


def test_unknown_source_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="unknown weights"):
        hub.resolve("no such thing")


def _tree_state(root: Path) -> dict:
    return {
        str(p.relative_to(root)): (p.lstat().st_ino, p.lstat().st_mtime_ns, p.lstat().st_size)
        for p in sorted(root.rglob("*"))
    }


LOADER = """
import json, os, sys
from progemu_lite import hub
resolved = hub.resolve(sys.argv[1])
print(json.dumps({"path": str(resolved.path), "uid": os.getuid()}))
"""


def _nobody():
    """The ``nobody`` account when we are root and it can run this Python, else None (then the
    inode/mtime comparison alone proves nothing was written)."""
    if os.getuid() != 0:
        return None
    try:
        account = pwd.getpwnam("nobody")
    except KeyError:
        return None

    def demote():
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)

    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import progemu_lite, huggingface_hub"],
            preexec_fn=demote,
            cwd="/",
            env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1])),
            capture_output=True,
            timeout=60,
        )
    except OSError:
        return None
    return account if probe.returncode == 0 else None


def test_read_only_shared_cache_is_never_written(tmp_path):
    """Two loaders at once, one as an unprivileged user when we are root, over a cache made
    read-only; afterwards no inode, mtime or size changed and no file appeared."""
    shared = Path(tempfile.mkdtemp(prefix="progemu-shared-"))
    try:
        home = shared / "progemu"
        snapshot = make_hub_cache(home / "hub", "course/shared", {"config.json": NATIVE_CONFIG})
        for path in [shared, *shared.rglob("*")]:
            if not path.is_symlink():
                mode = 0o555 if path.is_dir() else 0o444
                path.chmod(mode)
        before = _tree_state(shared)
        env = dict(os.environ, PROGEMU_HOME=str(home), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path))
        repo_root = Path(__file__).resolve().parents[1]
        env["PYTHONPATH"] = str(repo_root)
        nobody = _nobody()

        def demote():
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)

        runs = []
        for as_nobody in (False, True):
            kwargs = {}
            if as_nobody and nobody is not None:
                kwargs["preexec_fn"] = demote
                env_run = dict(env, HOME="/nonexistent", HF_HOME="/nonexistent/hf")
            else:
                env_run = env
            runs.append(
                subprocess.Popen(
                    [sys.executable, "-c", LOADER, "course/shared"],
                    env=env_run,
                    cwd="/",
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    **kwargs,
                )
            )
        results = []
        for run in runs:
            out, err = run.communicate(timeout=120)
            assert run.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
        assert all(r["path"] == str(snapshot) for r in results)
        if nobody is not None:
            assert results[1]["uid"] == nobody.pw_uid  # the check really ran unprivileged
        assert _tree_state(shared) == before
    finally:
        for path in [shared, *shared.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | stat.S_IWUSR)
        shutil.rmtree(shared)


DOWNLOADER = """
import sys
from pathlib import Path
from progemu_lite import hub
path = hub.download_url(sys.argv[1], Path(sys.argv[2]), sha256=sys.argv[3], progress=False)
print(path)
"""


def test_two_processes_downloading_at_once(server, tmp_path):
    server.delay = 0.01  # ~80 ms per transfer, so the two processes overlap
    url = server.url + "/weights/model.safetensors"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", DOWNLOADER, url, str(tmp_path), PAYLOAD_SHA],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        assert out.strip() == str(tmp_path / "model.safetensors")
    assert (tmp_path / "model.safetensors").read_bytes() == PAYLOAD
    assert not (tmp_path / "model.safetensors.part").exists()
    # the lock made the second process wait and then reuse the file
    assert len(server.requests) == 1


# --- loading weights ----------------------------------------------------------------------


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_checkpoints_need_an_opt_in(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(tmp_path / "model.safetensors"))
    assert torch.equal(hub.load_weights_file(tmp_path / "model.safetensors")["w"], torch.ones(2))

    torch.save({"w": torch.ones(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(PermissionError, match="pickle"):
        hub.load_weights_file(tmp_path / "pytorch_model.bin")
    loaded = hub.load_weights_file(tmp_path / "pytorch_model.bin", allow_pickle=True)
    assert torch.equal(loaded["w"], torch.ones(2))

    # even with the opt-in, weights_only refuses a pickle that would run code
    torch.save({"w": _Evil()}, tmp_path / "evil.bin")
    import pickle

    with pytest.raises(pickle.UnpicklingError):
        hub.load_weights_file(tmp_path / "evil.bin", allow_pickle=True)


def test_unreachable_hub_and_not_cached_says_how_to_prefetch(monkeypatch):
    """Not offline by setting, but the hub cannot be reached (a closed port on 127.0.0.1)."""
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(hub.OfflineError, match="progemu-lite download course/not-cached"):
        hub.resolve("course/not-cached", progress=False)
