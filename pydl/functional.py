"""pydl.functional: the ops as functions, with torch.nn.functional's signatures.

Each function also takes a keyword-only ``backend=`` ("auto", "cpu", "cuda", "triton",
"torch"); left as None it follows ``with pydl.backend(...)`` / PYDL_BACKEND / auto.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import ops

__all__ = ["relu", "relu_", "leaky_relu", "leaky_relu_", "elu", "elu_", "sigmoid", "tanh"]
__all__ += ["conv2d"]


# ------------------------------------------------------------------------ activations
def relu(input: torch.Tensor, inplace: bool = False, *, backend: Optional[str] = None) -> torch.Tensor:
    return ops.activation(input, "relu", 0.0, inplace, backend)


def relu_(input: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    return ops.activation(input, "relu", 0.0, True, backend)


def leaky_relu(input: torch.Tensor, negative_slope: float = 0.01, inplace: bool = False, *,
               backend: Optional[str] = None) -> torch.Tensor:
    return ops.activation(input, "leaky_relu", negative_slope, inplace, backend)


def leaky_relu_(input: torch.Tensor, negative_slope: float = 0.01, *,
                backend: Optional[str] = None) -> torch.Tensor:
    return ops.activation(input, "leaky_relu", negative_slope, True, backend)


def elu(input: torch.Tensor, alpha: float = 1.0, inplace: bool = False, *,
        backend: Optional[str] = None) -> torch.Tensor:
    return ops.activation(input, "elu", alpha, inplace, backend)


def elu_(input: torch.Tensor, alpha: float = 1.0, *, backend: Optional[str] = None) -> torch.Tensor:
    return ops.activation(input, "elu", alpha, True, backend)


def sigmoid(input: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    return ops.activation(input, "sigmoid", 0.0, False, backend)


def tanh(input: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    return ops.activation(input, "tanh", 0.0, False, backend)


# ---------------------------------------------------------------------------- convolution
def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           stride=1, padding=0, dilation=1, groups: int = 1, *, activation: Optional[str] = None,
           backend: Optional[str] = None) -> torch.Tensor:
    """F.conv2d. activation="relu" fuses bias + ReLU into the kernel's epilogue."""
    return ops.conv2d(input, weight, bias, stride, padding, dilation, groups, activation, backend)
