"""pydl.nn: drop-in replacements for torch.nn layers.

Each class subclasses its torch.nn namesake, so constructor signature, attributes,
repr, state_dict keys and isinstance checks are torch's; only forward runs pydl's
kernels. Each also accepts a keyword-only ``backend=`` (None: follow
``pydl.backend(...)`` / PYDL_BACKEND / auto).
"""
from .activation import ELU, LeakyReLU, ReLU, Sigmoid, Tanh  # noqa: F401
from .conv import Conv2d  # noqa: F401

__all__ = ["ReLU", "LeakyReLU", "ELU", "Sigmoid", "Tanh"]
__all__ += ["Conv2d"]
