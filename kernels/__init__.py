"""pydl's Triton kernels (installed as ``pydl.kernels``): one module per op family,
holding only ``@triton.jit`` kernels and the helpers that launch them on given tensors.
Registration as torch ops, fake kernels and autograd live in ``pydl/ops/``.

With ``TRITON_INTERPRET=1`` set before this package is imported, ``triton.jit`` builds
interpreted kernels that run on CPU tensors (slow; for tests on tiny shapes).
"""
import os

import triton  # noqa: F401  (an ImportError here marks the triton backend unavailable)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

if INTERPRET:
    import warnings

    # The interpreter evaluates both sides of tl.where in numpy, which warns about the
    # discarded side (log(0), 0/0 in masked-out lanes). Those values are never used.
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="triton.runtime.interpreter")
