"""The model, data and training loop shared by the data-parallel tests and their workers."""
import torch
import torch.nn.functional as TF
from torch import nn

import pydl


def build(kind: str) -> nn.Module:
    """kind: "plain" (no batch norm), "bn" (pydl BatchNorm1d) or "syncbn" (pydl
    SyncBatchNorm, converted from the "bn" model)."""
    torch.manual_seed(0)
    layers = [nn.Linear(11, 16)] + ([nn.BatchNorm1d(16)] if kind != "plain" else []) + \
        [nn.ReLU(), nn.Linear(16, 16), nn.ELU(), nn.Linear(16, 3)]
    model = pydl.convert(nn.Sequential(*layers))
    if kind == "syncbn":
        model = pydl.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        assert type(model[1]) is pydl.nn.SyncBatchNorm
    return model


def optimizer(params):
    return pydl.optim.SGD(params, lr=0.1, momentum=0.9)


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(12, 11, generator=g), torch.randint(0, 3, (12,), generator=g)


def train_steps(model, opt, x, y, scale=1.0, steps=4, allreduce=None):
    for _ in range(steps):
        opt.zero_grad()
        (TF.cross_entropy(model(x), y) * scale).backward()
        if allreduce is not None:
            allreduce(model)
        opt.step()
