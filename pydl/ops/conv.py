"""2-D convolution: argument checks, backend choice, fake kernels, autograd.

Ops per backend (same schemas; padding is [top, left, bottom, right], already resolved
from 'same'/'valid'; act is "none" | "relu"; channels_last picks the output's memory
format):
  conv2d_fwd(x, w, b?, stride, padding, dilation, groups, act, channels_last) -> y
  conv2d_bwd_input(grad, w, input_size, stride, padding, dilation, groups, channels_last) -> dx
  conv2d_bwd_weight(grad, x, weight_size, stride, padding, dilation, groups, channels_last) -> dw
  conv2d_bwd_bias(grad) -> db
cpu/cuda: torch.ops.pydl.* (C++, csrc/cpu/conv.cpp, csrc/cuda/conv*.{cpp,cu});
triton:   torch.ops.pydl_triton.* (defined below, kernels in kernels/conv.py).

Autograd saves x and w (and y with the fused ReLU, whose derivative is y > 0) and
computes only the gradients autograd asks for (ctx.needs_input_grad). The ReLU mask is
applied by the activation family's own act_bwd kernel on the same backend. The backward
ops have autograd formulas of their own (they are bilinear, so their derivatives are
convolutions again): double backward works, as for torch's conv. Forward mode likewise:
each op's jvp is the same ops applied to the tangents.

Under torch.autocast the operands are cast to the autocast dtype first, as torch's conv2d
(on autocast's lower-precision list) does. float32 on the GPU may use TF32 exactly when
torch's cuDNN convolution may (tf32_allowed below; the C++ side asks ATen's context).

Memory format, as torch gives it: the output is channels_last when the input is, or when
the weight is and has more than one input channel per group (torch's CPU and depthwise
paths ignore an [OC, 1, kH, kW] weight's ambiguous strides); dx follows the input's
format and dw the weight's.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .. import _dispatch
from . import activation as _activation
from ._util import as_int, check_tensor, custom_op, differentiable, is_channels_last

ACTIVATIONS = (None, "relu")


# ------------------------------------------------------------------ Triton custom ops
def _out_size(h: int, w: int, kh: int, kw: int, stride, padding, dilation):
    oh = (h + padding[0] + padding[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + padding[1] + padding[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return oh, ow


def _empty4(shape, like: torch.Tensor, channels_last: bool) -> torch.Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)


def tf32_allowed() -> bool:
    """Whether torch's conv may use TF32 for float32: cuDNN's conv setting, resolved as
    torch resolves it (torch.backends.cudnn.conv.fp32_precision, inheriting from
    cudnn.fp32_precision and then the global one when "none"; the legacy
    torch.backends.cudnn.allow_tf32 writes the same setting). Reading allow_tf32 itself
    can raise when the legacy and new APIs were mixed, hence this resolution."""
    cudnn = torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    if conv is None:  # torch without the fp32_precision API
        return bool(cudnn.allow_tf32)
    for p in (conv.fp32_precision, cudnn.fp32_precision, torch.backends.fp32_precision):
        if p != "none":
            return p == "tf32"
    return False


def _tf32(x: torch.Tensor) -> bool:
    """float32 on the GPU may use TF32 tensor cores when torch's conv may."""
    return x.dtype == torch.float32 and x.is_cuda and tf32_allowed()


if _dispatch._kernels is not None:
    from ..kernels import conv as _tk

    @custom_op("pydl_triton::conv2d_fwd", mutates_args=())
    def _triton_fwd(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], stride: List[int],
                    padding: List[int], dilation: List[int], groups: int, act: str,
                    channels_last: bool) -> torch.Tensor:
        oh, ow = _out_size(x.shape[2], x.shape[3], w.shape[2], w.shape[3], stride, padding, dilation)
        y = _empty4((x.shape[0], w.shape[0], oh, ow), x, channels_last)
        _tk.conv2d_fwd(x, w, b, y, stride, padding, dilation, groups, act == "relu", _tf32(x))
        return y

    @custom_op("pydl_triton::conv2d_bwd_input", mutates_args=())
    def _triton_bwd_input(grad: torch.Tensor, w: torch.Tensor, input_size: List[int], stride: List[int],
                          padding: List[int], dilation: List[int], groups: int,
                          channels_last: bool) -> torch.Tensor:
        dx = _empty4(input_size, grad, channels_last)
        _tk.conv2d_bwd_input(grad, w, dx, stride, padding, dilation, groups, _tf32(grad))
        return dx

    @custom_op("pydl_triton::conv2d_bwd_weight", mutates_args=())
    def _triton_bwd_weight(grad: torch.Tensor, x: torch.Tensor, weight_size: List[int], stride: List[int],
                           padding: List[int], dilation: List[int], groups: int,
                           channels_last: bool) -> torch.Tensor:
        dw = _empty4(weight_size, grad, channels_last)
        _tk.conv2d_bwd_weight(grad, x, dw, stride, padding, dilation, groups, _tf32(grad))
        return dw

    @custom_op("pydl_triton::conv2d_bwd_bias", mutates_args=())
    def _triton_bwd_bias(grad: torch.Tensor) -> torch.Tensor:
        db = torch.empty(grad.shape[1], dtype=grad.dtype, device=grad.device)
        _tk.conv2d_bwd_bias(grad, db)
        return db


# ------------------------------------------------- fake kernels and autograd, both families
def _register(ns: str, act_bwd) -> SimpleNamespace:
    """Fake kernels and autograd for one op namespace; returns its ops as differentiable
    callables (pydl.ops._util.differentiable: the eager fast path). act_bwd: the activation
    family's differentiable act_bwd on the same backend."""
    @torch.library.register_fake(f"{ns}::conv2d_fwd")
    def _(x, w, b, stride, padding, dilation, groups, act, channels_last):
        oh, ow = _out_size(x.shape[2], x.shape[3], w.shape[2], w.shape[3], stride, padding, dilation)
        return _empty4((x.shape[0], w.shape[0], oh, ow), x, channels_last)

    @torch.library.register_fake(f"{ns}::conv2d_bwd_input")
    def _(grad, w, input_size, stride, padding, dilation, groups, channels_last):
        return _empty4(input_size, grad, channels_last)

    @torch.library.register_fake(f"{ns}::conv2d_bwd_weight")
    def _(grad, x, weight_size, stride, padding, dilation, groups, channels_last):
        return _empty4(weight_size, grad, channels_last)

    @torch.library.register_fake(f"{ns}::conv2d_bwd_bias")
    def _(grad):
        return grad.new_empty(grad.shape[1])

    def setup_context(ctx, inputs, output):
        x, w, b, stride, padding, dilation, groups, act, channels_last = inputs
        ctx.geom = (stride, padding, dilation, groups)
        ctx.act, ctx.has_bias = act, b is not None
        ctx.x_size, ctx.w_size = list(x.shape), list(w.shape)
        ctx.x_cl = _is_cl(x)
        ctx.w_cl = _weight_cl(w)
        ctx.save_for_backward(x, w, output if act == "relu" else None)

    def backward(ctx, grad):
        x, w, y = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if ctx.act == "relu":  # d relu(z)/dz = (y > 0), by the activation family's kernel
            grad = act_bwd(grad, y, "relu", 0.0, True)
        dx = dw = db = None
        if need_x:
            dx = ops.conv2d_bwd_input(grad, w, ctx.x_size, *ctx.geom, ctx.x_cl)
        if need_w:
            dw = ops.conv2d_bwd_weight(grad, x, ctx.w_size, *ctx.geom, ctx.w_cl)
        if need_b and ctx.has_bias:
            db = ops.conv2d_bwd_bias(grad)
        return dx, dw, db, None, None, None, None, None, None

    # Forward mode (torch.func.jvp, jacfwd, hessian; torch.autograd.forward_ad): every op
    # is linear in each tensor input, so a tangent goes through the same ops --
    #   d conv(x, w) + b  =  conv(dx, w) + conv(x, dw) + db,   then the ReLU mask (y > 0)
    #   d bwd_input(g, w) = bwd_input(dg, w) + bwd_input(g, dw), likewise bwd_weight, bwd_bias
    def jvp(args, y, tangents):
        x, w, b, stride, padding, dilation, groups, act, cl = args
        tx, tw, tb = tangents[:3]
        t = None
        if tx is not None:
            t = ops.conv2d_fwd(tx, w, None, stride, padding, dilation, groups, "none", cl)
        if tw is not None:
            tt = ops.conv2d_fwd(x, tw, None, stride, padding, dilation, groups, "none", cl)
            t = tt if t is None else t + tt
        if tb is not None:
            tb = tb.view(1, -1, 1, 1)
            t = tb.expand_as(y).clone() if t is None else t + tb
        return act_bwd(t, y, "relu", 0.0, True) if act == "relu" else t

    def bilinear_jvp(fn):
        def jvp(args, out, tangents):  # fn(a, b, *rest): d = fn(da, b) + fn(a, db)
            a, b, rest = args[0], args[1], args[2:]
            t = None if tangents[0] is None else fn(tangents[0], b, *rest)
            if tangents[1] is not None:
                tt = fn(a, tangents[1], *rest)
                t = tt if t is None else t + tt
            return t
        return jvp

    ops = SimpleNamespace(conv2d_fwd=differentiable(f"{ns}::conv2d_fwd", setup_context, backward, jvp))

    # The backward ops are bilinear in their tensor inputs, so their own derivatives are
    # again convolutions: this makes double backward (e.g. gradient penalties) work.
    def bi_setup(ctx, inputs, output):
        grad, w, input_size, stride, padding, dilation, groups, channels_last = inputs
        ctx.geom = (stride, padding, dilation, groups)
        ctx.w_size, ctx.g_cl, ctx.w_cl = list(w.shape), _is_cl(grad), _weight_cl(w)
        ctx.save_for_backward(grad, w)

    def bi_backward(ctx, gdx):  # dx = conv_transpose(grad, w)
        grad, w = ctx.saved_tensors
        ggrad = gw = None
        if ctx.needs_input_grad[0]:
            ggrad = ops.conv2d_fwd(gdx, w, None, *ctx.geom, "none", ctx.g_cl)
        if ctx.needs_input_grad[1]:
            gw = ops.conv2d_bwd_weight(grad, gdx, ctx.w_size, *ctx.geom, ctx.w_cl)
        return ggrad, gw, None, None, None, None, None, None

    def bw_setup(ctx, inputs, output):
        grad, x, weight_size, stride, padding, dilation, groups, channels_last = inputs
        ctx.geom = (stride, padding, dilation, groups)
        ctx.x_size, ctx.g_cl, ctx.x_cl = list(x.shape), _is_cl(grad), _is_cl(x)
        ctx.save_for_backward(grad, x)

    def bw_backward(ctx, gdw):  # dw = sum over n, oh, ow of grad x patches of x
        grad, x = ctx.saved_tensors
        ggrad = gx = None
        if ctx.needs_input_grad[0]:
            ggrad = ops.conv2d_fwd(x, gdw, None, *ctx.geom, "none", ctx.g_cl)
        if ctx.needs_input_grad[1]:
            gx = ops.conv2d_bwd_input(grad, gdw, ctx.x_size, *ctx.geom, ctx.x_cl)
        return ggrad, gx, None, None, None, None, None, None

    def bb_setup(ctx, inputs, output):
        ctx.shape = inputs[0].shape

    def bb_backward(ctx, gdb):  # db = grad summed over n, oh, ow: its derivative broadcasts
        return gdb[None, :, None, None].expand(ctx.shape)

    ops.conv2d_bwd_input = differentiable(f"{ns}::conv2d_bwd_input", bi_setup, bi_backward,
                                          bilinear_jvp(lambda *a: ops.conv2d_bwd_input(*a)))
    ops.conv2d_bwd_weight = differentiable(f"{ns}::conv2d_bwd_weight", bw_setup, bw_backward,
                                           bilinear_jvp(lambda *a: ops.conv2d_bwd_weight(*a)))
    ops.conv2d_bwd_bias = differentiable(f"{ns}::conv2d_bwd_bias", bb_setup, bb_backward,
                                         lambda args, out, t: ops.conv2d_bwd_bias(t[0]))
    return ops


_is_cl = is_channels_last  # torch's suggest_memory_format() == channels_last


def _weight_cl(w: torch.Tensor) -> bool:
    return w.shape[1] > 1 and _is_cl(w)


_OPS = {}  # backend -> its differentiable conv2d_fwd / conv2d_bwd_* (see _register)
if _dispatch._C is not None:
    _OPS["cpu"] = _OPS["cuda"] = _register("pydl", _activation._BWD["cpu"])
if _dispatch._kernels is not None:
    _OPS["triton"] = _register("pydl_triton", _activation._BWD["triton"])


# ---------------------------------------------------------------------- argument checks
def _pair(v, name: str) -> List[int]:
    """An int (or an integer such as numpy's: as_int) or a sequence of 1 or 2 -> [a, b]."""
    i = as_int(v)
    if i is not None:
        return [i, i]
    if not isinstance(v, Sequence) or isinstance(v, str):
        raise TypeError(f"pydl.conv2d: {name} must be an int or a tuple of 2 ints, got {v!r}")
    out = [as_int(e) for e in v]
    if len(out) == 1:
        out = out * 2
    if len(out) != 2 or None in out:
        raise TypeError(f"pydl.conv2d: {name} must be an int or a tuple of 2 ints, got {list(v)!r}")
    return out


def _resolve_padding(padding, kh: int, kw: int, stride, dilation) -> List[int]:
    """[top, left, bottom, right]. 'same' puts the odd pixel of an even kernel's total
    padding on the bottom/right, as torch does."""
    if isinstance(padding, str):
        if padding == "valid":
            return [0, 0, 0, 0]
        if padding != "same":
            raise RuntimeError(f"pydl.conv2d: padding must be an int, a tuple of 2 ints, 'same' or "
                               f"'valid'; got {padding!r}")
        if stride != [1, 1]:
            raise RuntimeError("pydl.conv2d: padding='same' is not supported for strided "
                               f"convolutions (stride={tuple(stride)})")
        th, tw = dilation[0] * (kh - 1), dilation[1] * (kw - 1)
        return [th // 2, tw // 2, th - th // 2, tw - tw // 2]
    p = _pair(padding, "padding")
    if min(p) < 0:
        raise RuntimeError(f"pydl.conv2d: padding must be non-negative, got {tuple(p)}")
    return [p[0], p[1], p[0], p[1]]


def _check(input, weight, bias, stride, padding, dilation, groups, activation):
    check_tensor(input, "input", "conv2d")
    check_tensor(weight, "weight", "conv2d")
    if bias is not None:
        check_tensor(bias, "bias", "conv2d")
    if input.dim() not in (3, 4):
        raise RuntimeError(f"pydl.conv2d: expected a 3-D (unbatched) or 4-D (batched) input, got "
                           f"input of shape {tuple(input.shape)}")
    if weight.dim() != 4:
        raise RuntimeError(f"pydl.conv2d: weight must be 4-D [out_channels, in_channels/groups, kH, kW], "
                           f"got shape {tuple(weight.shape)}")
    for t, name in ((weight, "weight"), (bias, "bias")):
        if t is None:
            continue
        if t.dtype != input.dtype:
            raise RuntimeError(f"pydl.conv2d: input ({input.dtype}) and {name} ({t.dtype}) must have "
                               "the same dtype")
        if t.device != input.device:
            raise RuntimeError(f"pydl.conv2d: input ({input.device}) and {name} ({t.device}) must be "
                               "on the same device")
    if activation not in ACTIVATIONS:
        raise ValueError(f"pydl.conv2d: activation must be None or 'relu', got {activation!r}")
    g = as_int(groups)
    if g is None or g <= 0:
        raise RuntimeError(f"pydl.conv2d: groups must be a positive integer, got {groups!r}")
    groups = g
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    if min(stride) <= 0:
        raise RuntimeError(f"pydl.conv2d: non-positive stride is not supported, got stride={tuple(stride)}")
    if min(dilation) <= 0:
        raise RuntimeError(f"pydl.conv2d: dilation must be positive, got dilation={tuple(dilation)}")
    C = input.shape[-3]
    OC, Cg, KH, KW = weight.shape
    if OC == 0:
        raise RuntimeError(f"pydl.conv2d: weight must have at least one output channel "
                           f"(weight.shape[0] >= 1), got weight of shape {tuple(weight.shape)}")
    if KH <= 0 or KW <= 0:  # (a GPU kernel would divide by the kernel width)
        raise RuntimeError(f"pydl.conv2d: weight's kernel size (weight.shape[2:]) must be greater "
                           f"than zero, got weight of shape {tuple(weight.shape)}")
    if input.numel() == 0 and C > 0 and (input.dim() == 3 or input.shape[0] > 0):
        # torch's rule: an empty input may have an empty batch or no channels, not empty planes
        raise RuntimeError(f"pydl.conv2d: only an empty batch or zero input channels are "
                           f"supported for an empty input, got input of shape {tuple(input.shape)}")
    if OC % groups != 0:
        raise RuntimeError(f"pydl.conv2d: out_channels ({OC}, weight.shape[0]) must be divisible by "
                           f"groups ({groups})")
    if C % groups != 0:
        raise RuntimeError(f"pydl.conv2d: in_channels ({C}) must be divisible by groups ({groups})")
    if Cg * groups != C:
        raise RuntimeError(f"pydl.conv2d: input has {C} channels but weight of shape {tuple(weight.shape)} "
                           f"with groups={groups} expects {Cg * groups} (channel mismatch)")
    if bias is not None and tuple(bias.shape) != (OC,):
        raise RuntimeError(f"pydl.conv2d: bias must have shape ({OC},), got {tuple(bias.shape)}")
    pad = _resolve_padding(padding, KH, KW, stride, dilation)
    H, W = input.shape[-2], input.shape[-1]
    eh, ew = dilation[0] * (KH - 1) + 1, dilation[1] * (KW - 1) + 1
    if eh > H + pad[0] + pad[2] or ew > W + pad[1] + pad[3]:
        raise RuntimeError(f"pydl.conv2d: kernel size ({eh} x {ew}, dilation included) can't be greater "
                           f"than the padded input size ({H + pad[0] + pad[2]} x {W + pad[1] + pad[3]})")
    return stride, pad, dilation, groups


def _autocast(*ts):
    """Inside torch.autocast, conv2d runs in the autocast dtype, as torch's conv2d does (it
    is on autocast's lower-precision list): float32/16 operands are cast, float64 is not."""
    x = ts[0]
    if not isinstance(x, torch.Tensor) or x.device.type not in ("cpu", "cuda") \
            or not torch.is_autocast_enabled(x.device.type):
        return ts
    dt = torch.get_autocast_dtype(x.device.type)
    return tuple(t.to(dt) if isinstance(t, torch.Tensor) and t.dtype in (torch.float32, torch.float16,
                                                                         torch.bfloat16) else t
                 for t in ts)


class _NoInputChannels(torch.autograd.Function):
    """torch's convention for an input with zero channels: the output has zero channels
    too, shape (N, 0, OH, OW) -- torch's eager, meta and compiled convolutions all give that
    shape, whatever the weight's out_channels (no sum over zero channels is formed, so no
    bias is added). Gradients: zeros for x and weight (both have no elements) and for bias
    (the output, having no elements, does not depend on it)."""

    @staticmethod
    def forward(ctx, x, w, b, stride, pad, dilation, out_cl):
        ctx.shapes = (x.shape, w.shape, None if b is None else b.shape)
        oh, ow = _out_size(x.shape[2], x.shape[3], w.shape[2], w.shape[3], stride, pad, dilation)
        return _empty4((x.shape[0], 0, oh, ow), x, out_cl)

    @staticmethod
    def backward(ctx, grad):
        grads = [None if s is None or not need else grad.new_zeros(s)
                 for s, need in zip(ctx.shapes, ctx.needs_input_grad)]
        return (*grads, None, None, None, None)


# -------------------------------------------------------------------------- entry point
def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           stride: Union[int, Sequence[int]] = 1, padding: Union[int, Sequence[int], str] = 0,
           dilation: Union[int, Sequence[int]] = 1, groups: int = 1, activation: Optional[str] = None,
           backend: Optional[str] = None) -> torch.Tensor:
    """F.conv2d on the chosen backend, differentiable in input, weight and bias.
    activation="relu" fuses bias + ReLU into the kernel's epilogue."""
    input, weight, bias = _autocast(input, weight, bias)
    stride, pad, dilation, groups = _check(input, weight, bias, stride, padding, dilation, groups,
                                           activation)
    name = _dispatch.resolve("conv2d", input.device, backend)
    if name == "torch":
        y = F.conv2d(input, weight, bias, stride, padding, dilation, groups)
        return F.relu(y) if activation == "relu" else y
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    out_cl = _is_cl(x) or _weight_cl(weight)
    if x.shape[1] == 0:
        y = _NoInputChannels.apply(x, weight, bias, stride, pad, dilation, out_cl)
        return y.squeeze(0) if unbatched else y
    y = _OPS[name].conv2d_fwd(x, weight, bias, stride, pad, dilation, groups,
                              activation or "none", out_cl)
    return y.squeeze(0) if unbatched else y
