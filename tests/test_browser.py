"""The lesson widgets in a real browser: voila serves a lesson, Debian's Chromium clicks.

voila runs the notebook in a real kernel and renders its widgets with the real ipywidgets
JavaScript; Playwright drives /usr/bin/chromium (Debian package ``chromium``). The lesson is
prepared with its fast settings (papermill ``prepare_only``: parameters injected, nothing run).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
LESSON = ROOT / "notebooks" / "01_reading_chest_xrays.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_http(url: str, process: subprocess.Popen, log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"voila exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "api/spec.yaml", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # the server answers
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"voila did not answer on {url}:\n{log.read_text()[-3000:]}")


@contextmanager
def chromium_page(url: str, *, height: int, timeout: int):
    """A page of Debian's Chromium (through Playwright) opened at ``url``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": height})
            page.goto(url, timeout=timeout)
            yield page
        finally:
            browser.close()


def save_screenshot(page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=False)
    assert path.stat().st_size > 10_000
    print(json.dumps({"screenshot": str(path)}))


@contextmanager
def serve_lesson(lesson: Path, tmp_path: Path):
    """Serve ``lesson``, prepared with its fast settings, with voila on 127.0.0.1; yields
    (url, log path) and stops the server afterwards."""
    import papermill

    from progemu_lite.widgets.lessons import fast_parameters

    if not CHROMIUM.exists():
        pytest.fail("Debian chromium is missing: apt-get install -y chromium (.ci/run does it)")
    notebook = tmp_path / lesson.name
    papermill.execute_notebook(
        str(lesson), str(notebook), parameters=fast_parameters(lesson), prepare_only=True
    )
    port = _free_port()
    log = tmp_path / "voila.log"
    env = {**os.environ, "MPLBACKEND": "Agg", "PROGEMU_HOME": str(tmp_path / "home")}
    with log.open("w") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "voila",
                "--no-browser",
                f"--port={port}",
                "--Voila.ip=127.0.0.1",
                "--Voila.port_retries=0",
                notebook.name,
            ],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for_http(url, process, log)
        yield url, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def voila_lesson(tmp_path):
    """URL of lesson 1 served by voila on 127.0.0.1 with its fast settings."""
    with serve_lesson(LESSON, tmp_path) as served:
        yield served


def test_findings_gallery_updates_in_chromium(voila_lesson, tmp_path):
    url, log = voila_lesson
    with chromium_page(url, height=1000, timeout=180_000) as page:
        normal = page.locator('img[alt="Simulated normal PA chest radiograph of patient 0"]')
        normal.wait_for(state="visible", timeout=180_000)
        finding = page.locator('img[alt^="The same simulated patient with"]')
        before = finding.get_attribute("src")
        assert before and before.startswith("data:image/png;base64,")

        page.get_by_role("button", name="New patient").click()
        page.locator('img[alt="Simulated normal PA chest radiograph of patient 1"]').wait_for(
            state="visible", timeout=60_000
        )
        page.wait_for_function(
            "before => { const img = document.querySelector("
            "'img[alt^=\"The same simulated patient with\"]');"
            " return img && img.src !== before; }",
            arg=before,
            timeout=60_000,
        )
        after = finding.get_attribute("src")
        assert after != before
        # The DICOM viewer rendered too: the de-identified radiograph, windowed.
        assert page.locator('img[alt^="De-identified adult PA chest radiograph"]').count() == 1
        finding.scroll_into_view_if_needed()
        save_screenshot(page, tmp_path / "findings_gallery.png")
    assert "Traceback" not in log.read_text()


EXPLORER = ROOT / "notebooks" / "05_counterfactual_explorer.ipynb"


@pytest.fixture
def voila_explorer(tmp_path):
    """URL of lesson 5 (the counterfactual explorer) served by voila with its fast settings."""
    with serve_lesson(EXPLORER, tmp_path) as served:
        yield served


def test_explorer_generate_in_chromium(voila_explorer, tmp_path):
    """Click Generate in the explorer: the progress shows, then the new image and the
    interpretation (token probabilities and labeler findings) appear."""
    url, log = voila_explorer
    counterfactual = 'img[alt^="Generated counterfactual follow-up"]'
    with chromium_page(url, height=1400, timeout=180_000) as page:
        generate = page.get_by_role("button", name="Generate")
        generate.wait_for(state="visible", timeout=180_000)
        # The untrained-weights banner is on the page, above the controls.
        assert page.locator(".progemu-untrained").first.is_visible()
        page.locator(counterfactual).wait_for(state="visible", timeout=60_000)
        before = page.locator(counterfactual).get_attribute("src")

        # Another seed, so the new sample must differ from the one the lesson made.
        seed = page.locator("div.widget-text:has(label:text-is('Seed')) input")
        seed.fill("7")
        seed.press("Enter")
        generate.click()
        page.wait_for_function(
            "before => { const img = document.querySelector("
            "'img[alt^=\"Generated counterfactual follow-up\"]');"
            " const done = document.querySelector('.progemu-done');"
            " return img && img.src !== before && done !== null; }",
            arg=before,
            timeout=120_000,
        )
        assert page.locator(".progemu-done").first.inner_text().startswith("Done: 2 sample")
        interpretation = page.locator(".progemu-interpretation").first
        assert interpretation.is_visible()
        assert "Token probability" in interpretation.inner_text()
        assert page.locator(".progemu-token-probabilities span[title^='p = ']").count() > 0
        assert page.locator('img[alt="Counterfactual sample 2"]').count() == 1
        # Controls, images and interpretation in one view.
        generate.evaluate("el => el.scrollIntoView({block: 'start'})")
        save_screenshot(page, tmp_path / "counterfactual_explorer.png")
    assert "Traceback" not in log.read_text()


ALIGNMENT_LESSON = ROOT / "notebooks" / "07_does_the_image_show_it.ipynb"


@pytest.fixture
def voila_alignment_lesson(tmp_path):
    """URL of lesson 7 (the alignment explorer) served by voila with its fast settings."""
    with serve_lesson(ALIGNMENT_LESSON, tmp_path) as served:
        yield served


def test_alignment_explorer_switches_system_in_chromium(voila_alignment_lesson, tmp_path):
    url, log = voila_alignment_lesson
    with chromium_page(url, height=1000, timeout=240_000) as page:
        # The lesson's last cell switched the explorer to copy-prior.
        output = page.locator('img[alt^="Image of copy-prior for"]')
        output.wait_for(state="visible", timeout=240_000)
        assert page.locator('img[alt^="ROC curves of progression alignment"]').count() == 1
        before = output.get_attribute("src")
        system = page.locator(".widget-dropdown", has_text="System").locator("select")
        system.select_option(label="true-follow-up")
        switched = page.locator('img[alt^="Image of true-follow-up for"]')
        switched.wait_for(state="visible", timeout=60_000)
        assert switched.get_attribute("src") != before
        # true follow-up as the system: its image is the true follow-up itself
        truth = page.locator('img[alt^="True follow-up radiograph of"]')
        assert switched.get_attribute("src") == truth.get_attribute("src")
        switched.scroll_into_view_if_needed()
        save_screenshot(page, tmp_path / "alignment_explorer.png")
    assert "Traceback" not in log.read_text()
