"""Host (CPU) time of one call of each pydl op against torch's, on tiny tensors.

On a GPU an op's kernels run asynchronously: the host only enqueues them, and a call whose
Python, dispatch and launch overhead takes longer than its kernels leaves the GPU idle --
for the small layers of a network (ResNet-50's last stages, any inference at batch 1) that
overhead *is* the op's speed. This measures it directly: the median wall time of one call
with tensors so small that the kernels cost next to nothing (on a GPU the device is
synchronized only every 20 calls, so the queue never fills; on the CPU the tiny kernels
themselves are included, for pydl and torch alike).

    python bench/host_overhead.py [--device cpu|cuda] [--backend cpu|cuda|triton]
                                  [--repeats 300] [--json FILE]

Prints a markdown table: per op, torch's and pydl's host microseconds per call and their
ratio, forward alone ("fwd": inputs that need no gradient, and inputs that do: "fwd+graph",
which records the autograd graph) and forward + backward ("fwd+bwd"); and one optimizer
step ("step") of Adam and SGD with momentum over 161 tiny tensors (ResNet-50's parameter
count) against torch.optim with fused=True.

For the "fwd" and "step" rows a third column, "op entry us", splits pydl's time: the same
backend ops the call made (recorded once with a dispatch mode), called straight at their
entry points below autograd -- the C++ op through the dispatcher (checks, allocation,
kernel launches), a Triton op's Python function (its launches through Triton's launcher).
pydl us minus op entry us is the Python around them: argument checks, backend choice,
autograd, running statistics.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch
import torch.nn.functional as TF
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pydl  # noqa: E402
from bench.harness import host_time_us  # noqa: E402
from pydl.ops._util import EAGER  # noqa: E402

F = pydl.functional
_PYDL_NAMESPACES = ("pydl", "pydl_triton")


class _RecordOps(TorchDispatchMode):
    """Records the pydl ops a call makes (the outermost ones), with their arguments."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace in _PYDL_NAMESPACES:
            self.calls.append((func, args, kwargs or {}))
        return func(*args, **(kwargs or {}))


def op_entry_calls(fn):
    """A callable that repeats the pydl ops one call of `fn` made, each by its entry point
    (EAGER, else torch.ops) below the autograd key, with the same arguments; None when the
    call made none."""
    with _RecordOps() as rec:
        fn()
    calls = [(EAGER.get(f._schema.name, f), a, k) for f, a, k in rec.calls]
    if not calls:
        return None

    def run():
        with torch._C._AutoDispatchBelowAutograd():
            for f, a, k in calls:
                f(*a, **k)
    return run


def cases(device: str, backend: str):
    """(name, torch fn, pydl fn) triples on channels_last tensors of a few elements."""
    cl = torch.channels_last

    def t(*shape, grad=False):
        x = torch.randn(*shape, device=device)
        if len(shape) == 4:
            x = x.contiguous(memory_format=cl)
        return x.requires_grad_(grad)

    x, xg = t(2, 8, 4, 4), t(2, 8, 4, 4, grad=True)
    w, wg = t(8, 8, 3, 3), t(8, 8, 3, 3, grad=True)
    g, b = t(8, grad=True), t(8, grad=True)
    rm_t, rv_t = torch.zeros(8, device=device), torch.ones(8, device=device)
    rm_p, rv_p = torch.zeros(8, device=device), torch.ones(8, device=device)
    B = {"backend": backend}

    def bwd(fn):
        def run():
            fn().sum().backward()
        return run

    ops = [
        ("conv2d 3x3", lambda a, ww: TF.conv2d(a, ww, padding=1), lambda a, ww: F.conv2d(a, ww, padding=1, **B)),
        ("batch_norm train", lambda a, ww: TF.batch_norm(a, rm_t, rv_t, g, b, True),
         lambda a, ww: F.batch_norm(a, rm_p, rv_p, g, b, True, **B)),
        ("max_pool2d 3x3 s2", lambda a, ww: TF.max_pool2d(a, 3, 2, 1), lambda a, ww: F.max_pool2d(a, 3, 2, 1, **B)),
        ("adaptive_avg_pool2d 1", lambda a, ww: TF.adaptive_avg_pool2d(a, 1),
         lambda a, ww: F.adaptive_avg_pool2d(a, 1, **B)),
        ("relu", lambda a, ww: TF.relu(a), lambda a, ww: F.relu(a, **B)),
    ]
    for name, tf, pf in ops:
        yield name, "fwd", (lambda tf=tf: tf(x, w)), (lambda pf=pf: pf(x, w))
        yield name, "fwd+graph", (lambda tf=tf: tf(xg, wg)), (lambda pf=pf: pf(xg, wg))
        yield name, "fwd+bwd", bwd(lambda tf=tf: tf(xg, wg)), bwd(lambda pf=pf: pf(xg, wg))
    # optimizer steps over ResNet-50's number of parameter tensors (161), each tiny: the
    # per-tensor host work of a step, against torch.optim's fused=True implementation
    for name, kw in (("Adam", {}), ("SGD", {"momentum": 0.9})):
        tp = [torch.randn(8, device=device, requires_grad=True) for _ in range(161)]
        pp = [t.detach().clone().requires_grad_() for t in tp]
        for a, b in zip(tp, pp):
            a.grad = torch.randn(8, device=device)
            b.grad = a.grad.clone()
        topt = getattr(torch.optim, name)(tp, lr=1e-3, fused=True, **kw)
        popt = getattr(pydl.optim, name)(pp, lr=1e-3, **kw, **B)
        yield f"{name} step (161 tensors)", "step", topt.step, popt.step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backend", default=None, help="pydl backend (default: auto)")
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    a = ap.parse_args(argv)
    if a.device == "cpu":
        torch.set_num_threads(1)  # tiny tensors: no thread pool wake-ups in either
    if a.device == "cuda" and pydl._dispatch._kernels is not None:
        # the Triton conv at its first block configuration: host time does not depend on
        # it, and autotuning (compiling and timing every configuration of three kernels)
        # would spend most of a capped run before the first row (the interpreter has one)
        from pydl.kernels import conv as triton_conv
        triton_conv.pin_config(0)
    env = {"device": torch.cuda.get_device_name() if a.device == "cuda" else platform.processor() or "cpu",
           "python": platform.python_version(), "torch": torch.__version__, "backend": a.backend or "auto",
           "commit": os.environ.get("PYDL_COMMIT", "")}
    print(f"Host time per call, median of {a.repeats} ({env['device']}, torch {env['torch']}, "
          f"Python {env['python']}, pydl backend {env['backend']}):\n")
    print("| op | mode | torch us | pydl us | pydl / torch | op entry us |\n|---|---|---|---|---|---|",
          flush=True)
    # Each row is printed, and the JSON rewritten, as soon as it is measured: on the GPU
    # machine this runs under a time cap (gpu_validate.sh), and a Triton backend's first
    # calls compile and autotune its kernels -- a run cut short keeps the rows it finished.
    rows = []
    for name, mode, tfn, pfn in cases(a.device, a.backend):
        row = {"op": name, "mode": mode, "torch_us": host_time_us(tfn, a.repeats, warmup=20),
               "pydl_us": host_time_us(pfn, a.repeats, warmup=20), "op_entry_us": None}
        entry = op_entry_calls(pfn) if mode in ("fwd", "step") else None
        if entry is not None:
            row["op_entry_us"] = host_time_us(entry, a.repeats, warmup=20)
        rows.append(row)
        shown = "-" if row["op_entry_us"] is None else f"{row['op_entry_us']:.1f}"
        print(f"| {name} | {mode} | {row['torch_us']:.1f} | {row['pydl_us']:.1f} | "
              f"{row['pydl_us'] / row['torch_us']:.1f} | {shown} |", flush=True)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"env": env, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
