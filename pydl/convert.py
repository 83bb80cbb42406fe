"""pydl.convert / pydl.revert: swap the torch.nn layers of any model for their pydl
counterparts (and back), keeping everything else.

A pydl layer is a subclass of its torch.nn namesake that only changes `forward`, so a
conversion re-types the module object's state: the new module shares the very
parameter and buffer tensors, hooks, training flag, device, dtype and memory format of
the old one, and state_dict keys do not change. Only modules whose type is *exactly* a
supported torch.nn class are converted: a user subclass may override forward, so it is
left alone, as is any configuration a pydl class declares it does not support (its
`unsupported(module)` classmethod returns the reason). Everything left is listed in the
report. A layer that torch.nn.utils.parametrize re-typed (weight_norm, spectral_norm: a
per-module class Parametrized<Name> over the layer's class) is converted as its layer
class, the parametrization class rebuilt over pydl's.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Optional

from torch import nn
from torch.nn.utils import parametrize


def _pairs() -> dict[type, type]:
    """torch.nn class -> pydl.nn class, from pydl.nn's classes and their torch bases."""
    from . import nn as pnn
    out = {}
    for name in pnn.__all__:
        cls = getattr(pnn, name)
        base = getattr(nn, name, None)
        if isinstance(cls, type) and isinstance(base, type) and issubclass(cls, base):
            out[base] = cls
    return out


@dataclass
class ConvertReport:
    converted: list = field(default_factory=list)   # (qualified name, torch class name)
    left: list = field(default_factory=list)        # (qualified name, class name, reason)

    def __str__(self) -> str:
        lines = [f"pydl.convert: {len(self.converted)} layer(s) converted, {len(self.left)} left as torch"]
        lines += [f"  converted {n or '<root>'}: {c}" for n, c in self.converted]
        lines += [f"  left      {n or '<root>'}: {c} ({why})" for n, c, why in self.left]
        return "\n".join(lines)


def _retype(module: nn.Module, cls: type, **extra) -> nn.Module:
    if _parametrized_base(module) is not None:  # keep its parametrizations, over `cls`
        cls = _rebased(type(module), cls)
    new = cls.__new__(cls)
    new.__dict__ = {k: v for k, v in module.__dict__.items() if k != "backend"}
    new.__dict__.update(extra)
    return new


def _parametrized_base(m: nn.Module) -> Optional[type]:
    """The class a module had before torch.nn.utils.parametrize re-typed it (it makes a
    class Parametrized<Name> per module, whose one base is the old class and which adds
    only properties for the parametrized tensors and serialization guards), else None."""
    cls = type(m)
    if not parametrize.is_parametrized(m) or len(cls.__bases__) != 1 or "forward" in cls.__dict__:
        return None
    return cls.__bases__[0]


_REBASED: dict = {}  # (parametrized class, new base) -> the same class over the new base


def _rebased(cls: type, base: type) -> type:
    """torch.nn.utils.parametrize's per-module class `cls` (its properties and guards) over
    another base class, as parametrize would have made it for a module of class `base`:
    remove_parametrizations then restores `base`."""
    key = (cls, base)
    if key not in _REBASED:
        own = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
        _REBASED[key] = type(f"Parametrized{base.__name__}", (base,), own)
    return _REBASED[key]


def _deepcopy(model: nn.Module) -> nn.Module:
    try:
        return copy.deepcopy(model)
    except RuntimeError as e:
        # e.g. pruning and the old weight_norm keep computed (non-leaf) tensors as attributes,
        # which torch cannot deep-copy
        raise RuntimeError(f"pydl: the model cannot be deep-copied ({e}); pass inplace=True to "
                           "convert it in place") from e


def _swap(model: nn.Module, decide) -> nn.Module:
    """Replace modules throughout `model` (root included) by decide(name, module) (None =
    keep), mapping a module shared in several places to one replacement."""
    done: dict[int, nn.Module] = {}

    def visit(name: str, m: nn.Module) -> nn.Module:
        if id(m) in done:
            return done[id(m)]
        new = decide(name, m) or m
        done[id(m)] = new
        for child_name, child in list(new._modules.items()):
            if child is not None:
                new._modules[child_name] = visit(f"{name}.{child_name}" if name else child_name, child)
        return new

    return visit("", model)


def convert(model: nn.Module, backend: Optional[str] = None, inplace: bool = False,
            report: bool = False):
    """Return `model` with every supported torch.nn layer replaced by pydl's (a deep copy
    unless inplace=True). backend: the pydl backend those layers use (None: follow
    pydl.backend(...) / PYDL_BACKEND / auto). With report=True, returns (model, ConvertReport)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"pydl.convert: model must be an nn.Module, got {type(model).__name__}")
    if backend is not None:
        from ._dispatch import _check_name
        _check_name(backend, "backend")
    pairs = _pairs()
    pydl_classes = set(pairs.values())
    rep = ConvertReport()
    if not inplace:
        model = _deepcopy(model)

    def decide(name, m):
        # a parametrized layer (weight_norm, spectral_norm, ...) is converted as its class
        # before parametrizing, keeping its parametrizations (_retype)
        cls = _parametrized_base(m) or type(m)
        if cls in pydl_classes:  # already pydl: only a backend given now is applied
            if backend is not None:
                m.backend = backend
            return None
        target = pairs.get(cls)
        if target is None:
            torch_base = next((b for b in cls.__mro__[1:] if b in pairs), None)
            if torch_base is not None:
                rep.left.append((name, cls.__name__, f"subclass of nn.{torch_base.__name__} with its own "
                                                      "code: left as is"))
            return None
        why = target.unsupported(m) if hasattr(target, "unsupported") else None
        if why:
            rep.left.append((name, cls.__name__, why))
            return None
        rep.converted.append((name, type(m).__name__))
        return _retype(m, target, backend=backend)

    model = _swap(model, decide)
    return (model, rep) if report else model


def revert(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return `model` with every pydl layer turned back into its plain torch.nn class."""
    back = {v: k for k, v in _pairs().items()}
    if not inplace:
        model = _deepcopy(model)

    def decide(name, m):
        cls = _parametrized_base(m) or type(m)
        return _retype(m, back[cls]) if cls in back else None
    return _swap(model, decide)
