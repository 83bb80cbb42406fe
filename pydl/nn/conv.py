"""Conv2d: torch.nn.Conv2d with pydl kernels.

Constructor, attributes, parameter initialization, repr and state_dict are torch's (this
is a subclass); only the convolution itself runs pydl's kernels. padding_mode other than
'zeros' pads the input first with F.pad and then convolves with zero padding, exactly as
torch.nn.Conv2d does.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as TF
from torch import nn

from .. import functional as F
from ._fx import FxLeaf


class Conv2d(FxLeaf, nn.Conv2d):
    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None, *, backend: Optional[str] = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, padding_mode, device, dtype)
        self.backend = backend

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(input, self.weight, self.bias)  # (torch's; see FxLeaf)

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor,
                      bias: Optional[torch.Tensor]) -> torch.Tensor:
        if self.padding_mode != "zeros":
            input = TF.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups,
                            backend=self.backend)
        return F.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups,
                        backend=self.backend)
