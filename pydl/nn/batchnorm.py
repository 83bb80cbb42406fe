"""Batch-norm modules: torch.nn.BatchNorm1d, BatchNorm2d and SyncBatchNorm with pydl
kernels, and the fused BatchNormAct2d (BN [+ residual] + activation).

Each subclasses its torch.nn namesake (BatchNormAct2d subclasses BatchNorm2d), so the
constructor, attributes (running_mean, running_var, num_batches_tracked, ...), repr and
state_dict keys are torch's: a torch checkpoint loads unchanged. forward follows
torch's _BatchNorm.forward line by line (momentum=None -> cumulative average over
num_batches_tracked; track_running_stats=False -> batch statistics in eval too), only
the compute runs on pydl's kernels.
"""
from __future__ import annotations

import inspect
from typing import Any, Optional

import torch
from torch import nn

from .. import ops
from ._fx import FxLeaf

# torch's batch norms take `bias=` (an affine weight without a bias) in recent releases only
# (2.14 has it, 2.11 has not); pydl's take it exactly where the installed torch does, so the
# signature stays torch's.
TORCH_HAS_BN_BIAS = "bias" in inspect.signature(nn.modules.batchnorm._NormBase.__init__).parameters


def _bias_kw(bias: bool, cls: str) -> dict:
    if TORCH_HAS_BN_BIAS:
        return {"bias": bias}
    if not bias:
        raise TypeError(f"{cls}.__init__() got an unexpected keyword argument 'bias' (this torch, "
                        f"{torch.__version__}, has no bias argument for batch norm)")
    return {}


def _factor_and_stats(m: nn.modules.batchnorm._BatchNorm):
    """(exponential_average_factor, bn_training, running_mean, running_var) as torch's
    _BatchNorm.forward computes them; bumps num_batches_tracked in training."""
    factor = 0.0 if m.momentum is None else m.momentum
    if m.training and m.track_running_stats:
        if m.num_batches_tracked is not None:
            m.num_batches_tracked.add_(1)
            if m.momentum is None:  # cumulative moving average
                factor = 1.0 / float(m.num_batches_tracked)
            else:
                factor = m.momentum
    bn_training = True if m.training else (m.running_mean is None and m.running_var is None)
    use_buffers = not m.training or m.track_running_stats
    return (factor, bn_training, m.running_mean if use_buffers else None,
            m.running_var if use_buffers else None)


class _PydlBatchNormMixin:
    def _pydl_forward(self, input, residual=None, act="none", alpha=0.0):
        self._check_input_dim(input)
        factor, bn_training, rm, rv = _factor_and_stats(self)
        return ops.batch_norm(input, rm, rv, self.weight, self.bias, bn_training, factor,
                              self.eps, residual=residual, act=act, alpha=alpha,
                              backend=self.backend)


class BatchNorm1d(FxLeaf, _PydlBatchNormMixin, nn.BatchNorm1d):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None,
                 *, bias: bool = True, backend: Optional[str] = None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         **_bias_kw(bias, "BatchNorm1d"))
        self.backend = backend

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._pydl_forward(input)


class BatchNorm2d(FxLeaf, _PydlBatchNormMixin, nn.BatchNorm2d):
    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None,
                 *, bias: bool = True, backend: Optional[str] = None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         **_bias_kw(bias, "BatchNorm2d"))
        self.backend = backend

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._pydl_forward(input)


class BatchNormAct2d(BatchNorm2d):
    """act(BatchNorm2d(x) [+ residual]) in one fused op: the tail of a ResNet block
    (bn3 -> += identity -> relu). act is "relu", "leaky_relu" (negative_slope >= 0) or
    None. Parameters and buffers are BatchNorm2d's, so a BatchNorm2d state_dict loads.

        forward(input, residual=None)
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None,
                 *, bias: bool = True, act: Optional[str] = "relu", negative_slope: float = 0.01,
                 backend: Optional[str] = None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         bias=bias, backend=backend)
        if act not in (None, "none", "relu", "leaky_relu"):
            raise ValueError(f"BatchNormAct2d: act must be 'relu', 'leaky_relu' or None, got {act!r}")
        if act == "leaky_relu" and negative_slope < 0:
            raise ValueError(f"BatchNormAct2d: negative_slope must be >= 0, got {negative_slope}")
        self.act = "none" if act is None else act
        self.negative_slope = float(negative_slope)

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", act={self.act}"
        if self.act == "leaky_relu":
            s += f", negative_slope={self.negative_slope}"
        return s

    def forward(self, input: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        alpha = self.negative_slope if self.act == "leaky_relu" else 0.0
        return self._pydl_forward(input, residual, self.act, alpha)


class SyncBatchNorm(FxLeaf, nn.SyncBatchNorm):
    """torch.nn.SyncBatchNorm on pydl kernels. In training, with torch.distributed
    initialized and more than one process in the group, the statistics span every
    process (pydl.ops.batchnorm.SyncBatchNormFunction: all_gather of per-process
    (count, mean, M2), all_reduce of the backward sums); works on CPU with gloo as well
    as on GPUs with NCCL, and with unequal per-process batch sizes. Otherwise it is
    plain batch norm, as torch's."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True,
                 process_group: Optional[Any] = None, device=None, dtype=None, *,
                 bias: bool = True, backend: Optional[str] = None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, process_group,
                         device, dtype, **_bias_kw(bias, "SyncBatchNorm"))
        self.backend = backend

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        factor, bn_training, rm, rv = _factor_and_stats(self)
        need_sync = (bn_training and self.training and torch.distributed.is_available()
                     and torch.distributed.is_initialized())
        world_size = 1
        process_group = None
        if need_sync:
            process_group = self.process_group or torch.distributed.group.WORLD
            world_size = torch.distributed.get_world_size(process_group)
            need_sync = world_size > 1
        if not need_sync:
            return ops.batch_norm(input, rm, rv, self.weight, self.bias, bn_training, factor,
                                  self.eps, backend=self.backend)
        return ops.sync_batch_norm(input, rm, rv, self.weight, self.bias, self.eps, factor,
                                   process_group, world_size, backend=self.backend)

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group: Optional[Any] = None,
                               *, backend: Optional[str] = None) -> nn.Module:
        """Every BatchNorm*D (torch's or pydl's) in `module` replaced by a pydl
        SyncBatchNorm sharing its parameters and buffers, as torch's classmethod does.
        A BatchNormAct2d (whose activation SyncBatchNorm cannot carry) is left as is."""
        out = module
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and \
                not isinstance(module, BatchNormAct2d):
            out = cls(module.num_features, module.eps, module.momentum, module.affine,
                      module.track_running_stats, process_group,
                      **_bias_kw(not module.affine or module.bias is not None, "SyncBatchNorm"),
                      backend=backend if backend is not None else getattr(module, "backend", None))
            if module.affine:
                with torch.no_grad():
                    out.weight = module.weight
                    out.bias = module.bias
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
            out.training = module.training
            if hasattr(module, "qconfig"):
                out.qconfig = module.qconfig
        for name, child in module.named_children():
            out.add_module(name, cls.convert_sync_batchnorm(child, process_group, backend=backend))
        del module
        return out
