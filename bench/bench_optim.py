"""Bench cases for the fused optimizers: one step over the parameter list of ResNet-50
(25.6M float32 parameters in 161 tensors), and of four ResNet-50s (~100M), against
torch.optim with foreach=True and fused=True. Memory-bound: bytes per parameter moved by
one step (param read+write, grad read, each state tensor read+write), e.g. Adam 28."""
from __future__ import annotations

import torch

import pydl.optim

from .cases import Case, on_device

OPS = {"sgd", "adam", "adamw", "rmsprop", "adagrad"}
# float32 state tensors per parameter (momentum / exp_avg, exp_avg_sq / square_avg / sum);
# a step moves param r+w and grad r in the param dtype, each state r+w in float32:
# Adam on float32 = 12 + 16 = 28 bytes per parameter
STATES = {"sgd": 1, "adam": 2, "adamw": 2, "rmsprop": 1, "adagrad": 1}
KW = {"sgd": dict(lr=0.01, momentum=0.9), "adam": dict(lr=1e-3), "adamw": dict(lr=1e-3, weight_decay=0.01),
      "rmsprop": dict(lr=1e-3), "adagrad": dict(lr=1e-2)}
NAMES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "adagrad": "Adagrad"}


def _shapes(scale: int, tiny: bool):
    if tiny:
        return [(7, 13), (97,), (3, 5, 7, 2), (64,)]
    import pydl.models
    from torch import nn
    shapes = [tuple(p.shape) for p in pydl.models.resnet50(layers=nn).parameters()]
    return shapes * scale


def _make(shapes, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    ps = [torch.randn(s, generator=g).to(device, dtype).requires_grad_() for s in shapes]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g).to(device, dtype)
    return ps


def available() -> bool:
    """Whether this pydl build has the op family (the bench skips it otherwise)."""
    return all(hasattr(pydl.optim, n) for n in NAMES.values())


def cases(shapes, dtypes, layouts, modes, ops=None):
    if "fwd" not in modes:  # an optimizer step has no backward: it is listed as a fwd row
        return []
    sets = {"tiny": [("tiny", 1)], "resnet50": [("resnet50.25M", 1), ("resnet50x4.100M", 4)]}.get(shapes, [])
    out = []
    for layer, scale in sets:
        shp = _shapes(scale, shapes == "tiny")
        nparam = sum(torch.Size(s).numel() for s in shp)
        for op in sorted(OPS):
            if ops and op not in ops:
                continue
            for dtype in dtypes:
                def step_with(make_opt, shp=shp, dtype=dtype):
                    def build(dev):
                        ps = _make(shp, dtype, dev)
                        opt = make_opt(ps)
                        return opt.step
                    return build

                def pydl_fn(backend, op=op, step_with=step_with):
                    # the timed callable is opt.step of an optimizer built once per backend
                    state = {}

                    def fn(where):  # (the case's one input: an empty tensor on the bench's device)
                        if "step" not in state:
                            state["step"] = step_with(lambda ps: getattr(pydl.optim, NAMES[op])(
                                ps, backend=backend, **KW[op]))(where.device)
                        return state["step"]()
                    return fn

                def torch_like(flag, op=op, step_with=step_with):
                    state = {}

                    def fn(where):
                        if "step" not in state:
                            state["step"] = step_with(lambda ps: getattr(torch.optim, NAMES[op])(
                                ps, **{flag: True}, **KW[op]))(where.device)
                        return state["step"]()
                    return fn

                def check(backend, device, op=op, shp=shp, dtype=dtype):
                    a, b = _make(shp[:8], dtype, device), _make(shp[:8], dtype, device)
                    oa = getattr(pydl.optim, NAMES[op])(a, backend=backend, **KW[op])
                    ob = getattr(torch.optim, NAMES[op])(b, foreach=False, **KW[op])
                    for _ in range(3):
                        oa.step()
                        ob.step()
                    for x, y in zip(a, b):
                        tol = 1e-5 if dtype == torch.float32 else 1e-2
                        if not torch.allclose(x.float(), y.float(), rtol=tol, atol=tol):
                            return f"params differ from torch.optim after 3 steps (max {float((x - y).abs().max()):.2e})"
                    return ""

                has_fused = op in ("sgd", "adam", "adamw", "adagrad")
                base = {"torch.optim fused": torch_like("fused")} if has_fused else {}
                out.append(Case(op, "optim", layer, (len(shp), nparam), dtype, "contiguous", "fwd",
                                on_device, pydl_fn, torch_like("foreach"),
                                bytes=nparam * (3 * dtype.itemsize + 8 * STATES[op]), compile=False,
                                check=check, baselines=base))
    return out
