"""Dilated ResNet backbones at output stride 8 that report their channels and strides."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch import nn
from torchvision import models

log = logging.getLogger(__name__)

DilationMode = Literal["paper", "code"]

_RESNETS = {
    "resnet18": (models.resnet18, models.ResNet18_Weights),
    "resnet34": (models.resnet34, models.ResNet34_Weights),
    "resnet50": (models.resnet50, models.ResNet50_Weights),
    "resnet101": (models.resnet101, models.ResNet101_Weights),
}


@dataclass(frozen=True)
class FeatureInfo:
    """Channels and stride (relative to the input) of one backbone output."""

    name: str
    channels: int
    stride: int


class Features(NamedTuple):
    """The four ResNet stages: conv_2 (layer1) .. conv_5 (layer4), each (N, C_i, H/s_i, W/s_i)."""

    c2: torch.Tensor
    c3: torch.Tensor
    c4: torch.Tensor
    c5: torch.Tensor


def _dilate_layer(layer: nn.Sequential, dilation: int, first_dilation: int) -> None:
    """Turn a strided ResNet stage into a dilated one in place.

    The weights are untouched, so ImageNet checkpoints still fit. Done by hand because torchvision's
    BasicBlock (ResNet-18/34) refuses ``replace_stride_with_dilation``; one code path serves all depths.
    The first block keeps the previous stage's dilation, as torchvision does for Bottleneck.
    """
    for block_index, block in enumerate(layer):
        d = first_dilation if block_index == 0 else dilation
        for module in block.modules():
            if isinstance(module, nn.Conv2d):
                if module.stride == (2, 2):
                    module.stride = (1, 1)
                if module.kernel_size == (3, 3):
                    module.dilation = (d, d)
                    module.padding = (d, d)


class ResNetBackbone(nn.Module):
    """torchvision ResNet without pooling/fc, dilated to output stride 8.

    ``dilation_mode="paper"`` dilates the last two stages (layer3 d=2, layer4 d=4: the paper's
    "dilation in the last two blocks"); ``"code"`` reproduces the authors' code (layer3 undilated
    stride 1, layer4 d=2). Both give the same FLOPs and output stride 8.
    """

    def __init__(self, resnet: models.ResNet, dilation_mode: DilationMode = "paper") -> None:
        super().__init__()
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2 = resnet.layer1, resnet.layer2
        self.layer3, self.layer4 = resnet.layer3, resnet.layer4
        if dilation_mode == "paper":
            _dilate_layer(self.layer3, dilation=2, first_dilation=1)
            _dilate_layer(self.layer4, dilation=4, first_dilation=2)
        elif dilation_mode == "code":
            _dilate_layer(self.layer3, dilation=1, first_dilation=1)
            _dilate_layer(self.layer4, dilation=2, first_dilation=2)
        else:
            raise ValueError(f"dilation_mode must be 'paper' or 'code', got {dilation_mode!r}")
        strides = (4, 8, 8, 8)
        self.feature_info = [
            FeatureInfo(f"c{i + 2}", _stage_channels(stage), stride)
            for i, (stage, stride) in enumerate(zip(self.stages(), strides, strict=True))
        ]

    def stages(self) -> tuple[nn.Sequential, ...]:
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def forward(self, x: torch.Tensor) -> Features:
        """x: (N, 3, H, W) normalised RGB -> four feature maps (see ``feature_info``)."""
        c2 = self.layer1(self.stem(x))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return Features(c2, c3, c4, c5)


def _stage_channels(stage: nn.Sequential) -> int:
    last = stage[-1]
    norm = getattr(last, "bn3", None) or last.bn2
    return int(norm.num_features)


def build_resnet_backbone(
    name: str, pretrained: str | None = None, dilation_mode: DilationMode = "paper"
) -> ResNetBackbone:
    """Build a dilated ResNet.

    ``pretrained`` is None (random init), a torchvision weight enum name such as ``"IMAGENET1K_V1"``
    or ``"DEFAULT"`` (taken from the torch hub cache; downloaded only if the machine can), or a path
    to a local ResNet state dict (a torchvision ``.pth``; ``fc.*`` keys are ignored).
    """
    if name not in _RESNETS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(_RESNETS)}")
    factory, weight_enum = _RESNETS[name]
    resnet = factory(weights=None)
    if pretrained is None:
        log.info("backbone %s: random initialisation (no pretrained weights requested)", name)
    else:
        state = _load_pretrained_state(pretrained, weight_enum)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        try:
            missing, unexpected = resnet.load_state_dict(state, strict=False)
        except RuntimeError as error:  # shape mismatches
            raise ValueError(f"pretrained weights {pretrained!r} do not fit {name}: {error}") from None
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise ValueError(
                f"pretrained weights {pretrained!r} do not fit {name}: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        log.info("backbone %s: loaded pretrained weights from %s", name, pretrained)
    return ResNetBackbone(resnet, dilation_mode)


def _load_pretrained_state(pretrained: str, weight_enum: type) -> dict[str, torch.Tensor]:
    path = Path(pretrained).expanduser()
    if path.suffix in {".pth", ".pt"} or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"pretrained backbone file {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        weights = weight_enum[pretrained]
    except KeyError:
        choices = [w.name for w in weight_enum] + ["DEFAULT"]
        raise ValueError(
            f"pretrained={pretrained!r} is neither a file nor one of {choices} for {weight_enum.__name__}"
        ) from None
    try:
        return weights.get_state_dict(progress=False)
    except Exception as error:  # network errors come in many types (URLError, OSError, ...)
        raise RuntimeError(
            f"could not obtain {weight_enum.__name__}.{weights.name} ({error}). Without internet, download "
            f"{weights.url} elsewhere and pass its local path as pretrained=..."
        ) from error
