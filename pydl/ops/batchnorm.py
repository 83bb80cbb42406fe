"""Batch normalization (+ fused activation and residual add): backend choice, fake
kernels, autograd, running statistics, and the cross-process SyncBatchNorm function.

Ops per backend (same schemas; x is (N, C, *), per-channel tensors (C,), statistics in
float32 -- float64 for float64 x):
  bn_stats(x) -> (mean, var)                                   per-channel, var biased
  bn_fwd_train(x, weight?, bias?, residual?, eps, act, alpha) -> (y, mean, var)
        statistics pass + normalize pass: y = act((x - mean) / sqrt(var + eps) * w + b [+ r])
  bn_fwd_eval(x, mean, var, weight?, bias?, residual?, eps, act, alpha) -> y   one pass
  bn_bwd_reduce(grad, x, mean, var, y?, eps, act, alpha) -> (sum_dz, sum_dz_xhat)
  bn_bwd_elemt(grad, x, mean, var, weight?, y?, sum_dz?, sum_dz_xhat?, eps, inv_count,
               act, alpha, want_dz) -> (dx, dz | empty)
  bn_bwd(grad, x, mean, var, weight?, y?, eps, act, alpha, want_dz)
        -> (dx, dz | empty, sum_dz, sum_dz_xhat)    the training backward in one op:
        bn_bwd_reduce, then bn_bwd_elemt with inv_count = 1 / values per channel
act is "none" | "relu" | "leaky_relu" (alpha = negative_slope >= 0), dz = grad * act'(y).
cpu/cuda: torch.ops.pydl.* (csrc/cpu/batchnorm.cpp, csrc/cuda/batchnorm*.{cpp,cu});
triton:   torch.ops.pydl_triton.* (defined below, kernels in kernels/batchnorm.py).

Running statistics are updated here, in Python, from the batch statistics the op
returns, with in-place torch arithmetic on the small (C,) buffers (as torch's own
formula: running = (1 - momentum) * running + momentum * stat, the variance unbiased by
n / (n - 1)); the kernels stay pure functions, which keeps opcheck and torch.compile
simple. The per-element work -- statistics, normalization, gradients -- is all in the
kernels. SyncBatchNorm likewise combines the per-process (count, mean, M2) triples
gathered by torch.distributed in Python on (world_size, C) tensors, in rank order
(deterministic), with Chan's formula.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional

import torch
import torch.nn.functional as F

from .. import _dispatch
from ._util import _no_zero_grads, check_tensor, custom_op, differentiable, like_layout

ACTS = ("none", "relu", "leaky_relu")


def _stat_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _channels_last(x: torch.Tensor) -> bool:
    return (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)) or \
        (x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d))


def bn_dense(x: torch.Tensor) -> torch.Tensor:
    """The two layouts the kernels walk: contiguous (channel planes) or channels-last
    (channel fastest); anything else is made contiguous. Mirrors pydl::bn_dense."""
    return x if x.is_contiguous() or _channels_last(x) else x.contiguous()


def _empty_like_x(x: torch.Tensor) -> torch.Tensor:
    """What the kernels allocate for an output shaped like x (fake kernels use it)."""
    return torch.empty_like(x) if x.is_contiguous() or _channels_last(x) else \
        torch.empty_like(x, memory_format=torch.contiguous_format)


# ------------------------------------------------------------------ Triton custom ops
if _dispatch._kernels is not None:
    from ..kernels import batchnorm as _tk

    def _t_channel(t, x):
        return None if t is None else t.to(_stat_dtype(x)).contiguous()

    @custom_op("pydl_triton::bn_stats", mutates_args=())
    def _triton_bn_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = bn_dense(x)
        mean = x.new_empty((x.size(1),), dtype=_stat_dtype(x))
        var = torch.empty_like(mean)
        _tk.bn_stats(x, mean, var)
        return mean, var

    @custom_op("pydl_triton::bn_fwd_train", mutates_args=())
    def _triton_bn_fwd_train(x: torch.Tensor, weight: Optional[torch.Tensor],
                             bias: Optional[torch.Tensor], residual: Optional[torch.Tensor],
                             eps: float, act: str, alpha: float
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = bn_dense(x)
        mean = x.new_empty((x.size(1),), dtype=_stat_dtype(x))
        var = torch.empty_like(mean)
        _tk.bn_stats(x, mean, var)
        y = torch.empty_like(x)
        r = None if residual is None else like_layout(residual, x)
        _tk.bn_normalize(x, mean, var, _t_channel(weight, x), _t_channel(bias, x), r, y, eps,
                         act, alpha)
        return y, mean, var

    @custom_op("pydl_triton::bn_fwd_eval", mutates_args=())
    def _triton_bn_fwd_eval(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                            weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                            residual: Optional[torch.Tensor], eps: float, act: str,
                            alpha: float) -> torch.Tensor:
        x = bn_dense(x)
        y = torch.empty_like(x)
        r = None if residual is None else like_layout(residual, x)
        _tk.bn_normalize(x, _t_channel(mean, x), _t_channel(var, x), _t_channel(weight, x),
                         _t_channel(bias, x), r, y, eps, act, alpha)
        return y

    @custom_op("pydl_triton::bn_bwd_reduce", mutates_args=())
    def _triton_bn_bwd_reduce(grad: torch.Tensor, x: torch.Tensor, mean: torch.Tensor,
                              var: torch.Tensor, y: Optional[torch.Tensor], eps: float, act: str,
                              alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        x = bn_dense(x)
        grad = like_layout(grad, x)
        y = None if y is None else like_layout(y, x)
        sum_dz = x.new_empty((x.size(1),), dtype=_stat_dtype(x))
        sum_dzxh = torch.empty_like(sum_dz)
        _tk.bn_bwd_reduce(grad, x, y, _t_channel(mean, x), _t_channel(var, x), eps, act, alpha,
                          sum_dz, sum_dzxh)
        return sum_dz, sum_dzxh

    @custom_op("pydl_triton::bn_bwd_elemt", mutates_args=())
    def _triton_bn_bwd_elemt(grad: torch.Tensor, x: torch.Tensor, mean: torch.Tensor,
                             var: torch.Tensor, weight: Optional[torch.Tensor],
                             y: Optional[torch.Tensor], sum_dz: Optional[torch.Tensor],
                             sum_dz_xhat: Optional[torch.Tensor], eps: float, inv_count: float,
                             act: str, alpha: float, want_dz: bool
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        x = bn_dense(x)
        grad = like_layout(grad, x)
        y = None if y is None else like_layout(y, x)
        dx = torch.empty_like(x)
        dz = torch.empty_like(x) if want_dz else x.new_empty((0,))
        _tk.bn_bwd_elemt(grad, x, y, _t_channel(mean, x), _t_channel(var, x),
                         _t_channel(weight, x), _t_channel(sum_dz, x), _t_channel(sum_dz_xhat, x),
                         eps, inv_count, act, alpha, dx, dz if want_dz else None)
        return dx, dz

    @custom_op("pydl_triton::bn_bwd", mutates_args=())
    def _triton_bn_bwd(grad: torch.Tensor, x: torch.Tensor, mean: torch.Tensor,
                       var: torch.Tensor, weight: Optional[torch.Tensor],
                       y: Optional[torch.Tensor], eps: float, act: str, alpha: float,
                       want_dz: bool
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x = bn_dense(x)
        if _count(x) == 0:
            raise RuntimeError("pydl: batch_norm backward: the training backward needs values "
                               "in every channel (an empty batch has no batch statistics)")
        grad = like_layout(grad, x)
        y = None if y is None else like_layout(y, x)
        mean, var = _t_channel(mean, x), _t_channel(var, x)
        sum_dz = x.new_empty((x.size(1),), dtype=_stat_dtype(x))
        sum_dzxh = torch.empty_like(sum_dz)
        _tk.bn_bwd_reduce(grad, x, y, mean, var, eps, act, alpha, sum_dz, sum_dzxh)
        dx = torch.empty_like(x)
        dz = torch.empty_like(x) if want_dz else x.new_empty((0,))
        _tk.bn_bwd_elemt(grad, x, y, mean, var, _t_channel(weight, x), sum_dz, sum_dzxh, eps,
                         1.0 / _count(x), act, alpha, dx, dz if want_dz else None)
        return dx, dz, sum_dz, sum_dzxh


# ------------------------------------------------------------------ second derivatives
# The backward ops are differentiable too, so gradients of gradients -- gradient penalties,
# MAML's outer step through an inner SGD step, Hessian-vector products, torch.func.jacrev of
# jacrev -- go through batch norm as they do through torch's. The first derivatives stay on
# the kernels; these formulas run only in a double backward and are written, as torch's own
# (batchnorm_double_backward in FunctionsManual.cpp), in torch's tensor arithmetic: a few
# per-channel reductions and elementwise terms, differentiable again for higher orders.
#
# Notation, per channel over its n values: E[.] the mean, r = 1 / sqrt(var + eps),
# xh = (x - mean) * r, dz = grad * act'(y) (the activation's slope, read from the output's
# sign; piecewise constant, so it has no derivative of its own), w the weight (1 if none).
# The backward ops compute
#   training (bn_bwd):  dx = w r (dz - E[dz] - xh E[dz xh]),  sum_dz = n E[dz],
#                       sum_dz_xhat = n E[dz xh],  dz (the residual's gradient)
#   with given statistics (bn_bwd_reduce, bn_bwd_elemt): sum_dz, sum_dz_xhat as above and
#                       dx = w r (dz - k sum_dz - xh k sum_dz_xhat), k = inv_count
#                       (0 and no sums in evaluation)
# and their backward gets A (the gradient reaching dx), G (reaching dz), a_b, a_w (reaching
# sum_dz and sum_dz_xhat: the bias' and weight's gradients) and returns the gradients for
# grad, x and weight. In training mean and var are x's batch statistics, so x's gradient
# includes the paths through them; bn_bwd's backward recomputes them from x (the same values
# as the saved ones, but differentiable: a third derivative stays right).

def _csum(t: torch.Tensor) -> torch.Tensor:
    """Per-channel sum of an (N, C, *) tensor, kept broadcastable against it."""
    return t.sum([0] + list(range(2, t.dim())), keepdim=True)


def _per_channel(t: Optional[torch.Tensor], x: torch.Tensor, dtype) -> Optional[torch.Tensor]:
    """A (C,) tensor viewed to broadcast against x, in `dtype`."""
    return None if t is None else t.to(dtype).view((1, -1) + (1,) * (x.dim() - 2))


def _slope(y: Optional[torch.Tensor], act: str, alpha: float, dtype):
    """act'(z) as the kernels read it from the output y: 1 where y > 0, else alpha (0 for
    relu); None for no activation."""
    if act == "none":
        return None
    pos = (y > 0).to(dtype)
    return pos if act == "relu" else pos * (1.0 - alpha) + alpha


def _sum_c(t: Optional[torch.Tensor], like: Optional[torch.Tensor]):
    """A broadcast (1, C, 1, ..) gradient summed back to (C,) in `like`'s dtype."""
    return None if t is None or like is None else t.reshape(-1).to(like.dtype)


def _masked(t: torch.Tensor, m: Optional[torch.Tensor], sd) -> torch.Tensor:
    """t in `sd` times the activation's slope m (dz from grad): as is without one."""
    t = t.to(sd)
    return t if m is None else t * m


def _batch_stats(x: torch.Tensor, eps: float):
    """(sd, n, E, xh, r) from x's batch statistics, recomputed in differentiable arithmetic."""
    sd = _stat_dtype(x)
    n = _count(x)
    E = lambda t: _csum(t) / n  # noqa: E731 (the E[.] of the notation)
    xf = x.to(sd)
    c = xf - E(xf)
    r = torch.rsqrt(E(c * c) + eps)
    return sd, n, E, c * r, r


def _given_stats(x, mean, var, y, eps: float, act: str, alpha: float):
    """(sd, r, xh, slope) for the ops that take mean and var as given inputs (running
    statistics, which torch does not differentiate: they get no gradient or tangent here
    either)."""
    sd = _stat_dtype(x)
    r = torch.rsqrt(_per_channel(var, x, sd) + eps)
    xh = (x.to(sd) - _per_channel(mean, x, sd)) * r
    return sd, r, xh, _slope(y, act, alpha, sd)


def _elemt_proj(dz, xh, s1, s2, k, x, sd):
    """dz - k sum_dz - xh k sum_dz_xhat (a missing sum: no term), bn_bwd_elemt's bracket."""
    if s1 is not None:
        dz = dz - k * _per_channel(s1, x, sd)
    if s2 is not None:
        dz = dz - k * xh * _per_channel(s2, x, sd)
    return dz


def _bn_bwd_second(ctx, A, G, a_b, a_w):
    """bn_bwd's backward: the training formulas above differentiated (with mean and var
    the batch statistics of x)."""
    grad, x, _mean, _var, weight, y = ctx.saved_tensors
    # (mean and var get no gradient of their own: they are x's, and x's gradient has it)
    need_g, need_x, _, _, need_w = ctx.needs_input_grad[:5]
    sd, n, E, xh, r = _batch_stats(x, ctx.eps)
    m = _slope(y, ctx.act, ctx.alpha, sd)
    dz = _masked(grad, m, sd)
    w = _per_channel(weight, x, sd)
    wr = r if w is None else w * r
    A = A.to(sd)
    Ed, Eq = E(dz), E(dz * xh)
    EA, EAx = E(A), E(A * xh)
    a_b, a_w = _per_channel(a_b, x, sd), _per_channel(a_w, x, sd)
    d_grad = d_x = d_w = None
    if need_g:
        g_dz = wr * (A - EA - xh * EAx) + a_b + a_w * xh
        if ctx.want_dz:
            g_dz = g_dz + G.to(sd)
        d_grad = _masked(g_dz, m, sd).to(grad.dtype)
    if need_x:
        # through xh and r, both functions of x (d r / d x_i = -(r^2 / n) xh_i)
        dzc = dz - Ed
        t = -xh * (E(A * dz) - EA * Ed) + 3 * xh * Eq * EAx - dzc * EAx - Eq * (A - EA)
        t = r * r * t if w is None else w * r * r * t
        d_x = (t + a_w * r * (dzc - xh * Eq)).to(x.dtype)
    if need_w:
        d_w = _sum_c(_csum(A * r * (dz - Ed - xh * Eq)), weight)
    return d_grad, d_x, None, None, d_w, None, None, None, None, None


def _bn_bwd_reduce_second(ctx, a_b, a_w):
    """bn_bwd_reduce's backward: sum_dz = sum(dz), sum_dz_xhat = sum(dz xh), mean and var
    given."""
    grad, x, mean, var, y = ctx.saved_tensors
    sd, r, xh, m = _given_stats(x, mean, var, y, ctx.eps, ctx.act, ctx.alpha)
    a_b, a_w = _per_channel(a_b, x, sd), _per_channel(a_w, x, sd)
    d_grad = d_x = None
    if ctx.needs_input_grad[0]:
        g_dz = a_b + a_w * xh
        d_grad = _masked(g_dz, m, sd).to(grad.dtype)
    if ctx.needs_input_grad[1]:
        d_x = (a_w * r * _masked(grad, m, sd)).to(x.dtype)
    return d_grad, d_x, None, None, None, None, None, None


def _bn_bwd_elemt_second(ctx, A, G):
    """bn_bwd_elemt's backward: dx = w r (dz - k sum_dz - xh k sum_dz_xhat), mean, var
    given, sum_dz and sum_dz_xhat inputs of their own."""
    grad, x, mean, var, weight, y, s1, s2 = ctx.saved_tensors
    sd, r, xh, m = _given_stats(x, mean, var, y, ctx.eps, ctx.act, ctx.alpha)
    k = ctx.inv_count
    w = _per_channel(weight, x, sd)
    wr = r if w is None else w * r
    A = A.to(sd)
    s2c = _per_channel(s2, x, sd)
    need = ctx.needs_input_grad
    d_grad = d_x = d_w = d_s1 = d_s2 = None
    if need[0]:
        g_dz = wr * A
        if ctx.want_dz:
            g_dz = g_dz + G.to(sd)
        d_grad = _masked(g_dz, m, sd).to(grad.dtype)
    if need[1] and s2 is not None:  # xh's own dependence on x (r is given)
        d_x = (-k * wr * r * s2c * A).to(x.dtype)
    if need[4]:
        d_w = _sum_c(_csum(A * r * _elemt_proj(_masked(grad, m, sd), xh, s1, s2, k, x, sd)),
                     weight)
    if need[6]:
        d_s1 = _sum_c(-k * _csum(wr * A), s1)
    if need[7]:
        d_s2 = _sum_c(-k * _csum(wr * A * xh), s2)
    return d_grad, d_x, None, None, d_w, None, d_s1, d_s2, None, None, None, None, None


def _bn_stats_second(ctx, a_m, a_v):
    """bn_stats' backward: mean = E[x], var = E[(x - mean)^2] (biased)."""
    (x,) = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return (None,)
    n = _count(x)
    if n == 0:  # no values: nothing to differentiate (the statistics are NaN)
        return (torch.zeros_like(x),)
    sd = _stat_dtype(x)
    xf = x.to(sd)
    c = xf - _csum(xf) / n
    d_x = (_per_channel(a_m, x, sd) + 2.0 * _per_channel(a_v, x, sd) * c) / n
    return (d_x.to(x.dtype),)


# ------------------------------------------------------------------------- forward mode
# jvp formulas (torch.func.jvp, jacfwd, hessian = jacfwd of jacrev; torch.autograd.forward_ad):
# the tangents of the outputs from those of the inputs (written t.), in the notation above.
# In training mean and var are x's batch statistics, recomputed from x here as in the
# second derivatives, whose tangents are
#   t_mean = E[tx],  t_r = -r^2 E[xh tx],  t_xh = r (tx - E[tx] - xh E[xh tx])
# and the op's statistics outputs, like their gradients, get none (non-differentiable).

def _tangent(t, like):
    return torch.zeros_like(like) if t is None else t


def _batch_stats_jvp(x, tx, eps):
    """(sd, n, E, xh, r, t_xh, t_r) for x's batch statistics and the tangent tx."""
    sd, n, E, xh, r = _batch_stats(x, eps)
    tx = _tangent(tx, x).to(sd)
    Ex = E(xh * tx)
    return sd, n, E, xh, r, r * (tx - E(tx) - xh * Ex), -r * r * Ex


def _output_tangent(x, y, xh, t_xh, w, tw, tb, tres, act, alpha, sd):
    """t_y = act'(z) (w t_xh + tw xh + tb + t_res), for z = w xh + b + res, y = act(z)."""
    tz = t_xh if w is None else _per_channel(w, x, sd) * t_xh
    if tw is not None:
        tz = tz + _per_channel(tw, x, sd) * xh
    if tb is not None:
        tz = tz + _per_channel(tb, x, sd)
    if tres is not None:
        tz = tz + tres.to(sd)
    m = _slope(y, act, alpha, sd)
    return _masked(tz, m, sd).to(y.dtype)


def _bn_fwd_train_jvp(args, out, tangents):
    """y = act(w xh + b + res): t_y = act'(z) (tw xh + w t_xh + tb + t_res)."""
    x, w, b, res, eps, act, alpha = args
    tx, tw, tb, tres = tangents[:4]
    y = out[0]
    sd, n, E, xh, r, t_xh, _ = _batch_stats_jvp(x, tx, eps)
    return _output_tangent(x, y, xh, t_xh, w, tw, tb, tres, act, alpha, sd), None, None


def _bn_fwd_eval_jvp(args, y, tangents):
    """The same with given statistics: t_xh = r tx. (The running statistics have no
    tangent: torch does not differentiate them, forward or backward.)"""
    x, mean, var, w, b, res, eps, act, alpha = args
    tx, _, _, tw, tb, tres = tangents[:6]
    sd, r, xh, _ = _given_stats(x, mean, var, None, eps, "none", 0.0)
    t_xh = r * _tangent(tx, x).to(sd)
    return _output_tangent(x, y, xh, t_xh, w, tw, tb, tres, act, alpha, sd)


def _bn_stats_jvp(args, out, tangents):
    """mean = E[x], var = E[(x - mean)^2]: t_mean = E[tx], t_var = 2 E[(x - mean) tx]."""
    (x,), (tx,) = args, tangents[:1]
    n = _count(x)
    if n == 0:
        return torch.zeros_like(out[0]), torch.zeros_like(out[1])
    sd = out[0].dtype
    xf, tx = x.to(sd), tx.to(sd)
    c = xf - _csum(xf) / n
    return (_csum(tx) / n).reshape(-1), (2.0 * _csum(c * tx) / n).reshape(-1)


def _bn_bwd_jvp(args, out, tangents):
    """The training backward's tangents: with P(v) = v - E[v] - xh E[v xh],
    dx = w r P(dz) gives t_dx = tw r P(dz) + w t_r P(dz) + w r (t_dz - E[t_dz] - t_xh E[dz xh]
    - xh E[t_dz xh + dz t_xh]); sum_dz, sum_dz_xhat and dz likewise."""
    grad, x, mean, var, w, y, eps, act, alpha, want_dz = args
    tg, tx, _, _, tw = tangents[:5]  # (mean's and var's tangents follow from x's)
    sd, n, E, xh, r, t_xh, t_r = _batch_stats_jvp(x, tx, eps)
    m = _slope(y, act, alpha, sd)
    dz, t_dz = _masked(grad, m, sd), _masked(_tangent(tg, grad), m, sd)
    Eq = E(dz * xh)
    P = dz - E(dz) - xh * Eq
    t_Eq = E(t_dz * xh + dz * t_xh)
    t_P = t_dz - E(t_dz) - t_xh * Eq - xh * t_Eq
    wc = None if w is None else _per_channel(w, x, sd)
    t_dx = t_r * P + r * t_P
    if wc is not None:
        t_dx = wc * t_dx
    if tw is not None:
        t_dx = t_dx + _per_channel(tw, x, sd) * r * P
    dx, dz_out, s1, s2 = out
    return (t_dx.to(dx.dtype), t_dz.to(dz_out.dtype) if want_dz else torch.zeros_like(dz_out),
            _csum(t_dz).reshape(-1).to(s1.dtype), (n * t_Eq).reshape(-1).to(s2.dtype))


def _bn_bwd_reduce_jvp(args, out, tangents):
    """sum_dz = sum(dz), sum_dz_xhat = sum(dz xh), mean and var given (constant)."""
    grad, x, mean, var, y, eps, act, alpha = args
    tg, tx = tangents[:2]
    sd, r, xh, m = _given_stats(x, mean, var, y, eps, act, alpha)
    t_dz = _masked(_tangent(tg, grad), m, sd)
    t_s2 = t_dz * xh
    if tx is not None:
        t_s2 = t_s2 + _masked(grad, m, sd) * r * tx.to(sd)
    return _csum(t_dz).reshape(-1).to(out[0].dtype), _csum(t_s2).reshape(-1).to(out[1].dtype)


def _bn_bwd_elemt_jvp(args, out, tangents):
    """dx = w r (dz - k sum_dz - xh k sum_dz_xhat), mean and var given (constant)."""
    grad, x, mean, var, w, y, s1, s2, eps, k, act, alpha, want_dz = args
    tg, tx, _, _, tw, _, ts1, ts2 = tangents[:8]
    sd, r, xh, m = _given_stats(x, mean, var, y, eps, act, alpha)
    t_dz = _masked(_tangent(tg, grad), m, sd)
    # the bracket's tangent: the sums' own tangents, and xh's (r tx) times k sum_dz_xhat
    t_proj = _elemt_proj(t_dz, xh, ts1 if s1 is not None else None,
                         ts2 if s2 is not None else None, k, x, sd)
    if s2 is not None and tx is not None:
        t_proj = t_proj - k * r * tx.to(sd) * _per_channel(s2, x, sd)
    t_dx = r * t_proj if w is None else _per_channel(w, x, sd) * r * t_proj
    if tw is not None:
        proj = _elemt_proj(_masked(grad, m, sd), xh, s1, s2, k, x, sd)
        t_dx = t_dx + _per_channel(tw, x, sd) * r * proj
    dx, dz_out = out
    return t_dx.to(dx.dtype), (t_dz.to(dz_out.dtype) if want_dz else torch.zeros_like(dz_out))


# ------------------------------------------------- fake kernels and autograd, both families
def _count(x: torch.Tensor) -> int:
    """Values per channel: N * prod(spatial)."""
    return x.numel() // x.size(1) if x.size(1) else 0


def _register(ns: str) -> SimpleNamespace:
    """Fake kernels and autograd for one op namespace; returns its ops, the two forwards
    as differentiable callables (pydl.ops._util.differentiable: the eager fast path)."""
    def stats_like(x):
        return x.new_empty((x.size(1),), dtype=_stat_dtype(x))

    @torch.library.register_fake(f"{ns}::bn_stats")
    def _(x):
        return stats_like(x), stats_like(x)

    @torch.library.register_fake(f"{ns}::bn_fwd_train")
    def _(x, weight, bias, residual, eps, act, alpha):
        return _empty_like_x(x), stats_like(x), stats_like(x)

    @torch.library.register_fake(f"{ns}::bn_fwd_eval")
    def _(x, mean, var, weight, bias, residual, eps, act, alpha):
        return _empty_like_x(x)

    @torch.library.register_fake(f"{ns}::bn_bwd_reduce")
    def _(grad, x, mean, var, y, eps, act, alpha):
        return stats_like(x), stats_like(x)

    @torch.library.register_fake(f"{ns}::bn_bwd_elemt")
    def _(grad, x, mean, var, weight, y, sum_dz, sum_dz_xhat, eps, inv_count, act, alpha,
          want_dz):
        return _empty_like_x(x), (_empty_like_x(x) if want_dz else x.new_empty((0,)))

    @torch.library.register_fake(f"{ns}::bn_bwd")
    def _(grad, x, mean, var, weight, y, eps, act, alpha, want_dz):
        return (_empty_like_x(x), (_empty_like_x(x) if want_dz else x.new_empty((0,))),
                stats_like(x), stats_like(x))

    def _grads(ctx, gy, x, w, mean, var, y, train):
        """(dx, dweight, dbias, dresidual) for the saved forward; None where not needed."""
        need_x, need_w, need_b, need_r = ctx.needs_input_grad_4
        act, alpha, eps = ctx.act, ctx.alpha, ctx.eps
        fused = act != "none"
        want_dz = need_r and fused
        n = _count(x)
        sum_dz = sum_dzxh = dx = dr = None
        if train and n > 0 and (need_x or want_dz or torch.is_grad_enabled()):
            # the common case: both passes in one op (on the CPU, per channel while the
            # channel's planes are in cache). Also when this backward is itself recorded
            # (create_graph=True): bn_bwd's derivative follows x through the batch
            # statistics, bn_bwd_reduce's takes them as given
            dx, dz, sum_dz, sum_dzxh = lib.bn_bwd(gy, x, mean, var, w, y, eps, act, alpha,
                                                  want_dz)
        else:
            if n == 0:  # empty batch: zero parameter gradients, as torch (stats are NaN)
                sum_dz, sum_dzxh = torch.zeros_like(mean), torch.zeros_like(mean)
            elif train or need_w or need_b:
                sum_dz, sum_dzxh = lib.bn_bwd_reduce(gy, x, mean, var, y, eps, act, alpha)
            if need_x or want_dz:
                dx, dz = lib.bn_bwd_elemt(gy, x, mean, var, w, y, sum_dz if train else None,
                                          sum_dzxh if train else None, eps,
                                          1.0 / n if n else 0.0, act, alpha, want_dz)
        if want_dz:
            dr = dz
        if need_r and not fused:
            dr = gy
        dw = sum_dzxh.to(w.dtype) if need_w else None
        db = sum_dz.to(ctx.bias_dtype) if need_b else None
        return (dx if need_x else None), dw, db, dr

    # training: inputs (x, weight, bias, residual, eps, act, alpha), outputs (y, mean, var)
    def train_setup(ctx, inputs, output):
        x, w, b, r, eps, act, alpha = inputs
        y, mean, var = output
        ctx.eps, ctx.act, ctx.alpha = eps, act, alpha
        ctx.bias_dtype = b.dtype if b is not None else None
        ctx.needs_input_grad_4 = ctx.needs_input_grad[:4]
        ctx.save_for_backward(x, w, mean, var, y if act != "none" else None)
        _no_zero_grads(ctx, mean, var)

    def train_backward(ctx, gy, gmean, gvar):
        if gy is None:  # y was not used: no gradient flows
            return (None,) * 7
        x, w, mean, var, y = ctx.saved_tensors
        dx, dw, db, dr = _grads(ctx, gy, x, w, mean, var, y, True)
        return dx, dw, db, dr, None, None, None

    # The statistics and backward pieces are differentiable too (second derivatives: see
    # _bn_bwd_second and the notes above it).
    def stats_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    def bwd_setup(ctx, inputs, output):
        grad, x, mean, var, weight, y, eps, act, alpha, want_dz = inputs
        ctx.eps, ctx.act, ctx.alpha, ctx.want_dz = eps, act, alpha, want_dz
        ctx.save_for_backward(grad, x, mean, var, weight, y)

    def reduce_setup(ctx, inputs, output):
        grad, x, mean, var, y, eps, act, alpha = inputs
        ctx.eps, ctx.act, ctx.alpha = eps, act, alpha
        ctx.save_for_backward(grad, x, mean, var, y)

    def elemt_setup(ctx, inputs, output):
        grad, x, mean, var, weight, y, s1, s2, eps, inv_count, act, alpha, want_dz = inputs
        ctx.eps, ctx.inv_count, ctx.act, ctx.alpha, ctx.want_dz = eps, inv_count, act, alpha, want_dz
        ctx.save_for_backward(grad, x, mean, var, weight, y, s1, s2)

    lib = SimpleNamespace(
        bn_stats=differentiable(f"{ns}::bn_stats", stats_setup, _bn_stats_second, _bn_stats_jvp),
        bn_bwd=differentiable(f"{ns}::bn_bwd", bwd_setup, _bn_bwd_second, _bn_bwd_jvp),
        bn_bwd_reduce=differentiable(f"{ns}::bn_bwd_reduce", reduce_setup, _bn_bwd_reduce_second,
                                     _bn_bwd_reduce_jvp),
        bn_bwd_elemt=differentiable(f"{ns}::bn_bwd_elemt", elemt_setup, _bn_bwd_elemt_second,
                                    _bn_bwd_elemt_jvp),
        bn_fwd_train=differentiable(f"{ns}::bn_fwd_train", train_setup, train_backward,
                                    _bn_fwd_train_jvp))

    # eval: inputs (x, mean, var, weight, bias, residual, eps, act, alpha)
    def eval_setup(ctx, inputs, output):
        x, mean, var, w, b, r, eps, act, alpha = inputs
        ctx.eps, ctx.act, ctx.alpha = eps, act, alpha
        ctx.bias_dtype = b.dtype if b is not None else None
        ng = ctx.needs_input_grad
        ctx.needs_input_grad_4 = (ng[0], ng[3], ng[4], ng[5])
        ctx.save_for_backward(x, w, mean, var, output if act != "none" else None)

    def eval_backward(ctx, gy):
        x, w, mean, var, y = ctx.saved_tensors
        dx, dw, db, dr = _grads(ctx, gy, x, w, mean, var, y, False)
        return dx, None, None, dw, db, dr, None, None, None

    lib.bn_fwd_eval = differentiable(f"{ns}::bn_fwd_eval", eval_setup, eval_backward,
                                     _bn_fwd_eval_jvp)
    return lib


_OPS = {}  # backend -> its bn_* ops (see _register)
if _dispatch._C is not None:
    _OPS["cpu"] = _OPS["cuda"] = _register("pydl")
if _dispatch._kernels is not None:
    _OPS["triton"] = _register("pydl_triton")


# ----------------------------------------------------------------------- argument checks
def _check_channel(t, name: str, C: int, x: torch.Tensor, op: str) -> None:
    if t is None:
        return
    check_tensor(t, name, op)
    if t.dim() != 1 or t.numel() != C:
        # RuntimeError, as torch raises for this
        raise RuntimeError(f"pydl.{op}: {name} should contain {C} elements (one per channel of "
                           f"input of shape {tuple(x.shape)}), got shape {tuple(t.shape)}")
    if t.device != x.device:
        raise RuntimeError(f"pydl.{op}: {name} is on {t.device} but input is on {x.device}")


def _check_args(op, input, running_mean, running_var, weight, bias, residual, act, alpha):
    check_tensor(input, "input", op)
    if input.dim() < 2:
        raise ValueError(f"pydl.{op}: input must have at least 2 dimensions (N, C, ...), got "
                         f"shape {tuple(input.shape)}")
    C = input.size(1)
    for t, name in ((running_mean, "running_mean"), (running_var, "running_var"),
                    (weight, "weight"), (bias, "bias")):
        _check_channel(t, name, C, input, op)
    if residual is not None:
        check_tensor(residual, "residual", op)
        if residual.shape != input.shape or residual.dtype != input.dtype or \
                residual.device != input.device:
            raise ValueError(f"pydl.{op}: residual must match input's shape, dtype and device "
                             f"({tuple(input.shape)}, {input.dtype}, {input.device}); got "
                             f"({tuple(residual.shape)}, {residual.dtype}, {residual.device})")
    if act not in ACTS:
        raise ValueError(f"pydl.{op}: act must be one of {', '.join(map(repr, ACTS))}; got {act!r}")
    if act == "leaky_relu" and alpha < 0:
        # the fused backward reads the derivative from the output's sign (like torch's
        # in-place leaky_relu, which refuses a negative slope for the same reason)
        raise ValueError(f"pydl.{op}: negative_slope must be >= 0 for the fused leaky_relu, "
                         f"got {alpha}")


def verify_batch_size(input: torch.Tensor) -> None:
    """torch's check: training needs more than one value per channel."""
    size = input.size()
    n = size[0]
    for s in size[2:]:
        n *= s
    if n == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input "
                         f"size {size}")


def update_running_stats(running_mean, running_var, mean, var, count: int,
                         momentum: float) -> None:
    """running = (1 - momentum) * running + momentum * batch, the batch variance made
    unbiased (n / (n - 1)), in place on the (C,) buffers: torch's formula, computed as
    running.lerp_(batch, momentum) for both buffers in one foreach launch (with the
    unbiasing product, two small kernels instead of five: on a GPU each costs host time,
    and a ResNet-50 step has 53 batch norms). No autograd graph is recorded: the batch
    statistics are non-differentiable outputs and the buffers need no gradient."""
    bufs, stats = [], []
    if running_mean is not None:
        bufs.append(running_mean)
        stats.append(mean if mean.dtype == running_mean.dtype else mean.to(running_mean.dtype))
    if running_var is not None:
        unbias = count / (count - 1) if count > 1 else float("inf")
        v = var * unbias
        stats.append(v if v.dtype == running_var.dtype else v.to(running_var.dtype))
        bufs.append(running_var)
    if bufs and torch._C._are_functorch_transforms_active():
        # under torch.func transforms: (1 - momentum) * buf + momentum * stat per buffer, as
        # torch's kernels write it (the foreach lerp has no vmap rule, lerp_ a slow one).
        # Batched buffers (a vmapped ensemble: stack_module_state) take their batch's
        # statistics; one shared buffer cannot take per-sample ones, and vmap refuses
        try:
            with torch.no_grad():
                for buf, st in zip(bufs, stats):
                    buf.mul_(1.0 - momentum).add_(st.detach(), alpha=momentum)
        except RuntimeError as e:
            # torch.func.grad refuses to mutate a captured buffer (as for torch's batch norm);
            # vmap, a per-sample statistic in one shared buffer
            raise RuntimeError(
                f"pydl.batch_norm: the running statistics cannot be updated here ({e}). Under "
                "torch.vmap they must be batched like the input (stack_module_state); as with "
                "torch, else use track_running_stats=False, eval mode, or "
                "torch.func.replace_all_batch_norm_modules_(model)") from e
    elif bufs:
        if mean.requires_grad or var.requires_grad:  # not from pydl's ops; stay safe
            with torch.no_grad():
                torch._foreach_lerp_(bufs, [t.detach() for t in stats], momentum)
        else:
            torch._foreach_lerp_(bufs, stats, momentum)


def _torch_reference(input, running_mean, running_var, weight, bias, training, momentum, eps,
                     residual, act, alpha):
    y = F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    if residual is not None:
        y = y + residual
    if act == "relu":
        y = F.relu(y)
    elif act == "leaky_relu":
        y = F.leaky_relu(y, alpha)
    return y


def batch_norm(input: torch.Tensor, running_mean: Optional[torch.Tensor],
               running_var: Optional[torch.Tensor], weight: Optional[torch.Tensor] = None,
               bias: Optional[torch.Tensor] = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, residual: Optional[torch.Tensor] = None,
               act: str = "none", alpha: float = 0.0,
               backend: Optional[str] = None) -> torch.Tensor:
    """torch.nn.functional.batch_norm, optionally followed by `+ residual` and an
    activation, on the chosen backend; differentiable in input, weight, bias, residual.
    In training the running statistics (when given) are updated in place."""
    op = "batch_norm"
    alpha = float(alpha)
    _check_args(op, input, running_mean, running_var, weight, bias, residual, act, alpha)
    if training:
        verify_batch_size(input)
    elif running_mean is None or running_var is None:
        raise RuntimeError(f"pydl.{op}: running_mean and running_var must be defined in "
                           "evaluation mode (training=False)")
    name = _dispatch.resolve(op, input.device, backend)
    if name == "torch":
        return _torch_reference(input, running_mean, running_var, weight, bias, training,
                                momentum, eps, residual, act, alpha)
    ops = _OPS[name]
    eps = float(eps)
    if not training:
        return ops.bn_fwd_eval(input, running_mean, running_var, weight, bias, residual, eps,
                               act, alpha)
    y, mean, var = ops.bn_fwd_train(input, weight, bias, residual, eps, act, alpha)
    n = _count(input)
    if n > 0 and (running_mean is not None or running_var is not None):
        # an empty batch leaves the running statistics alone, as torch does
        update_running_stats(running_mean, running_var, mean, var, n, float(momentum))
    return y


# ------------------------------------------------------------------------ SyncBatchNorm
class SyncBatchNormFunction(torch.autograd.Function):
    """Batch norm whose statistics span every process of `process_group`.

    forward:  local bn_stats -> (count, mean, M2) per process, all_gather'ed; combined
              in rank order (Chan) into the global mean / biased var; running stats
              updated with the global unbiased var; bn_fwd_eval normalizes the local
              slice with the global statistics.
    backward: local bn_bwd_reduce -> (sum_dz, sum_dz_xhat), all_reduce'd (SUM);
              bn_bwd_elemt with 1 / global count. weight/bias gradients are the local
              sums, as torch's SyncBatchNorm gives (DDP averages them across processes).
    Works with unequal (even empty) per-process batches: every process contributes its
    own count."""

    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, eps, momentum,
                process_group, world_size, backend):
        import torch.distributed as dist
        ops = _OPS[backend]
        x = input
        C = x.size(1)
        n_local = _count(x)
        if n_local > 0:
            mean, var = ops.bn_stats(x)
        else:  # no local values: contribute nothing (NaN-free)
            mean = x.new_zeros((C,), dtype=_stat_dtype(x))
            var = torch.zeros_like(mean)
        packed = torch.cat([mean, var * n_local,
                            torch.full((1,), float(n_local), dtype=mean.dtype, device=x.device)])
        gathered = [torch.empty_like(packed) for _ in range(world_size)]
        dist.all_gather(gathered, packed, group=process_group)
        allst = torch.stack(gathered)                 # (world, 2C + 1), rank order
        means, m2s, counts = allst[:, :C], allst[:, C:2 * C], allst[:, 2 * C:]
        n = counts.sum()
        n_total = int(n.item())
        if n_total == 0:
            raise ValueError("SyncBatchNorm: every process has an empty batch")
        if n_total == 1:
            raise ValueError("Expected more than 1 value per channel when training, got 1 "
                             "value in total across processes")
        g_mean = (counts * means).sum(0) / n
        g_var = (m2s + counts * (means - g_mean) ** 2).sum(0) / n
        if running_mean is not None or running_var is not None:
            update_running_stats(running_mean, running_var, g_mean, g_var, n_total, momentum)
        y = ops.bn_fwd_eval(x, g_mean, g_var, weight, bias, None, eps, "none", 0.0)
        ctx.save_for_backward(x, weight, g_mean, g_var)
        ctx.eps, ctx.n_total, ctx.pg, ctx.backend = eps, n_total, process_group, backend
        ctx.has_bias = bias is not None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        # (first derivatives only, as torch's SyncBatchNorm: its backward is all_reduce'd
        # sums whose derivative would need another exchange between the processes)
        import torch.distributed as dist
        x, w, mean, var = ctx.saved_tensors
        ops = _OPS[ctx.backend]
        sum_dz, sum_dzxh = ops.bn_bwd_reduce(gy, x, mean, var, None, ctx.eps, "none", 0.0)
        dw = sum_dzxh.to(w.dtype) if w is not None and ctx.needs_input_grad[1] else None
        db = sum_dz.to(ctx.bias_dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None
        both = torch.cat([sum_dz, sum_dzxh])
        dist.all_reduce(both, dist.ReduceOp.SUM, group=ctx.pg)
        C = x.size(1)
        dx = None
        if ctx.needs_input_grad[0]:
            dx, _ = ops.bn_bwd_elemt(gy, x, mean, var, w, None, both[:C], both[C:], ctx.eps,
                                     1.0 / ctx.n_total, "none", 0.0, False)
        return dx, dw, db, None, None, None, None, None, None, None


def sync_batch_norm(input, running_mean, running_var, weight, bias, eps, momentum,
                    process_group, world_size, backend: Optional[str] = None) -> torch.Tensor:
    """Training-mode batch norm with statistics over all processes of the group."""
    op = "sync_batch_norm"
    _check_args(op, input, running_mean, running_var, weight, bias, None, "none", 0.0)
    name = _dispatch.resolve(op, input.device, backend)
    if name == "torch":
        raise _dispatch.BackendUnavailable("pydl.sync_batch_norm: the torch reference is "
                                           "torch.nn.SyncBatchNorm itself; use it directly")
    return SyncBatchNormFunction.apply(input, weight, bias, running_mean, running_var,
                                       float(eps), float(momentum), process_group, world_size,
                                       name)
