"""The COCO recipe's loud failures and its dry run: a frozen-BN preset without weights is refused at once;
--dry-run on a COCO-layout root (train2017/val2017) reads, decodes, runs 2 iterations, evaluates and projects, and
writes nothing; --from-scratch lets the frozen-BN preset run."""
import contextlib
import io
import shutil
import time

import pytest
import torch

from mrcnn_nb.cli import main
from mrcnn_nb.shapes import make_shapes


def _run(*argv) -> tuple:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def coco_like(tmp_path_factory):
    "The synthetic shapes in COCO's own split names: train2017, val2017."
    root = make_shapes(tmp_path_factory.mktemp("c") / "coco", n_train=6, n_val=4, seed=0, progress=False)
    for split in ("train", "val"):
        (root / split).rename(root / f"{split}2017")
        (root / "annotations" / f"instances_{split}.json").rename(root / "annotations" / f"instances_{split}2017.json")
    return root


def test_a_frozen_bn_preset_without_weights_is_refused_before_reading_data(tmp_path):
    status, out, err = _run("train", "--config", "R_50_FPN", "--data", tmp_path / "does_not_exist", "--out",
                            tmp_path / "run")
    lines = [l for l in err.splitlines() if l.startswith("mrcnn_nb")]
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "R_50_FPN freezes its BatchNorm statistics and its stem" in lines[0] and "--from-scratch" in lines[0]


def test_dry_run_on_a_coco_layout_writes_nothing(coco_like, tmp_path):
    torch.set_num_threads(1)
    out_dir = tmp_path / "run"
    status, out, err = _run("train", "--data", coco_like, "--out", out_dir, "--dry-run")
    assert status == 0, err
    assert "dry run of TINY_FPN on cpu x 1: 6 training and 4 validation images" in out, out
    assert "opened all 6 training image files" in out and "decoded 6 of them" in out and "2 iterations in " in out, out
    assert "evaluated 4 validation images" in out and "projected: 3,000 iterations" in out, out
    assert not out_dir.exists()


def test_from_scratch_lets_a_frozen_bn_preset_run(coco_like, tmp_path):
    torch.set_num_threads(1)
    status, out, err = _run("train", "--config", "R_50_FPN", "--data", coco_like, "--out", tmp_path / "run",
                            "--batch", "2", "min_size=(96,)", "max_size=128", "--from-scratch", "--dry-run")
    assert status == 0, err
    assert "dry run of R_50_FPN" in out and "projected:" in out, out


def test_the_dry_run_finds_a_missing_training_image_before_any_training(coco_like, tmp_path):
    """Every training image file is opened, not only the decoded sample (none here): one gone is named at once, not
    when the run meets it hours in."""
    from mrcnn_nb.core import UserInputError
    from mrcnn_nb.model import get_config
    from mrcnn_nb.train import dry_run
    root = tmp_path / "coco"
    shutil.copytree(coco_like, root)
    gone = sorted((root / "train2017").iterdir())[-1]
    gone.unlink()
    with pytest.raises(UserInputError, match="1 of the 6 images of split 'train2017'") as e:
        dry_run(get_config("TINY_FPN"), root, "train2017", "val2017", sample_images=0, adapt=["num_classes"])
    assert gone.name in str(e.value)
