"""Ground-truth edges from label maps."""

from __future__ import annotations

import torch

IGNORE_INDEX = 255


def label_edges(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Mark pixels whose label differs from any in-image 4-neighbour.

    Both sides of a boundary are marked (edges ~2 px wide). Comparisons involving ``ignore_index``
    are skipped, so padding and unlabelled areas never create edges and are never edges.
    labels: (..., H, W) integer -> (..., H, W) bool.
    """
    valid = labels != ignore_index
    edges = torch.zeros_like(valid)
    # Vertical then horizontal neighbour pairs; a differing valid pair marks both of its pixels.
    for dim in (-2, -1):
        n = labels.shape[dim]
        if n < 2:
            continue
        a, b = labels.narrow(dim, 0, n - 1), labels.narrow(dim, 1, n - 1)
        differs = (a != b) & valid.narrow(dim, 0, n - 1) & valid.narrow(dim, 1, n - 1)
        edges.narrow(dim, 0, n - 1).logical_or_(differs)
        edges.narrow(dim, 1, n - 1).logical_or_(differs)
    return edges
