"""The live half of the widget helper: the KL notebook in a real JupyterLab, driven by headless Chromium.

Runs all cells, waits for the ipywidgets slider, moves it with the keyboard and checks that the
kernel redrew the figure. The notebook is copied to a temporary folder first, so JupyterLab's
autosave cannot touch the repository. Needs Chromium like test_book_pages.py.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from test_book_pages import ARTIFACTS, ROOT, browser  # noqa: F401  (browser is a fixture)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lab")
    shutil.copy(ROOT / "notebooks" / "kl_approximation.ipynb", folder)
    port = _free_port()
    jupyter = os.path.join(os.path.dirname(sys.executable), "jupyter")
    proc = subprocess.Popen(
        [jupyter, "lab", "--no-browser", f"--port={port}", "--allow-root", "--IdentityProvider.token=",
         "--ServerApp.password=", f"--ServerApp.root_dir={folder}", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, MLBOOK_PROGRESS="0"))
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    pytest.fail("JupyterLab did not start")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(10)


def test_live_slider_redraws_in_jupyterlab(lab, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{lab}/lab/tree/kl_approximation.ipynb")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    page.wait_for_timeout(3000)                       # let the kernel connect
    page.click("text=Run", timeout=10_000)
    page.click("text=Run All Cells", timeout=10_000)
    image = page.wait_for_selector(".jupyter-widgets img", timeout=180_000)
    before = image.get_attribute("src")
    handle = page.wait_for_selector(".jupyter-widgets .noUi-handle", timeout=10_000)
    handle.focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_function(
        "(old) => { const i = document.querySelector('.jupyter-widgets img'); return i && i.src !== old; }",
        arg=before, timeout=60_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "jupyterlab-live-slider.png"))
    print(f"\nscreenshot: {ARTIFACTS / 'jupyterlab-live-slider.png'}")
    page.close()
    assert not errors, f"JavaScript errors in JupyterLab: {errors}"
