"""Bench cases for pooling: the ResNet-50 stem max pool (3x3, stride 2, padding 1 on
112x112), VGG-16's 2x2 max pools, and the global average pool at the end of ResNet-50.
Memory-bound: forward reads x and writes y; the max-pool backward reads grad_out and the
int64 indices and writes grad_in; the avg-pool backward reads grad_out, writes grad_in."""
from __future__ import annotations

import torch
import torch.nn.functional as TF

import pydl.functional as F

from .cases import Case
from .shapes import RESNET50_BATCH, TINY_BATCH, VGG16_ACT, VGG16_BATCH

OPS = {"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"}


def _layers(shapes):
    """(op, layer, input shape, pydl fn(backend), torch fn, output shape)"""
    if shapes == "resnet50":
        stem = [("max_pool2d", "resnet50.stem_pool", (RESNET50_BATCH, 64, 112, 112), (3, 2, 1))]
        gap = [("adaptive_avg_pool2d", "resnet50.global_pool", (RESNET50_BATCH, 2048, 7, 7), 1)]
        return stem + gap
    if shapes == "vgg16":
        return [("max_pool2d", f"vgg16.{n}_pool", (VGG16_BATCH, c, h, w), (2, 2, 0)) for n, c, h, w in VGG16_ACT]
    if shapes == "tiny":
        return [("max_pool2d", "tiny.pool3s2", (TINY_BATCH, 5, 13, 11), (3, 2, 1)),
                ("avg_pool2d", "tiny.avg2", (TINY_BATCH, 6, 9, 8), (2, 2, 0)),
                ("adaptive_avg_pool2d", "tiny.gap", (TINY_BATCH, 7, 5, 5), 1)]
    raise ValueError(shapes)


def _fns(op, cfg):
    if op == "adaptive_avg_pool2d":
        return (lambda b: (lambda x: F.adaptive_avg_pool2d(x, cfg, backend=b)),
                lambda x: TF.adaptive_avg_pool2d(x, cfg))
    k, s, p = cfg
    pyd, tor = getattr(F, op), getattr(TF, op)
    return (lambda b: (lambda x: pyd(x, k, s, p, backend=b)), lambda x: tor(x, k, s, p))


def _out_elems(op, shape, cfg):
    n, c, h, w = shape
    if op == "adaptive_avg_pool2d":
        return n * c * cfg * cfg
    k, s, p = cfg
    return n * c * ((h + 2 * p - k) // s + 1) * ((w + 2 * p - k) // s + 1)


def available() -> bool:
    """Whether this pydl build has the op family (the bench skips it otherwise)."""
    return all(hasattr(F, n) for n in OPS)


def cases(shapes, dtypes, layouts, modes, ops=None):
    out = []
    for op, layer, shape, cfg in _layers(shapes):
        if ops and op not in ops:
            continue
        pydl_fn, torch_fn = _fns(op, cfg)
        n_in = 1
        for s in shape:
            n_in *= s
        n_out = _out_elems(op, shape, cfg)
        for dtype in dtypes:
            e = dtype.itemsize
            idx = 8 if op == "max_pool2d" else 0  # int64 indices written (training) and read (bwd)
            moved = {"fwd": (n_in + n_out) * e, "bwd": n_out * (e + idx) + n_in * e,
                     "fwdbwd": (n_in + n_out) * e + n_out * idx + n_out * (e + idx) + n_in * e}
            for layout in layouts:
                for mode in modes:
                    def make(device, shape=shape, dtype=dtype, layout=layout, mode=mode):
                        x = torch.randn(shape, device=device, dtype=dtype)
                        if layout == "channels_last":
                            x = x.contiguous(memory_format=torch.channels_last)
                        return [x.requires_grad_(mode != "fwd")]
                    out.append(Case(op, "pool", layer, shape, dtype, layout, mode, make, pydl_fn, torch_fn,
                                    bytes=moved[mode]))
    return out
