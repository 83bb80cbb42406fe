"""Pooling (max_pool2d, avg_pool2d, adaptive_avg_pool2d, adaptive_max_pool2d): every
backend x dtype x layout x config against the float64 oracle, forward and backward;
indices equal to torch's and usable by max_unpool2d; NaN propagation; unbatched and
empty-batch input; gradcheck, opcheck, torch.compile; bitwise run-to-run determinism of
the backward; bad input; the nn modules as drop-ins."""

import itertools

import pytest
import torch
import torch.nn.functional as TF
from torch import nn

import pydl
import pydl.functional as F
from pydl.testing import check_against_torch, make_input
from conftest import run_with_cpu_simd, DTYPE_IDS, DTYPES, backend_params, interpreted, needs_gxx, run_cuda_emulation

LAYOUTS = ["contiguous", "channels_last", "noncontig"]


def shape_for(backend, device):
    # odd spatial sizes; on the C++ backends enough planes/sites to split across threads
    # (and C > the 64-channel chunk of the CPU NHWC path); tiny under the Triton interpreter
    return (2, 3, 7, 9) if interpreted(backend, device) else (3, 67, 13, 11)


# (kernel_size, stride, padding, dilation, ceil_mode)
MAX_CONFIGS = [
    (3, 2, 1, 1, False),                    # ResNet stem
    (2, None, 0, 1, False),                 # VGG
    (3, 2, 1, 1, True),                     # ceil: a last window over the padded edge
    ((3, 2), (2, 1), (1, 0), (2, 1), True),  # dilation, per-axis everything
    ((2, 3), (3, 2), (1, 1), 1, True),      # ceil where the last window must be dropped
    (3, 1, 1, 2, False),                    # overlapping windows, dilation 2
]
MAX_IDS = ["k3s2p1", "k2", "k3s2p1ceil", "dil_ceil", "k23s32p11ceil", "k3s1p1d2"]

# (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
AVG_CONFIGS = [
    (3, 2, 1, False, True, None),
    (3, 2, 1, True, False, None),
    (2, None, 0, True, True, None),
    ((3, 2), (2, 3), (1, 1), True, True, None),  # ceil windows past the padded edge
    ((3, 3), 1, 1, False, False, None),          # overlapping windows
    (3, 2, 1, True, True, 5),
    ((2, 3), 2, (1, 0), True, False, -3),        # torch accepts a negative divisor
]
AVG_IDS = ["k3s2p1", "k3s2p1ceil_nopad", "k2ceil", "asym_ceil", "k3s1_nopad", "div5", "div-3"]

# adaptive output sizes: smaller, 1x1 (global), None entries, larger than the input
ADAPTIVE_SIZES = [(3, 4), 1, (None, 2), (5, None), (17, 4)]
ADAPTIVE_IDS = ["3x4", "global", "none_2", "5_none", "upsample"]


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cfg", MAX_CONFIGS, ids=MAX_IDS)
def test_max_pool2d(backend, device, dtype, layout, cfg):
    k, s, p, d, ceil = cfg
    x = make_input(shape_for(backend, device), dtype, device, layout, requires_grad=True, seed=1)
    check_against_torch(lambda t: F.max_pool2d(t, k, s, p, d, ceil, backend=backend),
                        lambda t: TF.max_pool2d(t, k, s, p, d, ceil), [x], what=f"max/{backend}")


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cfg", AVG_CONFIGS, ids=AVG_IDS)
def test_avg_pool2d(backend, device, dtype, layout, cfg):
    k, s, p, ceil, cip, div = cfg
    x = make_input(shape_for(backend, device), dtype, device, layout, requires_grad=True, seed=2)
    check_against_torch(lambda t: F.avg_pool2d(t, k, s, p, ceil, cip, div, backend=backend),
                        lambda t: TF.avg_pool2d(t, k, s, p, ceil, cip, div), [x],
                        what=f"avg/{backend}")


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("size", ADAPTIVE_SIZES, ids=ADAPTIVE_IDS)
def test_adaptive_avg_pool2d(backend, device, dtype, layout, size):
    x = make_input(shape_for(backend, device), dtype, device, layout, requires_grad=True, seed=3)
    check_against_torch(lambda t: F.adaptive_avg_pool2d(t, size, backend=backend),
                        lambda t: TF.adaptive_avg_pool2d(t, size), [x], what=f"aavg/{backend}")


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("size", ADAPTIVE_SIZES, ids=ADAPTIVE_IDS)
def test_adaptive_max_pool2d(backend, device, dtype, layout, size):
    x = make_input(shape_for(backend, device), dtype, device, layout, requires_grad=True, seed=4)
    check_against_torch(lambda t: F.adaptive_max_pool2d(t, size, backend=backend),
                        lambda t: TF.adaptive_max_pool2d(t, size), [x], what=f"amax/{backend}")


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64], ids=["f32", "f16", "f64"])
def test_channels_last_vector_path(backend, device, dtype):
    """C a multiple of 16: the CUDA NHWC kernels move 16 bytes of channels per load (the
    other tests use odd C, which takes the one-channel path); global average pooling too."""
    C = 16 if interpreted(backend, device) else 128
    x = make_input((2, C, 9, 7), dtype, device, "channels_last", requires_grad=True, seed=13)
    for what, fn, tfn in [
        ("max", lambda t: F.max_pool2d(t, 3, 2, 1, backend=backend), lambda t: TF.max_pool2d(t, 3, 2, 1)),
        ("avg", lambda t: F.avg_pool2d(t, 3, 2, 1, True, False, backend=backend),
         lambda t: TF.avg_pool2d(t, 3, 2, 1, True, False)),
        ("aavg", lambda t: F.adaptive_avg_pool2d(t, (4, 3), backend=backend),
         lambda t: TF.adaptive_avg_pool2d(t, (4, 3))),
        ("global", lambda t: F.adaptive_avg_pool2d(t, 1, backend=backend),
         lambda t: TF.adaptive_avg_pool2d(t, 1)),
        ("amax", lambda t: F.adaptive_max_pool2d(t, (4, 3), backend=backend),
         lambda t: TF.adaptive_max_pool2d(t, (4, 3))),
    ]:
        check_against_torch(fn, tfn, [x], what=f"{what}/{backend} channels_last C={C}")


@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[0] == "triton"])
def test_triton_wide_index_variant(backend, device, monkeypatch):
    """The Triton pool kernels decode offsets in int32 and switch to int64 only when a size
    nears 2^31 (kernels/__init__.py::index_type) -- tensors no CPU test can allocate. Here
    the int64 variant is forced on small inputs, every mode, both layouts, forward and
    backward (and the max pools' double backward), and must give the same answers; the
    switch point too."""
    import triton.language as tl
    from pydl.kernels import pool as tp
    assert tp._idx(7, 2 ** 30 - 1) == tl.int32 and tp._idx(7, 2 ** 30) == tl.int64
    monkeypatch.setattr(tp, "_idx", lambda *sizes: tl.int64)
    for layout in ("contiguous", "channels_last"):
        x = make_input(shape_for(backend, device), torch.float32, device, layout,
                       requires_grad=True, seed=5)
        for ours, theirs in [
            (lambda t: F.max_pool2d(t, 3, 2, 1, backend=backend), lambda t: TF.max_pool2d(t, 3, 2, 1)),
            (lambda t: F.avg_pool2d(t, 3, 2, 1, True, False, backend=backend),
             lambda t: TF.avg_pool2d(t, 3, 2, 1, True, False)),
            (lambda t: F.adaptive_avg_pool2d(t, (3, 4), backend=backend),
             lambda t: TF.adaptive_avg_pool2d(t, (3, 4))),
            (lambda t: F.adaptive_max_pool2d(t, (5, 2), backend=backend),
             lambda t: TF.adaptive_max_pool2d(t, (5, 2)))]:
            check_against_torch(ours, theirs, [x], what=f"wide index/{layout}")
        # the double backward gathers through the saved indices (pool_gather_kernel):
        # d/dv of sum(w * grad_x(v)) = w at each window's argmax
        w = torch.randn(x.shape, dtype=x.dtype, device=device)
        got, want = [], []
        for pool, out in ((lambda t: F.max_pool2d(t, 2, backend=backend), got),
                          (lambda t: TF.max_pool2d(t, 2), want)):
            y = pool(x)
            v = torch.ones_like(y, requires_grad=True)
            (gx,) = torch.autograd.grad(y, x, v, create_graph=True)
            out.append(torch.autograd.grad((gx * w).sum(), v)[0])
        assert torch.equal(got[0], want[0])


@pytest.mark.xdist_group("big")
@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[1] == "cuda"])
def test_more_than_2_31_elements(backend, device):
    """64-bit indexing: an input of 2^31 + 2^21 float16 elements (4.3 GB)."""
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs a GPU with >= 24 GiB")
    x = torch.randn((1, 2, 32768, 32800), device=device, dtype=torch.float16)
    assert x.numel() > 2**31
    y, ind = F.max_pool2d(x, 2, return_indices=True, backend=backend)
    yt, indt = TF.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(y, yt) and torch.equal(ind, indt)
    del indt, yt
    g = torch.ones_like(y)
    x.requires_grad_()
    (dx,) = torch.autograd.grad(F.max_pool2d(x, 2, backend=backend), x, g)
    # k = s = 2: windows do not overlap, so each window's 1 lands on exactly one element
    assert dx.dtype == x.dtype and int((dx == 1).sum()) == int((dx != 0).sum()) == y.numel()
    del dx
    # global average pooling over 65536 planes of 32800: plane offsets past 2^31
    xv = x.detach().view(1, 65536, 32800, 1)
    ga = F.adaptive_avg_pool2d(xv, 1, backend=backend)
    assert torch.allclose(ga.float(), TF.adaptive_avg_pool2d(xv, 1).float(), atol=2e-3)


@pytest.mark.xdist_group("big")
@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[1] == "cuda"])
def test_plane_or_row_past_2_31_elements(backend, device):
    """64-bit offsets inside one image: an NCHW plane of more than 2^31 elements (the second
    channel's plane starts past 2^31: its offset is the plane size times the channel), and a
    channels_last row (W x C) of more than 2^31 -- the Triton kernels once formed these
    strides as int32 products of two sizes. Forward against torch (8.6 GB float16 inputs)."""
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs a GPU with >= 24 GiB")
    for shape, cl in (((1, 2, 46341, 46341), False), ((1, 32768, 2, 65537), True)):
        x = torch.empty(shape, device=device, dtype=torch.float16)
        x = (x.to(memory_format=torch.channels_last) if cl else x).normal_()
        assert (shape[2] * shape[3] if not cl else shape[1] * shape[3]) > 2**31
        y, yt = F.max_pool2d(x, 2, backend=backend), TF.max_pool2d(x, 2)
        assert torch.equal(y, yt), shape
        del y, yt
        y, yt = F.avg_pool2d(x, 2, backend=backend), TF.avg_pool2d(x, 2)
        assert float((y - yt).abs().max()) <= 4e-3, shape   # (a float16 ulp at 2: sum orders)
        del y, yt, x


# ----------------------------------------------------------------------------- indices
@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_indices_equal_torch_and_unpool(backend, device, layout):
    """float32 normal inputs have no ties: the indices must be torch's exactly, in torch's
    memory format, and max_unpool2d must put every maximum back where it came from."""
    x = make_input(shape_for(backend, device), torch.float32, device, layout, seed=5)
    for k, s, p, d, ceil in MAX_CONFIGS:
        y, ind = F.max_pool2d(x, k, s, p, d, ceil, return_indices=True, backend=backend)
        yt, indt = TF.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
        assert torch.equal(y, yt) and torch.equal(ind, indt), (k, s, p, d, ceil)
        assert ind.dtype == torch.int64 and ind.stride() == indt.stride()
        if d == 1:  # max_unpool2d knows no dilation
            u = TF.max_unpool2d(y, ind, k, s, p, output_size=x.shape[-2:])
            ut = TF.max_unpool2d(yt, indt, k, s, p, output_size=x.shape[-2:])
            assert torch.equal(u, ut)
            assert torch.equal(u[u != 0], x[u != 0])  # each kept value is at its origin
    for size in ADAPTIVE_SIZES:
        y, ind = F.adaptive_max_pool2d(x, size, return_indices=True, backend=backend)
        yt, indt = TF.adaptive_max_pool2d(x, size, return_indices=True)
        assert torch.equal(y, yt) and torch.equal(ind, indt), size


_SIMD_SCRIPT = r"""
import torch
import torch.nn.functional as TF
import pydl.functional as F
from pydl.testing import check_against_torch, make_input

fns = [(lambda t: F.max_pool2d(t, 3, 2, 1, backend="cpu"), lambda t: TF.max_pool2d(t, 3, 2, 1)),
       (lambda t: F.max_pool2d(t, 2, 1, 0, 2, True, backend="cpu"), lambda t: TF.max_pool2d(t, 2, 1, 0, 2, True)),
       (lambda t: F.avg_pool2d(t, 3, 2, 1, backend="cpu"), lambda t: TF.avg_pool2d(t, 3, 2, 1)),
       (lambda t: F.adaptive_avg_pool2d(t, 1, backend="cpu"), lambda t: TF.adaptive_avg_pool2d(t, 1)),
       (lambda t: F.adaptive_avg_pool2d(t, (3, 5), backend="cpu"), lambda t: TF.adaptive_avg_pool2d(t, (3, 5))),
       (lambda t: F.adaptive_max_pool2d(t, (4, 3), backend="cpu"), lambda t: TF.adaptive_max_pool2d(t, (4, 3)))]
# 70 channels: a full CHUNK of 64 and a tail of 6; 17 x 23 planes: runs of 16 and more
for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
    for layout in ("contiguous", "channels_last"):
        x = make_input((2, 70, 17, 23), dt, layout=layout, requires_grad=True, seed=3)
        for i, (ours, theirs) in enumerate(fns):
            check_against_torch(ours, theirs, [x], what=f"{dt}/{layout}/{i}")
            y, ind = F.max_pool2d(x.detach(), 3, 2, 1, return_indices=True, backend="cpu")
            assert torch.equal(ind, TF.max_pool2d(x.detach(), 3, 2, 1, return_indices=True)[1])
print("ok")
"""


@pytest.mark.parametrize("isa", ["native", "avx2", "default"])
def test_cpu_simd_copies(isa):
    """The CPU pools' innermost loops are compiled for AVX-512, AVX2 and the baseline, the
    widest the CPU has chosen at run time; PYDL_CPU_SIMD caps the choice, so each copy this
    machine has runs here: every pool, layout and dtype against the oracle."""
    run_with_cpu_simd(isa, ["-c", _SIMD_SCRIPT])


def test_cpu_max_forward_vector_path_ties_nan():
    """The CPU's NCHW max forward takes four outputs at a time where their windows are whole
    (float or bfloat16, stride 1 or 2): on rows wide enough for it, with ties (a value range of 5 and
    zeros, as after a ReLU), NaN and -inf, values and indices must be torch's exactly --
    ties keep the first tap in window order, NaN the last."""
    if not pydl.backends()["cpu"].usable:
        pytest.skip("the C++ extension is not built")
    g = torch.Generator().manual_seed(7)
    x = torch.randint(-2, 3, (2, 3, 19, 45), generator=g).float().clamp_min(0)
    x[0, 0, 4, 10:14] = float("nan")
    x[0, 1, 7, 20] = float("nan")
    x[1, 2, :, 30:] = float("-inf")
    x[1, 0, 3:9, :] = float("-inf")
    for (k, s, p, d, ceil), dt in itertools.product(
            [(3, 2, 1, 1, False), (3, 1, 1, 1, False), (2, 2, 0, 1, False), (3, 2, 0, 1, True),
             (4, 1, 2, 1, False), (3, 2, 1, 2, False), (3, 1, 0, 3, True), (5, 2, 2, 1, True),
             (1, 2, 0, 1, False)], (torch.float32, torch.bfloat16)):
        x = x.to(dt)
        y, ind = F.max_pool2d(x, k, s, p, d, ceil, return_indices=True, backend="cpu")
        yt, indt = TF.max_pool2d(x, k, s, p, d, ceil, return_indices=True)
        assert torch.equal(y.isnan(), yt.isnan()), (k, s, p, d, ceil)
        assert torch.equal(y.nan_to_num(), yt.nan_to_num()) and torch.equal(ind, indt), (k, s, p, d, ceil)
        assert torch.equal(F.max_pool2d(x, k, s, p, d, ceil, backend="cpu").nan_to_num(), yt.nan_to_num())


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_nan_and_inf_propagate(backend, device, layout):
    """NaN wins a max window (torch's rule), -inf/+inf are ordinary values; avg pools
    spread NaN to every window that holds it."""
    x = make_input((2, 3, 7, 9), torch.float32, device, seed=6)
    x[0, 0, 1, 1] = float("nan")
    x[0, 1, 3, 4] = float("nan")
    x[0, 1, 3, 5] = float("nan")  # two NaNs in a window
    x[1, 2, 2, 2] = float("inf")
    x[1, 0, :, :] = -float("inf")  # a plane of -inf: torch's index of the first tap
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    for k, s, p, d, ceil in MAX_CONFIGS:
        y, ind = F.max_pool2d(x, k, s, p, d, ceil, return_indices=True, backend=backend)
        yt, indt = TF.max_pool2d(x.contiguous(), k, s, p, d, ceil, return_indices=True)
        assert torch.equal(y.isnan(), yt.isnan())
        assert torch.equal(y.nan_to_num(), yt.nan_to_num())
        assert torch.equal(ind, indt), (k, s, p, d, ceil)
    y, ind = F.adaptive_max_pool2d(x, (3, 4), return_indices=True, backend=backend)
    yt, indt = TF.adaptive_max_pool2d(x.contiguous(), (3, 4), return_indices=True)
    assert torch.equal(y.nan_to_num(), yt.nan_to_num()) and torch.equal(ind, indt)
    for f, tf in [(lambda t, **kw: F.avg_pool2d(t, 3, 2, 1, **kw), lambda t: TF.avg_pool2d(t, 3, 2, 1)),
                  (lambda t, **kw: F.adaptive_avg_pool2d(t, (3, 4), **kw),
                   lambda t: TF.adaptive_avg_pool2d(t, (3, 4)))]:
        y, yt = f(x, backend=backend), tf(x.contiguous())
        assert torch.equal(y.isnan(), yt.isnan())
        assert torch.allclose(y.nan_to_num(), yt.nan_to_num(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- unbatched, empty, values-only
def _all_ops(backend):
    return [
        ("max", lambda t: F.max_pool2d(t, 3, 2, 1, backend=backend),
         lambda t: TF.max_pool2d(t, 3, 2, 1)),
        ("avg", lambda t: F.avg_pool2d(t, 3, 2, 1, True, False, backend=backend),
         lambda t: TF.avg_pool2d(t, 3, 2, 1, True, False)),
        ("aavg", lambda t: F.adaptive_avg_pool2d(t, (3, None), backend=backend),
         lambda t: TF.adaptive_avg_pool2d(t, (3, None))),
        ("amax", lambda t: F.adaptive_max_pool2d(t, (4, 3), backend=backend),
         lambda t: TF.adaptive_max_pool2d(t, (4, 3))),
    ]


def has_empty_window(size, kernel, stride, padding, dilation, ceil_mode):
    """Whether some max-pool window holds no input element (all its taps in the padding or
    past the input: padding plus dilation, or ceil_mode). torch accepts these (its
    -inf outputs: pytorch/pytorch#114216) and returns an index computed past the window's
    first column -- the next row's element, or one past the plane for the last row -- and
    its CPU backward adds the gradient at that index, writing one element past the plane
    (past the tensor, for its last plane)."""
    for i, k, s, p, d in zip(size, kernel, stride, padding, dilation):
        o = (i + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
        if ceil_mode and (o - 1) * s >= i + p:
            o -= 1
        if any(all(not 0 <= q * s - p + j * d < i for j in range(k)) for q in range(o)):
            return True
    return False


@pytest.mark.parametrize("backend,device", backend_params())
def test_max_pool_empty_windows(backend, device):
    """Windows that hold no input element (dilation > 1 with padding or ceil_mode): the
    forward gives torch's values (-inf) and indices (a position outside the window, even
    outside the plane). The backward never writes outside the plane: the CPU backend adds
    each output's gradient at its index when that lies in the plane, as torch's CPU
    backward does (which also writes past the plane when it does not -- so it is not run
    here: the reference is built from torch's indices); the CUDA and Triton backends gather
    per input over the windows that could hold it, so such a gradient lands at an in-plane
    index or nowhere -- every element no index names gets exactly 0."""
    cases = [((2, 3, 5, 1), (1, 2), (1, 2), (0, 1), (1, 2), True),   # W = 1: every window empty
             ((2, 2, 5, 1), (3, 2), (3, 2), (1, 1), (3, 3), True),
             ((1, 3, 2, 2), (2, 2), (2, 2), (0, 1), (1, 3), False),
             ((3, 1, 7, 1), (2, 2), (2, 1), (1, 1), (2, 2), True)]
    for shape, k, s, p, d, ceil in cases:
        assert has_empty_window(shape[2:], k, s, p, d, ceil)
        for layout in ("contiguous", "channels_last"):
            what = f"{shape} {k} {s} {p} {d} {ceil} {layout}"
            x = make_input(shape, torch.float32, device, layout, seed=3)
            # torch's NCHW kernels (on CUDA its channels_last one starts an empty window's
            # index at 0 instead of at its first tap; pydl's kernels do as the others)
            yt, it = TF.max_pool2d(x.contiguous(), k, s, p, d, ceil, return_indices=True)
            xg = x.clone().requires_grad_()
            y, i = F.max_pool2d(xg, k, s, p, d, ceil, return_indices=True, backend=backend)
            assert torch.equal(y, yt) and torch.equal(i, it), what
            g = make_input(y.shape, torch.float32, device, seed=4)
            y.backward(g)
            plane = shape[2] * shape[3]
            flat_i = it.reshape(-1, it.shape[2] * it.shape[3])
            flat_g = g.reshape(flat_i.shape)
            in_plane = (flat_i >= 0) & (flat_i < plane)
            ref = torch.zeros(flat_i.shape[0], plane + 1, dtype=torch.float64, device=device)
            # out-of-plane indices go to the extra column, which is then dropped
            ref.scatter_add_(1, torch.where(in_plane, flat_i, plane), flat_g.double())
            got = xg.grad.reshape(ref.shape[0], plane).double()
            if backend == "cpu":
                torch.testing.assert_close(got, ref[:, :plane], rtol=1e-6, atol=1e-6, msg=what)
            else:
                named = torch.zeros(flat_i.shape[0], plane + 1, dtype=torch.bool, device=device)
                named.scatter_(1, torch.where(in_plane, flat_i, plane), True)
                assert torch.isfinite(got).all() and (got[~named[:, :plane]] == 0).all(), what



@pytest.mark.parametrize("backend,device", backend_params())
def test_unbatched_and_empty_batch(backend, device):
    for name, fn, tfn in _all_ops(backend):
        x3 = make_input((3, 7, 9), torch.float64, device, requires_grad=True, seed=7)
        check_against_torch(fn, tfn, [x3], what=f"{name} unbatched")
        x0 = make_input((0, 3, 7, 9), torch.float32, device, requires_grad=True)
        y = fn(x0)
        assert y.shape == tfn(x0).shape
        y.sum().backward()
        assert x0.grad.shape == x0.shape
    # return_indices on unbatched input: 3-D indices, as torch
    x3 = make_input((3, 7, 9), torch.float32, device, seed=8)
    y, ind = F.max_pool2d(x3, 2, return_indices=True, backend=backend)
    yt, indt = TF.max_pool2d(x3, 2, return_indices=True)
    assert torch.equal(y, yt) and torch.equal(ind, indt)
    y, ind = F.adaptive_max_pool2d(x3, 3, return_indices=True, backend=backend)
    yt, indt = TF.adaptive_max_pool2d(x3, 3, return_indices=True)
    assert torch.equal(y, yt) and torch.equal(ind, indt)


@pytest.mark.parametrize("backend,device", backend_params())
def test_adaptive_zero_output_size(backend, device):
    # torch allows an output size of 0 for adaptive pooling: an empty output, zero grads
    x = make_input((2, 3, 5, 4), torch.float32, device, requires_grad=True)
    for fn, tfn in [(F.adaptive_avg_pool2d, TF.adaptive_avg_pool2d),
                    (F.adaptive_max_pool2d, TF.adaptive_max_pool2d)]:
        y = fn(x, (0, 2), backend=backend)
        assert y.shape == tfn(x, (0, 2)).shape == (2, 3, 0, 2)
        (g,) = torch.autograd.grad(y.sum(), x)
        assert torch.equal(g, torch.zeros_like(x))


@pytest.mark.parametrize("backend,device", backend_params())
def test_values_only_forward(backend, device):
    """Without return_indices and without autograd, the max pools run the kernel variant
    that writes no indices (the op returns an empty index tensor)."""
    ops = torch.ops.pydl_triton if backend == "triton" else torch.ops.pydl
    x = make_input((2, 3, 7, 9), torch.float32, device, seed=9)
    y, ind = ops.max_pool2d_fwd(x, [3, 3], [2, 2], [1, 1], [1, 1], [4, 5], False)
    assert ind.numel() == 0 and torch.equal(y, TF.max_pool2d(x, 3, 2, 1))
    y, ind = ops.adaptive_max_pool2d_fwd(x, [3, 4], False)
    assert ind.numel() == 0 and torch.equal(y, TF.adaptive_max_pool2d(x, (3, 4)))
    with torch.no_grad():
        assert torch.equal(F.max_pool2d(x.requires_grad_(), 3, 2, 1, backend=backend),
                           TF.max_pool2d(x, 3, 2, 1))


# ---------------------------------------------------------------------- determinism
@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_backward_bitwise_deterministic(backend, device, layout):
    """Overlapping windows (many outputs per input element): the backward of every op
    gives the same bits on every run."""
    shape = (2, 5, 9, 7) if interpreted(backend, device) else (4, 67, 31, 29)
    x = make_input(shape, torch.float32, device, layout, requires_grad=True, seed=10)
    fns = [lambda t: F.max_pool2d(t, 3, 1, 1, backend=backend),
           lambda t: F.avg_pool2d(t, 3, 1, 1, backend=backend),
           lambda t: F.adaptive_avg_pool2d(t, (13, 11), backend=backend),
           lambda t: F.adaptive_max_pool2d(t, (13, 11), backend=backend)]
    for fn in fns:
        y = fn(x)
        g = make_input(y.shape, torch.float32, device, seed=11)
        first = torch.autograd.grad(y, x, g)[0]
        for _ in range(3):
            assert torch.equal(torch.autograd.grad(fn(x), x, g)[0], first)


def test_cpu_backward_blocks_and_thread_counts():
    """The CPU backward scatters per plane (NCHW) or per (image, channel block) (NHWC),
    accumulating float16/bfloat16 in a float buffer of at most 2^18 values: shapes with
    several channel blocks and a buffer-capped block, against the float64 oracle, and the
    same bits with 1 and 2 threads (disjoint windows take the direct-store path)."""
    if not pydl.backends()["cpu"].usable:
        pytest.skip("the C++ extension is not built")
    fns = [(lambda t: F.max_pool2d(t, 3, 2, 1, backend="cpu"), lambda t: TF.max_pool2d(t, 3, 2, 1)),
           (lambda t: F.avg_pool2d(t, 3, 2, 1, backend="cpu"), lambda t: TF.avg_pool2d(t, 3, 2, 1)),
           (lambda t: F.avg_pool2d(t, 2, backend="cpu"), lambda t: TF.avg_pool2d(t, 2)),
           (lambda t: F.adaptive_avg_pool2d(t, 1, backend="cpu"), lambda t: TF.adaptive_avg_pool2d(t, 1)),
           (lambda t: F.adaptive_max_pool2d(t, (5, 7), backend="cpu"),
            lambda t: TF.adaptive_max_pool2d(t, (5, 7)))]
    threads = torch.get_num_threads()
    try:
        # (1, 100, ...) channels-last: 4 channel blocks of 25; 100 x 101 planes cap a 16-bit
        # block's buffer at 25 channels
        for shape, dt in [((1, 100, 13, 11), torch.float32), ((1, 40, 100, 101), torch.bfloat16),
                          ((2, 3, 100, 101), torch.float16)]:
            for layout in ("contiguous", "channels_last"):
                x = make_input(shape, dt, layout=layout, requires_grad=True, seed=12)
                for ours, theirs in fns:
                    torch.set_num_threads(2)
                    check_against_torch(ours, theirs, [x], what=f"{shape}/{dt}/{layout}")
                    y = ours(x)
                    g = make_input(y.shape, dt, seed=13)
                    two = torch.autograd.grad(y, x, g)[0]
                    torch.set_num_threads(1)
                    assert torch.equal(torch.autograd.grad(ours(x), x, g)[0], two)
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------- gradcheck, opcheck, compile
@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[1] == "cpu"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck(backend, device, layout):
    x = make_input((2, 3, 6, 5), torch.float64, device, layout, requires_grad=True, seed=12)
    fns = [lambda t: F.max_pool2d(t, 3, 2, 1, 1, True, backend=backend),
           lambda t: F.max_pool2d(t, (2, 3), 1, (1, 0), (2, 1), backend=backend),
           lambda t: F.avg_pool2d(t, 3, 2, 1, True, False, backend=backend),
           lambda t: F.avg_pool2d(t, 2, 1, 1, False, True, 3, backend=backend),
           lambda t: F.adaptive_avg_pool2d(t, (4, 3), backend=backend),
           lambda t: F.adaptive_max_pool2d(t, (4, 7), backend=backend)]
    # under the interpreter every call is slow: gradcheck's fast mode (one random
    # direction instead of every input element) keeps it to a few seconds
    fast = interpreted(backend, device)
    for fn in fns:
        assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-8, fast_mode=fast)


@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[1] == "cpu"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradgradcheck(backend, device, layout):
    """Double backward: the backward ops have autograd formulas of their own (gather at
    the indices for max, the forward pooling for avg), not torch's silent zero."""
    x = make_input((1, 3, 7, 6), torch.float64, device, layout, requires_grad=True, seed=14)
    fns = [lambda t: F.max_pool2d(t, 3, 2, 1, backend=backend),
           lambda t: F.avg_pool2d(t, 3, 2, 1, True, False, backend=backend),
           lambda t: F.adaptive_avg_pool2d(t, (4, 3), backend=backend),
           lambda t: F.adaptive_max_pool2d(t, (4, 3), backend=backend)]
    fast = interpreted(backend, device)
    for fn in fns:
        assert torch.autograd.gradgradcheck(fn, (x,), fast_mode=fast)
    # third derivatives of max pooling: a clear error, never a silent zero
    y = F.max_pool2d(x, 3, 2, 1, backend=backend)
    (g,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.pow(2).sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="third and higher derivatives"):
        torch.autograd.grad(gg.sum(), x)


def _ops_for(backend):
    return torch.ops.pydl_triton if backend == "triton" else torch.ops.pydl


@pytest.mark.parametrize("backend,device", backend_params())
def test_opcheck(backend, device):
    ops = _ops_for(backend)
    for layout in ("contiguous", "channels_last"):
        x = make_input((2, 3, 7, 6), torch.float32, device, layout, requires_grad=True)
        cl = layout == "channels_last"
        g = make_input((2, 3, 4, 3), torch.float32, device, layout, seed=2)
        torch.library.opcheck(ops.max_pool2d_fwd.default,
                              (x, [3, 2], [2, 2], [1, 1], [1, 1], [4, 3], True))
        torch.library.opcheck(ops.max_pool2d_fwd.default,
                              (x.detach(), [3, 2], [2, 2], [1, 1], [1, 1], [4, 3], False))
        _, ind = ops.max_pool2d_fwd(x.detach(), [3, 2], [2, 2], [1, 1], [1, 1], [4, 3], True)
        torch.library.opcheck(ops.max_pool2d_bwd.default,
                              (g, ind, [7, 6], [3, 2], [2, 2], [1, 1], [1, 1], cl))
        torch.library.opcheck(ops.avg_pool2d_fwd.default, (x, [3, 2], [2, 2], [1, 1], [4, 3], False, 0))
        torch.library.opcheck(ops.avg_pool2d_bwd.default,
                              (g, [7, 6], [3, 2], [2, 2], [1, 1], True, 2, cl))
        torch.library.opcheck(ops.adaptive_avg_pool2d_fwd.default, (x, [4, 3]))
        torch.library.opcheck(ops.adaptive_avg_pool2d_bwd.default, (g, [7, 6], cl))
        torch.library.opcheck(ops.adaptive_max_pool2d_fwd.default, (x, [4, 3], True))
        _, ind = ops.adaptive_max_pool2d_fwd(x.detach(), [4, 3], True)
        torch.library.opcheck(ops.adaptive_max_pool2d_bwd.default, (g, ind, [7, 6], cl))
        torch.library.opcheck(ops.pool_gather.default, (x.detach(), ind, cl))


@pytest.mark.parametrize("backend,device", backend_params())
def test_compile_fullgraph(backend, device):
    def block(x):
        a = F.max_pool2d(x, 3, 2, 1, backend=backend)
        b = F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False, backend=backend)
        c = F.adaptive_avg_pool2d(a + b, 2, backend=backend)
        y, ind = F.adaptive_max_pool2d(x, (4, 5), return_indices=True, backend=backend)
        return c, y, ind

    x = make_input((2, 3, 7, 9), torch.float32, device, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True,
                             backend="aot_eager" if interpreted(backend, device) else "inductor")
    out, out2 = block(x), compiled(x2)
    for a, b in zip(out, out2):
        assert torch.equal(a, b)
    gs = [make_input(out[0].shape, torch.float32, device, seed=1),
          make_input(out[1].shape, torch.float32, device, seed=2)]
    (g1,) = torch.autograd.grad(out[:2], x, gs)
    (g2,) = torch.autograd.grad(out2[:2], x2, gs)
    # the compiled backward may add the three ops' contributions to dx in another order
    assert torch.allclose(g1, g2, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend,device", backend_params())
def test_compile_dynamic_spatial_size(backend, device):
    """Output and input sizes travel as SymInt: a new image size reuses the graph."""
    from torch._dynamo.testing import CompileCounterWithBackend

    def block(x):
        a = F.max_pool2d(x, 3, 2, 1, ceil_mode=True, backend=backend)
        b = F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, backend=backend)
        return F.adaptive_avg_pool2d(a + b, 2, backend=backend), \
            F.adaptive_max_pool2d(x, (None, 3), backend=backend)

    cnt = CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    compiled = torch.compile(block, backend=cnt, dynamic=True, fullgraph=True)
    for shape in [(2, 3, 9, 7), (2, 3, 11, 13)]:
        x = make_input(shape, torch.float32, device, requires_grad=True, seed=shape[2])
        outs, ref = compiled(x), block(x)
        for a, b in zip(outs, ref):
            assert torch.equal(a, b)
        ga = torch.autograd.grad([o.sum() for o in outs], x)[0]
        gb = torch.autograd.grad([o.sum() for o in ref], x)[0]
        assert torch.allclose(ga, gb, rtol=1e-6, atol=1e-7)
    assert cnt.frame_count == 1


# ----------------------------------------------------------------------- nn modules
MODULES = [
    (pydl.nn.MaxPool2d, nn.MaxPool2d, [dict(kernel_size=3, stride=2, padding=1),
                                       dict(kernel_size=(2, 3), dilation=2, ceil_mode=True),
                                       dict(kernel_size=2, return_indices=True)]),
    (pydl.nn.AvgPool2d, nn.AvgPool2d, [dict(kernel_size=3, stride=2, padding=1),
                                       dict(kernel_size=2, ceil_mode=True, count_include_pad=False,
                                            divisor_override=3)]),
    (pydl.nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool2d, [dict(output_size=1),
                                                       dict(output_size=(None, 3))]),
    (pydl.nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool2d, [dict(output_size=(3, 2)),
                                                       dict(output_size=4, return_indices=True)]),
]
ATTRS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices",
         "count_include_pad", "divisor_override", "output_size")


@pytest.mark.parametrize("ours,theirs,kwargs_list", MODULES, ids=[m[1].__name__ for m in MODULES])
def test_module_is_a_drop_in(ours, theirs, kwargs_list):
    for kw in kwargs_list:
        a, b = ours(**kw), theirs(**kw)
        assert isinstance(a, theirs)
        assert repr(a) == repr(b)
        assert a.state_dict().keys() == b.state_dict().keys()
        for attr in ATTRS:
            assert getattr(a, attr, None) == getattr(b, attr, None), attr
        x = make_input((2, 4, 9, 7), torch.float32)
        ya, yb = a(x), b(x)
        if isinstance(yb, tuple):
            assert torch.equal(ya[0], yb[0]) and torch.equal(ya[1], yb[1])
        else:
            assert torch.allclose(ya, yb, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend,device", backend_params())
def test_small_cnn_with_pydl_pools_matches_torch(backend, device):
    """A conv net whose pools are pydl's gives torch's outputs and gradients."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(3, 2, 1), nn.Conv2d(8, 8, 3),
                        nn.AvgPool2d(2, ceil_mode=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 5)).to(device)
    ours = nn.Sequential(ref[0], pydl.nn.MaxPool2d(3, 2, 1, backend=backend), ref[2],
                         pydl.nn.AvgPool2d(2, ceil_mode=True, backend=backend),
                         pydl.nn.AdaptiveAvgPool2d(1, backend=backend), ref[5], ref[6])
    x = make_input((2, 3, 13, 11), torch.float32, device)
    y_ref = ref(x)
    g_ref = torch.autograd.grad(y_ref.sum(), list(ref.parameters()))
    y = ours(x)
    g = torch.autograd.grad(y.sum(), list(ours.parameters()))
    assert torch.allclose(y, y_ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(g, g_ref):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


# ------------------------------------------- CUDA kernels, emulated on the host (no GPU)
@needs_gxx
def test_cuda_kernels_emulated_on_host(tmp_path):
    """The CUDA kernels of csrc/cuda/pool_device.cuh, compiled for the host with fibers as
    CUDA threads (tests/pool_cuda_emulation.cpp): max (values, indices, gather), avg
    (count_include_pad, divisor_override, ceil_mode), adaptive avg/max, the global average
    kernels, forward and backward, NCHW and channels_last (scalar and 16-byte vectors),
    float, float64 and a bfloat16 stand-in, against a float64 reference written from
    torch's definitions. Checks their indexing where no GPU is available."""
    run_cuda_emulation("pool", tmp_path)


# ------------------------------------------------------------------------- bad input
def test_bad_input():
    x = make_input((2, 3, 5, 5), torch.float32)
    cases = [
        (lambda: F.max_pool2d(x, 0), RuntimeError, "kernel_size must be greater than zero"),
        (lambda: F.avg_pool2d(x, -1, 1), RuntimeError, "kernel_size must be greater than zero"),
        (lambda: F.max_pool2d(x, 3, 0), RuntimeError, "stride must be greater than zero"),
        (lambda: F.avg_pool2d(x, 2, -1), RuntimeError, "stride must be greater than zero"),
        (lambda: F.max_pool2d(x, 2, dilation=0), RuntimeError, "dilation must be greater than zero"),
        (lambda: F.max_pool2d(x, 3, padding=2), RuntimeError, "padding must be at most half"),
        (lambda: F.avg_pool2d(x, 3, padding=2), RuntimeError, "padding must be at most half"),
        (lambda: F.max_pool2d(x, 3, padding=-1), RuntimeError, "padding must be non-negative"),
        (lambda: F.max_pool2d(x, 7), RuntimeError, "output would be empty"),
        (lambda: F.avg_pool2d(x, (2, 6)), RuntimeError, "output would be empty"),
        (lambda: F.max_pool2d(torch.randn(5, 5), 2), RuntimeError, "input must be 3-D"),
        (lambda: F.avg_pool2d(torch.randn(1, 2, 5, 5, 5), 2), RuntimeError, "input must be 3-D"),
        (lambda: F.adaptive_avg_pool2d(torch.randn(5), 2), RuntimeError, "input must be 3-D"),
        (lambda: F.adaptive_max_pool2d(torch.randn(2, 0, 5, 5), 2), RuntimeError, "non-zero C, H and W"),
        (lambda: F.max_pool2d(torch.randn(2, 3, 0, 5), 1), RuntimeError, "non-zero C, H and W"),
        (lambda: F.adaptive_avg_pool2d(x, (-1, 2)), RuntimeError, "output_size must be >= 0"),
        (lambda: F.adaptive_max_pool2d(x, -3), RuntimeError, "output_size must be >= 0"),
        (lambda: F.adaptive_avg_pool2d(x, (2, 2, 2)), RuntimeError, "output_size must be an int or a pair"),
        (lambda: F.max_pool2d(x, (2, 2, 2)), RuntimeError, "kernel_size must either be a single int"),
        (lambda: F.max_pool2d(x, 2.0), TypeError, "kernel_size must be an int"),
        (lambda: F.avg_pool2d(x, 2, divisor_override=0), RuntimeError, "divisor_override must not be zero"),
        (lambda: F.max_pool2d(torch.arange(50).view(2, 5, 5), 2), TypeError, "input must be float32"),
        (lambda: F.max_pool2d([1.0], 2), TypeError, "input must be a torch.Tensor"),
        (lambda: F.max_pool2d(x, 2, backend="cudnn"), ValueError, "backend must be one of"),
    ]
    for fn, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            fn()
    # torch raises RuntimeError for the same argument errors (drop-in error behaviour)
    for fn in [lambda: TF.max_pool2d(x, 0), lambda: TF.max_pool2d(x, 3, padding=2),
               lambda: TF.max_pool2d(x, 7), lambda: TF.adaptive_avg_pool2d(x, (-1, 2))]:
        with pytest.raises(RuntimeError):
            fn()
    # the C++ ops check their arguments too, for direct torch.ops calls
    with pytest.raises(RuntimeError, match="input must be 4-D"):
        torch.ops.pydl.max_pool2d_fwd(x[0], [2, 2], [2, 2], [0, 0], [1, 1], [2, 2], True)
    with pytest.raises(RuntimeError, match="stride must be >= 1"):
        torch.ops.pydl.avg_pool2d_fwd(x, [2, 2], [0, 2], [0, 0], [2, 2], True, 0)
    with pytest.raises(RuntimeError, match="grad_output and indices must have the same shape"):
        torch.ops.pydl.max_pool2d_bwd(torch.randn(2, 3, 2, 2), torch.zeros(2, 3, 2, 1, dtype=torch.long),
                                      [5, 5], [2, 2], [2, 2], [0, 0], [1, 1], False)
