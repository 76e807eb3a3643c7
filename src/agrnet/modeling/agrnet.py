"""The AGRNet composition: parts are built elsewhere (``agrnet.build``) and passed in."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from agrnet.modeling.backbone import Backbone
from agrnet.modeling.context import PyramidPooling
from agrnet.modeling.edge import EdgePerceiving
from agrnet.modeling.graph import (
    AdaptiveProjection,
    Classifier,
    Fusion,
    GraphReasoning,
    Reprojection,
    SpatialProjection,
)
from agrnet.modeling.layers import full_precision


@dataclass
class AGRNetOutput:
    """What one forward pass returns. Optional fields are None when the variant lacks the part.

    logits: (N, Nc, H, W) final parsing logits at the input size.
    raw_logits: (N, Nc, H1, W1) preliminary parsing Z0 (adaptive projection only), H1 = H/4.
    edge_logits: (N, 2, H1, W1) edge logits, channel 1 = edge.
    vertices: (N, V, C) vertex features X_G before reasoning (the discriminative loss acts on them).
    vertex_indices: (N, V) flat indices into the H1 x W1 grid of the selected pixels (adaptive only).
    projection: (N, V, H1*W1) reprojection matrix P.
    """

    logits: torch.Tensor
    raw_logits: torch.Tensor | None = None
    edge_logits: torch.Tensor | None = None
    vertices: torch.Tensor | None = None
    vertex_indices: torch.Tensor | None = None
    projection: torch.Tensor | None = None


class AGRNet(nn.Module):
    """Backbone -> context -> fusion X0 -> [edge, projection, reasoning, reprojection] -> head.

    With ``projection=None`` this is the baseline of Table I(a) (backbone + context + fusion +
    classifier). ``edge=None`` is "without edge attention" (E == 1: X_e = X_ne = X0, no P * E);
    ``reasoning=None`` is "without graph" (X̂_G = X_G).
    """

    def __init__(
        self,
        backbone: Backbone,
        context: PyramidPooling,
        fusion: Fusion,
        head: Classifier,
        edge: EdgePerceiving | None = None,
        raw_head: Classifier | None = None,
        projection: AdaptiveProjection | SpatialProjection | None = None,
        reasoning: GraphReasoning | None = None,
        reprojection: Reprojection | None = None,
    ) -> None:
        super().__init__()
        if projection is None and (edge or raw_head or reasoning or reprojection):
            raise ValueError("edge, raw_head, reasoning and reprojection need a graph projection")
        if projection is not None and reprojection is None:
            raise ValueError("a graph projection needs a reprojection")
        if isinstance(projection, AdaptiveProjection) != (raw_head is not None):
            raise ValueError("the adaptive projection and the raw head Z0 go together")
        self.backbone = backbone
        self.context = context
        self.fusion = fusion
        self.edge = edge
        self.raw_head = raw_head
        self.projection = projection
        self.reasoning = reasoning
        self.reprojection = reprojection
        self.head = head

    @property
    def num_classes(self) -> int:
        return self.head[-1].out_channels

    @property
    def adjacency(self) -> torch.Tensor | None:
        """The learned V x V adjacency of graph reasoning, or None without it."""
        return None if self.reasoning is None else self.reasoning.adjacency

    def forward(self, images: torch.Tensor) -> AGRNetOutput:
        """images: (N, 3, H, W) normalised RGB; H and W need not be multiples of 8."""
        features = self.backbone(images)
        x0 = self.fusion(features.c2, self.context(features.c5))
        out = AGRNetOutput(logits=images.new_empty(0))
        if self.projection is None:
            x = x0
        else:
            edge_prob = None
            edge_features = non_edge_features = x0
            if self.edge is not None:
                out.edge_logits = self.edge([features.c2, features.c3, features.c4])
                # Detached, as in the reference code: the graph branch must not train the edge module.
                edge_prob = out.edge_logits.detach().softmax(dim=1)[:, 1:]
                edge_features = x0 * edge_prob
                non_edge_features = x0 * (1 - edge_prob)
            if self.raw_head is not None:
                # fp32 even under autocast: bf16 logits tie often enough to change the top-K vertices.
                with full_precision(x0.device):
                    out.raw_logits = self.raw_head(x0.float())
            source = non_edge_features if self.raw_head is not None else edge_features
            vertices, out.vertex_indices = self.projection(source, out.raw_logits)
            reasoned = vertices if self.reasoning is None else self.reasoning(vertices)
            assert self.reprojection is not None
            reprojected, out.projection = self.reprojection(vertices, reasoned, edge_features, edge_prob)
            out.vertices = vertices.transpose(1, 2)
            x = x0 + reprojected
        out.logits = F.interpolate(self.head(x), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return out
