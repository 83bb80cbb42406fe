"""Bench cases for convolution on the ResNet-50 and VGG-16 layers against F.conv2d (cuDNN
with cudnn.benchmark=True). Compute-bound: scored in TFLOP/s, 2*N*OH*OW*OC*IC*KH*KW flops
per pass (the backward is two such products: input grad and weight grad)."""
from __future__ import annotations

import torch
import torch.nn.functional as TF

import pydl.functional as F

from .cases import Case
from .shapes import RESNET50_BATCH, RESNET50_CONV, VGG16_BATCH, VGG16_CONV

OPS = {"conv2d"}
TINY_CONV = [("tiny.3x3", 5, 9, 11, 7, 3, 1, 1), ("tiny.1x1s2", 6, 8, 8, 16, 1, 2, 0)]


def _layers(shapes):
    if shapes == "resnet50":
        return [(f"resnet50.{l[0]}", RESNET50_BATCH) + l[1:] for l in RESNET50_CONV]
    if shapes == "vgg16":
        return [(f"vgg16.{l[0]}", VGG16_BATCH) + l[1:] for l in VGG16_CONV]
    if shapes == "tiny":
        return [(l[0], 2) + l[1:] for l in TINY_CONV]
    raise ValueError(shapes)


def available() -> bool:
    """Whether this pydl build has the op family (the bench skips it otherwise)."""
    return hasattr(F, "conv2d")


def cases(shapes, dtypes, layouts, modes, ops=None):
    if ops and "conv2d" not in ops:
        return []
    out = []
    for layer, n, c, h, w, k, r, stride, pad in _layers(shapes):
        oh, ow = (h + 2 * pad - r) // stride + 1, (w + 2 * pad - r) // stride + 1
        flops1 = 2 * n * oh * ow * k * c * r * r
        flops = {"fwd": flops1, "bwd": 2 * flops1, "fwdbwd": 3 * flops1}
        pydl_fn = (lambda s, p: (lambda b: (lambda x, wt: F.conv2d(x, wt, None, s, p, backend=b))))(stride, pad)
        torch_fn = (lambda s, p: (lambda x, wt: TF.conv2d(x, wt, None, s, p)))(stride, pad)
        for dtype in dtypes:
            for layout in layouts:
                for mode in modes:
                    def make(device, shp=(n, c, h, w), wshape=(k, c, r, r), dtype=dtype, layout=layout, mode=mode):
                        mf = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                        x = torch.randn(shp, device=device, dtype=dtype).contiguous(memory_format=mf)
                        wt = (torch.randn(wshape, device=device, dtype=dtype) / (wshape[1] * wshape[2] ** 2) ** 0.5)
                        wt = wt.contiguous(memory_format=mf)
                        return [x.requires_grad_(mode != "fwd"), wt.requires_grad_(mode != "fwd")]
                    out.append(Case("conv2d", "conv", layer, (n, c, h, w, k, r, stride, pad), dtype, layout, mode,
                                    make, pydl_fn, torch_fn, flops=flops[mode]))
    return out
