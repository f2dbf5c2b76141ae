#!/usr/bin/env python3
"""Write the generated result blocks into nbs/index.ipynb between their markers -- the ablation table
(mrcnn_nb.ablations.results_markdown, from nbs/results/ablations), the fine-tuning comparison
(mrcnn_nb.convert.finetune_markdown, from nbs/results/finetune), the main job's table and times
(mrcnn_nb.cli.main_job_markdown, from nbs/results/main_job.json), the other runs of its training
(mrcnn_nb.cli.main_job_spread_markdown, from nbs/results/main-job-elsewhere, nbs/results/tiny-lr/seeds and
nbs/results/amp-training-amx/seeds), where
its steps' time goes (mrcnn_nb.bench.main_job_steps_markdown, from nbs/results/bench/main_job_steps.json), the
speed tables (mrcnn_nb.bench.speed_markdown, from nbs/results/bench/speed.json), the accuracy of bf16 inference
(mrcnn_nb.bench.amp_markdown, from nbs/results/bench/amp.json), bf16 training against float32
(mrcnn_nb.bench.amp_training_markdown, from nbs/results/amp-training and nbs/results/amp-training-amx) and the
contention benchmark (mrcnn_nb.bench.contention_markdown, from nbs/results/bench/contention.json) and the Winograd
convolutions (mrcnn_nb.bench.winograd_markdown, from nbs/results/bench/winograd.json) -- then README.md (python .ci/readme.py)."""
import json
import re
import subprocess
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(root))
from mrcnn_nb.ablations import results_markdown  # noqa: E402
from mrcnn_nb.bench import (  # noqa: E402
    amp_file, amp_markdown, amp_training_dir, amp_training_markdown, contention_file, contention_markdown,
    load_amp_training, main_job_steps_file, main_job_steps_markdown, speed_file, speed_markdown, winograd_file,
    winograd_markdown)
from mrcnn_nb.cli import main_job_file, main_job_markdown, main_job_runs, main_job_spread_markdown  # noqa: E402
from mrcnn_nb.convert import finetune_markdown  # noqa: E402

path = root / "nbs" / "index.ipynb"
nb = json.loads(path.read_text())
main_job = json.loads(main_job_file().read_text())
blocks = (("results", results_markdown()), ("finetune", finetune_markdown()), ("mainjob", main_job_markdown(main_job)),
          ("mainjobruns", main_job_spread_markdown(main_job, main_job_runs(main_job))),
          ("mainjobsteps", main_job_steps_markdown(json.loads(main_job_steps_file().read_text()))),
          ("speed", speed_markdown(json.loads(speed_file().read_text()))),
          ("amp", amp_markdown(json.loads(amp_file().read_text()))),
          ("amptrain", amp_training_markdown(load_amp_training())),
          ("amptrainamx", amp_training_markdown(load_amp_training(amp_training_dir("amp-training-amx")))),
          ("contention", contention_markdown(json.loads(contention_file().read_text()))),
          ("winograd", winograd_markdown(json.loads(winograd_file().read_text()))))
for name, text in blocks:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    cell = next(c for c in nb["cells"] if c["cell_type"] == "markdown" and start in "".join(c["source"]))
    src = re.sub(f"{start}\n.*?{end}", lambda m: f"{start}\n{text.strip()}\n{end}", "".join(cell["source"]), flags=re.S)
    cell["source"] = src.splitlines(keepends=True)
path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
print(f"wrote the result blocks into {path}")
subprocess.run([sys.executable, str(root / ".ci" / "readme.py")], check=True)
