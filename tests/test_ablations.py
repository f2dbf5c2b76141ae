"""The ablation results store (nbs/results/ablations) and `mrcnn_nb ablate`.

The store is committed: every record in it must be a complete, current run of the protocol made
by committed code, so that the notebooks 21-27 and the README render real, reproducible numbers."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mrcnn_nb.ablations import (SEEDS, TABLES, VARIANTS, ablation_config, config_dict, default_store, load_runs, missing_runs,
                                results_markdown, run_path)
from mrcnn_nb.evaluate import STAT_NAMES

STORE = Path(__file__).resolve().parent.parent / "nbs" / "results" / "ablations"
RECORDS = sorted(STORE.glob("*/seed*.json"))


def test_default_store_is_the_repository_store(monkeypatch):
    monkeypatch.delenv("MRCNN_NB_ABLATIONS", raising=False)
    assert default_store() == STORE


@pytest.mark.parametrize("path", RECORDS, ids=[f"{p.parent.name}/{p.stem}" for p in RECORDS])
def test_every_stored_run_is_complete_and_current(path):
    rec = json.loads(path.read_text())
    assert rec["variant"] == path.parent.name and path.name == f"seed{rec['seed']}.json"
    assert rec["variant"] in VARIANTS, f"{path}: no such variant"
    assert not rec["smoke"], f"{path}: a smoke run in the committed store"
    assert rec["config"] == config_dict(ablation_config(rec["variant"], rec["seed"])), \
        f"{path}: trained under another protocol (stale): rerun it with mrcnn_nb ablate"
    cfg = rec["config"]
    types = {"bbox"} | ({"segm"} if cfg["mask"] else set()) | ({"keypoints"} if cfg["keypoints"] else set())
    assert set(rec["metrics"]) == types == set(rec["per_threshold"])
    for t in types:
        assert list(rec["metrics"][t]) == STAT_NAMES[t]
        assert all(-1 <= v <= 1 for v in rec["metrics"][t].values())
        assert len(rec["per_threshold"][t]["AP"]) == 10
    assert rec["iterations"] == cfg["max_iter"] and rec["train_seconds"] > 0
    assert rec["code"].get("commit") and rec["code"].get("dirty") is False, f"{path}: not made by committed code"
    assert {"cpu", "cores", "torch_threads", "torch"} <= set(rec["machine"])


def test_the_store_has_no_stale_or_stray_files():
    for v in VARIANTS:
        assert load_runs(v, STORE)[1] == [], v
    stray = [p for p in STORE.rglob("*") if p.is_file() and (p.parent.parent != STORE or p.parent.name not in VARIANTS
                                                              or not p.name.startswith("seed") or p.suffix != ".json")]
    assert stray == []


def test_missing_runs_counts_what_the_store_lacks():
    have = {(p.parent.name, int(p.stem[4:])) for p in RECORDS}
    todo = set(missing_runs(list(TABLES), SEEDS, STORE))
    assert todo == {(v, s) for v in VARIANTS for s in SEEDS} - have


def test_the_store_holds_every_seed_of_every_variant():
    """Every variant of every table has a current run for each of the protocol's (at least three) seeds, so the
    notebooks and the README report mean and spread, never one run; a new or changed variant lands with its runs."""
    assert len(SEEDS) >= 3
    assert missing_runs(list(TABLES), SEEDS, STORE) == [], "run them with: mrcnn_nb ablate --table all --seeds 3 --jobs 2"


def _mrcnn_nb(*args, env=None):
    exe = str(Path(sys.executable).parent / "mrcnn_nb")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=600, env=env)


def test_cli_smoke_runs_a_table_without_touching_the_store(tmp_path):
    before = {p: p.read_bytes() for p in RECORDS}
    env = dict(os.environ, MRCNN_NB_CACHE=str(tmp_path / "cache"))
    r = _mrcnn_nb("ablate", "--table", "6", "--smoke", "--seeds", "1", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "kp_kp_roipool seed 0" in r.stdout and "kp_kp seed 0" in r.stdout
    assert {p: p.read_bytes() for p in STORE.glob("*/seed*.json")} == before


def test_cli_list_and_errors(tmp_path):
    r = _mrcnn_nb("ablate", "--table", "2c", "2d", "--list", "--store", str(tmp_path))
    assert r.returncode == 0 and "21 run(s) missing for seeds [0, 1, 2]" in r.stdout, r.stdout
    r = _mrcnn_nb("ablate", "--table", "2z", "--list")
    assert r.returncode == 2 and "unknown table '2z'" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "c5").mkdir(); (tmp_path / "c5" / "seed0.json").write_text("{oops")
    r = _mrcnn_nb("ablate", "--table", "2d", "--list", "--store", str(tmp_path))
    assert r.returncode == 2 and "seed0.json" in r.stderr


def test_readme_results_match_the_store():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    shown = readme.split("<!-- results:start -->")[1].split("<!-- results:end -->")[0].strip()
    assert shown == results_markdown(STORE).replace("](", "](nbs/").strip(), "run python .ci/results.py"
