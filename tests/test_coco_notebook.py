"""20_coco_training with MRCNN_NB_COCO pointing at something that is not a COCO 2017 root stops at once, naming
what is missing (it used to fall back to the synthetic stand-in without a word)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

NB = Path(__file__).parents[1] / "nbs" / "20_coco_training.ipynb"


def _run_notebook(coco: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MRCNN_NB_COCO=coco, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    nbdev_test = Path(sys.executable).parent / "nbdev_test"
    return subprocess.run([str(nbdev_test), "--path", str(NB)], env=env, capture_output=True, text=True, timeout=600,
                          cwd=NB.parents[1])


def test_a_path_that_does_not_exist_stops_the_notebook(tmp_path):
    r = _run_notebook(str(tmp_path / "nonexistent"))
    assert r.returncode != 0
    assert f"{tmp_path / 'nonexistent'}: dataset root not found" in r.stdout + r.stderr, (r.stdout + r.stderr)[-2000:]


def test_a_root_without_its_image_folder_names_the_folder(tmp_path):
    (tmp_path / "annotations").mkdir()
    for split in ("train2017", "val2017"): (tmp_path / "annotations" / f"instances_{split}.json").write_text("{}")
    r = _run_notebook(str(tmp_path))
    assert r.returncode != 0
    assert f"image folder {tmp_path / 'train2017'} not found" in r.stdout + r.stderr, (r.stdout + r.stderr)[-2000:]
