"""python -m pydl.demo -- train LeNet-5 on scikit-learn's handwritten digits twice from the
same seed, once with torch.nn + torch.optim and once as the pydl-converted twin with a
pydl optimizer, and show the two runs side by side.

The digits (1797 images of 8x8 pixels, shipped inside scikit-learn: nothing is
downloaded) are scaled to 32x32 for LeNet-5. Both runs see the same initial weights and
the same batches; they differ only in which kernels compute. Prints per-epoch loss and
accuracy, the largest difference between the runs and the time per epoch, and writes a
PNG of the learning curves. Exit status 0 when the runs agree (final test accuracy within
1 point, losses within 2e-2). They are not bit-identical: float32 sums in a different order
differ in the last bits, and training amplifies that a little every step.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import pydl
import pydl.models


def digits(device):
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, scale_factor=4, mode="nearest")  # 8x8 -> 32x32
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm].to(device), y[perm].to(device)
    n = int(0.8 * len(x))
    return (x[:n], y[:n]), (x[n:], y[n:])


def bar(i, n, text, width=24):
    if not sys.stderr.isatty():  # a log file gets the per-epoch table only
        return
    done = int(width * i / max(n, 1))
    sys.stderr.write(f"\r  {text} [{'#' * done}{'.' * (width - done)}] {i}/{n}")
    sys.stderr.flush()


def run(name, model, opt, train, test, epochs, batch):
    (xt, yt), (xv, yv) = train, test
    hist = []
    order = torch.Generator().manual_seed(1)
    for e in range(epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(xt), generator=order).to(xt.device)
        total, nb = 0.0, (len(xt) + batch - 1) // batch
        for b in range(nb):
            idx = perm[b * batch:(b + 1) * batch]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            bar(b + 1, nb, f"{name:<6} epoch {e + 1}")
        if xt.is_cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            acc = (model(xv).argmax(1) == yv).float().mean().item()
        hist.append((total / len(xt), acc, dt))
    if sys.stderr.isatty():
        sys.stderr.write("\r" + " " * 60 + "\r")
    return hist


def plot(h_torch, h_pydl, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot)")
        return
    ep = range(1, len(h_torch) + 1)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for h, lab, st in ((h_torch, "torch.nn + torch.optim", "-"), (h_pydl, "pydl (converted) + pydl.optim", "--")):
        ax[0].plot(ep, [r[0] for r in h], st, marker="o", label=lab)
        ax[1].plot(ep, [100 * r[1] for r in h], st, marker="o", label=lab)
    for a in ax:
        a.set_xticks(list(ep))
    ax[0].set(xlabel="epoch", ylabel="training loss", yscale="log")
    ax[1].set(xlabel="epoch", ylabel="test accuracy (%)")
    ax[0].legend()
    fig.suptitle("LeNet-5 on scikit-learn digits: torch vs pydl")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"learning curves: {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pydl.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--backend", default=None, help="pydl backend (default: auto)")
    ap.add_argument("--plot", default="pydl_demo.png", help="PNG of the learning curves ('' for none)")
    args = ap.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    train, test = digits(device)
    torch.manual_seed(0)
    ref = pydl.models.lenet5(layers=nn).to(device)
    ours, rep = pydl.convert(copy.deepcopy(ref), backend=args.backend, report=True)
    print(f"LeNet-5 on digits ({len(train[0])} train / {len(test[0])} test, 32x32), device {device}")
    print(rep)
    h_t = run("torch", ref, torch.optim.Adam(ref.parameters(), lr=args.lr), train, test, args.epochs, args.batch)
    h_p = run("pydl", ours, pydl.optim.Adam(ours.parameters(), lr=args.lr), train, test, args.epochs,
              args.batch)

    print(f"\n{'epoch':>5} | {'torch loss':>10} {'acc':>6} {'s':>6} | {'pydl loss':>10} {'acc':>6} {'s':>6}")
    for e, (a, b) in enumerate(zip(h_t, h_p)):
        print(f"{e + 1:>5} | {a[0]:>10.5f} {100 * a[1]:>5.1f}% {a[2]:>6.2f} | {b[0]:>10.5f} {100 * b[1]:>5.1f}% {b[2]:>6.2f}")
    dloss = max(abs(a[0] - b[0]) for a, b in zip(h_t, h_p))
    dacc = abs(h_t[-1][1] - h_p[-1][1]) * 100
    print(f"max |loss difference| {dloss:.2e}; final accuracy torch {100 * h_t[-1][1]:.1f}% vs "
          f"pydl {100 * h_p[-1][1]:.1f}% ({dacc:.1f} points)")
    print(f"time per epoch: torch {sum(r[2] for r in h_t) / len(h_t):.2f} s, "
          f"pydl {sum(r[2] for r in h_p) / len(h_p):.2f} s")
    if args.plot:
        plot(h_t, h_p, args.plot)
    ok = dloss < 2e-2 and dacc <= 1.0
    print("the two runs agree" if ok else "MISMATCH: the runs differ more than allowed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
