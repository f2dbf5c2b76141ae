"""Every notebook from 15_cli on (the command line, own data, COCO, the ablations, the benchmarks, the index) opens in
JupyterLab (headless Chromium) and runs all its cells. A file of its own so that it runs beside `test_browser.py` on
pytest's other worker; the fixtures are in `browser_lab.py`."""
import pytest

from browser_lab import MISSING

if MISSING: pytest.skip(MISSING, allow_module_level=True)

from browser_lab import FIRST_APPLICATION, NOTEBOOKS, browser, lab, one_kernel_at_a_time, page, runs_all_cells  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("one_kernel_at_a_time")]


@pytest.mark.parametrize("name", [n for n in NOTEBOOKS if n >= FIRST_APPLICATION])
def test_notebook_opens_and_runs_all_cells(page, lab, name):
    runs_all_cells(page, lab, name)
