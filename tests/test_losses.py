from __future__ import annotations

import math

import pytest
import torch

from agrnet.edges import label_edges
from agrnet.losses import (
    AGRNetLoss,
    BalancedEdgeLoss,
    BoundaryAttentionLoss,
    DiscriminativeLoss,
    DistillationLoss,
    LossWeights,
    LovaszSoftmaxLoss,
    balanced_class_weights,
)
from agrnet.modeling.agrnet import AGRNetOutput


def test_label_edges_on_hand_drawn_map() -> None:
    labels = torch.tensor(
        [
            [0, 0, 0, 0, 255],
            [0, 1, 1, 0, 255],
            [0, 1, 1, 0, 0],
            [0, 0, 0, 0, 0],
        ]
    )
    expected = torch.tensor(
        [
            [0, 1, 1, 0, 0],
            [1, 1, 1, 1, 0],
            [1, 1, 1, 1, 0],
            [0, 1, 1, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(label_edges(labels), expected)
    # Batched input gives the same per image, and a uniform map has no edge.
    assert torch.equal(label_edges(labels[None].repeat(2, 1, 1))[1], expected)
    assert not label_edges(torch.full((3, 3), 4)).any()


def test_balanced_edge_loss_by_hand() -> None:
    # Three pixels: one edge with p(edge)=3/4, two non-edges with p(edge)=1/2 and 1/5.
    logits = torch.tensor([[0.0, math.log(3)], [0.0, 0.0], [math.log(4), 0.0]]).T.reshape(1, 2, 1, 3)
    edges = torch.tensor([[[True, False, False]]])
    ce = [-math.log(3 / 4), -math.log(1 / 2), -math.log(4 / 5)]
    w_edge, w_non = 2 / 3, 1 / 3  # n_nonedge/n and n_edge/n
    expected = (w_edge * ce[0] + w_non * ce[1] + w_non * ce[2]) / (w_edge + 2 * w_non)
    assert BalancedEdgeLoss()(logits, edges).item() == pytest.approx(expected, rel=1e-6)


def test_balanced_edge_loss_without_edges_is_finite() -> None:
    loss = BalancedEdgeLoss()(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool))
    assert loss.item() == pytest.approx(math.log(2))


def test_boundary_attention_loss_by_hand() -> None:
    # Two images of 1x3 pixels, 2 classes. Image 0: edges at pixels 0, 1 (pixel 1 ignored).
    logits = torch.zeros(2, 2, 1, 3)
    logits[0, 1, 0, 0] = math.log(3)  # pixel (0,0): p(class 1) = 3/4
    labels = torch.tensor([[[1, 255, 0]], [[0, 0, 1]]])
    edges = torch.tensor([[[True, True, False]], [[False, True, True]]])
    image0 = -math.log(3 / 4) / (2 + 1)  # the ignored edge pixel adds 0 but counts in the denominator
    image1 = 2 * math.log(2) / (2 + 1)
    got = BoundaryAttentionLoss()(logits, labels, edges).item()
    assert got == pytest.approx((image0 + image1) / 2, rel=1e-6)


def test_discriminative_loss_by_hand() -> None:
    angle = math.radians(30)
    # Scaled vectors: the paper variant normalises them first.
    vertices = torch.tensor([[[2.0, 0.0], [3 * math.cos(angle), 3 * math.sin(angle)], [0.0, -5.0]]])
    d01 = 2 * math.sin(angle / 2)  # chord between unit vectors 30 degrees apart
    # Pairs (0,2) and (1,2) are >= 1 apart: no penalty. Ordered pairs: 3 * 2 = 6.
    expected = 2 * (1 - d01) ** 2 / 6
    assert DiscriminativeLoss()(vertices).item() == pytest.approx(expected, rel=1e-5)


def test_discriminative_loss_code_variant_uses_raw_first_vertices_and_margin_two() -> None:
    vertices = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 0.0]]])
    # Only the first 2 vertices, distance 1, margin 2: (2 - 1)^2 for both orders, mean over 2 pairs.
    assert DiscriminativeLoss(variant="code", num_classes=2)(vertices).item() == pytest.approx(1.0)


def test_discriminative_loss_duplicate_vertices_have_finite_gradient() -> None:
    vertices = torch.ones(1, 4, 3, requires_grad=True)
    DiscriminativeLoss()(vertices).backward()
    assert torch.isfinite(vertices.grad).all()


def test_total_loss_weights_and_upsampling() -> None:
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 8, 8))
    out = AGRNetOutput(
        logits=torch.randn(2, 3, 8, 8),
        raw_logits=torch.randn(2, 3, 4, 4),
        edge_logits=torch.randn(2, 2, 4, 4),
        vertices=torch.randn(2, 6, 5),
    )
    terms = AGRNetLoss()(out, labels)
    assert set(terms) == {"final", "raw", "edge", "boundary", "discriminative", "total"}
    w = LossWeights()
    expected = (
        w.raw * terms["raw"]
        + w.edge * terms["edge"]
        + w.boundary * terms["boundary"]
        + w.final * terms["final"]
        + w.discriminative * terms["discriminative"]
    )
    torch.testing.assert_close(terms["total"], expected)
    up = torch.nn.functional.interpolate(out.raw_logits, size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(terms["raw"], torch.nn.functional.cross_entropy(up, labels))
    # The baseline output has only final logits: only final and boundary terms remain.
    baseline = AGRNetLoss()(AGRNetOutput(logits=out.logits), labels)
    assert set(baseline) == {"final", "boundary", "total"}
    with pytest.raises(ValueError, match="nothing to train"):
        AGRNetLoss(LossWeights(0, 0, 0, 0, 0))(out, labels)


def test_lovasz_softmax_by_hand() -> None:
    # Two pixels, labels (0, 1), p(class 1) = (0.2, 0.7). Class 0: errors (0.2, 0.3); sorted, the
    # background pixel first: Jaccard losses 1 - 1/2 then 1 - 0/2, increments (0.5, 0.5) -> 0.25.
    # Class 1: errors (0.2, 0.3); its own pixel first: Jaccard 1, then 1: increments (1, 0) -> 0.3.
    p1 = torch.tensor([0.2, 0.7])
    logits = torch.stack([torch.zeros(2), torch.log(p1 / (1 - p1))]).reshape(1, 2, 1, 2)
    loss = LovaszSoftmaxLoss(stride=1)(logits, torch.tensor([[[0, 1]]]))
    assert float(loss) == pytest.approx((0.25 + 0.3) / 2, rel=1e-6)


def test_lovasz_softmax_of_hard_predictions_is_one_minus_iou() -> None:
    # At 0/1 probabilities the Lovasz extension equals the Jaccard loss itself: mean over the classes
    # present in the labels of 1 - IoU; ignored pixels count for nothing.
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (2, 6, 7))
    labels[0, 0] = 255
    predicted = torch.randint(0, 4, (2, 6, 7))
    logits = torch.nn.functional.one_hot(predicted, 4).permute(0, 3, 1, 2).float() * 100
    valid = labels != 255
    ious = [
        ((predicted == c) & (labels == c)).sum() / (((predicted == c) | (labels == c)) & valid).sum()
        for c in labels[valid].unique()
    ]
    expected = 1 - torch.stack(ious).mean()
    assert float(LovaszSoftmaxLoss(stride=1)(logits, labels)) == pytest.approx(float(expected), abs=1e-5)


def test_lovasz_softmax_stride_reads_every_other_pixel_and_gives_a_gradient() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 8, 10, requires_grad=True)
    labels = torch.randint(0, 3, (2, 8, 10))
    strided = LovaszSoftmaxLoss(stride=2)(logits, labels)
    torch.testing.assert_close(strided, LovaszSoftmaxLoss(stride=1)(logits[:, :, ::2, ::2], labels[:, ::2, ::2]))
    strided.backward()
    assert logits.grad is not None and logits.grad[:, :, ::2, ::2].abs().sum() > 0
    assert float(LovaszSoftmaxLoss()(logits, torch.full_like(labels, 255)).detach()) == 0.0
    terms = AGRNetLoss(LossWeights(lovasz=0.5))(AGRNetOutput(logits=logits), labels)
    torch.testing.assert_close(terms["total"], terms["final"] * 0.5 + terms["boundary"] + terms["lovasz"] * 0.5)
    with pytest.raises(ValueError, match="stride"):
        LovaszSoftmaxLoss(stride=0)


def test_balanced_class_weights_by_hand() -> None:
    f = torch.tensor([0.5, 0.25, 0.25, 0.0])
    # power 1: 1/f = 2, 4, 4 (0 for the absent class), divided by sum f*w = 3.
    torch.testing.assert_close(balanced_class_weights(f, 1.0), torch.tensor([2 / 3, 4 / 3, 4 / 3, 0.0]))
    torch.testing.assert_close(balanced_class_weights(f, 0.0), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    w = balanced_class_weights(f, 0.5)
    assert float((f * w).sum()) == pytest.approx(1.0) and w[1] == pytest.approx(w[0] * math.sqrt(2))


def test_class_weights_reweight_the_ce_terms_only() -> None:
    # Two pixels: class 0 with p0 = e^2/(e^2+1), class 1 with logits (0, 0); weights 1 and 3.
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]]).T.reshape(1, 2, 1, 2)
    labels = torch.tensor([[[0, 1]]])
    out = AGRNetOutput(logits=logits, raw_logits=logits.clone())
    weights = torch.tensor([1.0, 3.0])
    terms = AGRNetLoss(class_weights=weights)(out, labels)
    ce0, ce1 = math.log(1 + math.exp(-2)), math.log(2)
    expected = (1 * ce0 + 3 * ce1) / (1 + 3)  # PyTorch's weighted mean divides by the summed weights
    assert float(terms["final"]) == pytest.approx(expected, rel=1e-6)
    assert float(terms["raw"]) == pytest.approx(expected, rel=1e-6)
    plain = AGRNetLoss()(out, labels)
    assert float(plain["final"]) == pytest.approx((ce0 + ce1) / 2, rel=1e-6)
    torch.testing.assert_close(terms["boundary"], plain["boundary"])


def test_ablation_losses_follow_table_1b_unless_overridden() -> None:
    from agrnet.config import load_config

    baseline = load_config("synthetic", ["ablation=baseline"]).resolved_loss()
    assert (baseline.final, baseline.raw, baseline.edge, baseline.boundary, baseline.discriminative) == (1, 0, 0, 0, 0)
    full = load_config("synthetic", ["ablation=full", "loss.final=2.0"]).resolved_loss()
    assert full.final == 0.5 and full.boundary == 1.0 and full.discriminative == 0.1  # the paper's weights
    kept = load_config("synthetic", ["ablation=baseline", "ablation_losses=false", "loss.final=2.0"]).resolved_loss()
    assert kept.final == 2.0 and kept.boundary == 1.0
    assert load_config("synthetic", ["loss.final=2.0"]).resolved_loss().final == 2.0  # no ablation: loss.* as given


def test_distillation_loss_by_hand() -> None:
    # Pixel 1: teacher (0.5, 0.5), student softmax (0.2, 0.8): 0.5 ln(0.5/0.2) + 0.5 ln(0.5/0.8).
    # Pixel 2: teacher (1, 0) (0 log 0 = 0), student (0.5, 0.5): ln 2. Pixel 3 is ignored.
    student = torch.tensor([[0.2, 0.8], [0.5, 0.5], [0.9, 0.1]]).log().T.reshape(1, 2, 1, 3)
    teacher = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 3)
    loss = DistillationLoss()(student, teacher, torch.tensor([[[0, 0, 255]]]))
    expected = (0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8) + math.log(2)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(DistillationLoss()(teacher.clamp_min(1e-30).log(), teacher, torch.zeros(1, 1, 3).long())) == (
        pytest.approx(0, abs=1e-6)
    )  # the student that matches the teacher pays nothing


def test_distill_term_joins_the_total_and_needs_targets() -> None:
    labels = torch.randint(0, 3, (2, 8, 8))
    out = AGRNetOutput(logits=torch.randn(2, 3, 8, 8))
    targets = torch.randn(2, 3, 8, 8).softmax(1)
    weights = LossWeights(raw=0, edge=0, boundary=0, final=1.0, discriminative=0, distill=2.0)
    terms = AGRNetLoss(weights)(out, labels, soft_targets=targets)
    assert set(terms) == {"final", "distill", "total"}
    torch.testing.assert_close(terms["total"], terms["final"] + 2.0 * terms["distill"])
    torch.testing.assert_close(terms["distill"], DistillationLoss()(out.logits, targets, labels))
    with pytest.raises(ValueError, match="soft targets"):
        AGRNetLoss(weights)(out, labels)
