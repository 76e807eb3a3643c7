"""Small building blocks shared by the heads."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


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
