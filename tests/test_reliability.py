"""Reliability sweep: bad input raises a clear Python exception in every backend (each
family's cases run in a subprocess, so a crash is a failure, not a dead test run);
hypothesis fuzzing against torch; determinism run to run; no memory growth.

Op families add their cases to BAD_INPUT and FUZZ below."""
import gc
import json
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pydl
import pydl.functional as F
from pydl.testing import check_against_torch, make_input
from conftest import backend_params, interpreted

# CI: a fixed seed and budget; `HYPOTHESIS_PROFILE=long pytest tests/test_reliability.py` by hand.
settings.register_profile("ci", max_examples=25, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def examples(n):
    """A slow test's example budget: n in CI, scaled with the loaded profile (the long profile
    runs 20x as many as CI for every fuzz test, these included)."""
    return max(1, n * settings.default.max_examples // 25)

# ------------------------------------------------------------------ bad-input matrix
# (case id, code run with B = the backend name and D = its device, exception type, message part)
BAD_INPUT = {
    "activation": [
        ("relu-not-a-tensor", "F.relu([1.0, 2.0], backend=B)", "TypeError", "input must be a torch.Tensor"),
        ("relu-int-dtype", "F.relu(torch.arange(3, device=D), backend=B)", "TypeError", "must be float32"),
        ("elu-bool-dtype", "F.elu(torch.ones(3, device=D, dtype=torch.bool), backend=B)", "TypeError", "must be float32"),
        ("leaky-inplace-negative-slope-grad",
         "F.leaky_relu(torch.randn(3, device=D, requires_grad=True) * 1, -0.5, inplace=True, backend=B)",
         "RuntimeError", "negative slope"),
        ("relu-inplace-leaf", "F.relu(torch.randn(3, device=D, requires_grad=True), inplace=True, backend=B)",
         "RuntimeError", "leaf Variable"),
        ("unknown-backend", "F.relu(torch.randn(3, device=D), backend='cudnn')", "ValueError", "backend must be one of"),
        ("act-bwd-shape", "importlib.import_module('pydl.ops.activation')._OPS[B].act_bwd(torch.randn(3, device=D), torch.randn(4, device=D), "
         "'relu', 0.0, True)", "RuntimeError", "same shape"),
        ("act-bwd-dtype", "importlib.import_module('pydl.ops.activation')._OPS[B].act_bwd(torch.randn(3, device=D), "
         "torch.randn(3, device=D, dtype=torch.float64), 'relu', 0.0, True)", "RuntimeError", "dtype"),
    ],
    "conv": [
        ("conv-rank", "F.conv2d(torch.randn(9, 9, device=D), torch.randn(6, 4, 3, 3, device=D), backend=B)",
         "RuntimeError", "3-D (unbatched) or 4-D"),
        ("conv-channels", "F.conv2d(torch.randn(2, 4, 9, 9, device=D), torch.randn(6, 3, 3, 3, device=D), backend=B)",
         "RuntimeError", "channel mismatch"),
        ("conv-groups", "F.conv2d(torch.randn(2, 4, 9, 9, device=D), torch.randn(6, 2, 3, 3, device=D), groups=3, "
         "backend=B)", "RuntimeError", "divisible by groups"),
        ("conv-stride-0", "F.conv2d(torch.randn(2, 4, 9, 9, device=D), torch.randn(6, 4, 3, 3, device=D), stride=0, "
         "backend=B)", "RuntimeError", "stride"),
        ("conv-dilation-0", "F.conv2d(torch.randn(2, 4, 9, 9, device=D), torch.randn(6, 4, 3, 3, device=D), "
         "dilation=0, backend=B)", "RuntimeError", "dilation"),
        ("conv-negative-padding", "F.conv2d(torch.randn(2, 4, 9, 9, device=D), torch.randn(6, 4, 3, 3, device=D), "
         "padding=-1, backend=B)", "RuntimeError", "padding"),
        ("conv-kernel-too-big", "F.conv2d(torch.randn(1, 4, 2, 2, device=D), torch.randn(6, 4, 3, 3, device=D), "
         "backend=B)", "RuntimeError", "kernel size"),
        ("conv-same-strided", "F.conv2d(torch.randn(2, 4, 9, 9, device=D), torch.randn(6, 4, 3, 3, device=D), stride=2, "
         "padding='same', backend=B)", "RuntimeError", "same"),
        ("conv-dtype-mismatch", "F.conv2d(torch.randn(2, 4, 9, 9, device=D), torch.randn(6, 4, 3, 3, device=D, "
         "dtype=torch.float64), backend=B)", "RuntimeError", "same dtype"),
        ("conv-bias-size", "F.conv2d(torch.randn(2, 4, 9, 9, device=D), torch.randn(6, 4, 3, 3, device=D), "
         "torch.randn(5, device=D), backend=B)", "RuntimeError", "bias"),
        ("conv-module-groups", "pydl.nn.Conv2d(4, 6, 3, groups=4, backend=B)", "ValueError", "divisible by groups"),
        ("conv-device-mismatch", "F.conv2d(torch.randn(2, 4, 9, 9, device=D), torch.randn(6, 4, 3, 3, device='meta'), "
         "backend=B)", "RuntimeError", "device"),
    ],
    "pool": [
        ("maxpool-kernel-0", "F.max_pool2d(torch.randn(2, 3, 7, 7, device=D), 0, backend=B)", "RuntimeError", "kernel_size"),
        ("maxpool-stride-0", "F.max_pool2d(torch.randn(2, 3, 7, 7, device=D), 3, 0, backend=B)", "RuntimeError", "stride"),
        ("maxpool-padding", "F.max_pool2d(torch.randn(2, 3, 7, 7, device=D), 3, 1, 2, backend=B)", "RuntimeError",
         "at most half"),
        ("maxpool-dilation-0", "F.max_pool2d(torch.randn(2, 3, 7, 7, device=D), 3, 1, 1, 0, backend=B)", "RuntimeError",
         "dilation"),
        ("maxpool-empty-output", "F.max_pool2d(torch.randn(1, 1, 2, 2, device=D), 3, backend=B)", "RuntimeError", "empty"),
        ("maxpool-rank", "F.max_pool2d(torch.randn(7, 7, device=D), 2, backend=B)", "RuntimeError", "3-D"),
        ("avgpool-kernel-negative", "F.avg_pool2d(torch.randn(2, 3, 7, 7, device=D), -1, backend=B)", "RuntimeError",
         "kernel_size"),
        ("avgpool-divisor-0", "F.avg_pool2d(torch.randn(2, 3, 7, 7, device=D), 2, divisor_override=0, backend=B)",
         "RuntimeError", "divisor_override"),
        ("adaptive-negative-size", "F.adaptive_avg_pool2d(torch.randn(2, 3, 7, 7, device=D), -1, backend=B)",
         "RuntimeError", "output_size"),
        ("adaptive-max-rank", "F.adaptive_max_pool2d(torch.randn(3, device=D), 2, backend=B)", "RuntimeError", "3-D"),
        ("pool-int-dtype", "F.max_pool2d(torch.arange(49, device=D).view(1, 1, 7, 7), 2, backend=B)", "TypeError",
         "float32"),
        ("module-kernel-0", "pydl.nn.MaxPool2d(0, backend=B)(torch.randn(1, 2, 5, 5, device=D))", "RuntimeError",
         "kernel_size"),
    ],
    "batchnorm": [
        ("bn-running-stats-size", "F.batch_norm(torch.randn(2, 3, 5, 5, device=D), torch.zeros(4, device=D), "
         "torch.ones(4, device=D), training=True, backend=B)", "RuntimeError", "running_mean"),
        ("bn-weight-size", "F.batch_norm(torch.randn(2, 3, 5, 5, device=D), None, None, torch.ones(5, device=D), None, "
         "True, backend=B)", "RuntimeError", "weight"),
        ("bn2d-rank", "pydl.nn.BatchNorm2d(3, backend=B).to(D)(torch.randn(3, 7, device=D))", "ValueError", "4D input"),
        ("bn1d-one-value-per-channel", "pydl.nn.BatchNorm1d(3, backend=B).to(D)(torch.randn(1, 3, device=D))",
         "ValueError", "more than 1 value per channel"),
        ("bn-wrong-channels", "pydl.nn.BatchNorm2d(4, backend=B).to(D)(torch.randn(2, 3, 5, 5, device=D))",
         "RuntimeError", "running_mean"),
        ("bn-int-dtype", "F.batch_norm(torch.ones(2, 3, 5, 5, device=D, dtype=torch.int32), None, None, training=True, "
         "backend=B)", "TypeError", "float"),
    ],
    "optim": [
        ("adam-lr", "pydl.optim.Adam([torch.zeros(3, device=D, requires_grad=True)], lr=-1, backend=B)", "ValueError",
         "learning rate"),
        ("adam-betas", "pydl.optim.Adam([torch.zeros(3, device=D, requires_grad=True)], betas=(1.0, 0.9), backend=B)",
         "ValueError", "beta parameter at index 0"),
        ("rmsprop-eps", "pydl.optim.RMSprop([torch.zeros(3, device=D, requires_grad=True)], eps=-1, backend=B)",
         "ValueError", "epsilon"),
        ("sgd-weight-decay", "pydl.optim.SGD([torch.zeros(3, device=D, requires_grad=True)], weight_decay=-1, backend=B)",
         "ValueError", "weight_decay"),
        ("sgd-nesterov", "pydl.optim.SGD([torch.zeros(3, device=D, requires_grad=True)], lr=0.1, nesterov=True, "
         "backend=B)", "ValueError", "Nesterov"),
        ("adagrad-lr-decay", "pydl.optim.Adagrad([torch.zeros(3, device=D, requires_grad=True)], lr_decay=-1, backend=B)",
         "ValueError", "lr_decay"),
        ("sparse-grad", "p = torch.zeros(3, device=D, requires_grad=True); o = pydl.optim.Adam([p], backend=B); "
         "p.grad = torch.zeros(3, device=D).to_sparse(); o.step()", "RuntimeError", "sparse"),
        ("optim-backend-name", "pydl.optim.Adam([torch.zeros(3, device=D, requires_grad=True)], backend='apex')",
         "ValueError", "backend"),
    ],
}

RUNNER = r"""
import importlib, os, sys, torch
import pydl, pydl.functional as F
from torch import nn
B, D = sys.argv[1], sys.argv[2]
cases = eval(sys.stdin.read())
for cid, code, _, _ in cases:
    print("BEGIN", cid, flush=True)
    try:
        exec(code)
    except Exception as e:
        msg = str(e).replace("\n", " ")[:500]
        print("RAISED", cid, type(e).__name__, msg, flush=True)
    else:
        print("NORAISE", cid, flush=True)
"""


def _run_cases(cases, backend, device):
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-c", RUNNER, backend, device], input=repr(cases), env=env,
                       capture_output=True, text=True, timeout=600)
    seen = {}
    for line in r.stdout.splitlines():
        parts = line.split(" ", 3)
        if parts[0] in ("RAISED", "NORAISE"):
            seen[parts[1]] = parts
    return r, seen


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("family", sorted(BAD_INPUT))
def test_bad_input_raises_clearly(family, backend, device):
    cases = BAD_INPUT[family]
    r, seen = _run_cases(cases, backend, device)
    problems = []
    for cid, code, exc, part in cases:
        if cid not in seen:
            problems.append(f"{cid}: the process died running it (rc {r.returncode}): {r.stderr[-800:]}")
            break
        res = seen[cid]
        if res[0] == "NORAISE":
            problems.append(f"{cid}: no exception for `{code}`")
        elif res[2] != exc or part not in res[3]:
            problems.append(f"{cid}: expected {exc} with '{part}', got {res[2]}: {res[3]}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("backend,device", backend_params())
def test_zero_size_inputs_as_torch(backend, device):
    """Every op on inputs with empty dimensions (batch, channels, H, W; both layouts;
    forward and backward) agrees with torch -- both raise, or both return the same shapes,
    values and gradients -- except the differences tests/zero_size.py lists with their
    reasons. Runs in a subprocess: a batch norm over empty planes (input (2, 3, 0, 5)) once
    divided by the plane size and killed the process with SIGFPE."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zero_size.py")
    r = subprocess.run([sys.executable, script, backend, device], capture_output=True, text=True,
                       timeout=900)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and lines and lines[-1].startswith("DONE"), \
        f"the sweep died (rc {r.returncode}) after: {lines[-1:]}\n{r.stderr[-1500:]}"
    diffs = [ln for ln in lines if ln.startswith("DIFF")]
    assert not diffs, "\n".join(diffs)
    assert sum(ln.startswith("SAME") for ln in lines) > 300


# ---------------------------------------------------------------------------- fuzzing
SIZES = st.sampled_from([1, 2, 3, 5, 7, 13])


@st.composite
def tensor_config(draw, min_rank=1, max_rank=4):
    rank = draw(st.integers(min_rank, max_rank))
    shape = tuple(draw(SIZES) for _ in range(rank))
    layouts = ["contiguous", "noncontig", "transposed"] + (["channels_last"] if rank == 4 else [])
    return shape, draw(st.sampled_from(layouts)), draw(st.sampled_from(
        [torch.float32, torch.float16, torch.bfloat16, torch.float64])), draw(st.integers(0, 2**16))


ACT_FUZZ = st.sampled_from([("relu", 0.0), ("leaky_relu", 0.01), ("leaky_relu", 0.3), ("elu", 1.0),
                            ("elu", 0.2), ("sigmoid", 0.0), ("tanh", 0.0)])


def _torch_act(act, alpha):
    import torch.nn.functional as TF
    return {"relu": TF.relu, "leaky_relu": lambda x: TF.leaky_relu(x, alpha), "elu": lambda x: TF.elu(x, alpha),
            "sigmoid": torch.sigmoid, "tanh": torch.tanh}[act]


@pytest.mark.parametrize("backend,device", backend_params())
def test_integer_like_size_arguments(backend, device):
    """Size arguments given as numpy integers (any object with __index__, as torch's int
    parameters take them: a model's hyperparameters often come from numpy) work in every
    function and module and give what Python ints give; bools, floats and tensors are still
    refused with a clear TypeError."""
    import numpy as np
    from torch import nn
    i = np.int64
    x = make_input((2, 4, 9, 8), torch.float32, device, seed=1)
    w = make_input((4, 2, 3, 3), torch.float32, device, seed=2)
    B = {"backend": backend}
    pairs = [
        (lambda: F.conv2d(x, w, None, i(2), (i(1), 2), [i(1)], i(2), **B),
         lambda: F.conv2d(x, w, None, 2, (1, 2), [1], 2, **B)),
        (lambda: F.max_pool2d(x, i(3), (i(2), i(1)), i(1), **B), lambda: F.max_pool2d(x, 3, (2, 1), 1, **B)),
        (lambda: F.avg_pool2d(x, [i(2), 3], divisor_override=i(5), **B),
         lambda: F.avg_pool2d(x, [2, 3], divisor_override=5, **B)),
        (lambda: F.adaptive_avg_pool2d(x, (i(3), None), **B), lambda: F.adaptive_avg_pool2d(x, (3, None), **B)),
        (lambda: F.adaptive_max_pool2d(x, i(4), **B), lambda: F.adaptive_max_pool2d(x, 4, **B)),
    ]
    for got, want in pairs:
        assert torch.equal(got(), want())
    with pydl.backend(backend):
        conv = pydl.convert(nn.Conv2d(4, 6, i(3), stride=i(2), padding=i(1), groups=i(2))).to(device)
        ref = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2).to(device)
        ref.load_state_dict(conv.state_dict())
        torch.testing.assert_close(conv(x), ref(x))
        assert torch.equal(pydl.nn.MaxPool2d(i(2))(x), F.max_pool2d(x, 2))
    for bad in (lambda: F.conv2d(x, w, stride=True, groups=2, **B),
                lambda: F.max_pool2d(x, 2, 1.5, **B),
                lambda: F.max_pool2d(x, torch.tensor(2), **B),
                lambda: F.adaptive_avg_pool2d(x, 2.0, **B)):
        with pytest.raises(TypeError, match="pydl"):
            bad()


def test_layout_check_compares_significant_strides():
    """check_against_torch compares the output's layout with torch's on the dimensions
    longer than 1 (a size-1 dimension's stride places nothing: the long fuzz profile drew
    a (1, 2, 1, 2) input where torch's relu output and pydl's differ only there) and still
    fails a real layout difference."""
    from pydl.testing import check_against_torch
    x = torch.randn(1, 2, 1, 2).as_strided((1, 2, 1, 2), (1, 1, 1, 2))
    check_against_torch(lambda t: torch.empty_like(t).copy_(torch.relu(t)), torch.relu, [x],
                        what="size-1 strides")
    y = torch.randn(3, 4)
    with pytest.raises(AssertionError, match="memory format differs"):
        check_against_torch(lambda t: torch.relu(t.t().contiguous().t()), torch.relu, [y],
                            what="transposed")


@pytest.mark.parametrize("backend,device", backend_params())
@given(cfg=tensor_config(), act=ACT_FUZZ)
def test_fuzz_activation(backend, device, cfg, act):
    shape, layout, dtype, seed = cfg
    name, alpha = act
    x = make_input(shape, dtype, device, layout, requires_grad=True, seed=seed, scale=3.0)
    check_against_torch(lambda t: pydl.ops.act(t, name, alpha, backend=backend),
                        _torch_act(name, alpha), [x], what=f"{name} {shape} {layout} {dtype}")


@st.composite
def pool_config(draw):
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    return k, s, p, d, draw(st.booleans())


FUZZ_DTYPES = st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64])


@st.composite
def map_shape(draw):
    """(N, C, H, W), or (C, H, W) -- unbatched input -- with sizes 1 and odd primes; a layout
    (channels_last only for 4-D)."""
    shape = (draw(st.sampled_from([1, 2, 3, 5])), draw(st.sampled_from([1, 2, 5, 7, 13])),
             draw(st.sampled_from([1, 3, 5, 11])))
    if draw(st.booleans()):
        shape = (draw(st.integers(1, 3)),) + shape
    layouts = ["contiguous", "noncontig"] + (["channels_last"] if len(shape) == 4 else [])
    return shape, draw(st.sampled_from(layouts))


def _check_indices(x, idx, ref_idx, what):
    """Max-pool indices: torch's exactly where the window maximum is unique (always, for
    float32 / float64 normal inputs); with 16-bit ties, an index of an equal value."""
    assert idx.dtype == torch.int64 and idx.shape == ref_idx.shape, what
    if x.dtype in (torch.float32, torch.float64):
        assert torch.equal(idx, ref_idx), f"{what}: indices differ from torch's"
    else:
        flat = x.detach().flatten(-2)
        assert torch.equal(flat.gather(-1, idx.flatten(-2)), flat.gather(-1, ref_idx.flatten(-2))), \
            f"{what}: an index points at a smaller value than torch's"


@pytest.mark.parametrize("backend,device", backend_params())
@given(sl=map_shape(), dtype=FUZZ_DTYPES, cfg=pool_config(), kind=st.sampled_from(["max", "avg"]),
       avg_opts=st.tuples(st.booleans(), st.sampled_from([None, None, 1, 3])), indices=st.booleans(),
       seed=st.integers(0, 2**16))
def test_fuzz_pool(backend, device, sl, dtype, cfg, kind, avg_opts, indices, seed):
    import torch.nn.functional as TF
    from hypothesis import assume
    shape, layout = sl
    k, s, p, d, ceil = cfg
    if kind == "max":
        # a window with no input element: torch's CPU backward, the reference, writes past the
        # plane there (test_pool.py::test_max_pool_empty_windows checks pydl on such windows)
        from test_pool import has_empty_window
        assume(not has_empty_window(shape[-2:], k, s, p, d, ceil))
    x = make_input(shape, dtype, device, layout, requires_grad=True, seed=seed)
    if kind == "max":
        ours = lambda t: F.max_pool2d(t, k, s, p, d, ceil, backend=backend)  # noqa: E731
        ref = lambda t: TF.max_pool2d(t, k, s, p, d, ceil)  # noqa: E731
    else:
        assume(d == (1, 1))
        cip, div = avg_opts
        ours = lambda t: F.avg_pool2d(t, k, s, p, ceil, cip, div, backend=backend)  # noqa: E731
        ref = lambda t: TF.avg_pool2d(t, k, s, p, ceil, cip, div)  # noqa: E731
    what = f"{kind}pool {shape} {cfg} {avg_opts if kind == 'avg' else ''} {layout} {dtype}"
    try:
        ref(x.detach())
    except RuntimeError:
        with pytest.raises(RuntimeError):  # what torch rejects, pydl rejects
            ours(x)
        return
    check_against_torch(ours, ref, [x], what=what)
    if kind == "max" and indices:
        out, idx = F.max_pool2d(x.detach(), k, s, p, d, ceil, return_indices=True, backend=backend)
        ref_out, ref_idx = TF.max_pool2d(x.detach(), k, s, p, d, ceil, return_indices=True)
        assert torch.equal(out, ref_out), f"{what}: values with indices differ from torch's"
        _check_indices(x, idx, ref_idx, what)


@pytest.mark.parametrize("backend,device", backend_params())
@given(sl=map_shape(), dtype=FUZZ_DTYPES, kind=st.sampled_from(["max", "avg"]),
       size=st.tuples(st.one_of(st.none(), st.integers(1, 15)), st.one_of(st.none(), st.integers(1, 13))),
       as_int=st.booleans(), seed=st.integers(0, 2**16))
def test_fuzz_adaptive_pool(backend, device, sl, dtype, kind, size, as_int, seed):
    """output sizes smaller, equal and larger than the input (overlapping windows), None
    entries (keep the input's size) and a single int; values, gradient and max's indices"""
    import torch.nn.functional as TF
    shape, layout = sl
    out_size = size[0] if as_int and size[0] is not None else size
    x = make_input(shape, dtype, device, layout, requires_grad=True, seed=seed)
    what = f"adaptive {kind} pool {shape} -> {out_size} {layout} {dtype}"
    if kind == "avg":
        check_against_torch(lambda t: F.adaptive_avg_pool2d(t, out_size, backend=backend),
                            lambda t: TF.adaptive_avg_pool2d(t, out_size), [x], what=what)
        return
    check_against_torch(lambda t: F.adaptive_max_pool2d(t, out_size, backend=backend),
                        lambda t: TF.adaptive_max_pool2d(t, out_size), [x], what=what)
    out, idx = F.adaptive_max_pool2d(x.detach(), out_size, True, backend=backend)
    ref_out, ref_idx = TF.adaptive_max_pool2d(x.detach(), out_size, True)
    assert torch.equal(out, ref_out), f"{what}: values with indices differ from torch's"
    _check_indices(x, idx, ref_idx, what)


@st.composite
def bn_input(draw):
    """(N, C), (N, C, L) or (N, C, H, W) with N >= 2 (training needs two values a channel)."""
    c = draw(st.sampled_from([1, 3, 5]))
    shape = (draw(st.integers(2, 4)), c) + tuple(draw(st.sampled_from([1, 2, 7])) for _ in range(draw(st.integers(0, 2))))
    layouts = ["contiguous", "noncontig"] + (["channels_last"] if len(shape) == 4 else [])
    return shape, draw(st.sampled_from(layouts))


def _bn_args(shape, dtype, device, affine, seed):
    c = shape[1]
    wdt = torch.float64 if dtype == torch.float64 else torch.float32
    w = make_input((c,), wdt, device, requires_grad=True, seed=seed + 1) if affine else None
    b = make_input((c,), wdt, device, requires_grad=True, seed=seed + 2) if affine else None
    rm = make_input((c,), wdt, device, seed=seed + 3)
    rv = make_input((c,), wdt, device, seed=seed + 4).abs() + 0.5
    return w, b, rm, rv


def _ref_stats(x, t):
    """A copy of running statistic t for torch's batch norm on x: float64 for the float64
    oracle, else as it is."""
    return t.to(x.device, torch.float64 if x.dtype == torch.float64 else t.dtype).clone()


def _running_stats_as_torch(ours, theirs, rm, rv, what):
    """One call each on their own copies of the running statistics: pydl's updates (in the
    statistics' dtype) within float32 rounding of torch's."""
    stats = [(rm.clone(), rv.clone()) for _ in range(2)]
    with torch.no_grad():
        ours(*stats[0])
        theirs(*stats[1])
    for a, b, name in zip(stats[0], stats[1], ("running_mean", "running_var")):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), f"{what}: {name} {a} != torch's {b}"


@pytest.mark.parametrize("backend,device", backend_params())
@given(sl=bn_input(), dtype=FUZZ_DTYPES, training=st.booleans(), affine=st.booleans(),
       momentum=st.sampled_from([0.1, 0.0, 1.0, 0.37]), seed=st.integers(0, 2**16))
def test_fuzz_batch_norm(backend, device, sl, dtype, training, affine, momentum, seed):
    """output and gradients; in training also the running-statistics update"""
    import torch.nn.functional as TF
    shape, layout = sl
    x = make_input(shape, dtype, device, layout, requires_grad=True, seed=seed)
    w, b, rm, rv = _bn_args(shape, dtype, device, affine, seed)
    ins = [x] + ([w, b] if affine else [])
    what = f"batch_norm {shape} {layout} {dtype} train={training} momentum={momentum}"

    def ours(x, w=None, b=None):
        return F.batch_norm(x, rm.clone(), rv.clone(), w, b, training, momentum, 1e-5, backend=backend)

    def ref(x, w=None, b=None):
        return TF.batch_norm(x, _ref_stats(x, rm), _ref_stats(x, rv), w, b, training, momentum, 1e-5)
    check_against_torch(ours, ref, ins, what=what)
    if training:
        _running_stats_as_torch(
            lambda m, v: F.batch_norm(x, m, v, w, b, True, momentum, 1e-5, backend=backend),
            lambda m, v: TF.batch_norm(x, m, v, w, b, True, momentum, 1e-5), rm, rv, what)


@pytest.mark.parametrize("backend,device", backend_params())
@given(sl=bn_input(), dtype=FUZZ_DTYPES, training=st.booleans(), affine=st.booleans(),
       residual=st.booleans(), act=st.sampled_from([("relu", 0.0), ("leaky_relu", 0.01), ("leaky_relu", 0.2),
                                                    ("none", 0.0)]),
       seed=st.integers(0, 2**16))
def test_fuzz_batch_norm_act(backend, device, sl, dtype, training, affine, residual, act, seed):
    """the fused tail act(batch_norm(x) [+ residual]) against torch's unfused sequence:
    output, the gradients of x, the parameters and the residual, the running statistics"""
    import torch.nn.functional as TF
    shape, layout = sl
    name, slope = act
    x = make_input(shape, dtype, device, layout, requires_grad=True, seed=seed)
    w, b, rm, rv = _bn_args(shape, dtype, device, affine, seed)
    r = make_input(shape, dtype, device, layout, requires_grad=True, seed=seed + 5) if residual else None
    ins = [x] + ([r] if residual else []) + ([w, b] if affine else [])
    what = f"batch_norm_act {shape} {layout} {dtype} train={training} residual={residual} {act}"

    def split(t):
        x, rest = t[0], list(t[1:])
        res = rest.pop(0) if residual else None
        return x, res, (rest if affine else [None, None])

    def ours(*t):
        x, res, (w, b) = split(t)
        return F.batch_norm_act(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5, residual=res,
                                act=name, negative_slope=slope, backend=backend)

    def ref(*t):
        x, res, (w, b) = split(t)
        y = TF.batch_norm(x, _ref_stats(x, rm), _ref_stats(x, rv), w, b, training, 0.1, 1e-5)
        y = y + res if res is not None else y
        return {"relu": TF.relu, "leaky_relu": lambda u: TF.leaky_relu(u, slope), "none": lambda u: u}[name](y)
    check_against_torch(ours, ref, ins, what=what)
    if training:
        _running_stats_as_torch(
            lambda m, v: F.batch_norm_act(x, m, v, w, b, True, 0.1, 1e-5, residual=r, act=name,
                                          negative_slope=slope, backend=backend),
            lambda m, v: TF.batch_norm(x, m, v, w, b, True, 0.1, 1e-5), rm, rv, what)


@st.composite
def conv_config(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    cin = groups * draw(st.integers(1, 2))
    cout = groups * draw(st.integers(1, 3))
    k = (draw(st.sampled_from([1, 2, 3, 5])), draw(st.sampled_from([1, 3])))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dil = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pad = draw(st.sampled_from([0, 1, (2, 0), "valid"] + (["same"] if stride == (1, 1) else [])))
    return cin, cout, k, stride, pad, dil, groups, draw(st.booleans())


@pytest.mark.parametrize("backend,device", backend_params())
@given(cfg=conv_config(), n=st.integers(0, 2), hw=st.tuples(st.sampled_from([5, 7, 8]), st.sampled_from([5, 6, 9])),
       layout=st.sampled_from(["contiguous", "channels_last", "noncontig"]), dtype=FUZZ_DTYPES,
       act=st.sampled_from([None, None, "relu"]), seed=st.integers(0, 2**16))
@settings(max_examples=examples(15))
def test_fuzz_conv2d(backend, device, cfg, n, hw, layout, dtype, act, seed):
    """n = 0: unbatched (C, H, W) input; act="relu": the fused bias + ReLU epilogue"""
    import torch.nn.functional as TF
    cin, cout, k, stride, pad, dil, groups, bias = cfg
    if n == 0 and layout == "channels_last":
        layout = "contiguous"
    x = make_input(((n,) if n else ()) + (cin,) + hw, dtype, device, layout, requires_grad=True, seed=seed)
    w = make_input((cout, cin // groups) + k, dtype, device, requires_grad=True, seed=seed + 1, scale=0.5)
    b = make_input((cout,), dtype, device, requires_grad=True, seed=seed + 2) if bias else None
    try:
        TF.conv2d(x.detach(), w.detach(), None, stride, pad, dil, groups)
    except RuntimeError:
        with pytest.raises(RuntimeError):  # what torch rejects, pydl rejects
            F.conv2d(x, w, b, stride, pad, dil, groups, activation=act, backend=backend)
        return
    ins = [x, w] + ([b] if bias else [])
    post = TF.relu if act == "relu" else (lambda y: y)
    check_against_torch(lambda *t: F.conv2d(*t[:2], t[2] if bias else None, stride, pad, dil, groups,
                                            activation=act, backend=backend),
                        lambda *t: post(TF.conv2d(*t[:2], t[2] if bias else None, stride, pad, dil, groups)), ins,
                        what=f"conv2d {cfg} n={n} {hw} {layout} {dtype} act={act}")


OPTIMS = {
    "SGD": dict(lr=st.floats(1e-3, 0.5), momentum=st.sampled_from([0.0, 0.9]), dampening=st.sampled_from([0.0, 0.1]),
                weight_decay=st.sampled_from([0.0, 0.01]), nesterov=st.booleans(), maximize=st.booleans()),
    "Adam": dict(lr=st.floats(1e-4, 0.1), betas=st.tuples(st.floats(0.0, 0.95), st.floats(0.5, 0.999)),
                 eps=st.sampled_from([1e-8, 1e-3]), weight_decay=st.sampled_from([0.0, 0.1]), amsgrad=st.booleans(),
                 maximize=st.booleans()),
    "AdamW": dict(lr=st.floats(1e-4, 0.1), weight_decay=st.sampled_from([0.0, 0.1]), amsgrad=st.booleans()),
    "RMSprop": dict(lr=st.floats(1e-4, 0.05), alpha=st.floats(0.5, 0.99), momentum=st.sampled_from([0.0, 0.5]),
                    centered=st.booleans(), weight_decay=st.sampled_from([0.0, 0.01]), maximize=st.booleans()),
    "Adagrad": dict(lr=st.floats(1e-3, 0.5), lr_decay=st.sampled_from([0.0, 0.01]),
                    initial_accumulator_value=st.sampled_from([0.0, 0.1]), weight_decay=st.sampled_from([0.0, 0.01])),
}


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("name", sorted(OPTIMS))
@given(data=st.data(), shapes=st.lists(st.tuples(st.sampled_from([1, 3, 7, 13]), st.sampled_from([1, 2, 5])),
                                       min_size=1, max_size=4), seed=st.integers(0, 2**16))
@settings(max_examples=examples(10))
def test_fuzz_optimizers(backend, device, name, data, shapes, seed):
    """random hyperparameters and parameter lists: three steps equal torch.optim's"""
    kw = {k: data.draw(v, label=k) for k, v in OPTIMS[name].items()}
    if name == "SGD" and kw["nesterov"] and (kw["momentum"] == 0 or kw["dampening"] != 0):
        kw["nesterov"] = False
    ours = [make_input(s, torch.float32, device, seed=seed + i, requires_grad=True) for i, s in enumerate(shapes)]
    ref = [p.detach().clone().requires_grad_() for p in ours]
    o1 = getattr(pydl.optim, name)(ours, backend=backend, **kw)
    o2 = getattr(torch.optim, name)(ref, foreach=False, **kw)
    for step in range(3):
        for i, (a, b) in enumerate(zip(ours, ref)):
            g = make_input(a.shape, torch.float32, device, seed=seed + 100 * step + i)
            a.grad, b.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    # float32 after three steps; the fused kernel's operation order differs from torch's
    # per-tensor loop by a few ulps (the float64-oracle comparison is in tests/test_optim.py)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (name, kw, float((a - b).abs().max()))


# hyperparameters torch.optim reads afresh at every step, so a user (or a scheduler) may
# change them between steps: (key, strategy of new values)
MUTABLE = {
    "SGD": [("lr", st.floats(1e-3, 0.5)), ("weight_decay", st.sampled_from([0.0, 0.01])),
            ("maximize", st.booleans()), ("dampening", st.sampled_from([0.0, 0.1])),
            ("momentum", st.sampled_from([0.0, 0.9]))],
    "Adam": [("lr", st.floats(1e-4, 0.1)), ("betas", st.tuples(st.floats(0.0, 0.95), st.floats(0.5, 0.999))),
             ("eps", st.sampled_from([1e-8, 1e-3])), ("weight_decay", st.sampled_from([0.0, 0.1])),
             ("maximize", st.booleans())],
    "AdamW": [("lr", st.floats(1e-4, 0.1)), ("weight_decay", st.sampled_from([0.0, 0.1])),
              ("maximize", st.booleans())],
    "RMSprop": [("lr", st.floats(1e-4, 0.05)), ("alpha", st.floats(0.5, 0.99)),
                ("weight_decay", st.sampled_from([0.0, 0.01])), ("maximize", st.booleans())],
    "Adagrad": [("lr", st.floats(1e-3, 0.5)), ("lr_decay", st.sampled_from([0.0, 0.01])),
                ("weight_decay", st.sampled_from([0.0, 0.01])), ("maximize", st.booleans())],
}


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("name", sorted(OPTIMS))
@given(data=st.data(), seed=st.integers(0, 2**16))
@settings(max_examples=examples(5))
def test_fuzz_optimizer_sessions(backend, device, name, data, seed):
    """a random session of what users do between steps -- steps where some params have no
    gradient, hyperparameters changed in param_groups (as schedulers do), zero_grad, a param
    changed in place, a param's state reset, load_state_dict of its own state_dict, a param
    group added -- done to a pydl optimizer and to torch.optim's: the params equal torch's
    after every step (pydl reuses its state lists between steps: none of this may go stale)."""
    import copy
    from test_optim import _init_added_adagrad_state
    kw = {k: data.draw(v, label=k) for k, v in OPTIMS[name].items()}
    if name == "SGD":
        kw["nesterov"] = False  # momentum may be changed below; nesterov needs it
    shapes = data.draw(st.lists(st.tuples(st.sampled_from([1, 3, 7]), st.sampled_from([1, 2, 5])),
                                min_size=1, max_size=3), label="shapes")
    ours = [make_input(s, torch.float32, device, seed=seed + i, requires_grad=True) for i, s in enumerate(shapes)]
    ref = [p.detach().clone().requires_grad_() for p in ours]
    opts = [getattr(pydl.optim, name)(ours, backend=backend, **kw),
            getattr(torch.optim, name)(ref, foreach=False, **kw)]
    sets = [ours, ref]
    actions = [
        st.tuples(st.just("step"), st.lists(st.booleans(), min_size=8, max_size=8)),
        st.tuples(st.just("set"), st.integers(0, 7), st.sampled_from(MUTABLE[name]).flatmap(
            lambda kv: st.tuples(st.just(kv[0]), kv[1]))),
        st.tuples(st.just("zero_grad"), st.booleans()),
        st.tuples(st.just("scale_param"), st.integers(0, 7)),
        st.tuples(st.just("reload"),),
        st.tuples(st.just("add_group"), st.sampled_from([(2,), (3, 4)]))]
    if name != "Adagrad":  # torch's Adagrad cannot load a state_dict with a reset state (KeyError; pydl's too)
        actions.append(st.tuples(st.just("reset_state"), st.integers(0, 7)))
    log = []
    for n, act in enumerate(data.draw(st.lists(st.one_of(actions), min_size=3, max_size=10), label="session")):
        log.append(act)
        kind = act[0]
        if kind == "step":
            for i in range(len(ours)):
                g = make_input(ours[i].shape, torch.float32, device, seed=seed + 1000 * n + i) if act[1][i % 8] else None
                for ps in sets:
                    ps[i].grad = None if g is None else g.clone()
            for o in opts:
                o.step()
            for a, b in zip(ours, ref):  # float32: a few ulps of operation order, as test_fuzz_optimizers
                assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (name, kw, log, float((a - b).abs().max()))
        elif kind == "set":
            for o in opts:
                o.param_groups[act[1] % len(o.param_groups)][act[2][0]] = act[2][1]
        elif kind == "zero_grad":
            for o in opts:
                o.zero_grad(set_to_none=act[1])
        elif kind == "scale_param":
            with torch.no_grad():
                for ps in sets:
                    ps[act[1] % len(ps)].mul_(0.75)
        elif kind == "reset_state":
            for o, ps in zip(opts, sets):
                o.state[ps[act[1] % len(ps)]] = {}
        elif kind == "reload":
            for o in opts:
                o.load_state_dict(copy.deepcopy(o.state_dict()))
        else:
            extra = make_input(act[1], torch.float32, device, seed=seed + 7 * n)
            for o, ps in zip(opts, sets):
                e = extra.clone().requires_grad_()
                ps.append(e)
                o.add_param_group({"params": [e]})
            if name == "Adagrad":  # torch 2.11 makes Adagrad's state in __init__ only (newer
                _init_added_adagrad_state(opts[1])  # releases at the first step): the reference's now


@st.composite
def small_cnn(draw):
    """A random small CNN of the layers pydl.convert replaces (each with random options) and
    the input it takes: (torch model, input shape, layout)."""
    from torch import nn
    c = draw(st.sampled_from([1, 3]))
    shape = (draw(st.integers(2, 3)), c, draw(st.integers(7, 12)), draw(st.integers(7, 12)))
    layers = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["conv", "conv", "bn", "act", "pool"]))
        if kind == "conv":
            g = draw(st.sampled_from([1, 2])) if c % 2 == 0 else 1
            oc = g * draw(st.integers(1, 3))
            stride = draw(st.integers(1, 2))
            pad = draw(st.sampled_from([0, 1, (2, 1)] + (["same"] if stride == 1 else [])))
            layers.append(nn.Conv2d(c, oc, draw(st.sampled_from([1, 3, (3, 1), 5])), stride, pad,
                                    draw(st.integers(1, 2)), g, draw(st.booleans()),
                                    draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))))
            c = oc
        elif kind == "bn":
            layers.append(nn.BatchNorm2d(c, momentum=draw(st.sampled_from([0.1, None, 0.5])),
                                         affine=draw(st.booleans()), track_running_stats=draw(st.booleans())))
        elif kind == "act":
            layers.append(draw(st.sampled_from([lambda i: nn.ReLU(i), lambda i: nn.LeakyReLU(0.2, i),
                                                lambda i: nn.ELU(0.7, i), lambda i: nn.Sigmoid(),
                                                lambda i: nn.Tanh()]))(draw(st.booleans())))
        else:
            k = draw(st.integers(1, 3))
            args = (k, draw(st.integers(1, 2)), draw(st.integers(0, k // 2)))
            layers.append(nn.MaxPool2d(*args, ceil_mode=draw(st.booleans())) if draw(st.booleans()) else
                          nn.AvgPool2d(*args, ceil_mode=draw(st.booleans()), count_include_pad=draw(st.booleans())))
    out = draw(st.integers(1, 3))
    layers += [draw(st.sampled_from([nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d]))(out), nn.Flatten(),
               nn.Linear(c * out * out, 4)]
    return nn.Sequential(*layers), shape, draw(st.sampled_from(["contiguous", "channels_last"]))


@pytest.mark.parametrize("backend,device", backend_params())
@given(net=small_cnn(), seed=st.integers(0, 2**16))
@settings(max_examples=examples(10))
def test_fuzz_converted_networks(backend, device, net, seed):
    """random small CNNs converted by pydl.convert, in float64, trained two steps by
    pydl.optim.SGD (momentum, weight decay) beside the torch model with torch.optim.SGD, then
    run in eval mode: outputs, every gradient, params and buffers equal torch's (float64:
    only summation order differs)"""
    from hypothesis import assume
    model, shape, layout = net
    ref = model.to(device, torch.float64)
    x = make_input(shape, torch.float64, device, layout, seed=seed)
    try:
        ref(x.clone())
    except RuntimeError:  # a configuration torch refuses (a map shrunk below a kernel, ...)
        assume(False)
    ours = pydl.convert(ref, backend=backend)
    opts = [pydl.optim.SGD(ours.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01, backend=backend),
            torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01, foreach=False)]
    what = f"{ref} {shape} {layout}"

    def close(a, b, name):
        assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-9, atol=1e-10), \
            f"{what}: {name} differs from torch's by {float((a - b).abs().max()):.3g}"
    for step in range(2):
        w = make_input((shape[0], 4), torch.float64, device, seed=seed + step + 1)

        def loss(m):
            y = (m(x.clone()) * w).sum()  # (a clone: the first layer may be in place)
            y.backward()
            return y
        try:
            y_ref = loss(ref)
        except RuntimeError as e:  # e.g. an in-place activation on a tensor saved for backward:
            with pytest.raises(RuntimeError) as ours_e:  # what torch refuses, pydl refuses
                loss(ours)
            assert ("inplace operation" in str(e)) == ("inplace operation" in str(ours_e.value)), (e, ours_e)
            return
        close(loss(ours), y_ref, f"step {step} loss")
        for (n, a), b in zip(ours.named_parameters(), ref.parameters()):
            close(a.grad, b.grad, f"step {step} grad of {n}")
        for o in opts:
            o.step()
            o.zero_grad()
    ours.eval(), ref.eval()
    with torch.no_grad():
        close(ours(x.clone()), ref(x.clone()), "eval output")
    for (n, a), b in zip(list(ours.named_parameters()) + list(ours.named_buffers()),
                         list(ref.parameters()) + list(ref.buffers())):
        close(a, b, n)


@pytest.mark.parametrize("backend,device", backend_params())
def test_float16_overflow_as_torch(backend, device):
    """values at the edge of float16's range: pydl saturates / overflows to inf exactly
    where torch's own float16 op does (sums accumulate in float32 in both)."""
    import torch.nn.functional as TF
    g = torch.Generator().manual_seed(0)
    big = (torch.rand(2, 3, 6, 5, generator=g) * 2 - 1) * 65000
    big[0, 0, 0, :2] = float("inf")
    big[1, 2, 3, 1] = -float("inf")
    x = big.to(device, torch.float16)
    cases = [
        (lambda t: F.relu(t, backend=backend), TF.relu),
        (lambda t: F.elu(t, 2.0, backend=backend), lambda t: TF.elu(t, 2.0)),
        (lambda t: F.leaky_relu(t, 1.5, backend=backend), lambda t: TF.leaky_relu(t, 1.5)),  # overflows
        (lambda t: F.max_pool2d(t, 2, backend=backend), lambda t: TF.max_pool2d(t, 2)),
        (lambda t: F.avg_pool2d(t, 3, 1, 1, backend=backend), lambda t: TF.avg_pool2d(t, 3, 1, 1)),
        (lambda t: F.adaptive_avg_pool2d(t, 1, backend=backend), lambda t: TF.adaptive_avg_pool2d(t, 1)),
    ]
    for ours, ref in cases:
        a, b = ours(x), ref(x)
        assert torch.equal(torch.isinf(a), torch.isinf(b)) and torch.equal(a[torch.isinf(a)], b[torch.isinf(b)])
        assert torch.equal(torch.isnan(a), torch.isnan(b))
        fin = torch.isfinite(b)
        # finite values: within about two float16 ulps (2^-10 relative) of torch's
        assert torch.allclose(a[fin].float(), b[fin].float(), rtol=2e-3, atol=1e-2)


# ------------------------------------------------------------------------ determinism
def _twice(fn):
    a, b = fn(), fn()
    for x, y in zip(a, b):
        assert torch.equal(x, y) or (torch.isnan(x).equal(torch.isnan(y)) and
                                     torch.equal(torch.nan_to_num(x), torch.nan_to_num(y)))


@pytest.mark.parametrize("backend,device", backend_params())
def test_activation_deterministic(backend, device):
    shape = (3, 5, 7, 2) if interpreted(backend, device) else (13, 97, 31, 5)
    x = make_input(shape, torch.float32, device, requires_grad=True)
    g = make_input(shape, torch.float32, device, seed=2)

    def run():
        outs = []
        for act, alpha in [("relu", 0), ("leaky_relu", 0.1), ("elu", 1.0), ("sigmoid", 0), ("tanh", 0)]:
            y = pydl.ops.act(x, act, alpha, backend=backend)
            outs += [y, torch.autograd.grad(y, x, g)[0]]
        return outs
    _twice(run)


# ----------------------------------------------------------------------------- memory
def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_no_memory_growth_over_1000_steps():
    torch.manual_seed(0)
    from torch import nn
    model = nn.Sequential(nn.Linear(32, 64), pydl.nn.ReLU(inplace=True), nn.Linear(64, 64), pydl.nn.ELU(),
                          nn.Linear(64, 64), pydl.nn.LeakyReLU(0.1), nn.Linear(64, 10), pydl.nn.Tanh())
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(16, 32)

    def step():
        opt.zero_grad()
        model(x).square().sum().backward()
        opt.step()
    for _ in range(100):  # warm-up: allocator pools, autograd caches
        step()
    gc.collect()
    before = _rss_mb()
    for _ in range(1000):
        step()
    gc.collect()
    grown = _rss_mb() - before
    assert grown < 8, f"RSS grew by {grown:.1f} MB over 1000 steps"


def _cnn_training_loop(backend: str, device: str):
    """A small CNN on every pydl family (conv, BN + fused residual ReLU, pools,
    activations, the fused Adam): returns a step function."""
    from torch import nn
    torch.manual_seed(0)
    model = pydl.convert(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1, groups=2), nn.BatchNorm2d(16), nn.ELU(),
        nn.AvgPool2d(2), nn.Conv2d(16, 16, 1), nn.LeakyReLU(0.1), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(16, 10)).to(device), backend=backend)
    opt = pydl.optim.Adam(model.parameters(), lr=1e-3, backend=backend)
    x = torch.randn(2, 3, 8, 8, device=device)
    y = torch.randint(0, 10, (2,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return step


@pytest.mark.parametrize("backend,device", [p for p in backend_params() if not interpreted(*p.values)])
def test_no_memory_growth_over_1000_cnn_steps(backend, device):
    """1000 training steps of a CNN on every pydl family: no growth of the process's RSS
    (CPU) or of the CUDA caching allocator's allocated bytes (GPU) after warm-up."""
    if device == "cpu" and not os.path.exists("/proc/self/statm"):
        pytest.skip("needs /proc (Linux)")
    step = _cnn_training_loop(backend, device)
    for _ in range(50):  # warm-up: allocator pools, optimizer state, autograd caches
        step()
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_mb()
    for _ in range(1000):
        step()
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        grown = torch.cuda.memory_allocated() - before
        assert grown == 0, f"CUDA allocated memory grew by {grown} bytes over 1000 steps"
    else:
        grown = _rss_mb() - before
        assert grown < 8, f"RSS grew by {grown:.1f} MB over 1000 steps"


def test_gpu_sanitize_script_dry_run():
    """tests/gpu_sanitize.py (what compute-sanitizer runs on a GPU machine) on the CPU, so
    the script cannot rot between GPU runs: every call it makes passes the oracle rule."""
    here = os.path.dirname(os.path.abspath(__file__))
    run = subprocess.run([sys.executable, os.path.join(here, "gpu_sanitize.py"), "--device", "cpu",
                          "--backend", "cpu", "--quick"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "checks passed" in run.stdout, run.stdout[-2000:] + run.stderr[-2000:]


def test_long_fuzz_profile_scales_every_fuzz_test():
    """`HYPOTHESIS_PROFILE=long` runs 20x CI's examples in every fuzz test, the slow ones with
    their own smaller budget included (they once kept it whatever the profile)."""
    code = ("import test_reliability as t; "
            "print([getattr(t, n)._hypothesis_internal_use_settings.max_examples "
            "for n in ('test_fuzz_pool', 'test_fuzz_conv2d', 'test_fuzz_optimizers')])")
    counts = {}
    for profile in ("ci", "long"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             cwd=os.path.dirname(__file__), env={**os.environ, "HYPOTHESIS_PROFILE": profile})
        counts[profile] = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["ci"] == [25, 15, 10]
    assert counts["long"] == [500, 300, 200]
