"""Run by tests/test_sharded_eval.py under torchrun: evaluate the demo checkpoint on a dataset, sharded over the
processes; rank 0 writes the metrics. With `fail-on-rank-1`, reading an image fails on rank 1 (a planted error).
Each process writes `group_at_exit_<rank>`: whether a process group was still joined when Python exited."""
import atexit
import json
import os
import sys
from pathlib import Path

import torch

from mrcnn_nb.core import UserInputError
from mrcnn_nb.data import COCODataset
from mrcnn_nb.evaluate import evaluate
from mrcnn_nb.train import demo_checkpoint, model_from_checkpoint, setup_distributed

root, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
torch.set_num_threads(1)
# registered before the library's own exit handler, so it runs after it (atexit runs handlers last-in, first-out)
atexit.register(lambda: (out / f"group_at_exit_{os.environ['RANK']}").write_text(
    str(torch.distributed.is_initialized())))
rank, world, _ = setup_distributed("cpu")
dataset = COCODataset(root, "val")
if mode == "fail-on-rank-1" and rank == 1:
    def broken(i): raise UserInputError(f"planted: cannot read item {i}")
    dataset.load_image = broken
model = model_from_checkpoint(demo_checkpoint())[0].eval()
r = evaluate(model, dataset, progress=False)
if rank == 0: (out / "metrics.json").write_text(json.dumps(r["metrics"]))
assert (r is None) == (rank != 0)
