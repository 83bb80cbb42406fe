"""The model, data and training loop shared by the data-parallel test and its workers."""
import torch
import torch.nn.functional as TF
from torch import nn

import pydl


def build(sync_bn: bool) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(11, 16), nn.ReLU(), nn.Linear(16, 16), nn.ELU(), nn.Linear(16, 3))
    return pydl.convert(model)


def optimizer(params):
    return pydl.optim.SGD(params, lr=0.1, momentum=0.9)


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(12, 11, generator=g), torch.randint(0, 3, (12,), generator=g)


def train_steps(model, opt, x, y, scale=1.0, steps=4):
    for _ in range(steps):
        opt.zero_grad()
        (TF.cross_entropy(model(x), y) * scale).backward()
        opt.step()
