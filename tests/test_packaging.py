"""What a user gets from `pip install`: build the sdist and the wheel with `python -m build`, install the wheel into a
clean virtual environment, and use it.

The fresh environment borrows its dependencies from the one running the tests (a `.pth` line naming our site-packages)
rather than installing a second copy of torch: that copy is ~6 GB, and CI machines run out of disk for it. The wheel
itself goes in with pip as a user's would, and `pip check` asserts that what the wheel declares it needs is met."""
import configparser
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.packaging


def _version() -> str:
    cfg = configparser.ConfigParser(delimiters=["="]); cfg.read(ROOT / "settings.ini")
    return cfg["DEFAULT"]["version"]


def _run(*cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)
    assert r.returncode == 0, f"{cmd}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", out, ROOT)   # the wheel is built from the sdist
    return out


def test_wheel_and_sdist_carry_the_library_only(dist):
    v = _version()
    whl, sdist = dist / f"mrcnn_nb-{v}-py3-none-any.whl", dist / f"mrcnn_nb-{v}.tar.gz"
    assert whl.exists() and sdist.exists(), sorted(p.name for p in dist.iterdir())
    names = zipfile.ZipFile(whl).namelist()
    assert {n.split("/")[0] for n in names} == {"mrcnn_nb", f"mrcnn_nb-{v}.dist-info"}, names
    assert not [n for n in names if n.endswith((".ipynb", ".json", ".png", ".jpg", ".pth"))], "notebooks, results or weights in the wheel"
    lib = sorted(p.name for p in (ROOT / "mrcnn_nb").glob("*.py"))
    assert sorted(n.split("/")[1] for n in names if n.startswith("mrcnn_nb/")) == lib
    assert whl.stat().st_size < 1_000_000 and sdist.stat().st_size < 1_000_000
    members = tarfile.open(sdist).getnames()
    assert f"mrcnn_nb-{v}/settings.ini" in members          # setup.py reads it: the sdist must build
    assert not [m for m in members if "/nbs/" in m or m.endswith(".ipynb")]


def test_installed_wheel_works_in_a_clean_environment(dist, tmp_path):
    v = _version()
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)   # pip (and setuptools, which torch pins) come from ours
    py, exe = venv / "bin" / "python", venv / "bin" / "mrcnn_nb"
    site = Path(_run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    paths = sysconfig.get_paths()
    ours = {paths["purelib"], paths["platlib"]}
    (site / "_test_env_dependencies.pth").write_text("".join(f"{d}\n" for d in sorted(ours)))   # appended after site
    _run(py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall", dist / f"mrcnn_nb-{v}-py3-none-any.whl")
    _run(py, "-m", "pip", "check")          # the wheel's Requires-Dist is met (it fails naming the package if not)
    assert any(p.name == f"mrcnn_nb-{v}.dist-info" for p in site.iterdir())
    r = _run(py, "-c", "import mrcnn_nb, mrcnn_nb.ablations as a; print(mrcnn_nb.__version__, mrcnn_nb.__file__, a.default_store())",
             cwd=tmp_path, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    version, location, store = r.stdout.split()
    assert version == v and location.startswith(str(site)) and store == str(tmp_path / ".cache" / "mrcnn_nb" / "ablations")
    assert "train" in _run(exe, "--help").stdout
    assert _run(exe, "--version").stdout.strip() == f"mrcnn_nb {v}"
    _run(exe, "shapes", tmp_path / "shapes", "--n-train", "2", "--n-val", "2", "--quiet", cwd=tmp_path)
    assert len(list((tmp_path / "shapes" / "train").glob("*.png"))) == 2
    assert "TINY_FPN" in _run(exe, "configs").stdout


def test_importing_the_model_imports_neither_plotting_nor_torchvision():
    "The model, its layers and the config import fast: no matplotlib (figures import it where they draw), no torchvision."
    import subprocess, sys
    code = "import sys, mrcnn_nb.model, mrcnn_nb.train; bad = {'matplotlib', 'torchvision'} & set(sys.modules); assert not bad, bad"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-500:]
