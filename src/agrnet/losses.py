"""The AGRNet training objective (paper Eq. 8-11, resolved as in DESIGN-NOTES §7).

Each loss is a standalone module; ``AGRNetLoss`` combines them and returns a dict of named terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from agrnet.edges import IGNORE_INDEX, label_edges
from agrnet.modeling.agrnet import AGRNetOutput


def _upsample(logits: torch.Tensor, size: torch.Size) -> torch.Tensor:
    if logits.shape[-2:] == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class BalancedEdgeLoss(nn.Module):
    """Two-class CE on edge logits, weighted per batch: edge pixels by n_nonedge/n, others by n_edge/n.

    A batch with no edge (or only edges) falls back to equal weights instead of dividing by zero.
    edge_logits (N, 2, h, w), edges (N, H, W) bool -> scalar.
    """

    def forward(self, edge_logits: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        target = edges.long()
        per_pixel = F.cross_entropy(_upsample(edge_logits, edges.shape[-2:]).float(), target, reduction="none")
        frac_edge = edges.float().mean()
        degenerate = (frac_edge == 0) | (frac_edge == 1)
        w_edge = torch.where(degenerate, torch.full_like(frac_edge, 0.5), 1 - frac_edge)
        weights = torch.where(edges, w_edge, 1 - w_edge)
        return (weights * per_pixel).sum() / weights.sum()


class BoundaryAttentionLoss(nn.Module):
    """CE of the final prediction at GT edge pixels only (Eq. 8), per image divided by
    (#edge pixels + 1), then averaged over the batch. Ignored pixels contribute 0.

    logits (N, Nc, H, W), labels (N, H, W), edges (N, H, W) bool -> scalar.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        per_pixel = F.cross_entropy(
            _upsample(logits, labels.shape[-2:]).float(),
            labels,
            ignore_index=self.ignore_index,
            reduction="none",
        )
        mask = edges.float()
        per_image = (per_pixel * mask).flatten(1).sum(1) / (mask.flatten(1).sum(1) + 1)
        return per_image.mean()


class DiscriminativeLoss(nn.Module):
    """Push vertices apart (Eq. 9-10): mean over ordered pairs i != j of relu(margin - ||x_i - x_j||)^2.

    variant "paper": L2-normalised vertices, margin delta, all V vertices.
    variant "code": the reference code: raw features, margin 2*delta, only the first ``num_classes``
    vertices (a bug there, kept for reproduction).
    vertices (N, V, C) -> scalar.
    """

    def __init__(self, delta: float = 1.0, variant: Literal["paper", "code"] = "paper", num_classes: int = 0):
        super().__init__()
        if variant not in ("paper", "code"):
            raise ValueError(f"variant must be 'paper' or 'code', got {variant!r}")
        self.delta, self.variant, self.num_classes = delta, variant, num_classes

    def forward(self, vertices: torch.Tensor) -> torch.Tensor:
        x = vertices.float()
        margin = self.delta
        if self.variant == "paper":
            x = F.normalize(x, dim=-1)
        else:
            x = x[:, : self.num_classes]
            margin = 2 * self.delta
        v = x.shape[1]
        if v < 2:
            return x.sum() * 0
        squared = (x.unsqueeze(2) - x.unsqueeze(1)).pow(2).sum(-1)
        # Clamped before sqrt: duplicate vertices (d = 0) would otherwise give an infinite gradient.
        distance = squared.clamp_min(1e-12).sqrt()
        penalty = F.relu(margin - distance).pow(2)
        off_diagonal = ~torch.eye(v, dtype=torch.bool, device=x.device)
        return (penalty * off_diagonal).sum((1, 2)).mean() / (v * (v - 1))


class LovaszSoftmaxLoss(nn.Module):
    """Lovasz-softmax (Berman et al., CVPR 2018): a convex surrogate of 1 - IoU per class, averaged
    over the classes present in the batch. Not in the paper: CE averages over pixels, so a class with
    few pixels (earrings, gloves) weighs little in it, where a mean over classes weighs every class alike.

    The whole batch is one pool of pixels (the metrics are dataset-level, not per image). ``stride``
    keeps every stride-th pixel in each direction of the label grid: the per-class sort costs
    O(P log P) in the pixel count P, a 4x cut at stride 2.
    logits (N, Nc, h, w), labels (N, H, W) with ``ignore_index`` -> scalar.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, stride: int = 2) -> None:
        super().__init__()
        if stride < 1:
            raise ValueError(f"stride must be at least 1, got {stride}")
        self.ignore_index, self.stride = ignore_index, stride

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        s = self.stride
        probs = _upsample(logits, labels.shape[-2:]).float()[:, :, ::s, ::s].softmax(1)
        labels = labels[:, ::s, ::s]
        probs = probs.permute(0, 2, 3, 1).reshape(-1, probs.shape[1])
        labels = labels.reshape(-1)
        valid = labels != self.ignore_index
        probs, labels = probs[valid], labels[valid]
        losses = []
        for c in labels.unique().tolist():
            foreground = (labels == c).float()
            losses.append(_lovasz_jaccard(foreground, (foreground - probs[:, c]).abs()))
        if not losses:
            return logits.sum() * 0
        return torch.stack(losses).mean()


def _lovasz_jaccard(foreground: torch.Tensor, errors: torch.Tensor) -> torch.Tensor:
    """The Lovasz extension of the Jaccard loss at ``errors`` (P,) for the ground truth ``foreground`` (P,):
    errors sorted in decreasing order, dotted with the Jaccard loss's increments along that order."""
    errors, order = errors.sort(descending=True)
    fg = foreground[order]
    total = fg.sum()
    intersection = total - fg.cumsum(0)
    union = total + (1 - fg).cumsum(0)
    jaccard = 1 - intersection / union
    increments = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return torch.dot(errors, increments)


def balanced_class_weights(frequencies: torch.Tensor, power: float) -> torch.Tensor:
    """Per-class CE weights f_c^-power, scaled so that their pixel-weighted mean sum_c f_c w_c is 1
    (the loss keeps its scale). A class absent from the data (f_c = 0) gets 0: it has no pixels.

    frequencies (Nc,) pixel fractions -> (Nc,) float32.
    """
    f = frequencies.double()
    weights = torch.where(f > 0, f.clamp_min(1e-300) ** -power, torch.zeros_like(f))
    return (weights / (f * weights).sum()).float()


@dataclass(frozen=True)
class LossWeights:
    """lambda_1..lambda_5 of Eq. 11 (paper values), and two terms outside the paper (0: off, as in the
    paper): ``lovasz`` (``LovaszSoftmaxLoss`` on the final prediction) and ``distill``
    (``DistillationLoss`` towards a teacher's probabilities, ``TrainConfig.distill_from``)."""

    raw: float = 1.0
    edge: float = 1.0
    boundary: float = 1.0
    final: float = 0.5
    discriminative: float = 0.1
    lovasz: float = 0.0
    distill: float = 0.0


class DistillationLoss(nn.Module):
    """KL(p || q) per labelled pixel, averaged: sum_c p_c (log p_c - log q_c), p the soft targets (a
    teacher's class probabilities), q the softmax of the student's logits. Pixels whose label is
    ``ignore_index`` (padding) are left out, as in the other terms."""

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """logits, targets (N, Nc, H, W) (targets sum to 1 over Nc); labels (N, H, W) -> scalar."""
        if targets.shape != logits.shape:
            raise ValueError(f"soft targets {tuple(targets.shape)} must match the logits {tuple(logits.shape)}")
        targets = targets.float()
        # 0 * log 0 = 0: a class the teacher rules out contributes nothing.
        kl = (targets * (targets.clamp_min(1e-12).log() - logits.float().log_softmax(1))).sum(1)
        labelled = labels != self.ignore_index
        return kl[labelled].mean() if labelled.any() else kl.sum() * 0


class AGRNetLoss(nn.Module):
    """Weighted sum of the terms the model's output supports.

    Terms: ``final`` (CE), ``raw`` (CE on Z0), ``edge`` (balanced edge CE), ``boundary`` (BA loss),
    ``discriminative`` (on X_G), ``lovasz`` (Lovasz-softmax on the final prediction), ``distill`` (KL to
    soft targets on the final prediction), plus ``total``.
    A term whose output is absent (e.g. the baseline has no Z0) or whose weight is 0 is left out.
    Every prediction is upsampled to the label size.
    ``class_weights`` (Nc,): per-class weights of the final and raw CE (``balanced_class_weights``);
    None: unweighted, as in the paper.
    """

    def __init__(
        self,
        weights: LossWeights = LossWeights(),
        ignore_index: int = IGNORE_INDEX,
        dis_delta: float = 1.0,
        dis_variant: Literal["paper", "code"] = "paper",
        num_classes: int = 0,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.weights = weights
        self.class_weights = class_weights
        self.ignore_index = ignore_index
        self.edge_loss = BalancedEdgeLoss()
        self.boundary_loss = BoundaryAttentionLoss(ignore_index)
        self.discriminative_loss = DiscriminativeLoss(dis_delta, dis_variant, num_classes)
        self.lovasz_loss = LovaszSoftmaxLoss(ignore_index)
        self.distill_loss = DistillationLoss(ignore_index)

    def _ce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        return F.cross_entropy(
            _upsample(logits, labels.shape[-2:]).float(), labels, weight=weight, ignore_index=self.ignore_index
        )

    def forward(
        self,
        output: AGRNetOutput,
        labels: torch.Tensor,
        edges: torch.Tensor | None = None,
        soft_targets: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """labels (N, H, W) int64 with ``ignore_index``; edges (N, H, W) bool, computed from labels
        when None (pass them from the data loader to keep that off the accelerator); soft_targets
        (N, Nc, H, W) class probabilities, needed by the ``distill`` term only."""
        w = self.weights
        if edges is None and (w.edge or w.boundary):
            edges = label_edges(labels, self.ignore_index)
        terms: dict[str, torch.Tensor] = {}
        weighted: list[torch.Tensor] = []
        # Once for the final CE, boundary and Lovasz terms, which each read the final prediction at label size.
        logits = _upsample(output.logits, labels.shape[-2:])

        def add(name: str, weight: float, value: torch.Tensor) -> None:
            terms[name] = value
            weighted.append(weight * value)

        if w.final:
            add("final", w.final, self._ce(logits, labels))
        if w.raw and output.raw_logits is not None:
            add("raw", w.raw, self._ce(output.raw_logits, labels))
        if w.edge and output.edge_logits is not None:
            assert edges is not None
            add("edge", w.edge, self.edge_loss(output.edge_logits, edges))
        if w.boundary:
            assert edges is not None
            add("boundary", w.boundary, self.boundary_loss(logits, labels, edges))
        if w.discriminative and output.vertices is not None:
            add("discriminative", w.discriminative, self.discriminative_loss(output.vertices))
        if w.lovasz:
            add("lovasz", w.lovasz, self.lovasz_loss(logits, labels))
        if w.distill:
            if soft_targets is None:
                raise ValueError("the distill term needs soft targets (a teacher: TrainConfig.distill_from)")
            add("distill", w.distill, self.distill_loss(logits, soft_targets, labels))
        if not weighted:
            raise ValueError("every loss weight is 0 or its output is missing: nothing to train")
        terms["total"] = torch.stack(weighted).sum()
        return terms
