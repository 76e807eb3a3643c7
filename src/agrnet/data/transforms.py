"""Geometry and normalisation shared by training, evaluation and inference.

Every image reaches the network through one affine map: letterbox (aspect kept, centred, image pad 0,
label pad 255; training may mirror the photo instead), optionally scaled and rotated about the centre
for training augmentation. Evaluation and inference use the same map without augmentation and invert
it exactly (``unletterbox``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255

AugmentMode = Literal["paper", "code", "none"]
Border = Literal["pad", "mirror", "mirror_below"]
# REFLECT_101 mirrors about the edge pixel, so the edge row is not doubled into a visible seam.
# "mirror_below" pads with constants too: the photo itself is first extended downwards.
BORDERS: dict[str, int] = {"pad": cv2.BORDER_CONSTANT, "mirror": cv2.BORDER_REFLECT_101,
                           "mirror_below": cv2.BORDER_CONSTANT}  # fmt: skip

# A network canvas: S for S x S, or (height, width). Tall canvases suit people (a square one would
# spend a third of its pixels on padding beside a standing person).
Canvas = int | tuple[int, int]


def canvas_hw(size: Canvas) -> tuple[int, int]:
    """A canvas as (height, width)."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def letterbox_ratio(height: int, width: int, size: Canvas) -> float:
    """The scale that fits a (height, width) image inside the canvas, aspect kept."""
    canvas_h, canvas_w = canvas_hw(size)
    return min(canvas_h / height, canvas_w / width)


def letterbox_matrix(height: int, width: int, size: Canvas, scale: float = 1.0, angle: float = 0.0) -> np.ndarray:
    """2x3 affine from source pixel coordinates to the canvas (``size``: S or (height, width)).

    The image is fitted inside the canvas (aspect kept), centred, then scaled by ``scale`` and rotated
    by ``angle`` degrees (counter-clockwise) about the canvas centre. Pixel centres map to pixel
    centres: source index x -> r * (x - (w - 1) / 2) + (canvas_w - 1) / 2.
    """
    canvas_h, canvas_w = canvas_hw(size)
    r = letterbox_ratio(height, width, size) * scale
    theta = np.deg2rad(angle)
    cos, sin = np.cos(theta) * r, np.sin(theta) * r
    linear = np.array([[cos, sin], [-sin, cos]])
    source_centre = np.array([(width - 1) / 2, (height - 1) / 2])
    canvas_centre = np.array([(canvas_w - 1) / 2, (canvas_h - 1) / 2])
    return np.hstack([linear, (canvas_centre - linear @ source_centre)[:, None]])


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation. ``mode="paper"``: scale U(0.75, 1.25), rotation U(-30, 30) degrees.
    ``"code"``: the reference code's scale clip(N(1, 0.25), 0.75, 1.25) and, with probability 0.6,
    rotation clip(N(0, 30), -60, 60). ``flip``: horizontal mirror with probability 0.5, swapping
    left/right labels (off by default, as in the paper). ``scale_range`` replaces 0.75-1.25 in both.
    ``degrade``: the probability that a sample is shown as a low-quality photo (``degrade_image``).
    ``surround``: what a zoomed-out or rotated canvas shows beyond the photo (``warp_pair``'s ``border``)."""

    mode: AugmentMode = "paper"
    flip: bool = False
    scale_range: tuple[float, float] = (0.75, 1.25)
    degrade: float = 0.0
    surround: Border = "pad"

    def sample(self, rng: np.random.Generator) -> tuple[float, float, bool]:
        """-> (scale, angle in degrees, flip)."""
        low, high = self.scale_range
        if self.mode == "paper":
            scale, angle = rng.uniform(low, high), rng.uniform(-30, 30)
        elif self.mode == "code":
            scale = float(np.clip(rng.normal(1, 0.25), low, high))
            angle = float(np.clip(rng.normal(0, 30), -60, 60)) if rng.random() < 0.6 else 0.0
        elif self.mode == "none":
            scale, angle = 1.0, 0.0
        else:
            raise ValueError(f"augmentation mode must be 'paper', 'code' or 'none', got {self.mode!r}")
        return float(scale), float(angle), bool(self.flip and rng.random() < 0.5)

    def degrade_image(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(H, W, 3) uint8 RGB canvas -> the same, with probability ``degrade`` as a small JPEG blown up.

        Training faces are sharp 512-px CelebA-HQ crops; a face detected in a small press photo reaches
        the canvas upsampled and compressed. The canvas is shrunk to a fraction U(0.3, 1) of its side
        (area filter), JPEG-coded at quality U(30, 95) and resized back (bilinear). The draws follow
        ``sample``'s, so runs without degradation draw exactly what they drew before it existed.
        """
        if self.degrade <= 0 or rng.random() >= self.degrade:
            return image
        height, width = image.shape[:2]
        factor, quality = rng.uniform(0.3, 1.0), int(rng.integers(30, 96))
        small = cv2.resize(image, (max(1, round(width * factor)), max(1, round(height * factor))),
                           interpolation=cv2.INTER_AREA)  # fmt: skip
        # OpenCV's JPEG coder takes BGR: chroma must be subsampled on the true colour channels.
        ok, code = cv2.imencode(".jpg", small[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("OpenCV could not JPEG-encode a training canvas")
        small = np.ascontiguousarray(cv2.imdecode(code, cv2.IMREAD_COLOR)[..., ::-1])
        return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def warp_pair(
    image: np.ndarray,
    labels: np.ndarray | None,
    size: Canvas,
    scale: float = 1.0,
    angle: float = 0.0,
    flip_lut: np.ndarray | None = None,
    border: Border = "pad",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Warp an (H, W, 3) uint8 image and its (H, W) uint8 labels onto the canvas (S or (height, width)).

    Image bilinear, labels nearest. Beyond the photo, ``border="pad"`` puts image 0 and label 255
    (ignored); ``"mirror"`` reflects photo and labels at its edges, so that a zoomed-out training face
    has labelled hair and neck around it, as the wide crop of a real photo has (a padded surround only
    teaches the network that nothing lies beyond the standard crop); ``"mirror_below"`` reflects only at
    the bottom edge (a neck goes on into clothes below a face; above and beside it lies unknown scene)
    and pads elsewhere. With ``flip_lut`` the canvas is mirrored and left/right labels swapped through it.
    """
    if border not in BORDERS:
        raise ValueError(f"border must be one of {sorted(BORDERS)}, got {border!r}")
    h, w = image.shape[:2]
    if border == "mirror_below":
        # Rows appended below keep every photo pixel where it was: the letterbox of (h, w) still applies.
        image = np.pad(image, ((0, h - 1), (0, 0), (0, 0)), mode="reflect")
        labels = None if labels is None else np.pad(labels, ((0, h - 1), (0, 0)), mode="reflect")
    canvas_h, canvas_w = canvas_hw(size)
    matrix = letterbox_matrix(h, w, size, scale, angle)
    if flip_lut is not None:
        matrix = np.array([[-1.0, 0.0, canvas_w - 1], [0.0, 1.0, 0.0]]) @ np.vstack([matrix, [0, 0, 1]])
    out_image = cv2.warpAffine(
        image, matrix, (canvas_w, canvas_h), flags=cv2.INTER_LINEAR, borderMode=BORDERS[border], borderValue=0
    )
    out_labels = None
    if labels is not None:
        out_labels = cv2.warpAffine(
            labels,
            matrix,
            (canvas_w, canvas_h),
            flags=cv2.INTER_NEAREST,
            borderMode=BORDERS[border],
            borderValue=255,
        )
        if flip_lut is not None:
            out_labels = flip_lut[out_labels]
    return out_image, out_labels


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 normalised with ImageNet mean/std."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return tensor.sub_(mean).div_(std)


def _source_points(
    height: int, width: int, canvas: tuple[int, int], rows: tuple[int, int] | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Canvas coordinates (pixel units) of image rows ``rows`` (default all) and of every image column."""
    canvas_h, canvas_w = canvas
    r = letterbox_ratio(height, width, canvas)
    start, stop = rows or (0, height)
    xs = r * (torch.arange(width, device=device, dtype=torch.float32) - (width - 1) / 2) + (canvas_w - 1) / 2
    ys = r * (torch.arange(start, stop, device=device, dtype=torch.float32) - (height - 1) / 2) + (canvas_h - 1) / 2
    return ys, xs


def unletterbox(logits: torch.Tensor, height: int, width: int, rows: tuple[int, int] | None = None) -> torch.Tensor:
    """Map canvas predictions back to the original image grid (the exact inverse of the letterbox).

    logits (N, C, Sh, Sw) for images letterboxed from (height, width) -> (N, C, height, width),
    bilinear, so argmax afterwards gives labels at the original resolution. ``rows`` = (start, stop)
    restricts the output to those image rows, for huge images processed in strips.
    """
    canvas_h, canvas_w = logits.shape[-2:]
    ys, xs = _source_points(height, width, (canvas_h, canvas_w), rows, logits.device)
    # grid_sample with align_corners=False addresses pixel centres at (2i + 1) / side - 1.
    gx, gy = (2 * xs + 1) / canvas_w - 1, (2 * ys + 1) / canvas_h - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)
    grid = grid.unsqueeze(0).expand(logits.shape[0], -1, -1, -1).to(logits.dtype)
    return F.grid_sample(logits, grid, mode="bilinear", padding_mode="border", align_corners=False)


def argmax_classes(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(0)`` (first maximum on ties) for (C, N) scores with few classes: one pass per
    class over contiguous rows, several times faster on CPU than torch's reduction over a short axis."""
    best, labels = scores[0], torch.zeros(scores.shape[1:], dtype=torch.long, device=scores.device)
    for k in range(1, scores.shape[0]):
        better = scores[k] > best
        best = torch.where(better, scores[k], best)
        labels.masked_fill_(better, k)
    return labels


def unletterbox_labels(
    logits: torch.Tensor, height: int, width: int, rows: tuple[int, int] | None = None
) -> torch.Tensor:
    """``unletterbox(logits[None], ...)[0].argmax(0)`` without interpolating every class at every pixel.

    Bilinear interpolation is a convex combination of the 4 canvas pixels around a point, so where
    those 4 share their argmax, the interpolated logits share it too: the canvas label is the
    answer. Only points whose 4 neighbours disagree (along label borders, a few per cent) are
    interpolated. logits (C, Sh, Sw), C <= 256 -> labels (rows, width) int64.
    """
    num_classes, canvas_h, canvas_w = logits.shape
    ys, xs = _source_points(height, width, (canvas_h, canvas_w), rows, logits.device)
    ys, xs = ys.clamp(0, canvas_h - 1), xs.clamp(0, canvas_w - 1)  # grid_sample's border padding
    y0, x0 = ys.floor().long(), xs.floor().long()
    y1, x1 = (y0 + 1).clamp_max(canvas_h - 1), (x0 + 1).clamp_max(canvas_w - 1)
    flat = logits.reshape(num_classes, -1)
    canvas_labels = argmax_classes(flat).view(canvas_h, canvas_w)
    # A canvas cell (i, j) to (i + 1, j + 1), clamped at the far edges as x1 and y1 are, is mixed
    # when its 4 corners disagree. Gathered as uint8: a quarter of the memory traffic of int64.
    small = canvas_labels.to(torch.uint8)
    right = torch.cat([small[:, 1:], small[:, -1:]], 1)
    below, below_right = (torch.cat([m[1:], m[-1:]], 0) for m in (small, right))
    mixed = (small != right) | (small != below) | (small != below_right)
    labels = small.index_select(0, y0).index_select(1, x0).long()
    r, c = mixed.index_select(0, y0).index_select(1, x0).nonzero(as_tuple=True)
    if len(r):
        ty, tx = (ys - y0)[r], (xs - x0)[c]
        top, bottom, left, right_col = y0[r] * canvas_w, y1[r] * canvas_w, x0[c], x1[c]
        values = (
            (1 - ty) * (1 - tx) * flat.index_select(1, top + left)
            + (1 - ty) * tx * flat.index_select(1, top + right_col)
            + ty * (1 - tx) * flat.index_select(1, bottom + left)
            + ty * tx * flat.index_select(1, bottom + right_col)
        )
        labels[r, c] = argmax_classes(values)
    return labels
