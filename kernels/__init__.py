"""pydl's Triton kernels (installed as ``pydl.kernels``): one module per op family,
holding only ``@triton.jit`` kernels and the helpers that launch them on given tensors.
Registration as torch ops, fake kernels and autograd live in ``pydl/ops/``.

With ``TRITON_INTERPRET=1`` set before this package is imported, ``triton.jit`` builds
interpreted kernels that run on CPU tensors (slow; for tests on tiny shapes).
"""
import os

import triton  # noqa: F401  (an ImportError here marks the triton backend unavailable)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def index_type(*sizes):
    """The type a kernel decomposes flat indices in (its IDX constexpr): int32 -- a 64-bit
    division is a long software routine on the GPU, and int64 index tensors take twice the
    registers -- unless some index space (elements, pixels, reduction length, a window
    product) comes near 2^31, with margin for a last block and split bounds. Addresses
    are int64 either way where a kernel widens an index before it meets a stride."""
    import triton.language as tl

    return tl.int64 if max(sizes) >= 2 ** 30 else tl.int32

if INTERPRET:
    import warnings

    # The interpreter evaluates both sides of tl.where in numpy, which warns about the
    # discarded side (log(0), 0/0 in masked-out lanes). Those values are never used.
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="triton.runtime.interpreter")
