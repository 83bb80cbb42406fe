"""Fused multi-tensor optimizers (SGD, Adam, AdamW, RMSprop, Adagrad): every backend x the
flag combinations torch's own optimizer tests use, several steps on odd-shaped params
against torch.optim (same gradients; oracle: torch.optim on float64 copies), state and
state_dict round trips both ways, GradScaler (including a skipped step), LR schedulers,
param groups, 16-bit and mixed dtypes, bad input, opcheck on the ops."""
import copy

import pytest
import torch

import pydl
import pydl.optim
from pydl.ops import optim as ops
from pydl.testing import assert_close, make_input, poisoned_memory, to_ref
from conftest import run_with_cpu_simd, backend_params, interpreted, needs_gxx, run_cuda_emulation

SHAPES = [(7, 13), (97,), (3, 5, 7, 2), (1,)]

# (optimizer, kwargs): the configurations of torch's optim_inputs_func_* (common_optimizers.py)
CONFIGS = [
    ("SGD", {}),
    ("SGD", {"lr": 1e-2}),
    ("SGD", {"lr": torch.tensor(0.001)}),
    ("SGD", {"weight_decay": 0.5}),
    ("SGD", {"momentum": 0.9}),
    ("SGD", {"weight_decay": 0.1, "maximize": True}),
    ("SGD", {"momentum": 0.9, "dampening": 0.5}),
    ("SGD", {"momentum": 0.9, "weight_decay": 0.1}),
    ("SGD", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1}),
    ("Adam", {}),
    ("Adam", {"lr": 0.01}),
    ("Adam", {"lr": torch.tensor(0.01)}),
    ("Adam", {"weight_decay": 0.1}),
    ("Adam", {"weight_decay": 0.1, "maximize": True}),
    ("Adam", {"weight_decay": 0.1, "amsgrad": True}),
    ("Adam", {"weight_decay": 0.1, "amsgrad": True, "maximize": True, "eps": 0.1}),
    ("Adam", {"weight_decay": 0.1, "decoupled_weight_decay": True}),
    ("Adam", {"betas": (torch.tensor(0.8), torch.tensor(0.9))}),
    ("AdamW", {}),
    ("AdamW", {"lr": 0.01, "weight_decay": 0.1}),
    ("AdamW", {"weight_decay": 0.1, "amsgrad": True, "maximize": True}),
    ("RMSprop", {}),
    ("RMSprop", {"lr": 1e-3}),
    ("RMSprop", {"weight_decay": 0.1}),
    ("RMSprop", {"maximize": True}),
    ("RMSprop", {"weight_decay": 0.1, "centered": True}),
    ("RMSprop", {"maximize": True, "weight_decay": 0.1}),
    ("RMSprop", {"momentum": 0.1}),
    ("RMSprop", {"weight_decay": 0.1, "centered": True, "momentum": 0.1}),
    ("RMSprop", {"weight_decay": 0.1, "centered": True, "momentum": 0.1, "maximize": True}),
    ("Adagrad", {}),
    ("Adagrad", {"weight_decay": 0.1}),
    ("Adagrad", {"weight_decay": 0.1, "maximize": True}),
    ("Adagrad", {"lr": 0.1}),
    ("Adagrad", {"initial_accumulator_value": 0.1, "weight_decay": 0.1}),
    ("Adagrad", {"lr": 0.1, "lr_decay": 0.5, "weight_decay": 0.1}),
    ("Adagrad", {"lr": torch.tensor(0.001)}),
]


def _id(cfg):
    name, kw = cfg
    parts = [f"{k}={v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v}"
             for k, v in kw.items() if k != "betas"]
    if "betas" in kw:
        parts.append("tensor_betas")
    return name + ("-" + ",".join(parts) if parts else "")


ONE_PER_OPT = [("SGD", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1}),
               ("Adam", {"weight_decay": 0.1, "amsgrad": True}),
               ("AdamW", {"lr": 0.01, "weight_decay": 0.1}),
               ("RMSprop", {"weight_decay": 0.1, "centered": True, "momentum": 0.1}),
               ("Adagrad", {"lr": 0.1, "lr_decay": 0.5, "weight_decay": 0.1,
                            "initial_accumulator_value": 0.1})]


def _init_added_adagrad_state(opt) -> None:
    """Older torch releases (2.11) make Adagrad's state in __init__ only, so a parameter added
    by add_param_group has none and their step fails (KeyError 'sum'). For the reference,
    make it as newer releases do at its first step: step 0, sum = initial_accumulator_value."""
    for group in opt.param_groups:
        for p in group["params"]:
            if not opt.state[p]:
                opt.state[p] = {"step": torch.tensor(0.0),
                                "sum": torch.full_like(p, group["initial_accumulator_value"],
                                                       memory_format=torch.preserve_format)}


def _grad_like(p, seed):
    return make_input(p.shape, p.dtype, p.device, seed=seed)


def _three(name, kw, backend, device, dtype=torch.float32, shapes=SHAPES):
    """pydl, torch (same dtype) and torch (float64 oracle) optimizers, each on its own copy
    of the same params: ((pydl opt, params), (torch opt, params), (oracle opt, params))."""
    base = [make_input(s, dtype, device, seed=i) for i, s in enumerate(shapes)]
    pp = [b.clone().requires_grad_() for b in base]
    pt = [b.clone().requires_grad_() for b in base]
    pr = [to_ref(b).requires_grad_() for b in base]
    # torch's per-tensor implementations (foreach=False): on CUDA tensors its default,
    # foreach, refuses tensor betas unless capturable
    return ((getattr(pydl.optim, name)(pp, backend=backend, **copy.deepcopy(kw)), pp),
            (getattr(torch.optim, name)(pt, foreach=False, **copy.deepcopy(kw)), pt),
            (getattr(torch.optim, name)(pr, foreach=False, **copy.deepcopy(kw)), pr))


def _run_three(name, kw, backend, device, dtype=torch.float32, steps=3, none_at=(1, 1),
               shapes=SHAPES):
    """_three's optimizers stepped on the same gradients for `steps` steps; param none_at[1]
    gets no gradient at step none_at[0]."""
    (op, pp), (ot, pt), (orf, pr) = _three(name, kw, backend, device, dtype, shapes)
    for s in range(steps):
        for i, (a, b, c) in enumerate(zip(pp, pt, pr)):
            if (s, i) == tuple(none_at):
                a.grad = b.grad = c.grad = None
                continue
            g = _grad_like(a, 100 * s + i + 7)
            a.grad, b.grad, c.grad = g.clone(), g.clone(), to_ref(g)
        op.step()
        ot.step()
        orf.step()
    return (op, pp), (ot, pt), (orf, pr)


def _assert_matches(run, what, factor=2.0):
    (op, pp), (ot, pt), (orf, pr) = run
    for i, (a, b, c) in enumerate(zip(pp, pt, pr)):
        assert_close(a.detach(), c.detach(), b.detach(), f"{what} param[{i}]", factor=factor)
        sp, st, sr = op.state[a], ot.state[b], orf.state[c]
        assert set(sp) == set(sr), f"{what}: state keys {sorted(sp)} != torch's {sorted(sr)}"
        for k in sr:
            if k == "step":  # a float32 scalar tensor on the parameter's device: torch's
                # layout for fused=True (its per-tensor and foreach steps keep it on the CPU)
                assert sp[k].dtype == torch.float32 and sp[k].device == a.device
                assert float(sp[k]) == float(sr[k])
            elif a.dtype in (torch.float16, torch.bfloat16):
                # pydl's state is float32, torch's 16-bit; both inherit the 16-bit rounding
                # of the parameter (weight decay, Adam's p-dependent terms), so the state is
                # judged in the parameter's precision
                assert_close(sp[k].to(a.dtype), sr[k], st[k], f"{what} state[{i}][{k}]",
                             factor=factor)
            else:
                assert_close(sp[k], sr[k], st[k], f"{what} state[{i}][{k}]")


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("cfg", CONFIGS, ids=[_id(c) for c in CONFIGS])
def test_matches_torch(backend, device, cfg):
    name, kw = cfg
    with poisoned_memory():  # state tensors are poisoned: unwritten shows NaN
        run = _run_three(name, kw, backend, device)
    _assert_matches(run, f"{name}/{backend}")


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64],
                         ids=["f16", "bf16", "f64"])
@pytest.mark.parametrize("cfg", ONE_PER_OPT, ids=[c[0] for c in ONE_PER_OPT])
def test_dtypes(backend, device, dtype, cfg):
    # 16-bit params keep float32 state (torch keeps 16-bit state): pydl's params and state
    # must be at least about as accurate as torch's against the float64 oracle
    name, kw = cfg
    if dtype == torch.float16 and name != "SGD":
        # eps=1e-8 is 0 in float16: torch's own float16 Adam/RMSprop/Adagrad then divide 0 by
        # 0 (NaN) where v underflows; torch's optimizer tests use eps=0.1 for float16 too
        kw = dict(kw, eps=0.1)
    run = _run_three(name, kw, backend, device, dtype=dtype)
    _assert_matches(run, f"{name}/{backend}/{dtype}")
    (op, pp) = run[0]
    for p in pp:
        for k, v in op.state[p].items():
            if k != "step":
                assert v.dtype == ops.state_dtype(dtype)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("cfg", ONE_PER_OPT, ids=[c[0] for c in ONE_PER_OPT])
def test_mixed_dtypes_and_layouts(backend, device, cfg):
    # one group holding float32, bfloat16 and float64 params, a transposed (dense) param
    # and a strided (non-dense) one: bucketed by dtype, each bucket one fused call
    name, kw = cfg
    pp = [make_input((7, 13), torch.float32, device, seed=1, requires_grad=True),
          make_input((97,), torch.bfloat16, device, seed=2, requires_grad=True),
          make_input((5, 3), torch.float64, device, seed=3, requires_grad=True),
          make_input((7, 13), torch.float32, device, layout="transposed", seed=4,
                     requires_grad=True),
          # a strided (non-dense) leaf: every other column of a (6, 10) buffer
          make_input((6, 10), torch.float32, device, seed=5)[:, ::2].detach().requires_grad_()]
    assert pp[3].stride() == (1, 7) and not pp[4].is_contiguous()
    pt = [p.detach().clone().requires_grad_() for p in pp]
    op = getattr(pydl.optim, name)(pp, backend=backend, **kw)
    ot = getattr(torch.optim, name)(pt, **kw)
    for s in range(3):
        for i, (a, b) in enumerate(zip(pp, pt)):
            g = _grad_like(a, 10 * s + i)
            a.grad, b.grad = g.clone(), g.clone()
        op.step()
        ot.step()
    for i, (a, b) in enumerate(zip(pp, pt)):
        tol = {torch.bfloat16: 2e-2, torch.float32: 1e-5, torch.float64: 1e-10}[a.dtype]
        # bfloat16: pydl keeps float32 state, torch bfloat16 state; they differ by bf16 ulps
        torch.testing.assert_close(a.detach().double(), b.detach().double(), rtol=tol, atol=tol)
    assert pp[3].stride() == (1, 7)  # the parameters are updated in place, layout kept
    assert pp[4].stride() == (10, 2)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("cfg", ONE_PER_OPT, ids=[c[0] for c in ONE_PER_OPT])
@pytest.mark.parametrize("direction", ["torch_to_pydl", "pydl_to_torch"])
def test_state_dict_round_trip(backend, device, cfg, direction):
    # train 2 steps with one, checkpoint, load into the other, train 2 more steps; compare
    # with the first continuing alone: the checkpoint carries everything
    name, kw = cfg
    base = [make_input(s, torch.float32, device, seed=i) for i, s in enumerate(SHAPES)]
    first_cls = getattr(torch.optim if direction == "torch_to_pydl" else pydl.optim, name)
    second_cls = getattr(pydl.optim if direction == "torch_to_pydl" else torch.optim, name)
    extra1 = {} if direction == "torch_to_pydl" else {"backend": backend}
    extra2 = {"backend": backend} if direction == "torch_to_pydl" else {}
    pa = [b.clone().requires_grad_() for b in base]
    oa = first_cls(pa, **kw, **extra1)

    def feed(params, s):
        for i, p in enumerate(params):
            p.grad = _grad_like(p, 100 * s + i)

    for s in range(2):
        feed(pa, s)
        oa.step()
    ckpt = copy.deepcopy(oa.state_dict())
    pb = [p.detach().clone().requires_grad_() for p in pa]
    ob = second_cls(pb, **kw, **extra2)
    ob.load_state_dict(ckpt)
    for s in range(2, 4):
        feed(pa, s)
        feed(pb, s)
        oa.step()
        ob.step()
    for a, b in zip(pa, pb):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    sa, sb = oa.state_dict(), ob.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for k in sa["state"]:
        assert set(sa["state"][k]) == set(sb["state"][k])
        for key, v in sa["state"][k].items():
            # (on a GPU torch keeps "step" on the CPU, pydl on the parameter's device: the
            # values must agree, each loads into the other)
            torch.testing.assert_close(v, sb["state"][k][key], rtol=1e-5, atol=1e-6,
                                       check_device=False)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("cfg", ONE_PER_OPT, ids=[c[0] for c in ONE_PER_OPT])
@pytest.mark.parametrize("unscale_first", [False, True], ids=["fused_unscale", "unscale_clip"])
def test_grad_scaler_with_skipped_step(backend, device, cfg, unscale_first):
    # scaler.step hands the scale to the fused step (no separate unscale pass); an inf in
    # step 1 must skip that step entirely (params, state, step counters) as torch does.
    # unscale_clip: the usual clipping recipe, scaler.unscale_ + clip_grad_norm_ first
    # (then the scaler passes no scale to the step)
    name, kw = cfg
    base = [make_input(s, torch.float32, device, seed=i) for i, s in enumerate(SHAPES)]
    res = {}
    for lib in ("torch", "pydl"):
        ps = [b.clone().requires_grad_() for b in base]
        extra = {"backend": backend} if lib == "pydl" else {}
        opt = getattr(torch.optim if lib == "torch" else pydl.optim, name)(ps, **kw, **extra)
        scaler = torch.amp.GradScaler(device, init_scale=2.0 ** 10)
        skipped = []
        for s in range(4):
            loss = sum((p * _grad_like(p, 10 * s + i)).sum() for i, p in enumerate(ps))
            scaler.scale(loss).backward()
            if s == 1:
                ps[2].grad.view(-1)[3] = float("inf")
            before = [p.detach().clone() for p in ps]
            if unscale_first:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(ps, 5.0)
            scaler.step(opt)
            scaler.update()
            skipped.append(all(torch.equal(a, b) for a, b in zip(before, ps)))
            if s == 3:
                res[lib + "_grads"] = [p.grad.clone() for p in ps]  # unscaled by both
            opt.zero_grad()
        res[lib] = ([p.detach() for p in ps], opt.state_dict(), scaler.get_scale(), skipped)
    (pt, st, sct, skt), (pp, sp, scp, skp) = res["torch"], res["pydl"]
    assert skt == skp == [False, True, False, False]
    assert sct == scp
    for a, b in zip(pp, pt):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for k in st["state"]:
        for key, v in st["state"][k].items():
            torch.testing.assert_close(sp["state"][k][key], v, rtol=1e-5, atol=1e-6,
                                       check_device=False)  # ("step": see the round trip)
    for a, b in zip(res["pydl_grads"], res["torch_grads"]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_lr_scheduler(backend, device, name):
    base = [make_input(s, torch.float32, device, seed=i) for i, s in enumerate(SHAPES)]
    out = []
    for lib in (torch.optim, pydl.optim):
        ps = [b.clone().requires_grad_() for b in base]
        extra = {"backend": backend} if lib is pydl.optim else {}
        opt = getattr(lib, name)(ps, lr=0.1, **extra)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=6)
        for s in range(5):
            for i, p in enumerate(ps):
                p.grad = _grad_like(p, 10 * s + i)
            opt.step()
            sched.step()
        out.append((ps, opt.param_groups[0]["lr"]))
    assert out[0][1] == out[1][1]
    for a, b in zip(out[0][0], out[1][0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("cfg", ONE_PER_OPT, ids=[c[0] for c in ONE_PER_OPT])
def test_param_groups(backend, device, cfg):
    # two groups with different hyperparameters, and a third added later with add_param_group
    name, kw = cfg
    base = [make_input(s, torch.float32, device, seed=i) for i, s in enumerate(SHAPES)]
    extra = make_input((11, 3), torch.float32, device, seed=9)
    out = []
    for lib in (torch.optim, pydl.optim):
        ps = [b.clone().requires_grad_() for b in base]
        e = extra.clone().requires_grad_()
        groups = [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.05, "weight_decay": 0.3}]
        opt = getattr(lib, name)(groups, **kw, **({"backend": backend} if lib is pydl.optim else {}))
        for s in range(4):
            if s == 2:
                opt.add_param_group({"params": [e], "lr": 0.02})
                if lib is torch.optim and name == "Adagrad":
                    _init_added_adagrad_state(opt)
            for i, p in enumerate(ps + ([e] if s >= 2 else [])):
                p.grad = _grad_like(p, 10 * s + i)
            opt.step()
            opt.zero_grad(set_to_none=(s % 2 == 0))
        out.append(ps + [e])
        if lib is pydl.optim:
            assert all(p.grad is None or not p.grad.any() for p in ps)
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_class_surface():
    import inspect
    p = [torch.randn(3, requires_grad=True)]
    for name in ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad"):
        # torch's constructor signature (names, order, kinds, defaults) + pydl's keywords
        sig = inspect.signature(getattr(pydl.optim, name).__init__).parameters
        tsig = inspect.signature(getattr(torch.optim, name).__init__).parameters
        assert [(k, v.kind, v.default) for k, v in sig.items()
                if k not in ("backend", "master_weights")] == \
            [(k, v.kind, v.default) for k, v in tsig.items()]
        ours, theirs = getattr(pydl.optim, name)(p), getattr(torch.optim, name)(p)
        assert isinstance(ours, getattr(torch.optim, name))
        assert ours.defaults == theirs.defaults
        assert ours._step_supports_amp_scaling
    # a step with no gradients at all changes nothing and creates no state
    opt = pydl.optim.Adam(p)
    before = p[0].detach().clone()
    opt.step()
    assert torch.equal(p[0], before) and len(opt.state) == 0
    # closure
    opt = pydl.optim.SGD(p, lr=0.1)
    loss = opt.step(lambda: (p[0].grad.zero_() if p[0].grad is not None else None,
                             (p[0] ** 2).sum().backward(), torch.tensor(1.5))[-1])
    assert float(loss) == 1.5


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name,kw,err,match", [
    ("SGD", {"lr": -0.1}, ValueError, "Invalid learning rate"),
    ("SGD", {"momentum": -0.5}, ValueError, "Invalid momentum"),
    ("SGD", {"weight_decay": -1}, ValueError, "Invalid weight_decay"),
    ("SGD", {"nesterov": True}, ValueError, "Nesterov momentum requires"),
    ("SGD", {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, ValueError, "Nesterov"),
    ("Adam", {"lr": -1e-3}, ValueError, "Invalid learning rate"),
    ("Adam", {"eps": -1e-8}, ValueError, "Invalid epsilon"),
    ("Adam", {"betas": (1.0, 0.9)}, ValueError, "Invalid beta parameter at index 0"),
    ("Adam", {"betas": (0.9, -0.1)}, ValueError, "Invalid beta parameter at index 1"),
    ("Adam", {"weight_decay": -1}, ValueError, "Invalid weight_decay"),
    ("Adam", {"capturable": True}, ValueError, "capturable"),
    ("AdamW", {"betas": (0.9, 1.0)}, ValueError, "Invalid beta parameter at index 1"),
    ("AdamW", {"differentiable": True}, ValueError, "differentiable"),
    ("RMSprop", {"alpha": -0.1}, ValueError, "Invalid alpha"),
    ("RMSprop", {"momentum": -1.0}, ValueError, "Invalid momentum"),
    ("RMSprop", {"eps": -1.0}, ValueError, "Invalid epsilon"),
    ("Adagrad", {"lr_decay": -0.5}, ValueError, "Invalid lr_decay"),
    ("Adagrad", {"initial_accumulator_value": -1.0}, ValueError, "initial_accumulator_value"),
    ("Adagrad", {"eps": -1.0}, ValueError, "Invalid epsilon"),
])
def test_bad_hyperparameters(name, kw, err, match):
    with pytest.raises(err, match=match):
        getattr(pydl.optim, name)([torch.randn(3, requires_grad=True)], **kw)


def test_bad_backend_name():
    with pytest.raises(ValueError, match="backend"):
        pydl.optim.SGD([torch.randn(3, requires_grad=True)], backend="nope")


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"])
def test_sparse_grad_rejected(name):
    """At the first step, and at a later one (whose lists come from the step before, without
    the per-tensor gradient tests): a clear error, and nothing updated."""
    p = torch.randn(5, 3, requires_grad=True)
    opt = getattr(pydl.optim, name)([p])
    p.grad = torch.randn(5, 3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    q = torch.randn(5, 3, requires_grad=True)
    opt = getattr(pydl.optim, name)([q], momentum=0.9) if name == "SGD" else \
        getattr(pydl.optim, name)([q])
    for _ in range(2):
        q.grad = torch.randn(5, 3)
        opt.step()
    before = q.detach().clone()
    q.grad = torch.randn(5, 3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert torch.equal(q.detach(), before)


def test_op_bad_input():
    p = [torch.randn(7, 13), torch.randn(5)]
    g = [torch.randn(7, 13), torch.randn(6)]
    with pytest.raises(ValueError, match=r"grads\[1\] has shape \(6,\)"):
        ops.sgd_step(p, g, [], lr=0.1)
    with pytest.raises(ValueError, match="grads must have one tensor per parameter"):
        ops.sgd_step(p, g[:1], [], lr=0.1)
    with pytest.raises(ValueError, match=r"exp_avgs\[0\]"):
        ops.adam_step(p[:1], g[:1], [torch.zeros(7, 12)], [torch.zeros(7, 13)], [],
                      [torch.zeros(())], lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8)
    with pytest.raises(ValueError, match="momentum_buffers must have one tensor"):
        ops.sgd_step(p[:1], g[:1], [], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="params must share one device and dtype"):
        ops.sgd_step([p[0], p[1].double()], [g[0], g[1][:5].double()], [], lr=0.1)
    with pytest.raises(ValueError, match=r"grads\[0\] must be torch.float32"):
        ops.sgd_step(p[:1], [g[0].half()], [], lr=0.1)
    with pytest.raises(ValueError, match=r"exp_avgs\[0\] must be a torch.float32"):
        ops.adam_step([p[0].half()], [g[0].half()], [torch.zeros(7, 13).half()],
                      [torch.zeros(7, 13)], [], [torch.zeros(())], lr=0.1, beta1=0.9,
                      beta2=0.99, eps=1e-8)
    with pytest.raises(ValueError, match="state_steps must have one tensor per parameter"):
        ops.adagrad_step(p[:1], g[:1], [torch.zeros(7, 13)], [], lr=0.1)
    with pytest.raises(ValueError, match=r"state_steps\[0\] must be a one-element float32"):
        ops.adagrad_step(p[:1], g[:1], [torch.zeros(7, 13)], [torch.zeros((), dtype=torch.float64)],
                         lr=0.1)
    with pytest.raises(TypeError, match="params"):
        ops.sgd_step([torch.ones(3, dtype=torch.int32)], [torch.ones(3, dtype=torch.int32)],
                     [], lr=0.1)
    with pytest.raises(TypeError, match=r"params\[0\] must be a torch.Tensor"):
        ops.sgd_step([1.0], [torch.ones(3)], [], lr=0.1)
    with pytest.raises(TypeError, match=r"grads\[0\] must be a torch.Tensor"):
        ops.sgd_step([torch.ones(3)], [None], [], lr=0.1)
    with pytest.raises(ValueError, match="grad_scale"):
        ops.sgd_step(p[:1], g[:1], [], lr=0.1, grad_scale=torch.ones(2))
    with pytest.raises(RuntimeError, match="sparse"):
        ops.sgd_step(p[:1], [g[0].to_sparse()], [], lr=0.1)
    # the C++ op checks too (direct torch.ops calls bypass the Python checks)
    with pytest.raises(RuntimeError, match="shape"):
        torch.ops.pydl.sgd_step(p, g, [], 0.1, 0.0, 0.0, 0.0, False, False, False, None, None)


@pytest.mark.parametrize("name,kw", [("SGD", {"momentum": 0.9}), ("SGD", {}), ("Adam", {}),
                                     ("RMSprop", {"centered": True, "momentum": 0.5}),
                                     ("Adagrad", {})], ids=["SGD-mom", "SGD", "Adam", "RMSprop", "Adagrad"])
def test_cpp_steps_skip_the_python_tensor_checks(name, kw, monkeypatch):
    """On the C++ backends the op checks every tensor itself before it touches any
    (csrc/optim_common.h), so a valid step runs none of the Python per-tensor checks and
    layout tests (~3 us of host time a parameter) -- and still matches torch.optim."""
    def fail(*args, **kwargs):
        raise AssertionError("the Python per-tensor checks ran")
    for f in ("_check", "_check_steps", "_dense_work"):
        monkeypatch.setattr(ops, f, fail)
    pp = [make_input(s, torch.float32, "cpu", seed=i, requires_grad=True) for i, s in enumerate(SHAPES)]
    pt = [p.detach().clone().requires_grad_() for p in pp]
    op = getattr(pydl.optim, name)(pp, backend="cpu", **kw)
    ot = getattr(torch.optim, name)(pt, **kw)
    for s in range(3):
        for i, (a, b) in enumerate(zip(pp, pt)):
            a.grad = _grad_like(a, 10 * s + i)
            b.grad = a.grad.clone()
        op.step()
        ot.step()
    for a, b in zip(pp, pt):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)


def _set_grads(opts_params, seed, skip=()):
    """The same fresh gradient on each optimizer's i-th param (none for i in `skip`)."""
    first = opts_params[0]
    for i in range(len(first)):
        g = None if i in skip else _grad_like(first[i], seed + i)
        for ps in opts_params:
            ps[i].grad = None if g is None else (to_ref(g) if ps[i].dtype == torch.float64 else g.clone())


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("cfg", ONE_PER_OPT + [("SGD", {})], ids=[_id(c) for c in ONE_PER_OPT + [("SGD", {})]])
def test_state_lists_reused_and_refreshed(backend, device, cfg, monkeypatch):
    """A step after the first reuses the state lists of the step before (no per-tensor state
    lookups: _state_tensor / _step_tensor are not called), and every change torch.optim would
    see is seen: a param's state reset (`state[p] = {}`) or one of its tensors replaced, a
    param without a gradient for a step, SGD's momentum turned on, a load_state_dict, a
    param group added -- the trajectory equals torch.optim's doing the same."""
    from pydl.optim import fused
    name, kw = cfg
    run = _three(name, kw, backend, device)
    (op, pp), (ot, pt), (orf, pr) = run
    opts, params = [op, ot, orf], [pp, pt, pr]
    lookups = []
    real_state_tensor, real_step_tensor = fused._FusedStep._state_tensor, fused._step_tensor
    monkeypatch.setattr(fused._FusedStep, "_state_tensor",
                        lambda self, *a, **k: lookups.append(1) or real_state_tensor(self, *a, **k))
    monkeypatch.setattr(fused, "_step_tensor", lambda *a: lookups.append(1) or real_step_tensor(*a))

    def step(seed, skip=()):
        _set_grads(params, seed, skip)
        if name == "Adagrad":  # torch 2.11 makes Adagrad's state only in __init__
            for o in opts[1:]:
                _init_added_adagrad_state(o)
        lookups.clear()
        for o in opts:
            o.step()

    step(10)
    stateful = bool(op.state[pp[0]])
    step(20)
    assert not lookups, "the second step looked the state up again"
    for o, ps in zip(opts, params):  # a param's state reset, as a user would
        o.state[ps[0]] = {}
    step(30)
    assert lookups or not stateful
    step(40)
    assert not lookups
    if name == "SGD" and not kw:  # a setting that changes what state there is
        for o in opts:
            o.param_groups[0]["momentum"] = 0.9
        step(45)
        assert lookups
    for o, ps in zip(opts, params):  # one state tensor replaced by a new one
        st = o.state[ps[1]]
        for k in list(st):
            st[k] = st[k] * 0.5 if k != "step" else st[k].clone()
    step(50)
    step(60, skip=(2,))  # a param without a gradient for one step
    step(70)
    for o in opts:
        o.load_state_dict(copy.deepcopy(o.state_dict()))
    step(80)
    extra = [make_input((6, 5), torch.float32, device, seed=99)]
    for o, ps, e in zip(opts, params, [extra[0].clone(), extra[0].clone(), to_ref(extra[0])]):
        e.requires_grad_()
        ps.append(e)
        o.add_param_group({"params": [e]})
    step(90)
    step(100)
    assert not lookups
    _assert_matches(run, f"{name} {kw}")
    assert len(op._prepared) == 2  # one per group
    op.param_groups.pop()
    step_params = [ps[:-1] for ps in params]
    _set_grads(step_params, 110)
    op.step()
    assert len(op._prepared) == 1  # the removed group's lists (and state) are let go


@pytest.mark.parametrize("backend,device", backend_params())
def test_param_dtype_change_converts_state(backend, device):
    """A param whose dtype changes under its optimizer (model.double() after some steps, which
    swaps each param's .data): the reused-lists path notices and converts the state as the
    first step would -- the step then equals one from the converted state."""
    p = make_input((7, 13), torch.float32, device, seed=1, requires_grad=True)
    opt = pydl.optim.Adam([p], backend=backend)
    for s in range(2):
        p.grad = _grad_like(p, s)
        opt.step()
    p.data = p.data.double()
    ref_p = p.detach().clone().requires_grad_()
    ref = torch.optim.Adam([ref_p])
    ref.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch casts it to the param dtype
    p.grad = _grad_like(p, 5)
    ref_p.grad = p.grad.clone()
    opt.step()
    ref.step()
    assert opt.state[p]["exp_avg"].dtype == torch.float64
    torch.testing.assert_close(p.detach(), ref_p.detach())


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("cfg", ONE_PER_OPT, ids=[_id(c) for c in ONE_PER_OPT])
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copied_optimizer_steps_like_the_original(backend, device, cfg, how):
    """copy.deepcopy and pickle keep pydl's own attributes (backend, master_weights): torch's
    Optimizer.__getstate__ keeps only defaults, state and param_groups, and a copy's step
    raised AttributeError. The copy then steps exactly as the original does."""
    import io
    name, kw = cfg
    pp = [make_input(s, torch.float32, device, seed=i, requires_grad=True)
          for i, s in enumerate(SHAPES)]
    opt = getattr(pydl.optim, name)(pp, backend=backend, master_weights=True, **copy.deepcopy(kw))
    for s in range(2):
        _set_grads([pp], 10 * s)
        opt.step()
    if how == "deepcopy":
        twin = copy.deepcopy(opt)
    else:
        buf = io.BytesIO()
        torch.save(opt, buf)
        buf.seek(0)
        twin = torch.load(buf, weights_only=False)
    assert twin.backend == backend and twin.master_weights is True
    tp = [p for g in twin.param_groups for p in g["params"]]
    assert all(a is not b and torch.equal(a, b) for a, b in zip(pp, tp))
    _set_grads([pp, tp], 50)
    opt.step()
    twin.step()
    for a, b in zip(pp, tp):
        assert torch.equal(a, b)


def test_refused_step_changes_nothing():
    """Tensors the op refuses: nothing is updated (the op checks them all before touching
    any), then the Python checks raise their error, which names the argument."""
    p = [torch.randn(7, 13), torch.randn(5)]
    g = [torch.randn(7, 13), torch.randn(5)]
    m = [torch.zeros(7, 13), torch.zeros(5, dtype=torch.float64)]  # the second: wrong dtype
    v = [torch.zeros(7, 13), torch.zeros(5)]
    steps = [torch.zeros(()), torch.zeros(())]
    before = [t.clone() for t in p + m + v + steps]
    with pytest.raises(ValueError, match=r"exp_avgs\[1\] must be a torch.float32"):
        ops.adam_step(p, g, m, v, [], steps, lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8,
                      backend="cpu")
    assert all(torch.equal(a, b) for a, b in zip(p + m + v + steps, before))
    # a one-element sparse gradient (the op's shape and stride tests pass it by)
    q = torch.randn(1)
    before = q.clone()
    with pytest.raises(RuntimeError, match="sparse"):
        ops.sgd_step([q], [torch.randn(1).to_sparse()], [], lr=0.1, backend="cpu")
    assert torch.equal(q, before)


def test_op_failure_with_valid_tensors_is_raised_once(monkeypatch):
    """When the op fails on tensors the Python checks find valid and laid out as the
    kernels need, its own error is raised; the step is not retried (it could run twice)."""
    calls = []

    class Failing:
        def __getattr__(self, name):
            def f(*args):
                calls.append(name)
                raise RuntimeError("pydl: launch failed")
            return f

    monkeypatch.setitem(ops._OPS, "cpu", Failing())
    with pytest.raises(RuntimeError, match="launch failed"):
        ops.sgd_step([torch.randn(4)], [torch.randn(4)], [], lr=0.1, backend="cpu")
    assert calls == ["sgd_step"]


# ------------------------------------------------------------- the ops: found_inf, opcheck
def _op_args(op, device, dtype=torch.float32, scaled=False, inf=0.0):
    sd = ops.state_dtype(dtype)
    ps = [make_input(s, dtype, device, seed=i) for i, s in enumerate([(7, 13), (97,)])]
    gs = [make_input(p.shape, dtype, device, seed=10 + i) for i, p in enumerate(ps)]

    def st(v=0.1):
        return [torch.full(p.shape, v, dtype=sd, device=device) for p in ps]

    amp = (torch.tensor([4.0], device=device) if scaled else None,
           torch.tensor([inf], device=device) if scaled else None)
    if op == "sgd_step":
        return (ps, gs, st(), 0.1, 0.9, 0.1, 0.01, True, False, False) + amp
    steps = [torch.tensor(2.0, device=device), torch.tensor(1.0, device=device)]
    if op == "adam_step":
        return (ps, gs, st(), st(), st(), steps, 0.01, 0.9, 0.99, 1e-8, 0.1, True, True,
                True) + amp
    if op == "rmsprop_step":
        return (ps, gs, st(1.0), st(), st(), steps, 0.01, 0.9, 1e-8, 0.1, 0.5, True,
                False) + amp
    return (ps, gs, st(), steps, 0.1, 0.1, 0.1, 1e-10, True) + amp


OPS = ["sgd_step", "adam_step", "rmsprop_step", "adagrad_step"]


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("op", OPS)
def test_op_grad_scale_found_inf(backend, device, op):
    ns = getattr(torch.ops, "pydl_triton" if backend == "triton" else "pydl")
    # found_inf != 0: nothing at all changes, step counts included (decided on the device)
    args = _op_args(op, device, scaled=True, inf=1.0)
    before = [[t.clone() for t in a] for a in args if isinstance(a, list) and a
              and isinstance(a[0], torch.Tensor)]
    getattr(ns, op)(*args)
    after = [a for a in args if isinstance(a, list) and a and isinstance(a[0], torch.Tensor)]
    for b, a in zip(before, after):
        assert all(torch.equal(x, y) for x, y in zip(b, a))
    # grad_scale 4: same result as unscaled gradients, and the grads come back unscaled
    a1 = _op_args(op, device, scaled=True, inf=0.0)
    a2 = _op_args(op, device)
    a2[1][:] = [g / 4 for g in a2[1]]
    getattr(ns, op)(*a1)
    getattr(ns, op)(*a2)
    for x, y in zip(a1, a2):
        if isinstance(x, list) and x and isinstance(x[0], torch.Tensor):
            for u, v in zip(x, y):
                torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-7)
    if op != "sgd_step":  # the op incremented the step counts
        steps = next(a for a in a1 if isinstance(a, list) and a and a[0].dim() == 0)
        assert [float(t) for t in steps] == [3.0, 2.0]


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_opcheck(backend, device, op, dtype):
    ns = getattr(torch.ops, "pydl_triton" if backend == "triton" else "pydl")
    torch.library.opcheck(getattr(ns, op).default, _op_args(op, device, dtype, scaled=True),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("backend,device", backend_params())
def test_backend_context_and_torch_reference(backend, device):
    # pydl.backend(...) selects the kernels when the optimizer has no backend=; the
    # explicit "torch" backend (the reference) gives the same result
    base = [make_input(s, torch.float32, device, seed=i) for i, s in enumerate(SHAPES)]
    out = []
    for be in (backend, "torch"):
        ps = [b.clone().requires_grad_() for b in base]
        opt = pydl.optim.RMSprop(ps, lr=0.01, momentum=0.5, centered=True)
        with pydl.backend(be):
            for s in range(2):
                for i, p in enumerate(ps):
                    p.grad = _grad_like(p, 10 * s + i)
                opt.step()
        out.append(ps)
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend,device", backend_params())
def test_one_fused_call_per_bucket(backend, device, monkeypatch):
    # 3 float32 params + 2 bfloat16 params in one group: exactly 2 op calls per step (one
    # per (device, dtype) bucket), not one per tensor
    calls = []
    real = ops._OPS[backend]

    class Counting:
        def __getattr__(self, name):
            def f(*args):
                calls.append((name, len(args[0])))
                return getattr(real, name)(*args)
            return f

    monkeypatch.setitem(ops._OPS, backend, Counting())
    ps = [make_input(s, torch.float32, device, seed=i, requires_grad=True)
          for i, s in enumerate([(7, 13), (97,), (3, 5, 7, 2)])]
    ps += [make_input(s, torch.bfloat16, device, seed=5 + i, requires_grad=True)
           for i, s in enumerate([(11,), (2, 9)])]
    opt = pydl.optim.AdamW(ps, backend=backend)
    for p in ps:
        p.grad = _grad_like(p, 1)
    opt.step()
    assert sorted(calls) == [("adam_step", 2), ("adam_step", 3)]


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_multi_chunk_and_empty_tensors(backend, device, name):
    # a tensor spanning several chunks (CPU chunks 32768, Triton 16384 elements), an empty
    # tensor, and a one-element tensor in one group
    big = (20011,) if interpreted(backend, device) else (300, 251)
    kw = {"momentum": 0.9} if name == "SGD" else {"amsgrad": True}
    run = _run_three(name, dict(kw, lr=0.01), backend, device, steps=2, none_at=(-1, -1),
                     shapes=[big, (0, 3), (1,)])
    _assert_matches(run, f"{name}/{backend} multi-chunk")


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("direction", ["torch_to_pydl", "pydl_to_torch"])
def test_state_dict_round_trip_bf16(backend, device, direction):
    # torch keeps bfloat16 state for bfloat16 params, pydl float32: a torch checkpoint's
    # state is promoted on load into pydl, a pydl checkpoint's cast down by torch's
    # load_state_dict; training continues within bfloat16 rounding of the other
    base = [make_input(s, torch.bfloat16, device, seed=i) for i, s in enumerate(SHAPES)]
    libs = (torch.optim, pydl.optim) if direction == "torch_to_pydl" else (pydl.optim, torch.optim)
    extra = [{"backend": backend} if lib is pydl.optim else {} for lib in libs]
    pa = [b.clone().requires_grad_() for b in base]
    oa = libs[0].Adam(pa, lr=0.01, **extra[0])
    for s in range(4):
        if s == 2:
            pb = [p.detach().clone().requires_grad_() for p in pa]
            ob = libs[1].Adam(pb, lr=0.01, **extra[1])
            ob.load_state_dict(copy.deepcopy(oa.state_dict()))
            want = torch.float32 if libs[1] is pydl.optim else torch.bfloat16
        for i, p in enumerate(pa):
            p.grad = _grad_like(p, 10 * s + i)
        oa.step()
        if s >= 2:
            for i, p in enumerate(pb):
                p.grad = _grad_like(p, 10 * s + i)
            ob.step()
    for p in pb:
        assert ob.state[p]["exp_avg"].dtype == want and float(ob.state[p]["step"]) == 4
    for a, b in zip(pa, pb):
        # lr 0.01 over 2 steps moves params by ~0.02; the two differ by bf16 ulps of ~3
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("cfg", ONE_PER_OPT, ids=[c[0] for c in ONE_PER_OPT])
def test_master_weights(backend, device, cfg):
    # bfloat16 params with float32 masters follow torch.optim run in float32 on the same
    # values (masters to float32 rounding), and each param is its master rounded
    name, kw = cfg
    base = [make_input(s, torch.bfloat16, device, seed=i) for i, s in enumerate(SHAPES)]
    pp = [b.clone().requires_grad_() for b in base]
    pt = [b.float().requires_grad_() for b in base]
    op = getattr(pydl.optim, name)(pp, backend=backend, master_weights=True, **kw)
    ot = getattr(torch.optim, name)(pt, **kw)
    for s in range(3):
        for i, (a, b) in enumerate(zip(pp, pt)):
            g = _grad_like(a, 100 * s + i)
            a.grad, b.grad = g.clone(), g.float()
        op.step()
        ot.step()
    for a, b in zip(pp, pt):
        m = op.state[a]["master_param"]
        assert m.dtype == torch.float32
        torch.testing.assert_close(m, b.detach(), rtol=1e-5, atol=1e-6)
        assert torch.equal(a.detach(), m.to(torch.bfloat16))
    # and the masters survive a checkpoint round trip into a fresh pydl optimizer
    sd = copy.deepcopy(op.state_dict())
    op2 = getattr(pydl.optim, name)(pp, backend=backend, master_weights=True, **kw)
    op2.load_state_dict(sd)
    for a in pp:
        for k, v in op.state[a].items():
            assert op2.state[a][k].dtype == v.dtype and torch.equal(op2.state[a][k], v)


@pytest.mark.parametrize("backend,device", backend_params())
def test_state_dict_pydl_to_pydl_keeps_float32_state(backend, device):
    # torch's load_state_dict casts state to the param dtype; pydl restores its float32
    ps = [make_input(s, torch.float16, device, seed=i, requires_grad=True)
          for i, s in enumerate(SHAPES)]
    opt = pydl.optim.RMSprop(ps, lr=0.01, momentum=0.5, centered=True, backend=backend)
    for p in ps:
        p.grad = _grad_like(p, 3)
    opt.step()
    opt2 = pydl.optim.RMSprop(ps, lr=0.01, momentum=0.5, centered=True, backend=backend)
    opt2.load_state_dict(opt.state_dict())
    for p in ps:
        for k, v in opt.state[p].items():
            assert opt2.state[p][k].dtype == v.dtype and torch.equal(opt2.state[p][k], v)
            # (step is shared, as torch's load_state_dict shares it)
            assert k == "step" or opt2.state[p][k] is not v


@pytest.mark.parametrize("backend,device", backend_params())
def test_compile_matches_eager(backend, device):
    # an Adam step through torch.compile(fullgraph=True) (the op is opaque to the
    # compiler; its mutations are functionalized) == the eager op
    torch._dynamo.reset()

    def step(ps, gs, ms, vs, steps):
        ops.adam_step(ps, gs, ms, vs, [], steps, lr=0.01, beta1=0.9, beta2=0.99, eps=1e-8,
                      weight_decay=0.1, decoupled=True, backend=backend)

    def fresh():
        ps = [make_input(s, torch.float32, device, seed=i) for i, s in enumerate(SHAPES[:3])]
        gs = [make_input(p.shape, torch.float32, device, seed=10 + i) for i, p in enumerate(ps)]
        return (ps, gs, [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps],
                [torch.zeros((), device=device) for _ in ps])

    eager, comp = fresh(), fresh()
    compiled = torch.compile(step, fullgraph=True,
                             backend="aot_eager" if interpreted(backend, device) else "inductor")
    for _ in range(2):
        step(*eager)
        compiled(*comp)
    for a, b in zip(eager, comp):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("cfg", ONE_PER_OPT, ids=[c[0] for c in ONE_PER_OPT])
def test_compiled_step_matches_eager(backend, device, cfg):
    """optimizer.step() inside torch.compile(fullgraph=True) -- Dynamo traces the step's
    Python, whose eager fast path (the reused state lists) it skips -- gives the eager
    step's params and state, step after step."""
    name, kw = cfg
    torch._dynamo.reset()
    base = [make_input(s, torch.float32, device, seed=i) for i, s in enumerate(SHAPES[:3])]
    pe = [b.clone().requires_grad_() for b in base]
    pc = [b.clone().requires_grad_() for b in base]
    oe = getattr(pydl.optim, name)(pe, backend=backend, **copy.deepcopy(kw))
    oc = getattr(pydl.optim, name)(pc, backend=backend, **copy.deepcopy(kw))
    step = torch.compile(oc.step, fullgraph=True, backend="aot_eager")
    for s in range(3):
        _set_grads([pe, pc], 10 * s)
        oe.step()
        step()
    for a, b in zip(pe, pc):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        for k in oe.state[a]:
            torch.testing.assert_close(oe.state[a][k], oc.state[b][k], rtol=0, atol=0)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("cfg", ONE_PER_OPT + [("Adam", {"master_weights": True})],
                         ids=[c[0] for c in ONE_PER_OPT] + ["Adam-master_weights"])
def test_compiled_step_traced_once(backend, device, cfg):
    """A compiled optimizer.step() is traced no more often than torch's own optimizer's:
    once for Adam, AdamW, RMSprop and Adagrad (Dynamo runs pydl's _init_group eagerly first,
    so the first trace already sees the state), twice for SGD with momentum, whose buffers
    start as the first gradient (in torch too). The params end as the eager step's."""
    from torch._dynamo.testing import CompileCounterWithBackend
    name, kw = cfg
    ours, eager_ps, theirs = [], [], []
    frames = {}
    for lib in ("pydl", "torch"):
        torch._dynamo.reset()
        kwargs = dict(kw, backend=backend) if lib == "pydl" else \
            {k: v for k, v in kw.items() if k != "master_weights"}
        dtype = torch.bfloat16 if kw.get("master_weights") else torch.float32
        ps = [make_input(s, dtype, device, seed=i, requires_grad=True)
              for i, s in enumerate(SHAPES[:3])]
        opt = getattr(pydl.optim if lib == "pydl" else torch.optim, name)(ps, **kwargs)
        counter = CompileCounterWithBackend("aot_eager")
        step = torch.compile(opt.step, backend=counter)
        if lib == "pydl":
            ours = ps
            eager_ps = [p.detach().clone().requires_grad_() for p in ps]
            eager = getattr(pydl.optim, name)(eager_ps, **kwargs)
        else:
            theirs = ps
        for s in range(3):
            _set_grads([ps] + ([eager_ps] if lib == "pydl" else []), 10 * s)
            step()
            if lib == "pydl":
                eager.step()
        frames[lib] = counter.frame_count
    assert frames["pydl"] <= frames["torch"], frames
    assert frames["pydl"] == (2 if name == "SGD" else 1), frames
    for a, b in zip(ours, eager_ps):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len(theirs) == len(ours)


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("cfg", ONE_PER_OPT, ids=[c[0] for c in ONE_PER_OPT])
def test_found_inf_read_on_device_only(backend, device, cfg, monkeypatch):
    # with GradScaler's attributes set, step() never reads found_inf on the host (no
    # .item() / bool()): the skip is decided by the kernels (SGD: once its buffers exist)
    name, kw = cfg
    ps = [make_input(s, torch.float32, device, seed=i, requires_grad=True)
          for i, s in enumerate(SHAPES)]
    opt = getattr(pydl.optim, name)(ps, backend=backend, **kw)
    for p in ps:
        p.grad = _grad_like(p, 1)
    opt.step()  # creates the state
    before = {(i, k): v.clone() for i, p in enumerate(ps) for k, v in opt.state[p].items()}
    params_before = [p.detach().clone() for p in ps]
    opt.grad_scale = torch.tensor([8.0], device=device)
    opt.found_inf = torch.tensor([1.0], device=device)

    def no_host_read(self, *args):
        raise AssertionError("found_inf was read on the host")

    monkeypatch.setattr(torch.Tensor, "item", no_host_read)
    monkeypatch.setattr(torch.Tensor, "__bool__", no_host_read)
    opt.step()
    monkeypatch.undo()
    assert all(torch.equal(a, b) for a, b in zip(ps, params_before))
    assert all(torch.equal(v, before[i, k])
               for i, p in enumerate(ps) for k, v in opt.state[p].items())


@pytest.mark.parametrize("isa", ["avx2", "default"])
def test_cpu_simd_copies(isa):
    """The CPU optimizer loops are compiled for AVX-512, AVX2 and the baseline, the widest
    the CPU has chosen at run time; PYDL_CPU_SIMD caps the choice, so the copies this
    machine would not pick run here too: this file's CPU tests of every optimizer, config
    and dtype against torch, GradScaler and multi-chunk cases, in a capped process."""
    run_with_cpu_simd(isa, ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__, "-k",
                            "cpu and (matches_torch or dtypes or grad_scaler or master or mixed or multi_chunk)"],
                      timeout=900)


# ------------------------------------------- CUDA kernels, emulated on the host (no GPU)
@needs_gxx
def test_cuda_kernels_emulated_on_host(tmp_path):
    """The CUDA kernels of csrc/cuda/optim_device.cuh, compiled for the host with fibers as
    CUDA threads (tests/optim_cuda_emulation.cpp) and launched by the launchers' own plan:
    SGD (momentum, dampening, nesterov, weight decay, maximize, first step), Adam/AdamW
    (amsgrad, decoupled or L2 weight decay, maximize), RMSprop (centered, momentum),
    Adagrad (lr_decay, weight decay) over groups of odd-sized tensors -- tensors of several
    65536-element chunks, more tensors than one launch's table holds, a chunk table that
    fills mid-tensor, 460 tiny and empty tensors, one tensor of 257 chunks -- four steps
    each (plain, grad_scale, a found_inf-skipped step that must write nothing, then on),
    float, float64 and bfloat16 parameters (a stand-in, float32 state), odd element
    offsets (the scalar path; a misaligned vector access aborts), against torch.optim's
    formulas in float64 for every parameter, gradient, state element and step count;
    guard regions catch writes out of bounds. Checks their indexing where no GPU is
    available."""
    run_cuda_emulation("optim", tmp_path)
