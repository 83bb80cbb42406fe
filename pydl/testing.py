"""Reference implementations, tolerances and input generators shared by tests/ and bench/.

The oracle for every op is the torch op run on float64 CPU copies of the inputs. A
pydl result in dtype D passes when its error against the oracle is at most twice the
error of torch's own op in dtype D (on the same device) plus a small absolute term --
the rule flash-attention uses: we may not be more than 2x less accurate than torch.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Sequence

import torch

# Absolute slack per dtype, relative to the largest magnitude of the reference (so a
# result with values ~100 gets 100x the slack). It covers the last-bit rounding
# differences that appear where torch's own error happens to be exactly zero.
ATOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def to_ref(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """A float64 CPU copy that requires grad where `t` did (leaf for the oracle)."""
    if t is None:
        return None
    r = t.detach().to("cpu", torch.float64).clone()
    return r.requires_grad_(t.requires_grad)


def max_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Max |a - ref| over the elements where both are finite; NaN/Inf must coincide."""
    a = a.detach().to("cpu", torch.float64)
    ref = ref.detach().to("cpu", torch.float64)
    assert a.shape == ref.shape, f"shape {tuple(a.shape)} != reference {tuple(ref.shape)}"
    nan_a, nan_r = torch.isnan(a), torch.isnan(ref)
    assert torch.equal(nan_a, nan_r), f"NaN positions differ ({int(nan_a.sum())} vs {int(nan_r.sum())})"
    inf_a, inf_r = torch.isinf(a), torch.isinf(ref)
    assert torch.equal(inf_a, inf_r) and torch.equal(a[inf_a], ref[inf_r]), "Inf positions differ"
    fin = torch.isfinite(ref)
    return float((a[fin] - ref[fin]).abs().max()) if fin.any() else 0.0


def assert_close(actual: torch.Tensor, ref: torch.Tensor, torch_same_dtype: torch.Tensor,
                 what: str = "output", factor: float = 2.0) -> None:
    """actual (pydl, dtype D) vs the float64 oracle `ref`, allowing `factor` x the error of
    torch's own dtype-D result `torch_same_dtype` plus ATOL[D] * max(1, max|ref|)."""
    assert actual.dtype == torch_same_dtype.dtype, f"{what}: dtype {actual.dtype} != {torch_same_dtype.dtype}"
    err = max_err(actual, ref)
    err_torch = max_err(torch_same_dtype, ref)
    ref = ref.detach()
    fin = torch.isfinite(ref)
    scale = max(1.0, float(ref[fin].abs().max())) if fin.any() else 1.0
    bound = factor * err_torch + ATOL[actual.dtype] * scale
    assert err <= bound, (f"{what}: max error {err:.3e} vs float64 reference exceeds "
                          f"{factor} x torch's {err_torch:.3e} + {ATOL[actual.dtype]:.0e} x {scale:.3g}"
                          f" (dtype {actual.dtype})")


def make_input(shape: Sequence[int], dtype=torch.float32, device="cpu", layout: str = "contiguous",
               requires_grad: bool = False, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    """Random normal input, never all zeros. layout:
    contiguous | channels_last (4-D) | noncontig (a strided slice: every other element of
    a wider buffer along the last dim) | transposed (a dense permutation)."""
    g = torch.Generator().manual_seed(seed)
    shape = tuple(shape)
    if layout == "noncontig":
        # slice *after* moving to the target dtype/device: .to() of a strided view would
        # hand back a contiguous copy
        wide = shape[:-1] + (2 * shape[-1],) if shape else (2,)
        base = (torch.randn(wide, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
        t = base[..., ::2] if shape else base[0]
    else:
        t = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
    if layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        t = t.transpose(0, -1).contiguous().transpose(0, -1)
    elif layout not in ("contiguous", "noncontig"):
        raise ValueError(f"unknown layout {layout!r}")
    return t.detach().requires_grad_(requires_grad)


@contextlib.contextmanager
def poisoned_memory() -> Iterator[None]:
    """Fill every newly allocated tensor with NaN (torch's deterministic-mode filling of
    uninitialized memory), so an output element a kernel forgets to write shows as NaN."""
    import torch.utils.deterministic as det
    old_mode = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_fill = det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    try:
        yield
    finally:
        det.fill_uninitialized_memory = old_fill
        torch.use_deterministic_algorithms(old_mode, warn_only=old_warn)


def grads(outputs: torch.Tensor, inputs: Sequence[torch.Tensor], grad_out: torch.Tensor):
    """d(outputs . grad_out)/d(inputs), None where an input gets no gradient."""
    return torch.autograd.grad(outputs, list(inputs), grad_out, allow_unused=True)


def check_against_torch(fn: Callable, torch_fn: Callable, inputs: Sequence[torch.Tensor],
                        backward: bool = True, seed: int = 1, what: str = "") -> torch.Tensor:
    """Run fn (pydl) and torch_fn (torch, same dtype and device) on `inputs`, and torch_fn
    on float64 CPU copies (the oracle); assert fn's output, and with backward=True the
    gradients of every input that requires grad, pass :func:`assert_close`. Returns
    fn's output."""
    ref_in = [to_ref(t) for t in inputs]
    same_in = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    with poisoned_memory():
        out = fn(*inputs)
    out_torch = torch_fn(*same_in)
    out_ref = torch_fn(*ref_in)
    assert out.shape == out_torch.shape, f"{what}: shape {tuple(out.shape)} != torch {tuple(out_torch.shape)}"
    # the significant strides (of the dimensions longer than 1; a size-1 dimension's stride
    # places nothing), as torch's own op tests compare layouts
    assert out.numel() <= 1 or all(a == b for a, b, n in zip(out.stride(), out_torch.stride(), out.shape)
                                   if n > 1), \
        f"{what}: strides {out.stride()} != torch's {out_torch.stride()} (memory format differs)"
    assert_close(out, out_ref, out_torch, f"{what} forward")
    if backward and any(t.requires_grad for t in inputs):
        g = make_input(out.shape, out.dtype, out.device, seed=seed)
        diff = [t for t in inputs if t.requires_grad]
        with poisoned_memory():
            got = grads(out, diff, g)
        exp_same = grads(out_torch, [t for t in same_in if t.requires_grad], g)
        exp_ref = grads(out_ref, [t for t in ref_in if t.requires_grad], to_ref(g))
        for i, (a, b, c) in enumerate(zip(got, exp_same, exp_ref)):
            assert (a is None) == (c is None), f"{what}: gradient {i} presence differs from torch"
            if a is not None:
                assert_close(a, c, b, f"{what} grad[{i}]")
    return out
