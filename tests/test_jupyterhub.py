"""The JupyterHub recipe (jupyterhub/jupyterhub_config.py), run for real on 127.0.0.1.

A hub starts with the recipe plus test-only settings (DummyAuthenticator, SimpleLocalProcessSpawner
with a temporary home per user, free loopback ports, npm's configurable-http-proxy); a student
logs in through the login form, the hub spawns their server, the student opens a lesson through
the server's contents API, and the hub shuts everything down.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "jupyterhub" / "jupyterhub_config.py"
BIN = Path(sys.executable).parent
STUDENT = "progemu-student"

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _lesson() -> Path:
    """The explorer lesson when it exists, else lesson 1."""
    explorer = ROOT / "notebooks" / "05_counterfactual_explorer.ipynb"
    return explorer if explorer.exists() else ROOT / "notebooks" / "01_reading_chest_xrays.ipynb"


def _servers_of(user: str) -> list[int]:
    """Pids of running single-user servers started for `user` (read from /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"JUPYTERHUB_USER={user}".encode() in environ:
            pids.append(int(proc.name))
    return pids


def _environ(pid: int) -> dict[str, str]:
    pairs = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def hub(tmp_path):
    """A running hub: (base url, its log file, the student's home folder)."""
    if shutil.which("configurable-http-proxy") is None:
        pytest.skip(
            "configurable-http-proxy is not installed (npm install -g configurable-http-proxy)"
        )
    if not (BIN / "jupyterhub").exists():
        pytest.skip("jupyterhub is not installed in this environment")
    port, hub_port, proxy_api = _free_port(), _free_port(), _free_port()
    homes = tmp_path / "homes"
    shared = tmp_path / "shared-progemu-home"
    shared.mkdir()
    shared.chmod(0o555)  # the recipe's point: students read the shared cache, never write it
    allow_root = ["--allow-root"] if os.geteuid() == 0 else []
    config = tmp_path / "jupyterhub_test_config.py"
    config.write_text(
        "c = get_config()  # noqa\n"
        f"load_subconfig({str(RECIPE)!r})\n"
        "# test-only: anyone logs in, servers run as this user in a temporary home\n"
        "c.JupyterHub.authenticator_class = 'dummy'\n"
        "c.JupyterHub.spawner_class = 'simple'\n"
        f"c.SimpleLocalProcessSpawner.home_dir_template = {str(homes / '{username}')!r}\n"
        f"c.Spawner.cmd = [{str(BIN / 'jupyterhub-singleuser')!r}]\n"
        f"c.Spawner.args = {allow_root!r}\n"
        "c.Spawner.start_timeout = 90\n"
        "c.Spawner.http_timeout = 90\n"
        "c.JupyterHub.ip = '127.0.0.1'\n"
        f"c.JupyterHub.port = {port}\n"
        "c.JupyterHub.hub_ip = '127.0.0.1'\n"
        f"c.JupyterHub.hub_port = {hub_port}\n"
        f"c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{proxy_api}'\n"
        f"c.JupyterHub.db_url = 'sqlite:///{tmp_path / 'hub.sqlite'}'\n"
        f"c.JupyterHub.cookie_secret_file = {str(tmp_path / 'cookie_secret')!r}\n"
        f"c.JupyterHub.pid_file = {str(tmp_path / 'hub.pid')!r}\n"
    )
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PROGEMU_COURSE_DIR": str(ROOT),
        "PROGEMU_SHARED_HOME": str(shared),
    }
    log = tmp_path / "hub.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "jupyterhub"), "-f", str(config)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: hub, proxy and user servers
        )
    base = f"http://127.0.0.1:{port}"
    try:
        import requests

        def up():
            if process.poll() is not None:
                raise AssertionError(f"jupyterhub exited:\n{log.read_text()[-3000:]}")
            try:
                return requests.get(f"{base}/hub/api", timeout=2).ok
            except requests.ConnectionError:
                return False

        _wait_for(up, 60, "the hub to answer")
        yield base, log, homes / STUDENT
    finally:
        # SIGTERM: the hub stops the user servers and the proxy it started, then exits.
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        shared.chmod(0o755)
        leftovers = _servers_of(STUDENT)
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        assert not leftovers, "the hub left the student's server running"


@pytest.mark.timeout(240)
def test_student_logs_in_and_opens_a_lesson(hub):
    import nbformat
    import requests

    base, log, home = hub
    lesson = _lesson()
    session = requests.Session()
    form = session.get(f"{base}/hub/login", timeout=10)
    assert form.ok, form.status_code
    xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', form.text)
    assert xsrf, "the login form has no _xsrf field"
    login = session.post(
        f"{base}/hub/login",
        data={"username": STUDENT, "password": "any", "_xsrf": xsrf.group(1)},
        allow_redirects=False,
        timeout=10,
    )
    assert login.status_code == 302, (login.status_code, login.text[:500])

    # Asking the hub for the user's server spawns it; once it runs, the lab page loads (the first
    # visit goes through the hub's OAuth handshake, which requests follows).
    session.get(f"{base}/hub/spawn/{STUDENT}", timeout=30)
    lab_url = f"{base}/user/{STUDENT}/lab/tree/progemu-lite/notebooks/{lesson.name}"

    def lab_loaded():
        page = session.get(lab_url, timeout=30)
        return page if page.ok and "jupyter-config-data" in page.text else None

    try:
        _wait_for(lab_loaded, 120, f"the student's server to serve {lesson.name}")
    except AssertionError:
        raise AssertionError(log.read_text()[-4000:]) from None

    # API calls authenticated by the login cookie must echo the server's XSRF cookie.
    xsrf_cookie = session.cookies.get("_xsrf", path=f"/user/{STUDENT}/")
    assert xsrf_cookie, "the student's server set no _xsrf cookie"
    answer = session.get(
        f"{base}/user/{STUDENT}/api/contents/progemu-lite/notebooks/{lesson.name}",
        params={"content": 1},
        headers={"X-XSRFToken": xsrf_cookie},
        timeout=30,
    )
    assert answer.ok, (answer.status_code, log.read_text()[-3000:])
    model = answer.json()
    assert model["type"] == "notebook"
    source = nbformat.read(lesson, as_version=4)
    assert model["content"]["cells"][0]["source"] == source.cells[0].source
    assert model["path"] == f"progemu-lite/notebooks/{lesson.name}"

    # The recipe's copy landed in the student's home, and the server reads the shared cache.
    assert (home / "progemu-lite" / "notebooks" / lesson.name).is_file()
    servers = _servers_of(STUDENT)
    assert servers, "no single-user server process for the student"
    env = _environ(servers[0])
    assert env["PROGEMU_HOME"].endswith("shared-progemu-home")
    assert env["HOME"] == str(home)
