"""Pooling modules: torch.nn.MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, AdaptiveMaxPool2d
with pydl kernels."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import functional as F
from ._fx import FxLeaf


class MaxPool2d(FxLeaf, nn.MaxPool2d):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1,
                 return_indices: bool = False, ceil_mode: bool = False, *,
                 backend: Optional[str] = None):
        super().__init__(kernel_size, stride, padding, dilation, return_indices, ceil_mode)
        self.backend = backend

    def forward(self, input: torch.Tensor):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices,
                            backend=self.backend)


class AvgPool2d(FxLeaf, nn.AvgPool2d):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: Optional[int] = None, *,
                 backend: Optional[str] = None):
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad,
                         divisor_override)
        self.backend = backend

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override, backend=self.backend)


class AdaptiveAvgPool2d(FxLeaf, nn.AdaptiveAvgPool2d):
    def __init__(self, output_size, *, backend: Optional[str] = None):
        super().__init__(output_size)
        self.backend = backend

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(input, self.output_size, backend=self.backend)


class AdaptiveMaxPool2d(FxLeaf, nn.AdaptiveMaxPool2d):
    def __init__(self, output_size, return_indices: bool = False, *,
                 backend: Optional[str] = None):
        super().__init__(output_size, return_indices)
        self.backend = backend

    def forward(self, input: torch.Tensor):
        return F.adaptive_max_pool2d(input, self.output_size, self.return_indices,
                                     backend=self.backend)
