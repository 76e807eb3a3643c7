"""Edge perceiving module on conv_2/3/4 (the reference code's ``Edge_Module``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from agrnet.modeling.layers import ConvBNAct


class EdgePerceiving(nn.Module):
    """Three 1x1 reductions, one shared 3x3 conv to 2 logits each, fused by a 1x1 conv 6 -> 2.

    inputs: three maps (N, in_channels[i], h_i, w_i), the first the largest.
    output: edge logits (N, 2, h_0, w_0); channel 1 is "edge".
    """

    def __init__(self, in_channels: tuple[int, int, int], mid_channels: int = 256) -> None:
        super().__init__()
        self.reduce = nn.ModuleList(ConvBNAct(c, mid_channels) for c in in_channels)
        self.classify = nn.Conv2d(mid_channels, 2, kernel_size=3, padding=1, bias=True)
        self.fuse = nn.Conv2d(2 * len(in_channels), 2, kernel_size=1, bias=True)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        logits = []
        for reduce, feature in zip(self.reduce, features, strict=True):
            edge = self.classify(reduce(feature))
            if edge.shape[-2:] != size:
                edge = F.interpolate(edge, size=size, mode="bilinear", align_corners=True)
            logits.append(edge)
        return self.fuse(torch.cat(logits, dim=1))
