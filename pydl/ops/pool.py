"""Pooling (max_pool2d, avg_pool2d, adaptive_avg_pool2d, adaptive_max_pool2d): argument
checks and output sizes, backend choice, fake kernels, autograd.

Ops per backend (same schemas; 4-D input, NCHW or channels_last):
  max_pool2d_fwd(x, kernel, stride, padding, dilation, out_size, with_indices) -> (y, indices)
  max_pool2d_bwd(grad, indices, input_size, kernel, stride, padding, dilation, channels_last) -> dx
  avg_pool2d_fwd(x, kernel, stride, padding, out_size, count_include_pad, divisor_override) -> y
  avg_pool2d_bwd(grad, input_size, kernel, stride, padding, count_include_pad,
                 divisor_override, channels_last) -> dx
  adaptive_avg_pool2d_fwd(x, out_size) -> y
  adaptive_avg_pool2d_bwd(grad, input_size, channels_last) -> dx
  adaptive_max_pool2d_fwd(x, out_size, with_indices) -> (y, indices)
  adaptive_max_pool2d_bwd(grad, indices, input_size, channels_last) -> dx
  pool_gather(x, indices, channels_last) -> x[n, c, indices[n, c, o]]  (max double backward)
cpu/cuda: torch.ops.pydl.* (C++, csrc/cpu/pool.cpp, csrc/cuda/pool*.{cpp,cu});
triton:   torch.ops.pydl_triton.* (defined below, kernels in kernels/pool.py).

Everything a user can get wrong is checked here, once, with torch's rules, before any
kernel runs; the output size (ceil_mode included) is computed here and handed to the
kernels, which then only do the arithmetic. Outputs come in the input's memory format
as torch's suggest_memory_format picks it (channels_last or contiguous), indices too;
gradients in the input's format. divisor_override=None travels as 0 (torch rejects 0).

The max-pool forward writes indices only when they are needed: return_indices=True or
autograd will want them; otherwise a values-only kernel runs. The backward of every op
is a gather over the outputs whose window may hold each input element, in a fixed order:
bit-identical gradients from run to run.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .. import _dispatch
from ._util import (_dual_level_active, _no_zero_grads, as_int, check_tensor, custom_op, differentiable,
                    is_channels_last)


def _is_cl(x: torch.Tensor) -> bool:
    """Whether torch's pooling would produce channels_last output for 4-D x (the same
    rule as at::Tensor::suggest_memory_format, which the C++ glue uses)."""
    return is_channels_last(x)


def _fmt(channels_last: bool):
    return torch.channels_last if channels_last else torch.contiguous_format


# ------------------------------------------------------------------ Triton custom ops
if _dispatch._kernels is not None:
    from ..kernels import pool as _tk

    def _prep(x: torch.Tensor) -> Tuple[torch.Tensor, bool]:
        cl = _is_cl(x)
        return x.contiguous(memory_format=_fmt(cl)), cl

    def _empty4(shape, like: torch.Tensor, cl: bool, dtype=None) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype or like.dtype, device=like.device,
                           memory_format=_fmt(cl))

    def _no_idx(x):
        return torch.empty((0,), dtype=torch.int64, device=x.device)

    @custom_op("pydl_triton::max_pool2d_fwd", mutates_args=())
    def _t_max_fwd(x: torch.Tensor, kernel: List[int], stride: List[int], padding: List[int],
                   dilation: List[int], out_size: List[int],
                   with_indices: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        x, cl = _prep(x)
        shape = (x.shape[0], x.shape[1], out_size[0], out_size[1])
        y = _empty4(shape, x, cl)
        ind = _empty4(shape, x, cl, torch.int64) if with_indices else _no_idx(x)
        _tk.pool_fwd(x, y, ind if with_indices else None, cl, "max", kernel, stride, padding,
                     dilation)
        return y, ind

    @custom_op("pydl_triton::max_pool2d_bwd", mutates_args=())
    def _t_max_bwd(grad: torch.Tensor, indices: torch.Tensor, input_size: List[int],
                   kernel: List[int], stride: List[int], padding: List[int],
                   dilation: List[int], channels_last: bool) -> torch.Tensor:
        g = grad.contiguous(memory_format=_fmt(channels_last))
        ind = indices.contiguous(memory_format=_fmt(channels_last))
        dx = _empty4((g.shape[0], g.shape[1], input_size[0], input_size[1]), g, channels_last)
        _tk.pool_bwd(g, ind, dx, channels_last, "max", kernel, stride, padding, dilation)
        return dx

    @custom_op("pydl_triton::avg_pool2d_fwd", mutates_args=())
    def _t_avg_fwd(x: torch.Tensor, kernel: List[int], stride: List[int], padding: List[int],
                   out_size: List[int], count_include_pad: bool,
                   divisor_override: int) -> torch.Tensor:
        x, cl = _prep(x)
        y = _empty4((x.shape[0], x.shape[1], out_size[0], out_size[1]), x, cl)
        _tk.pool_fwd(x, y, None, cl, "avg", kernel, stride, padding, [1, 1],
                     count_include_pad, divisor_override)
        return y

    @custom_op("pydl_triton::avg_pool2d_bwd", mutates_args=())
    def _t_avg_bwd(grad: torch.Tensor, input_size: List[int], kernel: List[int],
                   stride: List[int], padding: List[int], count_include_pad: bool,
                   divisor_override: int, channels_last: bool) -> torch.Tensor:
        g = grad.contiguous(memory_format=_fmt(channels_last))
        dx = _empty4((g.shape[0], g.shape[1], input_size[0], input_size[1]), g, channels_last)
        _tk.pool_bwd(g, None, dx, channels_last, "avg", kernel, stride, padding, [1, 1],
                     count_include_pad, divisor_override)
        return dx

    @custom_op("pydl_triton::adaptive_avg_pool2d_fwd", mutates_args=())
    def _t_aavg_fwd(x: torch.Tensor, out_size: List[int]) -> torch.Tensor:
        x, cl = _prep(x)
        y = _empty4((x.shape[0], x.shape[1], out_size[0], out_size[1]), x, cl)
        _tk.pool_fwd(x, y, None, cl, "adaptive_avg")
        return y

    @custom_op("pydl_triton::adaptive_avg_pool2d_bwd", mutates_args=())
    def _t_aavg_bwd(grad: torch.Tensor, input_size: List[int],
                    channels_last: bool) -> torch.Tensor:
        g = grad.contiguous(memory_format=_fmt(channels_last))
        dx = _empty4((g.shape[0], g.shape[1], input_size[0], input_size[1]), g, channels_last)
        _tk.pool_bwd(g, None, dx, channels_last, "adaptive_avg")
        return dx

    @custom_op("pydl_triton::adaptive_max_pool2d_fwd", mutates_args=())
    def _t_amax_fwd(x: torch.Tensor, out_size: List[int],
                    with_indices: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        x, cl = _prep(x)
        shape = (x.shape[0], x.shape[1], out_size[0], out_size[1])
        y = _empty4(shape, x, cl)
        ind = _empty4(shape, x, cl, torch.int64) if with_indices else _no_idx(x)
        _tk.pool_fwd(x, y, ind if with_indices else None, cl, "adaptive_max")
        return y, ind

    @custom_op("pydl_triton::adaptive_max_pool2d_bwd", mutates_args=())
    def _t_amax_bwd(grad: torch.Tensor, indices: torch.Tensor, input_size: List[int],
                    channels_last: bool) -> torch.Tensor:
        g = grad.contiguous(memory_format=_fmt(channels_last))
        ind = indices.contiguous(memory_format=_fmt(channels_last))
        dx = _empty4((g.shape[0], g.shape[1], input_size[0], input_size[1]), g, channels_last)
        _tk.pool_bwd(g, ind, dx, channels_last, "adaptive_max")
        return dx

    @custom_op("pydl_triton::pool_gather", mutates_args=())
    def _t_gather(x: torch.Tensor, indices: torch.Tensor, channels_last: bool) -> torch.Tensor:
        x = x.contiguous(memory_format=_fmt(channels_last))
        ind = indices.contiguous(memory_format=_fmt(channels_last))
        out = _empty4(tuple(ind.shape), x, channels_last)
        _tk.pool_gather(x, ind, out, channels_last)
        return out


# ------------------------------------------------- fake kernels and autograd, both families
def _fake_out(x, out_size, dtype=None):
    return torch.empty((x.shape[0], x.shape[1], out_size[0], out_size[1]),
                       dtype=dtype or x.dtype, device=x.device, memory_format=_fmt(_is_cl(x)))


def _fake_grad_in(grad, input_size, channels_last):
    return torch.empty((grad.shape[0], grad.shape[1], input_size[0], input_size[1]),
                       dtype=grad.dtype, device=grad.device, memory_format=_fmt(channels_last))


def _fake_idx(x, out_size, with_indices):
    if with_indices:
        return _fake_out(x, out_size, torch.int64)
    return torch.empty((0,), dtype=torch.int64, device=x.device)


def _need_indices(ctx_indices: torch.Tensor, op: str) -> None:
    if ctx_indices.dim() != 4:
        raise RuntimeError(f"pydl.{op}: the forward ran with with_indices=False, so there is "
                           "no saved index to differentiate through; call it with "
                           "with_indices=True when a gradient is wanted")


def _register(ns: str) -> SimpleNamespace:
    """Fake kernels and autograd for one op namespace; returns its ops as differentiable
    callables (pydl.ops._util.differentiable: the eager fast path), which the backward
    formulas below call too."""
    lib = SimpleNamespace()

    @torch.library.register_fake(f"{ns}::max_pool2d_fwd")
    def _(x, kernel, stride, padding, dilation, out_size, with_indices):
        return _fake_out(x, out_size), _fake_idx(x, out_size, with_indices)

    @torch.library.register_fake(f"{ns}::max_pool2d_bwd")
    def _(grad, indices, input_size, kernel, stride, padding, dilation, channels_last):
        return _fake_grad_in(grad, input_size, channels_last)

    @torch.library.register_fake(f"{ns}::avg_pool2d_fwd")
    def _(x, kernel, stride, padding, out_size, count_include_pad, divisor_override):
        return _fake_out(x, out_size)

    @torch.library.register_fake(f"{ns}::avg_pool2d_bwd")
    def _(grad, input_size, kernel, stride, padding, count_include_pad, divisor_override,
          channels_last):
        return _fake_grad_in(grad, input_size, channels_last)

    @torch.library.register_fake(f"{ns}::adaptive_avg_pool2d_fwd")
    def _(x, out_size):
        return _fake_out(x, out_size)

    @torch.library.register_fake(f"{ns}::adaptive_avg_pool2d_bwd")
    def _(grad, input_size, channels_last):
        return _fake_grad_in(grad, input_size, channels_last)

    @torch.library.register_fake(f"{ns}::adaptive_max_pool2d_fwd")
    def _(x, out_size, with_indices):
        return _fake_out(x, out_size), _fake_idx(x, out_size, with_indices)

    @torch.library.register_fake(f"{ns}::adaptive_max_pool2d_bwd")
    def _(grad, indices, input_size, channels_last):
        return _fake_grad_in(grad, input_size, channels_last)

    @torch.library.register_fake(f"{ns}::pool_gather")
    def _(x, indices, channels_last):
        return torch.empty(indices.shape, dtype=x.dtype, device=x.device,
                           memory_format=_fmt(channels_last))

    # max_pool2d: saves the indices (not the input)
    def max_setup(ctx, inputs, output):
        x, kernel, stride, padding, dilation, out_size, with_indices = inputs
        ctx.args = (list(x.shape[2:]), kernel, stride, padding, dilation, _is_cl(x))
        ctx.save_for_backward(output[1])
        _no_zero_grads(ctx, output[1])

    def max_backward(ctx, grad, grad_ind):
        if grad is None:  # the values were not used: no gradient flows
            return (None,) * 7
        (ind,) = ctx.saved_tensors
        _need_indices(ind, "max_pool2d")
        return (lib.max_pool2d_bwd(grad, ind, *ctx.args),) + (None,) * 6

    # Forward mode (torch.func.jvp, jacfwd, hessian; torch.autograd.forward_ad): every op
    # here is linear in its one differentiable input, so its tangent is the same op applied
    # to the input's tangent -- for a max pool, the tangent gathered at the argmax indices.
    def linear_jvp(fn):
        def jvp(args, out, tangents):
            return fn(tangents[0], *args[1:])
        return jvp

    def max_jvp(op):
        def jvp(args, out, tangents):
            x, ind = args[0], out[1]
            _need_indices(ind, op)
            return lib.pool_gather(tangents[0], ind, _is_cl(x)), None
        return jvp

    lib.max_pool2d_fwd = differentiable(f"{ns}::max_pool2d_fwd", max_setup, max_backward,
                                        max_jvp("max_pool2d"))

    # avg_pool2d: saves nothing but sizes
    def avg_setup(ctx, inputs, output):
        x, kernel, stride, padding, out_size, cip, div = inputs
        ctx.args = (list(x.shape[2:]), kernel, stride, padding, cip, div, _is_cl(x))

    def avg_backward(ctx, grad):
        return (lib.avg_pool2d_bwd(grad, *ctx.args),) + (None,) * 6

    lib.avg_pool2d_fwd = differentiable(f"{ns}::avg_pool2d_fwd", avg_setup, avg_backward,
                                        linear_jvp(lambda *a: lib.avg_pool2d_fwd(*a)))

    def aavg_setup(ctx, inputs, output):
        x, out_size = inputs
        ctx.args = (list(x.shape[2:]), _is_cl(x))

    def aavg_backward(ctx, grad):
        return lib.adaptive_avg_pool2d_bwd(grad, *ctx.args), None

    lib.adaptive_avg_pool2d_fwd = differentiable(
        f"{ns}::adaptive_avg_pool2d_fwd", aavg_setup, aavg_backward,
        linear_jvp(lambda *a: lib.adaptive_avg_pool2d_fwd(*a)))

    def amax_setup(ctx, inputs, output):
        x, out_size, with_indices = inputs
        ctx.args = (list(x.shape[2:]), _is_cl(x))
        ctx.save_for_backward(output[1])
        _no_zero_grads(ctx, output[1])

    def amax_backward(ctx, grad, grad_ind):
        if grad is None:
            return None, None, None
        (ind,) = ctx.saved_tensors
        _need_indices(ind, "adaptive_max_pool2d")
        return lib.adaptive_max_pool2d_bwd(grad, ind, *ctx.args), None, None

    lib.adaptive_max_pool2d_fwd = differentiable(
        f"{ns}::adaptive_max_pool2d_fwd", amax_setup, amax_backward, max_jvp("adaptive_max_pool2d"))

    # Double backward. Each backward is linear in grad, and its adjoint is:
    #   max pools:  gg -> gg gathered at the saved indices (pool_gather)
    #   avg pools:  gg -> the same average pooling of gg (the forward op)
    # so second derivatives run on pydl kernels too (torch would otherwise silently
    # treat the backward ops as constants).
    def bwd_setup_max(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.cl = inputs[-1]
        ctx.n_args = len(inputs)

    def max_bwd_backward(ctx, gg):
        (ind,) = ctx.saved_tensors
        return (lib.pool_gather(gg, ind, ctx.cl),) + (None,) * (ctx.n_args - 1)

    lib.max_pool2d_bwd = differentiable(f"{ns}::max_pool2d_bwd", bwd_setup_max, max_bwd_backward,
                                        linear_jvp(lambda *a: lib.max_pool2d_bwd(*a)))
    lib.adaptive_max_pool2d_bwd = differentiable(
        f"{ns}::adaptive_max_pool2d_bwd", bwd_setup_max, max_bwd_backward,
        linear_jvp(lambda *a: lib.adaptive_max_pool2d_bwd(*a)))

    def avg_bwd_setup(ctx, inputs, output):
        grad, input_size, kernel, stride, padding, cip, div, cl = inputs
        ctx.args = (kernel, stride, padding, list(grad.shape[2:]), cip, div)

    def avg_bwd_backward(ctx, gg):
        return (lib.avg_pool2d_fwd(gg, *ctx.args),) + (None,) * 7

    lib.avg_pool2d_bwd = differentiable(f"{ns}::avg_pool2d_bwd", avg_bwd_setup, avg_bwd_backward,
                                        linear_jvp(lambda *a: lib.avg_pool2d_bwd(*a)))

    def aavg_bwd_setup(ctx, inputs, output):
        ctx.out_size = list(inputs[0].shape[2:])

    def aavg_bwd_backward(ctx, gg):
        return lib.adaptive_avg_pool2d_fwd(gg, ctx.out_size), None, None

    lib.adaptive_avg_pool2d_bwd = differentiable(
        f"{ns}::adaptive_avg_pool2d_bwd", aavg_bwd_setup, aavg_bwd_backward,
        linear_jvp(lambda *a: lib.adaptive_avg_pool2d_bwd(*a)))

    def gather_setup(ctx, inputs, output):
        pass

    def gather_backward(ctx, g):
        raise NotImplementedError("pydl: third and higher derivatives of max pooling are not "
                                  "implemented (the double backward is)")

    lib.pool_gather = differentiable(f"{ns}::pool_gather", gather_setup, gather_backward,
                                     linear_jvp(lambda *a: lib.pool_gather(*a)))
    return lib


_OPS = {}  # backend -> its differentiable pool ops (see _register)
if _dispatch._C is not None:
    _OPS["cpu"] = _OPS["cuda"] = _register("pydl")
if _dispatch._kernels is not None:
    _OPS["triton"] = _register("pydl_triton")


# --------------------------------------------------------------- argument checks (torch's)
IntPair = Union[int, Sequence[int]]


def _pair(v, name: str, op: str, default=None) -> List[int]:
    """An int or a sequence of 1 or 2 ints -> [a, b]; None / () -> default."""
    if (v is None or (isinstance(v, (list, tuple)) and len(v) == 0)) and default is not None:
        return list(default)
    i = as_int(v)  # (an int, or an integer such as numpy's, as torch takes)
    if i is not None:
        return [i, i]
    if not isinstance(v, (list, tuple)):
        raise TypeError(f"pydl.{op}: {name} must be an int or a tuple of two ints, got {v!r}")
    e = [as_int(x) for x in v]
    if len(e) not in (1, 2) or None in e:
        raise RuntimeError(f"pydl.{op}: {name} must either be a single int, or a tuple of "
                           f"two ints, got {tuple(v)!r}")
    return [e[0], e[0]] if len(e) == 1 else e


def _check_input(x, op: str, empty_channels: bool = False) -> None:
    """torch's rule for what may be empty: the batch; with empty_channels (adaptive
    average pooling; adaptive max pooling of unbatched input) also the channels -- never H
    or W."""
    check_tensor(x, "input", op)
    if x.dim() not in (3, 4):
        raise RuntimeError(f"pydl.{op}: input must be 3-D (C, H, W) or 4-D (N, C, H, W), "
                           f"got {x.dim()}-D with shape {tuple(x.shape)}")
    if empty_channels:
        if x.shape[-1] == 0 or x.shape[-2] == 0:
            raise RuntimeError(f"pydl.{op}: input must have non-zero H and W (the batch and "
                               f"the channels may be empty), got shape {tuple(x.shape)}")
    elif any(s == 0 for s in x.shape[-3:]) or (x.dim() == 3 and x.numel() == 0):
        raise RuntimeError(f"pydl.{op}: input must have non-zero C, H and W (only the batch "
                           f"may be empty), got shape {tuple(x.shape)}")


def _out_size(i: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """torch's pooling_output_shape: floor (or ceil) of (i + 2p - d(k-1) - 1) / s + 1, and
    with ceil_mode the last window must start inside the input or the left padding."""
    o = (i + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (o - 1) * s >= i + p:
        o -= 1
    return o


def _fixed_geometry(x, kernel_size, stride, padding, dilation, ceil_mode, op: str):
    k = _pair(kernel_size, "kernel_size", op)
    s = _pair(stride, "stride", op, default=k)
    p = _pair(padding, "padding", op)
    d = _pair(dilation, "dilation", op)
    if k[0] <= 0 or k[1] <= 0:
        raise RuntimeError(f"pydl.{op}: kernel_size must be greater than zero, got {tuple(k)}")
    if s[0] <= 0 or s[1] <= 0:
        raise RuntimeError(f"pydl.{op}: stride must be greater than zero, got {tuple(s)}")
    if d[0] <= 0 or d[1] <= 0:
        raise RuntimeError(f"pydl.{op}: dilation must be greater than zero, got {tuple(d)}")
    if p[0] < 0 or p[1] < 0:
        raise RuntimeError(f"pydl.{op}: padding must be non-negative, got {tuple(p)}")
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise RuntimeError(f"pydl.{op}: padding must be at most half of kernel_size, got "
                           f"padding={tuple(p)} and kernel_size={tuple(k)}")
    ih, iw = x.shape[-2], x.shape[-1]
    o = [_out_size(ih, k[0], s[0], p[0], d[0], ceil_mode),
         _out_size(iw, k[1], s[1], p[1], d[1], ceil_mode)]
    if o[0] < 1 or o[1] < 1:
        raise RuntimeError(f"pydl.{op}: output would be empty: input size "
                           f"{tuple(x.shape[-3:])} with kernel_size={tuple(k)}, stride={tuple(s)}, "
                           f"padding={tuple(p)}, dilation={tuple(d)} gives output size "
                           f"{tuple(o)}; the output size is too small")
    return k, s, p, d, o


def _adaptive_size(x, output_size, op: str) -> List[int]:
    """output_size: an int, or a pair whose entries are ints or None (None: keep the
    input's size on that axis)."""
    if isinstance(output_size, (list, tuple)):
        if len(output_size) != 2:
            raise RuntimeError(f"pydl.{op}: output_size must be an int or a pair, got "
                               f"{tuple(output_size)!r}")
        o = list(output_size)
    elif output_size is None or as_int(output_size) is not None:
        o = [output_size, output_size]
    else:
        raise TypeError(f"pydl.{op}: output_size must be an int, None or a pair, got "
                        f"{output_size!r}")
    given = [x.shape[-2 + i] if v is None else v for i, v in enumerate(o)]
    o = [as_int(v) for v in given]
    if None in o:
        raise TypeError(f"pydl.{op}: output_size entries must be ints or None, got {given!r}")
    if o[0] < 0 or o[1] < 0:
        raise RuntimeError(f"pydl.{op}: output_size must be >= 0, got {tuple(o)}")
    return o


def _batched(x):
    """3-D (C, H, W) -> 4-D; torch gives contiguous output for unbatched input."""
    return (x.contiguous().unsqueeze(0), True) if x.dim() == 3 else (x, False)


def _may_differentiate(x: torch.Tensor) -> bool:
    """Whether a max pool's indices may be needed for a derivative: x needs a gradient, or
    forward-mode AD (a dual level, torch.func.jvp or another torch.func transform) may carry
    a tangent, which the jvp gathers at them."""
    return (torch.is_grad_enabled() and x.requires_grad) or _dual_level_active() or \
        torch._C._are_functorch_transforms_active()


# ------------------------------------------------------------------------- public ops
def max_pool2d(input: torch.Tensor, kernel_size: IntPair, stride: Optional[IntPair] = None,
               padding: IntPair = 0, dilation: IntPair = 1, ceil_mode: bool = False,
               return_indices: bool = False, backend: Optional[str] = None):
    op = "max_pool2d"
    _check_input(input, op)
    k, s, p, d, o = _fixed_geometry(input, kernel_size, stride, padding, dilation, ceil_mode, op)
    name = _dispatch.resolve(op, input.device, backend)
    if name == "torch":
        return F.max_pool2d(input, k, s, p, d, ceil_mode=ceil_mode, return_indices=return_indices)
    x, unbatched = _batched(input)
    with_idx = bool(return_indices) or _may_differentiate(input)
    y, ind = _OPS[name].max_pool2d_fwd(x, k, s, p, d, o, with_idx)
    if unbatched:
        y, ind = y.squeeze(0), (ind.squeeze(0) if return_indices else ind)
    return (y, ind) if return_indices else y


def avg_pool2d(input: torch.Tensor, kernel_size: IntPair, stride: Optional[IntPair] = None,
               padding: IntPair = 0, ceil_mode: bool = False, count_include_pad: bool = True,
               divisor_override: Optional[int] = None, backend: Optional[str] = None):
    op = "avg_pool2d"
    _check_input(input, op)
    k, s, p, _, o = _fixed_geometry(input, kernel_size, stride, padding, 1, ceil_mode, op)
    if divisor_override is not None:
        d = as_int(divisor_override)
        if d is None:
            raise TypeError(f"pydl.{op}: divisor_override must be an int or None, got "
                            f"{divisor_override!r}")
        divisor_override = d
    if divisor_override == 0:
        raise RuntimeError(f"pydl.{op}: divisor_override must not be zero")
    name = _dispatch.resolve(op, input.device, backend)
    if name == "torch":
        return F.avg_pool2d(input, k, s, p, ceil_mode, count_include_pad, divisor_override)
    x, unbatched = _batched(input)
    y = _OPS[name].avg_pool2d_fwd(x, k, s, p, o, bool(count_include_pad),
                                  int(divisor_override or 0))
    return y.squeeze(0) if unbatched else y


def adaptive_avg_pool2d(input: torch.Tensor, output_size, backend: Optional[str] = None):
    op = "adaptive_avg_pool2d"
    _check_input(input, op, empty_channels=True)
    o = _adaptive_size(input, output_size, op)
    name = _dispatch.resolve(op, input.device, backend)
    if name == "torch":
        return F.adaptive_avg_pool2d(input, output_size)
    x, unbatched = _batched(input)
    y = _OPS[name].adaptive_avg_pool2d_fwd(x, o)
    return y.squeeze(0) if unbatched else y


def adaptive_max_pool2d(input: torch.Tensor, output_size, return_indices: bool = False,
                        backend: Optional[str] = None):
    op = "adaptive_max_pool2d"
    # torch's check treats an unbatched input's channels as its batch: they may be empty
    _check_input(input, op, empty_channels=input.dim() == 3)
    o = _adaptive_size(input, output_size, op)
    name = _dispatch.resolve(op, input.device, backend)
    if name == "torch":
        return F.adaptive_max_pool2d(input, output_size, return_indices)
    x, unbatched = _batched(input)
    with_idx = bool(return_indices) or _may_differentiate(input)
    y, ind = _OPS[name].adaptive_max_pool2d_fwd(x, o, with_idx)
    if unbatched:
        y, ind = y.squeeze(0), (ind.squeeze(0) if return_indices else ind)
    return (y, ind) if return_indices else y
