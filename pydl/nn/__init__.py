"""pydl.nn: drop-in replacements for torch.nn layers.

Each class subclasses its torch.nn namesake, so constructor signature, attributes,
repr, state_dict keys and isinstance checks are torch's; only forward runs pydl's
kernels. Each also accepts a keyword-only ``backend=`` (None: follow
``pydl.backend(...)`` / PYDL_BACKEND / auto). BatchNormAct2d (BN + optional residual +
activation in one op) has no torch counterpart; its state_dict is BatchNorm2d's.
"""
from .activation import ELU, LeakyReLU, ReLU, Sigmoid, Tanh  # noqa: F401
from .batchnorm import BatchNorm1d, BatchNorm2d, BatchNormAct2d, SyncBatchNorm  # noqa: F401
from .conv import Conv2d  # noqa: F401
from .pool import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, MaxPool2d  # noqa: F401

__all__ = ["Conv2d",
           "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d",
           "BatchNorm1d", "BatchNorm2d", "BatchNormAct2d", "SyncBatchNorm",
           "ReLU", "LeakyReLU", "ELU", "Sigmoid", "Tanh"]
