"""pydl's CPU convolution (torch.ops.pydl.conv2d_*) against torch's CPU convolution, per pass,
on the layers of a small-image ResNet-18 and LeNet-5 at batch 4, plus a depthwise 3x3, and a
whole ResNet-18 training step (forward + backward) at batch 4 on 64x64 images.

    python bench/cpu_conv_speed.py [--repeats 15] [--rounds 1] [--threads T] [--json out.json]
                                   [--before before.json]

Each time is the median of --repeats calls after warm-up (the machine may be shared: medians
resist the noise); with --rounds R the whole table is measured R times over and each row
keeps its fastest round (a burst of load on a shared host inflates a row of one round). torch's passes: F.conv2d for the forward, aten.convolution_backward with
one output mask each for the input and the weight gradient -- the very calls torch's autograd
makes. --json saves the table; --before prints a saved table's pydl times beside the new ones.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as TF

import pydl  # noqa: F401  (registers torch.ops.pydl)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.harness import host_time_us  # noqa: E402

# (name, N, C, H, W, OC, (KH, KW), stride, padding, groups)
LAYERS = [
    ("r18.stem7x7s2", 4, 3, 64, 64, 64, (7, 7), 2, 3, 1),
    ("r18.l1.3x3", 4, 64, 16, 16, 64, (3, 3), 1, 1, 1),
    ("r18.l2.3x3", 4, 128, 8, 8, 128, (3, 3), 1, 1, 1),
    ("r18.l3.3x3", 4, 256, 4, 4, 256, (3, 3), 1, 1, 1),
    ("r18.l4.3x3", 4, 512, 2, 2, 512, (3, 3), 1, 1, 1),
    ("r18.down1x1s2", 4, 256, 4, 4, 512, (1, 1), 2, 0, 1),
    ("lenet.c1", 4, 1, 32, 32, 6, (5, 5), 1, 0, 1),
    ("lenet.c2", 4, 6, 14, 14, 16, (5, 5), 1, 0, 1),
    ("dw3x3", 4, 64, 28, 28, 64, (3, 3), 1, 1, 64),
]


def _median_ms(fn, repeats):
    return host_time_us(fn, repeats, warmup=3) / 1e3


def layer_rows(repeats):
    rows = []
    ops = torch.ops.pydl
    for name, n, c, h, w, oc, k, s, p, g in LAYERS:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n, c, h, w, generator=gen)
        wt = torch.randn(oc, c // g, *k, generator=gen)
        st, pd, dl = [s, s], [p, p, p, p], [1, 1]
        y = TF.conv2d(x, wt, None, s, p, 1, g)
        dy = torch.randn(y.shape, generator=gen)
        conv_bwd = torch.ops.aten.convolution_backward
        cases = {
            "fwd": (lambda: ops.conv2d_fwd(x, wt, None, st, pd, dl, g, "none", False),
                    lambda: TF.conv2d(x, wt, None, s, p, 1, g)),
            "bwd_input": (lambda: ops.conv2d_bwd_input(dy, wt, list(x.shape), st, pd, dl, g, False),
                          lambda: conv_bwd(dy, x, wt, None, [s, s], [p, p], [1, 1], False, [0, 0], g,
                                           [True, False, False])),
            "bwd_weight": (lambda: ops.conv2d_bwd_weight(dy, x, list(wt.shape), st, pd, dl, g, False),
                           lambda: conv_bwd(dy, x, wt, None, [s, s], [p, p], [1, 1], False, [0, 0], g,
                                            [False, True, False])),
        }
        for pas, (ours, theirs) in cases.items():
            rows.append({"layer": name, "pass": pas, "pydl_ms": _median_ms(ours, repeats),
                         "torch_ms": _median_ms(theirs, repeats)})
    return rows


def train_step_rows(repeats):
    """ResNet-18 (pydl layers vs torch.nn layers, same weights), batch 4, 64x64, 10 classes:
    forward, cross-entropy, backward."""
    from torch import nn

    from pydl.models import resnet18
    rows = []
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    t = torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(1))
    times = {}
    for label, layers in (("pydl", None), ("torch", nn)):
        torch.manual_seed(0)
        model = resnet18(num_classes=10, layers=layers)
        model.train()

        def step():
            model.zero_grad(set_to_none=True)
            TF.cross_entropy(model(x), t).backward()
        times[label] = _median_ms(step, max(10, repeats))  # a ~50 ms step varies by several ms
    rows.append({"layer": "resnet18 b4 64x64", "pass": "train_step", "pydl_ms": times["pydl"],
                 "torch_ms": times["torch"]})
    return rows


def run(argv, description, measure, add_args=None, what="float32") -> int:
    """The command line shared by the CPU speed tools: parse argv (--repeats, --rounds,
    --threads, --json, --before, plus add_args(parser)'s), measure(args) -> rows of
    {layer, pass, pydl_ms, torch_ms} --rounds times keeping each row's fastest, print the
    table (`what` names the dtype in the header), save it with --json."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json", help="save the table here")
    ap.add_argument("--before", help="a table saved by --json, shown as the 'before' column")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--rounds", type=int, default=1, help="measure the table this many times, keep each "
                    "row's fastest round")
    if add_args:
        add_args(ap)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for _ in range(max(1, args.rounds)):
        now = measure(args)
        rows = now if not rows else [{**r, "pydl_ms": min(r["pydl_ms"], n["pydl_ms"]),
                                      "torch_ms": min(r["torch_ms"], n["torch_ms"])} for r, n in zip(rows, now)]
    before = {}
    if args.before:
        with open(args.before) as f:
            before = {(r["layer"], r["pass"]): r["pydl_ms"] for r in json.load(f)}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {what}, medians of "
          f"{args.repeats}" + (f", fastest of {args.rounds} rounds" if args.rounds > 1 else ""))
    width = max([18] + [len(r["layer"]) for r in rows])
    head = f"{'layer':<{width}} {'pass':<11} "
    if before:
        head += f"{'before ms':>10} "
    head += f"{'pydl ms':>9} {'torch ms':>9} {'pydl/torch':>10}"
    print(head)
    for r in rows:
        line = f"{r['layer']:<{width}} {r['pass']:<11} "
        if before:
            b = before.get((r["layer"], r["pass"]))
            line += f"{b:>10.3f} " if b is not None else f"{'-':>10} "
        line += f"{r['pydl_ms']:>9.3f} {r['torch_ms']:>9.3f} {r['pydl_ms'] / r['torch_ms']:>10.2f}"
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def main(argv=None) -> int:
    def measure(args):
        return layer_rows(args.repeats) + ([] if args.no_train_step else train_step_rows(args.repeats))
    return run(argv, __doc__.split("\n")[0], measure,
               lambda ap: ap.add_argument("--no-train-step", action="store_true"))


if __name__ == "__main__":
    sys.exit(main())
