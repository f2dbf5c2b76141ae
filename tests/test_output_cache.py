"""The RoI kernels' output cache (`OUTPUT_CACHE`, 07a_roi_numba): memory still under a tensor is never handed to
another output, forwards and gradients are the same bits with the cache on and off, and outputs freed by the garbage
collector (inside the cache's own calls, at times) do not hang it."""
import subprocess
import sys

import torch
import torchvision

from mrcnn_nb.core import set_within
from mrcnn_nb.roi_numba import OUTPUT_CACHE, empty_output_cache, output_cache, output_cache_bytes
from mrcnn_nb.roi_ops import roi_align, roi_pool

SMALL = 1 << 16   # the cache takes outputs from 64 KiB up in these tests, so that small workloads go through it


def _case(seed: int, K: int = 32, C: int = 16):
    "Features (2, C, 24, 32) and K boxes on them (stride 4), drawn from `seed`."
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, C, 24, 32, generator=g)
    xy, wh = torch.rand(K, 2, generator=g) * 80, torch.rand(K, 2, generator=g) * 40 + 4
    return x, torch.cat([torch.randint(0, 2, (K, 1), generator=g).float(), xy, xy + wh], 1)


def test_memory_under_a_live_view_is_not_handed_out():
    (x1, b1), (x2, b2) = _case(1), _case(2)
    with set_within(OUTPUT_CACHE, "min_bytes", SMALL):
        empty_output_cache()
        y1 = roi_align(x1, b1, 7, 0.25, 2, True)   # 32 x 16 x 7 x 7 float32: 98 KiB, through the cache
        where, view = y1.data_ptr(), y1[:, :4]
        del y1
        y2 = roi_align(x2, b2, 7, 0.25, 2, True)   # y1's memory is still in use, through the view
        assert y2.data_ptr() != where
        torch.testing.assert_close(view, torchvision.ops.roi_align(x1, b1, 7, 0.25, 2, True)[:, :4])
        torch.testing.assert_close(y2, torchvision.ops.roi_align(x2, b2, 7, 0.25, 2, True))
        del view, y2
        assert output_cache_bytes() > 0                        # both freed now: kept
        y3 = roi_align(x1, b1, 7, 0.25, 2, True)
        assert y3.data_ptr() == where                          # the cache is at work here: y1's memory, reused
        torch.testing.assert_close(y3, torchvision.ops.roi_align(x1, b1, 7, 0.25, 2, True))
        empty_output_cache()


def _steps(cache: bool, layout) -> list:
    "Three forward/backward steps of RoIAlign and RoIPool on fresh features each: every output and input gradient."
    got = []
    with set_within(OUTPUT_CACHE, "min_bytes", SMALL), output_cache(cache):
        for seed in range(3):
            x, boxes = _case(seed, K=64)
            for op in (lambda f: roi_align(f, boxes, 7, 0.25, 2, True), lambda f: roi_pool(f, boxes, 7, 0.25)):
                f = x.contiguous(memory_format=layout).requires_grad_(True)
                y = op(f)
                y.backward(torch.ones_like(y) * (seed + 1))
                got += [y.detach().clone(), f.grad.clone()]
        empty_output_cache()
    return got


def test_same_bits_with_the_cache_on_and_off():
    for layout in (torch.channels_last, torch.contiguous_format):
        on, off = _steps(True, layout), _steps(False, layout)
        assert len(on) == len(off) == 12
        assert all(torch.equal(a, b) for a, b in zip(on, off))


def test_outputs_freed_by_the_garbage_collector_do_not_hang():
    # each output sits in a reference cycle, so only the collector frees it, at moments of its own choosing: some fall
    # inside the cache's calls while it holds its lock (with a lock taken in `give_back`, this hangs within seconds)
    code = "\n".join([
        "import gc, torch", "from mrcnn_nb.core import set_within",
        "from mrcnn_nb.roi_numba import OUTPUT_CACHE, output_buffer, output_cache_bytes",
        "class Holder: pass",
        "with set_within(OUTPUT_CACHE, 'min_bytes', 1 << 12):",
        "    for i in range(20000):",
        "        h = Holder(); h.me, h.t = h, output_buffer(2048 + i % 3, dtype=torch.float32)",
        "    del h; gc.collect()",
        "    print('done', output_cache_bytes() > 0)"])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["done", "True"], out.stderr[-2000:]
