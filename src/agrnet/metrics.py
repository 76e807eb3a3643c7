"""Confusion-matrix metrics as the reference code computes them (DESIGN-NOTES §9)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from agrnet.data.classes import HELEN_GROUPS, LabelSpec
from agrnet.edges import IGNORE_INDEX


class ConfusionMatrix:
    """One matrix over a whole split: rows ground truth, columns prediction; GT=255 excluded."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """prediction, target: same-shape integer tensors (any device)."""
        valid = target != IGNORE_INDEX
        if (target[valid] >= self.num_classes).any():
            raise ValueError(f"target holds classes >= {self.num_classes}")
        index = target[valid].long() * self.num_classes + prediction[valid].long()
        counts = torch.bincount(index.flatten(), minlength=self.num_classes**2)
        self.matrix += counts.view(self.num_classes, self.num_classes).cpu()


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.full_like(a, np.nan, dtype=np.float64), where=b > 0)


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def summarize(matrix: np.ndarray | torch.Tensor, spec: LabelSpec) -> dict[str, Any]:
    """Per-class F1, IoU, accuracy and their means.

    F1 = 2TP / (GT + Pred); IoU = TP / (GT + Pred - TP); accuracy = TP / GT. A class absent from both
    GT and prediction is NaN and left out of the means. ``mean_f1`` excludes ``spec.f1_excluded``
    (background), as the paper's tables; IoU and accuracy means are given with and without it.
    """
    m = np.asarray(matrix, dtype=np.float64)
    tp, gt, pred = np.diag(m), m.sum(1), m.sum(0)
    f1 = _safe_div(2 * tp, gt + pred)
    iou = _safe_div(tp, gt + pred - tp)
    acc = _safe_div(tp, gt)
    keep = np.array([i not in spec.f1_excluded for i in range(spec.num_classes)])
    per_class = {
        name: {"f1": float(f1[i]), "iou": float(iou[i]), "accuracy": float(acc[i])}
        for i, name in enumerate(spec.class_names)
    }
    return {
        "per_class": per_class,
        "mean_f1": _nanmean(f1[keep]),
        "mean_iou": _nanmean(iou),
        "mean_iou_no_bg": _nanmean(iou[keep]),
        "mean_accuracy": _nanmean(acc),
        "mean_accuracy_no_bg": _nanmean(acc[keep]),
        "pixel_accuracy": float(tp.sum() / max(m.sum(), 1)),
        "pixels": int(m.sum()),
    }


def merged_f1(matrix: np.ndarray | torch.Tensor, groups: dict[str, tuple[int, ...]] = HELEN_GROUPS) -> dict[str, float]:
    """Pooled F1 of class groups: confusions inside a group count as correct (Helen's table)."""
    m = np.asarray(matrix, dtype=np.float64)
    result = {}
    for name, classes in groups.items():
        idx = list(classes)
        inter = m[np.ix_(idx, idx)].sum()
        denominator = m[idx, :].sum() + m[:, idx].sum()
        result[name] = float(2 * inter / denominator) if denominator > 0 else float("nan")
    return result


def format_results(summary: dict[str, Any], spec: LabelSpec, helen: dict[str, float] | None = None) -> str:
    """A Markdown table shaped like the paper's Table II: per-class F1 (%) then the means."""
    per_class = summary["per_class"]
    names = [n for i, n in enumerate(spec.class_names) if i not in spec.f1_excluded]
    header = names + ["Mean F1", "Mean IoU", "Mean IoU (no bg)", "Mean Acc"]
    values = [per_class[n]["f1"] for n in names] + [
        summary["mean_f1"], summary["mean_iou"], summary["mean_iou_no_bg"], summary["mean_accuracy"]
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.append("| " + " | ".join(f"{100 * float(v):.1f}" for v in values) + " |")
    if helen is not None:
        lines += ["", "| " + " | ".join(helen) + " |", "|" + "---|" * len(helen)]
        lines.append("| " + " | ".join(f"{100 * v:.1f}" for v in helen.values()) + " |")
    return "\n".join(lines)
