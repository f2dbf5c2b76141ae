"""The README's main-job figures (with the other runs of its training and where its steps' time goes), speed,
bf16-accuracy, bf16-training, contention and Winograd figures are drawn from the committed result files, never typed:
the README shows exactly what `main_job_markdown`, `main_job_spread_markdown`, `main_job_steps_markdown`,
`speed_markdown`, `amp_markdown`, `amp_training_markdown`, `contention_markdown` and `winograd_markdown` make of them,
and the files hold what those figures need."""
import json
import re
from pathlib import Path

from mrcnn_nb.bench import (
    amp_file, amp_markdown, amp_training_dir, amp_training_markdown, contention_file, contention_markdown,
    load_amp_training, speed_file, speed_markdown, winograd_file, winograd_markdown, main_job_steps_file,
    main_job_steps_markdown, CONTENTION_SCENARIOS, MAIN_JOB_STATES, WINOGRAD_CASES)
from mrcnn_nb.cli import main_job_file, main_job_markdown, main_job_runs, main_job_spread_markdown

ROOT = Path(__file__).resolve().parent.parent


def _block(name: str) -> str:
    readme = (ROOT / "README.md").read_text()
    m = re.search(f"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", readme, flags=re.S)
    assert m, f"README.md has no {name} block: run python .ci/results.py"
    return m.group(1)


def test_readme_main_job_is_the_stored_run():
    summary = json.loads(main_job_file().read_text())
    assert _block("mainjob") == main_job_markdown(summary).strip(), "run python .ci/results.py"
    assert summary["config"] == "TINY_FPN" and summary["iterations"] == summary["max_iter"] == 3000
    assert set(summary["metrics"]) == {"bbox", "segm"} and summary["machine"]["cores"] >= 1
    assert summary["command"] == "mrcnn_nb train", summary["command"]   # the README's command, no amp= of its own
    amx = "amx_bf16" in summary["machine"]["cpu_features"]   # the preset's amp='auto', as it ran on that CPU
    assert summary["config_values"]["amp"] == ("bf16" if amx else None), summary["config_values"]["amp"]


def test_readme_main_job_spread_is_the_stored_runs():
    summary = json.loads(main_job_file().read_text())
    runs = main_job_runs(summary)   # each checked to be the main job's training
    assert _block("mainjobruns") == main_job_spread_markdown(summary, runs).strip(), "run python .ci/results.py"
    assert len({r["config_values"]["seed"] for r in runs}) >= 3   # three seeds at least
    assert any(r["machine"]["cpu"] != summary["machine"]["cpu"] for r in runs)   # and another machine


def test_readme_main_job_steps_are_the_stored_measurement():
    rec = json.loads(main_job_steps_file().read_text())
    assert _block("mainjobsteps") == main_job_steps_markdown(rec).strip(), "run python .ci/results.py"
    assert list(rec["states"]) == list(MAIN_JOB_STATES) and rec["steps"] >= 10   # a measurement, both states
    assert all(s["gflop"] > 0 and s["ms"]["convolutions"] > 0 for s in rec["states"].values())


def test_readme_speed_tables_are_the_stored_benchmark():
    res = json.loads(speed_file().read_text())
    assert _block("speed") == speed_markdown(res).strip(), "run python .ci/results.py"
    cases = {(r["workload"], r["op"], r["pass"]) for r in res["roi"]}
    assert len(cases) == 8   # FPN and C4, roi_align and roi_pool, forward and backward
    for case in cases:       # each in torchvision's layout and both of ours
        assert {r["impl"] for r in res["roi"] if (r["workload"], r["op"], r["pass"]) == case} == \
            {"torchvision", "ours (channels_last)", "ours (NCHW)"}
    assert res["scale"] == 1.0 and res["image_size"] == [800, 1066] and res["repeats"] >= 3   # a full measurement
    assert {r["task"] for r in res["model"]} == {"inference", "train step (2 images)"}


def test_readme_bf16_accuracy_is_the_stored_measurement():
    rec = json.loads(amp_file().read_text())
    assert _block("amp") == amp_markdown(rec).strip(), "run python .ci/results.py"
    t = rec["tiny"]
    assert t["images"] == 100 and t["matched_of"] > 100   # the main job's validation images, not a demo's


def test_readme_bf16_training_is_the_stored_runs():
    runs = load_amp_training()
    assert _block("amptrain") == amp_training_markdown(runs).strip(), "run python .ci/results.py"
    seeds = {p: [r["config_values"]["seed"] for r in runs["seeds"][p]] for p in ("fp32", "bf16")}
    assert seeds["fp32"] == seeds["bf16"] and len(seeds["fp32"]) >= 3   # the same seeds, three at least
    assert all(r["iterations"] == 3000 for rs in runs["seeds"].values() for r in rs)   # the whole main job
    assert set(runs["alone"]) == {"fp32", "bf16"}   # each timed alone


def test_readme_bf16_training_with_amx_is_the_stored_runs():
    runs = load_amp_training(amp_training_dir("amp-training-amx"))
    assert _block("amptrainamx") == amp_training_markdown(runs).strip(), "run python .ci/results.py"
    assert all([r["config_values"]["seed"] for r in runs["seeds"][p]] == [0, 1, 2] for p in ("fp32", "bf16"))
    assert all("amx_bf16" in r["machine"]["cpu_features"] for role in runs.values() for rs in role.values() for r in rs)


def test_readme_contention_table_is_the_stored_benchmark():
    rec = json.loads(contention_file().read_text())
    assert _block("contention") == contention_markdown(rec).strip(), "run python .ci/results.py"
    assert {(r["mode"], r["scenario"]) for r in rec["rows"]} == \
        {(m, s) for m in ("fixed", "shared") for s in CONTENTION_SCENARIOS}
    assert rec["iters"] >= 30   # a measurement, not the --quick check


def test_readme_winograd_figures_are_the_stored_benchmark():
    rec = json.loads(winograd_file().read_text())
    assert _block("winograd") == winograd_markdown(rec).strip(), "run python .ci/results.py"
    assert {r["name"]: tuple(r["case"]) for r in rec["rows"]} == WINOGRAD_CASES   # every convolution of the model
    assert rec["size"] == [800, 1066] and rec["model_repeats"] >= 3 and rec["repeats"] >= 3   # a full measurement
    assert set(rec["model"]["seconds"]) == {"torchvision", "ours for_inference(winograd=False)", "ours for_inference()"}
