"""MTCNN face detector (Zhang et al., IEEE SPL 2016): face boxes and five landmarks, offline, in plain PyTorch.

Three cascaded nets: P-Net proposes windows over an image pyramid, R-Net rejects most of them on 24x24 crops,
O-Net scores 48x48 crops and regresses the box and five landmarks. The weights are facenet-pytorch 2.6.0's
converted state dicts (MIT, see weights/README.md); the modules below are our own, with parameter names that
match those state dicts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_area, nms

WEIGHTS_DIR = Path(__file__).parent / "weights"
WEIGHT_SHA256 = {
    "pnet.pt": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "rnet.pt": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "onet.pt": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
}
# Smallest face searched by default, as a fraction of the photo's shorter side: a fixed 20 px minimum makes
# P-Net scan a 1-megapixel photo at 0.6x, while 5 % scans it at 0.24x (about 6x fewer pixels); faces smaller
# than that are too small to parse usefully anyway.
MIN_FACE_FRACTION = 0.05
MIN_FACE_PIXELS = 20
PYRAMID_FACTOR = 0.709  # sqrt(0.5): each pyramid level halves the area, as in the paper


@dataclass
class Face:
    """One detected face in photo pixels.

    box: (4,) float32 x0, y0, x1, y1, pixel edges (x1, y1 exclusive, like slicing), clipped to the photo.
    landmarks: (5, 2) float32 x, y, pixel centres at integers (as cv2.warpAffine): eye on the image's left,
        eye on the right, nose, mouth left, mouth right.
    score: O-Net face probability.
    """

    box: np.ndarray
    landmarks: np.ndarray
    score: float


def load_checked_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Loads one weight file after checking its sha256, so a truncated or corrupted copy fails loudly here."""
    expected = WEIGHT_SHA256[path.name]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise ValueError(f"{path}: sha256 {digest} != expected {expected}; the MTCNN weight file is corrupted")
    return torch.load(path, map_location="cpu", weights_only=True)


def _flatten_transposed(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, W*H*C): the dense weights were converted from a framework that flattens (W, H, C)."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class PNet(nn.Module):
    """Proposal net, fully convolutional: one 12x12 window per output cell, stride 2.

    (N, 3, H, W) normalised RGB -> face probability (N, H', W'), box offsets (N, 4, H', W').
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_1(x).softmax(1)[:, 1], self.conv4_2(x)


class RNet(nn.Module):
    """Refinement net: (N, 3, 24, 24) -> face probability (N,), box offsets (N, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu4(self.dense4(_flatten_transposed(self.prelu3(self.conv3(x)))))
        return self.dense5_1(x).softmax(1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """Output net: (N, 3, 48, 48) -> face probability (N,), box offsets (N, 4), landmarks (N, 10) as 5 x then 5 y,
    in fractions of the input crop."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.dense5(_flatten_transposed(self.prelu4(self.conv4(x)))))
        return self.dense6_1(x).softmax(1)[:, 1], self.dense6_2(x), self.dense6_3(x)


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    """0..255 -> about -1..1, the range the nets were trained on."""
    return (pixels - 127.5) * 0.0078125


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Moves each edge by its offset times the box size: (K, 4) boxes, (K, 4) offsets -> (K, 4)."""
    sizes = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    return boxes + offsets * sizes


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Grows each (K, 4) box to a square about its centre: R-Net and O-Net see square crops."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).amax(1, keepdim=True) / 2
    return torch.cat([centres - half, centres + half], 1)


def _crops(image: np.ndarray, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 photo, (K, 4) boxes -> (K, 3, size, size) normalised crops on the boxes' device.

    Parts of a box outside the photo are zeros, the padding the nets were trained with; shrinking averages
    areas (INTER_AREA) so large boxes do not alias. Per-box OpenCV is cheaper here than a batched roi_align,
    whose adaptive sampling costs O(box area) per output pixel.
    """
    height, width = image.shape[:2]
    crops = np.zeros((len(boxes), size, size, 3), dtype=np.uint8)
    for k, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
        if x1 <= x0 or y1 <= y0:
            continue  # a degenerate box stays black, which the nets score as no face
        inner_x0, inner_y0, inner_x1, inner_y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if (inner_x0, inner_y0, inner_x1, inner_y1) == (x0, y0, x1, y1):
            patch = image[y0:y1, x0:x1]  # OpenCV reads the view in place: no copy
        else:
            patch = np.zeros((y1 - y0, x1 - x0, 3), dtype=np.uint8)
            if inner_x0 < inner_x1 and inner_y0 < inner_y1:
                patch[inner_y0 - y0 : inner_y1 - y0, inner_x0 - x0 : inner_x1 - x0] = image[
                    inner_y0:inner_y1, inner_x0:inner_x1
                ]
        crops[k] = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    return _normalise(torch.from_numpy(crops).to(boxes.device).permute(0, 3, 1, 2).float())


def _pyramid_crops(image: np.ndarray, levels: list[np.ndarray], boxes: torch.Tensor, size: int) -> torch.Tensor:
    """``_crops`` of each box from the smallest pyramid level (or the photo) that still shows it at twice
    ``size``: area averaging composes, so the crop is nearly the same, and shrinking a 250-pixel face from
    the photo for each of some 60 candidates was most of R-Net's cost."""
    height, width = image.shape[:2]
    sources = [(image, 1.0, 1.0)] + [(level, level.shape[1] / width, level.shape[0] / height) for level in levels]
    sides = (boxes[:, 2:] - boxes[:, :2]).amax(1)
    choice = torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
    for index, (_, ratio_x, ratio_y) in enumerate(sources):
        choice[sides * min(ratio_x, ratio_y) >= 2 * size] = index
    crops = torch.empty(len(boxes), 3, size, size, device=boxes.device)
    for index, (source, ratio_x, ratio_y) in enumerate(sources):
        chosen = choice == index
        if chosen.any():
            ratios = torch.tensor([ratio_x, ratio_y, ratio_x, ratio_y], dtype=boxes.dtype, device=boxes.device)
            crops[chosen] = _crops(source, boxes[chosen] * ratios, size)
    return crops


def _suppress_nested(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS on intersection over the smaller box, which also drops a box nested inside a more confident
    one (IoU would keep it). Returns kept indices, most confident first."""
    top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(2)
    area = box_area(boxes)
    overlap = inter / torch.minimum(area[:, None], area[None, :]).clamp(min=1e-6)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in scores.argsort(descending=True).tolist():
        if not suppressed[i]:
            keep.append(i)
            suppressed |= overlap[i] > threshold
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) or grayscale (H, W) uint8 -> (H, W, 3) uint8."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"detect() needs an (H, W, 3) RGB or (H, W) uint8 image, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image)


class MTCNN:
    """Face detector; ``detect`` takes one RGB photo and returns its faces, most confident first.

    min_face_size: smallest face side searched, in pixels; None uses 5 % of the photo's shorter side (at least
    20 px), which keeps the cost of a photo roughly independent of its resolution.
    thresholds: face-probability cut-offs for P-Net, R-Net and O-Net.
    weights_dir: folder holding pnet.pt, rnet.pt and onet.pt; each must match its sha256 in WEIGHT_SHA256.
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        min_face_size: int | None = None,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        weights_dir: str | Path = WEIGHTS_DIR,
    ) -> None:
        self.device = torch.device(device)
        self.min_face_size = min_face_size
        self.thresholds = thresholds
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        for name, net in (("pnet.pt", self.pnet), ("rnet.pt", self.rnet), ("onet.pt", self.onet)):
            net.load_state_dict(load_checked_state_dict(Path(weights_dir) / name))
            # channels_last, the layout the HWC photo tensors already have: oneDNN pools in it about 3x
            # faster than in NCHW (R-Net on 61 crops: 12 -> 3.5 ms, one thread).
            net.eval().to(self.device, memory_format=torch.channels_last)

    def _min_face(self, height: int, width: int) -> float:
        if self.min_face_size is not None:
            return float(self.min_face_size)
        return max(MIN_FACE_PIXELS, MIN_FACE_FRACTION * min(height, width))

    @torch.inference_mode()
    def detect(self, image: np.ndarray) -> list[Face]:
        """(H, W, 3) uint8 RGB (or (H, W) grayscale) -> faces sorted by score, descending; [] when none."""
        image = _as_rgb(image)
        height, width = image.shape[:2]
        boxes, levels = self._propose(image, self._min_face(height, width))
        if len(boxes):
            boxes = self._refine(image, levels, boxes)
        if not len(boxes):
            return []
        boxes, scores, landmarks = self._output(image, boxes)
        limits = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
        boxes = torch.minimum(boxes.clamp(min=0), limits)
        return [
            Face(box=b.astype(np.float32), landmarks=p.astype(np.float32), score=float(s))
            for b, p, s in zip(boxes.cpu().numpy(), landmarks.cpu().numpy(), scores.cpu().numpy(), strict=True)
        ]

    def _propose(self, image: np.ndarray, min_face: float) -> tuple[torch.Tensor, list[np.ndarray]]:
        """Stage 1: P-Net over an image pyramid -> (K, 4) square candidate boxes, and the pyramid's levels
        (largest first)."""
        height, width = image.shape[:2]
        # A 12 px window at scale s sees a face of 12 / s px: start where that is min_face, stop at 12 px images.
        scale = 12.0 / min_face
        candidates, scores, levels = [], [], []
        while min(height, width) * scale >= 12:
            size = (max(12, round(width * scale)), max(12, round(height * scale)))
            # From the level two steps up (about twice the size) rather than the photo: area averaging
            # composes, so this is nearly the same image for a fraction of the photo's pixels read.
            source = levels[-2] if len(levels) >= 2 else image
            resized = cv2.resize(source, size, interpolation=cv2.INTER_AREA)
            levels.append(resized)
            tensor = _normalise(torch.from_numpy(resized).to(self.device).permute(2, 0, 1)[None].float())
            probability, offsets = self.pnet(tensor)
            rows, cols = torch.nonzero(probability[0] >= self.thresholds[0], as_tuple=True)
            # Exact per-axis factors: rounding the resized size makes them differ slightly from `scale`.
            ratio = torch.tensor([size[0] / width, size[1] / height], device=self.device)
            corners = torch.stack([cols, rows], 1).float() * 2
            windows = torch.cat([corners / ratio, (corners + 12) / ratio], 1)
            window_scores = probability[0, rows, cols]
            keep = nms(windows, window_scores, 0.5)
            candidates.append(_regress(windows[keep], offsets[0, :, rows[keep], cols[keep]].T))
            scores.append(window_scores[keep])
            scale *= PYRAMID_FACTOR
        if not candidates:
            return torch.zeros(0, 4, device=self.device), []
        boxes, box_scores = torch.cat(candidates), torch.cat(scores)
        keep = nms(boxes, box_scores, 0.7)
        return _square(boxes[keep]), levels

    def _refine(self, image: np.ndarray, levels: list[np.ndarray], boxes: torch.Tensor) -> torch.Tensor:
        """Stage 2: R-Net on 24x24 crops -> fewer, better (K, 4) square boxes."""
        probability, offsets = self.rnet(_pyramid_crops(image, levels, boxes, 24))
        passed = probability > self.thresholds[1]
        boxes, probability, offsets = boxes[passed], probability[passed], offsets[passed]
        keep = nms(boxes, probability, 0.7)
        return _square(_regress(boxes[keep], offsets[keep]))

    def _output(self, image: np.ndarray, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stage 3: O-Net on 48x48 crops -> boxes (K, 4), scores (K,), landmarks (K, 5, 2), by score."""
        probability, offsets, points = self.onet(_crops(image, boxes, 48))
        passed = probability > self.thresholds[2]
        boxes, probability, offsets, points = boxes[passed], probability[passed], offsets[passed], points[passed]
        sizes = boxes[:, 2:] - boxes[:, :2]
        # Landmarks are fractions of the (unregressed) crop; crop edges are at pixel-centre coordinates -0.5.
        landmarks = boxes[:, None, :2] + points.view(-1, 2, 5).transpose(1, 2) * sizes[:, None] - 0.5
        boxes = _regress(boxes, offsets)
        keep = _suppress_nested(boxes, probability, 0.7)
        return boxes[keep], probability[keep], landmarks[keep]
