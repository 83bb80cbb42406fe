"""Conv2d: every backend x dtype x layout over a configuration matrix (kernel sizes,
stride, padding incl. 'same'/'valid', dilation, groups incl. depthwise, bias) against the
float64 oracle -- forward and the gradients of input, weight and bias -- plus the fused
ReLU epilogue, unbatched and empty input, gradcheck, opcheck, torch.compile, the
nn.Conv2d drop-in and bad input.

The matrix is pairwise rather than cartesian: each configuration row varies several
factors at once, and every row runs for every dtype and input layout. Under the Triton
interpreter (no GPU) a reduced set of tiny rows runs.

float32 on the GPU: these tests run with torch.backends.cudnn.allow_tf32 = False (full
float32 in both torch and pydl; tests/conftest.py, for every test), except test_tf32_mode
which checks the TF32 mode.
"""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as TF
from torch import nn

import pydl
import pydl.functional as F
from pydl.testing import assert_close, check_against_torch, make_input
from conftest import (DTYPE_IDS, DTYPES, GPU, TRITON_TEST_CONFIG, backend_params, interpreted, needs_gxx,
                      run_cuda_emulation, run_with_cpu_simd)

# torch's own warning when its reference pads for 'same' with an even kernel
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")


# (id, N, C, H, W, OC, kernel, kwargs for F.conv2d, bias)
CONFIGS = [
    ("1x1", 2, 4, 7, 9, 6, (1, 1), {}, True),
    ("3x3_p1", 2, 3, 9, 7, 5, (3, 3), {"padding": 1}, True),
    ("3x3_s2_p1_g2", 2, 4, 11, 9, 6, (3, 3), {"stride": 2, "padding": 1, "groups": 2}, False),
    ("5x5_p2_d2", 1, 3, 13, 11, 4, (5, 5), {"padding": 2, "dilation": 2}, True),
    ("7x7_s2_p3", 2, 3, 15, 13, 8, (7, 7), {"stride": 2, "padding": 3}, False),
    ("3x5_mixed", 2, 4, 9, 11, 6, (3, 5), {"stride": (2, 1), "padding": (1, 2), "dilation": (1, 2),
                                          "groups": 2}, True),
    ("same_3x3_d2", 2, 3, 7, 9, 5, (3, 3), {"padding": "same", "dilation": 2}, True),
    ("same_even_4x2", 2, 4, 9, 7, 4, (4, 2), {"padding": "same", "groups": 2}, True),
    ("valid_3x3", 2, 3, 7, 9, 5, (3, 3), {"padding": "valid"}, False),
    ("depthwise_3x3", 2, 6, 9, 11, 6, (3, 3), {"padding": 1, "groups": 6}, True),
    ("depthwise_x2_s2", 2, 4, 11, 9, 8, (3, 3), {"stride": 2, "padding": 1, "groups": 4}, False),
    ("2x2_s2", 3, 5, 9, 7, 7, (2, 2), {"stride": 2}, True),
]
# tiny rows for the Triton interpreter (it is slow): still 1x1, non-square, stride,
# dilation, 'same' with an even kernel, grouped, depthwise, with and without bias
TINY = [
    ("1x1", 2, 3, 5, 3, 4, (1, 1), {}, True),
    ("3x2_mixed", 1, 4, 5, 7, 4, (3, 2), {"stride": (2, 1), "padding": (1, 2), "dilation": (1, 2),
                                         "groups": 2}, True),
    ("same_even_2x4", 1, 2, 5, 6, 3, (2, 4), {"padding": "same"}, False),
    ("depthwise_s2", 1, 3, 7, 5, 3, (3, 3), {"stride": 2, "padding": 1, "groups": 3}, True),
    ("5x5_p2_d2", 1, 2, 7, 6, 3, (5, 5), {"padding": 2, "dilation": 2}, False),
]
LAYOUTS = ["contiguous", "channels_last"]


def _ids(rows):
    return [r[0] for r in rows]


def _inputs(row, dtype, device, layout, weight_layout="contiguous", seed=0):
    _, N, C, H, W, OC, k, kw, bias = row
    groups = kw.get("groups", 1)
    x = make_input((N, C, H, W), dtype, device, layout, requires_grad=True, seed=seed)
    w = make_input((OC, C // groups) + tuple(k), dtype, device, weight_layout, requires_grad=True,
                   seed=seed + 1, scale=0.5)
    b = make_input((OC,), dtype, device, requires_grad=True, seed=seed + 2) if bias else None
    return x, w, b


def _run(row, backend, dtype, device, layout, weight_layout="contiguous", activation=None):
    kw = row[7]
    x, w, b = _inputs(row, dtype, device, layout, weight_layout)
    ins = [x, w] + ([b] if b is not None else [])

    def ours(x, w, b=None):
        return F.conv2d(x, w, b, activation=activation, backend=backend, **kw)

    def theirs(x, w, b=None):
        y = TF.conv2d(x, w, b, **kw)
        return TF.relu(y) if activation == "relu" else y

    check_against_torch(ours, theirs, ins, what=f"{row[0]}/{backend}/{dtype}/{layout}")


def _matrix():
    out = []
    for p in backend_params():
        rows = TINY if interpreted(*p.values) else CONFIGS
        for r in rows:
            out.append(pytest.param(*p.values, r, id=f"{p.id}-{r[0]}", marks=p.marks))
    return out


@pytest.mark.parametrize("backend,device,row", _matrix())
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_forward_backward(backend, device, row, dtype, layout):
    _run(row, backend, dtype, device, layout)


# rows with several tiles in every GEMM dimension for the largest block configuration
# (M = N*OH*OW > 128, OCg > 128 or several N tiles, K > 32): full and partial tiles
WIDE = [("wide_3x3", 2, 40, 9, 11, 136, (3, 3), {"padding": 1}, True),
        ("wide_g2_s2", 2, 34, 15, 13, 40, (3, 3), {"stride": 2, "padding": 1, "groups": 2}, False)]


@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[0] == "triton"])
def test_triton_every_config(backend, device):
    """The GPU suite runs the Triton conv kernels with their first block configuration
    (conftest.py pins it), but autotuning may pick any: here every configuration in turn,
    forward and all gradients, both layouts, float32 and bfloat16. (Under the interpreter
    there is one configuration and a tiny row.)"""
    from pydl.kernels import conv as tc
    rows = TINY[:2] if interpreted(backend, device) else WIDE
    try:
        for i in range(tc.num_configs()):
            tc.pin_config(i)
            for row in rows:
                for dtype in (torch.float32, torch.bfloat16):
                    for layout in LAYOUTS:
                        _run(row, backend, dtype, device, layout)
    finally:  # back to what conftest set for the rest of the suite
        tc.pin_config(TRITON_TEST_CONFIG)


@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[0] == "triton"])
def test_triton_groups_in_chunks(backend, device, monkeypatch):
    """More groups than a CUDA grid's third axis holds (65535: a depthwise conv under
    torch.vmap has batch x channels groups) run in chunks of groups on channel slices of the
    same tensors. The limit lowered to 2 here, 5 groups take 3 chunks (the last one a single
    group): depthwise and 2 channels a group, forward, all gradients, both layouts, a
    strided NCHW output too."""
    from pydl.kernels import conv as tc
    monkeypatch.setattr(tc, "_MAX_GRID_Z", 2)
    calls = []  # (launcher, groups) of every launcher call, the chunks' included
    for name, at in (("conv2d_fwd", 7), ("conv2d_bwd_input", 6), ("conv2d_bwd_weight", 6)):
        def record(*a, _f=getattr(tc, name), _name=name, _at=at):
            calls.append((_name, a[_at]))
            return _f(*a)
        monkeypatch.setattr(tc, name, record)
    rows = [("chunks_dw", 2, 5, 6, 7, 5, (3, 3), {"padding": 1, "groups": 5}, True),
            ("chunks_g5", 1, 10, 5, 6, 15, (2, 3), {"stride": (2, 1), "groups": 5}, True)]
    for row in rows:
        for layout in LAYOUTS:
            calls.clear()
            _run(row, backend, torch.float32, device, layout)
            for name in ("conv2d_fwd", "conv2d_bwd_input", "conv2d_bwd_weight"):
                assert [g for f, g in calls if f == name][-3:] == [2, 2, 1], (name, calls)


@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[1] == "cuda"])
def test_more_groups_than_a_grid_holds(backend, device):
    """65539 groups of 2 channels (a grouped conv under torch.vmap has batch x groups): more
    than a CUDA grid's z axis holds (65535), so both GPU backends launch in chunks of groups
    (csrc/cuda/conv.cpp for_group_chunks, kernels/conv.py _group_chunks); forward and all
    gradients against the float64 reference, both layouts. The error allowed is twice that
    of torch's CPU conv in the same dtype (whether cuDNN takes so many groups is not what
    is tested here)."""
    G = 65539
    for dtype in (torch.float32, torch.bfloat16):
        for layout in LAYOUTS:
            x = make_input((1, 2 * G, 3, 4), dtype, device, layout, requires_grad=True, seed=1)
            w = make_input((2 * G, 2, 3, 3), dtype, device, requires_grad=True, seed=2, scale=0.5)
            b = make_input((2 * G,), dtype, device, requires_grad=True, seed=3)
            y = F.conv2d(x, w, b, padding=1, groups=G, backend=backend)
            g = make_input(y.shape, dtype, device, seed=4)
            got = (y,) + torch.autograd.grad(y, (x, w, b), g)

            def torch_cpu(dt):
                xr, wr, br = (t.detach().cpu().to(dt).requires_grad_() for t in (x, w, b))
                yr = TF.conv2d(xr, wr, br, padding=1, groups=G)
                return (yr,) + torch.autograd.grad(yr, (xr, wr, br), g.cpu().to(dt))
            for name, a, ref, same in zip(("y", "dx", "dw", "db"), got, torch_cpu(torch.float64),
                                          torch_cpu(dtype)):
                assert_close(a.cpu(), ref, same, f"{name} {dtype} {layout}")


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_channels_last_weight(backend, device, dtype):
    # a channels_last weight alone makes torch's output channels_last (depthwise excepted)
    rows = TINY if interpreted(backend, device) else CONFIGS
    for row in rows[1:3] + rows[3:4]:
        _run(row, backend, dtype, device, "contiguous", weight_layout="channels_last")


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_relu_epilogue(backend, device, dtype):
    rows = TINY if interpreted(backend, device) else CONFIGS
    for row in (rows[1], rows[3]):
        for layout in LAYOUTS:
            _run(row, backend, dtype, device, layout, activation="relu")


@pytest.mark.parametrize("backend,device", backend_params())
def test_unbatched_and_empty(backend, device):
    # unbatched 3-D input: a 3-D output, gradients as torch
    x = make_input((3, 6, 5), torch.float32, device, requires_grad=True)
    w = make_input((4, 3, 3, 3), torch.float32, device, requires_grad=True, seed=1)
    b = make_input((4,), torch.float32, device, requires_grad=True, seed=2)
    y = check_against_torch(lambda x, w, b: F.conv2d(x, w, b, padding=1, backend=backend),
                            lambda x, w, b: TF.conv2d(x, w, b, padding=1), [x, w, b])
    assert y.shape == (4, 6, 5)
    # empty batch: an empty output of the right shape; weight and bias gradients are zero
    for layout in LAYOUTS:
        x0 = make_input((0, 3, 6, 5), torch.float32, device, layout, requires_grad=True)
        y0 = F.conv2d(x0, w, b, stride=2, padding=1, backend=backend)
        y0_t = TF.conv2d(x0, w, b, stride=2, padding=1)
        assert y0.shape == y0_t.shape == (0, 4, 3, 3)
        y0.sum().backward()
        assert x0.grad.shape == x0.shape
        assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))
        w.grad = b.grad = None


@pytest.mark.parametrize("backend,device", backend_params())
def test_needs_input_grad(backend, device):
    """Only the gradients autograd asks for are computed and returned."""
    x = make_input((2, 4, 6, 5), torch.float32, device, requires_grad=True)
    w = make_input((6, 2, 3, 3), torch.float32, device, seed=1)         # frozen weight
    b = make_input((6,), torch.float32, device, requires_grad=True, seed=2)
    check_against_torch(lambda x, w, b: F.conv2d(x, w, b, groups=2, backend=backend),
                        lambda x, w, b: TF.conv2d(x, w, b, groups=2), [x, w, b])
    x2 = x.detach()                                                       # frozen input
    w2 = w.detach().requires_grad_()
    y = F.conv2d(x2, w2, None, groups=2, backend=backend)
    (gw,) = torch.autograd.grad(y.sum(), [w2])
    (gw_t,) = torch.autograd.grad(TF.conv2d(x2, w2, None, groups=2).sum(), [w2])
    assert torch.allclose(gw, gw_t, rtol=1e-5, atol=1e-5)


# the C++ CPU kernels only: the Triton interpreter is far too slow for gradcheck's
# hundreds of forward calls (its float64 gradients are checked by the matrix above)
@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[0] == "cpu"])
@pytest.mark.parametrize("kw,activation", [({"stride": 2, "padding": 1, "groups": 2}, None),
                                           ({"padding": "same", "dilation": (2, 1)}, None),
                                           ({"padding": 1}, "relu")])
def test_gradcheck(backend, device, kw, activation):
    groups = kw.get("groups", 1)
    x = make_input((2, 4, 5, 6), torch.float64, device, requires_grad=True, seed=3)
    w = make_input((4, 4 // groups, 3, 2), torch.float64, device, requires_grad=True, seed=4)
    b = make_input((4,), torch.float64, device, requires_grad=True, seed=5)
    assert torch.autograd.gradcheck(
        lambda x, w, b: F.conv2d(x, w, b, activation=activation, backend=backend, **kw), (x, w, b),
        eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[0] == "cpu"])
def test_gradgradcheck(backend, device):
    """Double backward (the backward ops have autograd formulas of their own)."""
    x = make_input((1, 4, 5, 4), torch.float64, device, requires_grad=True, seed=6)
    w = make_input((4, 2, 2, 3), torch.float64, device, requires_grad=True, seed=7)
    b = make_input((4,), torch.float64, device, requires_grad=True, seed=8)
    assert torch.autograd.gradgradcheck(
        lambda x, w, b: F.conv2d(x, w, b, stride=(2, 1), padding=(1, 0), groups=2, backend=backend),
        (x, w, b), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend,device", backend_params())
def test_double_backward_matches_torch(backend, device):
    """A gradient penalty: d/d(x, w, b) of |d(y . g)/d(x, w)|^2, against torch (float64)."""
    def penalty(conv, x, w, b):
        y = conv(x, w, b, stride=2, padding=1, groups=2)
        gx, gw = torch.autograd.grad((y * g).sum(), [x, w], create_graph=True)
        return (gx * gx).sum() + (gw * gw).sum() + y.sum()

    ins = [make_input(sh, torch.float64, device, requires_grad=True, seed=i + 10)
           for i, sh in enumerate([(2, 4, 6, 5), (4, 2, 3, 3), (4,)])]
    g = make_input((2, 4, 3, 3), torch.float64, device, seed=20)
    ours = torch.autograd.grad(penalty(lambda *a, **k: F.conv2d(*a, **k, backend=backend), *ins), ins)
    ref = torch.autograd.grad(penalty(TF.conv2d, *ins), ins)
    for a, r in zip(ours, ref):
        assert torch.allclose(a, r, rtol=1e-10, atol=1e-10)


def _ops_for(backend):
    return torch.ops.pydl_triton if backend == "triton" else torch.ops.pydl


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("layout", LAYOUTS)
def test_opcheck(backend, device, layout):
    ops = _ops_for(backend)
    x = make_input((2, 4, 5, 6), torch.float32, device, layout, requires_grad=True)
    w = make_input((4, 2, 3, 2), torch.float32, device, requires_grad=True, seed=1)
    b = make_input((4,), torch.float32, device, requires_grad=True, seed=2)
    cl = layout == "channels_last"
    geom = ([2, 1], [1, 0, 1, 1], [1, 2], 2)
    torch.library.opcheck(ops.conv2d_fwd.default, (x, w, b) + geom + ("relu", cl))
    torch.library.opcheck(ops.conv2d_fwd.default, (x, w, None) + geom + ("none", cl))
    y = ops.conv2d_fwd(x.detach(), w.detach(), b.detach(), *geom, "none", cl)
    # the backward ops are differentiable too (double backward)
    g = make_input(y.shape, torch.float32, device, layout, requires_grad=True, seed=3)
    torch.library.opcheck(ops.conv2d_bwd_input.default, (g, w, list(x.shape)) + geom + (cl,))
    torch.library.opcheck(ops.conv2d_bwd_weight.default, (g, x, list(w.shape)) + geom + (False,))
    torch.library.opcheck(ops.conv2d_bwd_bias.default, (g,))


@pytest.mark.parametrize("backend,device", backend_params())
def test_compile_fullgraph(backend, device):
    def block(x, w1, b1, w2):
        y = F.conv2d(x, w1, b1, padding=1, activation="relu", backend=backend)
        return F.conv2d(y, w2, None, stride=2, groups=2, backend=backend)

    x = make_input((2, 4, 7, 6), torch.float32, device, requires_grad=True)
    ws = [make_input(s, torch.float32, device, requires_grad=True, seed=i + 1)
          for i, s in enumerate([(4, 4, 3, 3), (4,), (6, 2, 2, 2)])]
    x2 = x.detach().clone().requires_grad_()
    ws2 = [t.detach().clone().requires_grad_() for t in ws]
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True,
                             backend="aot_eager" if interpreted(backend, device) else "inductor")
    y, y2 = block(x, *ws), compiled(x2, *ws2)
    assert torch.equal(y, y2)
    g = make_input(y.shape, torch.float32, device, seed=9)
    y.backward(g)
    y2.backward(g)
    for a, b in zip([x] + ws, [x2] + ws2):
        assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("backend,device", backend_params())
def test_autocast(backend, device):
    """Under torch.autocast conv2d computes in the autocast dtype, as torch's does; the
    gradients flow back to the float32 leaves."""
    dt = torch.bfloat16
    x = make_input((2, 4, 7, 6), torch.float32, device, requires_grad=True)
    w = make_input((6, 2, 3, 3), torch.float32, device, requires_grad=True, seed=1)
    b = make_input((6,), torch.float32, device, requires_grad=True, seed=2)
    with torch.autocast(device, dtype=dt):
        y = F.conv2d(x, w, b, padding=1, groups=2, backend=backend)
        y_t = TF.conv2d(x, w, b, padding=1, groups=2)
    assert y.dtype == y_t.dtype == dt
    y_ref = TF.conv2d(*(t.detach().to(dt).double() for t in (x, w, b)), padding=1, groups=2)
    # both round the same bf16 operands' exact products once: within 2 bf16 ulps of |y|max
    scale = float(y_ref.abs().max())
    assert float((y.detach().double() - y_ref).abs().max()) <= 2 * 2 ** -8 * scale
    y.float().sum().backward()
    assert x.grad.dtype == w.grad.dtype == b.grad.dtype == torch.float32


@pytest.mark.skipif(not GPU, reason="needs a GPU with > 8 GB free")
@pytest.mark.xdist_group("big")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("groups", [1, 16], ids=["gemm", "depthwise"])
def test_64bit_indexing(backend, groups):
    """More than 2^31 elements in the input and the output: offsets must be 64-bit."""
    x = torch.randn(2, 16, 8192, 8200, device="cuda", dtype=torch.bfloat16)   # 2.15e9 elements
    w = torch.randn(16, 16 // groups, 3, 3, device="cuda", dtype=torch.bfloat16)
    y = F.conv2d(x, w, padding=1, groups=groups, backend=backend)
    # compare the last rows (the far end of the tensor) against torch on the same slice
    y_t = TF.conv2d(x[:, :, -9:], w, padding=1, groups=groups)
    assert torch.allclose(y[:, :, -8:].float(), y_t[:, :, -8:].float(), rtol=2e-2, atol=5e-2)


def test_tf32_flag_follows_torch():
    """pydl reads torch's cuDNN conv TF32 setting, legacy and new API alike (the mode the
    GPU kernels then use for float32); reading it never raises on mixed APIs."""
    from pydl.ops.conv import tf32_allowed
    cudnn = torch.backends.cudnn
    old = cudnn.conv.fp32_precision
    try:
        cudnn.allow_tf32 = True
        assert tf32_allowed()
        cudnn.allow_tf32 = False
        assert not tf32_allowed()
        cudnn.conv.fp32_precision = "tf32"
        assert tf32_allowed()
        cudnn.conv.fp32_precision = "ieee"   # torch.backends.cudnn.allow_tf32 would raise now
        assert not tf32_allowed()
    finally:
        cudnn.conv.fp32_precision = old


@pytest.mark.skipif(not GPU, reason="TF32 exists only on the GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_tf32_mode(backend):
    """With cudnn.allow_tf32 = True (torch's default) float32 may use TF32 tensor cores, as
    cuDNN does: the result must stay within TF32's accuracy (10-bit mantissa inputs)."""
    torch.backends.cudnn.allow_tf32 = True
    x = make_input((4, 32, 17, 15), torch.float32, "cuda")
    w = make_input((48, 32, 3, 3), torch.float32, "cuda", seed=1)
    y = F.conv2d(x, w, padding=1, backend=backend)
    ref = TF.conv2d(x.double().cpu(), w.double().cpu(), padding=1)
    err = (y.double().cpu() - ref).abs().max().item()
    # TF32 rounds each operand to 11 significant bits: relative error ~2^-11 per product,
    # summed over K = 288 products of O(1) terms
    assert err < 288 * 2 ** -10, err


# ------------------------------------------------ the CPU kernels' GEMM path (csrc/cpu)
# CONFIGS above are small, and most of their grouped rows have so few channels per group
# that the CPU kernels take their direct path (csrc/cpu/conv.cpp, use_direct). These rows
# reach the GEMM path's corners: several column tiles per sample with a ragged last one,
# tiles of several whole samples, a depth (K or OCg) over the 256-step chunk, output
# channels that leave a partial register tile, the 1x1 path that reads x in place (and a
# padded 1x1 that must not), grouped and strided/dilated/non-square geometry.
CPU_GEMM = [
    ("gemm_groups2", 3, 8, 9, 7, 8, (3, 3), {"padding": 1, "groups": 2}, True),
    ("gemm_tiles_per_sample", 2, 4, 23, 23, 20, (3, 3), {"padding": 1}, True),
    ("gemm_K_over_256", 3, 40, 5, 5, 24, (3, 3), {"padding": 1}, False),
    ("gemm_OC_over_256", 2, 4, 4, 4, 272, (3, 3), {"padding": 1}, True),
    ("gemm_1x1_in_place", 2, 20, 6, 5, 18, (1, 1), {}, True),
    ("gemm_1x1_padded", 2, 20, 4, 3, 18, (1, 1), {"padding": (1, 0)}, False),
    ("gemm_mixed_g3", 2, 12, 11, 13, 12, (3, 5), {"stride": (2, 1), "padding": (1, 2), "dilation": (2, 1),
                                                "groups": 3}, True),
    ("gemm_stem_7x7_s2", 2, 3, 20, 18, 16, (7, 7), {"stride": 2, "padding": 3}, False),
    # weight gradient: 18 depth chunks of 256 -> 9 slices of 2 chunks (split-K)
    ("gemm_wgrad_slices", 2, 4, 48, 48, 8, (3, 3), {"padding": 1}, True),
    # forward: one column tile (2 x 8 x 8) of K = 576 rows, gathered once and shared by the
    # channel blocks (kSharedColMin)
    ("gemm_shared_col", 2, 64, 8, 8, 40, (3, 3), {"padding": 1}, True),
    # input gradient: few columns (4 x 3 x 3), so W^T is read in place (kPackWeightCols),
    # K = 45 rows per group: a partial last panel
    ("gemm_wt_in_place_g2", 4, 10, 3, 3, 12, (3, 3), {"padding": 1, "groups": 2}, True),
]


@pytest.mark.parametrize("row", CPU_GEMM, ids=_ids(CPU_GEMM))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("weight_layout", LAYOUTS)
def test_cpu_gemm_path(row, dtype, layout, weight_layout):
    """Every GEMM path of the CPU conv; a channels_last weight is read in place with the
    reduction in tap-major order (and dW, then channels_last too, written so)."""
    if not pydl.backends()["cpu"].usable:
        pytest.skip("the C++ extension is not built")
    _run(row, "cpu", dtype, "cpu", layout, weight_layout=weight_layout)


_ISA_SCRIPT = r"""
import torch, torch.nn.functional as TF, pydl.functional as F
torch.manual_seed(0)
for dt in (torch.float32, torch.float64):
    for (n, c, h, w, oc, k, kw) in [(2, 8, 9, 7, 20, 3, dict(padding=1, groups=2)),
                                    (3, 40, 5, 5, 24, 3, dict(stride=2, padding=1)),
                                    (2, 20, 6, 5, 18, 1, {})]:
        x = torch.randn(n, c, h, w, dtype=dt, requires_grad=True)
        wt = torch.randn(oc, c // kw.get("groups", 1), k, k, dtype=dt, requires_grad=True)
        y = F.conv2d(x, wt, backend="cpu", **kw)
        g = torch.randn_like(y)
        gx, gw = torch.autograd.grad(y, [x, wt], g)
        xr, wr = x.detach().double().requires_grad_(), wt.detach().double().requires_grad_()
        yr = TF.conv2d(xr, wr, **kw)
        gxr, gwr = torch.autograd.grad(yr, [xr, wr], g.double())
        tol = 1e-4 if dt == torch.float32 else 1e-10
        for a, r in ((y, yr), (gx, gxr), (gw, gwr)):
            assert (a.double() - r).abs().max() <= tol * max(1.0, r.abs().max()), (dt, n, c, oc)
print("ok")
"""


@pytest.mark.parametrize("isa", ["default", "avx2", "avx512-narrow"])
def test_cpu_gemm_other_isas(isa):
    """The micro-kernel is chosen at run time (AVX-512, AVX2, baseline): PYDL_CPU_GEMM caps
    the choice, so the kernels this machine would not pick are checked here too."""
    if not pydl.backends()["cpu"].usable:
        pytest.skip("the C++ extension is not built")
    env = dict(os.environ, PYDL_CPU_GEMM=isa)
    run = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], capture_output=True, text=True, env=env,
                         timeout=300)
    assert run.returncode == 0 and "ok" in run.stdout, run.stdout[-2000:] + run.stderr[-2000:]


_KERNELS_SCRIPT = r"""
import sys, torch
import pydl  # noqa: F401
from pydl.testing import make_input
ops, out = torch.ops.pydl, []
# tile columns: 2 x 8 x 8 = 128 (the wide kernel where AVX-512 runs), 2 x 2 x 2 = 8 (narrow)
for (n, c, h, oc, k, pad) in [(2, 24, 8, 40, 3, 1), (2, 24, 2, 40, 3, 1), (3, 20, 6, 18, 1, 0)]:
    for dt in (torch.float32, torch.float64):
        x = make_input((n, c, h, h), dt, seed=1)
        w = make_input((oc, c, k, k), dt, seed=2)
        geom = ([1, 1], [pad] * 4, [1, 1], 1)
        y = ops.conv2d_fwd(x, w, None, *geom, "none", False)
        g = make_input(y.shape, dt, seed=3)
        out += [y, ops.conv2d_bwd_input(g, w, list(x.shape), *geom, False),
                ops.conv2d_bwd_weight(g, x, list(w.shape), *geom, False)]
torch.save(out, sys.argv[1])
"""


def test_cpu_gemm_kernels_agree_bitwise(tmp_path):
    """With AVX-512 a GEMM runs the 12 x 32 or the 16 x 16 micro-kernel by its shape;
    both add each output's terms in the same order, so forcing the 16 x 16 one everywhere
    (PYDL_CPU_GEMM=avx512-narrow) must give bitwise the same results."""
    if not pydl.backends()["cpu"].usable:
        pytest.skip("the C++ extension is not built")
    results = []
    for cap in ("", "avx512-narrow"):
        path = tmp_path / f"out{cap}.pt"
        env = dict(os.environ, PYDL_CPU_GEMM=cap)
        run = subprocess.run([sys.executable, "-c", _KERNELS_SCRIPT, str(path)], capture_output=True, text=True,
                             env=env, timeout=300)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        results.append(torch.load(path))
    for a, b in zip(*results):
        assert torch.equal(a, b)


_DIRECT_SCRIPT = r"""
import sys, torch
import torch.nn.functional as TF
import pydl  # noqa: F401
from pydl.testing import make_input
ops, out = torch.ops.pydl, []
# the direct kernels (depthwise, < 4 output channels a group, K < 16): unit W stride runs
# the per-ISA row loops (rows of 1, 16, 31 values: a vector, a tail), stride 2 the plain ones
cases = [((2, 6, 9, 31), (6, 1, 3, 3), ([1, 1], [1] * 4, [1, 1], 6)),
         ((2, 6, 7, 16), (6, 1, 3, 3), ([1, 1], [0, 1, 2, 1], [1, 2], 6)),
         ((1, 4, 5, 33), (2, 4, 1, 3), ([1, 1], [0] * 4, [1, 1], 1)),
         ((2, 6, 9, 17), (6, 1, 3, 3), ([2, 2], [1] * 4, [1, 1], 6)),
         ((1, 3, 1, 1), (3, 1, 1, 1), ([1, 1], [0] * 4, [1, 1], 3))]
for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
    for xs, ws, geom in cases:
        x, w = make_input(xs, dt, seed=1), make_input(ws, dt, seed=2)
        y = ops.conv2d_fwd(x, w, None, *geom, "none", False)
        g = make_input(y.shape, dt, seed=3)
        dx = ops.conv2d_bwd_input(g, w, list(x.shape), *geom, False)
        dw = ops.conv2d_bwd_weight(g, x, list(w.shape), *geom, False)
        xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
        pad, st, dil, groups = geom[1], geom[0], geom[2], geom[3]
        yr = TF.conv2d(TF.pad(xr, (pad[1], pad[3], pad[0], pad[2])), wr, None, st, 0, dil, groups)
        dxr, dwr = torch.autograd.grad(yr, [xr, wr], g.double())
        # relative to the largest value: float32 sums of <= 27 terms; float16 / bfloat16
        # operands and outputs are rounded to 11 / 8 significant bits (2e-2 > 2 ulp of bf16)
        tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dt, 2e-2)
        for a, r in ((y, yr), (dx, dxr), (dw, dwr)):
            assert (a.double() - r).abs().max() <= tol * max(1.0, r.abs().max()), (dt, xs, ws)
        out += [y, dx, dw]
torch.save(out, sys.argv[1])
print("ok")
"""


@pytest.mark.parametrize("isa", ["native", "avx2", "default"])
def test_cpu_direct_conv_simd_copies(isa, tmp_path):
    """The direct kernels' row loops (csrc/cpu/conv_loops.h) are compiled for AVX-512, AVX2
    and the baseline; PYDL_CPU_SIMD caps the choice, so each copy this machine has runs
    here against the float64 oracle, forward and both gradients, every dtype."""
    run_with_cpu_simd(isa, ["-c", _DIRECT_SCRIPT, str(tmp_path / "out.pt")])


def test_cpu_deterministic_any_thread_count():
    """Every CPU conv output is a sum in a fixed order: bitwise equal run to run and for
    any number of threads (the weight gradient sums over the whole batch)."""
    if not pydl.backends()["cpu"].usable:
        pytest.skip("the C++ extension is not built")
    ops = torch.ops.pydl
    # (x shape, w shape, geometry): the second has 18 depth chunks, so its weight gradient
    # sums 9 slices of 2 chunks (the first: 2 slices of one); the third's forward gathers its
    # one column tile once for all threads (kSharedColMin)
    cases = [((5, 24, 13, 11), (40, 12, 3, 3), ([1, 2], [1, 1, 1, 1], [1, 1], 2)),
             ((2, 4, 48, 48), (24, 4, 3, 3), ([1, 1], [1, 1, 1, 1], [1, 1], 1)),
             ((2, 64, 8, 8), (40, 64, 3, 3), ([1, 1], [1, 1, 1, 1], [1, 1], 1))]
    tensors = []
    for i, (xs, ws, geom) in enumerate(cases):
        x = make_input(xs, torch.float32, seed=3 * i)
        w = make_input(ws, torch.float32, seed=3 * i + 1)
        y = ops.conv2d_fwd(x, w, None, *geom, "none", False)
        tensors.append((x, w, make_input(y.shape, torch.float32, seed=3 * i + 2), geom))

    def run():
        return [out for x, w, g, geom in tensors
                for out in (ops.conv2d_fwd(x, w, None, *geom, "relu", False),
                            ops.conv2d_bwd_input(g, w, list(x.shape), *geom, False),
                            ops.conv2d_bwd_weight(g, x, list(w.shape), *geom, False),
                            ops.conv2d_bwd_bias(g))]

    old = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 3, 1, 2):
            torch.set_num_threads(threads)
            results.append(run())
    finally:
        torch.set_num_threads(old)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


# ------------------------------------------- CUDA kernels, emulated on the host (no GPU)
@needs_gxx
def test_cuda_kernels_emulated_on_host(tmp_path):
    """The CUDA kernels of csrc/cuda/conv_device.cuh, compiled for the host with fibers
    as CUDA threads (tests/conv_cuda_emulation.cpp): every engine (SIMT, WMMA with
    a bfloat16 stand-in, depthwise, split-K weight grad, bias grad) against a float64
    direct convolution. Checks their indexing where no GPU is available."""
    run_cuda_emulation("conv", tmp_path)


@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[0] == "triton"])
def test_triton_wide_index_variant(backend, device, monkeypatch):
    """The Triton conv kernels decompose indices in int32 and switch to int64 only when an
    index space nears 2^31 (kernels/__init__.py::index_type) -- sizes no test can allocate
    on the CPU. Here the int64 variant is forced on small rows (unit and non-unit stride, both
    layouts) and must give the same answers; and the switch point is checked."""
    import triton.language as tl
    from pydl.kernels import conv as tc
    assert tc._idx(5, 2 ** 30 - 1) == tl.int32 and tc._idx(5, 2 ** 30) == tl.int64
    monkeypatch.setattr(tc, "_idx", lambda *sizes: tl.int64)
    rows = TINY[:3] if interpreted(backend, device) else CONFIGS[:6]
    for row in rows:
        for layout in LAYOUTS:
            _run(row, backend, torch.float32, device, layout)


@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[0] == "triton"])
def test_triton_tap_major_paths(backend, device):
    """channels_last operands with a per-group channel count that is a multiple of every
    BLOCK_K take the Triton kernels' tap-major K loop (one tap per K step): the forward,
    against torch in float32 and bfloat16 -- 3x3 with padding, strided and dilated, 1x1,
    grouped, with bias and ReLU -- and the path is the one taken; then the input gradient."""
    from pydl.kernels import conv as tc
    rows = [((2, 64, 5, 6), (8, 64, 3, 3), dict(padding=1)),
            ((1, 64, 7, 7), (6, 64, 3, 3), dict(stride=2, padding=2, dilation=2)),
            ((2, 64, 3, 4), (5, 64, 1, 1), dict()),
            ((1, 128, 5, 5), (4, 64, 3, 2), dict(padding=(1, 0), groups=2))]
    gen = torch.Generator().manual_seed(5)
    for dtype in (torch.float32, torch.bfloat16):
        for xs, ws, kw in rows:
            x = torch.randn(xs, generator=gen).to(device, dtype).contiguous(memory_format=torch.channels_last)
            w = torch.randn(ws, generator=gen).to(device, dtype)
            b = torch.randn(ws[0], generator=gen).to(device, dtype)
            assert tc._tap_major(x, ws[1])
            y = F.conv2d(x, w, b, activation="relu", backend=backend, **kw)
            ref = TF.relu(TF.conv2d(x.double().cpu(), w.double().cpu(), b.double().cpu(), **kw))
            # bfloat16 operands carry 8 mantissa bits (output rounded once, K up to 576
            # float32-accumulated terms); float32 in IEEE mode (tf32=False on these tensors)
            tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
            torch.testing.assert_close(y.double().cpu(), ref, rtol=tol, atol=tol)
            assert y.is_contiguous(memory_format=torch.channels_last)
    assert not tc._tap_major(torch.randn(1, 24, 3, 3).contiguous(memory_format=torch.channels_last), 24)
    assert not tc._tap_major(torch.randn(1, 32, 3, 3), 32)  # NCHW
    # the input gradient's tap-major loop (output channels per group a multiple of BLOCK_K),
    # over stride phases; dx starts as NaN so an unwritten element shows
    for xs, ws, st, pd, dl, g in [((2, 8, 7, 6), (64, 8, 3, 3), (2, 2), (1, 1), (1, 1), 1),
                                  ((1, 8, 5, 7), (64, 8, 1, 1), (2, 2), (0, 0), (1, 1), 1),
                                  ((1, 8, 6, 5), (128, 4, 3, 3), (1, 1), (2, 2), (2, 2), 2)]:
        x = torch.randn(xs, dtype=torch.float64, generator=gen)
        w = torch.randn(ws, dtype=torch.float64, generator=gen)
        gy = torch.randn_like(TF.conv2d(x, w, None, st, pd, dl, g))
        ref = torch.nn.grad.conv2d_input(x.shape, w, gy, st, pd, dl, g)
        gyd = gy.to(device, torch.float32).contiguous(memory_format=torch.channels_last)
        assert tc._tap_major(gyd, ws[0] // g)
        dx = torch.full(xs, float("nan"), device=device).contiguous(memory_format=torch.channels_last)
        tc.conv2d_bwd_input(gyd, w.to(device, torch.float32), dx, list(st), [pd[0], pd[1], pd[0], pd[1]],
                            list(dl), g, False)
        # float32 with float32 accumulation over at most 128 terms
        torch.testing.assert_close(dx.double().cpu(), ref, rtol=1e-4, atol=1e-4)


def test_triton_config_pruning():
    """The GPU autotuner's pruning (kernels/conv.py::_fits_smem): float64 drops the tiles whose
    staged operands exceed the shared-memory budget, and BLOCK_K = 64 runs only on the
    tap-major path (tests/triton_aot.py compiles what is left and checks registers)."""
    triton = pytest.importorskip("triton")
    from pydl.kernels import conv as tc
    cfgs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=st)
            for m, n, k, w, st in tc._GEMM_SHAPES]

    def kept(dtype, tap_major):
        args = {"x_ptr": torch.empty(1, dtype=dtype)}
        return {(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"])
                for c in tc._fits_smem(cfgs, args, TAP_MAJOR=tap_major)}

    assert (128, 128, 64) in kept(torch.bfloat16, True) and (128, 128, 64) in kept(torch.float32, True)
    assert all(k <= 32 for _, _, k in kept(torch.bfloat16, False))
    for m, n, k in kept(torch.float64, True):
        stages = next(st for mm, nn, kk, _, st in tc._GEMM_SHAPES if (mm, nn, kk) == (m, n, k))
        assert (m + n) * k * 8 * stages <= tc.SMEM_BUDGET
    assert kept(torch.float64, True) and (128, 128, 64) not in kept(torch.float64, True)


# (input, weight, stride, padding, dilation, groups): stride phases that no tap reaches (1x1
# and 2x2 kernels under stride 3, stride 2 with dilation 2), stride and dilation coprime,
# asymmetric strides, padding larger than the stride, a grouped/depthwise one, stride 1
PHASE_ROWS = [((2, 3, 9, 8), (4, 3, 3, 3), (2, 2), (1, 1), (1, 1), 1),
              ((1, 4, 11, 10), (6, 2, 3, 2), (3, 2), (2, 0), (2, 1), 2),
              ((2, 2, 7, 9), (3, 2, 1, 1), (2, 2), (0, 0), (1, 1), 1),
              ((1, 2, 10, 7), (2, 2, 2, 2), (3, 3), (1, 0), (1, 1), 1),
              ((1, 3, 9, 9), (3, 1, 3, 3), (2, 2), (2, 2), (2, 2), 3),
              ((1, 2, 13, 12), (3, 2, 7, 7), (2, 3), (3, 3), (1, 2), 1),
              ((2, 3, 8, 8), (5, 3, 5, 5), (1, 1), (2, 2), (1, 1), 1)]


@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[0] == "triton"])
def test_triton_input_grad_stride_phases(backend, device):
    """The Triton input gradient runs one GEMM per stride phase over only the taps that
    reach it (kernels/conv.py). Every element of dx belongs to exactly one phase and must be
    written -- zeros where no tap reaches -- so dx starts as NaN here, and is compared with
    torch's float64 input gradient, in both layouts."""
    from pydl.kernels import conv as tc
    dt = torch.float64 if interpreted(backend, device) else torch.float32
    tol = 1e-10 if dt == torch.float64 else 1e-4  # float32 on the GPU: float32 accumulation
    gen = torch.Generator().manual_seed(3)
    for xs, ws, st, pd, dl, g in PHASE_ROWS:
        x = torch.randn(xs, dtype=torch.float64, generator=gen)
        w = torch.randn(ws, dtype=torch.float64, generator=gen)
        gy = torch.randn_like(TF.conv2d(x, w, None, st, pd, dl, g))
        ref = torch.nn.grad.conv2d_input(x.shape, w, gy, st, pd, dl, g)
        for cl in (False, True):
            fmt = torch.channels_last if cl else torch.contiguous_format
            dx = torch.full(xs, float("nan"), dtype=dt, device=device).contiguous(memory_format=fmt)
            gyd = gy.to(device, dt).contiguous(memory_format=fmt)
            tc.conv2d_bwd_input(gyd, w.to(device, dt), dx, list(st), [pd[0], pd[1], pd[0], pd[1]],
                                list(dl), g, False)
            assert not dx.isnan().any(), (xs, ws, st, pd, dl, g, cl)
            torch.testing.assert_close(dx.double().cpu(), ref, rtol=tol, atol=tol)
    # the phase geometry of a stride-2 7x7 layer (the ResNet stem): 4 phases, 16/12/12/9 taps
    table, P, M, taps, steps = tc._phases(2, 224, 224, 7, 7, [2, 2], [3, 3], [1, 1], "cpu")
    assert P == 4 and taps == 16 and steps == (2, 2, 1, 1)
    assert sorted(int(r[4] * r[9]) for r in table) == [9, 12, 12, 16]


# ----------------------------------------------------------------------- nn.Conv2d
@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
def test_module_is_a_drop_in(backend, device, padding_mode):
    torch.manual_seed(0)
    kw = dict(stride=(2, 1), padding=(1, 2), dilation=1, groups=2, bias=True, padding_mode=padding_mode)
    ref = nn.Conv2d(4, 6, (3, 2), **kw).to(device)
    ours = pydl.nn.Conv2d(4, 6, (3, 2), **kw, backend=backend).to(device)
    assert isinstance(ours, nn.Conv2d)
    assert repr(ours) == repr(ref)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                 "groups", "padding_mode", "transposed", "output_padding"):
        assert getattr(ours, attr) == getattr(ref, attr)
    ours.load_state_dict(ref.state_dict())  # a torch checkpoint loads unchanged
    x = make_input((2, 4, 6, 7), torch.float32, device, requires_grad=True)
    w, b = [p.detach().clone().requires_grad_() for p in (ref.weight, ref.bias)]

    def call(module):  # the module with given parameters, so the oracle can use float64 ones
        return lambda x, w, b: torch.func.functional_call(module, {"weight": w, "bias": b}, (x,))

    # the float64 oracle runs torch's module; pydl's module runs the pydl kernels
    check_against_torch(call(ours), call(ref), [x, w, b], what=padding_mode)
    y = ours(x)
    assert torch.allclose(y, ref(x), rtol=1e-5, atol=1e-5)


def test_module_init_and_same_padding():
    # same parameter initialization as torch (same RNG draws), and 'same' string padding
    torch.manual_seed(3)
    ref = nn.Conv2d(3, 5, 4, padding="same", bias=False)
    torch.manual_seed(3)
    ours = pydl.nn.Conv2d(3, 5, 4, padding="same", bias=False)
    assert torch.equal(ours.weight, ref.weight) and ours.bias is None
    x = make_input((2, 3, 7, 6), torch.float32)
    y = ours(x)
    assert y.shape == (2, 5, 7, 6)
    assert torch.allclose(y, ref(x), rtol=1e-5, atol=1e-5)
    # and a pydl state_dict loads back into torch
    ref2 = nn.Conv2d(3, 5, 4, padding="same", bias=False)
    ref2.load_state_dict(ours.state_dict())
    assert torch.equal(ref2.weight, ours.weight)


# ------------------------------------------------------------------------- bad input
def test_bad_input():
    x = torch.randn(2, 4, 7, 7)
    w = torch.randn(6, 2, 3, 3)
    cases = [
        (TypeError, "input must be a torch.Tensor", lambda: F.conv2d([1.0], w)),
        (TypeError, "input must be float32", lambda: F.conv2d(x.long(), w)),
        (RuntimeError, "3-D \\(unbatched\\) or 4-D", lambda: F.conv2d(x[0, 0], w, groups=2)),
        (RuntimeError, "weight must be 4-D", lambda: F.conv2d(x, w[0], groups=2)),
        (RuntimeError, "channel mismatch", lambda: F.conv2d(x, w)),
        (RuntimeError, "in_channels \\(4\\) must be divisible by groups \\(3\\)",
         lambda: F.conv2d(x, torch.randn(6, 1, 3, 3), groups=3)),
        (RuntimeError, "out_channels \\(5.*divisible by groups", lambda: F.conv2d(x, torch.randn(5, 2, 3, 3), groups=2)),
        (RuntimeError, "groups must be a positive integer", lambda: F.conv2d(x, w, groups=0)),
        (RuntimeError, "non-positive stride", lambda: F.conv2d(x, w, stride=0, groups=2)),
        (RuntimeError, "non-positive stride", lambda: F.conv2d(x, w, stride=(1, -1), groups=2)),
        (RuntimeError, "dilation must be positive", lambda: F.conv2d(x, w, dilation=0, groups=2)),
        (RuntimeError, "padding must be non-negative", lambda: F.conv2d(x, w, padding=-1, groups=2)),
        (RuntimeError, "padding must be an int, a tuple of 2 ints, 'same' or 'valid'",
         lambda: F.conv2d(x, w, padding="full", groups=2)),
        (TypeError, "stride must be an int or a tuple of 2 ints", lambda: F.conv2d(x, w, stride=(1, 2, 3), groups=2)),
        (RuntimeError, "kernel size .* can't be greater than the padded input",
         lambda: F.conv2d(x, torch.randn(6, 2, 9, 3), groups=2)),
        (RuntimeError, "kernel size .* can't be greater than the padded input",
         lambda: F.conv2d(x, w, dilation=4, groups=2)),
        (RuntimeError, "kernel size \\(weight.shape\\[2:\\]\\) must be greater than zero",
         lambda: F.conv2d(x, torch.randn(6, 2, 3, 0), groups=2)),
        (RuntimeError, "kernel size \\(weight.shape\\[2:\\]\\) must be greater than zero",
         lambda: F.conv2d(x, torch.randn(6, 2, 0, 0), groups=2)),
        (RuntimeError, "padding='same' is not supported for strided",
         lambda: F.conv2d(x, w, stride=2, padding="same", groups=2)),
        (RuntimeError, "input \\(torch.float32\\) and weight \\(torch.float64\\) must have the same dtype",
         lambda: F.conv2d(x, w.double(), groups=2)),
        (RuntimeError, "bias .* must have the same dtype", lambda: F.conv2d(x, w, torch.randn(6).half(), groups=2)),
        (RuntimeError, "bias must have shape \\(6,\\)", lambda: F.conv2d(x, w, torch.randn(5), groups=2)),
        (ValueError, "activation must be None or 'relu'", lambda: F.conv2d(x, w, groups=2, activation="gelu")),
        (ValueError, "backend must be one of", lambda: F.conv2d(x, w, groups=2, backend="cudnn")),
    ]
    if GPU:
        cases.append((RuntimeError, "must be on the same device", lambda: F.conv2d(x.cuda(), w, groups=2)))
    for exc, msg, fn in cases:
        with pytest.raises(exc, match=msg):
            fn()
    # torch rejects every one of these too (so pydl is not stricter than torch)
    with pytest.raises(RuntimeError):
        TF.conv2d(x, w)
    with pytest.raises(RuntimeError):
        TF.conv2d(x, w, stride=2, padding="same", groups=2)
    with pytest.raises(RuntimeError):
        TF.conv2d(x, torch.randn(6, 2, 3, 0), groups=2)


def test_bad_input_device_mismatch_meta():
    # a device mismatch is caught before any kernel, without needing a GPU: meta vs cpu
    x = torch.randn(2, 4, 7, 7)
    w = torch.randn(6, 2, 3, 3, device="meta")
    with pytest.raises(RuntimeError, match="must be on the same device"):
        F.conv2d(x, w, groups=2)


def test_cpp_checks():
    # the C++ op checks its arguments too, for direct torch.ops calls
    x = torch.randn(2, 4, 7, 7)
    w = torch.randn(6, 2, 3, 3)
    with pytest.raises(RuntimeError, match="stride must be 2 positive integers"):
        torch.ops.pydl.conv2d_fwd(x, w, None, [0, 1], [0, 0, 0, 0], [1, 1], 2, "none", False)
    with pytest.raises(RuntimeError, match="input has 4 channels but weight expects"):
        torch.ops.pydl.conv2d_fwd(x, w, None, [1, 1], [0, 0, 0, 0], [1, 1], 1, "none", False)
    with pytest.raises(RuntimeError, match="can't be greater than the padded input"):
        torch.ops.pydl.conv2d_fwd(x, w, None, [1, 1], [0, 0, 0, 0], [4, 1], 2, "none", False)
    with pytest.raises(RuntimeError, match="act must be 'none' or 'relu'"):
        torch.ops.pydl.conv2d_fwd(x, w, None, [1, 1], [0, 0, 0, 0], [1, 1], 2, "gelu", False)
    with pytest.raises(RuntimeError, match="kernel size must be positive"):
        torch.ops.pydl.conv2d_fwd(x, w[..., :0], None, [1, 1], [0, 0, 0, 0], [1, 1], 2, "none", False)
