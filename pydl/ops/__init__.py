"""The one dispatch point: each module here chooses the backend for its op family,
registers the fake (meta) kernels and the autograd formulas, and exposes plain Python
functions that ``pydl.functional``, ``pydl.nn`` and ``pydl.optim`` call.

C++ ops (cpu + cuda) are ``torch.ops.pydl.*`` (schemas in csrc/pydl.cpp); Triton ops
are ``torch.ops.pydl_triton.*`` (``torch.library.custom_op``, defined here). In eager mode
the calls skip torch.ops' boxed calling convention where that changes nothing
(``_util.op_caller``: ``pydl._C.eager`` for the C++ ops, the bare function for Triton's).
"""
from .activation import act  # noqa: F401
from . import optim  # noqa: F401  (fused optimizer steps)
from .batchnorm import batch_norm, sync_batch_norm  # noqa: F401
from .pool import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d  # noqa: F401
from .conv import conv2d  # noqa: F401

# vmap rules for every op above (torch.func.vmap over pydl layers: pydl.ops._vmap)
from .. import _dispatch as _dispatch_  # noqa: E402
from . import _vmap  # noqa: E402

if _dispatch_._C is not None:
    _vmap.register("pydl")
if _dispatch_._kernels is not None:
    _vmap.register("pydl_triton")
