"""Networks: a MONAI backbone (DenseNet-121, ResNet-18 or a small CNN), trained from scratch,
whose pooled image features are concatenated with the tabular features before one linear
head. ``build_network`` rebuilds the same module from a registry entry's architecture and
input spec, so saved weights (a ``state_dict``) load back."""

from __future__ import annotations

import torch
from monai.networks.blocks.convolutions import Convolution
from monai.networks.nets.densenet import DenseNet121
from monai.networks.nets.resnet import resnet18
from torch import nn

from medflow.core.errors import InvalidInput

ARCHITECTURES = ("densenet121", "resnet18", "small")


class SmallCnn(nn.Module):
    """Four stride-2 conv blocks (conv, batch norm, PReLU; 16 to 128 channels) with a second
    3x3 conv in each, then global average pooling: 128 features, fast on a CPU at 128 px."""

    features = 128

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for out in (16, 32, 64, 128):
            layers.append(Convolution(2, channels, out, strides=2, norm="BATCH", act="PRELU"))
            layers.append(Convolution(2, out, out, strides=1, norm="BATCH", act="PRELU"))
            channels = out
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.body(x)), 1)


def _backbone(arch: str, in_channels: int) -> tuple[nn.Module, int]:
    if arch == "densenet121":
        dense = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=1)
        dense.class_layers.out = nn.Identity()
        return dense, 1024
    if arch == "resnet18":
        res = resnet18(spatial_dims=2, n_input_channels=in_channels, num_classes=1)
        res.fc = nn.Identity()  # type: ignore[assignment]
        return res, 512
    if arch == "small":
        return SmallCnn(in_channels), SmallCnn.features
    raise InvalidInput(f"unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})")


class Classifier(nn.Module):
    """Image backbone, optional tabular features concatenated, dropout, a linear head."""

    def __init__(self, arch: str, *, in_channels: int, classes: int, tabular: int = 0) -> None:
        super().__init__()
        self.backbone, width = _backbone(arch, in_channels)
        self.tabular = tabular
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(width + tabular, classes)

    def forward(self, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        z = self.backbone(x)
        if self.tabular:
            if features is None:
                raise InvalidInput("this model needs its tabular features")
            z = torch.cat([z, features], dim=1)
        out: torch.Tensor = self.head(self.dropout(z))
        return out


def build_network(arch: str, *, in_channels: int, classes: int, tabular: int = 0) -> Classifier:
    return Classifier(arch, in_channels=in_channels, classes=classes, tabular=tabular)
