"""Activations (relu, leaky_relu, elu, sigmoid, tanh): backend choice, fake kernels,
autograd.

Ops per backend (same schemas):
  act_fwd(x, act, alpha) -> y                      y = f(x)
  act_fwd_(x!, act, alpha) -> ()                   x = f(x), in place
  act_bwd(grad, saved, act, alpha, is_result) -> dx
cpu/cuda: torch.ops.pydl.* (C++, csrc/cpu/activation.cpp, csrc/cuda/activation*.{cpp,cu});
triton:   torch.ops.pydl_triton.* (defined below, kernels in kernels/activation.py).

Autograd saves the output y for relu, sigmoid and tanh (their derivative is a function
of y), and the input x for out-of-place leaky_relu and elu, as torch does. In-place with
autograd goes through an autograd.Function that marks x dirty and saves the result (what
torch's relu_/elu_/leaky_relu_ do): torch.library cannot attach autograd to a mutating
op, and saving the result keeps the memory saving that inplace=True is for.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional

import torch
import torch.nn.functional as F

from .. import _dispatch
from ._util import (_BELOW_AUTOGRAD, _dual_level_active, check_like, check_tensor, custom_op,
                    dense, differentiable, empty_dense_like, like_layout, op_caller)

ACTS = ("relu", "leaky_relu", "elu", "sigmoid", "tanh")
_SAVES_INPUT = ("leaky_relu", "elu")  # out of place; everything else saves the output


# ------------------------------------------------------------------ Triton custom ops
if _dispatch._kernels is not None:
    from ..kernels import activation as _tk

    @custom_op("pydl_triton::act_fwd", mutates_args=())
    def _triton_act_fwd(x: torch.Tensor, act: str, alpha: float) -> torch.Tensor:
        x = dense(x)
        y = torch.empty_like(x)
        _tk.act_fwd(x, y, act, alpha)
        return y

    @custom_op("pydl_triton::act_fwd_", mutates_args=("x",))
    def _triton_act_fwd_(x: torch.Tensor, act: str, alpha: float) -> None:
        t = dense(x)
        _tk.act_fwd(t, t, act, alpha)
        if t is not x:
            x.copy_(t)

    @custom_op("pydl_triton::act_bwd", mutates_args=())
    def _triton_act_bwd(grad: torch.Tensor, saved: torch.Tensor, act: str, alpha: float,
                        is_result: bool) -> torch.Tensor:
        check_like(grad, "grad_output", saved, "saved", "act_bwd")  # as the C++ op does
        saved = dense(saved)
        grad = like_layout(grad, saved)
        dx = torch.empty_like(saved)
        _tk.act_bwd(grad, saved, dx, act, alpha, is_result)
        return dx


# ------------------------------------------------- fake kernels and autograd, both families
def _register(ns: str):
    """Fake kernels and autograd for one op namespace; returns the differentiable act_fwd
    and act_bwd."""
    @torch.library.register_fake(f"{ns}::act_fwd")
    def _(x, act, alpha):
        return empty_dense_like(x)

    @torch.library.register_fake(f"{ns}::act_fwd_")
    def _(x, act, alpha):
        return None

    @torch.library.register_fake(f"{ns}::act_bwd")
    def _(grad, saved, act, alpha, is_result):
        return empty_dense_like(saved)

    def bwd_setup(ctx, inputs, output):
        grad, saved, act, alpha, is_result = inputs
        ctx.act, ctx.alpha, ctx.is_result = act, alpha, is_result
        ctx.save_for_backward(grad, saved)

    def bwd_backward(ctx, gg):
        # act_bwd(g, s) = g * f'(s): linear in g, and f'(s) differentiated for s
        grad, saved = ctx.saved_tensors
        d_grad = bwd(gg, saved, ctx.act, ctx.alpha, ctx.is_result) if ctx.needs_input_grad[0] else None
        d_saved = None
        if ctx.needs_input_grad[1]:
            d_saved = _fprime_derivative(ctx.act, ctx.alpha, ctx.is_result, saved) * grad * gg
        return d_grad, d_saved, None, None, None

    def bwd_jvp(args, out, tangents):
        # forward mode of the same: d(g f'(s)) = dg f'(s) + g f''(s) ds
        grad, saved, act, alpha, is_result = args
        t_grad, t_saved = tangents[:2]
        t = None if t_grad is None else bwd(t_grad, saved, act, alpha, is_result)
        if t_saved is not None and act not in ("relu", "leaky_relu"):  # (f'' = 0 there)
            ts = _fprime_derivative(act, alpha, is_result, saved) * grad * t_saved
            t = ts if t is None else t + ts
        return t if t is not None else torch.zeros_like(out)

    # differentiable act_bwd: second derivatives (gradient penalties, gradgradcheck) are
    # right instead of silently zero
    bwd = differentiable(f"{ns}::act_bwd", bwd_setup, bwd_backward, bwd_jvp)

    def setup_context(ctx, inputs, output):
        x, act, alpha = inputs
        ctx.act, ctx.alpha = act, alpha
        ctx.is_result = act not in _SAVES_INPUT
        ctx.save_for_backward(output if ctx.is_result else x)

    def backward(ctx, grad):
        (saved,) = ctx.saved_tensors
        return bwd(grad, saved, ctx.act, ctx.alpha, ctx.is_result), None, None

    def jvp(args, out, tangents):  # forward mode: dy = f'(x) dx, by the same act_bwd
        x, act, alpha = args
        is_result = act not in _SAVES_INPUT
        return bwd(tangents[0], out if is_result else x, act, alpha, is_result)

    return differentiable(f"{ns}::act_fwd", setup_context, backward, jvp), bwd


_OPS = {}  # backend -> its ops act_fwd, act_fwd_, act_bwd (op_caller: no autograd)


def _op_namespace(ns: str) -> SimpleNamespace:
    return SimpleNamespace(**{o: op_caller(f"{ns}::{o}") for o in ("act_fwd", "act_fwd_", "act_bwd")})


_FWD = {}  # backend -> differentiable act_fwd
_BWD = {}  # backend -> differentiable act_bwd
if _dispatch._C is not None:
    _FWD["cpu"], _BWD["cpu"] = _register("pydl")
    _FWD["cuda"], _BWD["cuda"] = _FWD["cpu"], _BWD["cpu"]
    _OPS["cpu"] = _OPS["cuda"] = _op_namespace("pydl")
if _dispatch._kernels is not None:
    _FWD["triton"], _BWD["triton"] = _register("pydl_triton")
    _OPS["triton"] = _op_namespace("pydl_triton")


def _fprime_derivative(act: str, alpha: float, is_result: bool, s: torch.Tensor) -> torch.Tensor:
    """d f'(s) / ds, where f'(s) is the derivative act_bwd multiplies by, written from the
    saved tensor s (the output y when is_result, else the input x). This is autograd's
    formula for the second derivative (only double backward uses it), composed of torch's
    elementwise ops the way torch's own derivatives.yaml formulas are."""
    if act in ("relu", "leaky_relu"):  # piecewise constant slope
        return torch.zeros_like(s)
    if act == "elu":
        neg = s <= 0
        if is_result:  # f'(y) = y + alpha for y <= 0
            return neg.to(s.dtype)
        return torch.where(neg, alpha * torch.exp(s), torch.zeros_like(s))  # f'(x) = alpha e^x
    if act == "sigmoid":  # f'(y) = y (1 - y)
        return 1 - 2 * s
    return -2 * s  # tanh: f'(y) = 1 - y^2


def _inplace(ops, x, act, alpha) -> None:
    """x = act(x) in place, where no gradient is recorded (no input needs one, or inside
    _InplaceAct.forward): in eager mode below the autograd key, where torch.ops' autograd
    layer would take the call anyway (for a Triton op, through ~10 us of Python)."""
    if torch.compiler.is_compiling():
        ops.act_fwd_(x, act, alpha)
    else:
        with _BELOW_AUTOGRAD():
            ops.act_fwd_(x, act, alpha)


class _InplaceAct(torch.autograd.Function):
    """x = f(x) in place, differentiable: saves the result (x itself), like torch's relu_."""

    @staticmethod
    def forward(ctx, x, backend, act, alpha):
        _inplace(_OPS[backend], x, act, alpha)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        ctx.backend, ctx.act, ctx.alpha = backend, act, alpha
        return x

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        dx = _BWD[ctx.backend](grad, y, ctx.act, ctx.alpha, True)
        return dx, None, None, None


def _torch_reference(x, act, alpha, inplace):
    if act == "relu":
        return F.relu(x, inplace=inplace)
    if act == "leaky_relu":
        return F.leaky_relu(x, alpha, inplace=inplace)
    if act == "elu":
        return F.elu(x, alpha, inplace=inplace)
    if act == "sigmoid":
        return x.sigmoid_() if inplace else torch.sigmoid(x)
    return x.tanh_() if inplace else torch.tanh(x)


def act(x: torch.Tensor, kind: str, alpha: float = 0.0, inplace: bool = False,
        backend: Optional[str] = None) -> torch.Tensor:
    """y = kind(x) (relu, leaky_relu, elu, sigmoid, tanh; alpha = negative_slope or elu's
    alpha) on the chosen backend; differentiable. With inplace=True, x is overwritten and
    returned (as torch's inplace=True)."""
    if kind not in ACTS:
        raise ValueError(f"pydl.ops.act: kind must be one of {', '.join(ACTS)}; got {kind!r}")
    check_tensor(x, "input", kind)
    alpha = float(alpha)
    name = _dispatch.resolve(kind, x.device, backend)
    if name == "torch":
        return _torch_reference(x, kind, alpha, inplace)
    if not inplace:
        return _FWD[name](x, kind, alpha)
    needs_grad = torch.is_grad_enabled() and x.requires_grad
    if needs_grad:
        # torch rejects these too: the result cannot give the derivative back
        if kind == "leaky_relu" and alpha < 0:
            raise RuntimeError("pydl.leaky_relu: in-place leaky_relu with a negative slope "
                               "cannot be differentiated; use inplace=False")
        if kind == "elu" and alpha < 0:
            raise RuntimeError("pydl.elu: in-place elu with a negative alpha cannot be "
                               "differentiated; use inplace=False")
    if _dual_level_active() or (needs_grad and torch._C._are_functorch_transforms_active()):
        # Forward-mode AD (x may carry a tangent, which an update below autograd would leave
        # stale) and torch.func transforms (which cannot save an input an autograd.Function
        # overwrote and returned): the result is computed out of place (the same kernels,
        # their jvp and vmap rules) from a copy of x (which elu and leaky_relu save, and
        # copy_ then overwrites) and copied into x; copy_ carries the gradient and tangent
        return x.copy_(_FWD[name](x.clone(), kind, alpha))
    if needs_grad:
        return _InplaceAct.apply(x, name, kind, alpha)
    _inplace(_OPS[name], x, kind, alpha)
    return x
