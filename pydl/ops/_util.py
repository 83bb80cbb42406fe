"""Helpers shared by the op modules: argument checks and the layout rule of the kernels."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tensor(t, name: str, op: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"pydl.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"pydl.{op}: {name} must be float32, float16, bfloat16 or float64, "
                        f"got {t.dtype}")


def is_non_overlapping_and_dense(t: torch.Tensor) -> bool:
    """Whether t's elements fill a gap-free block of storage (in some dimension order):
    torch's Tensor::is_non_overlapping_and_dense, which the C++ side uses."""
    if t.is_contiguous():
        return True
    expected = 1
    for d in sorted(range(t.dim()), key=t.stride):
        if t.size(d) < 2:  # a size-0/1 dimension places no constraint
            continue
        if t.stride(d) != expected:
            return False
        expected *= t.size(d)
    return True


def dense(t: torch.Tensor) -> torch.Tensor:
    """The kernels walk storage linearly: a non-overlapping dense tensor (contiguous,
    channels_last, any permutation) as is, anything else made contiguous first. Mirrors
    pydl::dense in csrc/common.h."""
    return t if is_non_overlapping_and_dense(t) else t.contiguous()


def like_layout(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`t` with the strides of dense `ref` (copied only if needed). Mirrors pydl::like_layout."""
    if t.stride() == ref.stride() and is_non_overlapping_and_dense(t):
        return t
    out = torch.empty_like(ref)
    out.copy_(t)
    return out


def empty_dense_like(t: torch.Tensor) -> torch.Tensor:
    """What the kernels allocate for an output shaped like `t`: the fake kernels use it so
    that torch.compile sees the strides the real kernels produce."""
    return torch.empty_like(t) if is_non_overlapping_and_dense(t) else \
        torch.empty_like(t, memory_format=torch.contiguous_format)
