"""Batch normalization: F.batch_norm / BatchNorm1d / BatchNorm2d / BatchNormAct2d /
SyncBatchNorm on every backend x dtype x layout x config against the float64 oracle,
running statistics over several steps, gradcheck, opcheck, torch.compile, the fused op
vs the unfused torch sequence, a 2-process gloo SyncBatchNorm run, numerics (mean 1e4,
std 1e-2), determinism, bad input.

Run as a script (``python tests/test_batchnorm.py --sync-worker ...``) this file is
also the worker of the 2-process SyncBatchNorm test.
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
from pydl.nn.batchnorm import TORCH_HAS_BN_BIAS
from pydl.testing import check_against_torch, make_input
from conftest import run_with_cpu_simd, DTYPE_IDS, DTYPES, backend_params, interpreted, needs_gxx, run_cuda_emulation

LAYOUTS = ["contiguous", "channels_last", "noncontig"]


def shapes_for(backend, device):
    """(N, C, H, W) cases: C = 1, 3, 64, 513, odd spatial sizes, N = 1 with H*W > 1.
    Tiny under the Triton interpreter."""
    if interpreted(backend, device):
        return [(3, 1, 3, 5), (1, 3, 3, 5), (2, 64, 1, 3), (2, 513, 1, 1)]
    return [(5, 1, 7, 9), (4, 3, 13, 7), (1, 3, 11, 9), (3, 64, 5, 7), (2, 513, 3, 5)]


def _param_dtype(dtype):
    # float32 parameters and statistics for 16-bit input (what torch keeps under autocast)
    return torch.float64 if dtype == torch.float64 else torch.float32


def _running(C, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    rm = (torch.randn(C, generator=g, dtype=torch.float64) * 0.5).to(device, _param_dtype(dtype))
    rv = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(device, _param_dtype(dtype))
    return rm, rv


def _ref_stats(t, x):
    """A running-stat tensor in the dtype torch wants next to x (float64 for the oracle)."""
    return None if t is None else t.to(torch.float64 if x.dtype == torch.float64 else t.dtype).clone()


# ------------------------------------------------------------------- functional matrix
@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_2d(backend, device, dtype, layout, training):
    if interpreted(backend, device) and layout == "noncontig" and dtype != torch.float32:
        pytest.skip("interpreted Triton: a strided input is copied to contiguous first, "
                    "so float32 covers that path")
    for k, shape in enumerate(shapes_for(backend, device)):
        C = shape[1]
        x = make_input(shape, dtype, device, layout, requires_grad=True, seed=k, scale=2.0) + 0.5
        x = x.detach().requires_grad_()
        w = make_input((C,), _param_dtype(dtype), device, requires_grad=True, seed=100 + k)
        b = make_input((C,), _param_dtype(dtype), device, requires_grad=True, seed=200 + k)
        rm, rv = _running(C, dtype, device, k)
        ours_rm, ours_rv = rm.clone(), rv.clone()
        out = check_against_torch(
            lambda x, w, b: F.batch_norm(x, ours_rm, ours_rv, w, b, training, 0.1, 1e-5,
                                         backend=backend),
            lambda x, w, b: TF.batch_norm(x, _ref_stats(rm, x), _ref_stats(rv, x), w, b,
                                          training, 0.1, 1e-5),
            [x, w, b], seed=1000 + k, what=f"{shape}/{backend}/{layout}/train={training}")
        if layout == "channels_last" and C > 1:
            assert out.is_contiguous(memory_format=torch.channels_last)
        # running statistics: updated in training (unbiased var), untouched in eval
        ref_rm, ref_rv = rm.clone(), rv.clone()
        TF.batch_norm(x.detach(), ref_rm, ref_rv, None, None, training, 0.1, 1e-5)
        assert torch.allclose(ours_rm, ref_rm, rtol=1e-5, atol=1e-6)
        assert torch.allclose(ours_rv, ref_rv, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("flags", ["no_affine", "weight_only", "no_running_stats", "f16_params"])
def test_flags(backend, device, dtype, flags):
    """affine=False (no weight/bias), weight without bias, track_running_stats=False
    (training without running stats), parameters in the input's own 16-bit dtype."""
    shape = (3, 5, 3, 5) if interpreted(backend, device) else (4, 7, 9, 11)
    C = shape[1]
    x = make_input(shape, dtype, device, requires_grad=True, seed=3)
    pd = dtype if flags == "f16_params" else _param_dtype(dtype)
    w = make_input((C,), pd, device, requires_grad=True, seed=4)
    b = make_input((C,), pd, device, requires_grad=True, seed=5)
    rm, rv = _running(C, dtype, device)
    rm, rv = rm.to(pd), rv.to(pd)
    for training in (True, False):
        if flags == "no_affine":
            inputs, fw = [x], lambda x, w=None, b=None: (x, None, None)
        elif flags == "weight_only":
            inputs, fw = [x, w], lambda x, w, b=None: (x, w, None)
        else:
            inputs, fw = [x, w, b], lambda x, w, b: (x, w, b)
        if flags == "no_running_stats":
            if not training:
                continue
            rms = (None, None)
        else:
            rms = (rm, rv)

        def ours(*a):
            xx, ww, bb = fw(*a)
            return F.batch_norm(xx, *[None if t is None else t.clone() for t in rms], ww, bb,
                                training, backend=backend)

        def theirs(*a):
            xx, ww, bb = fw(*a)
            return TF.batch_norm(xx, *[_ref_stats(t, xx) for t in rms], ww, bb, training)

        check_against_torch(ours, theirs, inputs, what=f"{flags}/train={training}")


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("shape", [(7, 13), (5, 6, 11), (4, 3, 2, 3, 5)], ids=["NC", "NCL", "NCDHW"])
def test_batch_norm_1d_3d(backend, device, dtype, shape):
    """(N, C), (N, C, L) -- BatchNorm1d's inputs -- and 5-D input through the functional."""
    C = shape[1]
    for training in (True, False):
        x = make_input(shape, dtype, device, requires_grad=True, seed=7)
        w = make_input((C,), _param_dtype(dtype), device, requires_grad=True, seed=8)
        b = make_input((C,), _param_dtype(dtype), device, requires_grad=True, seed=9)
        rm, rv = _running(C, dtype, device)
        check_against_torch(
            lambda x, w, b: F.batch_norm(x, rm.clone(), rv.clone(), w, b, training,
                                         backend=backend),
            lambda x, w, b: TF.batch_norm(x, _ref_stats(rm, x), _ref_stats(rv, x), w, b,
                                          training),
            [x, w, b], what=f"{shape}/train={training}")


@pytest.mark.parametrize("backend,device", backend_params())
def test_channels_last_3d(backend, device):
    """5-D channels_last_3d input: walked channel-fastest, output in the same format."""
    x = make_input((2, 5, 3, 2, 3), torch.float32, device, seed=61)
    x = x.contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    w = make_input((5,), torch.float32, device, requires_grad=True, seed=62)
    out = check_against_torch(lambda x, w: F.batch_norm(x, None, None, w, None, True, backend=backend),
                              lambda x, w: TF.batch_norm(x, None, None, w, None, True), [x, w])
    assert out.is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("backend,device", backend_params())
def test_nan_propagates(backend, device):
    """A NaN poisons its own channel's statistics (and so that channel), as in torch."""
    x = make_input((3, 4, 3, 5), torch.float32, device, seed=63)
    x[1, 2, 1, 1] = float("nan")
    x.requires_grad_()
    rm, rv = _running(4, torch.float32, device)
    for training in (True, False):
        out = check_against_torch(
            lambda x: F.batch_norm(x, rm.clone(), rv.clone(), None, None, training, backend=backend),
            lambda x: TF.batch_norm(x, _ref_stats(rm, x), _ref_stats(rv, x), None, None, training),
            [x], backward=False)
        assert out[:, 2].isnan().all() == training and out[:, (0, 1, 3)].isfinite().all()


# ------------------------------------------------------------------------- modules
@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("momentum", [0.1, 0.3, None], ids=["m0.1", "m0.3", "cma"])
def test_running_stats_over_steps(backend, device, momentum):
    """Several training steps (different batch sizes) then eval: running_mean,
    running_var, num_batches_tracked and the eval output as torch's."""
    C = 5
    ours = pydl.nn.BatchNorm2d(C, momentum=momentum, backend=backend).to(device)
    ref = nn.BatchNorm2d(C, momentum=momentum).to(device)
    sizes = [(3, C, 3, 5), (2, C, 5, 3), (4, C, 3, 3), (2, C, 1, 3)]
    for step, shape in enumerate(sizes):
        x = make_input(shape, torch.float32, device, seed=step, scale=1.0 + step) + step
        assert torch.allclose(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(ours.num_batches_tracked, ref.num_batches_tracked)
    assert torch.allclose(ours.running_mean, ref.running_mean, rtol=1e-5, atol=1e-6)
    assert torch.allclose(ours.running_var, ref.running_var, rtol=1e-5, atol=1e-6)
    ours.eval(), ref.eval()
    x = make_input((2, C, 3, 3), torch.float32, device, seed=9)
    assert torch.allclose(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_modules_are_drop_ins():
    for ours_cls, ref_cls, shape in [(pydl.nn.BatchNorm1d, nn.BatchNorm1d, (6, 4, 5)),
                                     (pydl.nn.BatchNorm2d, nn.BatchNorm2d, (3, 4, 5, 3))]:
        for kw in [{}, {"affine": False}, {"track_running_stats": False}, {"momentum": None},
                   {"eps": 1e-3, "momentum": 0.2}] + ([{"bias": False}] if TORCH_HAS_BN_BIAS else []):
            a, b = ours_cls(4, **kw), ref_cls(4, **kw)
            assert isinstance(a, ref_cls)
            assert repr(a) == repr(b)
            assert a.state_dict().keys() == b.state_dict().keys()
            assert [n for n, _ in a.named_buffers()] == [n for n, _ in b.named_buffers()]
            b.load_state_dict(a.state_dict())  # and back
            a.load_state_dict(b.state_dict())
            x = make_input(shape, torch.float32, seed=1)
            for mode in (True, False):
                a.train(mode), b.train(mode)
                assert torch.allclose(a(x), b(x), rtol=1e-5, atol=1e-5), (kw, mode)
    if not TORCH_HAS_BN_BIAS:  # torch without bias= for batch norm: pydl refuses it the same way
        for cls in (nn.BatchNorm2d, pydl.nn.BatchNorm2d):
            with pytest.raises(TypeError, match="unexpected keyword argument 'bias'"):
                cls(4, bias=False)
    # a BatchNorm2d checkpoint loads into the fused module (same keys)
    bn = nn.BatchNorm2d(6)
    bn.running_mean.uniform_(-1, 1)
    fused = pydl.nn.BatchNormAct2d(6, act="relu")
    fused.load_state_dict(bn.state_dict())
    assert fused.state_dict().keys() == bn.state_dict().keys()
    assert torch.equal(fused.running_mean, bn.running_mean)
    assert "act=relu" in repr(fused)


@pytest.mark.parametrize("backend,device", backend_params())
def test_track_running_stats_false_eval_uses_batch_stats(backend, device):
    ours = pydl.nn.BatchNorm2d(3, track_running_stats=False, backend=backend).to(device).eval()
    ref = nn.BatchNorm2d(3, track_running_stats=False).to(device).eval()
    x = make_input((4, 3, 3, 5), torch.float32, device) * 3 + 1
    assert torch.allclose(ours(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,device", backend_params())
def test_empty_batch(backend, device):
    """Empty batch as torch: empty output, running stats untouched (the step still
    counts), zero parameter gradients."""
    for training in (True, False):
        ours = pydl.nn.BatchNorm2d(3, backend=backend).to(device).train(training)
        ref = nn.BatchNorm2d(3).to(device).train(training)
        x = torch.zeros((0, 3, 4, 5), device=device, requires_grad=True)
        y = ours(x)
        y_ref = ref(x)
        assert y.shape == y_ref.shape
        y.sum().backward()
        assert x.grad.shape == x.shape
        assert torch.equal(ours.weight.grad, torch.zeros(3, device=device))
        assert torch.equal(ours.bias.grad, torch.zeros(3, device=device))
        assert torch.equal(ours.running_mean, ref.running_mean)
        assert torch.equal(ours.running_var, ref.running_var)
        assert torch.equal(ours.num_batches_tracked, ref.num_batches_tracked)


# ------------------------------------------------------------------- fused BN + act
FUSED = [("relu", 0.0), ("leaky_relu", 0.1), ("none", 0.0)]


def _unfused(x, rm, rv, w, b, r, training, act, alpha):
    y = TF.batch_norm(x, rm, rv, w, b, training)
    if r is not None:
        y = y + r
    return TF.relu(y) if act == "relu" else TF.leaky_relu(y, alpha) if act == "leaky_relu" else y


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=["f32", "bf16", "f64"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("act,alpha", FUSED, ids=[a for a, _ in FUSED])
@pytest.mark.parametrize("with_residual", [True, False], ids=["res", "nores"])
def test_batch_norm_act(backend, device, dtype, layout, act, alpha, with_residual):
    shape = (2, 3, 3, 5) if interpreted(backend, device) else (4, 6, 7, 9)
    C = shape[1]
    for training in (True, False):
        x = make_input(shape, dtype, device, layout, requires_grad=True, seed=11)
        w = make_input((C,), _param_dtype(dtype), device, requires_grad=True, seed=12)
        b = make_input((C,), _param_dtype(dtype), device, requires_grad=True, seed=13)
        r = make_input(shape, dtype, device, layout, requires_grad=True, seed=14)
        rm, rv = _running(C, dtype, device)
        inputs = [x, w, b] + ([r] if with_residual else [])
        check_against_torch(
            lambda x, w, b, r=None: F.batch_norm_act(x, rm.clone(), rv.clone(), w, b, training,
                                                     residual=r, act=act, negative_slope=alpha,
                                                     backend=backend),
            lambda x, w, b, r=None: _unfused(x, _ref_stats(rm, x), _ref_stats(rv, x), w, b, r,
                                             training, act, alpha),
            inputs, what=f"{act}/res={with_residual}/train={training}")


@pytest.mark.parametrize("backend,device", backend_params())
def test_unaligned_operands(backend, device):
    """Operands that start one element into their storage (not 16-byte aligned): the
    CUDA kernels must leave their vector path for these."""
    shape = (2, 3, 4, 4) if interpreted(backend, device) else (4, 6, 8, 8)
    n = 1
    for s_ in shape:
        n *= s_

    def shifted(seed):
        base = make_input((n + 1,), torch.float32, device, seed=seed)
        return base[1:].view(shape).detach().requires_grad_()

    x, r = shifted(51), shifted(52)
    w = make_input((shape[1],), torch.float32, device, requires_grad=True, seed=53)
    check_against_torch(
        lambda x, w, r: F.batch_norm_act(x, None, None, w, None, True, residual=r, act="relu",
                                         backend=backend),
        lambda x, w, r: _unfused(x, None, None, w, None, r, True, "relu", 0.0),
        [x, w, r], seed=54)


@pytest.mark.parametrize("backend,device", backend_params())
def test_batch_norm_act_module(backend, device):
    """BatchNormAct2d(x, residual) == relu(BatchNorm2d(x) + residual): outputs, every
    gradient, running statistics, over two steps."""
    torch.manual_seed(0)
    ours = pydl.nn.BatchNormAct2d(4, act="relu", backend=backend).to(device)
    ref = nn.BatchNorm2d(4).to(device)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5), ref.bias.uniform_(-0.5, 0.5)
    ours.load_state_dict(ref.state_dict())
    for step in range(2):
        x = make_input((3, 4, 3, 5), torch.float32, device, seed=step, requires_grad=True)
        r = make_input((3, 4, 3, 5), torch.float32, device, seed=10 + step, requires_grad=True)
        x2, r2 = x.detach().clone().requires_grad_(), r.detach().clone().requires_grad_()
        y, y_ref = ours(x, r), TF.relu(ref(x2) + r2)
        assert torch.allclose(y, y_ref, rtol=1e-5, atol=1e-5)
        g = make_input(y.shape, torch.float32, device, seed=20)
        y.backward(g), y_ref.backward(g)
        for a, c in [(x.grad, x2.grad), (r.grad, r2.grad), (ours.weight.grad, ref.weight.grad),
                     (ours.bias.grad, ref.bias.grad)]:
            assert torch.allclose(a, c, rtol=1e-4, atol=1e-5)
    assert torch.allclose(ours.running_mean, ref.running_mean, rtol=1e-5, atol=1e-6)
    assert torch.allclose(ours.running_var, ref.running_var, rtol=1e-5, atol=1e-6)
    # act=None is plain batch norm (+ residual)
    plain = pydl.nn.BatchNormAct2d(4, act=None, backend=backend).to(device).eval()
    x = make_input((2, 4, 3, 3), torch.float32, device)
    assert torch.allclose(plain(x), nn.BatchNorm2d(4).to(device).eval()(x), atol=1e-6)


# ----------------------------------------------------------------------- numerics
@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_large_mean_small_std(backend, device, layout):
    """mean 1e4, std 1e-2 in float32: Welford / Chan keep the variance that
    E[x^2] - E[x]^2 would cancel away; as accurate as torch (2x its error)."""
    shape = (4, 3, 5, 7) if interpreted(backend, device) else (16, 3, 33, 31)
    x = (make_input(shape, torch.float64, device, layout, seed=21) * 1e-2 + 1e4).float()
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    x.requires_grad_()
    out = check_against_torch(lambda x: F.batch_norm(x, None, None, training=True, backend=backend),
                              lambda x: TF.batch_norm(x, None, None, training=True), [x])
    assert out.std() > 0.9  # actually normalized, not collapsed to 0
    mean, var = _ops(backend).bn_stats(x.detach())
    ref = x.detach().double().transpose(0, 1).reshape(3, -1)
    assert torch.allclose(var.double(), ref.var(1, unbiased=False), rtol=1e-3)


_SIMD_SCRIPT = r"""
import torch
import torch.nn.functional as TF
import pydl.functional as F
from pydl.testing import check_against_torch, make_input


def unfused(x, w, b, r, act):
    y = TF.batch_norm(x, None, None, w, b, True) + r
    return TF.relu(y) if act == "relu" else TF.leaky_relu(y, 0.1) if act == "leaky_relu" else y


# planes of 1517 values (many float blocks per run, then a tail); 300 channels-last channels
# (two strips of the row loops); 35805 channels-last rows (three chunks)
for shape, layout in [((3, 5, 37, 41), "contiguous"), ((3, 5, 37, 41), "channels_last"),
                      ((2, 300, 9, 11), "contiguous"), ((2, 300, 9, 11), "channels_last"),
                      ((35, 2, 31, 33), "channels_last")]:
    for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        # torch's own float16 result overflows to inf on the 35805-row shape: there the
        # yardstick of the same dtype is the float64 oracle rounded to float16 instead
        own = dt == torch.float16 and shape[0] == 35
        for act in ("none", "relu", "leaky_relu"):
            pdt = torch.float64 if dt == torch.float64 else torch.float32
            C = shape[1]
            x = make_input(shape, dt, layout=layout, requires_grad=True, seed=1, scale=2.0)
            r = make_input(shape, dt, layout=layout, requires_grad=True, seed=2)
            w = make_input((C,), pdt, requires_grad=True, seed=3)
            b = make_input((C,), pdt, requires_grad=True, seed=4)
            check_against_torch(
                lambda x, w, b, r: F.batch_norm_act(x, None, None, w, b, True, residual=r, act=act,
                                                    negative_slope=0.1, backend="cpu"),
                (lambda x, w, b, r: unfused(x.double(), w.double(), b.double(), r.double(), act).to(x.dtype))
                if own else (lambda x, w, b, r: unfused(x, w, b, r, act)), [x, w, b, r],
                what=f"{shape}/{layout}/{dt}/{act}")
print("ok")
"""


@pytest.mark.parametrize("isa", ["native", "avx2", "default"])
def test_cpu_simd_copies(isa):
    """The CPU kernels' loops are compiled for AVX-512, AVX2 and the baseline, the widest
    the CPU has chosen at run time; PYDL_CPU_SIMD caps the choice, so each copy this
    machine has runs here, on shapes that reach every path of the loops (float blocks,
    vector tails, channel strips, several chunks) in every dtype and activation."""
    run_with_cpu_simd(isa, ["-c", _SIMD_SCRIPT])


def _ops(backend):
    return torch.ops.pydl_triton if backend == "triton" else torch.ops.pydl


@pytest.mark.parametrize("backend,device", backend_params())
def test_deterministic(backend, device):
    """Fixed-order reductions: the same bits on every run."""
    shape = (3, 2, 5, 7) if interpreted(backend, device) else (64, 3, 31, 29)
    ops = _ops(backend)
    for layout in ("contiguous", "channels_last"):
        x = make_input(shape, torch.float32, device, layout, seed=5) * 3 + 2
        g = make_input(shape, torch.float32, device, layout, seed=6)
        runs = []
        for _ in range(3):
            mean, var = ops.bn_stats(x)
            s1, s2 = ops.bn_bwd_reduce(g, x, mean, var, None, 1e-5, "none", 0.0)
            runs.append(torch.cat([mean, var, s1, s2]))
        assert all(torch.equal(runs[0], r) for r in runs[1:])


@pytest.mark.parametrize("backend,device", backend_params())
def test_bwd_one_op_equals_the_two(backend, device):
    """bn_bwd (the training backward in one op; on the CPU both passes per channel for NCHW
    with channels to spare) gives the same bits as bn_bwd_reduce followed by bn_bwd_elemt,
    in each layout, dtype and activation, with and without weight and dz; on the CPU also
    with one thread and two (the per-channel path is chosen by the thread count)."""
    ops = _ops(backend)
    small = interpreted(backend, device)
    cases = [((3, 5, 4, 3), "contiguous"), ((2, 3, 5), "contiguous"), ((3, 5, 4, 3), "channels_last")]
    if not small:
        cases += [((5, 37, 11, 9), "contiguous"), ((3, 2, 33, 17), "contiguous"),
                  ((4, 9, 70), "contiguous"), ((5, 37, 11, 9), "channels_last")]
    dtypes = [torch.float32, torch.bfloat16] + ([torch.float64] if device == "cpu" else [])
    acts = [("none", 0.0), ("relu", 0.0), ("leaky_relu", 0.1)]
    threads = torch.get_num_threads()
    k = 0
    for shape, layout in cases:
        for dt in dtypes:
            for act, alpha in acts:
                k += 1
                C = shape[1]
                x = make_input(shape, dt, device, layout, seed=k) * 2 + 1
                g = make_input(shape, dt, device, layout, seed=k + 100)
                w = make_input((C,), _param_dtype(dt), device, seed=k + 200) if k % 2 else None
                mean, var = ops.bn_stats(x)
                y = None if act == "none" else ops.bn_fwd_eval(x, mean, var, w, None, None, 1e-5,
                                                               act, alpha)
                want_dz = act != "none" and k % 3 != 0
                got = ops.bn_bwd(g, x, mean, var, w, y, 1e-5, act, alpha, want_dz)
                s1, s2 = ops.bn_bwd_reduce(g, x, mean, var, y, 1e-5, act, alpha)
                n = x.numel() // C
                dx, dz = ops.bn_bwd_elemt(g, x, mean, var, w, y, s1, s2, 1e-5, 1.0 / n, act, alpha,
                                          want_dz)
                what = f"{shape}/{layout}/{dt}/{act}/w={w is not None}/dz={want_dz}"
                for a, b, name in zip(got, (dx, dz, s1, s2), ("dx", "dz", "sum_dz", "sum_dz_xhat")):
                    assert a.shape == b.shape and a.dtype == b.dtype, f"{name}: {what}"
                    assert torch.equal(a, b), f"{name} differs: {what}"
                assert got[0].stride() == dx.stride(), what
                if device == "cpu" and backend == "cpu":
                    torch.set_num_threads(1 if threads > 1 else 2)
                    try:
                        other = ops.bn_bwd(g, x, mean, var, w, y, 1e-5, act, alpha, want_dz)
                    finally:
                        torch.set_num_threads(threads)
                    assert all(torch.equal(a, b) for a, b in zip(got, other)), f"threads: {what}"
    x = make_input((0, 3, 2, 2), torch.float32, device)
    mean = torch.zeros(3, device=device)
    with pytest.raises(RuntimeError, match="empty batch"):
        ops.bn_bwd(x, x, mean, mean + 1, None, None, 1e-5, "none", 0.0, False)


# ---------------------------------------------------------------- GPU-sized shapes
GPU_PARAMS = [p for p in backend_params() if p.values[1] == "cuda"]


@pytest.mark.parametrize("backend,device", GPU_PARAMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(32, 3, 64, 64), (8, 64, 56, 56), (64, 2048, 7, 7), (4096, 513)],
                         ids=["C3", "C64", "C2048", "NC"])
def test_gpu_shapes(backend, device, dtype, layout, shape):
    """Real network sizes on the GPU: each channel split across many blocks / programs."""
    if layout == "channels_last" and len(shape) != 4:
        pytest.skip("channels_last is 4-D")
    C = shape[1]
    for training in (True, False):
        x = make_input(shape, dtype, device, layout, requires_grad=True, seed=41) * 2 + 3
        x = x.detach().requires_grad_()
        w = make_input((C,), torch.float32, device, requires_grad=True, seed=42)
        b = make_input((C,), torch.float32, device, requires_grad=True, seed=43)
        r = make_input(shape, dtype, device, layout, requires_grad=True, seed=44)
        rm, rv = _running(C, dtype, device)
        check_against_torch(
            lambda x, w, b, r: F.batch_norm_act(x, rm.clone(), rv.clone(), w, b, training,
                                                residual=r, act="relu", backend=backend),
            lambda x, w, b, r: _unfused(x, _ref_stats(rm, x), _ref_stats(rv, x), w, b, r,
                                        training, "relu", 0.0),
            [x, w, b, r], seed=45, what=f"{shape}/{layout}/train={training}")


@pytest.mark.xdist_group("big")
@pytest.mark.parametrize("backend,device", GPU_PARAMS)
def test_gpu_more_than_2_31_elements(backend, device):
    """64-bit indexing: a float16 input of 2^31 + 2^27 elements (4.3 GB)."""
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip("needs ~24 GB of free GPU memory")
    shape = (68, 4, 2**13, 2**10)  # 2.28e9 elements; channel 3 ends past 2^31
    x = torch.empty(shape, dtype=torch.float16, device=device)
    x.normal_(0, 1, generator=torch.Generator(device).manual_seed(0))
    x[:, 3].add_(5.0)
    mean, var = _ops(backend).bn_stats(x)
    ref_mean = torch.stack([x[:, c].float().mean(dtype=torch.float64).float() for c in range(4)])
    assert torch.allclose(mean, ref_mean, atol=2e-3)
    assert torch.allclose(var, torch.ones_like(var), atol=1e-2)
    y = F.batch_norm(x, None, None, training=True, backend=backend)
    tail = y[-1, 3, -1]  # the last row of the last channel, past 2^31
    ref_tail = ((x[-1, 3, -1].float() - mean[3]) / torch.sqrt(var[3] + 1e-5)).half()
    assert torch.allclose(tail, ref_tail, atol=1e-2)
    del y


# ---------------------------------------------------------- gradcheck / opcheck / compile
GRADCHECK = [(t, a, l) for t in (True, False) for a in ("none", "relu")
             for l in ("contiguous", "channels_last")]


@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[1] == "cpu"])
@pytest.mark.parametrize("training,act,layout", GRADCHECK,
                         ids=[f"{'train' if t else 'eval'}-{a}-{l}" for t, a, l in GRADCHECK])
def test_gradcheck(backend, device, training, act, layout):
    if interpreted(backend, device) and (act == "relu") == (layout == "contiguous"):
        pytest.skip("interpreted Triton: half of the matrix keeps the run short")
    shape = (3, 2, 2, 2) if interpreted(backend, device) else (3, 2, 3, 2)
    x = make_input(shape, torch.float64, device, layout, requires_grad=True, seed=31)
    w = make_input((2,), torch.float64, device, requires_grad=True, seed=32)
    b = make_input((2,), torch.float64, device, requires_grad=True, seed=33)
    r = make_input(shape, torch.float64, device, layout, requires_grad=True, seed=34)
    rm, rv = _running(2, torch.float64, device)

    def fn(x, w, b, r):
        return F.batch_norm_act(x, rm.clone(), rv.clone(), w, b, training, residual=r, act=act,
                                backend=backend)

    assert torch.autograd.gradcheck(fn, (x, w, b, r), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(backend, device, layout):
    ops = _ops(backend)
    x = make_input((3, 4, 3, 2), torch.float32, device, layout, requires_grad=True)
    w = make_input((4,), torch.float32, device, requires_grad=True, seed=1)
    b = make_input((4,), torch.float32, device, requires_grad=True, seed=2)
    r = make_input((3, 4, 3, 2), torch.float32, device, layout, requires_grad=True, seed=3)
    g = make_input((3, 4, 3, 2), torch.float32, device, layout, seed=4)
    mean, var = ops.bn_stats(x.detach())
    y = ops.bn_fwd_eval(x.detach(), mean, var, w.detach(), b.detach(), None, 1e-5, "relu", 0.0)
    torch.library.opcheck(ops.bn_stats.default, (x.detach(),))
    torch.library.opcheck(ops.bn_fwd_train.default, (x, w, b, r, 1e-5, "relu", 0.0))
    torch.library.opcheck(ops.bn_fwd_train.default, (x, None, None, None, 1e-3, "none", 0.0))
    torch.library.opcheck(ops.bn_fwd_eval.default, (x, mean, var, w, b, r, 1e-5, "leaky_relu", 0.1))
    torch.library.opcheck(ops.bn_bwd_reduce.default, (g, x.detach(), mean, var, y, 1e-5, "relu", 0.0))
    s1, s2 = ops.bn_bwd_reduce(g, x.detach(), mean, var, y, 1e-5, "relu", 0.0)
    torch.library.opcheck(ops.bn_bwd_elemt.default,
                          (g, x.detach(), mean, var, w.detach(), y, s1, s2, 1e-5, 1 / 18, "relu",
                           0.0, True))
    torch.library.opcheck(ops.bn_bwd_elemt.default,
                          (g, x.detach(), mean, var, None, None, None, None, 1e-5, 0.0, "none",
                           0.0, False))
    torch.library.opcheck(ops.bn_bwd.default,
                          (g, x.detach(), mean, var, w.detach(), y, 1e-5, "relu", 0.0, True))
    torch.library.opcheck(ops.bn_bwd.default,
                          (g, x.detach(), mean, var, None, None, 1e-5, "none", 0.0, False))


@pytest.mark.parametrize("backend,device", backend_params())
def test_compile_fullgraph(backend, device):
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn1 = pydl.nn.BatchNorm2d(4, backend=backend)
            self.bn2 = pydl.nn.BatchNormAct2d(4, act="relu", backend=backend)

        def forward(self, x):
            return self.bn2(self.bn1(x) * 2.0, x)

    eager = Block().to(device)
    comp_mod = Block().to(device)
    comp_mod.load_state_dict(eager.state_dict())
    torch._dynamo.reset()
    compiled = torch.compile(comp_mod, fullgraph=True,
                             backend="aot_eager" if interpreted(backend, device) else "inductor")
    x = make_input((3, 4, 3, 5), torch.float32, device, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y, y2 = eager(x), compiled(x2)
    assert torch.equal(y, y2)
    g = make_input(y.shape, torch.float32, device, seed=9)
    y.backward(g), y2.backward(g)
    assert torch.equal(x.grad, x2.grad)
    for (n, p), (_, p2) in zip(eager.named_parameters(), comp_mod.named_parameters()):
        assert torch.equal(p.grad, p2.grad), n
    for (n, t), (_, t2) in zip(eager.named_buffers(), comp_mod.named_buffers()):
        assert torch.allclose(t.float(), t2.float(), rtol=1e-6, atol=1e-7), n


# ------------------------------------------------------------------------ SyncBatchNorm
def _sync_dist(device: str, rank: int):
    """(torch.distributed backend, this rank's device) for the SyncBatchNorm test: gloo on
    CPU tensors; on CUDA tensors NCCL with one GPU per process when there are two, else gloo
    with both processes on the one GPU (NCCL refuses two ranks on one device; gloo moves
    CUDA tensors through the host -- what it tests is pydl's CUDA path between the
    collectives, the transport being torch's)."""
    if device == "cpu":
        return "gloo", torch.device("cpu")
    n = torch.cuda.device_count()
    return ("nccl" if n >= 2 else "gloo"), torch.device("cuda", rank % n)


def _sync_worker(rank, world, init_file, outdir, backend, device="cpu"):
    """One process of the SyncBatchNorm test: its slice of the batch through
    SyncBatchNorm (forward + backward, two steps), results saved for the parent."""
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist_backend, dev = _sync_dist(device, rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(dist_backend, init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        full = torch.load(os.path.join(outdir, "inputs.pt"))
        bn = pydl.nn.SyncBatchNorm(5, momentum=0.3, backend=backend)
        bn.load_state_dict(full["state"])
        bn.to(dev)
        out = {}
        for step in range(2):
            lo, hi = full["splits"][rank]
            x = full["x"][step][lo:hi].to(dev).requires_grad_()
            g = full["g"][step][lo:hi].to(dev)
            y = bn(x)
            assert y.device == dev
            y.backward(g)
            out[f"y{step}"], out[f"dx{step}"] = y.detach(), x.grad
        out["dw"], out["db"] = bn.weight.grad, bn.bias.grad
        # first derivatives only, as torch's SyncBatchNorm: a second one raises
        x = full["x"][0][lo:hi].to(dev).requires_grad_()
        bn2 = pydl.nn.SyncBatchNorm(5, backend=backend).to(dev)
        (gx,) = torch.autograd.grad(bn2(x).pow(2).sum(), x, create_graph=True)
        try:
            gx.sum().backward()
            out["double_backward"] = "no error"
        except RuntimeError as e:
            out["double_backward"] = str(e)
        out["running_mean"], out["running_var"] = bn.running_mean, bn.running_var
        out["num_batches_tracked"] = bn.num_batches_tracked
        out["dist_backend"] = dist_backend
        out = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
        torch.save(out, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
@pytest.mark.parametrize("backend,device", backend_params())
def test_sync_batchnorm_two_processes(backend, device, tmp_path):
    """2 processes holding unequal parts of the batch (3 and 4 samples) == BatchNorm2d on
    the whole batch: output, input gradient, parameter gradients (summed over processes:
    each holds its local part, as with torch's SyncBatchNorm), running statistics. CPU
    tensors over gloo; CUDA tensors over NCCL with two GPUs, else over gloo on one
    (_sync_dist)."""
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(5, momentum=0.3)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5), ref.bias.uniform_(-0.5, 0.5)
    xs = [make_input((7, 5, 3, 4), torch.float32, seed=s) * 2 + 1 for s in (1, 2)]
    gs = [make_input((7, 5, 3, 4), torch.float32, seed=s) for s in (3, 4)]
    splits = [(0, 3), (3, 7)]
    torch.save({"x": xs, "g": gs, "splits": splits, "state": ref.state_dict()},
               tmp_path / "inputs.pt")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--sync-worker", str(r),
                               "2", str(tmp_path / "store"), str(tmp_path), backend, device],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(2)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=180)[0].decode(errors="replace"))
    finally:
        for p in procs:  # never leave a worker hanging
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, f"worker failed:\n{log[-3000:]}"
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["dist_backend"] for r in res] == [_sync_dist(device, 0)[0]] * 2
    for step in range(2):
        x = xs[step].clone().requires_grad_()
        y = ref(x)
        y.backward(gs[step])
        assert torch.allclose(torch.cat([r[f"y{step}"] for r in res]), y, rtol=1e-5, atol=1e-5)
        assert torch.allclose(torch.cat([r[f"dx{step}"] for r in res]), x.grad, rtol=1e-4, atol=1e-5)
    assert torch.allclose(res[0]["dw"] + res[1]["dw"], ref.weight.grad, rtol=1e-4, atol=1e-4)
    assert torch.allclose(res[0]["db"] + res[1]["db"], ref.bias.grad, rtol=1e-4, atol=1e-4)
    for r in res:
        assert torch.allclose(r["running_mean"], ref.running_mean, rtol=1e-5, atol=1e-6)
        assert torch.allclose(r["running_var"], ref.running_var, rtol=1e-5, atol=1e-6)
        assert torch.equal(r["num_batches_tracked"], ref.num_batches_tracked)
        assert "once_differentiable" in r["double_backward"], r["double_backward"]


def test_sync_batchnorm_single_process_and_convert():
    """Without an initialized process group SyncBatchNorm is BatchNorm; convert_sync_batchnorm
    swaps every BatchNorm*D (sharing parameters and buffers), like torch's."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Sequential(pydl.nn.BatchNorm2d(4)), pydl.nn.BatchNormAct2d(4))
    w = model[1].weight
    conv = pydl.nn.SyncBatchNorm.convert_sync_batchnorm(model, backend="cpu")
    assert type(conv[1]) is pydl.nn.SyncBatchNorm and type(conv[3][0]) is pydl.nn.SyncBatchNorm
    assert isinstance(conv[1], nn.SyncBatchNorm)
    assert conv[1].weight is w
    assert type(conv[4]) is pydl.nn.BatchNormAct2d  # its activation cannot move to SyncBatchNorm
    ours, ref = pydl.nn.SyncBatchNorm(4), nn.BatchNorm2d(4)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    x = make_input((3, 4, 3, 5), torch.float32)
    assert torch.allclose(ours(x), ref(x), rtol=1e-5, atol=1e-5)
    assert torch.allclose(ours.running_var, ref.running_var, rtol=1e-5, atol=1e-6)


# ------------------------------------------- CUDA kernels, emulated on the host (no GPU)
@needs_gxx
def test_cuda_kernels_emulated_on_host(tmp_path):
    """The CUDA kernels of csrc/cuda/batchnorm_device.cuh, compiled for the host with fibers
    as CUDA threads (tests/batchnorm_cuda_emulation.cpp): statistics (split over
    blocks + the warp-shuffle combine), the fused forward, the backward reduction and the
    elementwise backward, NCHW planes (scalar and 16-byte Pack) and channels_last, float,
    float64 and a bfloat16 stand-in, against a float64 reference. Checks their indexing
    where no GPU is available."""
    run_cuda_emulation("batchnorm", tmp_path, timeout=600)


# ------------------------------------------------------------------------- bad input
def test_bad_input():
    x = torch.randn(4, 3, 5, 5)
    with pytest.raises(ValueError, match="expected 4D input"):
        pydl.nn.BatchNorm2d(3)(torch.randn(4, 3, 5))
    with pytest.raises(ValueError, match="expected 2D or 3D input"):
        pydl.nn.BatchNorm1d(3)(x)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        F.batch_norm(torch.randn(5), None, None, training=True)
    # wrong channel count: the buffers/parameters do not match input.size(1)
    with pytest.raises(RuntimeError, match="running_mean should contain 4 elements"):
        pydl.nn.BatchNorm2d(3)(torch.randn(2, 4, 3, 3))
    with pytest.raises(RuntimeError, match="weight should contain 3 elements"):
        F.batch_norm(x, None, None, torch.ones(4), None, training=True)
    with pytest.raises(RuntimeError, match="running_var should contain 3 elements"):
        F.batch_norm(x, torch.zeros(3), torch.ones(3, 1), training=False)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        pydl.nn.BatchNorm2d(3)(torch.randn(1, 3, 1, 1))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        pydl.nn.BatchNorm1d(3)(torch.randn(1, 3))
    with pytest.raises(RuntimeError, match="must be defined in evaluation mode"):
        F.batch_norm(x, None, None, training=False)
    with pytest.raises(TypeError, match="input must be float32"):
        F.batch_norm(torch.ones(4, 3, dtype=torch.int64), None, None, training=True)
    with pytest.raises(ValueError, match="residual must match"):
        F.batch_norm_act(x, None, None, training=True, residual=torch.randn(4, 3, 5, 4))
    with pytest.raises(ValueError, match="act must be one of"):
        F.batch_norm_act(x, None, None, training=True, act="gelu")
    with pytest.raises(ValueError, match="negative_slope must be >= 0"):
        F.batch_norm_act(x, None, None, training=True, act="leaky_relu", negative_slope=-0.1)
    with pytest.raises(ValueError, match="act must be"):
        pydl.nn.BatchNormAct2d(3, act="tanh")
    with pytest.raises(ValueError, match="backend must be one of"):
        F.batch_norm(x, None, None, training=True, backend="cudnn")
    # the C++ ops check their arguments too, for direct torch.ops calls
    with pytest.raises(RuntimeError, match="running_mean must have shape"):
        torch.ops.pydl.bn_fwd_eval(x, torch.zeros(4), torch.ones(3), None, None, None, 1e-5,
                                   "none", 0.0)
    with pytest.raises(RuntimeError, match="unknown activation"):
        torch.ops.pydl.bn_fwd_train(x, None, None, None, 1e-5, "gelu", 0.0)
    with pytest.raises(RuntimeError, match="at least 2 dimensions"):
        torch.ops.pydl.bn_stats(torch.randn(5))
    with pytest.raises(RuntimeError, match="residual and input must have the same shape"):
        torch.ops.pydl.bn_fwd_train(x, None, None, torch.randn(4, 3, 5, 4), 1e-5, "none", 0.0)


if __name__ == "__main__" and len(sys.argv) >= 2 and sys.argv[1] == "--sync-worker":
    _sync_worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6],
                 sys.argv[7])


SECOND = [(t, a, r) for t in (True, False) for a in ("none", "relu", "leaky_relu")
          for r in (True, False)]


@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[1] == "cpu"])
@pytest.mark.parametrize("training,act,residual", SECOND,
                         ids=[f"{'train' if t else 'eval'}-{a}-{'res' if r else 'nores'}"
                              for t, a, r in SECOND])
def test_gradgradcheck(backend, device, training, act, residual):
    """Second derivatives (the backward ops' own backward, _bn_bwd_second and the others in
    pydl/ops/batchnorm.py) against finite differences of the first: training (through the
    batch statistics) and evaluation, every fused activation, with and without a residual,
    with weight and bias and without them, both layouts."""
    if interpreted(backend, device) and (act != "relu" or residual == training):
        pytest.skip("interpreted Triton: a third of the matrix keeps the run short")
    shape = (3, 2, 2, 2) if interpreted(backend, device) else (3, 2, 3, 2)
    alpha = 0.2 if act == "leaky_relu" else 0.0
    rm, rv = _running(2, torch.float64, device)
    for layout, affine in (("contiguous", True), ("channels_last", False)):
        x = make_input(shape, torch.float64, device, layout, requires_grad=True, seed=41)
        ins = [x]
        if affine:
            ins += [make_input((2,), torch.float64, device, requires_grad=True, seed=42) + 1.5,
                    make_input((2,), torch.float64, device, requires_grad=True, seed=43)]
        if residual:
            ins.append(make_input(shape, torch.float64, device, layout, requires_grad=True, seed=44))
        ins = [t.detach().requires_grad_() for t in ins]

        def fn(*ts):
            x, w, b = (ts[0], ts[1], ts[2]) if affine else (ts[0], None, None)
            r = ts[-1] if residual else None
            return F.batch_norm_act(x, rm.clone(), rv.clone(), w, b, training, residual=r,
                                    act=act, negative_slope=alpha, backend=backend)

        assert torch.autograd.gradgradcheck(fn, tuple(ins), eps=1e-6, atol=1e-6), (layout, affine)


def _double_grads(bn, x, create):
    """x's gradient of sum(bn(x)^3 * v) (with the graph), and then the gradients of a
    function of it with respect to x and bn's weight and bias: a gradient penalty's pattern."""
    v = torch.linspace(-1, 1, x.numel(), dtype=x.dtype, device=x.device).view_as(x)
    y = create(x)
    (g,) = torch.autograd.grad((y.pow(3) * v).sum(), x, create_graph=True)
    return torch.autograd.grad((g * g.flip(0)).sum() + g.pow(2).sum(), [x, bn.weight, bn.bias])


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_second_derivatives_match_torch(backend, device, training):
    """A gradient penalty through BatchNorm2d / BatchNormAct2d (+ residual) gives torch's
    values; a third derivative (torch's batch norm has none) equals that of the formula
    written in torch's differentiable arithmetic: pydl's second-derivative formulas are
    differentiable again."""
    shape = (3, 2, 2, 3) if interpreted(backend, device) else (4, 3, 5, 3)
    C = shape[1]
    for act in ("none", "relu"):
        ref = nn.BatchNorm2d(C).double().to(device).train(training)
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5), ref.bias.uniform_(-0.5, 0.5)
            ref.running_mean.uniform_(-0.5, 0.5), ref.running_var.uniform_(0.5, 1.5)
        ours = pydl.nn.BatchNormAct2d(C, act=None if act == "none" else act, backend=backend)
        ours = ours.double().to(device).train(training)
        ours.load_state_dict(ref.state_dict())
        res = make_input(shape, torch.float64, device, seed=52)
        x = make_input(shape, torch.float64, device, seed=51).requires_grad_()

        def torch_fn(x):
            y = ref(x) + res
            return y.relu() if act == "relu" else y

        got = _double_grads(ours, x, lambda x: ours(x, res))
        want = _double_grads(ref, x, torch_fn)
        for a, b, n in zip(got, want, ("x", "weight", "bias")):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-10), (act, n, (a - b).abs().max())
    # third derivative, through the training statistics
    x = make_input(shape, torch.float64, device, seed=53).requires_grad_()
    w = make_input((C,), torch.float64, device, seed=54).requires_grad_()
    v = make_input(shape, torch.float64, device, seed=55)

    def third(bn_fn):
        y = bn_fn(x, w)
        (g1,) = torch.autograd.grad((y * y.tanh() * v).sum(), x, create_graph=True)
        (g2,) = torch.autograd.grad((g1 * v).sum(), x, create_graph=True)
        return torch.autograd.grad(g2.pow(2).sum(), [x, w])

    got = third(lambda x, w: F.batch_norm(x, None, None, w, None, True, backend=backend))
    # (torch's batch_norm stops at second derivatives: the reference is its formula in
    # differentiable tensor arithmetic)
    def composite(x, w):
        var, mean = torch.var_mean(x, dim=(0, 2, 3), keepdim=True, correction=0)
        return (x - mean) * torch.rsqrt(var + 1e-5) * w.view(1, -1, 1, 1)

    assert torch.allclose(composite(x, w), TF.batch_norm(x, None, None, w, None, True))
    want = third(composite)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-9), (a - b).abs().max()
    # torch.func: a Hessian as jacrev of jacrev (under vmap, through the ops' vmap rules)
    w = w.detach()

    def per_channel_energy(bn_fn):
        return lambda x: (bn_fn(x).pow(2) * v).sum(dim=(0, 2, 3))

    hess = torch.func.jacrev(torch.func.jacrev(per_channel_energy(
        lambda x: F.batch_norm_act(x, None, None, w, None, True, act="relu", backend=backend))))
    want = torch.func.jacrev(torch.func.jacrev(per_channel_energy(
        lambda x: TF.batch_norm(x, None, None, w, None, True).relu())))
    assert torch.allclose(hess(x.detach()), want(x.detach()), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend,device", backend_params())
def test_maml_outer_gradient_matches_torch(backend, device):
    """MAML's pattern: an inner SGD step taken with create_graph=True through a conv + batch
    norm + ReLU + pool network (torch.func.functional_call on its parameters), the query loss
    of the adapted parameters differentiated back to the initial ones -- the outer gradient
    equals torch's model's."""
    torch.manual_seed(0)
    small = interpreted(backend, device)
    C = 3 if small else 8
    ref = nn.Sequential(nn.Conv2d(2, C, 3, padding=1), nn.BatchNorm2d(C), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(C, 3)).double().to(device)
    ours = pydl.convert(ref, backend=backend)
    assert type(ours[1]) is pydl.nn.BatchNorm2d
    hw = 4 if small else 6
    xs, ys = make_input((5, 2, hw, hw), torch.float64, device, seed=61), torch.arange(5, device=device) % 3
    xq, yq = make_input((4, 2, hw, hw), torch.float64, device, seed=62), torch.arange(4, device=device) % 3

    def outer(model):
        params = dict(model.named_parameters())
        loss = TF.cross_entropy(torch.func.functional_call(model, params, (xs,)), ys)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        fast = {k: p - 0.4 * g for (k, p), g in zip(params.items(), grads)}
        q = TF.cross_entropy(torch.func.functional_call(model, fast, (xq,)), yq)
        return torch.autograd.grad(q, list(params.values()))

    for a, b in zip(outer(ours), outer(ref)):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10), (a - b).abs().max()
