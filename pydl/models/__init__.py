"""pydl.models: the architectures of a deep-learning course, built from pydl layers.

LeNet-5, an AlexNet, VGG-11/16 and ResNet-18/34/50, with torchvision's module names
(and so state_dict keys) and initialisation, so a torchvision checkpoint loads with
`load_state_dict(..., strict=True)`. Each builder takes `layers=`: the module namespace
the layers come from -- pydl.nn by default, torch.nn for a plain-torch twin.
"""
from __future__ import annotations

from types import ModuleType
from typing import Optional

import torch
from torch import nn

__all__ = ["LeNet5", "AlexNet", "VGG", "ResNet", "lenet5", "alexnet", "vgg11", "vgg16",
           "resnet18", "resnet34", "resnet50"]

_NEEDED = ("Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d")


def _layers(layers: Optional[ModuleType]):
    if layers is None:
        from .. import nn as layers
    missing = [n for n in _NEEDED if not hasattr(layers, n)]
    if missing:
        raise RuntimeError(f"pydl.models: {layers.__name__} lacks {', '.join(missing)}")
    return layers


class LeNet5(nn.Module):
    """LeCun et al. 1998 for 32x32 single-channel images: two 5x5 conv + pooling stages and
    three fully connected layers (ReLU and max pooling, as usually taught today)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, layers=None):
        super().__init__()
        L = _layers(layers)
        self.features = nn.Sequential(
            L.Conv2d(in_channels, 6, 5), L.ReLU(inplace=True), L.MaxPool2d(2),
            L.Conv2d(6, 16, 5), L.ReLU(inplace=True), L.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120), L.ReLU(inplace=True), nn.Linear(120, 84), L.ReLU(inplace=True),
            nn.Linear(84, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class AlexNet(nn.Module):
    """torchvision's AlexNet (Krizhevsky et al. 2012, the one-GPU variant)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, layers=None):
        super().__init__()
        L = _layers(layers)
        self.features = nn.Sequential(
            L.Conv2d(3, 64, 11, stride=4, padding=2), L.ReLU(inplace=True), L.MaxPool2d(3, 2),
            L.Conv2d(64, 192, 5, padding=2), L.ReLU(inplace=True), L.MaxPool2d(3, 2),
            L.Conv2d(192, 384, 3, padding=1), L.ReLU(inplace=True),
            L.Conv2d(384, 256, 3, padding=1), L.ReLU(inplace=True),
            L.Conv2d(256, 256, 3, padding=1), L.ReLU(inplace=True), L.MaxPool2d(3, 2))
        self.avgpool = L.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(256 * 6 * 6, 4096), L.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(4096, 4096), L.ReLU(inplace=True), nn.Linear(4096, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


_VGG_CFG = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """torchvision's VGG (Simonyan & Zisserman 2014), optionally with batch norm."""

    def __init__(self, cfg: list, num_classes: int = 1000, batch_norm: bool = False,
                 dropout: float = 0.5, layers=None):
        super().__init__()
        L = _layers(layers)
        feats, c = [], 3
        for v in cfg:
            if v == "M":
                feats.append(L.MaxPool2d(2, 2))
            else:
                feats.append(L.Conv2d(c, v, 3, padding=1))
                if batch_norm:
                    feats.append(L.BatchNorm2d(v))
                feats.append(L.ReLU(inplace=True))
                c = v
        self.features = nn.Sequential(*feats)
        self.avgpool = L.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), L.ReLU(True), nn.Dropout(dropout),
            nn.Linear(4096, 4096), L.ReLU(True), nn.Dropout(dropout), nn.Linear(4096, num_classes))
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, L, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = L.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = L.BatchNorm2d(planes)
        self.relu = L.ReLU(inplace=True)
        self.conv2 = L.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = L.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4  # ResNet v1.5: the stride sits in the 3x3 conv, as in torchvision

    def __init__(self, L, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = L.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = L.BatchNorm2d(planes)
        self.conv2 = L.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = L.BatchNorm2d(planes)
        self.conv3 = L.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = L.BatchNorm2d(planes * 4)
        self.relu = L.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet (He et al. 2015)."""

    def __init__(self, block, counts, num_classes: int = 1000, layers=None):
        super().__init__()
        L = _layers(layers)
        self.inplanes = 64
        self.conv1 = L.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = L.BatchNorm2d(64)
        self.relu = L.ReLU(inplace=True)
        self.maxpool = L.MaxPool2d(3, 2, 1)
        self.layer1 = self._make(L, block, 64, counts[0], 1)
        self.layer2 = self._make(L, block, 128, counts[1], 2)
        self.layer3 = self._make(L, block, 256, counts[2], 2)
        self.layer4 = self._make(L, block, 512, counts[3], 2)
        self.avgpool = L.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make(self, L, block, planes, n, stride):
        down = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            down = nn.Sequential(L.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                 L.BatchNorm2d(planes * block.expansion))
        blocks = [block(L, self.inplanes, planes, stride, down)]
        self.inplanes = planes * block.expansion
        blocks += [block(L, self.inplanes, planes) for _ in range(1, n)]
        return nn.Sequential(*blocks)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def lenet5(num_classes: int = 10, layers=None) -> LeNet5:
    return LeNet5(num_classes, layers=layers)


def alexnet(num_classes: int = 1000, layers=None) -> AlexNet:
    return AlexNet(num_classes, layers=layers)


def vgg11(num_classes: int = 1000, batch_norm: bool = False, layers=None) -> VGG:
    return VGG(_VGG_CFG["vgg11"], num_classes, batch_norm, layers=layers)


def vgg16(num_classes: int = 1000, batch_norm: bool = False, layers=None) -> VGG:
    return VGG(_VGG_CFG["vgg16"], num_classes, batch_norm, layers=layers)


def resnet18(num_classes: int = 1000, layers=None) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, layers=layers)


def resnet34(num_classes: int = 1000, layers=None) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, layers=layers)


def resnet50(num_classes: int = 1000, layers=None) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, layers=layers)
