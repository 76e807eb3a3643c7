"""Multi-scale test-time augmentation: the network on several canvas sizes, class probabilities averaged.

A convolutional network sees a face or person at a slightly different scale on each canvas; averaging the
softmax over sizes around the training canvas evens out scale-specific mistakes (on celebamask-mini val,
0.833 + 1 + 1.167 with flip: 82.46 mean F1 against 82.13 for flip alone; ``benchmarks/tta_scales.py``).
Every canvas is mapped back to the output grid on its own (exact letterbox inverse), so canvases need not
share the training canvas's aspect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from agrnet.config import MIN_SIZE
from agrnet.data.transforms import Canvas, canvas_hw, unletterbox, unletterbox_labels

# Beyond these the network sees faces at a scale it was never trained on, and memory grows with the square.
MIN_SCALE, MAX_SCALE = 0.25, 4.0


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """Canvas size factors for test-time augmentation, checked: a non-empty list of distinct numbers in
    [0.25, 4]. (1.0,) is one pass at the canvas itself."""
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence) or not scales:
        raise ValueError(f"scales must be a non-empty list of numbers, e.g. (0.833, 1.0, 1.167), got {scales!r}")
    for scale in scales:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"scales must be numbers, got {scale!r} in {scales!r}")
        if not MIN_SCALE <= scale <= MAX_SCALE:
            raise ValueError(f"each scale must be from {MIN_SCALE} to {MAX_SCALE}, got {scale} in {scales!r}")
    if len(set(scales)) != len(scales):
        raise ValueError(f"scales must be distinct, got {scales!r}")
    return tuple(float(scale) for scale in scales)


def scaled_canvas(size: Canvas, scale: float) -> tuple[int, int]:
    """The canvas (height, width) for one scale: each side times ``scale``, rounded, at least MIN_SIZE."""
    return tuple(max(MIN_SIZE, round(side * scale)) for side in canvas_hw(size))  # type: ignore[return-value]


def mean_probabilities(
    canvas_logits: Sequence[torch.Tensor], height: int, width: int, rows: tuple[int, int] | None = None
) -> torch.Tensor:
    """One image's logits on several canvases, each (Nc, Sh_i, Sw_i), letterboxed from (height, width) ->
    the mean of their softmax on the image grid, (Nc, height, width) (or only ``rows`` = (start, stop))."""
    total = None
    for logits in canvas_logits:
        probabilities = unletterbox(logits[None].float(), height, width, rows=rows)[0].softmax(0)
        total = probabilities if total is None else total.add_(probabilities)
    if total is None:
        raise ValueError("mean_probabilities needs the logits of at least one canvas")
    return total.div_(len(canvas_logits))


def canvas_labels(
    canvas_logits: Sequence[torch.Tensor], height: int, width: int, rows: tuple[int, int] | None = None
) -> torch.Tensor:
    """Labels (height or rows, width) int64 from one image's logits on one or several canvases: one canvas takes
    ``unletterbox_labels``' fast path (interpolation only along label borders), several the argmax of
    ``mean_probabilities``."""
    if len(canvas_logits) == 1:
        return unletterbox_labels(canvas_logits[0].float(), height, width, rows=rows)
    return mean_probabilities(canvas_logits, height, width, rows=rows).argmax(0)
