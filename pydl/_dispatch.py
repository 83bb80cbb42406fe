"""Loading ``pydl._C`` and choosing a backend: the machinery behind ``pydl/ops``.

Every op in ``pydl/ops/`` asks :func:`resolve` which backend runs it. The order is

1. an explicit ``backend=`` argument,
2. the innermost ``with pydl.backend(...)`` block, else the ``PYDL_BACKEND`` variable
   (read when pydl is imported),
3. ``"auto"``: CPU tensors -> ``cpu`` (C++); CUDA tensors -> the faster of ``cuda`` /
   ``triton`` for that op, as measured by the bench (``AUTO_CUDA`` below).

A backend that was asked for and cannot run here raises :class:`BackendUnavailable`;
nothing falls back silently. ``torch`` (PyTorch's own op) is a backend like the others:
the reference, used only when named.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator, NamedTuple, Optional

import torch

NAMES = ("auto", "cpu", "cuda", "triton", "torch")

# Which kernel family "auto" picks for CUDA tensors, per op. Set from the bench's GPU
# measurements (bench/results/); an op not listed prefers the CUDA C++ kernels.
AUTO_CUDA: dict[str, str] = {}


class BackendUnavailable(RuntimeError):
    """A backend was requested that is not compiled or cannot run on this device."""


# --------------------------------------------------------------------------- loading _C
try:  # the extension registers torch.ops.pydl.* (and needs torch imported first)
    from . import _C  # type: ignore[attr-defined]

    _C_ERROR: Optional[str] = None
    BUILD_INFO: dict = dict(_C.build_info())
except ImportError as e:  # a missing or broken build leaves Triton and torch usable
    _C = None
    _C_ERROR = f"{type(e).__name__}: {e}"
    BUILD_INFO = {"compiled_backends": [], "cuda_arch_list": "", "cuda_version": "",
                  "torch_version": "", "compiler": "", "debug": False}
    warnings.warn(f"pydl: the C++/CUDA extension pydl._C could not be loaded ({_C_ERROR}); "
                  "the cpu and cuda backends are unavailable, triton and torch still work. "
                  "Build it with `pip install --no-build-isolation -e .`.", RuntimeWarning,
                  stacklevel=2)

try:
    from . import kernels as _kernels  # Triton kernels; imports triton

    _TRITON_ERROR: Optional[str] = None
except ImportError as e:
    _kernels = None
    _TRITON_ERROR = f"{type(e).__name__}: {e}"


def triton_interpreted() -> bool:
    """True when the Triton kernels were compiled by the interpreter (TRITON_INTERPRET=1
    when pydl was imported): then they run on CPU tensors."""
    return _kernels is not None and _kernels.INTERPRET


class BackendStatus(NamedTuple):
    compiled: bool     # the code is built / importable
    usable: bool       # it can run here on at least one device
    devices: tuple     # device types it accepts here ("cpu", "cuda")
    detail: str


def _probe() -> dict[str, BackendStatus]:
    gpu = torch.cuda.is_available()
    compiled = BUILD_INFO["compiled_backends"]
    out = {}
    if "cpu" in compiled:
        out["cpu"] = BackendStatus(True, True, ("cpu",), "C++ kernels in pydl._C")
    else:
        out["cpu"] = BackendStatus(False, False, (), _C_ERROR or "pydl._C built without cpu")
    if "cuda" in compiled:
        arch = BUILD_INFO["cuda_arch_list"]
        out["cuda"] = BackendStatus(True, gpu, ("cuda",) if gpu else (),
                                    f"CUDA {BUILD_INFO['cuda_version']}, sm {arch}"
                                    + ("" if gpu else "; no GPU visible"))
    else:
        out["cuda"] = BackendStatus(False, False, (), _C_ERROR or "pydl._C built without CUDA "
                                    "(no nvcc / CUDA toolkit at build time, or PYDL_BUILD_CUDA=0)")
    if _kernels is None:
        out["triton"] = BackendStatus(False, False, (), _TRITON_ERROR or "")
    else:
        import triton
        devs = (("cuda",) if gpu else ()) + (("cpu",) if triton_interpreted() else ())
        how = "interpreter (TRITON_INTERPRET=1)" if triton_interpreted() else "compiled"
        out["triton"] = BackendStatus(True, bool(devs), devs, f"Triton {triton.__version__}, {how}"
                                      + ("" if devs else "; no GPU and TRITON_INTERPRET unset"))
    out["torch"] = BackendStatus(True, True, ("cpu", "cuda") if gpu else ("cpu",),
                                 f"PyTorch {torch.__version__} (reference)")
    return out


_STATUS = _probe()  # fixed for the life of the process


def backends() -> dict[str, BackendStatus]:
    """What is compiled and usable here, per backend: {name: (compiled, usable, devices, detail)}."""
    return dict(_STATUS)


# ---------------------------------------------------------------------------- selection
_STACK: list[str] = []  # innermost `with pydl.backend(...)` last
# Read once, at import, like torch's own environment settings: os.environ.get costs
# ~2 us, a large share of a small op's host time.
_ENV: Optional[str] = os.environ.get("PYDL_BACKEND") or None


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or name not in NAMES:
        raise ValueError(f"{what} must be one of {', '.join(NAMES)}; got {name!r}")
    return name


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """``with pydl.backend("triton"): ...`` runs the pydl ops inside on that backend."""
    _STACK.append(_check_name(name, "pydl.backend(name)"))
    try:
        yield
    finally:
        _STACK.pop()


def requested(explicit: Optional[str] = None) -> str:
    """The backend asked for, before looking at the tensors."""
    if explicit is not None:
        return _check_name(explicit, "backend")
    if _STACK:
        return _STACK[-1]
    if _ENV:
        return _check_name(_ENV, "PYDL_BACKEND")
    return "auto"


def _usable_on(name: str, device: str) -> Optional[str]:
    """None if backend `name` can run on `device`, else why not."""
    st = _STATUS[name]
    if device in st.devices:
        return None
    if not st.compiled:
        return f"the {name} backend is not available: {st.detail}"
    if name == "triton" and device == "cpu":
        return ("the triton backend runs on CPU tensors only under the Triton interpreter "
                "(set TRITON_INTERPRET=1 before importing pydl)")
    return f"the {name} backend cannot run on {device} tensors ({st.detail})"


def _resolve_meta(op: str, name: str) -> str:
    """Meta tensors carry shapes, dtypes and strides, no data (a model built under
    `torch.device("meta")` for shape inference or deferred initialization). The C++ ops
    (the cpu and cuda backends' pydl:: ops) run on them through the dispatcher's Meta key:
    their registered shape functions -- the fake kernels opcheck holds to the real ones --
    give what a kernel would return, and nothing is computed. The Triton backend's eager
    path launches its kernels from Python, so it refuses meta tensors."""
    if name in ("auto", "cpu", "cuda") and _STATUS["cpu"].compiled:
        return "cpu"
    if name == "torch":
        return name
    raise BackendUnavailable(
        f"pydl.{op}: meta tensors run on the C++ ops' shape functions (backend 'cpu', 'cuda' or "
        f"auto), " + ("which need pydl._C: " + _STATUS["cpu"].detail if not _STATUS["cpu"].compiled
                     else f"not on the {name} backend"))


_RESOLVED: dict = {}  # (op, requested, device type) -> backend; _STATUS never changes
_compiling = torch.compiler.is_compiling


def resolve(op: str, device: torch.device, explicit: Optional[str] = None) -> str:
    """The backend that runs `op` on tensors of `device`.

    Eager calls memoize the answer in _RESOLVED. Traced ones (torch.compile) compute it
    afresh: dynamo would guard on the cache's contents -- a key absent when a graph was
    traced, then stored, fails that guard, and the model compiled before its first eager
    call was compiled twice (tests/test_dispatch.py test_compile_traces_once)."""
    name = requested(explicit)
    if _compiling():
        return _resolve(op, name, device.type)
    key = (op, name, device.type)
    hit = _RESOLVED.get(key)
    if hit is None:
        hit = _RESOLVED[key] = _resolve(op, name, device.type)
    return hit


def _resolve(op: str, name: str, dev: str) -> str:
    if dev == "meta":
        return _resolve_meta(op, name)
    if name == "auto":
        if dev == "cpu":
            name = "cpu"
        elif dev == "cuda":
            prefer = AUTO_CUDA.get(op, "cuda")
            other = "triton" if prefer == "cuda" else "cuda"
            name = other if _usable_on(prefer, dev) and not _usable_on(other, dev) else prefer
        else:
            raise BackendUnavailable(f"pydl.{op}: no pydl backend for {dev} tensors")
    why = _usable_on(name, dev)
    if why:
        raise BackendUnavailable(f"pydl.{op}: {why}")
    return name
