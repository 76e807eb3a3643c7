"""Fusion, graph projection, graph reasoning, reprojection and the classifiers of AGRNet.

Notation (paper §III): X0 (N, C, H1, W1) fused features, E (N, 1, H1, W1) edge probability,
V vertices, X_G (N, C, V) vertex features, P (N, V, H1*W1) projection matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from agrnet.modeling.layers import ConvBNAct, full_precision


class Fusion(nn.Module):
    """X0 = conv1x1([up(reduce(X2)), reduce(X1)]) (Eq. 1, code layout: context channels first).

    low (N, low_channels, H1, W1), context (N, context_channels, H2, W2) -> X0 (N, channels, H1, W1).
    """

    def __init__(self, low_channels: int, context_channels: int, channels: int = 256, low_reduced: int = 48) -> None:
        super().__init__()
        self.reduce_context = ConvBNAct(context_channels, channels)
        self.reduce_low = ConvBNAct(low_channels, low_reduced)
        # Bias and no norm/activation, as the reference code's ``conv_state``.
        self.fuse = nn.Conv2d(channels + low_reduced, channels, kernel_size=1, bias=True)

    def forward(self, low: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        context = self.reduce_context(context)
        context = F.interpolate(context, size=low.shape[-2:], mode="bilinear", align_corners=True)
        return self.fuse(torch.cat([context, self.reduce_low(low)], dim=1))


class Classifier(nn.Sequential):
    """1x1 ConvBNAct then 1x1 conv to classes: (N, in_channels, h, w) -> (N, num_classes, h, w).

    The raw head Z0 (the paper's "MLP", hidden 48, no bias) and the final head (hidden C, bias)
    are both of this form.
    """

    def __init__(self, in_channels: int, hidden: int, num_classes: int, bias: bool) -> None:
        super().__init__(ConvBNAct(in_channels, hidden), nn.Conv2d(hidden, num_classes, 1, bias=bias))


class AdaptiveProjection(nn.Module):
    """Top-K pixels per class of the raw logits Z0, gathered from the non-edge features (Eq. 3).

    Vertices are class-major (class 0: v0..vK-1, class 1: ...). Duplicates across classes are kept,
    and absent classes still get K vertices, as in the reference code. Index selection is not
    differentiable; gradients reach X_ne through the gather.
    """

    def __init__(self, num_classes: int, top_k: int = 4) -> None:
        super().__init__()
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.top_k = top_k
        self.num_vertices = num_classes * top_k

    def forward(self, features: torch.Tensor, raw_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features X_ne (N, C, H1, W1), raw_logits Z0 (N, Nc, H1, W1) ->
        vertices X_G (N, C, V) and their flat pixel indices (N, V)."""
        n, c = features.shape[:2]
        flat_logits = raw_logits.detach().flatten(2)
        if self.top_k > flat_logits.shape[-1]:
            raise ValueError(
                f"top_k={self.top_k} exceeds the {flat_logits.shape[-1]} pixels of the feature map; "
                "use a larger input or a smaller top_k"
            )
        indices = flat_logits.topk(self.top_k, dim=-1).indices.flatten(1)  # (N, Nc*K), class-major
        vertices = features.flatten(2).gather(2, indices.unsqueeze(1).expand(n, c, -1))
        return vertices, indices


class SpatialProjection(nn.Module):
    """The earlier EAGRNet projection (Table I(a) "Spatial"): average-pool to a grid and keep its centre.

    features (N, C, H1, W1) -> vertices (N, C, keep**2), indices None.
    """

    def __init__(self, grid: int = 6, keep: int = 4) -> None:
        super().__init__()
        if not 0 < keep <= grid or (grid - keep) % 2:
            raise ValueError(f"keep ({keep}) must fit centred inside grid ({grid})")
        self.grid, self.keep = grid, keep
        self.num_vertices = keep * keep

    def forward(self, features: torch.Tensor, raw_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        pooled = F.adaptive_avg_pool2d(features, self.grid)
        margin = (self.grid - self.keep) // 2
        centre = pooled[:, :, margin : margin + self.keep, margin : margin + self.keep]
        return centre.flatten(2), None


class GraphReasoning(nn.Module):
    """One GCN layer with a learned adjacency: X̂_G = ReLU(W_G ((A - I) X_G)) (Eq. 4, code form).

    A is a randomly initialised V x V matrix (plus bias) learned by a 1x1 conv over the vertex axis.
    vertices (N, C, V) -> (N, C, V).
    """

    def __init__(self, num_vertices: int, channels: int) -> None:
        super().__init__()
        self.node_mix = nn.Conv1d(num_vertices, num_vertices, kernel_size=1, bias=True)
        self.channel_mix = nn.Conv1d(channels, channels, kernel_size=1, bias=False)

    @property
    def adjacency(self) -> torch.Tensor:
        """The learned adjacency A, (V, V); row i holds the weights vertex i gathers from the others."""
        return self.node_mix.weight[:, :, 0]

    def forward(self, vertices: torch.Tensor) -> torch.Tensor:
        mixed = self.node_mix(vertices.transpose(1, 2)).transpose(1, 2) - vertices
        return F.relu(self.channel_mix(mixed))


class Reprojection(nn.Module):
    """P = softmax over vertices of X_G^T X_e (Eq. 5 with pre-reasoning X_G), optionally P <- P * E
    (reference code), then X_P = X̂_G P (Eq. 6).

    No 1/sqrt(C) scaling, as in the reference code.
    """

    def __init__(self, mask_with_edge: bool = True) -> None:
        super().__init__()
        self.mask_with_edge = mask_with_edge

    def forward(
        self,
        vertices: torch.Tensor,
        reasoned: torch.Tensor,
        edge_features: torch.Tensor,
        edge_prob: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """vertices X_G and reasoned X̂_G (N, C, V), edge_features X_e (N, C, H1, W1),
        edge_prob E (N, 1, H1, W1) or None -> X_P (N, C, H1, W1) and P (N, V, H1*W1)."""
        n, c, h, w = edge_features.shape
        # fp32 even under autocast: in bf16 the similarity changed P's argmax on ~5 % of pixels.
        with full_precision(edge_features.device):
            similarity = torch.bmm(vertices.float().transpose(1, 2), edge_features.float().flatten(2))
            projection = similarity.softmax(dim=1)
            if self.mask_with_edge and edge_prob is not None:
                projection = projection * edge_prob.float().flatten(2)
            return torch.bmm(reasoned.float(), projection).view(n, c, h, w), projection
