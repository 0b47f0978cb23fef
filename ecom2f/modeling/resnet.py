"""torchvision ResNet-18/50/101 with frozen batch norm, returning ``res2..res5``."""

from __future__ import annotations

import re

import torch
from torch import nn
from torchvision.models import resnet

from ecom2f.modeling.frozen_batch_norm import freeze_batch_norm

__all__ = ["ResNetBackbone", "RESNET_DEPTHS", "resnet_key_from_d2", "resnet_key_to_d2"]

RESNET_DEPTHS = {"resnet18": 18, "resnet50": 50, "resnet101": 101}
_BUILDERS = {"resnet18": resnet.resnet18, "resnet50": resnet.resnet50, "resnet101": resnet.resnet101}


class ResNetBackbone(nn.Module):
    """Stem + four stages; ``forward`` returns ``{"res2": [N, C2, H/4, W/4], ..., "res5": [N, C5, H/32, W/32]}``.

    Args:
        name: ``resnet18``, ``resnet50`` or ``resnet101``.
        freeze_at: detectron2's FREEZE_AT (0: train all; 1: freeze the stem; k: stem and res2..res{k}).
        stride_in_1x1: move each bottleneck's stride from the 3x3 conv (torchvision) to the first 1x1
            (detectron2 MSRA). Ignored for ResNet-18, whose blocks have no 1x1.
    """

    def __init__(self, name: str = "resnet50", freeze_at: int = 0, stride_in_1x1: bool = False) -> None:
        super().__init__()
        if name not in _BUILDERS:
            raise ValueError(f"unknown ResNet {name!r}; expected one of {sorted(_BUILDERS)}")
        net = freeze_batch_norm(_BUILDERS[name](weights=None))
        self.name = name
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        if stride_in_1x1 and isinstance(self.layer1[0], resnet.Bottleneck):
            for stage in (self.layer2, self.layer3, self.layer4):
                block = stage[0]
                block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)
        self.out_channels = {
            f"res{i + 2}": _stage_channels(stage)
            for i, stage in enumerate((self.layer1, self.layer2, self.layer3, self.layer4))
        }
        self.strides = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
        self._freeze(freeze_at)

    def _freeze(self, freeze_at: int) -> None:
        groups = [[self.conv1, self.bn1], [self.layer1], [self.layer2], [self.layer3], [self.layer4]]
        for group in groups[:freeze_at]:
            for module in group:
                for parameter in module.parameters():
                    parameter.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x``: normalised pixels ``[N, 3, H, W]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {}
        for name, stage in zip(("res2", "res3", "res4", "res5"), (self.layer1, self.layer2, self.layer3, self.layer4)):
            x = stage(x)
            out[name] = x
        return out


def _stage_channels(stage: nn.Sequential) -> int:
    block = stage[-1]
    last = block.conv3 if isinstance(block, resnet.Bottleneck) else block.conv2
    return last.out_channels


def resnet_key_from_d2(key: str) -> str:
    """detectron2's ResNet name -> ours (torchvision's); names of ours pass unchanged.

    ``stem.conv1.norm.*`` -> ``bn1.*``, other ``stem.X`` -> ``X`` (ImageNet files keep the
    classifier as ``stem.fc.*``), ``res{s}.{b}.conv{k}.norm.*`` -> ``layer{s-1}.{b}.bn{k}.*``,
    ``shortcut`` -> ``downsample.0``, ``shortcut.norm`` -> ``downsample.1``.
    """
    key = re.sub(r"^stem\.conv1\.norm\.", "bn1.", key)
    key = re.sub(r"^stem\.", "", key)
    match = re.match(r"^res(\d)\.(\d+)\.(.*)$", key)
    if not match:
        return key
    stage, block, tail = int(match.group(1)), match.group(2), match.group(3)
    tail = re.sub(r"^shortcut\.norm\.", "downsample.1.", tail)
    tail = re.sub(r"^shortcut\.", "downsample.0.", tail)
    tail = re.sub(r"^conv(\d)\.norm\.", r"bn\1.", tail)
    return f"layer{stage - 1}.{block}.{tail}"


def resnet_key_to_d2(key: str) -> str:
    """Inverse of :func:`resnet_key_from_d2` for the keys of :class:`ResNetBackbone`."""
    match = re.match(r"^layer(\d)\.(\d+)\.(.*)$", key)
    if not match:
        return "stem." + re.sub(r"^bn1\.", "conv1.norm.", key)
    stage, block, tail = int(match.group(1)), match.group(2), match.group(3)
    tail = re.sub(r"^downsample\.1\.", "shortcut.norm.", tail)
    tail = re.sub(r"^downsample\.0\.", "shortcut.", tail)
    tail = re.sub(r"^bn(\d)\.", r"conv\1.norm.", tail)
    return f"res{stage + 1}.{block}.{tail}"
