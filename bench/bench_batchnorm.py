"""Bench cases for batch normalization in training mode on the ResNet-50 BN layers
(C = 64..2048), plain and fused with the activation (BN + ReLU, BN + add + ReLU: the tail
of a ResNet block), against torch's batch_norm and the unfused torch sequences.
Bytes: forward reads x (and the residual) and writes y; backward reads grad_out and x
and writes grad_in (per-channel vectors are negligible and not counted)."""
from __future__ import annotations

import torch
import torch.nn.functional as TF

import pydl.functional as F

from .cases import Case
from .shapes import activation_maps

OPS = {"batch_norm", "bn_relu", "bn_add_relu"}


def _fns(op, c, device):
    """(pydl fn(backend), torch fn): training-mode BN updating its own running statistics.
    Statistics are float32 (float64 for float64 input: the bench's float64 oracle)."""
    stats = {}

    def rs(x, who):
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        if (who, dt) not in stats:
            stats[(who, dt)] = (torch.zeros(c, device=x.device, dtype=dt), torch.ones(c, device=x.device, dtype=dt))
        return stats[(who, dt)]

    def tbn(x, w, b):
        rm, rv = rs(x, "torch")
        return TF.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5)

    def pbn(b_, x, w, b, r=None, act=None):
        rm, rv = rs(x, "pydl")
        if act is None:
            return F.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5, backend=b_)
        return F.batch_norm_act(x, rm, rv, w, b, True, 0.1, 1e-5, residual=r, act=act, backend=b_)

    if op == "batch_norm":
        return (lambda b_: (lambda x, w, b: pbn(b_, x, w, b)), tbn)
    if op == "bn_relu":
        return (lambda b_: (lambda x, w, b: pbn(b_, x, w, b, act="relu")),
                lambda x, w, b: TF.relu(tbn(x, w, b)))
    return (lambda b_: (lambda x, w, b, r: pbn(b_, x, w, b, r, act="relu")),
            lambda x, w, b, r: TF.relu(tbn(x, w, b) + r))


def available() -> bool:
    """Whether this pydl build has the op family (the bench skips it otherwise)."""
    return hasattr(F, "batch_norm") and hasattr(F, "batch_norm_act")


def cases(shapes, dtypes, layouts, modes, ops=None):
    out = []
    maps = activation_maps(shapes)
    for op in sorted(OPS):
        if ops and op not in ops:
            continue
        layers = maps if op == "batch_norm" else [m for m in maps if m[0].endswith(("out", "t2"))]
        for layer, shape in layers:
            n = shape[0] * shape[1] * shape[2] * shape[3]
            for dtype in dtypes:
                e = dtype.itemsize
                res = n * e if op == "bn_add_relu" else 0
                moved = {"fwd": 2 * n * e + res, "bwd": 3 * n * e + res, "fwdbwd": 5 * n * e + 2 * res}
                for layout in layouts:
                    for mode in modes:
                        def make(device, shape=shape, dtype=dtype, layout=layout, mode=mode, op=op):
                            mf = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                            x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=mf)
                            c = shape[1]
                            w = torch.rand(c, device=device) + 0.5
                            b = torch.randn(c, device=device)
                            ins = [x, w, b]
                            if op == "bn_add_relu":
                                ins.append(torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=mf))
                            return [t.requires_grad_(mode != "fwd") for t in ins]
                        pyd, tor = _fns(op, shape[1], None)
                        out.append(Case(op, "batchnorm", layer, shape, dtype, layout, mode, make, pyd, tor,
                                        bytes=moved[mode]))
    return out
