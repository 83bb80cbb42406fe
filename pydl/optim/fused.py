"""Fused multi-tensor optimizers: SGD, Adam, AdamW, RMSprop, Adagrad.

Each class subclasses its torch.optim namesake, so the constructor signature, defaults,
hyperparameter validation (and its error messages), ``param_groups``, ``add_param_group``,
``zero_grad``, ``state`` / ``state_dict`` / ``load_state_dict``, hooks and LR schedulers
are torch's own code; only ``step()`` is pydl's. It gathers the parameters of each param
group that have a gradient, buckets them by (device, dtype), and updates every bucket
with ONE fused multi-tensor op (pydl.ops.optim: C++ on CPU, CUDA C++ or Triton on GPU)
instead of a handful of kernels per tensor.

State layout is torch's: the same keys (``step``, ``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq``, ``momentum_buffer``, ``square_avg``, ``grad_avg``, ``sum``), created
at the same moment as torch creates them, ``step`` a float32 scalar tensor on the
parameter's device -- on the CPU for CPU parameters (torch's default layout), on the GPU
for GPU parameters (torch's fused/capturable layout, which torch's other
implementations read too), so that the kernels read and increment it themselves and a
step never waits for the GPU. A torch.optim checkpoint loads into pydl and a pydl
checkpoint into torch.optim, and training continues identically.

One deliberate difference: for float16 / bfloat16 parameters the state tensors are
float32 (torch keeps them in the parameter's dtype), so the moments do not lose their
small increments to 16-bit rounding. Loading such a checkpoint into torch.optim casts
the state to the parameter dtype (torch's load_state_dict does that); a torch checkpoint
with 16-bit state is promoted to float32 on pydl's first step.

Extra keyword-only arguments: ``backend=`` (None: follow ``pydl.backend(...)`` /
PYDL_BACKEND / auto); ``master_weights=False``: when True, every float16/bfloat16
parameter gets a float32 master copy (``state["master_param"]``, saved in the
state_dict; torch.optim ignores the extra key) that the kernels update, the 16-bit
parameter being its rounding -- so updates smaller than a 16-bit ulp accumulate instead
of being lost. ``foreach`` and ``fused`` are accepted (and stored in the groups,
as torch does) but pydl always runs its fused kernels; ``capturable=True`` and
``differentiable=True`` are not supported and raise ValueError.

GradScaler: the optimizers set ``_step_supports_amp_scaling``, as torch's fused ones do,
so ``scaler.step(opt)`` hands the scale and ``found_inf`` to ``step`` (as
``opt.grad_scale`` / ``opt.found_inf``): the kernels divide the gradients by the scale on
the fly (no separate unscale pass; the gradients are left unscaled, as torch's fused
optimizers leave them) and, when ``found_inf`` is set, skip the whole step, step counts
included -- decided on the device, with no host synchronization. Two corner cases differ
from torch without changing any result: if a parameter's very first step is skipped,
pydl has already created its (zero) state with step 0 where torch has none yet; and SGD
reads ``found_inf`` on the host in the one step that creates momentum buffers (a new
buffer is set to the gradient, which must not happen in a skipped step).
"""
from __future__ import annotations

from collections import defaultdict
from itertools import chain, repeat
from operator import attrgetter, is_
from typing import Optional

import torch

from ..ops import optim as _ops

__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"]


def _scalar(v) -> float:
    """A hyperparameter as a Python float (lr and weight_decay may be tensors in torch)."""
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)


def _step_tensor(state, p) -> torch.Tensor:
    """state['step'], created (0) if missing, as the kernels read it: a float32 scalar
    tensor on the parameter's device (a torch checkpoint may hold it on the CPU, or as a
    number in very old ones)."""
    s = state.get("step")
    if s is None:
        s = torch.zeros((), dtype=torch.float32, device=p.device)
    elif not isinstance(s, torch.Tensor):
        s = torch.tensor(float(s), dtype=torch.float32, device=p.device)
    elif s.device != p.device or s.dtype != torch.float32:
        s = s.detach().to(p.device, torch.float32)
    state["step"] = s
    return s


def _picker(idx, n):
    """list -> its elements at `idx` (a bucket's indices); the list itself when the bucket
    is all of it (one (device, dtype) in the group: the usual case)."""
    if len(idx) == n:
        return lambda lst: lst
    return lambda lst: [lst[i] for i in idx]


class _Prepared:
    """What a group's last step handed the kernels, and what it was made from (see
    _FusedStep._state_lists): the group, the optimizer's state dict, the group's params
    (all of them, which had a gradient, their state dicts), the work params' (device,
    dtype), and the state lists and buckets built from them."""
    __slots__ = ("group", "state", "all_params", "no_grad", "keys", "sts", "where", "spec",
                 "lists", "buckets")


_WHERE = attrgetter("device", "dtype")


def _where(params) -> list:
    """(device, dtype) of each param. Under torch.compile as a plain comprehension: Dynamo
    does not trace an attrgetter (it would break the graph of a compiled step)."""
    if torch.compiler.is_compiling():
        return [(p.device, p.dtype) for p in params]
    return list(map(_WHERE, params))


class _FusedStep:
    """The shared part of the five optimizers: construction-time checks, the gathering of
    each group's state lists (reused from step to step while unchanged) and the bucketing."""

    _pydl_name = ""
    # attributes of pydl's beyond torch.optim's, kept by pickling and copy.deepcopy
    # (torch.optim.Optimizer.__getstate__ keeps only defaults, state and param_groups)
    _PYDL_ATTRS = ("backend", "master_weights")

    def _pydl_setup(self, backend: Optional[str], capturable: bool, differentiable: bool,
                    master_weights: bool = False):
        name = self._pydl_name
        if capturable:
            raise ValueError(f"pydl.optim.{name}: capturable=True is not supported (the step "
                             "is not made safe for CUDA graph capture)")
        if differentiable:
            raise ValueError(f"pydl.optim.{name}: differentiable=True is not supported")
        if backend is not None:
            from .._dispatch import _check_name
            _check_name(backend, f"pydl.optim.{name}: backend")
        self.backend = backend
        self.master_weights = bool(master_weights)
        # GradScaler then passes its scale to step() instead of unscaling the grads itself
        self._step_supports_amp_scaling = True
        self._prepared = {}  # id(group) -> _Prepared

    def __getstate__(self):
        state = super().__getstate__()
        state.update({k: self.__dict__[k] for k in self._PYDL_ATTRS if k in self.__dict__})
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("backend", None)
        self.__dict__.setdefault("master_weights", False)
        self._step_supports_amp_scaling = True
        self._prepared = {}

    def _state_tensor(self, state, key, p, fill: float = 0.0) -> torch.Tensor:
        """state[key], created (filled with `fill`) if missing, and brought to the kernels'
        layout: float32 for 16-bit params, the param's device and strides."""
        t = state.get(key)
        want = _ops.state_dtype(p.dtype)
        if t is not None and t.dtype == want and t.device == p.device and \
                (t.stride() == p.stride() or p.numel() <= 1):
            return t  # the common case, every step after the first: as the kernels need it
        if t is None:
            t = torch.full_like(p, fill, dtype=want, memory_format=torch.preserve_format)
        elif t.dtype != want or t.device != p.device or \
                (p.numel() > 1 and t.stride() != p.stride()):
            s = torch.empty_like(p, dtype=want, memory_format=torch.preserve_format)
            s.copy_(t)
            t = s
        state[key] = t
        return t

    def _state_entry(self, state, name, p, fill: float) -> torch.Tensor:
        """One (name, fill) pair of a spec: the step counter, or a state tensor."""
        return _step_tensor(state, p) if name == "step" else \
            self._state_tensor(state, name, p, fill)

    def _with_grads(self, group):
        """The group's params that have a gradient, with their gradients. When the group
        holds the same params as at its last step and the same ones have a gradient, the
        list of that step is returned (the very list object: _state_lists recognizes it)
        without the per-tensor tests below: they passed then, and a gradient that has
        since become sparse is refused by the step op, with the same kind of error."""
        ps = group["params"]
        # (under torch.compile the step is traced once into a graph: nothing to save there)
        e = None if torch.compiler.is_compiling() else self._prepared.get(id(group))
        if e is not None and e.group is group and len(ps) == len(e.all_params) and \
                all(map(is_, ps, e.all_params)):
            grads = [p.grad for p in ps]
            no_grad = list(map(is_, grads, repeat(None)))
            if no_grad == e.no_grad:
                if True in no_grad:
                    grads = [g for g in grads if g is not None]
                return e.keys, grads
        params, grads = [], []
        for p in ps:
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError(f"pydl.optim.{self._pydl_name} does not support sparse "
                                   "gradients")
            if p.dtype.is_complex:
                raise TypeError(f"pydl.optim.{self._pydl_name}: complex parameters are not "
                                "supported")
            params.append(p)
            grads.append(g)
        return params, grads

    @staticmethod
    def _buckets(where):
        """Indices of the params grouped by their (device, dtype) (`where`, one pair per
        param): one fused launch each."""
        out = defaultdict(list)
        for i, w in enumerate(where):
            out[w].append(i)
        return list(out.values())

    def _reused(self, group, keys, where, spec):
        """The (lists, buckets) of the group's last step if _state_lists may reuse them,
        else None (always under torch.compile, which traces the lists' building instead)."""
        if torch.compiler.is_compiling():
            return None
        e = self._prepared.get(id(group))
        state = self.state
        if e is not None and e.keys is keys and e.state is state and e.spec == spec and \
                e.where == where and all(map(is_, map(state.get, keys), e.sts)) and \
                all(all(map(is_, map(dict.get, e.sts, repeat(name)), e.lists[name]))
                    for name, _ in spec):
            return e.lists, e.buckets
        return None

    def _state_lists(self, group, keys, params, spec):
        """The state the group's kernels take, {name: [one tensor per param]} for the
        (name, fill) pairs of `spec` ("step": the step counter, _step_tensor; any other
        name: _state_tensor with that fill), and the (device, dtype) buckets of `params`.

        Building them costs ~2 us of host time a parameter (state lookups, dtype / device /
        layout tests: ~0.35 ms a step over ResNet-50's 161 tensors, more than an H100 takes
        to run the step). So the lists of the group's last step are reused when nothing
        they were made from has changed: the same params with gradients (`keys` is the
        very list _with_grads returned then), the same optimizer state dict holding the
        same per-param dicts, each holding the same tensors under `spec`'s names (identity
        tests: a new state tensor, a reset `state[p] = {}`, a load_state_dict all show),
        and the params on the same devices with the same dtypes (model.double() after a
        step: the state is converted again). What else could differ -- a state tensor's
        storage swapped under it -- the step op checks before it touches anything."""
        where = _where(params)
        got = self._reused(group, keys, where, spec)
        if got is not None:
            return got
        state = self.state
        lists = {name: [] for name, _ in spec}
        sts = []
        for k, p in zip(keys, params):
            # created lazily, like torch: at the first step with a grad (and only when the
            # kernels keep state: torch's SGD without momentum makes no entries)
            st = state[k] if spec else state.get(k)
            sts.append(st)
            for name, fill in spec:
                lists[name].append(self._state_entry(st, name, p, fill))
        buckets = self._buckets(where)
        if not torch.compiler.is_compiling():  # (a compiled step is traced once: kept by nobody)
            e = self._prepared[id(group)] = _Prepared()
            # keys: this step's _with_grads list -- the group's params that have a gradient
            e.group, e.state, e.keys, e.all_params = group, state, keys, list(group["params"])
            e.no_grad = [p.grad is None for p in e.all_params]
            e.sts, e.where, e.spec, e.lists, e.buckets = sts, where, spec, lists, buckets
        return lists, buckets

    @staticmethod
    def _spec(group):
        """The (name, fill) state the group's kernels take for each param (see _state_lists).
        Empty here: SGD's momentum buffer starts as the first gradient, not as a fill."""
        return ()

    def _init_group(self, group):
        """Creates the state a step of `group` takes, for each param with a gradient, as its
        first step would (_state_lists' tensors and the master weights, created the same
        way). Called by step() only under torch.compile, where Dynamo runs an optimizer's
        _init_group eagerly before tracing the step, as for torch's own optimizers: the step is then traced once, with
        its state in place, instead of once without it and again with it
        (tests/test_optim.py test_compiled_step_traced_once). Returns None."""
        for p in group["params"]:
            if p.grad is not None:
                st = self.state[p]
                if self.master_weights and p.dtype in (torch.float16, torch.bfloat16):
                    self._master(st, p)
                for name, fill in self._spec(group):
                    self._state_entry(st, name, p, fill)

    def _amp(self, device):
        """What GradScaler set on us, on `device`: dict(grad_scale=..., found_inf=...)."""
        out = {}
        for name in ("grad_scale", "found_inf"):
            t = getattr(self, name, None)
            out[name] = None if t is None else t.to(device=device, dtype=torch.float32).reshape(1)
        return out

    @torch.no_grad()
    def step(self, closure=None):
        """Performs a single optimization step (all groups, one fused launch per
        (device, dtype) bucket of each group).

        Args:
            closure (Callable, optional): A closure that reevaluates the model and
                returns the loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if torch.compiler.is_compiling():
                self._init_group(group)
            params, grads = self._with_grads(group)
            if params:
                work_p, work_g, masters = self._masters(params, grads)
                self._group_step(group, params, work_p, work_g)
                for p, m, g, g32 in masters:  # the 16-bit params from their float32 masters
                    p.copy_(m)
                    if getattr(self, "grad_scale", None) is not None:
                        g.copy_(g32)  # unscaled, as without master weights
        if len(self._prepared) > len(self.param_groups):  # groups removed: let their state go
            live = {id(g) for g in self.param_groups}
            self._prepared = {k: v for k, v in self._prepared.items() if k in live}
        return loss

    def load_state_dict(self, state_dict) -> None:
        """torch's load_state_dict, then the float32 state of 16-bit parameters restored:
        torch casts every floating-point state tensor to its parameter's dtype, which would
        round pydl's float32 moments (and master weights) to 16 bits."""
        super().load_state_dict(state_dict)
        self._prepared = {}  # new groups and state: nothing of the last step is reused
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for sid, p in zip(saved_ids, params):
            if p.dtype not in (torch.float16, torch.bfloat16) or sid not in state_dict["state"]:
                continue
            for key, val in state_dict["state"][sid].items():
                if key != "step" and isinstance(val, torch.Tensor) and \
                        val.dtype == torch.float32 and val.shape == p.shape:
                    t = torch.empty_like(p, dtype=torch.float32,
                                         memory_format=torch.preserve_format)
                    t.copy_(val)
                    self.state[p][key] = t

    @staticmethod
    def _master(st, p) -> torch.Tensor:
        """The float32 master of 16-bit param p (state st), made from p at its first step (or
        from a checkpoint's master in another layout)."""
        m = st.get("master_param")
        if not isinstance(m, torch.Tensor) or m.shape != p.shape:
            m = p  # first step (or a checkpoint without masters): start from the param
        if m is p or m.device != p.device or m.dtype != torch.float32 or \
                (p.numel() > 1 and m.stride() != p.stride()):
            new = torch.empty_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            new.copy_(m)
            m = st["master_param"] = new
        return m

    def _masters(self, params, grads):
        """With master_weights, each float16/bfloat16 parameter is stood in for by a float32
        master copy (state["master_param"], made from the parameter at its first step), and
        its gradient by a float32 copy: the kernels update the masters, and the 16-bit
        parameters are rounded from them afterwards, so updates far below a 16-bit ulp are
        not lost. Returns (params to update, their grads, [(param, master, grad, grad32)])."""
        if not self.master_weights:
            return params, grads, []
        work_p, work_g, masters = [], [], []
        for p, g in zip(params, grads):
            if p.dtype not in (torch.float16, torch.bfloat16):
                work_p.append(p)
                work_g.append(g)
                continue
            m = self._master(self.state[p], p)
            g32 = torch.empty_like(m)
            g32.copy_(g)
            work_p.append(m)
            work_g.append(g32)
            masters.append((p, m, g, g32))
        return work_p, work_g, masters


class SGD(_FusedStep, torch.optim.SGD):
    __doc__ = "pydl's fused multi-tensor " + (torch.optim.SGD.__doc__ or "SGD")
    _pydl_name = "SGD"

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False, foreach=None, differentiable=False,
                 fused=None, backend: Optional[str] = None, master_weights: bool = False):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                         foreach=foreach, differentiable=differentiable, fused=fused)
        self._pydl_setup(backend, False, differentiable, master_weights)

    def _group_step(self, group, keys, params, grads):
        momentum = _scalar(group["momentum"])
        first = None  # per param: its first momentum step (buf = g), in a launch of its own
        if momentum == 0:  # no state (_state_lists makes no entries for an empty spec)
            bufs, buckets = None, self._state_lists(group, keys, params, ())[1]
        else:
            spec = (("momentum_buffer", 0.0),)
            got = self._reused(group, keys, _where(params), spec)
            if got is None:  # (reused lists: every param has had its first step)
                first = [self.state[k].get("momentum_buffer") is None for k in keys]
                found_inf = getattr(self, "found_inf", None)
                if any(first) and found_inf is not None and bool(found_inf.item()):
                    return  # a skipped step must not create buffers (see the module doc)
                got = self._state_lists(group, keys, params, spec)
            bufs, buckets = got[0]["momentum_buffer"], got[1]
        for idx in buckets:
            for is_first in ((False, True) if first is not None and any(first) else (False,)):
                sel = idx if first is None else [i for i in idx if first[i] == is_first]
                if not sel:
                    continue
                pick = _picker(sel, len(params))
                _ops.sgd_step(pick(params), pick(grads), pick(bufs) if bufs is not None else [],
                              lr=_scalar(group["lr"]),
                              momentum=momentum, dampening=_scalar(group["dampening"]),
                              weight_decay=_scalar(group["weight_decay"]),
                              nesterov=bool(group["nesterov"]), maximize=bool(group["maximize"]),
                              first=is_first, backend=self.backend,
                              **self._amp(params[sel[0]].device))


class Adam(_FusedStep, torch.optim.Adam):
    __doc__ = "pydl's fused multi-tensor " + (torch.optim.Adam.__doc__ or "Adam")
    _pydl_name = "Adam"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False,
                 backend: Optional[str] = None, master_weights: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=decoupled_weight_decay)
        self._pydl_setup(backend, capturable, differentiable, master_weights)

    @staticmethod
    def _spec(group):
        return (("step", 0.0), ("exp_avg", 0.0), ("exp_avg_sq", 0.0)) + \
            ((("max_exp_avg_sq", 0.0),) if group["amsgrad"] else ())

    def _group_step(self, group, keys, params, grads):
        amsgrad = bool(group["amsgrad"])
        beta1, beta2 = (_scalar(b) for b in group["betas"])
        lists, buckets = self._state_lists(group, keys, params, self._spec(group))
        for idx in buckets:
            pick = _picker(idx, len(params))
            _ops.adam_step(pick(params), pick(grads), pick(lists["exp_avg"]),
                           pick(lists["exp_avg_sq"]),
                           pick(lists["max_exp_avg_sq"]) if amsgrad else [], pick(lists["step"]),
                           lr=_scalar(group["lr"]), beta1=beta1, beta2=beta2,
                           eps=_scalar(group["eps"]), weight_decay=_scalar(group["weight_decay"]),
                           amsgrad=amsgrad, maximize=bool(group["maximize"]),
                           decoupled=bool(group.get("decoupled_weight_decay", False)),
                           backend=self.backend, **self._amp(params[idx[0]].device))


class AdamW(Adam, torch.optim.AdamW):
    __doc__ = "pydl's fused multi-tensor " + (torch.optim.AdamW.__doc__ or "AdamW")
    _pydl_name = "AdamW"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, backend: Optional[str] = None,
                 master_weights: bool = False):
        torch.optim.AdamW.__init__(self, params, lr=lr, betas=betas, eps=eps,
                                   weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                                   foreach=foreach, capturable=capturable,
                                   differentiable=differentiable, fused=fused)
        self._pydl_setup(backend, capturable, differentiable, master_weights)


class RMSprop(_FusedStep, torch.optim.RMSprop):
    __doc__ = "pydl's fused multi-tensor " + (torch.optim.RMSprop.__doc__ or "RMSprop")
    _pydl_name = "RMSprop"

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, capturable=False, foreach=None, maximize=False,
                 differentiable=False, *, backend: Optional[str] = None,
                 master_weights: bool = False):
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered, capturable=capturable,
                         foreach=foreach, maximize=maximize, differentiable=differentiable)
        self._pydl_setup(backend, capturable, differentiable, master_weights)

    @staticmethod
    def _spec(group):
        return (("step", 0.0), ("square_avg", 0.0)) + \
            ((("momentum_buffer", 0.0),) if _scalar(group["momentum"]) > 0 else ()) + \
            ((("grad_avg", 0.0),) if group["centered"] else ())

    def _group_step(self, group, keys, params, grads):
        momentum = _scalar(group["momentum"])
        centered = bool(group["centered"])
        lists, buckets = self._state_lists(group, keys, params, self._spec(group))
        for idx in buckets:
            pick = _picker(idx, len(params))
            _ops.rmsprop_step(pick(params), pick(grads), pick(lists["square_avg"]),
                              pick(lists["grad_avg"]) if centered else [],
                              pick(lists["momentum_buffer"]) if momentum > 0 else [],
                              pick(lists["step"]),
                              lr=_scalar(group["lr"]), alpha=_scalar(group["alpha"]),
                              eps=_scalar(group["eps"]),
                              weight_decay=_scalar(group["weight_decay"]), momentum=momentum,
                              centered=centered, maximize=bool(group["maximize"]),
                              backend=self.backend, **self._amp(params[idx[0]].device))


class Adagrad(_FusedStep, torch.optim.Adagrad):
    __doc__ = "pydl's fused multi-tensor " + (torch.optim.Adagrad.__doc__ or "Adagrad")
    _pydl_name = "Adagrad"

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
                 eps=1e-10, foreach=None, *, maximize=False, differentiable=False, fused=None,
                 backend: Optional[str] = None, master_weights: bool = False):
        super().__init__(params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value, eps=eps,
                         foreach=foreach, maximize=maximize, differentiable=differentiable,
                         fused=fused)
        self._pydl_setup(backend, False, differentiable, master_weights)
        # torch creates Adagrad's state eagerly, in the parameter's dtype; pydl keeps
        # float32 sums for 16-bit parameters, filled anew (not converted from torch's
        # 16-bit fill, which would carry initial_accumulator_value rounded to 16 bits)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dtype in (torch.float16, torch.bfloat16):
                    self.state[p].pop("sum", None)
                self._state_tensor(self.state[p], "sum", p,
                                   fill=_scalar(group["initial_accumulator_value"]))

    @staticmethod
    def _spec(group):
        # (a param added by add_param_group has no state yet: "sum" is made at its first step)
        return (("step", 0.0), ("sum", _scalar(group["initial_accumulator_value"])))

    def _group_step(self, group, keys, params, grads):
        lists, buckets = self._state_lists(group, keys, params, self._spec(group))
        for idx in buckets:
            pick = _picker(idx, len(params))
            _ops.adagrad_step(pick(params), pick(grads), pick(lists["sum"]),
                              pick(lists["step"]), lr=_scalar(group["lr"]),
                              lr_decay=_scalar(group["lr_decay"]),
                              weight_decay=_scalar(group["weight_decay"]),
                              eps=_scalar(group["eps"]), maximize=bool(group["maximize"]),
                              backend=self.backend, **self._amp(params[idx[0]].device))
