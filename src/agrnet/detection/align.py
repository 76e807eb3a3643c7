"""Similarity alignment of detected faces to the training crops' layout, and paste-back of parsed crops.

The parser was trained on aligned CelebA-HQ-style crops, so each face is warped to put its five landmarks where
they sit in those crops (FACE_TEMPLATE), parsed there, and the class probabilities are warped back to the photo.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from agrnet.detection.mtcnn import Face

# Median MTCNN landmarks (x, y) over 200 training crops of /work/shared/data/celebamask-mini/train/images
# (512x512 aligned CelebA-HQ faces, all 200 detected), measured by benchmarks/face_template.py; spread and
# percentiles in benchmarks/results/face_template.json. Order: eye on the image's left, eye on the right, nose,
# mouth left, mouth right.
TEMPLATE_SIZE = 512
FACE_TEMPLATE = np.array(
    [[191.69, 242.01], [319.32, 241.86], [254.87, 322.46], [200.22, 378.59], [311.76, 377.44]],
    dtype=np.float32,
)


def _umeyama(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) taking (N, 2) source
    points onto (N, 2) target points (Umeyama, 1991) -> (2, 3) matrix."""
    source_mean, target_mean = source.mean(0), target.mean(0)
    source_centred, target_centred = source - source_mean, target - target_mean
    u, singular, vt = np.linalg.svd(target_centred.T @ source_centred / len(source))
    # Flip the weakest axis if the best orthogonal map is a reflection: a mirrored face is not a face pose.
    signs = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ np.diag(signs) @ vt
    scale = (singular * signs).sum() / source_centred.var(0).sum()
    translation = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, translation[:, None]])


def alignment_matrix(landmarks: np.ndarray, size: int) -> np.ndarray:
    """(5, 2) photo landmarks -> (2, 3) float64 similarity taking photo pixels to a size x size crop whose
    landmarks best match FACE_TEMPLATE scaled to that size."""
    template = FACE_TEMPLATE.astype(np.float64) * (size / TEMPLATE_SIZE)
    return _umeyama(np.asarray(landmarks, dtype=np.float64), template)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 photo, (5, 2) landmarks -> (size, size, 3) uint8 aligned crop and its (2, 3) matrix.

    Outside the photo the crop is filled by reflection: CelebA-HQ's own crops were padded by reflecting the
    photo, so the parser has seen that, whereas a black border is a hard edge it never saw during training.
    """
    matrix = alignment_matrix(landmarks, size)
    crop = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return crop, matrix


def background(height: int, width: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """All-background result: (H, W) uint8 zeros and (Nc, H, W) float32 with class 0 probability 1."""
    probabilities = np.zeros((num_classes, height, width), dtype=np.float32)
    probabilities[0] = 1.0
    return np.zeros((height, width), dtype=np.uint8), probabilities


def _footprint(matrix: np.ndarray, size: int, height: int, width: int) -> tuple[slice, slice] | None:
    """Photo rows and columns covering the crop's footprint, or None when it misses the photo."""
    corners = np.array([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]], dtype=np.float64)
    photo = cv2.transform(corners[None], cv2.invertAffineTransform(matrix))[0]
    x0, y0 = np.maximum(np.floor(photo.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(photo.max(0)).astype(int) + 1, [width, height])
    if x0 >= x1 or y0 >= y1:
        return None
    return slice(y0, y1), slice(x0, x1)


def _warp_back(probabilities: np.ndarray, matrix: np.ndarray, rows: slice, cols: slice) -> tuple[np.ndarray, ...]:
    """(Nc, S, S) crop probabilities -> (Nc, h, w) probabilities over the photo window and its (h, w) mask of
    pixels that fall inside the crop."""
    size = probabilities.shape[-1]
    ys, xs = np.mgrid[rows, cols].astype(np.float32)
    map_x = (matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]).astype(np.float32)
    map_y = (matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]).astype(np.float32)
    inside = (map_x >= 0) & (map_x <= size - 1) & (map_y >= 0) & (map_y <= size - 1)
    # cv2.remap handles at most 4 channels at a time.
    warped = np.concatenate(
        [
            np.atleast_3d(cv2.remap(probabilities[c : c + 4].transpose(1, 2, 0), map_x, map_y, cv2.INTER_LINEAR))
            for c in range(0, len(probabilities), 4)
        ],
        axis=2,
    )
    return warped.transpose(2, 0, 1), inside


def paste_back(
    crop_probabilities: Sequence[np.ndarray], matrices: Sequence[np.ndarray], height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Warps each face's (Nc, S, S) float32 crop probabilities back to the photo with its (2, 3) matrix.

    Returns (H, W) uint8 labels and (Nc, H, W) float32 probabilities. Pixels outside every face are background
    (class 0, probability 1); where faces overlap, the face more confident there (higher max probability) wins.
    Each face is only warped over its footprint, so the cost follows the faces' size, not the photo's.
    """
    if not crop_probabilities:
        raise ValueError("paste_back needs at least one face; use background() for a photo without faces")
    labels, probabilities = background(height, width, len(crop_probabilities[0]))
    confidence = np.full((height, width), -1.0, dtype=np.float32)
    for crop, matrix in zip(crop_probabilities, matrices, strict=True):
        window = _footprint(matrix, crop.shape[-1], height, width)
        if window is None:
            continue
        warped, inside = _warp_back(np.asarray(crop, dtype=np.float32), matrix, *window)
        face_confidence = warped.max(0)
        wins = inside & (face_confidence > confidence[window])
        confidence[window][wins] = face_confidence[wins]
        labels[window][wins] = warped.argmax(0)[wins]
        np.copyto(probabilities[(slice(None), *window)], warped, where=wins)
    return labels, probabilities


def parse_photo_faces(
    image: np.ndarray,
    faces: Sequence[Face],
    parse_crops: Callable[[list[np.ndarray]], list[np.ndarray]],
    size: int,
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Aligns each face to a size x size crop, parses the crops with ``parse_crops`` ((size, size, 3) uint8 RGB
    crops -> (Nc, size, size) float32 probabilities each) and pastes them back.

    Returns (H, W) uint8 labels and (Nc, H, W) float32 probabilities; all background when ``faces`` is empty.
    """
    height, width = image.shape[:2]
    if not faces:
        return background(height, width, num_classes)
    aligned = [align_face(image, face.landmarks, size) for face in faces]
    probabilities = parse_crops([crop for crop, _ in aligned])
    return paste_back(probabilities, [matrix for _, matrix in aligned], height, width)
