"""The determinism check of `07a_roi_numba` must be able to fail.

A check that sets Numba's thread count and then calls a wrapper compares a run with itself: the wrapper's
`_sync_threads` resets the count first. `parallel_split(n)` sets what the wrappers read, and `split_dependence`
runs a function under several splits. Here it must report a planted fault — a float32 sum made of one partial
sum per block, whose low bits depend on the split — and must find none in the backward kernels."""
import numba
import numpy as np
import pytest
import torch
from numba import prange

from mrcnn_nb.roi_layers import bilinear_plan, pool_plan
from mrcnn_nb.roi_numba import (_nblocks, _sync_threads, bilinear_backward_numba, bilinear_forward_numba,
                                parallel_split, roi_pool_backward_numba, roi_pool_forward_numba, split_dependence)


@numba.njit(parallel=True)
def _blocked_sum(x, nblocks, out):
    "The planted fault: one float32 partial sum per block, then their sum — the order depends on `nblocks`."
    bs = (x.size + nblocks - 1) // nblocks
    part = np.zeros(nblocks, dtype=np.float32)
    for b in prange(nblocks):
        for i in range(b * bs, min(x.size, (b + 1) * bs)): part[b] += x[i]
    out[0] = part.sum()


def _planted(x):
    out = np.zeros(1, dtype=np.float32)
    _blocked_sum(x, _nblocks(x.size), out)   # split as the backward kernels split their channels
    return torch.from_numpy(out)


@pytest.fixture(scope="module")
def values():
    return np.random.default_rng(0).standard_normal(100_000).astype(np.float32)


def test_planted_sum_really_depends_on_the_split(values):
    "The fault is real: summed in 1 and in 3 blocks, the same float32 values give different bits."
    one, three = np.zeros(1, np.float32), np.zeros(1, np.float32)
    _blocked_sum(values, 1, one)
    _blocked_sum(values, 3, three)
    assert one[0] != three[0]


def test_check_reports_the_planted_order_dependent_sum(values):
    bad = split_dependence(lambda: _planted(values))
    assert bad, "split_dependence found no difference in a sum whose order depends on the split: the check is vacuous"


def test_split_survives_sync_threads_and_is_restored():
    before = (_nblocks(64), torch.get_num_threads(), numba.get_num_threads())
    with parallel_split(3):
        _sync_threads()   # every wrapper calls it first
        assert _nblocks(64) == 3
        assert numba.get_num_threads() == min(3, numba.config.NUMBA_NUM_THREADS)
    assert (_nblocks(64), torch.get_num_threads(), numba.get_num_threads()) == before


def _case():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 20, 24, generator=g)
    xy = torch.rand(60, 2, generator=g) * 80
    wh = torch.rand(60, 2, generator=g) * 60 + 1
    rois = torch.cat([torch.randint(0, 2, (60, 1), generator=g).float(), xy, xy + wh], 1)
    return x, rois, torch.randn(60, 16, 7, 7, generator=g)


def test_numba_backward_kernels_give_the_same_bits_for_every_split():
    x, rois, g = _case()
    plan = bilinear_plan(rois, 0.25, (7, 7), 2, 20, 24, aligned=True)
    _, arg = bilinear_forward_numba(x, plan, "max")
    pplan = pool_plan(rois, 0.25, (7, 7), 20, 24)
    _, parg = roi_pool_forward_numba(x, pplan)
    nchw = torch.contiguous_format   # the kernels that write a plain input's gradient
    for fn in (lambda: bilinear_backward_numba(g, plan, x.shape),
               lambda: bilinear_backward_numba(g, plan, x.shape, "max", arg),
               lambda: roi_pool_backward_numba(g, pplan, x.shape, parg),
               lambda: bilinear_backward_numba(g, plan, x.shape, memory_format=nchw),
               lambda: bilinear_backward_numba(g, plan, x.shape, "max", arg, nchw),
               lambda: roi_pool_backward_numba(g, pplan, x.shape, parg, nchw)):
        assert split_dependence(fn) == []


def test_the_first_kernel_keeps_torchs_thread_count():
    """Numba's OpenMP pool, started by the first kernel, used to reset the process's thread count to Numba's: a fresh
    process then ran its first steps on another thread count than a warm one (a resumed run drifted by ~1e-7)."""
    import os, subprocess, sys
    code = ("import torch; from mrcnn_nb.roi_ops import roi_align; "
            "x = torch.randn(1, 8, 16, 16).contiguous(memory_format=torch.channels_last); "
            "roi_align(x, torch.tensor([[0, 1., 1, 9, 9]]), (2, 2), 1.0, 2, backend='numba'); "
            "print(torch.get_num_threads())")
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-1] == "1", r.stdout
