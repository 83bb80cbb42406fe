"""python -m pydl.demo -- pydl side by side with torch.

For now (the op families land one by one) the demo trains a small multilayer network on
a synthetic two-spirals classification task twice from the same seed: once with torch.nn
activations, once with the same network whose activations are pydl's, on every pydl
backend usable here. It prints the loss of each run per epoch, the largest difference
between the pydl and torch runs, and the time per epoch.
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import torch
from torch import nn

import pydl


def spirals(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * 3 * math.pi
    cls = torch.randint(0, 2, (n,), generator=g)
    r = t / (3 * math.pi)
    ang = t + cls * math.pi
    x = torch.stack([r * torch.cos(ang), r * torch.sin(ang)], 1) + 0.02 * torch.randn(n, 2, generator=g)
    return x, cls


def make_model(act: dict[str, type]) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 64), act["relu"](), nn.Linear(64, 64), act["leaky"](0.1),
                         nn.Linear(64, 64), act["elu"](), nn.Linear(64, 32), act["tanh"](),
                         nn.Linear(32, 2))


TORCH_ACTS = {"relu": nn.ReLU, "leaky": nn.LeakyReLU, "elu": nn.ELU, "tanh": nn.Tanh}
PYDL_ACTS = {"relu": pydl.nn.ReLU, "leaky": pydl.nn.LeakyReLU, "elu": pydl.nn.ELU, "tanh": pydl.nn.Tanh}


def train(model, x, y, epochs, batch, backend=None):
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses, times = [], []
    for _ in range(epochs):
        t0 = time.perf_counter()
        total = 0.0
        for i in range(0, len(x), batch):
            with pydl.backend(backend or "auto"):
                loss = nn.functional.cross_entropy(model(x[i:i + batch]), y[i:i + batch])
                opt.zero_grad()
                loss.backward()
            opt.step()
            total += loss.item() * len(x[i:i + batch])
        times.append(time.perf_counter() - t0)
        losses.append(total / len(x))
    with torch.no_grad(), pydl.backend(backend or "auto"):
        acc = (model(x).argmax(1) == y).float().mean().item()
    return losses, acc, sum(times) / len(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pydl.demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, y = spirals(args.n)
    x, y = x.to(device), y.to(device)
    runs = {"torch": train(make_model(TORCH_ACTS).to(device), x, y, args.epochs, args.batch)}
    for name, st in pydl.backends().items():
        if name != "torch" and device in st.devices:
            runs[f"pydl-{name}"] = train(make_model(PYDL_ACTS).to(device), x, y, args.epochs,
                                         args.batch, backend=name)

    names = list(runs)
    print(f"two-spirals, {args.n} points, {args.epochs} epochs, device {device}")
    print("epoch  " + "  ".join(f"{n:>12}" for n in names))
    for e in range(args.epochs):
        print(f"{e + 1:>5}  " + "  ".join(f"{runs[n][0][e]:>12.6f}" for n in names))
    print("acc    " + "  ".join(f"{runs[n][1]:>12.3f}" for n in names))
    print("s/epoch" + "  ".join(f"{runs[n][2]:>12.4f}" for n in names))
    worst = 0.0
    for n in names[1:]:
        diff = max(abs(a - b) for a, b in zip(runs[n][0], runs["torch"][0]))
        worst = max(worst, diff)
        print(f"{n}: max |loss - torch loss| over epochs = {diff:.2e}, "
              f"accuracy {runs[n][1]:.3f} vs torch {runs['torch'][1]:.3f}")
    ok = worst < 1e-3 and all(abs(runs[n][1] - runs["torch"][1]) <= 0.01 for n in names[1:])
    print("pydl and torch agree" if ok else "MISMATCH between pydl and torch")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
