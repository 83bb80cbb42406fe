"""pydl: hand-written CUDA C++, Triton and C++ kernels for CNN training, as PyTorch ops,
modules and optimizers that drop into torch code.

    import pydl
    y = pydl.functional.relu(x)                 # or pydl.nn.ReLU()(x)
    with pydl.backend("triton"):                # "cuda", "cpu", "torch", default "auto"
        ...
    pydl.backends()                             # what is compiled and usable here
    model = pydl.convert(model)                 # swap supported torch.nn layers for pydl's
"""
import torch  # noqa: F401  (pydl._C needs torch's libraries loaded first)

from ._dispatch import BUILD_INFO, BackendUnavailable, backend, backends  # noqa: F401
from . import ops  # noqa: F401  (registers fake kernels and autograd)
from . import functional, nn  # noqa: F401
from .convert import ConvertReport, convert, revert  # noqa: F401
from . import optim  # noqa: F401  (fused optimizers)

__version__ = "0.1.0"

__all__ = ["backend", "backends", "BackendUnavailable", "BUILD_INFO", "convert", "revert", "ConvertReport", "optim",
           "functional", "nn", "ops"]
