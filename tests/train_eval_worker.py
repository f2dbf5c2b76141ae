"""Run by tests/test_sharded_eval.py under torchrun: train 4 iterations with an evaluation and the validation loss every
2, on every process; rank 0 writes the checkpoints and the metrics log."""
import sys
from pathlib import Path

import torch

from mrcnn_nb.model import get_config
from mrcnn_nb.train import train

root, out = Path(sys.argv[1]), Path(sys.argv[2])
torch.set_num_threads(1)
cfg = get_config("TINY_FPN", ims_per_batch=2, max_iter=4, warmup_iters=1, lr_steps=(100,), checkpoint_period=100,
                 eval_period=2)
train(cfg, root, "train", "val", out_dir=out, progress=False, log_period=1, adapt=("num_classes",), val_loss=True)
