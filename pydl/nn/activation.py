"""Activation modules: torch.nn.ReLU, LeakyReLU, ELU, Sigmoid, Tanh with pydl kernels."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import functional as F
from ._fx import FxLeaf


class ReLU(FxLeaf, nn.ReLU):
    def __init__(self, inplace: bool = False, *, backend: Optional[str] = None):
        super().__init__(inplace)
        self.backend = backend

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.relu(input, self.inplace, backend=self.backend)


class LeakyReLU(FxLeaf, nn.LeakyReLU):
    def __init__(self, negative_slope: float = 0.01, inplace: bool = False, *,
                 backend: Optional[str] = None):
        super().__init__(negative_slope, inplace)
        self.backend = backend

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(input, self.negative_slope, self.inplace, backend=self.backend)


class ELU(FxLeaf, nn.ELU):
    def __init__(self, alpha: float = 1.0, inplace: bool = False, *,
                 backend: Optional[str] = None):
        super().__init__(alpha, inplace)
        self.backend = backend

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.elu(input, self.alpha, self.inplace, backend=self.backend)


class Sigmoid(FxLeaf, nn.Sigmoid):
    def __init__(self, *, backend: Optional[str] = None):
        super().__init__()
        self.backend = backend

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.sigmoid(input, backend=self.backend)


class Tanh(FxLeaf, nn.Tanh):
    def __init__(self, *, backend: Optional[str] = None):
        super().__init__()
        self.backend = backend

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.tanh(input, backend=self.backend)
