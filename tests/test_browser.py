"""What a reader sees in JupyterLab (headless Chromium): the RoI explorer answers a slider, the training notebook shows
its log and figures, and every component notebook (00-14) runs all its cells. The fixtures are in `browser_lab.py`;
the notebooks from 15_cli on are in `test_browser_notebooks.py`."""
import re

import pytest

from browser_lab import MISSING

if MISSING: pytest.skip(MISSING, allow_module_level=True)

from browser_lab import (FIRST_APPLICATION, NOTEBOOKS, WIDGET_AND_TRAINING, browser, errors_shown, expect,  # noqa: F401
                         lab, one_kernel_at_a_time, open_and_run_all, page, runs_all_cells, shots)

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("one_kernel_at_a_time")]


def test_roi_explorer_responds_to_a_slider(page, lab, shots):
    open_and_run_all(page, lab, "07d_roi_widgets.ipynb", timeout_s=240)
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
    assert errors_shown(page) == []                                # (checked last: the notebook's own tests also move sliders)


def test_training_notebook_shows_its_log_and_figures(page, lab, shots):
    "12_train logs its run as text (a saved notebook would keep a progress widget frozen at 0 %) and draws figures."
    open_and_run_all(page, lab, "12_train.ipynb", timeout_s=480)
    assert errors_shown(page) == []
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


@pytest.mark.parametrize("name", [n for n in NOTEBOOKS if n < FIRST_APPLICATION and n not in WIDGET_AND_TRAINING])
def test_notebook_opens_and_runs_all_cells(page, lab, name):
    runs_all_cells(page, lab, name)
