"""Training beside other busy processes: `train` gives torch the cores the others leave free (`ShareCores`, 00_core) --
four threads on two cores made two runs side by side several times slower than their fair share -- unless the user
fixed the thread count (`OMP_NUM_THREADS`, `mrcnn_nb train --threads`), and gives the threads back at the end."""
import json
import os
import subprocess
import sys

import pytest
import torch

from mrcnn_nb.model import get_config
from mrcnn_nb.train import train


@pytest.fixture
def busy_process():
    "A process that keeps one core busy while the test runs."
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield hog
    hog.kill()
    hog.wait()


def _short_training(root, out, iters=40, **kw):
    cfg = get_config("TINY_FPN", ims_per_batch=1, max_iter=iters, warmup_iters=1, checkpoint_period=1000)
    return train(cfg, root, val_split=None, out_dir=out, progress=False, **kw)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="ShareCores measures the machine's load in /proc/stat")
def test_a_run_beside_a_busy_process_gives_up_a_thread_and_takes_it_back_at_the_end(
        shapes_root, tmp_path, busy_process, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)   # as on a 2-core machine, whatever this one has
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        s = _short_training(shapes_root, tmp_path / "run", share_cores=True)
        threads_after = torch.get_num_threads()
    finally: torch.set_num_threads(old)
    if s["train_seconds"] < 1.2: pytest.skip(f"40 iterations took {s['train_seconds']:.2f} s: too short for a look")
    assert s["thread_changes"] and s["thread_changes"][0]["threads"] == 1, s["thread_changes"]
    assert s["thread_changes"][0]["elsewhere"] >= 0.7
    assert threads_after == 2   # given back


def test_a_thread_count_the_user_fixed_is_kept(shapes_root, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert _short_training(shapes_root, tmp_path / "fixed", iters=2)["thread_changes"] is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert isinstance(_short_training(shapes_root, tmp_path / "shared", iters=2)["thread_changes"], list)   # shared
    assert _short_training(shapes_root, tmp_path / "off", iters=2, share_cores=False)["thread_changes"] is None


def test_the_command_with_threads_fixes_them(shapes_root, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")}
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-c", "import sys; from mrcnn_nb.cli import main; sys.exit(main())", "train",
                        "--data", str(shapes_root), "--val-split", "", "--iters", "2", "--threads", "1", "--out",
                        str(out), "checkpoint_period=1000", "ims_per_batch=1"], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["thread_changes"] is None and summary["machine"]["torch_threads"] == 1


def test_the_contention_benchmark_writes_its_record(tmp_path):
    "`mrcnn_nb bench contention --quick`: every scenario in both modes, each training in a fresh process, the record."
    out = tmp_path / "contention.json"
    r = subprocess.run([sys.executable, "-c", "import sys; from mrcnn_nb.cli import main; sys.exit(main())", "bench",
                        "contention", "--quick", "--out", str(out), "--work", str(tmp_path / "work")],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads(out.read_text())
    assert [(row["mode"], row["scenario"], len(row["s_per_it"])) for row in rec["rows"]] == [
        (m, s, n) for m in ("fixed", "shared") for s, n in (("alone", 1), ("two at once", 2), ("beside a busy process", 1))]
    assert all(x > 0 for row in rec["rows"] for x in row["x_alone"]) and rec["iters"] == 3
    assert "| two at once |" in r.stdout
