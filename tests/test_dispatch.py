"""Backend selection: explicit backend= > with pydl.backend(...) / PYDL_BACKEND > auto;
a backend that cannot run raises, nothing falls back silently."""
import pytest
import torch

import pydl
from pydl import _dispatch
from pydl._dispatch import BackendStatus, BackendUnavailable
from conftest import backend_params, interpreted

CPU = torch.device("cpu")


def test_precedence(monkeypatch):
    monkeypatch.setattr(_dispatch, "_ENV", None)
    assert _dispatch.requested() == "auto"
    monkeypatch.setattr(_dispatch, "_ENV", "torch")  # PYDL_BACKEND=torch at import
    assert _dispatch.requested() == "torch"
    with pydl.backend("cpu"):          # the context beats the environment
        assert _dispatch.requested() == "cpu"
        with pydl.backend("triton"):   # the innermost context wins
            assert _dispatch.requested() == "triton"
            assert _dispatch.requested("torch") == "torch"  # explicit beats everything
        assert _dispatch.requested() == "cpu"
    assert _dispatch.requested() == "torch"


def test_context_restored_after_exception():
    with pytest.raises(KeyError):
        with pydl.backend("torch"):
            raise KeyError
    assert not _dispatch._STACK


def test_bad_names(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        pydl.functional.relu(torch.randn(3), backend="cudnn")
    with pytest.raises(ValueError, match=r"pydl.backend\(name\) must be one of"):
        with pydl.backend("gpu"):
            pass
    monkeypatch.setattr(_dispatch, "_ENV", "fast")
    with pytest.raises(ValueError, match="PYDL_BACKEND must be one of"):
        pydl.functional.relu(torch.randn(3))


def test_environment_variable(tmp_path):
    import subprocess
    import sys
    code = ("import torch, pydl; from pydl import _dispatch\n"
            "assert _dispatch.requested() == 'torch'\n"
            "with pydl.backend('cpu'): assert _dispatch.requested() == 'cpu'\n")
    env = dict(__import__("os").environ, PYDL_BACKEND="torch")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_auto_on_cpu_is_cpp():
    assert _dispatch.resolve("relu", CPU) == "cpu"


def test_torch_backend_runs_torch():
    x = torch.randn(5)
    assert torch.equal(pydl.functional.elu(x, 0.3, backend="torch"), torch.nn.functional.elu(x, 0.3))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_unavailable_backend_raises_not_falls_back():
    with pytest.raises(BackendUnavailable, match="cuda backend cannot run on cpu tensors"):
        pydl.functional.relu(torch.randn(3), backend="cuda")
    with pydl.backend("cuda"):
        with pytest.raises(BackendUnavailable):
            pydl.nn.ReLU()(torch.randn(3))


def test_auto_on_cuda_prefers_measured_then_what_is_usable(monkeypatch):
    """With a (simulated) GPU: auto takes AUTO_CUDA's choice, the other kernel family when
    the preferred one cannot run, and raises when neither can."""
    gpu = BackendStatus(True, True, ("cuda",), "")
    none = BackendStatus(True, False, (), "no GPU")
    dev = torch.device("cuda")
    status = dict(_dispatch._STATUS)
    monkeypatch.setattr(_dispatch, "_RESOLVED", {})  # the cache assumes a fixed _STATUS
    monkeypatch.setattr(_dispatch, "_STATUS", {**status, "cuda": gpu, "triton": gpu})
    monkeypatch.setattr(_dispatch, "AUTO_CUDA", {"relu": "triton"})
    assert _dispatch.resolve("relu", dev) == "triton"
    assert _dispatch.resolve("elu", dev) == "cuda"
    monkeypatch.setattr(_dispatch, "_RESOLVED", {})
    monkeypatch.setattr(_dispatch, "_STATUS", {**status, "cuda": gpu, "triton": none})
    assert _dispatch.resolve("relu", dev) == "cuda"
    monkeypatch.setattr(_dispatch, "_RESOLVED", {})
    monkeypatch.setattr(_dispatch, "_STATUS", {**status, "cuda": none, "triton": none})
    with pytest.raises(BackendUnavailable):
        _dispatch.resolve("relu", dev)
    with pytest.raises(BackendUnavailable, match="cuda backend"):
        _dispatch.resolve("relu", dev, "cuda")   # asked for: never replaced


def _python_calls(fn, file_suffix, record):
    """record(frame) for each call of a Python function defined in a file ending with
    file_suffix during fn(), where it returns something; the list of those."""
    import sys
    seen = []

    def prof(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.replace("\\", "/").endswith(file_suffix):
            r = record(frame)
            if r:
                seen.append(r)
    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return seen


def _library_autograd_frames(fn):
    """The Python functions of torch.library's generic autograd layer (torch/_library/
    autograd.py: its per-call argument filling and aliasing checks) that run during fn()."""
    return _python_calls(fn, "torch/_library/autograd.py", lambda f: f.f_code.co_name)


def _pydl_torch_ops_calls(fn):
    """The pydl ops that fn() calls through torch.ops (OpOverload.__call__)."""
    def name(frame):
        if frame.f_code.co_name == "__call__":
            n = getattr(frame.f_locals.get("self"), "_name", "")
            return n if n.startswith("pydl") else None
    return _python_calls(fn, "torch/_ops.py", name)


def _mutating_triton_ops():
    return {f"pydl_triton::{n}" for n in ("act_fwd_", "sgd_step", "adam_step", "rmsprop_step",
                                          "adagrad_step")}


_EAGER_BACKENDS = [b for b in ("cpu", "triton") if "cpu" in pydl.backends()[b].devices]


def _eager_step(backend, optimizer=True):
    """A small training step's calls of every op family (forward with and without a
    graph, backward, in-place activation, optimizer step unless optimizer=False); returns
    (step, its tensors)."""
    F = pydl.functional
    x = torch.randn(2, 4, 6, 6).to(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(4, 4, 3, 3, requires_grad=True)
    rm, rv = torch.zeros(4), torch.ones(4)
    g, b = torch.randn(4, requires_grad=True), torch.randn(4, requires_grad=True)
    opt = pydl.optim.Adam([w, g, b], lr=1e-3, backend=backend)

    def step():
        y = F.conv2d(x, w, None, padding=1, backend=backend)
        y = F.batch_norm(y, rm, rv, g, b, True, backend=backend)
        y = F.relu(y, backend=backend)
        y = F.max_pool2d(y, 2, backend=backend)
        y = F.adaptive_avg_pool2d(y, 1, backend=backend)
        y.sum().backward()
        if optimizer:
            opt.step()
        with torch.no_grad():
            F.batch_norm(x, rm, rv, g, b, False, backend=backend)
            F.avg_pool2d(x, 2, backend=backend)
            F.relu(x.detach().clone(), inplace=True, backend=backend)
    return step, (x, w, g)


@pytest.mark.parametrize("backend", _EAGER_BACKENDS)
def test_eager_calls_skip_torch_ops(backend):
    """In eager mode (no dispatch mode, no __torch_function__ override) the ops are reached
    by their EAGER entry points (pydl._C.eager for the C++ ops, the bare Python function
    for the Triton ones), not through torch.ops' boxed calling convention (OpOverload.__call__
    in torch/_ops.py, then for a custom_op its Python kernel in torch/_library/custom_ops.py):
    ~3 us (C++) and ~5 us (Triton) of host time a call. Exception: the Triton ops that
    mutate their arguments, for which torch.ops also bumps the version counters."""
    step, (x, w, g) = _eager_step(backend)
    step()
    calls = _pydl_torch_ops_calls(step)
    if backend == "cpu":
        assert calls == []
    else:
        assert set(calls) == {"pydl_triton::adam_step", "pydl_triton::act_fwd_"}
    # (the in-place activation goes below torch.ops' autograd layer: no gradient is needed
    # there; test_eager_calls_skip_torch_library_autograd)
    assert x.grad is not None and w.grad is not None and g.grad is not None


def test_eager_entry_points_cover_every_op():
    """Every C++ op has a pydl._C.eager entry point (its typed signature is checked against
    the schema when the module loads), and every Triton op that mutates nothing has one."""
    from pydl.ops._util import EAGER
    names = [n for n in torch._C._dispatch_get_all_op_names() if n.startswith("pydl")]
    cxx = {n for n in names if n.startswith("pydl::")}
    assert len(cxx) >= 25 and {n for n in EAGER if n.startswith("pydl::")} == cxx
    if _dispatch._kernels is not None:
        triton = {n for n in names if n.startswith("pydl_triton::")}
        mutating = {n for n in triton
                    if any(a.alias_info is not None and a.alias_info.is_write for a in
                           getattr(torch.ops.pydl_triton, n.split("::")[1]).default._schema.arguments)}
        assert mutating == _mutating_triton_ops()
        assert {n for n in EAGER if n.startswith("pydl_triton::")} == triton - mutating


@pytest.mark.parametrize("backend", _EAGER_BACKENDS)
def test_modes_and_overrides_take_torch_ops(backend):
    """With a Python dispatch mode active, or a TorchFunctionMode (torch.device's context),
    the ops go through torch.ops, where the mode sees them, and compute the same values."""
    from torch.utils._python_dispatch import TorchDispatchMode
    F = pydl.functional

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    x = torch.randn(2, 3, 7, 5).to(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(4, 3, 3, 3)
    ref = F.max_pool2d(F.conv2d(x, w, padding=1, backend=backend), 2, backend=backend)
    gref, = torch.autograd.grad(ref.sum(), x)
    with Record() as rec:
        y = F.max_pool2d(F.conv2d(x, w, padding=1, backend=backend), 2, backend=backend)
        gx, = torch.autograd.grad(y.sum(), x)
    ns = "pydl" if backend == "cpu" else "pydl_triton"
    for op in ("conv2d_fwd", "max_pool2d_fwd", "max_pool2d_bwd", "conv2d_bwd_input"):
        assert f"{ns}.{op}.default" in rec.ops
    assert torch.equal(y, ref) and torch.equal(gx, gref)
    with torch.device("cpu"):
        assert torch.equal(F.max_pool2d(F.conv2d(x, w, padding=1, backend=backend), 2,
                                        backend=backend), ref)


@pytest.mark.parametrize("backend", _EAGER_BACKENDS)
def test_torch_function_override_inside_a_tensor_list(backend):
    """A tensor subclass that overrides __torch_function__ sees the pydl ops it takes part in
    also when it sits inside a list argument (an optimizer's parameter list), as with
    torch.ops, which looks inside lists: the eager entry point is taken only when no tensor
    of any list overrides it. The step's values are torch.optim's."""
    class Logged(torch.Tensor):
        seen = []

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            cls.seen.append(str(func))
            return super().__torch_function__(func, types, args, kwargs or {})

    torch.manual_seed(0)
    ref = [torch.randn(5, requires_grad=True), torch.randn(3, 2, requires_grad=True)]
    ps = [r.detach().clone().as_subclass(Logged).requires_grad_() for r in ref]
    for r, p in zip(ref, ps):
        r.grad = torch.randn_like(r)
        p.grad = r.grad.clone()
    opt = pydl.optim.SGD(ps, lr=0.1, momentum=0.9, backend=backend)
    topt = torch.optim.SGD(ref, lr=0.1, momentum=0.9)
    for _ in range(2):
        Logged.seen.clear()
        opt.step()
        topt.step()
        ns = "pydl" if backend == "cpu" else "pydl_triton"
        assert any(f.startswith(f"{ns}.") for f in Logged.seen), Logged.seen
    for r, p in zip(ref, ps):
        assert torch.allclose(p.as_subclass(torch.Tensor), r, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", _EAGER_BACKENDS)
def test_eager_calls_skip_torch_library_autograd(backend):
    """In eager mode every op goes through pydl.ops._util.differentiable's fast path: an
    autograd.Function when a gradient is needed, straight below autograd when not --
    never through torch.library's generic Python autograd kernel, which costs tens of us
    of host time per call (on a GPU, time the device sits idle for a small layer). (The
    optimizer steps are ops without autograd; the Triton ones reach their kernels through
    torch.ops: see test_eager_calls_skip_torch_ops.)"""
    step, (x, w, g) = _eager_step(backend, optimizer=False)
    step()  # first calls may compile or cache
    assert _library_autograd_frames(step) == []
    assert x.grad is not None and w.grad is not None and g.grad is not None


def test_needs_grad_looks_at_the_schema_tensor_arguments():
    """The eager fast path decides autograd or not from the arguments the op's schema types
    as tensors (Tensor, Tensor?, Tensor[]) -- their positions found once per op."""
    from pydl.ops._util import _needs_grad, _tensor_positions
    schema = torch._C.parse_schema("f(Tensor x, Tensor w, Tensor? b, int[] s, Tensor[] ts, float a) -> Tensor")
    single, lists = _tensor_positions(schema)
    assert single == (0, 1, 2) and lists == (4,)
    x, w = torch.randn(2), torch.randn(2)
    wg, tg = torch.randn(2, requires_grad=True), torch.randn(2, requires_grad=True)
    assert not _needs_grad((x, w, None, [1], [x], 1.0), single, lists)
    assert _needs_grad((x, wg, None, [1], [x], 1.0), single, lists)
    assert _needs_grad((x, w, wg, [1], [x], 1.0), single, lists)
    assert _needs_grad((x, w, None, [1], [x, tg], 1.0), single, lists)
    with torch.no_grad():
        assert not _needs_grad((x, wg, None, [1], [tg], 1.0), single, lists)


@pytest.mark.parametrize("backend", [b for b in ("cpu", "triton")
                                     if "cpu" in pydl.backends()[b].devices])
def test_torch_func_grad(backend):
    """The ops' autograd.Functions keep forward and setup_context apart, the form torch.func
    transforms accept: torch.func.grad through conv, batch norm, pooling and activations
    gives torch's gradients, and torch.func.jacrev torch's Jacobian."""
    F, TF = pydl.functional, torch.nn.functional
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=gen)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=gen)

    def net(f, a, **kw):
        y = f.conv2d(a, w, padding=1, **kw)
        y = f.batch_norm(y, None, None, None, None, True, **kw)
        y = f.max_pool2d(f.relu(y, **kw), 2, **kw)
        return f.adaptive_avg_pool2d(y, 1, **kw).pow(2).sum()

    ours = torch.func.grad(lambda a: net(F, a, backend=backend))(x)
    ref = torch.func.grad(lambda a: net(TF, a))(x)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)
    # jacrev: the backward vmapped over the rows of the Jacobian (pydl.ops._vmap's rules)
    def rows(f, a, **kw):
        return f.adaptive_avg_pool2d(f.max_pool2d(f.relu(f.conv2d(a, w, padding=1, **kw), **kw),
                                                  2, **kw), 1, **kw).flatten()
    ours = torch.func.jacrev(lambda a: rows(F, a, backend=backend))(x)
    ref = torch.func.jacrev(lambda a: rows(TF, a))(x)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)


def _vmap_cases(F, kw, dev, dt):
    """(name, function, args, in_dims) per op: what torch.vmap maps pydl's ops over."""
    g = torch.Generator().manual_seed(1)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dev, dt)
    x, w, b = r(3, 2, 4, 7, 6), r(5, 4, 3, 3), r(5)
    ws, c = r(3, 6, 2, 3, 3), r(4)
    mean, var = r(4), r(4).abs() + 0.5

    def bn_act(x, res):
        if hasattr(F, "batch_norm_act"):
            return F.batch_norm_act(x, None, None, c, c, True, residual=res, **kw)
        return F.relu(F.batch_norm(x, None, None, c, c, True) + res)
    return [
        ("conv2d", lambda x: F.conv2d(x, w, b, stride=2, padding=1, **kw), (x,), 0),
        ("conv2d batch dim 1", lambda x: F.conv2d(x, w, None, padding=(0, 1), **kw),
         (x.movedim(0, 1),), 1),
        ("conv2d batched weight (an ensemble)", lambda x, w: F.conv2d(x, w, groups=2, **kw),
         (x, ws), 0),
        ("relu", lambda x: F.relu(x, **kw), (x,), 0),
        ("leaky_relu", lambda x: F.leaky_relu(x, 0.1, **kw), (x,), 0),
        ("elu", lambda x: F.elu(x, **kw), (x,), 0),
        ("sigmoid", lambda x: F.sigmoid(x, **kw), (x,), 0),
        ("relu_ in place", lambda x: F.relu_(x.clone(), **kw), (x,), 0),
        ("max_pool2d", lambda x: F.max_pool2d(x, 3, 2, 1, return_indices=True, **kw), (x,), 0),
        ("avg_pool2d", lambda x: F.avg_pool2d(x, 2, ceil_mode=True, **kw), (x,), 0),
        ("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, (3, 2), **kw), (x,), 0),
        ("adaptive_max_pool2d", lambda x: F.adaptive_max_pool2d(x, 3, return_indices=True, **kw),
         (x,), 0),
        ("batch_norm eval", lambda x: F.batch_norm(x, mean, var, c, c, False, **kw), (x,), 0),
        ("batch_norm train, no running stats",
         lambda x: F.batch_norm(x, None, None, c, c, True, **kw), (x,), 0),
        ("batch_norm + residual + relu (fused in pydl)", bn_act, (x, x.flip(0)), 0),
    ]


@pytest.mark.parametrize("backend,device", backend_params())
def test_vmap_as_torch(backend, device):
    """torch.vmap over pydl's ops (pydl.ops._vmap's rules) gives torch's vmap results: a
    batch dimension first or elsewhere, a batched weight, in-place activations, indices,
    per-sample batch statistics; and torch.func.grad inside it -- each op's gradient."""
    dt = torch.float64  # (every backend has it: the comparison is exact up to summation order)
    tol = dict(rtol=1e-9, atol=1e-12)
    ours = _vmap_cases(pydl.functional, {"backend": backend}, device, dt)
    ref = _vmap_cases(torch.nn.functional, {}, device, dt)
    for (name, f, args, d), (_, tf, _, _) in zip(ours, ref):
        torch.testing.assert_close(torch.vmap(f, in_dims=d)(*args),
                                   torch.vmap(tf, in_dims=d)(*args), **tol, msg=name)

        def first(fn):
            def loss(*a):
                y = fn(*a)
                return (y[0] if isinstance(y, tuple) else y).pow(2).sum()
            return loss
        grads = torch.vmap(torch.func.grad(first(f), argnums=tuple(range(len(args)))),
                           in_dims=d)(*args)
        grads_t = torch.vmap(torch.func.grad(first(tf), argnums=tuple(range(len(args)))),
                             in_dims=d)(*args)
        torch.testing.assert_close(grads, grads_t, **tol, msg=f"{name}: gradients")
    # training batch norm updating shared running statistics from per-sample ones: an
    # error, as torch's; without them (torch.func.replace_all_batch_norm_modules_), torch's
    x = ref[0][2][0]
    m = pydl.nn.BatchNorm2d(4, backend=backend).to(device, dt)
    with pytest.raises(RuntimeError, match="track_running_stats=False"):
        torch.vmap(m)(x)
    m_t = torch.nn.BatchNorm2d(4).to(device, dt)
    torch.func.replace_all_batch_norm_modules_(m)
    torch.func.replace_all_batch_norm_modules_(m_t)
    torch.testing.assert_close(torch.vmap(m)(x), torch.vmap(m_t)(x), **tol)


def _forward_ad_cases(F, kw, dev, small):
    """(name, function, differentiable inputs) per op, for forward-mode AD."""
    g = torch.Generator().manual_seed(2)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dev)
    x = r(2, 3, 4, 5) if small else r(3, 4, 7, 6)
    C = x.shape[1]
    w, b, c, d = r(5, C, 3, 3), r(5), r(C).abs() + 0.5, r(C)
    mean, var = r(C), r(C).abs() + 0.5

    def bn_act(x, c, d, res):
        if hasattr(F, "batch_norm_act"):
            return F.batch_norm_act(x, None, None, c, d, True, residual=res,
                                    act="leaky_relu", negative_slope=0.2, **kw)
        return F.leaky_relu(F.batch_norm(x, None, None, c, d, True) + res, 0.2)

    def conv_relu(x, w, b):
        if "backend" in kw:  # pydl: the ReLU fused into the conv
            return pydl.ops.conv2d(x, w, b, 2, 1, activation="relu", **kw)
        return F.conv2d(x, w, b, 2, 1).relu()
    return [
        ("conv2d", lambda x, w, b: F.conv2d(x, w, b, stride=(1, 2), padding=1, **kw), (x, w, b)),
        ("conv2d + relu (fused in pydl)", conv_relu, (x, w, b)),
        ("relu", lambda x: F.relu(x, **kw), (x,)),
        ("leaky_relu", lambda x: F.leaky_relu(x, 0.1, **kw), (x,)),
        ("elu in place", lambda x: F.elu(x.clone(), inplace=True, **kw), (x,)),
        ("sigmoid", lambda x: F.sigmoid(x, **kw), (x,)),
        ("tanh", lambda x: F.tanh(x, **kw), (x,)),
        ("max_pool2d", lambda x: F.max_pool2d(x, 3, 2, 1, **kw), (x,)),
        ("avg_pool2d", lambda x: F.avg_pool2d(x, 2, ceil_mode=True, **kw), (x,)),
        ("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, (3, 2), **kw), (x,)),
        ("adaptive_max_pool2d", lambda x: F.adaptive_max_pool2d(x, 2, **kw), (x,)),
        ("batch_norm eval", lambda x, c, d: F.batch_norm(x, mean, var, c, d, False, **kw), (x, c, d)),
        ("batch_norm train", lambda x, c, d: F.batch_norm(x, None, None, c, d, True, **kw), (x, c, d)),
        ("batch_norm + residual + leaky_relu (fused in pydl)", bn_act, (x, c, d, x.flip(0))),
    ]


@pytest.mark.parametrize("backend,device", backend_params())
def test_forward_mode_ad_as_torch(backend, device):
    """Forward-mode AD through every op (each autograd.Function's jvp): torch.func.jvp,
    torch.autograd.forward_ad's dual tensors, and forward-over-reverse (the jvp of a
    gradient: the backward ops' own jvps) give torch's tangents. Before, a dual tensor went
    through pydl's ops with its tangent silently dropped."""
    from torch.autograd import forward_ad as fwAD
    tol = dict(rtol=1e-9, atol=1e-11)
    small = interpreted(backend, device)
    ours = _forward_ad_cases(pydl.functional, {"backend": backend}, device, small)
    ref = _forward_ad_cases(torch.nn.functional, {}, device, small)
    if small:  # interpreted Triton: one case per op family keeps the run short
        ours, ref = zip(*[(o, r) for o, r in zip(ours, ref) if o[0] in _ONE_PER_FAMILY])
    gen = torch.Generator().manual_seed(3)
    for (name, f, ins), (_, tf, _) in zip(ours, ref):
        ts = tuple(torch.randn(t.shape, generator=gen, dtype=t.dtype).to(device) for t in ins)
        y, t = torch.func.jvp(f, ins, ts)
        y_t, t_t = torch.func.jvp(tf, ins, ts)
        torch.testing.assert_close((y, t), (y_t, t_t), **tol, msg=f"{name}: torch.func.jvp")
        with fwAD.dual_level():
            dual = f(*[fwAD.make_dual(a, b) for a, b in zip(ins, ts)])
            tangent = fwAD.unpack_dual(dual).tangent
        assert tangent is not None, name
        torch.testing.assert_close(tangent, t_t, **tol, msg=f"{name}: dual tensors")

        def grad_of(fn):
            return torch.func.grad(lambda *a: fn(*a).pow(2).sum(), argnums=tuple(range(len(ins))))
        hv = torch.func.jvp(grad_of(f), ins, ts)[1]
        hv_t = torch.func.jvp(grad_of(tf), ins, ts)[1]
        torch.testing.assert_close(hv, hv_t, **tol, msg=f"{name}: forward over reverse")


_ONE_PER_FAMILY = ("conv2d + relu (fused in pydl)", "elu in place", "max_pool2d",
                   "adaptive_avg_pool2d", "batch_norm + residual + leaky_relu (fused in pydl)")


@pytest.mark.parametrize("backend", [b for b in ("cpu",) if "cpu" in pydl.backends()[b].devices])
def test_forward_mode_gradcheck(backend):
    """Every jvp against finite differences (gradcheck's check_forward_ad), and the backward
    ops' jvps too (gradgradcheck's check_fwd_over_rev), batch norm with and without its
    weight, in training and evaluation. (The formulas are the same Python for every backend;
    test_forward_mode_ad_as_torch runs them on each.)"""
    for name, f, ins in _forward_ad_cases(pydl.functional, {"backend": backend}, "cpu", True):
        ins = tuple(t.detach().requires_grad_() for t in ins)
        assert torch.autograd.gradcheck(f, ins, check_forward_ad=True, check_backward_ad=False,
                                        check_undefined_grad=False, check_batched_grad=False), name
        assert torch.autograd.gradgradcheck(f, ins, check_fwd_over_rev=True,
                                            check_rev_over_rev=False, check_undefined_grad=False), name
    x = torch.randn(3, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    for training in (True, False):
        fn = lambda x: pydl.functional.batch_norm(x, torch.zeros(2, dtype=x.dtype),  # noqa: E731
                                                  torch.ones(2, dtype=x.dtype), None, None,
                                                  training, backend=backend)
        assert torch.autograd.gradcheck(fn, (x,), check_forward_ad=True, check_backward_ad=False,
                                        check_undefined_grad=False, check_batched_grad=False)
        assert torch.autograd.gradgradcheck(fn, (x,), check_fwd_over_rev=True,
                                            check_rev_over_rev=False, check_undefined_grad=False)


@pytest.mark.parametrize("backend,device", backend_params())
def test_hessian_of_a_network(backend, device):
    """torch.func.hessian (jacfwd of jacrev: forward over reverse, vmapped) of a small
    conv / batch norm / ReLU / pool network's loss with respect to its input equals
    torch's."""
    F, TF = pydl.functional, torch.nn.functional
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64, generator=gen).to(device)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=gen).to(device)

    def net(f, a, **kw):
        y = f.conv2d(a, w, padding=1, **kw)
        y = f.relu(f.batch_norm(y, None, None, None, None, True, **kw), **kw)
        y = f.max_pool2d(y, 2, **kw)
        return f.adaptive_avg_pool2d(y, 1, **kw).pow(3).sum()

    ours = torch.func.hessian(lambda a: net(F, a, backend=backend))(x)
    ref = torch.func.hessian(lambda a: net(TF, a))(x)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("backend,device", backend_params())
def test_per_sample_gradients(backend, device):
    """The per-sample gradients recipe (torch.func: vmap(grad(loss)) with functional_call,
    as Opacus-style differentially private training uses it) on a converted CNN gives
    torch's per-sample gradients for every parameter: conv weight and bias gradients
    per sample in one grouped call each (pydl.ops._vmap), batch norm in eval mode and
    without running statistics, pooling, activations."""
    from torch.func import functional_call, grad, vmap
    dt = torch.float64  # (every backend has it: the comparison is exact up to summation order)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Conv2d(6, 4, 3, stride=2, groups=2),
        torch.nn.BatchNorm2d(4, track_running_stats=False), torch.nn.LeakyReLU(0.2),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    model[1].running_mean.uniform_(-0.5, 0.5)
    model[1].running_var.uniform_(0.5, 1.5)
    model = model.to(device, dt).eval()
    model[5].train()   # batch statistics, per sample
    ours = pydl.convert(model, backend=backend)
    assert sum(type(m).__module__.startswith("pydl") for m in ours.modules()) == 8
    params = {k: v.detach() for k, v in model.named_parameters()}
    xs = torch.randn(4, 3, 13, 12, dtype=torch.float64).to(device, dt)
    ys = torch.tensor([0, 2, 1, 2], device=device)

    def loss(m):
        def f(p, x, y):
            out = functional_call(m, p, (x.unsqueeze(0),))
            return torch.nn.functional.cross_entropy(out, y.unsqueeze(0))
        return f
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        got = vmap(grad(loss(ours)), in_dims=(None, 0, 0))(params, xs, ys)
    want = vmap(grad(loss(model)), in_dims=(None, 0, 0))(params, xs, ys)
    # the conv gradients and the per-sample batch statistics are not computed sample by
    # sample: each op is called once per layer at the batched level and once by its rule
    # (4 samples would make 8+ calls)
    calls = [e.name for e in prof.events()]
    for name in ("conv2d_fwd", "conv2d_bwd_weight", "conv2d_bwd_bias", "conv2d_bwd_input",
                 "bn_fwd_train", "bn_bwd"):
        n = sum(c.endswith("::" + name) for c in calls)
        assert 0 < n <= 4, (name, n)
    tol = dict(rtol=1e-9, atol=1e-12)
    for k in want:
        assert got[k].shape == (4, *params[k].shape), k
        torch.testing.assert_close(got[k], want[k], **tol, msg=k)


@pytest.mark.parametrize("backend,device", backend_params())
def test_model_ensemble_with_vmap(backend, device):
    """torch.func's model ensembling (stack_module_state, then vmap over the stacked
    parameters and buffers) of converted models gives torch's outputs and gradients; each
    conv layer is one grouped call for all the models (pydl.ops._vmap), not one per model."""
    import copy
    from torch.func import functional_call, grad, stack_module_state, vmap
    dt = torch.float64  # (every backend has it: the comparison is exact up to summation order)
    torch.manual_seed(0)

    def make():
        m = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6),
                                torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Conv2d(6, 4, 3),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 2 * 1, 2))
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 1.5)
        return m.to(device, dt).eval()
    models = [make() for _ in range(4)]
    ours = [pydl.convert(m, backend=backend) for m in models]
    x = torch.randn(5, 3, 8, 6, dtype=torch.float64).to(device, dt)

    def run(ms):
        params, buffers = stack_module_state(ms)
        base = copy.deepcopy(ms[0]).to("meta")

        def loss(p, b, x):
            return functional_call(base, (p, b), (x,)).square().sum()
        out = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))(
            params, buffers, x)
        return out, vmap(grad(loss), in_dims=(0, 0, None))(params, buffers, x)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        got, got_g = run(ours)
    want, want_g = run(models)
    tol = dict(rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got, want, **tol)
    for k in want_g:
        torch.testing.assert_close(got_g[k], want_g[k], **tol, msg=k)
    calls = [e.name for e in prof.events()]
    for name in ("conv2d_fwd", "conv2d_bwd_weight", "conv2d_bwd_input", "bn_fwd_eval"):
        n = sum(c.endswith("::" + name) for c in calls)
        # 2 layers x 2 forwards (outputs, gradients) x (once batched + once by the rule) at
        # most; a call per model would make 20 forward calls
        assert 0 < n <= 8, (name, n)
    # training mode: each model's batch norm normalizes with its own batch statistics and
    # updates its own (stacked, batched) running statistics, as torch's do
    stacked = []
    for ms in (ours, models):
        for m in ms:
            m.train()
        params, buffers = stack_module_state(ms)
        base = copy.deepcopy(ms[0]).to("meta")
        out = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))(
            params, buffers, x)
        stacked.append((out, buffers))
    torch.testing.assert_close(stacked[0][0], stacked[1][0], **tol)
    for k, v in stacked[1][1].items():
        torch.testing.assert_close(stacked[0][1][k], v, **tol, msg=k)


def test_gpu_run_order():
    """bench/gpu_validate.sh's capped test run (PYDL_TEST_TRITON_LAST=1) takes the CUDA C++
    tests first, then Triton on CUDA tensors, and the CPU tests (which CI runs) last."""
    from conftest import gpu_run_rank
    assert gpu_run_rank("t.py::a[cuda-cuda-f32]", {"backend": "cuda", "device": "cuda"}, []) == 0
    assert gpu_run_rank("t.py::a[triton-cuda]", {"backend": "triton", "device": "cuda"}, []) == 1
    assert gpu_run_rank("t.py::a[cpu-cpu]", {"backend": "cpu", "device": "cpu"}, []) == 2
    assert gpu_run_rank("t.py::a[triton-cpu]", {"backend": "triton", "device": "cpu"}, []) == 2
    assert gpu_run_rank("t.py::tf32[cuda]", {"backend": "cuda"}, []) == 0
    assert gpu_run_rank("t.py::big[triton]", {"backend": "triton"}, []) == 1
    assert gpu_run_rank("t.py::tf32_flag", {}, ["TF32 exists only on the GPU"]) == 0
    assert gpu_run_rank("t.py::cuda_kernels_emulated_on_host", {}, []) == 2


@pytest.mark.parametrize("backend,device", backend_params())
def test_compile_traces_once(backend, device, monkeypatch):
    """A converted CNN compiled before its first eager call is traced once, not again on
    its second call: the backend choice, memoized for eager calls (_dispatch._RESOLVED), is
    computed afresh under tracing -- dynamo had guarded on the key being absent from that
    cache, which the first call then stored, and every pydl model was compiled twice."""
    from torch import nn
    from torch._dynamo.testing import CompileCounterWithBackend
    monkeypatch.setattr(_dispatch, "_RESOLVED", {})  # as in a fresh process
    torch._dynamo.reset()
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1))
    with pydl.backend(backend):
        model = pydl.convert(net).to(device)
    x = torch.randn(2, 3, 9, 9, device=device, requires_grad=True)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter)
    with pydl.backend(backend):
        for _ in range(3):
            compiled(x).sum().backward()
    assert counter.frame_count == 1
    assert _dispatch._RESOLVED == {}  # (only eager calls fill it)


@pytest.mark.parametrize("backend", _EAGER_BACKENDS)
@pytest.mark.parametrize("strict", [False, True], ids=["nonstrict", "strict"])
def test_torch_export_with_dynamic_shapes(backend, strict):
    """torch.export (what torch 2.14 points to in place of the deprecated torch.jit.trace)
    of a converted CNN, in eval and training mode, with the batch and spatial sizes
    dynamic: the program holds pydl's ops, and on inputs of other shapes it computes what
    the model does (training mode: the running statistics too)."""
    from torch import nn
    from torch.export import Dim
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                        nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    with pydl.backend(backend):
        model = pydl.convert(net)
        dims = {0: Dim("n", min=2, max=16), 2: Dim("h", min=4, max=32), 3: Dim("w", min=4, max=32)}
        for train in (False, True):
            model.train(train)
            twin = pydl.convert(net).train(train)  # the same weights and buffers, run eagerly
            twin.load_state_dict(model.state_dict())
            ep = torch.export.export(model, (torch.randn(2, 3, 9, 9),), dynamic_shapes=(dims,),
                                     strict=strict)
            ns = "pydl" if backend == "cpu" else "pydl_triton"
            ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
            assert {f"{ns}.conv2d_fwd.default", f"{ns}.max_pool2d_fwd.default"} <= ops
            assert (f"{ns}.bn_fwd_train.default" if train else f"{ns}.bn_fwd_eval.default") in ops
            exported = ep.module()
            for shape in ((5, 3, 13, 11), (2, 3, 6, 7)):
                x = torch.randn(*shape)
                torch.testing.assert_close(exported(x), twin(x))
            if train:  # the exported program's buffers were updated as the eager twin's
                torch.testing.assert_close(exported.state_dict()["1.running_mean"],
                                           twin.state_dict()["1.running_mean"])


@pytest.mark.skipif(not pydl.backends()["cpu"].compiled, reason="the C++ extension is not built")
def test_meta_tensors_run_the_shape_functions():
    """A model on the meta device (shape inference, deferred initialization): the C++ ops
    run their registered shape functions through the dispatcher's Meta key, forward and
    backward, giving torch's shapes and strides in both layouts; an optimizer steps on
    meta parameters; the Triton backend (whose eager path launches kernels) refuses meta
    tensors with BackendUnavailable."""
    from torch import nn
    with torch.device("meta"):
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                            nn.MaxPool2d(2), nn.AvgPool2d(2, ceil_mode=True), nn.AdaptiveMaxPool2d(3),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    model = pydl.convert(net)
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.empty(2, 3, 9, 9, device="meta").to(memory_format=fmt).requires_grad_()
        xt = x.detach().clone().requires_grad_()
        y, yt = model(x), net(xt)
        assert y.device.type == "meta" and (y.shape, y.stride()) == (yt.shape, yt.stride())
        y.sum().backward()
        yt.sum().backward()
        assert (x.grad.shape, x.grad.stride()) == (xt.grad.shape, xt.grad.stride())
        assert model[0].weight.grad.shape == net[0].weight.grad.shape
    pydl.optim.Adam(model.parameters()).step()
    with pytest.raises(BackendUnavailable, match="meta"):
        pydl.functional.relu(torch.empty(3, device="meta"), backend="triton")
