"""What `mrcnn_nb train` does when things go wrong: a run that diverges, a bad image in a worker, a bad validation
image, broken annotations, a resume on other data or with a changed learning rate, a folder that holds an old run;
and scripts, run in a subprocess, whose training with a worker fails or that end holding a training loader.
Each case runs the command in this process (`main`), on a small synthetic dataset, at one thread."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from mrcnn_nb.cli import main
from mrcnn_nb.shapes import make_shapes
from mrcnn_nb.train import load_checkpoint, model_from_checkpoint, read_metrics, weights_problem

SMALL = ["--batch", "2", "warmup_iters=1", "checkpoint_period=2"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes") / "s", n_train=8, n_val=4, seed=0, progress=False)


@pytest.fixture(autouse=True)
def one_thread():
    was = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(was)


def _train(capsys, *args):
    "(exit status, stdout, the command's own stderr lines -- without the progress bar's)."
    status = main(["train", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, [l for l in err.splitlines() if l.startswith("mrcnn_nb")]


def test_a_diverging_run_stops_in_one_line_and_never_checkpoints_it(root, tmp_path, capsys):
    out = tmp_path / "run"
    status, _, said = _train(capsys, "--data", root, "--out", out, "--iters", "6", "--val-split", "", *SMALL,
                             "base_lr=1e6")
    assert status == 1 and len(said) == 1 and said[0].startswith("mrcnn_nb train: stopped: iteration "), said
    assert "Traceback" not in "".join(said)
    if (out / "last.pth").exists():   # written before the weights blew up: it must be whole and sane
        assert weights_problem(model_from_checkpoint(out / "last.pth")[0]) is None


def test_resume_with_a_changed_learning_rate_after_divergence(root, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(capsys, "--data", root, "--out", out, "--iters", "4", "--val-split", "", *SMALL)[0] == 0
    status, _, said = _train(capsys, "--data", root, "--out", out, "--iters", "8", "--val-split", "", *SMALL,
                             "--resume", "--allow-changed", "base_lr", "base_lr=1e6")
    assert status == 1 and "The last good checkpoint is" in said[0] and "(iteration 4)" in said[0], said
    assert load_checkpoint(out / "last.pth")["iteration"] == 4
    status, _, said = _train(capsys, "--data", root, "--out", out, "--iters", "6", "--val-split", "", *SMALL,
                             "--resume", "base_lr=0.01")
    assert status == 2 and "--allow-changed base_lr" in said[0], said   # refused unless asked for
    status, _, said = _train(capsys, "--data", root, "--out", out, "--iters", "6", "--val-split", "", *SMALL,
                             "--resume", "--allow-changed", "base_lr", "base_lr=0.01")
    assert status == 0, said
    lrs = {r["iter"]: r["lr"] for r in read_metrics(out / "metrics.jsonl") if "lr" in r}
    assert lrs[6] == pytest.approx(0.01 * 2 / 16), lrs   # the new rate (scaled to 2 images per batch) from iteration 5


def test_a_checkpoint_of_a_diverged_run_is_refused_on_resume(root, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(capsys, "--data", root, "--out", out, "--iters", "2", "--val-split", "", *SMALL)[0] == 0
    ck = load_checkpoint(out / "last.pth")
    ck["model"]["rpn.head.conv.0.0.weight"].fill_(1.3e20)   # as an older version could leave one
    torch.save(ck, out / "last.pth")
    status, _, said = _train(capsys, "--data", root, "--out", out, "--iters", "4", "--val-split", "", *SMALL,
                             "--resume")
    assert status == 2 and "reaches 1.3e+20" in said[0] and "can not be resumed" in said[0], said


def _copy(root, tmp_path):
    "A copy of the dataset, to break."
    data = tmp_path / "data"
    shutil.copytree(root, data)
    return data


def test_a_bad_image_read_by_a_worker_is_one_line(root, tmp_path, capsys):
    data = _copy(root, tmp_path)
    victim = sorted((data / "train").iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:40])
    status, _, said = _train(capsys, "--data", data, "--out", tmp_path / "run", "--iters", "8", "--val-split", "",
                             "--workers", "1", *SMALL)
    assert status == 2 and len(said) == 1 and victim.name in said[0], said
    assert "Traceback" not in said[0] and "DataLoader worker" not in said[0]


def test_a_bad_validation_image_is_refused_before_training(root, tmp_path, capsys):
    data = _copy(root, tmp_path)
    victim = sorted((data / "val").iterdir())[1]
    victim.unlink()
    out = tmp_path / "run"
    status, _, said = _train(capsys, "--data", data, "--out", out, "--iters", "2", *SMALL)
    assert status == 2 and f"{victim}: image file not found" in said[0], said
    assert not (out / "last.pth").exists() and not (out / "metrics.jsonl").exists()   # no training happened


def test_broken_annotations_are_reported_at_the_start_and_the_cli_can_drop_bad_polygons(root, tmp_path, capsys):
    data = _copy(root, tmp_path)
    ann_file = data / "annotations" / "instances_train.json"
    ann = json.loads(ann_file.read_text())
    ann["annotations"][0]["bbox"][2] = -5.0                       # a negative width
    ann["annotations"][1]["segmentation"] = [[1, 1, 2, 2]]        # a polygon of two points
    ann_file.write_text(json.dumps(ann))
    status, _, said = _train(capsys, "--data", data, "--out", tmp_path / "a", "--iters", "1", "--val-split", "", *SMALL)
    assert status == 2 and "--bad-polygons drop" in said[0], said
    status, out, said = _train(capsys, "--data", data, "--out", tmp_path / "b", "--iters", "1", "--val-split", "",
                               "--bad-polygons", "drop", *SMALL)
    assert status == 0, said
    n = len(ann["annotations"])
    assert (f"{n - 2} of {n} annotations used; left out: 1 boxes of zero width or height, 1 broken polygons"
            in out.split("trained")[0]), out


def test_resume_on_other_data_and_a_new_run_into_an_old_folder_are_refused(root, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(capsys, "--data", root, "--out", out, "--iters", "2", "--val-split", "", *SMALL)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    status, _, said = _train(capsys, "--data", root, "--out", out, "--iters", "2", "--val-split", "", *SMALL)
    assert status == 2 and "already holds a run" in said[0], said
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before     # nothing of the old run touched
    other = _copy(root, tmp_path)
    ann_file = other / "annotations" / "instances_train.json"
    ann = json.loads(ann_file.read_text())
    ann["images"] = ann["images"][:-1]
    ann["annotations"] = [a for a in ann["annotations"] if a["image_id"] in {im["id"] for im in ann["images"]}]
    ann_file.write_text(json.dumps(ann))
    status, _, said = _train(capsys, "--data", other, "--out", out, "--iters", "4", "--val-split", "", *SMALL,
                             "--resume")
    assert status == 2 and "trained on" in said[0] and "--allow-changed data" in said[0], said
    moved = tmp_path / "moved"                                            # the same data elsewhere: the same run
    shutil.copytree(root, moved)
    assert _train(capsys, "--data", moved, "--out", out, "--iters", "3", "--val-split", "", *SMALL, "--resume")[0] == 0
    status, _, said = _train(capsys, "--data", other, "--out", out, "--iters", "4", "--val-split", "", *SMALL,
                             "--resume", "--allow-changed", "data")
    assert status == 0, said


def test_sigterm_checkpoints_the_step_and_resume_continues_exactly(root, tmp_path, capsys, monkeypatch):
    """A scheduler's SIGTERM during step 3: the run finishes the step, writes last.pth at iteration 3, exits 143 with
    what to do; the same command again (--auto-resume, as a requeued job runs it) ends with the same weights as a run
    never stopped."""
    import signal
    import mrcnn_nb.train as T
    common = ["--data", root, "--iters", "6", "--val-split", "", "--batch", "2", "warmup_iters=1",
              "checkpoint_period=100"]
    assert _train(capsys, *common, "--out", tmp_path / "whole")[0] == 0
    step = T.train_step
    def step_then_signal(run, images, targets, it):
        out = step(run, images, targets, it)
        if it == 2: os.kill(os.getpid(), signal.SIGTERM)   # during the third step, as a scheduler would
        return out
    monkeypatch.setattr(T, "train_step", step_then_signal)
    status, _, said = _train(capsys, *common, "--out", tmp_path / "cut", "--auto-resume")   # a first start
    monkeypatch.setattr(T, "train_step", step)
    assert status == 143 and "SIGTERM at iteration 3" in said[0] and "--resume" in said[0], said
    assert load_checkpoint(tmp_path / "cut" / "last.pth")["iteration"] == 3
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL   # put back after the run
    assert _train(capsys, *common, "--out", tmp_path / "cut", "--auto-resume")[0] == 0   # the restart continues
    whole, cut = (load_checkpoint(tmp_path / d / "model_final.pth")["model"] for d in ("whole", "cut"))
    assert all(torch.equal(whole[k], cut[k]) for k in whole)


def _run_script(script: str, root, tmp_path, timeout: int = 150):
    """Run `script` in a fresh Python, one thread, with the data `root` and a run folder as its arguments; fail the
    test if it has not exited in `timeout` s (a DataLoader worker left running makes Python's exit wait forever)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    try:
        return subprocess.run([sys.executable, "-c", script, str(root), str(tmp_path / "run")],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the script did not exit in {timeout} s: a DataLoader worker was left running")


UNCAUGHT_IN_A_WORKER_RUN = """
import sys
import mrcnn_nb.train as T
from mrcnn_nb.model import get_config
step = T.train_step
def failing(run, images, targets, it):
    if it == 2: raise RuntimeError("planted error at iteration 3")
    return step(run, images, targets, it)
T.train_step = failing
cfg = get_config("TINY_FPN", ims_per_batch=2, warmup_iters=1, max_iter=6)
try:
    T.train(cfg, sys.argv[1], val_split=None, out_dir=sys.argv[2], num_workers=1, progress=False)
except RuntimeError as error:   # kept, with its traceback, as a notebook keeps the last error
    import multiprocessing
    print("workers alive after the error:", len(multiprocessing.active_children()), flush=True)
    raise
"""


def test_a_script_whose_training_fails_with_workers_exits(root, tmp_path):
    """A script whose `train(..., num_workers=1)` raises an error: the worker is stopped by the time the error reaches
    the caller, although its traceback still holds the loop's batch iterator (a notebook keeps it for as long as it
    runs), and Python then prints the error and exits. The worker ignores SIGTERM, so Python's exit, which signals
    and then waits for the workers still running, would wait forever if neither `fit` nor the exit hook stopped it."""
    done = _run_script(UNCAUGHT_IN_A_WORKER_RUN, root, tmp_path)
    assert done.returncode == 1 and "RuntimeError: planted error at iteration 3" in done.stderr, done.stderr[-2000:]
    assert done.stdout.strip() == "workers alive after the error: 0", done.stdout


HOLDS_A_LOADER_AT_EXIT = """
import sys
import mrcnn_nb.train as T
from mrcnn_nb.model import get_config
cfg = get_config("TINY_FPN", ims_per_batch=2, warmup_iters=1, max_iter=6)
run = T.prepare_run(cfg, sys.argv[1], val_split=None, out_dir=sys.argv[2])
batches = iter(T.training_loader(run, num_workers=1))   # a script's own loop, left alive when the script ends
print(len(next(batches)[0]), "images")
"""


def test_a_script_that_holds_a_training_loader_at_exit_exits(root, tmp_path):
    """A script that ends while it still holds an iterator of `training_loader(run, 1)` (its own loop, no `fit`):
    Python's exit signals the worker, which ignores SIGTERM, then waits for it; the loader's exit hook must stop it."""
    done = _run_script(HOLDS_A_LOADER_AT_EXIT, root, tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "2 images", (done.stdout, done.stderr[-2000:])
