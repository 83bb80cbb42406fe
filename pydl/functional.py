"""pydl.functional: the ops as functions, with torch.nn.functional's signatures.

Each function also takes a keyword-only ``backend=`` ("auto", "cpu", "cuda", "triton",
"torch"); left as None it follows ``with pydl.backend(...)`` / PYDL_BACKEND / auto.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import ops

__all__ = ["relu", "relu_", "leaky_relu", "leaky_relu_", "elu", "elu_", "sigmoid", "tanh",
           "batch_norm", "batch_norm_act",
           "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d", "conv2d"]


# ------------------------------------------------------------------------ activations
def relu(input: torch.Tensor, inplace: bool = False, *, backend: Optional[str] = None) -> torch.Tensor:
    return ops.act(input, "relu", 0.0, inplace, backend)


def relu_(input: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    return ops.act(input, "relu", 0.0, True, backend)


def leaky_relu(input: torch.Tensor, negative_slope: float = 0.01, inplace: bool = False, *,
               backend: Optional[str] = None) -> torch.Tensor:
    return ops.act(input, "leaky_relu", negative_slope, inplace, backend)


def leaky_relu_(input: torch.Tensor, negative_slope: float = 0.01, *,
                backend: Optional[str] = None) -> torch.Tensor:
    return ops.act(input, "leaky_relu", negative_slope, True, backend)


def elu(input: torch.Tensor, alpha: float = 1.0, inplace: bool = False, *,
        backend: Optional[str] = None) -> torch.Tensor:
    return ops.act(input, "elu", alpha, inplace, backend)


def elu_(input: torch.Tensor, alpha: float = 1.0, *, backend: Optional[str] = None) -> torch.Tensor:
    return ops.act(input, "elu", alpha, True, backend)


def sigmoid(input: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    return ops.act(input, "sigmoid", 0.0, False, backend)


def tanh(input: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    return ops.act(input, "tanh", 0.0, False, backend)


# ----------------------------------------------------------------------- batch norm
__all__ += ["batch_norm", "batch_norm_act"]


def batch_norm(input: torch.Tensor, running_mean: Optional[torch.Tensor],
               running_var: Optional[torch.Tensor], weight: Optional[torch.Tensor] = None,
               bias: Optional[torch.Tensor] = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, *,
               backend: Optional[str] = None) -> torch.Tensor:
    return ops.batch_norm(input, running_mean, running_var, weight, bias, training, momentum,
                          eps, backend=backend)


def batch_norm_act(input: torch.Tensor, running_mean: Optional[torch.Tensor],
                   running_var: Optional[torch.Tensor], weight: Optional[torch.Tensor] = None,
                   bias: Optional[torch.Tensor] = None, training: bool = False,
                   momentum: float = 0.1, eps: float = 1e-5,
                   residual: Optional[torch.Tensor] = None, act: Optional[str] = "relu",
                   negative_slope: float = 0.01, *,
                   backend: Optional[str] = None) -> torch.Tensor:
    """act(batch_norm(input, ...) [+ residual]) as one fused op; act is "relu",
    "leaky_relu" (with negative_slope >= 0) or "none" / None."""
    act = "none" if act is None else act
    return ops.batch_norm(input, running_mean, running_var, weight, bias, training, momentum,
                          eps, residual=residual, act=act,
                          alpha=negative_slope if act == "leaky_relu" else 0.0,
                          backend=backend)


# ---------------------------------------------------------------------------- pooling
def max_pool2d(input: torch.Tensor, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False, return_indices: bool = False, *,
               backend: Optional[str] = None):
    """torch.nn.functional.max_pool2d; returns (output, indices) with return_indices=True."""
    return ops.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode,
                          return_indices, backend)


def avg_pool2d(input: torch.Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: Optional[int] = None, *,
               backend: Optional[str] = None) -> torch.Tensor:
    return ops.avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad,
                          divisor_override, backend)


def adaptive_avg_pool2d(input: torch.Tensor, output_size, *,
                        backend: Optional[str] = None) -> torch.Tensor:
    return ops.adaptive_avg_pool2d(input, output_size, backend)


def adaptive_max_pool2d(input: torch.Tensor, output_size, return_indices: bool = False, *,
                        backend: Optional[str] = None):
    """torch.nn.functional.adaptive_max_pool2d; (output, indices) with return_indices=True."""
    return ops.adaptive_max_pool2d(input, output_size, return_indices, backend)


# ---------------------------------------------------------------------------- convolution
def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           stride=1, padding=0, dilation=1, groups: int = 1, *, activation: Optional[str] = None,
           backend: Optional[str] = None) -> torch.Tensor:
    """F.conv2d. activation="relu" fuses bias + ReLU into the kernel's epilogue."""
    return ops.conv2d(input, weight, bias, stride, padding, dilation, groups, activation, backend)


# torch.fx.symbolic_trace records each function above as one call_function node (as it
# records torch.nn.functional's), instead of tracing into its argument checks
for _name in __all__:
    torch.fx.wrap(_name)
