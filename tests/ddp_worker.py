"""Run by tests/test_train.py under torchrun or plain python: train 3 iterations (the first `heads_iters`, the third
argument if given, on the heads alone), save the weights each process holds."""
import os
import sys
from pathlib import Path

import torch

from mrcnn_nb.model import get_config
from mrcnn_nb.train import train

root, out = Path(sys.argv[1]), Path(sys.argv[2])
heads_iters = int(sys.argv[3]) if len(sys.argv) > 3 else 0
torch.set_num_threads(1)
# Sampling that takes every anchor and every RoI (no random subsets), one image size and GroupNorm: nothing depends on
# how the global batch is split over processes, so 2 processes must match 1 up to float rounding.
# A learning rate a tenth of the preset's: the steps still move 77 of the 93 tensors by more than the test's tolerance
# (a wrong gradient shows), but no step amplifies rounding: at the preset's rate, on an Intel Xeon without AMX, the
# third step turned a 6e-6 difference between the two runs into 3e-4, while both computed the same thing.
# Float32 (amp=None): TINY_FPN's 'auto' trains in bf16 on a CPU with AMX, whose 8-bit mantissas round each product far
# beyond the tolerance, and a different split of the batch rounds differently.
cfg = get_config("TINY_FPN", ims_per_batch=2, max_iter=3, warmup_iters=1, lr_steps=(100,), checkpoint_period=100,
                 rpn_batch_size=100_000, box_batch_size=100_000, base_lr=0.016, amp=None)
summary = train(cfg, root, val_split=None, out_dir=out, progress=False, log_period=1, heads_iters=heads_iters)
torch.save(summary["model"].state_dict(), out / f"rank{os.environ.get('RANK', '0')}.pt")
