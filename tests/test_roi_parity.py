"""RoI layers: randomized parity with torchvision and the references on every backend, gradcheck,
edge cases and bad input. The CUDA backend runs on a GPU when there is one, else in Numba's
simulator (small sizes: the simulator runs each GPU thread in Python)."""
import math

import pytest
import torch
import torchvision

from conftest import CUDA_KERNELS_RUN
from mrcnn_nb.roi_layers import roi_align_ref, roi_pool_ref, roi_warp_ref
from mrcnn_nb.roi_ops import RoIAlign, RoIPool, RoIWarp, roi_align, roi_pool, roi_warp

GPU = torch.cuda.is_available()
CUDA_DEVICE = "cuda" if GPU else "cpu"


def case(seed, N=2, C=3, H=15, W=19, K=25, stride=4.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g, dtype=torch.float64).to(dtype)
    img = torch.tensor([W * stride, H * stride], dtype=torch.float64)
    xy = torch.rand(K, 2, generator=g, dtype=torch.float64) * img * 1.2 - 0.1 * img
    wh = torch.rand(K, 2, generator=g, dtype=torch.float64) * img * 0.6
    b = torch.randint(0, N, (K, 1), generator=g).double()
    return x, torch.cat([b, xy, xy + wh], 1).to(dtype), 1.0 / stride


def grads(fn, x, gout):
    x = x.detach().clone().requires_grad_()
    y = fn(x)
    (gx,) = torch.autograd.grad(y, x, gout)
    return y.detach(), gx


BACKENDS = ["numba", "torch"] + (["cuda"] if CUDA_KERNELS_RUN else [])


def sized(backend, seed, **kw):
    # the simulator runs one Python thread per GPU thread: keep its cases small
    if backend == "cuda" and not GPU: kw = dict(dict(C=2, K=6, H=9, W=11), **kw)
    x, b, s = case(seed, **kw)
    dev = CUDA_DEVICE if backend == "cuda" else "cpu"
    return x.to(dev), b.to(dev), s


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
@pytest.mark.parametrize("seed", range(3))
def test_roi_align_matches_torchvision(backend, aligned, sampling_ratio, seed):
    x, b, s = sized(backend, seed)
    out = (5, 4) if backend != "cuda" or GPU else (3, 2)
    gout = torch.randn(b.shape[0], x.shape[1], *out, generator=torch.Generator().manual_seed(seed)).to(x)
    y1, g1 = grads(lambda t: roi_align(t, b, out, s, sampling_ratio, aligned, backend=backend), x, gout)
    y2, g2 = grads(lambda t: torchvision.ops.roi_align(t.cpu(), b.cpu(), out, s, sampling_ratio, aligned), x.cpu(), gout.cpu())
    torch.testing.assert_close(y1.cpu(), y2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g1.cpu(), g2, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", range(4))
def test_roi_pool_matches_torchvision(backend, seed):
    x, b, s = sized(backend, seed)
    gout = torch.randn(b.shape[0], x.shape[1], 3, 4, generator=torch.Generator().manual_seed(seed)).to(x)
    y1, g1 = grads(lambda t: roi_pool(t, b, (3, 4), s, backend=backend), x, gout)
    y2, g2 = grads(lambda t: torchvision.ops.roi_pool(t, b.cpu(), (3, 4), s), x.cpu(), gout.cpu())
    torch.testing.assert_close(y1.cpu(), y2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g1.cpu(), g2, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
@pytest.mark.parametrize("layer", ["warp_max", "warp_avg", "align_max"])
@pytest.mark.parametrize("seed", range(3))
def test_layers_without_torchvision_match_the_references(backend, layer, seed):
    x, b, s = sized(backend, seed)
    if layer == "align_max":
        ours = lambda t: roi_align(t, b, 3, s, 2, True, "max", backend=backend)
        ref = lambda t: roi_align_ref(t, b.cpu(), 3, s, 2, True, "max")
    else:
        mode = layer.split("_")[1]
        ours = lambda t: roi_warp(t, b, 3, s, 2, mode, backend=backend)
        ref = lambda t: roi_warp_ref(t, b.cpu(), 3, s, 2, mode)
    gout = torch.randn(b.shape[0], x.shape[1], 3, 3, generator=torch.Generator().manual_seed(seed)).to(x)
    y1, g1 = grads(ours, x, gout)
    y2, g2 = grads(ref, x.cpu(), gout.cpu())
    torch.testing.assert_close(y1.cpu(), y2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g1.cpu(), g2, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fn", ["align_avg", "align_max", "align_avg_legacy", "warp_avg", "warp_max", "pool"])
def test_gradcheck_float64(backend, fn):
    x, b, s = sized(backend, 7, dtype=torch.float64, N=1, C=2, H=6, W=7, K=3)
    x = x.requires_grad_()
    f = {"align_avg": lambda t: roi_align(t, b, 3, s, 2, True, "avg", backend=backend),
         "align_max": lambda t: roi_align(t, b, 3, s, 2, True, "max", backend=backend),
         "align_avg_legacy": lambda t: roi_align(t, b, 3, s, -1, False, "avg", backend=backend),
         "warp_avg": lambda t: roi_warp(t, b, 3, s, 2, "avg", backend=backend),
         "warp_max": lambda t: roi_warp(t, b, 3, s, 2, "max", backend=backend),
         "pool": lambda t: roi_pool(t, b, 3, s, backend=backend)}[fn]
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_edge_cases(backend):
    dev = CUDA_DEVICE if backend == "cuda" else "cpu"
    x = torch.randn(2, 2, 8, 9, device=dev)
    for f in (roi_align, roi_warp, roi_pool):
        assert f(x, torch.zeros(0, 5, device=dev), 3, backend=backend).shape == (0, 2, 3, 3)             # zero RoIs
        assert f(torch.zeros(0, 2, 8, 9, device=dev), [], 3, backend=backend).shape == (0, 2, 3, 3)       # empty batch
        odd = torch.tensor([[0., 500, 500, 600, 600],           # wholly outside
                            [1, -40, -40, 10, 10],              # partly outside
                            [1, 12, 12, 12, 12],                # zero size
                            [0, 20, 20, 4, 4],                  # negative size
                            [1, float("nan"), 3, 9, 9],         # NaN
                            [0, 2, 3, float("inf"), 9]], device=dev)
        out = f(x, odd, 3, 0.5, backend=backend)
        assert torch.isfinite(out).all()
        assert out[0].abs().sum() == 0 and out[4].abs().sum() == 0 and out[5].abs().sum() == 0
        assert out[1].abs().sum() > 0


def test_non_contiguous_channels_last_and_dtypes():
    x, b, s = case(3, C=4)
    ref = torchvision.ops.roi_align(x, b, 4, s, 2, True)
    cl = x.contiguous(memory_format=torch.channels_last)
    strided = torch.randn(2, 8, 15, 19)[:, ::2]; strided.copy_(x)
    transposed = x.transpose(2, 3).contiguous().transpose(2, 3)
    for variant in (cl, strided, transposed):
        assert not variant.is_contiguous() or variant is cl
        torch.testing.assert_close(roi_align(variant, b, 4, s, 2, True), ref, atol=1e-5, rtol=1e-5)
    x64, b64, _ = case(3, C=4, dtype=torch.float64)
    torch.testing.assert_close(roi_align(x64, b64, 4, s, 2, True), torchvision.ops.roi_align(x64, b64, 4, s, 2, True), atol=1e-12, rtol=1e-12)
    xh = x.to(torch.bfloat16)  # dtypes the kernels do not take fall back to the reference
    assert roi_align(xh, b.to(torch.bfloat16), 4, s, 2, True).dtype == torch.bfloat16


def test_channels_last_is_read_without_copy(monkeypatch):
    "The numba kernels receive a view of the channels_last tensor's memory, not a copy."
    import mrcnn_nb.roi_numba as rn
    seen = {}
    original = rn._bilinear_avg_fwd
    def spy(x, *args):
        seen["ptr"] = x.ctypes.data; seen["contiguous"] = x.flags.c_contiguous
        return original(x, *args)
    monkeypatch.setattr(rn, "_bilinear_avg_fwd", spy)
    x, b, s = case(0, C=8)
    cl = x.contiguous(memory_format=torch.channels_last)
    roi_align(cl, b, 4, s, 2, True)
    assert seen == {"ptr": cl.data_ptr(), "contiguous": True}


def test_input_gradient_keeps_the_input_layout():
    """The CPU kernels return a plain input's gradient plain and a channels-last input's channels-last, with the same
    values (the average's: the same bits): another layout would make autograd transpose the whole gradient into the
    input's."""
    x, b, s = case(4, C=6, K=40)
    layers = {"align": lambda t: roi_align(t, b, 7, s, 2, True),
              "align_max": lambda t: roi_align(t, b, 7, s, 2, True, "max"),
              "warp": lambda t: roi_warp(t, b, 7, s, 2, "avg"), "pool": lambda t: roi_pool(t, b, 7, s)}
    for name, f in layers.items():
        grads_by_layout = {}
        for fmt in (torch.contiguous_format, torch.channels_last):
            xi = x.contiguous(memory_format=fmt).requires_grad_()
            y = f(xi)
            g = y.grad_fn.apply(torch.ones_like(y))[0]   # what the kernel returns, before autograd's accumulation
            assert g.is_contiguous(memory_format=fmt), (name, fmt, g.stride())
            grads_by_layout[fmt] = g
        plain, last = grads_by_layout.values()
        if name in ("align", "warp"): assert torch.equal(plain, last), name   # the same separable sums, same order
        else: torch.testing.assert_close(plain, last, atol=1e-5, rtol=1e-5)


def test_backward_allocates_about_the_input_gradient_only():
    """The CPU backward kernels read the output gradient where it is, in either layout: their peak memory rise is the
    input gradient's size and little more, not a copy of an output gradient 30x larger (C4-like: many 14x14 RoIs of a
    small map; the box head's gradient comes NCHW, as here)."""
    from mrcnn_nb.core import peak_memory_rise
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 256, 25, 34, generator=g)
    xy = torch.rand(128, 2, generator=g) * 300
    boxes = torch.cat([torch.zeros(128, 1), xy, xy + torch.rand(128, 2, generator=g) * 200 + 16], 1)
    gin_mib = x.numel() * 4 / 2 ** 20                                        # 0.8 MiB
    for name, f in {"align": lambda t: roi_align(t, boxes, 14, 1 / 16, 2, True),
                    "pool": lambda t: roi_pool(t, boxes, 14, 1 / 16)}.items():
        for fmt in (torch.contiguous_format, torch.channels_last):
            xi = x.contiguous(memory_format=fmt).requires_grad_()
            y = f(xi)
            gout = torch.randn(y.shape, generator=g)                            # 25 MiB, plain NCHW
            y.grad_fn.apply(gout)                                                # compiled, warm
            rise = peak_memory_rise(lambda: y.grad_fn.apply(gout))
            if rise is None: pytest.skip("peak memory is read from /proc/self (Linux)")
            assert rise < gin_mib + 6, (name, fmt, rise)                        # a copy of gout: +25 MiB


def test_plain_input_gives_the_bits_of_channels_last(monkeypatch):
    """RoIAlign's average on a plain NCHW input gives the same bits as on the channels-last input, by every path: a map
    no larger than the output copied channels-last in blocks (the (5, 4) outputs); a larger map with the window of
    every RoI copied channels-last (COPY_SAMPLES_PER_CELL 0), of none (infinite: plane by plane, one and two groups of
    four taps) and as the library chooses."""
    from mrcnn_nb import roi_numba
    x, b, s = case(6, C=8, K=60)                                  # a 2 x 8 x 15 x 19 map: 4,560 values
    cl = x.contiguous(memory_format=torch.channels_last)
    converted = [((5, 4), 4, True), ((5, 4), 2, False), ((5, 4), -1, True), ((5, 4), 0, False), ((5, 4), 1, True)]
    in_place = [((1, 1), 4, True), ((2, 2), 2, False), ((3, 2), -1, True), ((3, 3), 1, True), ((2, 3), 0, False)]
    for per_cell in (roi_numba.COPY_SAMPLES_PER_CELL, 0, float("inf")):
        monkeypatch.setattr(roi_numba, "COPY_SAMPLES_PER_CELL", per_cell)
        for size, sampling_ratio, aligned in converted + in_place:
            plain = roi_align(x, b, size, s, sampling_ratio, aligned)
            assert torch.equal(plain, roi_align(cl, b, size, s, sampling_ratio, aligned)), \
                (per_cell, size, sampling_ratio, aligned)


def test_roi_pool_backward_passes_give_the_bits_of_the_plain_kernel(monkeypatch):
    """RoIPool's channels-last backward gives the bits of the plain input's (plane by plane) whatever the channels per
    pass over a RoI: 16 (SCATTER_L1_BYTES 0, with a last pass of fewer channels), the thread's whole block (infinite)
    and as the library chooses; for a plain and a channels-last output gradient."""
    from mrcnn_nb import roi_numba
    from mrcnn_nb.roi_layers import pool_plan
    x, b, s = case(8, C=40, K=90)                                   # 40 channels: blocks of 40, 20 or 14
    plan = pool_plan(b, s, (4, 3), *x.shape[-2:])
    cl = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(len(b), 40, 4, 3, generator=torch.Generator().manual_seed(9))
    _, arg = roi_numba.roi_pool_forward_numba(cl, plan)
    _, arg_plain = roi_numba.roi_pool_forward_numba(x, plan)
    ref = roi_numba.roi_pool_backward_numba(g, plan, x.shape, arg_plain, torch.contiguous_format)
    for limit in (0, float("inf"), roi_numba.SCATTER_L1_BYTES):
        monkeypatch.setattr(roi_numba, "SCATTER_L1_BYTES", limit)
        for blocks in (1, 2, 3):
            with roi_numba.parallel_split(blocks):
                for grad in (g, g.contiguous(memory_format=torch.channels_last)):
                    gin = roi_numba.roi_pool_backward_numba(grad, plan, x.shape, arg)
                    assert torch.equal(gin, ref), (limit, blocks, grad.is_contiguous())


def test_roi_pool_plain_and_channels_last_agree_on_ties_and_nans():
    """RoIPool's forward on a plain NCHW input (its own kernel: plane by plane, in channel blocks) gives the values
    and the argmax of the channels-last kernel -- the first maximum in row-then-column order, never a NaN -- on a map
    full of ties, with NaNs in it, and with RoIs partly and wholly outside the map (empty bins: 0 and -1)."""
    from mrcnn_nb.roi_layers import pool_plan
    from mrcnn_nb.roi_numba import roi_pool_forward_numba
    x, b, s = case(7, C=6, K=80)
    x = (x * 2).round()                                  # a few distinct values: most bins hold ties
    x[:, ::2, 3:6, 4:9] = float("nan")
    b = torch.cat([b, torch.tensor([[0.0, -40, -40, -4, -4], [1, 200, 200, 260, 260]])])
    plan = pool_plan(b, s, (3, 4), *x.shape[-2:])
    cl = x.contiguous(memory_format=torch.channels_last)
    for dtype in (torch.float32, torch.float64):
        (y1, a1), (y2, a2) = (roi_pool_forward_numba(t.to(dtype), plan) for t in (x, cl))
        assert torch.equal(y1, y2) and torch.equal(a1, a2), dtype
        assert (a1[-2:] == -1).all() and (y1[-2:] == 0).all() and not torch.isnan(y1).any()


def test_backward_is_deterministic_across_thread_counts():
    import numba
    if numba.config.NUMBA_NUM_THREADS < 2: pytest.skip("needs 2 Numba threads (NUMBA_NUM_THREADS >= 2)")
    x, b, s = case(5, C=16, K=200)
    x = x.requires_grad_()
    out, torch_threads = [], torch.get_num_threads()
    try:
        for threads in (1, 2):   # the kernels run on min(torch's, Numba's) threads
            numba.set_num_threads(threads); torch.set_num_threads(threads)
            for f in (lambda t: roi_align(t, b, 7, s, 2, True), lambda t: roi_align(t, b, 7, s, 2, True, "max"), lambda t: roi_pool(t, b, 7, s)):
                y = f(x); (g,) = torch.autograd.grad(y, x, torch.ones_like(y)); out.append(g)
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS); torch.set_num_threads(torch_threads)
    for a, c in zip(out[:3], out[3:]): assert torch.equal(a, c)


def test_bad_input_errors():
    x, b, s = case(0)
    with pytest.raises(ValueError, match=r"\(K, 5\)"): roi_align(x, b[:, 1:], 3)
    with pytest.raises(ValueError, match=r"boxes\[1\] must be a \(Ki, 4\)"): roi_align(x, [b[:2, 1:], b[:2]], 3)
    with pytest.raises(ValueError, match=r"RoI 0 has batch index 2.0, but input holds 2 image"):
        roi_align(x, torch.tensor([[2.0, 0, 0, 4, 4]]), 3)
    with pytest.raises(ValueError, match=r"batch index -1.0"): roi_pool(x, torch.tensor([[-1.0, 0, 0, 4, 4]]), 3)
    with pytest.raises(ValueError, match=r"batch index 0.5"): roi_warp(x, torch.tensor([[0.5, 0, 0, 4, 4]]), 3)
    with pytest.raises(ValueError, match=r"batch index nan"): roi_align(x, torch.tensor([[float("nan"), 0, 0, 4, 4]]), 3)
    with pytest.raises(ValueError, match=r"but input holds 0 image"): roi_align(torch.zeros(0, 3, 4, 4), torch.tensor([[0.0, 0, 0, 4, 4]]), 3)
    with pytest.raises(TypeError, match=r"dtype torch.float64 differs from input dtype torch.float32"): roi_align(x, b.double(), 3)
    with pytest.raises(TypeError, match=r"floating-point"): roi_align(x.long(), b, 3)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"): roi_align(x[0], b, 3)
    with pytest.raises(ValueError, match=r"output_size must be positive"): roi_align(x, b, 0)
    with pytest.raises(ValueError, match=r"spatial_scale must be a positive number"): roi_align(x, b, 3, "0.25")
    with pytest.raises(ValueError, match=r"empty feature map"): roi_pool(torch.zeros(1, 3, 0, 4), torch.zeros(1, 5), 3)
    with pytest.raises(ValueError, match=r"unknown backend 'gpu'"): roi_align(x, b, 3, backend="gpu")
    with pytest.raises(ValueError, match=r"fixed sampling_ratio"): roi_align(x, torch.tensor([[0.0, 0, 0, 1e7, 1e7]]), 3, 1.0)
    if GPU:
        with pytest.raises(ValueError, match=r"backend 'numba' runs on the CPU"): roi_align(x.cuda(), b.cuda(), 3, backend="numba")
        with pytest.raises(ValueError, match=r"are on cpu but input is on cuda"): roi_align(x.cuda(), b, 3)
    elif not CUDA_KERNELS_RUN:
        with pytest.raises(ValueError, match=r"backend 'cuda' needs a CUDA tensor"): roi_align(x, b, 3, backend="cuda")


@pytest.mark.parametrize("backend", BACKENDS)
def test_outputs_are_plain_contiguous_like_torchvision(backend):
    x, b, s = sized(backend, 0)
    for f in (lambda: roi_align(x, b, 3, s, backend=backend), lambda: roi_pool(x, b, 3, s, backend=backend),
              lambda: roi_warp(x.contiguous(memory_format=torch.channels_last), b, 3, s, backend=backend)):
        y = f()
        assert y.is_contiguous() and y.view(len(b), -1).shape[1] == x.shape[1] * 9


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_pooling_ties_and_nans_agree_across_backends(backend):
    "On a constant map every sample ties: the gradient goes to one sample (as in torchvision), whatever the backend; NaNs are skipped."
    dev = CUDA_DEVICE if backend == "cuda" else "cpu"
    box = torch.tensor([[0.0, 1, 1, 3, 3]], dtype=torch.float64, device=dev)
    x = torch.ones(1, 1, 5, 5, dtype=torch.float64, device=dev, requires_grad=True)
    (g,) = torch.autograd.grad(roi_pool(x, box, 1, backend=backend).sum(), x)
    assert (g > 0).sum() == 1 and g.sum() == 1
    tv_x = torch.ones(1, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    (tv_g,) = torch.autograd.grad(torchvision.ops.roi_pool(tv_x, box.cpu(), 1).sum(), tv_x)
    assert torch.equal(g.cpu(), tv_g)
    (g,) = torch.autograd.grad(roi_align(x, box, 1, 1.0, 2, True, "max", backend=backend).sum(), x)
    assert torch.isclose(g.sum(), torch.tensor(1.0, dtype=torch.float64, device=dev)) and (g > 0).sum() <= 4
    nan = torch.arange(25, dtype=torch.float64, device=dev).view(1, 1, 5, 5).clone(); nan[0, 0, 2, 2] = float("nan")
    ref = roi_pool(nan.cpu(), box.cpu(), 1, backend="numba")
    assert torch.equal(roi_pool(nan, box, 1, backend=backend).cpu(), ref) and torch.isfinite(ref).all()


def test_modules_repr_and_forward():
    x, b, s = case(1)
    m = RoIAlign(7, s, 2, True)
    assert repr(m) == "RoIAlign(output_size=(7, 7), spatial_scale=0.25, sampling_ratio=2, aligned=True, mode='avg', backend='auto')"
    torch.testing.assert_close(m(x, b), torchvision.ops.RoIAlign(7, s, 2, True)(x, b), atol=1e-5, rtol=1e-5)
    assert "RoIWarp(output_size=(5, 5)" in repr(RoIWarp(5, s)) and "RoIPool(output_size=(3, 2)" in repr(RoIPool((3, 2), s))
    torch.testing.assert_close(RoIPool(3, s)(x, b), torchvision.ops.roi_pool(x, b, 3, s))
    with pytest.raises(ValueError, match="mode must be"): RoIWarp(5, s, mode="sum")
