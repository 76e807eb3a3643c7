"""Builder functions: every number of the architecture lives here, not in the modules."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from agrnet.modeling.agrnet import AGRNet
from agrnet.modeling.backbone import DilationMode, build_backbone
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

Projection = Literal["none", "spatial", "adaptive"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture settings. Defaults are the paper's full model (ResNet-101, C=256, K=4).

    projection: "adaptive" (AGRNet), "spatial" (EAGRNet-style pooling) or "none" (baseline).
    use_edge: edge perceiving module and edge attention in the projection.
    use_graph: graph reasoning; off means X̂_G = X_G.
    mask_projection_with_edge: the reference code's P <- P * E (not in the paper).
    pretrained: None, a torchvision weight name ("IMAGENET1K_V1", "DEFAULT") or a local .pth path.
    output_stride: of the context features; ResNets 8 (the paper), mobilenet_v2 8 or 16.
    """

    num_classes: int = 11
    backbone: str = "resnet101"
    dilation: DilationMode = "paper"
    pretrained: str | None = None
    output_stride: int = 8
    projection: Projection = "adaptive"
    use_edge: bool = True
    use_graph: bool = True
    top_k: int = 4
    channels: int = 256
    context_channels: int = 512
    edge_channels: int = 256
    mask_projection_with_edge: bool = True


# Table I(a) of the paper, one entry per row: the switches that differ from the full model.
ABLATIONS: dict[str, dict[str, object]] = {
    "baseline": {"projection": "none", "use_edge": False, "use_graph": False},
    # EAGRNet's construction (DESIGN-NOTES §14): pooled edge-masked features, then GCN and reprojection.
    "spatial": {"projection": "spatial", "use_edge": True, "use_graph": True},
    "adaptive": {"projection": "adaptive", "use_edge": False, "use_graph": False},
    "adaptive_graph": {"projection": "adaptive", "use_edge": False, "use_graph": True},
    "adaptive_edge": {"projection": "adaptive", "use_edge": True, "use_graph": False},
    "full": {"projection": "adaptive", "use_edge": True, "use_graph": True},
}


def ablation(name: str, config: ModelConfig) -> ModelConfig:
    """The config of one Table I(a) row, keeping everything else of ``config``."""
    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; choose one of {sorted(ABLATIONS)}")
    return replace(config, **ABLATIONS[name])  # type: ignore[arg-type]


def build_agrnet(config: ModelConfig) -> AGRNet:
    if config.num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {config.num_classes}")
    if config.use_edge and config.projection == "none":
        raise ValueError("use_edge needs a graph projection (projection='adaptive' or 'spatial')")
    if config.use_graph and config.projection == "none":
        raise ValueError("use_graph needs a graph projection (projection='adaptive' or 'spatial')")
    backbone = build_backbone(config.backbone, config.pretrained, config.dilation, config.output_stride)
    c2, c3, c4, c5 = backbone.feature_info
    context = PyramidPooling(c5.channels, config.context_channels)
    fusion = Fusion(c2.channels, context.out_channels, config.channels)
    head = Classifier(config.channels, config.channels, config.num_classes, bias=True)
    if config.projection == "none":
        return AGRNet(backbone, context, fusion, head)

    edge = None
    if config.use_edge:
        edge = EdgePerceiving((c2.channels, c3.channels, c4.channels), config.edge_channels)
    raw_head = None
    projection: AdaptiveProjection | SpatialProjection
    if config.projection == "adaptive":
        raw_head = Classifier(config.channels, 48, config.num_classes, bias=False)
        projection = AdaptiveProjection(config.num_classes, config.top_k)
    elif config.projection == "spatial":
        projection = SpatialProjection()
    else:
        raise ValueError(f"projection must be 'none', 'spatial' or 'adaptive', got {config.projection!r}")
    reasoning = GraphReasoning(projection.num_vertices, config.channels) if config.use_graph else None
    return AGRNet(
        backbone,
        context,
        fusion,
        head,
        edge=edge,
        raw_head=raw_head,
        projection=projection,
        reasoning=reasoning,
        reprojection=Reprojection(config.mask_projection_with_edge),
    )


# The model zoo: a plain name -> architecture table, to train with the matching config in
# agrnet/configs. The one model whose weights ship with the package is in agrnet.pretrained.PRETRAINED.
MODEL_ZOO: dict[str, ModelConfig] = {
    "agrnet_r101_lapa": ModelConfig(num_classes=11, backbone="resnet101"),
    "agrnet_r101_helen": ModelConfig(num_classes=11, backbone="resnet101"),
    "agrnet_r101_celebamask_hq": ModelConfig(num_classes=19, backbone="resnet101"),
    "agrnet_r101_lip": ModelConfig(num_classes=20, backbone="resnet101"),
    "agrnet_r50_lapa": ModelConfig(num_classes=11, backbone="resnet50"),
    "agrnet_r18_lapa": ModelConfig(num_classes=11, backbone="resnet18"),
    "agrnet_r18_synthetic": ModelConfig(
        num_classes=11, backbone="resnet18", channels=64, context_channels=128, edge_channels=64
    ),
}
