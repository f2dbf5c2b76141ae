"""What a reader sees: JupyterLab in headless Chromium (Debian's `chromium`, driven by Playwright; no browser download).

The notebooks are copied to a scratch folder (JupyterLab autosaves: the repository's notebooks stay as they are); each
test opens one in JupyterLab, runs all cells from the menu and checks what is rendered. Screenshots go to
`$MRCNN_NB_ARTIFACTS` (default: the test's temporary folder)."""
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:
    sync_playwright = None
if CHROMIUM is None or sync_playwright is None:
    pytest.skip("needs Debian's chromium and the playwright package (.ci/run installs both)", allow_module_level=True)

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
                             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly"],
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
        yield dict(url=url, token=token, work=work)
    finally:
        proc.terminate()
        try: proc.wait(20)
        except subprocess.TimeoutExpired: proc.kill()
        log.close()


@pytest.fixture
def page(tmp_path):
    "A fresh headless Chromium (its own --user-data-dir) with the closed-network flags."
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
                                                   args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1000})
        try: yield ctx.pages[0] if ctx.pages else ctx.new_page()
        finally: ctx.close()


@pytest.fixture(autouse=True)
def one_kernel_at_a_time(lab):
    "Each test opens one notebook, which starts a kernel: stop it afterwards."
    yield
    _shutdown_kernels(lab)


@pytest.fixture
def shots(tmp_path):
    out = Path(os.environ.get("MRCNN_NB_ARTIFACTS") or tmp_path) / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _open_and_run_all(page, lab, name: str, timeout_s: float):
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


def _errors(page) -> list:
    return page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").filter(has_text="Traceback").all_inner_texts()


def test_roi_explorer_responds_to_a_slider(page, lab, shots):
    _open_and_run_all(page, lab, "07d_roi_widgets.ipynb", timeout_s=240)
    page.screenshot(path=str(shots / "roi_widgets_page.png"))
    widget = page.locator(".jp-OutputArea-output .widget-vbox").filter(has=page.locator("img.widget-image")).first
    widget.scroll_into_view_if_needed()
    expect(widget.locator("img.widget-image")).to_be_visible(timeout=30_000)
    image, label = widget.locator("img.widget-image"), widget.locator(".widget-html-content").first
    src0, text0 = image.get_attribute("src"), label.inner_text()
    assert "RoIAlign" in text0
    widget.screenshot(path=str(shots / "roi_explorer_before.png"))
    # a person's move: click the 'x1' slider's handle and press the right arrow key three times (3 px)
    slider = widget.locator(".widget-slider").filter(has=page.locator(".widget-label", has_text=re.compile(r"^x1$"))).first
    value = slider.locator(".widget-readout")
    shown0 = value.inner_text(); x0 = float(shown0)
    slider.locator(".noUi-handle").click()
    for _ in range(3): page.keyboard.press("ArrowRight")
    expect(value).not_to_have_text(shown0, timeout=10_000)            # the slider moved ...
    # ... and the callback redrew the comparison (a broken callback fails here)
    page.wait_for_function("([img, src]) => img.getAttribute('src') !== src", arg=[image.element_handle(), src0], timeout=30_000)
    widget.screenshot(path=str(shots / "roi_explorer_after.png"))
    assert float(value.inner_text()) > x0
    assert image.get_attribute("src") != src0                     # the comparison was redrawn
    assert label.inner_text() != text0                             # and its IoU read-out changed
    assert _errors(page) == []                                     # (checked last: the notebook's own tests also move sliders)


def test_training_notebook_shows_its_log_and_figures(page, lab, shots):
    "12_train logs its run as text (a saved notebook would keep a progress widget frozen at 0 %) and draws figures."
    _open_and_run_all(page, lab, "12_train.ipynb", timeout_s=480)
    assert _errors(page) == []
    log = page.locator(".jp-OutputArea-output").filter(has_text="iterations in").first
    log.scroll_into_view_if_needed()
    text = log.inner_text()
    assert "6 iterations in" in text and "evaluation: box AP" in text, text   # ran to its end (IN_TEST: 6 iterations)
    log.screenshot(path=str(shots / "train_log.png"))
    figs = page.locator(".jp-OutputArea-output img[src^='data:image/png'], .jp-OutputArea-output[data-mime-type='image/png'] img")
    assert figs.count() > 0, "no figure was rendered"
    fig = figs.last
    fig.scroll_into_view_if_needed()
    box = fig.bounding_box()
    assert box and box["width"] > 100 and box["height"] > 50
    fig.screenshot(path=str(shots / "train_figure.png"))


def _shutdown_kernels(lab):
    "Stop the kernels JupyterLab started for the notebooks opened so far (each open starts one)."
    import json
    base = f"{lab['url']}/api/sessions"
    with urllib.request.urlopen(f"{base}?token={lab['token']}", timeout=10) as r: sessions = json.load(r)
    for sess in sessions:
        req = urllib.request.Request(f"{base}/{sess['id']}?token={lab['token']}", method="DELETE")
        urllib.request.urlopen(req, timeout=10).close()


NOTEBOOKS = sorted(p.name for p in (ROOT / "nbs").glob("*.ipynb"))
RUN_ABOVE = {"07d_roi_widgets.ipynb", "12_train.ipynb"}   # run all by the tests above, which check what they show
assert len(NOTEBOOKS) > 25 and RUN_ABOVE <= set(NOTEBOOKS), NOTEBOOKS


@pytest.mark.parametrize("name", [n for n in NOTEBOOKS if n not in RUN_ABOVE])
def test_notebook_opens_and_runs_all_cells(page, lab, name):
    """Each notebook opens in JupyterLab (its cells render, no error dialog) and "Run All Cells" runs it top to bottom on
    the CPU in its small setting (IN_TEST, as under nbdev_test; `#| slow` and `#| cuda` cells run too): every code cell
    gets its execution number and no output is a traceback."""
    _open_and_run_all(page, lab, name, timeout_s=600)
    panel = page.locator(PANEL)
    assert page.locator(".jp-Dialog").filter(has_text=re.compile("Error|error|Failed|failed")).all_inner_texts() == []
    assert _errors(page) == []
    prompts = panel.locator(".jp-CodeCell .jp-InputArea-prompt").all_inner_texts()
    assert len(prompts) >= 1 and panel.locator(".jp-Cell").count() >= 3
    assert [p for p in prompts if not re.search(r"\[\d+\]", p)] == [], "cells that did not run"
