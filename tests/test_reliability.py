"""Reliability sweep: bad input raises a clear Python exception in every backend (each
family's cases run in a subprocess, so a crash is a failure, not a dead test run);
hypothesis fuzzing against torch; determinism run to run; no memory growth.

Op families add their cases to BAD_INPUT and FUZZ below."""
import gc
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
@given(cfg=tensor_config(), act=ACT_FUZZ)
def test_fuzz_activation(backend, device, cfg, act):
    shape, layout, dtype, seed = cfg
    name, alpha = act
    x = make_input(shape, dtype, device, layout, requires_grad=True, seed=seed, scale=3.0)
    check_against_torch(lambda t: pydl.ops.act(t, name, alpha, backend=backend),
                        _torch_act(name, alpha), [x], what=f"{name} {shape} {layout} {dtype}")


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
