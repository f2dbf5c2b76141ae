"""What a reader sees: JupyterLab in headless Chromium (Debian's `chromium`, driven by Playwright; no browser download).
The fixtures and steps shared by the browser tests (`test_browser.py`: the component notebooks and what the widget and
training notebooks show; `test_browser_notebooks.py`: the notebooks from the command line on). They are two files so
that pytest's two workers (one per core, a test file each) share them: each file starts its own JupyterLab.

The notebooks are copied to a scratch folder (JupyterLab autosaves: the repository's notebooks stay as they are); each
test opens one in JupyterLab, runs all cells from the menu and checks what is rendered. Screenshots go to
`$MRCNN_NB_ARTIFACTS` (default: the test's temporary folder)."""
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:
    sync_playwright = expect = None
# why the browser tests cannot run here, or None: each test file skips itself with it
MISSING = ("needs Debian's chromium and the playwright package (.ci/run installs both)"
           if CHROMIUM is None or sync_playwright is None else None)

PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"   # the notebook on screen
# the closed network: no first-run, sync, updates or background requests
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    "JupyterLab on localhost with a token, serving a scratch copy of the notebooks; kernels run the small setting (IN_TEST)."
    work = tmp_path_factory.mktemp("lab")
    for nb in (ROOT / "nbs").glob("*.ipynb"): shutil.copy(nb, work / nb.name)
    shutil.copytree(ROOT / "nbs" / "images", work / "images")
    port, token = _free_port(), secrets.token_hex(16)
    settings = work / ".settings"
    # every cell stays in the page (JupyterLab 4 otherwise drops cells scrolled out of view from the DOM)
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    env = dict(os.environ, IN_TEST="1", JUPYTER_CONFIG_DIR=str(work / ".jupyter"), JUPYTER_RUNTIME_DIR=str(work / ".runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(work / ".workspaces"))
    log = open(work / "jupyterlab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}", "--LabApp.news_url=", "--allow-root",
                             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
                             "--ServerApp.port_retries=0"],   # our port or fail: never another lab's, never one we don't poll
                            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2); break
            except OSError:
                if proc.poll() is not None: raise RuntimeError("JupyterLab exited:\n" + (work / "jupyterlab.log").read_text()[-3000:])
                time.sleep(0.5)
        else: raise RuntimeError("JupyterLab did not answer in 60 s:\n" + (work / "jupyterlab.log").read_text()[-3000:])
        # stopping: threads stopping kernels (below); handed: sessions given to them; stop_errors: what went wrong
        state = dict(url=url, token=token, work=work, stopping=[], handed=set(), stop_errors=[])
        yield state
        for t in state["stopping"]: t.join()
        if state["stop_errors"]: pytest.fail("kernels that JupyterLab did not stop:\n" + "\n".join(state["stop_errors"]))
    finally:
        proc.terminate()
        try: proc.wait(20)
        except subprocess.TimeoutExpired: proc.kill()
        log.close()


class _Chromium:
    "One headless Chromium with the closed-network flags, launched again if it has gone (a crash fails one test, not the file)."
    def __init__(self):
        self.playwright, self.browser = sync_playwright().start(), None

    def get(self):
        if self.browser is None or not self.browser.is_connected():
            self.browser = self.playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        return self.browser

    def close(self):
        try:
            if self.browser is not None and self.browser.is_connected(): self.browser.close()
        finally: self.playwright.stop()


@pytest.fixture(scope="module")
def browser():
    "One Chromium per test file (launching one per test cost 1-4 s each)."
    chromium = _Chromium()
    try: yield chromium
    finally: chromium.close()


@pytest.fixture
def page(browser):
    "A fresh browser context for each test (its own profile, cookies and storage, as a new browser would have)."
    ctx = browser.get().new_context(viewport={"width": 1400, "height": 1000})
    try: yield ctx.new_page()
    finally: ctx.close()


@pytest.fixture
def one_kernel_at_a_time(lab):
    """Each test opens one notebook, which starts a kernel: stop it afterwards. Its session is listed now, and stopped
    in the background (JupyterLab takes ~2.6 s to stop a kernel) while the next test starts; the lab awaits them all
    and fails if one could not be stopped."""
    yield
    ids = [i for i in _sessions(lab) if i not in lab["handed"]]   # a session still stopping is listed too: skip it
    lab["handed"].update(ids)
    t = threading.Thread(target=_stop_sessions, args=(lab, ids), daemon=True)
    t.start()
    lab["stopping"].append(t)


@pytest.fixture
def shots(tmp_path):
    out = Path(os.environ.get("MRCNN_NB_ARTIFACTS") or tmp_path) / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    return out


def open_and_run_all(page, lab, name: str, timeout_s: float):
    page.goto(f"{lab['url']}/lab/tree/{name}?reset&token={lab['token']}")   # reset: a fresh workspace, this notebook alone
    panel = page.locator(PANEL)
    dialog, kernel = page.locator(".jp-Dialog").filter(has_text="Select Kernel"), panel.locator(".jp-NotebookPanel-toolbar .jp-KernelName")
    deadline = time.time() + 90
    while "Python 3" not in (kernel.first.inner_text() if kernel.count() else ""):   # a reader takes the notebook's kernel if asked
        if dialog.count() and dialog.is_visible(): dialog.get_by_role("button", name="Select", exact=True).click()
        assert time.time() < deadline, "no kernel started in 90 s"
        page.wait_for_timeout(250)
    news = page.locator(".jp-Notification-Toast").filter(has_text="Jupyter news")
    if news.count(): news.get_by_role("button", name="No").click()
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)   # the kernel is up
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    # done: the kernel is idle, no cell is queued or running ('[*]'), and every code cell ran ('[n]') or one failed
    page.wait_for_function(r"""(sel) => {
        const ind = document.querySelector('.jp-Notebook-ExecutionIndicator');
        const panel = document.querySelector(sel);
        if (!ind || ind.dataset.status !== 'idle' || !panel) return false;
        const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(p => p.textContent);
        if (prompts.length === 0 || prompts.some(t => t.includes('*'))) return false;
        return prompts.every(t => /\[\d+\]/.test(t)) || panel.querySelector('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]') !== null;
    }""", arg=PANEL, timeout=timeout_s * 1000)


def errors_shown(page) -> list:
    return page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").filter(has_text="Traceback").all_inner_texts()


def _sessions(lab) -> list:
    "The ids of JupyterLab's sessions (one per notebook opened and not stopped)."
    with urllib.request.urlopen(f"{lab['url']}/api/sessions?token={lab['token']}", timeout=10) as r:
        return [sess["id"] for sess in json.load(r)]


def _stop_sessions(lab, ids: list):
    "Stop these sessions and their kernels; one already gone (404) is fine, any other failure is kept for the lab."
    import urllib.error
    for i in ids:
        req = urllib.request.Request(f"{lab['url']}/api/sessions/{i}?token={lab['token']}", method="DELETE")
        try: urllib.request.urlopen(req, timeout=30).close()
        except urllib.error.HTTPError as e:
            if e.code not in (404, 410): lab["stop_errors"].append(f"session {i}: HTTP {e.code} {e.reason}")
        except OSError as e: lab["stop_errors"].append(f"session {i}: {e}")


NOTEBOOKS = sorted(p.name for p in (ROOT / "nbs").glob("*.ipynb"))
WIDGET_AND_TRAINING = ("07d_roi_widgets.ipynb", "12_train.ipynb")   # run all by tests that check what they show
assert len(NOTEBOOKS) > 25 and set(WIDGET_AND_TRAINING) <= set(NOTEBOOKS), NOTEBOOKS
FIRST_APPLICATION = "15"   # notebooks from 15_cli on (the command line, own data, COCO, ablations, benchmarks, index)


def runs_all_cells(page, lab, name: str):
    """The notebook opens in JupyterLab (its cells render, no error dialog) and "Run All Cells" runs it top to bottom on
    the CPU in its small setting (IN_TEST, as under nbdev_test; `#| slow` and `#| cuda` cells run too): every code cell
    gets its execution number and no output is a traceback."""
    open_and_run_all(page, lab, name, timeout_s=600)
    panel = page.locator(PANEL)
    assert page.locator(".jp-Dialog").filter(has_text=re.compile("Error|error|Failed|failed")).all_inner_texts() == []
    errors = errors_shown(page)
    assert errors == [], errors[:2]   # the tracebacks the notebook shows
    prompts = panel.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
    assert len(prompts) >= 1 and panel.locator(".jp-Cell").count() >= 3
    assert [p for p in prompts if not re.search(r"\[\d+\]", p)] == [], "cells that did not run"
