"""Bench cases for a whole training step: forward, loss, backward and an Adam step of a
real network, pydl (the model converted with pydl.convert, pydl.optim.Adam) against the
same torch model with torch.optim.Adam as a user gets it (default flags: foreach on the
GPU, the per-tensor loop on the CPU) and with fused=True as a second baseline.

Each row records the time of one step and its peak memory (`peak_MB`: the most memory the
step holds at once beyond what exists before it -- parameters and optimizer state --
i.e. activations saved for backward, gradients and every temporary; see
harness.peak_memory_mb for how it is counted on each device). The step ends with
zero_grad(set_to_none=True), so it starts and ends with the same memory held.

float32 rows train in float32; bf16 rows train float32 parameters under
torch.autocast(dtype=bfloat16), the usual mixed-precision recipe.
"""
from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as TF
from torch import nn

import pydl
import pydl.models
import pydl.optim

from pydl.testing import ATOL

from .cases import Case, on_device

OPS = {"train_step"}
LR = 1e-3

# (layer name, model constructor, batch, input (C, H, W), classes)
SETS = {
    "tiny": [("lenet5", lambda: pydl.models.lenet5(num_classes=10, layers=nn), 4, (1, 32, 32), 10),
             ("resnet.tiny", lambda: pydl.models.ResNet(pydl.models.BasicBlock, [1, 1, 1, 1], num_classes=10,
                                                        layers=nn), 4, (3, 64, 64), 10)],
    "resnet50": [("resnet50", lambda: pydl.models.resnet50(layers=nn), 64, (3, 224, 224), 1000)],
    "vgg16": [("vgg16", lambda: pydl.models.vgg16(layers=nn), 32, (3, 224, 224), 1000)],
}


def available() -> bool:
    """Whether this pydl build has what a training step needs (the bench skips it otherwise)."""
    return hasattr(pydl, "convert") and hasattr(pydl.optim, "Adam")


def make_step(impl: str, device: str, *, make_model, batch: int, chw, classes: int, dtype, layout: str,
              seed: int = 0):
    """A zero-argument training step for `impl` ("pydl-<backend>", "torch" = Adam with
    torch's default flags, "torch fused", "torch float64" = the oracle: everything in
    float64, no autocast), with the model, data and optimizer built once. Same seed, same
    model, same data."""
    torch.manual_seed(seed)
    model = make_model().to(device)
    if impl == "torch float64":
        model, dtype = model.double(), torch.float64
    mf = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=mf)
    if impl.startswith("pydl-"):
        b = impl[5:]
        model = pydl.convert(model, backend=b)
        opt = pydl.optim.Adam(model.parameters(), lr=LR, backend=b)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=LR, **({"fused": True} if impl == "torch fused" else {}))
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn((batch,) + tuple(chw), generator=g)  # float32 for all: the oracle gets the same values
    x = x.to(device, torch.float64 if dtype == torch.float64 else None).contiguous(memory_format=mf)
    y = torch.randint(0, classes, (batch,), generator=g).to(device)
    amp = dtype in (torch.bfloat16, torch.float16)

    def step():
        with torch.autocast(device_type=device, dtype=dtype) if amp else contextlib.nullcontext():
            loss = TF.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return step


def cases(shapes, dtypes, layouts, modes, ops=None):
    if ops and "train_step" not in ops:
        return []
    out = []
    for layer, make_model, batch, chw, classes in SETS.get(shapes, []):
        for dtype in dtypes:
            if dtype == torch.float16:  # fp16 training needs a GradScaler: not a row of its own
                continue
            for layout in layouts:
                build = functools.partial(make_step, make_model=make_model, batch=batch, chw=chw,
                                          classes=classes, dtype=dtype, layout=layout)

                def impl_fn(impl, build=build):
                    state = {}

                    def fn(where):  # built on first call, on the bench's device (`where`: an empty
                        if "step" not in state:  # tensor there, the case's one input)
                            state["step"] = build(impl, where.device.type)
                        return state["step"]()
                    return fn

                def check(backend, device, build=build, dtype=dtype):
                    """Three steps of pydl, of torch in the same dtype and of torch in float64 from
                    the same start: each step's loss (the first checks the forward, the later ones
                    backward + Adam) is as close to the float64 loss as 2x torch's + atol."""
                    steps = [build(name, device) for name in (f"pydl-{backend}", "torch", "torch float64")]
                    for i in range(3):
                        la, lt, lr = (float(s().detach()) for s in steps)
                        if not abs(la - lr) <= 2 * abs(lt - lr) + ATOL[dtype] * max(1.0, abs(lr)):
                            return f"step {i}: loss {la:.6g}, torch {lt:.6g}, float64 {lr:.6g}"
                    return ""

                out.append(Case("train_step", "train", layer, (batch,) + tuple(chw), dtype, layout, "step",
                                on_device, lambda b, f=impl_fn: f(f"pydl-{b}"), impl_fn("torch"),
                                compile=False, check=check, baselines={"torch fused": impl_fn("torch fused")},
                                memory=True, repeats=10))
    return out
