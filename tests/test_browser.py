"""The explorer as a student uses it: JupyterLab in headless Chromium, driven by Playwright.

The test starts JupyterLab on 127.0.0.1 (a random free port, a random token) on a temporary copy
of the results notebook, opens it in Debian's Chromium (``/usr/bin/chromium``; no browser is
downloaded), runs all cells, then changes the class and the layer in the explorer and checks that
the picture changes with them, that going back to the first class brings back the first picture,
and that nothing went wrong: no error output in any cell, no error in the browser console, the
explorer's status line clean, and the kernel's explorer in the state the page shows (read back by
a cell the test adds and runs). Screenshots go to ``test-artifacts/browser/``.

Needs Chromium: ``apt-get install -y chromium``. Without it the test fails (it does not skip).
"""

from __future__ import annotations

import base64
import io
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from labutils.data import sample_path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "05_results.ipynb"
CHROMIUM = Path(os.environ.get("LABUTILS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts" / "browser"
SERVER_START_S = 90  # JupyterLab answering /api/status
RUN_ALL_S = 420  # the whole results notebook, on two CPU cores with random weights
UPDATE_S = 120  # one change in the explorer (a new layer on VGG-16 runs the network once)
# JupyterLab shows tracebacks and stderr with this type (checked with JupyterLab 4.6); the second is for safety
ERROR_OUTPUTS = (".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'], "
                 ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
NO_NEWS = '{"fetchNews": "false", "checkForUpdates": false}'  # no toast asking about Jupyter news


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyterlab(root: Path, env: dict[str, str], log: Path) -> Iterator[str]:
    """Run JupyterLab on ``root`` while the block runs; yield its URL with the token."""
    port, token = free_port(), secrets.token_urlsafe(24)
    command = [
        str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
        "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ] + (["--allow-root"] if os.geteuid() == 0 else [])  # CI containers run as root
    with open(log, "wb") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            assert server.poll() is None, f"JupyterLab exited with {server.returncode}:\n{log.read_text()[-3000:]}"
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/api/status",
                                                 headers={"Authorization": f"token {token}"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"JupyterLab did not answer in {SERVER_START_S} s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK.name}?token={token}"
    finally:
        stop(server)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (server and kernels), SIGKILL after 15 s."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def pixels(encoded: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"), dtype=np.int16)


def shown_bytes(img) -> bytes:
    """The bytes of the image file the <img> element shows (its src, fetched by the page itself)."""
    encoded = img.evaluate(
        "async (img) => { const data = new Uint8Array(await (await fetch(img.src)).arrayBuffer());"
        " let s = ''; for (const b of data) s += String.fromCharCode(b); return btoa(s); }"
    )
    return base64.b64decode(encoded)


def test_explorer_in_jupyterlab_in_chromium(tmp_path):
    assert CHROMIUM.is_file(), (
        f"Chromium is needed at {CHROMIUM} for the browser test: install Debian's package with "
        "`apt-get install -y chromium` (or set LABUTILS_CHROMIUM to a Chromium binary)"
    )
    from playwright.sync_api import sync_playwright

    data = sample_path("cat_dog.jpg", download=False).parent  # the test needs no internet
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)  # JupyterLab saves and checkpoints: never the repo's copy
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(NO_NEWS)
    env = dict(
        os.environ,
        LABUTILS_WEIGHTS="random",
        LABUTILS_DATA=str(data),
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
        IPYTHONDIR=str(tmp_path / "ipython"),
        MPLBACKEND="Agg",
    )
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    print(f"screenshots and logs: {ARTIFACTS}")
    log = ARTIFACTS / "jupyterlab.log"

    console_errors: list[str] = []
    with jupyterlab(root, env, log) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.set_default_timeout(60_000)
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(f"page error: {e}"))
            run_explorer_checks(page, url)
        finally:
            browser.close()
    assert not console_errors, f"errors in the browser console: {console_errors}"
    server_log = log.read_text(errors="replace")
    assert "Traceback" not in server_log, f"a traceback in JupyterLab's log (server or kernel):\n{server_log[-3000:]}"


def run_explorer_checks(page, url: str) -> None:
    page.goto(url)
    page.locator(".jp-NotebookPanel").wait_for()
    idle(page, 120)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

    explorer = page.locator(".labutils-explorer")
    status = explorer.locator(".labutils-status")
    caption = explorer.locator(".labutils-caption")
    picture = explorer.locator("img.labutils-picture")
    # the explorer's picture, or an error that stopped the run (no point waiting for the picture then)
    page.locator(f"img.labutils-picture, {ERROR_OUTPUTS}").first.wait_for(timeout=RUN_ALL_S * 1000)
    assert_no_error_outputs(page)
    idle(page, RUN_ALL_S)
    explorer.scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / "1-notebook-run.png")
    assert_no_error_outputs(page)
    first_caption = words(caption.inner_text())
    assert first_caption.startswith("VGG-16 · features.29 · "), first_caption
    assert "Grad-CAM" in first_caption and "p = " in first_caption
    assert "UNTRAINED" in explorer.locator(".labutils-banner").inner_text()
    picture.screenshot(path=ARTIFACTS / "picture-1-first-class.png")
    first = shown_bytes(picture)

    # another class of the top-10 list
    class_select = explorer.locator(".labutils-class select")
    labels = class_select.locator("option").all_inner_texts()
    assert len(labels) == 10, labels
    change(page, status, lambda: class_select.select_option(label=labels[3]), "class changed")
    second_caption = words(caption.inner_text())
    assert words(labels[3]).rsplit(" (", 1)[0] in second_caption, (labels[3], second_caption)
    picture.screenshot(path=ARTIFACTS / "picture-2-other-class.png")
    second = shown_bytes(picture)
    page.screenshot(path=ARTIFACTS / "2-other-class.png")
    moved = np.abs(pixels(first) - pixels(second)).mean()
    assert moved > 1.0, f"the picture hardly changed with the class (mean pixel change {moved:.2f})"

    # back to the first class: the first picture again
    change(page, status, lambda: class_select.select_option(label=labels[0]), "class changed")
    assert words(caption.inner_text()) == first_caption
    picture.screenshot(path=ARTIFACTS / "picture-3-first-class-again.png")
    assert shown_bytes(picture) == first, "the first class's picture did not come back"

    # another layer: new feature maps A^k
    layer_select = explorer.locator(".labutils-layer select")
    change(page, status, lambda: layer_select.select_option(label="features.22 (ReLU)"), "layer changed")
    third_caption = words(caption.inner_text())
    assert third_caption.startswith("VGG-16 · features.22 · "), third_caption
    assert first_caption.split(" · ")[2] in third_caption, "the class stays when the layer changes"
    picture.screenshot(path=ARTIFACTS / "picture-4-other-layer.png")
    layer = shown_bytes(picture)
    page.screenshot(path=ARTIFACTS / "3-other-layer.png")
    moved = np.abs(pixels(first) - pixels(layer)).mean()
    assert moved > 1.0, f"the picture hardly changed with the layer (mean pixel change {moved:.2f})"
    assert_no_error_outputs(page)

    # the kernel's side: a new cell reads the explorer's state back
    check = ('ex = [v for v in Out.values() if type(v).__name__ == "Explorer"][-1]; '
             'print("KERNEL:", ex.layer_choice.value, "|", ex.label(), "| updates:", ex.updates)')
    last_cell = page.locator(".jp-Notebook .jp-Cell").last
    last_cell.locator(".jp-InputArea-prompt").click()  # select the cell (command mode)
    page.keyboard.press("Escape")
    page.keyboard.press("b")  # a new cell below
    page.keyboard.press("Enter")  # edit it
    page.keyboard.insert_text(check)
    page.keyboard.press("Shift+Enter")
    page.locator(f".jp-OutputArea-output:has-text('KERNEL:'), {ERROR_OUTPUTS}").first.wait_for(timeout=60_000)
    page.screenshot(path=ARTIFACTS / "4-kernel-check.png")
    assert_no_error_outputs(page)
    printed = words(page.locator(".jp-OutputArea-output", has_text="KERNEL:").last.inner_text())
    assert printed == f"KERNEL: features.22 | {third_caption.split(' p = ')[0]} | updates: 3", printed
    assert "error" not in printed.lower(), printed
    assert_no_error_outputs(page)


def words(text: str) -> str:
    """Text as the kernel wrote it: the browser shows non-breaking spaces and collapses runs of spaces."""
    return " ".join(text.replace("\xa0", " ").split())


def idle(page, timeout_s: float) -> None:
    """Wait until the notebook's kernel is idle (JupyterLab's status bar says so)."""
    page.wait_for_function(
        "() => /Idle/.test(document.querySelector('#jp-main-statusbar')?.innerText ?? '')", timeout=timeout_s * 1000
    )


def change(page, status, action, expected: str) -> None:
    """Do ``action`` in the page and wait for the explorer's status line to report the next update
    ("update N: ..."; the kernel writes it last, after the picture and its caption)."""
    number = int(re.match(r"update (\d+):", words(status.inner_text())).group(1))
    action()
    deadline = time.monotonic() + UPDATE_S
    while not words(status.inner_text()).startswith(f"update {number + 1}:"):
        assert time.monotonic() < deadline, f"no update {number + 1} after {UPDATE_S} s: {status.inner_text()!r}"
        page.wait_for_timeout(100)
    text = words(status.inner_text())
    assert expected in text and "error" not in text.lower(), text


def assert_no_error_outputs(page) -> None:
    texts = page.locator(ERROR_OUTPUTS).all_inner_texts()
    assert not texts, f"error output in the notebook: {texts}"
