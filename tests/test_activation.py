"""Activations (relu, leaky_relu, elu, sigmoid, tanh): every backend x dtype x layout
against the float64 oracle, in-place semantics, gradcheck, opcheck, torch.compile, the
nn modules as drop-ins."""
import os
import zlib

import pytest
import torch
import torch.nn.functional as TF
from torch import nn

import pydl
import pydl.functional as F
from pydl.testing import assert_close, check_against_torch, make_input, to_ref
from conftest import run_with_cpu_simd, DTYPE_IDS, DTYPES, backend_params, interpreted, needs_gxx, run_cuda_emulation

# (name, pydl function, torch function, parameter)
ACTS = [
    ("relu", lambda x, **k: F.relu(x, **k), TF.relu),
    ("leaky_relu_0.01", lambda x, **k: F.leaky_relu(x, **k), TF.leaky_relu),
    ("leaky_relu_0.2", lambda x, **k: F.leaky_relu(x, 0.2, **k), lambda x, **k: TF.leaky_relu(x, 0.2, **k)),
    ("elu_1", lambda x, **k: F.elu(x, **k), TF.elu),
    ("elu_0.5", lambda x, **k: F.elu(x, 0.5, **k), lambda x, **k: TF.elu(x, 0.5, **k)),
    ("sigmoid", lambda x, **k: F.sigmoid(x, **k), torch.sigmoid),
    ("tanh", lambda x, **k: F.tanh(x, **k), torch.tanh),
]
ACT_IDS = [a[0] for a in ACTS]
LAYOUTS = ["contiguous", "channels_last", "noncontig", "transposed"]


def shape_for(backend, device):
    # odd sizes; on the C++ backends large enough (44135 elements) to be split across
    # threads / many blocks; tiny under the Triton interpreter
    return (2, 3, 5, 7) if interpreted(backend, device) else (7, 13, 97, 5)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name,fn,torch_fn", ACTS, ids=ACT_IDS)
def test_forward_backward(backend, device, dtype, layout, name, fn, torch_fn):
    x = make_input(shape_for(backend, device), dtype, device, layout, requires_grad=True,
                   seed=zlib.crc32(name.encode()) % 1000,  # not hash(): it changes per process
                   scale=3.0)  # scale 3: saturates sigmoid/tanh too
    check_against_torch(lambda t: fn(t, backend=backend), torch_fn, [x], what=f"{name}/{backend}")


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("name,fn,torch_fn", ACTS[:5], ids=ACT_IDS[:5])
@pytest.mark.parametrize("layout", ["contiguous", "noncontig"])
def test_inplace(backend, device, name, fn, torch_fn, layout):
    # without autograd: the very tensor comes back, overwritten (for a strided view,
    # through the view into its base, leaving the other elements alone)
    base = make_input((3, 5, 7, 4), torch.float32, device)
    base_t = base.clone()
    a, b = (base, base_t) if layout == "contiguous" else (base[..., ::2], base_t[..., ::2])
    out = fn(a, inplace=True, backend=backend)
    assert out is a
    torch_fn(b, inplace=True)
    # not bitwise: torch's elu/expm1 and ours may differ in the last float32 bit
    assert torch.allclose(base, base_t, rtol=1e-6, atol=1e-7)
    # with autograd, on a non-leaf: gradients as torch's in-place op gives
    leaf = make_input((3, 5, 7, 2), torch.float64, device, requires_grad=True, seed=3)
    leaf_t = leaf.detach().clone().requires_grad_()
    y = fn(leaf * 1.5, inplace=True, backend=backend)
    y_t = torch_fn(leaf_t * 1.5, inplace=True)
    g = make_input(y.shape, torch.float64, device, seed=4)
    y.backward(g)
    y_t.backward(g)
    assert_close(leaf.grad, to_ref(leaf_t.grad), leaf_t.grad, "in-place grad")
    # an in-place op on a leaf that requires grad is an error, as in torch
    with pytest.raises(RuntimeError, match="leaf Variable"):
        fn(leaf, inplace=True, backend=backend)


@pytest.mark.parametrize("backend,device", backend_params())
def test_inplace_not_differentiable_cases(backend, device):
    x = make_input((4, 5), torch.float32, device, requires_grad=True) * 1
    with pytest.raises(RuntimeError, match="negative slope"):
        F.leaky_relu(x, -0.1, inplace=True, backend=backend)
    with pytest.raises(RuntimeError, match="negative alpha"):
        F.elu(x, -0.5, inplace=True, backend=backend)
    # but out of place both are fine, and match torch
    check_against_torch(lambda t: F.leaky_relu(t, -0.1, backend=backend),
                        lambda t: TF.leaky_relu(t, -0.1), [x.detach().requires_grad_()])
    check_against_torch(lambda t: F.elu(t, -0.5, backend=backend),
                        lambda t: TF.elu(t, -0.5), [x.detach().requires_grad_()])


@pytest.mark.parametrize("backend,device", backend_params())
def test_special_values(backend, device):
    """NaN/Inf propagate and derivative values at the edges are torch's."""
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-30, -1e-30,
                      88.0, -88.0, 1e4, -1e4], device=device, requires_grad=True)
    for name, fn, torch_fn in ACTS:
        check_against_torch(lambda t: fn(t, backend=backend), torch_fn, [x], what=name)


_SIMD_SCRIPT = r"""
import torch
import torch.nn.functional as TF
import pydl.functional as F
from pydl.testing import check_against_torch, make_input

acts = [(lambda t: F.relu(t, backend="cpu"), TF.relu),
        (lambda t: F.leaky_relu(t, 0.2, backend="cpu"), lambda t: TF.leaky_relu(t, 0.2)),
        (lambda t: F.elu(t, 0.5, backend="cpu"), lambda t: TF.elu(t, 0.5)),
        (lambda t: F.sigmoid(t, backend="cpu"), torch.sigmoid),
        (lambda t: F.tanh(t, backend="cpu"), torch.tanh)]
special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-30, -1e-30, 88.0, -88.0])
for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
    x = make_input((3, 5, 41, 37), dt, seed=4, scale=3.0)   # 22755 values: vector body and tail
    x.view(-1)[:special.numel()] = special.to(dt)
    x.requires_grad_()
    for i, (ours, theirs) in enumerate(acts):
        if i == 2:  # elu at NaN: torch's own vectorized and scalar backward disagree
            x = x.detach().nan_to_num(1.0).requires_grad_()
        check_against_torch(ours, theirs, [x], what=f"{dt}/{i}")
        if i < 3:  # in place (the loop reads and writes the same memory): the same bits
            y = x.detach().clone()
            [lambda t: F.relu_(t, backend="cpu"), lambda t: F.leaky_relu_(t, 0.2, backend="cpu"),
             lambda t: F.elu_(t, 0.5, backend="cpu")][i](y)
            assert torch.equal(y.nan_to_num(), ours(x.detach()).nan_to_num())
print("ok")
"""


@pytest.mark.parametrize("isa", ["native", "avx2", "default"])
def test_cpu_simd_copies(isa):
    """The CPU activations' loops are compiled for AVX-512, AVX2 and the baseline, the
    widest the CPU has chosen at run time; PYDL_CPU_SIMD caps the choice, so each copy this
    machine has runs here: every activation and dtype, with NaN, infinities and signed
    zeros, against the oracle, and in place."""
    run_with_cpu_simd(isa, ["-c", _SIMD_SCRIPT])


@pytest.mark.parametrize("backend,device", backend_params())
def test_empty_and_scalar(backend, device):
    for shape in [(0,), (3, 0, 5), ()]:
        x = make_input(shape, torch.float32, device, requires_grad=True)
        for name, fn, torch_fn in ACTS:
            y = fn(x, backend=backend)
            assert y.shape == x.shape
            y.sum().backward()
            assert x.grad.shape == x.shape
            x.grad = None


@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[1] == "cpu"])
@pytest.mark.parametrize("name,fn,torch_fn", ACTS, ids=ACT_IDS)
def test_gradcheck(backend, device, name, fn, torch_fn):
    x = make_input((3, 4, 5), torch.float64, device, requires_grad=True, seed=11)
    x = x + 0.05 * torch.sign(x.detach())  # keep away from the kink at 0
    x = x.detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fn(t, backend=backend), (x,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("backend,device", [p for p in backend_params() if p.values[1] == "cpu"])
@pytest.mark.parametrize("name,fn,torch_fn", ACTS, ids=ACT_IDS)
def test_gradgradcheck(backend, device, name, fn, torch_fn):
    """second derivatives (double backward through act_bwd), out of place and in place"""
    x = make_input((3, 4, 5), torch.float64, device, requires_grad=True, seed=12)
    x = (x + 0.05 * torch.sign(x.detach())).detach().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda t: fn(t, backend=backend), (x,), eps=1e-6, atol=1e-7)
    if name.startswith(("relu", "leaky", "elu")):
        assert torch.autograd.gradgradcheck(lambda t: fn(t * 1, inplace=True, backend=backend), (x,),
                                            eps=1e-6, atol=1e-7)
    # and against torch's own double backward
    x2 = x.detach().clone().requires_grad_()
    (g1,) = torch.autograd.grad(fn(x, backend=backend).square().sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad(torch_fn(x2).square().sum(), x2, create_graph=True)
    (h1,) = torch.autograd.grad(g1.sin().sum(), x)
    (h2,) = torch.autograd.grad(g2.sin().sum(), x2)
    assert torch.allclose(h1, h2, atol=1e-10, rtol=1e-8)


def _ops_for(backend):
    return torch.ops.pydl_triton if backend == "triton" else torch.ops.pydl


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("act,alpha", [("relu", 0.0), ("leaky_relu", 0.1), ("elu", 1.0),
                                       ("sigmoid", 0.0), ("tanh", 0.0)])
def test_opcheck(backend, device, act, alpha):
    ops = _ops_for(backend)
    x = make_input((3, 5, 4, 2), torch.float32, device, requires_grad=True)
    xcl = make_input((3, 5, 4, 2), torch.float32, device, "channels_last", requires_grad=True)
    for t in (x, xcl):
        torch.library.opcheck(ops.act_fwd.default, (t, act, alpha))
        torch.library.opcheck(ops.act_fwd_.default, (t.detach().clone(), act, alpha))
        g = make_input(t.shape, torch.float32, device, seed=5)
        torch.library.opcheck(ops.act_bwd.default, (g, t.detach(), act, alpha, act != "elu"))


@pytest.mark.parametrize("backend,device", backend_params())
def test_compile_fullgraph(backend, device):
    def block(x):
        y = F.elu(F.leaky_relu(x, 0.2, backend=backend), 0.7, backend=backend)
        y = F.relu(y * 2.0, inplace=True, backend=backend)  # in place on a non-leaf
        return F.sigmoid(y, backend=backend) + F.tanh(x, backend=backend)

    x = make_input((3, 4, 5), torch.float32, device, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager" if interpreted(backend, device) else "inductor")
    y, y2 = block(x), compiled(x2)
    assert torch.equal(y, y2)
    g = make_input(y.shape, torch.float32, device, seed=9)
    y.backward(g)
    y2.backward(g)
    assert torch.equal(x.grad, x2.grad)


# ----------------------------------------------------------------------- nn modules
MODULES = [
    (pydl.nn.ReLU, nn.ReLU, [{}, {"inplace": True}]),
    (pydl.nn.LeakyReLU, nn.LeakyReLU, [{}, {"negative_slope": 0.3}, {"negative_slope": 0.2, "inplace": True}]),
    (pydl.nn.ELU, nn.ELU, [{}, {"alpha": 0.4}, {"alpha": 2.0, "inplace": True}]),
    (pydl.nn.Sigmoid, nn.Sigmoid, [{}]),
    (pydl.nn.Tanh, nn.Tanh, [{}]),
]


@pytest.mark.parametrize("ours,theirs,kwargs_list", MODULES, ids=[m[1].__name__ for m in MODULES])
def test_module_is_a_drop_in(ours, theirs, kwargs_list):
    for kw in kwargs_list:
        a, b = ours(**kw), theirs(**kw)
        assert isinstance(a, theirs)
        assert repr(a) == repr(b)
        assert a.state_dict().keys() == b.state_dict().keys()
        for attr in ("inplace", "negative_slope", "alpha"):
            assert getattr(a, attr, None) == getattr(b, attr, None)
        x = make_input((4, 6, 3), torch.float32)
        assert torch.allclose(a(x.clone()), b(x.clone()), atol=1e-6)


@pytest.mark.parametrize("backend,device", backend_params())
def test_model_with_pydl_activations_matches_torch(backend, device):
    """A torch.nn model whose activations are swapped for pydl's gives the same outputs
    and gradients."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(13, 17), nn.ReLU(inplace=True), nn.Linear(17, 11), nn.LeakyReLU(0.1),
                        nn.Linear(11, 9), nn.ELU(), nn.Linear(9, 7), nn.Tanh(), nn.Linear(7, 5),
                        nn.Sigmoid()).to(device)
    ours = nn.Sequential(*[m for m in ref]).to(device)
    swap = {nn.ReLU: pydl.nn.ReLU, nn.LeakyReLU: pydl.nn.LeakyReLU, nn.ELU: pydl.nn.ELU,
            nn.Tanh: pydl.nn.Tanh, nn.Sigmoid: pydl.nn.Sigmoid}
    ours = nn.Sequential(*[swap[type(m)](**{k: getattr(m, k) for k in ("inplace", "negative_slope", "alpha")
                                            if hasattr(m, k)}, backend=backend)
                           if type(m) in swap else m for m in ref])
    assert sum(isinstance(m, pydl.nn.ReLU | pydl.nn.LeakyReLU | pydl.nn.ELU | pydl.nn.Tanh | pydl.nn.Sigmoid)
               for m in ours) == 5
    x = make_input((6, 13), torch.float32, device)
    y_ref = ref(x)
    g_ref = torch.autograd.grad(y_ref.sum(), list(ref.parameters()))
    y = ours(x)
    g = torch.autograd.grad(y.sum(), list(ours.parameters()))
    assert torch.allclose(y, y_ref, atol=1e-6, rtol=1e-5)
    for a, b in zip(g, g_ref):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


# ------------------------------------------- CUDA kernels, emulated on the host (no GPU)
@needs_gxx
def test_cuda_kernels_emulated_on_host(tmp_path):
    """The CUDA kernels of csrc/cuda/activation_device.cuh, compiled for the host with
    fibers as CUDA threads (tests/activation_cuda_emulation.cpp): every activation,
    forward (in place too) and backward from the saved output or input, the 16-byte vector
    kernel and the scalar one the launchers pick for misaligned pointers, sizes under and
    not a multiple of the vector width (the tail), the launchers' grid and a 2-block grid
    (grid-stride loops), float, float64 and a bfloat16 stand-in, NaN and +-inf inputs,
    against a float64 reference from torch's definitions; guard regions catch writes out
    of bounds, and a misaligned vector access aborts. Checks their indexing where no GPU
    is available."""
    run_cuda_emulation("activation", tmp_path)


# ------------------------------------------------------------------------- bad input
def test_bad_input():
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        F.relu([1.0, 2.0])
    with pytest.raises(TypeError, match="input must be float32"):
        F.relu(torch.arange(5))
    with pytest.raises(ValueError, match="kind must be one of"):
        pydl.ops.act(torch.randn(3), "gelu")
    with pytest.raises(ValueError, match="backend must be one of"):
        F.relu(torch.randn(3), backend="cudnn")
    # the C++ op checks its arguments too, for direct torch.ops calls
    with pytest.raises(RuntimeError, match="grad_output and saved must have the same shape"):
        torch.ops.pydl.act_bwd(torch.randn(3), torch.randn(4), "relu", 0.0, True)
    with pytest.raises(RuntimeError, match="unknown activation"):
        torch.ops.pydl.act_fwd(torch.randn(3), "gelu", 0.0)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="the Triton interpreter only")
def test_interpreter_rounds_bf16_like_the_gpu():
    """conftest makes the interpreter's float32 -> bfloat16 conversion round to nearest even,
    as cvt.rn.bf16.f32 does (its own truncates): a Triton kernel's bf16 output must equal
    torch's rounding of the same float32 values -- ties, carries into the exponent,
    overflow to infinity, subnormals, NaN and infinities included."""
    from pydl.kernels import activation as K
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4000, generator=g) * torch.logspace(-40, 38, 4000).float()
    ties = (torch.arange(1, 200, dtype=torch.int32) << 16 | 0x8000).view(torch.float32)
    special = torch.tensor([0.0, -0.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 3.3895e38, -3.3895e38,
                            1e-40, -1e-40, float("inf"), float("-inf"), float("nan")])
    x = torch.cat([x, -x, ties, special])
    y = torch.empty(x.shape, dtype=torch.bfloat16)
    K.act_fwd(x, y, "leaky_relu", 1.0)  # y = x for every x, rounded by the kernel's store
    ref = x.to(torch.bfloat16)
    assert torch.equal(y.isnan(), ref.isnan())
    assert torch.equal(y[~ref.isnan()], ref[~ref.isnan()])
