"""vmap rules for pydl's ops: torch.func.vmap over pydl layers -- per-sample gradients
(vmap(grad(loss))), batched inputs, ensembles of weights -- as over torch's own.

Under torch.vmap(f)(xs) each op is called once for the whole batch of B calls, with the
vmapped dimension somewhere in each batched argument (`in_dims`). A rule turns that into
calls of pydl's own kernels -- one call whatever B is -- in one of two ways:

  fold    ops independent per sample along their leading dimension N -- activations,
          pools, eval batch norm, the conv forward and input gradient when the weight is
          not batched: (B, N, ...) -> (B*N, ...), one call, the result viewed as
          (B, N, ...). An unbatched operand that must match the batched ones (the
          indices of a max pool, an activation's saved tensor) is expanded to B first.
  groups  the conv weight and bias gradients, whose sum over N must stay per sample, and a
          conv with a batched weight (an ensemble of models): the B samples' channels go
          side by side, (N, B*C, H, W), and a convolution with B*groups groups computes
          every sample's result in one call -- group b*groups+j is sample b's group j.
          Batch norm with statistics per sample (training) or per model (an ensemble's
          batched running statistics) likewise: the samples side by side along the
          channels, (N, B*C, ...), their statistics and parameters as (B*C,) vectors; every
          statistic of the op is per channel, so one call computes each sample's own.

pydl's autograd.Functions set generate_vmap_rule (pydl.ops._util.differentiable), so
vmap runs their forward and backward through these rules; the optimizer steps have none
(they update parameters in place, nothing a vmap maps over)."""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

Rule = Callable[..., tuple]
_LIBS: list = []  # the Library objects the rules are registered through (kept alive)


def _front(t: Optional[torch.Tensor], d: Optional[int], B: int) -> Optional[torch.Tensor]:
    """t with the vmapped dimension first; an unbatched t expanded to B (a view)."""
    if t is None:
        return None
    return t.movedim(d, 0) if d is not None else t.expand(B, *t.shape)


def _fold(t: torch.Tensor) -> torch.Tensor:
    """(B, N, ...) -> (B*N, ...)."""
    return t.reshape(t.shape[0] * t.shape[1], *t.shape[2:])


def _unfold(t: torch.Tensor, B: int, N: int) -> torch.Tensor:
    """(B*N, ...) -> (B, N, ...) (a view, also of a channels-last result)."""
    return t.reshape(B, N, *t.shape[1:])


def _side_by_side(t: torch.Tensor) -> torch.Tensor:
    """(B, N, C, H, W) -> (N, B*C, H, W): the samples' channels next to each other."""
    B, N, C = t.shape[:3]
    return t.movedim(0, 1).reshape(N, B * C, *t.shape[3:])


def _apart(t: torch.Tensor, B: int) -> torch.Tensor:
    """(N, B*C, H, W) -> (B, N, C, H, W): _side_by_side undone (a view)."""
    N, BC = t.shape[:2]
    return t.reshape(N, B, BC // B, *t.shape[2:]).movedim(1, 0)


def elementwise(op, tensors: int) -> Rule:
    """An elementwise op whose first `tensors` arguments are tensors of one shape."""
    def rule(info, in_dims, *args):
        B = info.batch_size
        ts = [_front(a, d, B) for a, d in zip(args[:tensors], in_dims[:tensors])]
        return op(*ts, *args[tensors:]), 0
    return rule


def elementwise_(op) -> Rule:
    """An in-place elementwise op on its first argument (a view of it, batch first, is
    written in place)."""
    def rule(info, in_dims, x, *rest):
        op(x.movedim(in_dims[0], 0) if in_dims[0] is not None else x, *rest)
        return None, None
    return rule


def fold(op, batched: Sequence[int], size_arg: Optional[int] = None) -> Rule:
    """Fold B into N for the tensors at positions `batched` (N first; unbatched ones among
    them expanded); every other tensor argument is unbatched (conv_fwd, conv_bwd_input and
    bn_fwd_eval send the other case elsewhere); size_arg: position of an [N, C, H, W] size
    argument, whose N becomes B*N."""
    def rule(info, in_dims, *args):
        B = info.batch_size
        args = list(args)
        N = None
        for i in batched:
            if args[i] is not None:
                t = _front(args[i], in_dims[i], B)
                N = t.shape[1]
                args[i] = _fold(t)
        if size_arg is not None:
            size = list(args[size_arg])
            N = size[0]
            args[size_arg] = [B * size[0], *size[1:]]
        out = op(*args)
        if isinstance(out, (tuple, list)):
            # per-sample outputs have N first; a 1-D output is a placeholder (the empty
            # indices of a max pool asked for none) and is returned unbatched
            return tuple(_unfold(o, B, N) if o.dim() > 1 else o for o in out), \
                tuple(0 if o.dim() > 1 else None for o in out)
        return _unfold(out, B, N), 0
    return rule


def channels(op, xlike: Sequence[int], per_channel: Sequence[int]) -> Rule:
    """Batch norm: B side by side along the channels. The tensors at `xlike` (N, C, ...)
    become (N, B*C, ...), those at `per_channel` (C,) become (B*C,), and the op -- whose
    every statistic is per channel -- computes each sample's own in one call. Outputs
    are turned back the same way, told apart by shape (a 1-D output of B*C values is per
    channel; an empty one is the placeholder of an output not asked for)."""
    def rule(info, in_dims, *args):
        B = info.batch_size
        args = list(args)
        for i in xlike:
            if args[i] is not None:
                args[i] = _side_by_side(_front(args[i], in_dims[i], B))
        for i in per_channel:
            if args[i] is not None:
                args[i] = _front(args[i], in_dims[i], B).reshape(-1)
        out = op(*args)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        back, dims = [], []
        for o in outs:
            if o.dim() > 1:
                back.append(_apart(o, B)), dims.append(0)
            elif o.numel() > 0:
                back.append(o.view(B, -1)), dims.append(0)
            else:
                back.append(o), dims.append(None)
        return (tuple(back), tuple(dims)) if isinstance(out, (tuple, list)) else (back[0], dims[0])
    return rule


def bn_fwd_eval(op) -> Rule:
    """Shared statistics and parameters: fold into N; batched ones (an ensemble of models):
    side by side along the channels."""
    folded = fold(op, [0, 5])
    by_channel = channels(op, [0, 5], [1, 2, 3, 4])

    def rule(info, in_dims, *args):
        if any(in_dims[i] is not None for i in (1, 2, 3, 4)):
            return by_channel(info, in_dims, *args)
        return folded(info, in_dims, *args)
    return rule


def conv_fwd(op) -> Rule:
    """A shared weight: fold. A batched weight (an ensemble of models, torch.func's
    stack_module_state): the samples side by side, B*groups groups, one call."""
    folded = fold(op, [0])

    def rule(info, in_dims, x, w, b, stride, padding, dilation, groups, act, channels_last):
        if in_dims[1] is None and in_dims[2] is None:
            return folded(info, in_dims, x, w, b, stride, padding, dilation, groups, act,
                          channels_last)
        B = info.batch_size
        ws = _front(w, in_dims[1], B)
        bs = None if b is None else _front(b, in_dims[2], B).reshape(-1)
        y = op(_side_by_side(_front(x, in_dims[0], B)), ws.reshape(-1, *ws.shape[2:]), bs,
               stride, padding, dilation, B * groups, act, channels_last)
        return _apart(y, B), 0
    return rule


def conv_bwd_input(op) -> Rule:
    """The forward's two cases, transposed: fold, or (a batched weight) side by side."""
    folded = fold(op, [0], size_arg=2)

    def rule(info, in_dims, grad, w, input_size, stride, padding, dilation, groups,
             channels_last):
        if in_dims[1] is None:
            return folded(info, in_dims, grad, w, input_size, stride, padding, dilation, groups,
                          channels_last)
        B = info.batch_size
        ws = _front(w, in_dims[1], B)
        N, C = input_size[0], input_size[1]
        dx = op(_side_by_side(_front(grad, in_dims[0], B)), ws.reshape(-1, *ws.shape[2:]),
                [N, B * C, *input_size[2:]], stride, padding, dilation, B * groups, channels_last)
        return _apart(dx, B), 0
    return rule


def conv_bwd_weight(op) -> Rule:
    """Per-sample weight gradients in one grouped call (see `groups` above)."""
    def rule(info, in_dims, grad, x, weight_size, stride, padding, dilation, groups,
             channels_last):
        B = info.batch_size
        g, xs = _side_by_side(_front(grad, in_dims[0], B)), _side_by_side(_front(x, in_dims[1], B))
        size = [B * weight_size[0], *weight_size[1:]]
        dw = op(g, xs, size, stride, padding, dilation, B * groups, channels_last)
        return dw.reshape(B, *weight_size), 0
    return rule


def conv_bwd_bias(op) -> Rule:
    """Per-sample bias gradients: each sample's channels summed on their own."""
    def rule(info, in_dims, grad):
        B = info.batch_size
        g = _front(grad, in_dims[0], B)
        return op(_side_by_side(g)).view(B, g.shape[2]), 0
    return rule


def register(ns: str) -> None:
    """vmap rules for the ops of namespace `ns` (pydl: the C++ backends; pydl_triton)."""
    ops = getattr(torch.ops, ns)
    table = {
        # activations: x any shape
        "act_fwd": elementwise(ops.act_fwd, 1),
        "act_fwd_": elementwise_(ops.act_fwd_),
        "act_bwd": elementwise(ops.act_bwd, 2),
        # pools: 4-D (N, C, H, W) per sample; sizes are (H, W) only
        "max_pool2d_fwd": fold(ops.max_pool2d_fwd, [0]),
        "max_pool2d_bwd": fold(ops.max_pool2d_bwd, [0, 1]),
        "avg_pool2d_fwd": fold(ops.avg_pool2d_fwd, [0]),
        "avg_pool2d_bwd": fold(ops.avg_pool2d_bwd, [0]),
        "adaptive_avg_pool2d_fwd": fold(ops.adaptive_avg_pool2d_fwd, [0]),
        "adaptive_avg_pool2d_bwd": fold(ops.adaptive_avg_pool2d_bwd, [0]),
        "adaptive_max_pool2d_fwd": fold(ops.adaptive_max_pool2d_fwd, [0]),
        "adaptive_max_pool2d_bwd": fold(ops.adaptive_max_pool2d_bwd, [0, 1]),
        "pool_gather": fold(ops.pool_gather, [0, 1]),
        # convolution
        "conv2d_fwd": conv_fwd(ops.conv2d_fwd),
        "conv2d_bwd_input": conv_bwd_input(ops.conv2d_bwd_input),
        "conv2d_bwd_weight": conv_bwd_weight(ops.conv2d_bwd_weight),
        "conv2d_bwd_bias": conv_bwd_bias(ops.conv2d_bwd_bias),
        # batch norm: statistics per sample (training) or per model (an ensemble) by
        # putting the samples side by side along the channels; eval with shared statistics
        # folds into N
        "bn_fwd_eval": bn_fwd_eval(ops.bn_fwd_eval),
        "bn_stats": channels(ops.bn_stats, [0], []),
        "bn_fwd_train": channels(ops.bn_fwd_train, [0, 3], [1, 2]),
        "bn_bwd_reduce": channels(ops.bn_bwd_reduce, [0, 1, 4], [2, 3]),
        "bn_bwd_elemt": channels(ops.bn_bwd_elemt, [0, 1, 5], [2, 3, 4, 6, 7]),
        "bn_bwd": channels(ops.bn_bwd, [0, 1, 5], [2, 3, 4]),
    }
    lib = torch.library.Library(ns, "FRAGMENT")  # one registration library, kept with the rules
    for name, rule in table.items():
        torch.library.register_vmap(f"{ns}::{name}", rule, lib=lib)
    _LIBS.append(lib)
