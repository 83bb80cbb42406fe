"""Helpers shared by the op modules: argument checks and the layout rule of the kernels."""
from __future__ import annotations

import operator

import torch
from torch._functorch.pyfunctorch import \
    retrieve_all_functorch_interpreters as _functorch_interpreters

from .. import _dispatch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tensor(t, name: str, op: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"pydl.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"pydl.{op}: {name} must be float32, float16, bfloat16 or float64, "
                        f"got {t.dtype}")


def as_int(v):
    """v as an integer size argument the way torch's int parameters take one: an int, a
    SymInt (under tracing), or any other object with __index__ -- numpy's integers, which a
    model's hyperparameters often are -- as a Python int; None for anything else, bools
    included (torch refuses True for a stride) and tensors (an index would read it back from
    the device)."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, torch.SymInt)):
        return v
    if isinstance(v, torch.Tensor) or not hasattr(type(v), "__index__"):
        return None
    return operator.index(v)


def check_like(a: torch.Tensor, an: str, b: torch.Tensor, bn: str, op: str) -> None:
    """a and b: same shape, dtype and device (the checks of csrc/common.h, for the Triton ops,
    whose kernels would otherwise read past the end of the smaller tensor)."""
    if a.shape != b.shape:
        raise RuntimeError(f"pydl.{op}: {an} and {bn} must have the same shape, got "
                           f"{tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise RuntimeError(f"pydl.{op}: {an} and {bn} must have the same dtype, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise RuntimeError(f"pydl.{op}: {an} and {bn} must be on the same device, got {a.device} and {b.device}")


def is_channels_last(t: torch.Tensor) -> bool:
    """Whether a 4-D tensor's strides are channels_last-like, i.e. torch's
    t.suggest_memory_format() == torch.channels_last, by c10's
    is_channels_last_strides_2d_s4: taken in the order C, W, H, N, each dimension's stride is
    at least the span (stride x size) of the one before. torch._prims_common's
    suggest_memory_format computes the same through symbolic-shape guards at ~4 us a call,
    which a convolution pays several times; this is plain integer arithmetic."""
    size, stride = t.shape, t.stride()
    if len(size) != 4 or stride[1] == 0:
        return False
    span = 0
    for d in (1, 3, 2, 0):
        if size[d] == 0 or stride[d] < span or (d == 0 and span == stride[1]):
            return False
        span = stride[d] * size[d]
    return True


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


# ------------------------------------------------------------------ differentiable ops
def _no_zero_grads(ctx, *aux_outputs) -> None:
    """For an op with outputs that carry no gradient (max pooling's indices, batch norm's
    batch statistics), called from its setup_context: mark them non-differentiable and stop
    autograd from materializing zero-filled gradients for them before each backward (by
    default it allocates and fills a zero tensor for every output without a gradient: 40
    small tensors per ResNet-18 step, and an int64 one as large as the pooled output). The
    backward then gets None for those outputs -- and for the main output when it was not
    used, which it must handle (no gradient flows)."""
    ctx.mark_non_differentiable(*aux_outputs)
    ctx.set_materialize_grads(False)


_BELOW_AUTOGRAD = torch._C._AutoDispatchBelowAutograd

# ------------------------------------------------------------------ eager entry points
# EAGER[qualname]: a callable that does what torch.ops.<qualname> does, with less host
# time, used by op_caller for calls made in eager mode with no Python dispatch mode active
# and no __torch_function__ override among the arguments. For the C++ ops it is
# pydl._C.eager.<op> (the same dispatcher call made from C++, without torch.ops' boxing:
# ~3 us less a call on the development machine); for the Triton ops, the Python function
# custom_op wraps (torch.ops adds ~5 us a call around it: argument boxing, the
# dispatcher's Python kernel, a check that no output aliases an input -- which opcheck
# covers in the tests). Anything else (FakeTensor, make_fx, torch.compile, a
# TorchFunctionMode such as `with torch.device(...)`, a tensor subclass) takes torch.ops.
EAGER: dict = {}
_dispatch_modes = torch._C._len_torch_dispatch_stack
_has_torch_function = torch._C._has_torch_function


def add_eager_ops(ns: str, module) -> None:
    """Register every function of `module` (pydl._C.eager) as EAGER[f"{ns}::{name}"]."""
    for name in dir(module):
        if not name.startswith("_"):
            EAGER[f"{ns}::{name}"] = getattr(module, name)


if _dispatch._C is not None:
    add_eager_ops("pydl", _dispatch._C.eager)


def custom_op(qualname: str, mutates_args):
    """torch.library.custom_op that also records the undecorated function in EAGER (the
    Triton ops' fast path: see EAGER) -- for ops that mutate nothing: for a mutating one,
    torch.ops also bumps the version counters of the mutated tensors (autograd's check
    that a saved tensor was not modified), which the bare function would not."""
    def wrap(fn):
        if not mutates_args:
            EAGER[qualname] = fn
        return torch.library.custom_op(qualname, mutates_args=mutates_args)(fn)
    return wrap


def _eager_or_op(qualname: str):
    """The op `qualname` called by its EAGER entry point when no dispatch mode is active and
    no argument overrides __torch_function__, else by torch.ops -- for callers that have
    already ruled out torch.compile."""
    ns, name = qualname.split("::")
    op = getattr(getattr(torch.ops, ns), name).default
    eager = EAGER.get(qualname)
    if eager is None:
        return op
    _, lists = _tensor_positions(op._schema)
    if lists:  # (an optimizer's tensor lists: torch.ops looks inside them too)
        def overridden(args):
            return _has_torch_function(args) or \
                any(_has_torch_function(args[i]) for i in lists if i < len(args))
    else:
        overridden = _has_torch_function

    def run(*args):
        if not _dispatch_modes() and not overridden(args):
            return eager(*args)
        return op(*args)

    return run


def op_caller(qualname: str):
    """A function that calls op `qualname` as torch.ops.<qualname> would: by its EAGER entry
    point when that is the same call (eager mode, no dispatch mode, no __torch_function__
    override among the arguments), else by torch.ops."""
    ns, name = qualname.split("::")
    op = getattr(getattr(torch.ops, ns), name).default
    if qualname not in EAGER:
        return op
    eager_or_op = _eager_or_op(qualname)
    is_compiling = torch.compiler.is_compiling

    def run(*args):
        return op(*args) if is_compiling() else eager_or_op(*args)

    run.op = op
    return run


def _tensor_positions(schema):
    """From an op's schema, the positions of its arguments that can require a gradient:
    (Tensor and Tensor? ones, Tensor[] ones)."""
    single, lists = [], []
    for i, a in enumerate(schema.arguments):
        t = str(a.type)
        if t in ("Tensor", "Optional[Tensor]"):
            single.append(i)
        elif t in ("List[Tensor]", "List[Optional[Tensor]]"):
            lists.append(i)
    return tuple(single), tuple(lists)


def _needs_grad(args, single, lists) -> bool:
    """Whether grad mode is on and a tensor argument (or a tensor in a list argument)
    requires a gradient. Only the positions the schema types as tensors are looked at
    (_tensor_positions): this runs on every call, and testing every argument's type cost
    more than the rest of the check (a pool call: ~30 isinstance tests)."""
    if not torch.is_grad_enabled():
        return False
    n = len(args)
    for i in single:  # (getattr: None, or a wrong argument the op itself will reject)
        if i < n and getattr(args[i], "requires_grad", False):
            return True
    for i in lists:
        if i < n and any(getattr(t, "requires_grad", False) for t in args[i]):
            return True
    return False


_forward_ad = torch.autograd.forward_ad
_TransformType = torch._C._functorch.TransformType


def _dual_level_active() -> bool:
    """Whether forward-mode AD (torch.autograd.forward_ad.dual_level) is on: then an input
    may carry a tangent, which only an autograd.Function's jvp propagates -- a call below
    autograd would silently drop it."""
    return _forward_ad._current_level >= 0


def _jvp_transform_active() -> bool:
    """Whether a torch.func forward-mode transform (jvp, jacfwd, hessian) is on the stack.
    Only then do the autograd.Functions keep tensors for a jvp under torch.func: its
    generated vmap rule records the batch dimensions of one save only (save_for_forward
    after save_for_backward would misalign the backward's)."""
    return any(i.key() == _TransformType.Jvp for i in _functorch_interpreters())


def _save_for_jvp(ctx, args, out) -> None:
    """Keep the call's arguments and outputs for its jvp (ctx.save_for_forward, the way an
    autograd.Function keeps tensors for jvp)."""
    outs = out if isinstance(out, tuple) else (out,)
    ctx.jvp_args = tuple(None if isinstance(a, torch.Tensor) else a for a in args)
    ctx.jvp_tensor_at = tuple(i for i, a in enumerate(args) if isinstance(a, torch.Tensor))
    ctx.jvp_tuple = isinstance(out, tuple)
    ctx.save_for_forward(*[args[i] for i in ctx.jvp_tensor_at], *outs)


def _saved_for_jvp(ctx):
    """(args, out) as _save_for_jvp kept them."""
    saved = ctx.saved_tensors
    k = len(ctx.jvp_tensor_at)
    args = list(ctx.jvp_args)
    for i, t in zip(ctx.jvp_tensor_at, saved[:k]):
        args[i] = t
    outs = tuple(saved[k:])
    return tuple(args), (outs if ctx.jvp_tuple else outs[0])


class _Held:
    """A list argument (a size, a stride) passed through torch.func's autograd.Function
    machinery as one opaque leaf. Its generated vmap rule with a jvp counts a list's items
    as leaves of the inputs' in_dims but the list as one None among the tangents, and fails
    (torch.func.jacfwd / hessian through an op with a list argument); held, it is one leaf
    in both."""
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _hold(args):
    return tuple(_Held(a) if isinstance(a, (list, tuple)) else a for a in args)


def _release(args):
    return tuple(a.value if isinstance(a, _Held) else a for a in args)


def differentiable(qualname: str, setup_context, backward, jvp=None):
    """Register the autograd formula of op `qualname` with torch.library, and return a
    function that calls the op the cheapest way that keeps its semantics.

    torch.library's autograd kernel is Python that runs on *every* call, also when no
    gradient is needed, and is slower than a plain autograd.Function when one is: for a
    small tensor, ~25 us of host time against torch's ~5 us for its own relu, which on a
    GPU leaves the device idle. So in eager mode the returned function takes the op
    straight to its backend kernel (below the autograd key) when no input needs a
    gradient, and goes through an autograd.Function built from the same
    setup_context/backward when one does; either way it reaches the kernel by the op's
    EAGER entry point where that is the same call (op_caller). Under torch.compile it calls
    the registered op, so the compiler sees one custom op with its registered formula
    (opcheck checks that registration).

    jvp(args, out, tangents) -> the outputs' tangents (None for one without): the op's
    forward-mode derivative, for torch.func.jvp / jacfwd / hessian and
    torch.autograd.forward_ad. While a dual level is active every call goes through the
    autograd.Function (below autograd an input's tangent would be silently dropped); without
    a jvp, forward mode raises NotImplementedError naming the op."""
    torch.library.register_autograd(qualname, backward, setup_context=setup_context)
    ns, name = qualname.split("::")
    op = getattr(getattr(torch.ops, ns), name).default
    single, lists = _tensor_positions(op._schema)
    run = _eager_or_op(qualname)  # (below the autograd key, never under torch.compile)

    def fn_jvp(ctx, *tangents):
        if jvp is None:
            raise NotImplementedError(f"pydl: forward-mode AD through {qualname} is not "
                                      "implemented")
        args, out = _saved_for_jvp(ctx)
        return jvp(args, out, tangents)

    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            with _BELOW_AUTOGRAD():
                out = run(*args)
            setup_context(ctx, args, out)
            if jvp is not None and _dual_level_active():
                _save_for_jvp(ctx, args, out)
            return out

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

        @staticmethod
        def jvp(ctx, *tangents):
            return fn_jvp(ctx, *tangents)

    class FuncFn(torch.autograd.Function):
        # The same with forward and setup_context apart: the form torch.func transforms
        # (torch.func.grad, jacrev) require. Only used under them: its apply() binds the
        # arguments to forward's signature with inspect on every call, ~14 us of host time.
        # Under vmap, forward and backward run with the ops' vmap rules (pydl.ops._vmap).
        generate_vmap_rule = True

        @staticmethod
        def forward(*args):
            with _BELOW_AUTOGRAD():
                return op(*_release(args))

        @staticmethod
        def setup_context(ctx, inputs, output):
            inputs = _release(inputs)
            setup_context(ctx, inputs, output)
            if jvp is not None and _jvp_transform_active():  # (torch.func.jvp, jacfwd, hessian)
                _save_for_jvp(ctx, inputs, output)

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

        @staticmethod
        def jvp(ctx, *tangents):
            return fn_jvp(ctx, *tangents)

    Fn.__name__ = Fn.__qualname__ = f"{name}_autograd"
    FuncFn.__name__ = FuncFn.__qualname__ = f"{name}_autograd_func"
    functorch_active = torch._C._are_functorch_transforms_active

    def call(*args):
        if torch.compiler.is_compiling():
            return op(*args)
        if functorch_active():
            return FuncFn.apply(*_hold(args))
        if _needs_grad(args, single, lists) or _dual_level_active():
            return Fn.apply(*args)
        with _BELOW_AUTOGRAD():
            return run(*args)

    call.op = op
    return call
