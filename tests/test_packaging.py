"""What a user gets from `pip install`: build the sdist and the wheel with `python -m build`, install the wheel into a
clean virtual environment (its dependencies from the package index), and use it."""
import configparser
import shutil
import subprocess
import sys
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
    try:
        _run(sys.executable, "-m", "venv", venv)
        py, exe = venv / "bin" / "python", venv / "bin" / "mrcnn_nb"
        _run(py, "-m", "pip", "install", "-q", dist / f"mrcnn_nb-{v}-py3-none-any.whl")
        r = _run(py, "-c", "import mrcnn_nb, mrcnn_nb.ablations as a; print(mrcnn_nb.__version__, mrcnn_nb.__file__, a.default_store())",
                 cwd=tmp_path, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
        version, location, store = r.stdout.split()
        assert version == v and str(venv) in location and store == str(tmp_path / ".cache" / "mrcnn_nb" / "ablations")
        assert "train" in _run(exe, "--help").stdout
        assert _run(exe, "--version").stdout.strip() == f"mrcnn_nb {v}"
        _run(exe, "shapes", tmp_path / "shapes", "--n-train", "2", "--n-val", "2", "--quiet", cwd=tmp_path)
        assert len(list((tmp_path / "shapes" / "train").glob("*.png"))) == 2
        assert "TINY_FPN" in _run(exe, "configs").stdout
    finally:
        shutil.rmtree(venv, ignore_errors=True)   # ~6 GB of torch
