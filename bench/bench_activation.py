"""Bench cases for the activations: ReLU / LeakyReLU / ELU / Sigmoid / Tanh on the
activation maps of ResNet-50 and VGG-16. Memory-bound: a forward reads x and writes y
(2 tensors moved), a backward reads grad_out and the saved tensor and writes grad_in (3)."""
from __future__ import annotations

import torch
import torch.nn.functional as TF

import pydl.functional as F

from .cases import Case
from .shapes import activation_maps

OPS = {
    "relu": (lambda b: (lambda x: F.relu(x, backend=b)), TF.relu),
    "leaky_relu": (lambda b: (lambda x: F.leaky_relu(x, 0.1, backend=b)), lambda x: TF.leaky_relu(x, 0.1)),
    "elu": (lambda b: (lambda x: F.elu(x, backend=b)), TF.elu),
    "sigmoid": (lambda b: (lambda x: F.sigmoid(x, backend=b)), torch.sigmoid),
    "tanh": (lambda b: (lambda x: F.tanh(x, backend=b)), torch.tanh),
}
TENSORS_MOVED = {"fwd": 2, "bwd": 3, "fwdbwd": 5}


def available() -> bool:
    """Whether this pydl build has the op family (the bench skips it otherwise)."""
    return True


def cases(shapes, dtypes, layouts, modes, ops=None):
    out = []
    for op, (pydl_fn, torch_fn) in OPS.items():
        if ops and op not in ops:
            continue
        # relu is the one the networks use: every layer; the others on a few layers
        layers = activation_maps(shapes)
        if op != "relu":
            layers = layers[:1] + layers[-1:]
        for layer, shape in layers:
            for dtype in dtypes:
                for layout in layouts:
                    for mode in modes:
                        def make(device, shape=shape, dtype=dtype, layout=layout, mode=mode):
                            x = torch.randn(shape, device=device, dtype=dtype)
                            if layout == "channels_last":
                                x = x.contiguous(memory_format=torch.channels_last)
                            return [x.requires_grad_(mode != "fwd")]
                        n = 1
                        for s in shape:
                            n *= s
                        out.append(Case(op, "activation", layer, shape, dtype, layout, mode, make, pydl_fn,
                                        torch_fn, bytes=TENSORS_MOVED[mode] * n * dtype.itemsize))
    return out
