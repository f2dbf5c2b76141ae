"""Training: torchrun data parallel against one process, checkpoints surviving a kill, bad input mid-run, CLI errors."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mrcnn_nb.core import UserInputError
from mrcnn_nb.model import get_config
from mrcnn_nb.shapes import make_shapes
from mrcnn_nb.train import load_checkpoint, train

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes") / "s", n_train=8, n_val=4, seed=0, progress=False)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None); env.pop("RANK", None)
    return env


@pytest.mark.parametrize("heads_iters", [0, 2])
def test_torchrun_two_processes_match_one(small_root, tmp_path, heads_iters):
    """Two processes train as one does; with a heads-first phase (2 iterations of 3) too, where the model is wrapped
    again when the phase ends: without that, the trunk's gradients of the last iteration are not averaged."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    two, one = tmp_path / "two", tmp_path / "one"
    worker = [str(HERE / "ddp_worker.py"), str(small_root)]
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", *worker, str(two), str(heads_iters)],
                       env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = subprocess.run([sys.executable, *worker, str(one), str(heads_iters)], env=_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    w0, w1, w = (torch.load(p, weights_only=True) for p in (two / "rank0.pt", two / "rank1.pt", one / "rank0.pt"))
    for k in w:
        assert torch.equal(w0[k], w1[k]), f"ranks disagree on {k}"
        if w[k].is_floating_point():   # same global batches, split-independent losses: the 1-process result, to rounding
            torch.testing.assert_close(w0[k], w[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
    assert len([l for l in (two / "metrics.jsonl").read_text().splitlines() if l]) == 3   # rank 0 alone writes the log


def test_kill_during_checkpointing_leaves_a_loadable_checkpoint(small_root, tmp_path):
    code = ("from mrcnn_nb.model import get_config; from mrcnn_nb.train import train; import sys; "
            "train(get_config('TINY_FPN', ims_per_batch=2, max_iter=10_000, warmup_iters=1, checkpoint_period=1), "
            f"{str(small_root)!r}, val_split=None, out_dir=sys.argv[1], progress=False)")
    for delay in (0.05, 0.3, 0.7):
        out = tmp_path / f"run{delay}"
        p = subprocess.Popen([sys.executable, "-c", code, str(out)], env=_env())
        try:
            t0 = time.time()
            while not (out / "last.pth").exists():
                assert p.poll() is None and time.time() - t0 < 300, "training did not start"
                time.sleep(0.05)
            time.sleep(delay)          # checkpoints are being written every iteration now
            p.send_signal(signal.SIGKILL)
        finally:
            p.wait()
        ck = load_checkpoint(out / "last.pth")
        assert ck["iteration"] >= 1 and "optimizer" in ck


def test_bad_image_mid_run_stops_or_skips(small_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(small_root, root)
    victim = sorted((root / "train").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:40])      # truncated PNG
    cfg = get_config("TINY_FPN", ims_per_batch=2, max_iter=8, warmup_iters=1, checkpoint_period=100)
    with pytest.raises(UserInputError, match=victim.name):
        train(cfg, root, val_split=None, out_dir=tmp_path / "stop", progress=False)
    s = train(cfg, root, val_split=None, out_dir=tmp_path / "skip", progress=False, on_bad_image="skip")
    # 8 iterations of 2 images: two passes over the 8 images, so the bad one is met twice, and counted once
    assert s["iterations"] == 8 and len(s["skipped_images"]) == 1 and victim.name in s["skipped_images"][0]
    victim.unlink()                                    # missing file: the same
    with pytest.raises(UserInputError, match=victim.name):
        train(cfg, root, val_split=None, out_dir=tmp_path / "stop2", progress=False)


_RESUMABLE = ("import sys; from mrcnn_nb.model import get_config; from mrcnn_nb.train import train; "
              "train(get_config('TINY_FPN', ims_per_batch=1, max_iter=12, warmup_iters=1, checkpoint_period=1, eval_period=4), "
              "sys.argv[1], out_dir=sys.argv[2], progress=False, log_period=5, on_bad_image='skip', "
              "resume=sys.argv[3] == 'resume')")


def _lines(out):
    "metrics.jsonl without the wall-clock times."
    return [{k: v for k, v in json.loads(l).items() if k not in ("time", "data_time")}
            for l in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("bad_image", [False, True])
def test_kill_9_and_resume_in_a_fresh_process_is_bitwise_exact(small_root, tmp_path, bad_image):
    """An uninterrupted run against one killed (SIGKILL) after iteration 8 and resumed in a new process: identical final
    weights and metrics.jsonl (with the evaluations on the validation split at 4, 8 and the end) (a log line's window spans the kill), with and without a batch skipped for a bad image
    before the kill (one image per batch, so a bad image is a whole batch)."""
    root = tmp_path / "data"
    shutil.copytree(small_root, root)
    if bad_image:
        for victim in sorted((root / "train").iterdir())[:1]: victim.write_bytes(b"not an image")
    run = lambda out, mode: subprocess.run([sys.executable, "-c", _RESUMABLE, str(root), str(out), mode], env=_env(),
                                           capture_output=True, text=True, timeout=600)
    r = run(tmp_path / "straight", "new")
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-c", _RESUMABLE, str(root), str(out), "new"], env=_env())
    try:
        t0 = time.time()
        while not ((out / "last.pth").exists() and load_checkpoint(out / "last.pth")["iteration"] >= 8):
            assert p.poll() is None and time.time() - t0 < 300, "the run ended before it could be killed"
            time.sleep(0.01)
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait()
    assert load_checkpoint(out / "last.pth")["iteration"] < 12, "killed too late to test a resume"
    r = run(out, "resume")
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = (load_checkpoint(d / "model_final.pth")["model"] for d in (tmp_path / "straight", out))
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run's"
    assert "bbox_AP" in _lines(out)[-1], "the final COCO evaluation is in the log"
    assert _lines(tmp_path / "straight") == _lines(out)   # losses, learning rates and the final COCO metrics


def _cli(*args, env=None):
    exe = shutil.which("mrcnn_nb") or str(Path(sys.executable).parent / "mrcnn_nb")
    return subprocess.run([exe, *args], capture_output=True, text=True, env=env or _env(), timeout=300)


def test_cli_refuses_unknown_configs_keys_and_paths(small_root, tmp_path):
    r = _cli("train", "--config", "R_51_FPN", "--out", str(tmp_path / "x"), env=dict(_env(), MRCNN_NB_CACHE=str(tmp_path / "cache")))
    assert r.returncode == 2 and "choose from" in r.stderr and "TINY_FPN" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "cache").exists()   # refused before the synthetic data is generated
    r = _cli("train", "--data", str(small_root), "--out", str(tmp_path / "x"), "lr=0.1")
    assert r.returncode == 2 and "valid keys" in r.stderr and "base_lr" in r.stderr
    r = _cli("train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "nowhere" in r.stderr and "Traceback" not in r.stderr
    r = _cli("train", "--data", str(small_root), "--train-split", "training", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "training" in r.stderr
    r = _cli("train", "--data", str(small_root), "--out", str(tmp_path / "x"), "--resume")
    assert r.returncode == 2 and "no checkpoint to resume" in r.stderr
    r = _cli("eval", "--checkpoint", str(tmp_path / "none.pth"), "--data", str(small_root), "--split", "val")
    assert r.returncode == 2 and "none.pth" in r.stderr


def test_keypoint_training_and_cli_eval(tmp_path):
    root = make_shapes(tmp_path / "kp", kind="keypoints", n_train=6, n_val=3, seed=0, progress=False)
    cfg = get_config("TINY_KP_FPN", ims_per_batch=2, max_iter=3, warmup_iters=1, checkpoint_period=100)
    s = train(cfg, root, kind="keypoints", out_dir=tmp_path / "run", progress=False)
    assert set(s["evaluation"]["metrics"]) == {"bbox", "segm", "keypoints"}
    r = _cli("eval", "--checkpoint", str(tmp_path / "run" / "model_final.pth"), "--data", str(root), "--split", "val")
    assert r.returncode == 0 and "keypoints" in r.stdout, r.stderr[-2000:]


def test_one_training_run_reads_each_annotation_file_once(small_root, tmp_path, monkeypatch, capsys):
    "`mrcnn_nb train --data`: the train and val annotation files are each parsed once (COCO's train file is ~450 MB)."
    import collections
    from mrcnn_nb import data
    from mrcnn_nb.cli import main
    reads, real = collections.Counter(), data.load_coco_json
    monkeypatch.setattr(data, "load_coco_json", lambda path: reads.update([Path(path).name]) or real(path))
    assert main(["train", "--data", str(small_root), "--iters", "2", "--batch", "2", "--out", str(tmp_path / "run"),
                 "warmup_iters=1"]) == 0
    assert reads == {"instances_train.json": 1, "instances_val.json": 1}, reads
    assert (tmp_path / "run" / "predictions.png").exists()   # drawn from the model and validation set in memory


def test_sigterm_to_the_whole_job_with_data_workers_still_checkpoints(small_root, tmp_path):
    """A scheduler signals every process of a job, data-loading workers included (Slurm does): the workers must not
    die of it, or the main process stops with a DataLoader error before it saves. The run exits 143 with last.pth."""
    out = tmp_path / "run"
    exe = str(Path(sys.executable).parent / "mrcnn_nb")
    # the preset's warmup: without it TINY_FPN's learning rate can make the weights diverge, and the run stop on its
    # own, before the signal comes
    p = subprocess.Popen([exe, "train", "--data", str(small_root), "--out", str(out), "--iters", "2000",
                          "--val-split", "", "--batch", "2", "--workers", "2", "checkpoint_period=5000"],
                         env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        t0 = time.time()
        while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().strip()):
            assert p.poll() is None and time.time() - t0 < 300, "training did not start: " + p.stderr.read()[-2000:]
            time.sleep(0.1)
        os.killpg(p.pid, signal.SIGTERM)   # the main process and its two workers, as one job
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None: os.killpg(p.pid, signal.SIGKILL)
    said = [l for l in err.splitlines() if l.startswith("mrcnn_nb")]
    assert p.returncode == 143 and said and "stopped by SIGTERM at iteration" in said[0], err[-3000:]
    assert load_checkpoint(out / "last.pth")["iteration"] >= 20
