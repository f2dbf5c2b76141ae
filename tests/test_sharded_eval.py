"""Evaluation under torchrun: two processes share the inference and rank 0 evaluates; the metrics equal one
process's, and an error on one rank ends every rank at once, with its message."""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mrcnn_nb.data import COCODataset
from mrcnn_nb.evaluate import evaluate
from mrcnn_nb.shapes import make_shapes
from mrcnn_nb.train import demo_checkpoint, model_from_checkpoint

HERE = Path(__file__).parent


def _torchrun(root, out, mode):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = dict(__import__("os").environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    t0 = time.time()
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(HERE / "eval_worker.py"), str(root),
                        str(out), mode], env=env, capture_output=True, text=True, timeout=300)
    return r, time.time() - t0


@pytest.fixture(scope="module")
def val_root(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("s") / "s", n_train=0, n_val=9, seed=1, progress=False)


def test_two_processes_give_the_metrics_of_one(val_root, tmp_path):
    r, _ = _torchrun(val_root, tmp_path, "ok")
    assert r.returncode == 0, r.stderr[-3000:]
    # both left the gloo group before exit: a group left to the interpreter's clean-up aborts now and then
    assert [(tmp_path / f"group_at_exit_{k}").read_text() for k in (0, 1)] == ["False", "False"]
    torch.set_num_threads(1)
    one = evaluate(model_from_checkpoint(demo_checkpoint())[0].eval(), COCODataset(val_root, "val"), progress=False)
    two = json.loads((tmp_path / "metrics.json").read_text())
    for m in (one["metrics"], two):   # pycocotools' printed summary holds its timings; every number is compared
        for t in m.values(): t.pop("summary")
    assert two == json.loads(json.dumps(one["metrics"]))   # 9 images, batches of 2: rank 0 has 3 batches, rank 1 two
    assert one["metrics"]["segm"]["stats"]["AP"] > 0.3   # a trained model: the comparison is between real detections


def test_an_error_on_rank_1_ends_both_processes_with_its_message(val_root, tmp_path):
    r, seconds = _torchrun(val_root, tmp_path, "fail-on-rank-1")
    assert r.returncode != 0
    assert "evaluation failed on rank 1: planted: cannot read item" in r.stderr, r.stderr[-3000:]
    assert not (tmp_path / "metrics.json").exists()


def test_torchrun_training_evaluates_on_every_process(val_root, tmp_path):
    """Training under torchrun with a periodic evaluation and validation loss: both processes predict, rank 0 logs; the
    logged final metrics equal a one-process evaluation of the checkpoint the run wrote. (The validation loss sums its
    normalizers over the processes: computed on rank 0 alone, the run hung until the process group's timeout.)"""
    root = make_shapes(tmp_path / "s", n_train=8, n_val=5, seed=2, progress=False)
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = dict(__import__("os").environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(HERE / "train_eval_worker.py"),
                        str(root), str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    logged = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in logged if "bbox_AP" in e]
    assert [e["iter"] for e in evals] == [2, 4]
    assert all(e["val_loss"] > 0 for e in evals)
    torch.set_num_threads(1)
    model = model_from_checkpoint(tmp_path / "run" / "model_final.pth")[0].eval()
    one = evaluate(model, COCODataset(root, "val"), progress=False)["metrics"]
    assert {f"{t}_{k}": v for t, m in one.items() for k, v in m["stats"].items()} == \
        {k: v for k, v in evals[-1].items() if k != "iter" and not k.startswith("val_")}
