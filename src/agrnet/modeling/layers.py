"""Small building blocks shared by the heads."""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """An fp32 region inside autocast; a no-op on devices without autocast (the meta device)."""
    if device.type in ("cpu", "cuda", "xpu", "mps"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class ConvBNAct(nn.Sequential):
    """Conv (no bias) + BatchNorm + LeakyReLU(0.01): the In-Place ABN of the reference code, unfused.

    Under DDP the BatchNorm is converted to SyncBatchNorm by the trainer.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.01, inplace=True),
        )


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold, in place, every eval-mode BatchNorm2d that directly follows a Conv2d inside a Sequential into
    that convolution (new weights and bias; the BatchNorm becomes Identity). Same outputs to float rounding,
    one pass over the activations less per layer: on the CPU, BatchNorm was about 15 % of a MobileNetV2
    AGRNet's forward time. Only for inference: the folded model has no running statistics to train."""
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (it folds the running statistics)")
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module._modules.items())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:], strict=False):
            if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                module._modules[conv_name] = fuse_conv_bn_eval(conv, bn)
                module._modules[bn_name] = nn.Identity()
    return model


def inference_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """A copy for forward passes only (the caller's model can go on training): eval mode, BatchNorm folded
    into the convolutions and channels_last, which spares oneDNN and cuDNN a layout reorder per convolution;
    together about 20 % off a CPU forward (benchmarks/parse_speed.py)."""
    return fold_batchnorm(copy.deepcopy(model).eval()).to(device, memory_format=torch.channels_last)
