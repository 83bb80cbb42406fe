"""pydl's CPU batch norm, pooling, activations and optimizer steps against torch's CPU
kernels: forward and backward in float32 and bfloat16, NCHW and channels-last, on
ResNet-sized activations, and one step of each optimizer over ResNet-18's parameters.

    python bench/cpu_ops_speed.py [--only bn,pool,act,optim] [--repeats 15] [--rounds 1]
                                  [--threads T] [--json out.json] [--before before.json]

What is timed is what a user's code runs: pydl.functional.<op> against
torch.nn.functional.<op> -- the forward in training mode (batch norm: statistics, normalize,
running-statistics update) with autograd recording, and the backward as
torch.autograd.grad of that output (batch norm: input, weight and bias gradients), the
gradient in the output's memory format; pydl.optim.<Opt>.step() against torch.optim's
default (foreach) implementation. Medians, rounds, --json and --before as in
bench/cpu_conv_speed.py, whose table code this uses.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as TF

import pydl.functional as F
import pydl.optim

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.cpu_conv_speed import _median_ms, run  # noqa: E402

# (name, shape): ResNet-18 at batch 4 on 64x64 images (bench/cpu_conv_speed.py's training
# step), and a 56x56 ResNet-50 stage at batch 8
BN_SHAPES = [("r18.stem", (4, 64, 32, 32)), ("r18.l1", (4, 64, 16, 16)), ("r18.l3", (4, 256, 4, 4)),
             ("r50.l1", (8, 64, 56, 56))]
# (name, shape, pydl call, torch call)
POOLS = [
    ("maxpool3x3s2", (8, 64, 56, 56), lambda t: F.max_pool2d(t, 3, 2, 1), lambda t: TF.max_pool2d(t, 3, 2, 1)),
    ("maxpool3x3s2", (4, 64, 32, 32), lambda t: F.max_pool2d(t, 3, 2, 1), lambda t: TF.max_pool2d(t, 3, 2, 1)),
    ("avgpool2x2", (8, 64, 56, 56), lambda t: F.avg_pool2d(t, 2), lambda t: TF.avg_pool2d(t, 2)),
    ("globalavg", (8, 512, 7, 7), lambda t: F.adaptive_avg_pool2d(t, 1), lambda t: TF.adaptive_avg_pool2d(t, 1)),
    ("globalavg", (8, 64, 56, 56), lambda t: F.adaptive_avg_pool2d(t, 1), lambda t: TF.adaptive_avg_pool2d(t, 1)),
]
CASES = [(dt, cl) for dt in (torch.float32, torch.bfloat16) for cl in (False, True)]
ACTS = [("relu", lambda t: F.relu(t), TF.relu),
        ("leaky_relu", lambda t: F.leaky_relu(t, 0.1), lambda t: TF.leaky_relu(t, 0.1))]
ACT_SHAPE = (8, 64, 56, 56)
# (optimizer, hyper-parameters): one step over ResNet-18's 11.7M parameters
OPTIMS = [("SGD", {"lr": 0.1, "momentum": 0.9}), ("Adam", {"lr": 1e-3}), ("AdamW", {"lr": 1e-3}),
          ("RMSprop", {"lr": 1e-3}), ("Adagrad", {"lr": 1e-2})]


def _label(name, shape, dt, cl):
    return (f"{name} {'x'.join(map(str, shape))} {'bf16' if dt == torch.bfloat16 else 'f32'} "
            f"{'CL' if cl else 'NCHW'}")


def _input(shape, dt, cl, seed):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dt)
    return x.contiguous(memory_format=torch.channels_last) if cl else x


def _fwd_bwd(fn, inputs, seed):
    """(forward, backward) callables for fn on inputs that require grad."""
    y = fn(*inputs)
    # the gradient in y's memory format, as the next layer's backward would hand it over
    g = torch.empty_like(y).copy_(torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)))
    return (lambda: fn(*inputs),
            lambda: torch.autograd.grad(y, inputs, g, retain_graph=True))


def bn_rows(repeats):
    rows = []
    for name, shape in BN_SHAPES:
        C = shape[1]
        for dt, cl in CASES:
            x = _input(shape, dt, cl, 0).requires_grad_()
            w = torch.rand(C).add_(0.5).requires_grad_()
            b = torch.randn(C).requires_grad_()
            times = {}
            for label, fn in (("pydl", F.batch_norm), ("torch", TF.batch_norm)):
                rm, rv = torch.zeros(C), torch.ones(C)
                times[label] = _fwd_bwd(lambda x, w, b, fn=fn, rm=rm, rv=rv: fn(x, rm, rv, w, b, True),
                                        [x, w, b], 1)
            for i, pas in enumerate(("fwd", "bwd")):
                rows.append({"layer": _label("bn " + name, shape, dt, cl), "pass": pas,
                             "pydl_ms": _median_ms(times["pydl"][i], repeats),
                             "torch_ms": _median_ms(times["torch"][i], repeats)})
    return rows


def _unary_rows(specs, repeats, seed):
    """Forward and backward rows of one-input ops: specs are (name, shape, pydl fn, torch fn)."""
    rows = []
    for name, shape, ours, theirs in specs:
        for dt, cl in CASES:
            x = _input(shape, dt, cl, seed).requires_grad_()
            p, t = _fwd_bwd(ours, [x], seed + 1), _fwd_bwd(theirs, [x], seed + 1)
            for i, pas in enumerate(("fwd", "bwd")):
                rows.append({"layer": _label(name, shape, dt, cl), "pass": pas,
                             "pydl_ms": _median_ms(p[i], repeats), "torch_ms": _median_ms(t[i], repeats)})
    return rows


def pool_rows(repeats):
    return _unary_rows(POOLS, repeats, 2)


def act_rows(repeats):
    return _unary_rows([(name, ACT_SHAPE, ours, theirs) for name, ours, theirs in ACTS], repeats, 4)


def optim_rows(repeats):
    from pydl.models import resnet18
    rows = []
    for name, kw in OPTIMS:
        times = {}
        for label, module in (("pydl", pydl.optim), ("torch", torch.optim)):
            torch.manual_seed(0)
            params = list(resnet18(num_classes=10).parameters())
            for i, p in enumerate(params):
                p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(i))
            opt = getattr(module, name)(params, **kw)
            times[label] = _median_ms(opt.step, repeats)
        rows.append({"layer": f"{name} resnet18 params f32", "pass": "step", "pydl_ms": times["pydl"],
                     "torch_ms": times["torch"]})
    return rows


FAMILIES = {"bn": bn_rows, "pool": pool_rows, "act": act_rows, "optim": optim_rows}


def main(argv=None) -> int:
    def measure(args):
        only = args.only.split(",") if args.only else list(FAMILIES)
        bad = [f for f in only if f not in FAMILIES]
        if bad:
            raise SystemExit(f"--only: unknown {bad}; choose from {', '.join(FAMILIES)}")
        return [row for f in only for row in FAMILIES[f](args.repeats)]

    def add_args(ap):
        ap.add_argument("--only", help="comma-separated families: " + ",".join(FAMILIES) + " (default: all)")
    return run(argv, __doc__.split("\n")[0], measure, add_args, what="float32 and bfloat16")


if __name__ == "__main__":
    sys.exit(main())
