"""Pyramid pooling context module (PSPNet) on the last backbone stage."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from agrnet.modeling.layers import ConvBNAct


class PyramidPooling(nn.Module):
    """Bins (1, 2, 3, 6): pool -> 1x1 conv -> upsample, concat with the input, 3x3 conv.

    in (N, in_channels, h, w) -> out (N, out_channels, h, w).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 512,
        bin_channels: int | None = None,
        bins: tuple[int, ...] = (1, 2, 3, 6),
    ) -> None:
        super().__init__()
        bin_channels = bin_channels or in_channels // 4
        self.out_channels = out_channels
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvBNAct(in_channels, bin_channels)) for b in bins
        )
        self.bottleneck = ConvBNAct(in_channels + len(bins) * bin_channels, out_channels, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(s(x), size=size, mode="bilinear", align_corners=True) for s in self.stages]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))
