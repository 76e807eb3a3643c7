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


def alignment_matrix(landmarks: np.ndarray, size: float, side: int | None = None) -> np.ndarray:
    """(5, 2) photo landmarks -> (2, 3) float64 similarity taking photo pixels to a crop whose landmarks best
    match FACE_TEMPLATE scaled to a ``size`` x ``size`` crop. ``side`` (default ``size``) is the crop's actual
    side: a larger side keeps the face at that scale, centred, and shows more of the photo around it."""
    side = round(size) if side is None else side
    template = FACE_TEMPLATE.astype(np.float64) * (size / TEMPLATE_SIZE) + (side - size) / 2
    return _umeyama(np.asarray(landmarks, dtype=np.float64), template)


Window = tuple[slice, slice]


def align_face(
    image: np.ndarray, landmarks: np.ndarray, size: float, side: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 photo, (5, 2) landmarks -> (side, side, 3) uint8 aligned crop and its (2, 3) matrix
    (``side``: see ``alignment_matrix``).

    Outside the photo the crop is filled by reflection: CelebA-HQ's own crops were padded by reflecting the
    photo, so the parser has seen that, whereas a black border is a hard edge it never saw during training.
    """
    side = round(size) if side is None else side
    matrix = alignment_matrix(landmarks, size, side)
    crop = cv2.warpAffine(image, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return crop, matrix


# A letterbox or collage bar between a face and the edge of its widest crop: lines of one flat colour, within
# this many levels per channel (JPEG-coded bars are not exactly constant) and at least _BAR_LINES thick.
_BAR_TOLERANCE = 6
_BAR_LINES = 2


def _bar_lines(lines: np.ndarray) -> int:
    """(n, m, C) uint8 lines of pixels, the first at the crop's edge and the last next to the face -> how many
    leading lines together hold one flat colour (0 when fewer than _BAR_LINES)."""
    edge = lines[:_BAR_LINES]
    if len(edge) < _BAR_LINES or np.ptp(edge.reshape(-1, edge.shape[-1]), axis=0).max() > _BAR_TOLERANCE:
        return 0  # the common case, decided without reading the rest: the crop's edge is no bar
    low = np.minimum.accumulate(lines.min(1).astype(np.int16), axis=0)
    high = np.maximum.accumulate(lines.max(1).astype(np.int16), axis=0)
    flat = ((high - low) <= _BAR_TOLERANCE).all(-1)  # the first _BAR_LINES are flat: checked above
    return len(lines) if flat.all() else int(np.argmin(flat))


def content_window(image: np.ndarray, box: np.ndarray, matrix: np.ndarray, side: int) -> Window:
    """The photo rows and columns a face's crops may label: the photo less any flat bar (a letterboxed video
    still, a collage's padding, a photo's border, a plain backdrop) between the face's (4,) box and the edge
    of its widest (side, side) crop, given by that crop's (2, 3) matrix.

    Why: a black bar at the edge of a wide crop is a hard edge the parser never saw in training, and it labels
    a stripe of the bar as hair, hat or skin. One flat colour from the crop's edge up to a line is never a
    face part (hair or skin in any of those lines would break the flatness), so nothing is pasted there. The
    crops still see the bar: reflecting the content there instead changed the parse of faces in front of
    plain backdrops for the worse (benchmarks/letterbox_bars.py).
    """
    height, width = image.shape[:2]
    full = (slice(0, height), slice(0, width))
    reach = _footprint(matrix, side, height, width)
    if reach is None:
        return full
    rows, cols = reach
    x0, y0 = np.clip(np.floor(box[:2]).astype(int), 0, [width, height])
    x1, y1 = np.clip(np.ceil(box[2:]).astype(int), 0, [width, height])
    across_rows, across_cols = rows, cols
    for _ in range(2):  # a bar of another colour on one side breaks the lines across it: cut, then scan again
        top = _bar_lines(image[rows.start : max(rows.start, y0), across_cols])
        bottom = _bar_lines(image[min(y1, rows.stop) : rows.stop, across_cols][::-1])
        left = _bar_lines(image[across_rows, cols.start : max(cols.start, x0)].swapaxes(0, 1))
        right = _bar_lines(image[across_rows, min(x1, cols.stop) : cols.stop][:, ::-1].swapaxes(0, 1))
        if not (top or bottom or left or right):
            break
        across_rows = slice(rows.start + top, rows.stop - bottom)
        across_cols = slice(cols.start + left, cols.stop - right)
    # Cut only bars that were found: without one, the side stays at the photo's edge.
    return (
        slice(rows.start + top if top else 0, rows.stop - bottom if bottom else height),
        slice(cols.start + left if left else 0, cols.stop - right if right else width),
    )


def _footprint(matrix: np.ndarray, side: int, height: int, width: int) -> tuple[slice, slice] | None:
    """Photo rows and columns covering the crop's footprint, or None when it misses the photo."""
    corners = np.array([[0, 0], [side - 1, 0], [0, side - 1], [side - 1, side - 1]], dtype=np.float64)
    photo = cv2.transform(corners[None], cv2.invertAffineTransform(matrix))[0]
    x0, y0 = np.maximum(np.floor(photo.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(photo.max(0)).astype(int) + 1, [width, height])
    if x0 >= x1 or y0 >= y1:
        return None
    return slice(y0, y1), slice(x0, x1)


def crop_coordinates(matrix: np.ndarray, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
    """Photo window (rows, cols) and (2, 3) photo -> crop matrix -> (h, w) float32 crop x and y of each pixel.
    Computed in float64 and rounded once, by broadcasting a row against a column (no (h, w) index grids)."""
    xs = np.arange(cols.start, cols.stop, dtype=np.float64)
    ys = np.arange(rows.start, rows.stop, dtype=np.float64)[:, None]
    map_x = (matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]).astype(np.float32)
    map_y = (matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]).astype(np.float32)
    return map_x, map_y


def inside_crop(map_x: np.ndarray, map_y: np.ndarray, side: int) -> np.ndarray:
    """(h, w) crop coordinates -> (h, w) bool: inside the (side, side) crop."""
    return (map_x >= 0) & (map_x <= side - 1) & (map_y >= 0) & (map_y <= side - 1)


def _centrality(map_x: np.ndarray, map_y: np.ndarray, side: int) -> np.ndarray:
    """(h, w) crop coordinates -> (h, w) float32: 1 at the crop's centre, 0 at its corners, falling with the
    squared distance relative to the crop's size (the same order as the distance itself, without a root)."""
    half = np.float32((side - 1) / 2)
    dx, dy = map_x - half, map_y - half
    return 1 - (dx * dx + dy * dy) * np.float32(1 / (2 * half * half + 1e-6))


def _remap(planes: np.ndarray, fixed: np.ndarray, fraction: np.ndarray) -> np.ndarray:
    """(Nc, S, S) float32 planes sampled bilinearly -> (Nc, h, w); outside the crop the planes count as zeros.
    ``fixed``, ``fraction``: the (h, w) crop coordinates in OpenCV's fixed-point form (``cv2.convertMaps``,
    CV_16SC2), converted once for all the planes."""
    warped = np.empty((len(planes), *fraction.shape), dtype=np.float32)
    for plane, out in zip(planes, warped, strict=True):
        cv2.remap(plane, fixed, fraction, cv2.INTER_LINEAR, dst=out)
    return warped


def _argmax(values: np.ndarray) -> np.ndarray:
    """(Nc, n) -> (n,) uint8 index of the largest, the first on ties as np.argmax; one pass per class,
    several times faster than np.argmax across the leading axis."""
    best, labels = values[0].copy(), np.zeros(values.shape[1], dtype=np.uint8)
    for c in range(1, len(values)):
        better = values[c] > best
        labels[better] = c
        np.maximum(best, values[c], out=best)
    return labels


def _warp_back(
    probabilities: np.ndarray, matrix: np.ndarray, rows: slice, cols: slice
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (Nc, S, S) crop's probabilities -> over the photo window: (Nc, h, w) probabilities, the (h, w) mask
    of pixels inside the crop, and their (h, w) centrality (``_centrality``)."""
    side = probabilities.shape[-1]
    map_x, map_y = crop_coordinates(matrix, rows, cols)
    warped = _remap(probabilities, *cv2.convertMaps(map_x, map_y, cv2.CV_16SC2))
    return warped, inside_crop(map_x, map_y, side), _centrality(map_x, map_y, side)


# A class whose probability is above this at the four crop pixels around a sample point wins there after
# bilinear interpolation (every other class stays below 1 minus it); the 0.001 above 1/2 absorbs the rounding
# of the interpolation weights. Most of a parsed face is that sure, so only the rest needs interpolating.
_SURE = 0.501
_UNSURE = 255


def _sure_labels(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Nc, S, S) -> two (S, S) uint8 maps of the class above _SURE at every pixel of a window, else _UNSURE:
    the 3 x 3 window around each pixel, and the 2 x 2 block to its right and below.

    A sample point rounded to its nearest pixel has its four interpolation neighbours in the 3 x 3 window
    (also with OpenCV's sub-pixel rounding), and exactly those of the block at its fixed-point integer part,
    so either map's class, where sure, is the interpolated argmax.
    """
    labels = np.full(probabilities.shape[1:], _UNSURE, dtype=np.uint8)
    for c, plane in enumerate(probabilities):
        np.copyto(labels, np.uint8(c), where=plane > _SURE)
    windows = []
    for kernel, anchor in ((np.ones((3, 3), np.uint8), (-1, -1)), (np.ones((2, 2), np.uint8), (0, 0))):
        # Beyond the crop counts as unsure: there the interpolation mixes in zeros.
        low = cv2.erode(labels, kernel, anchor=anchor, borderType=cv2.BORDER_CONSTANT, borderValue=_UNSURE)
        high = cv2.dilate(labels, kernel, anchor=anchor, borderType=cv2.BORDER_CONSTANT, borderValue=_UNSURE)
        windows.append(np.where(low == high, labels, np.uint8(_UNSURE)))
    return windows[0], windows[1]


def _interpolated_labels(planes: np.ndarray, block: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """(n,) crop coordinates -> (n,) uint8 argmax of the (Nc, S, S) planes interpolated there as ``_remap``
    does; ``block``: the 2 x 2 map of ``_sure_labels``, which decides wherever it is sure."""
    width = 1024  # cv2's maps must be narrower than 32767: lay the points out in rows
    count, side = len(xs), planes.shape[-1]

    def rows_of(points: np.ndarray) -> np.ndarray:
        return np.resize(points, (-(-len(points) // width), width, *points.shape[1:]))

    fixed, fraction = cv2.convertMaps(rows_of(xs), rows_of(ys), cv2.CV_16SC2)
    fixed, fraction = fixed.reshape(-1, 2)[:count], fraction.reshape(-1)[:count]
    ix, iy = fixed[:, 0].astype(np.intp), fixed[:, 1].astype(np.intp)
    labels = np.full(count, _UNSURE, dtype=np.uint8)
    within = (ix >= 0) & (ix < side) & (iy >= 0) & (iy < side)
    labels[within] = block[iy[within], ix[within]]
    rest = labels == _UNSURE
    if rest.any():
        warped = _remap(planes, rows_of(fixed[rest]), rows_of(fraction[rest]))
        labels[rest] = _argmax(warped.reshape(len(planes), -1)[:, : int(rest.sum())])
    return labels


def _warp_labels_back(
    probabilities: np.ndarray, sure: tuple[np.ndarray, np.ndarray], matrix: np.ndarray, rows: slice, cols: slice
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_warp_back`` for labels only: (h, w) uint8 argmax of the warped probabilities (exactly), the inside
    mask and the centrality; ``sure`` from ``_sure_labels``. Interpolates only the pixels that are not sure.

    A sure pixel within one pixel of a sample point decides it, so OpenCV's nearest-pixel warp, whose
    fixed-point rounding may pick the other neighbour at a half-way point, is exact enough.
    """
    window, block = sure
    side = len(window)
    map_x, map_y = crop_coordinates(matrix, rows, cols)
    inside = inside_crop(map_x, map_y, side)
    shifted = matrix.copy()
    shifted[:, 2] += matrix[:, :2] @ np.array([cols.start, rows.start], dtype=np.float64)
    labels = cv2.warpAffine(
        window, shifted, (cols.stop - cols.start, rows.stop - rows.start),
        flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=_UNSURE,
    )  # fmt: skip
    unsure = inside & (labels == _UNSURE)
    if unsure.any():
        labels[unsure] = _interpolated_labels(probabilities, block, map_x[unsure], map_y[unsure])
    return labels, inside, _centrality(map_x, map_y, side)


# Rows of a face's footprint warped back at a time, so that a face filling a 40 MP photo never needs its
# whole (Nc, H, W) float32 window at once.
_STRIP_PIXELS = 2_000_000
# Views per face that PhotoCanvas ranks (the training framing and wider ones).
MAX_VIEWS = 4


class PhotoCanvas:
    """The photo's parse, built crop by crop: (H, W) uint8 labels and each pixel's claim, plus (Nc, H, W)
    float32 probabilities only when asked for.

    Where crops overlap, foreground beats background (a neighbour's crop must not erase a face's hair or
    skin with its own background; a face's wider view adds the parts its narrower ones missed at their
    border: measured on real photos, benchmarks/results/wide_views_rule.md); then the narrower view beats a
    wider one (view 0, the training framing, first: more pixels per face); then the crop whose centre is
    nearer, relative to its size, wins: a face's own crop decides near that face.
    Claim = (MAX_VIEWS + 1) * foreground + (MAX_VIEWS - 1 - view) + centrality (in [0, 1))."""

    def __init__(self, height: int, width: int, num_classes: int, probabilities: bool) -> None:
        self.labels = np.zeros((height, width), dtype=np.uint8)
        self.claim = np.full((height, width), -1.0, dtype=np.float32)
        self.probabilities: np.ndarray | None = None
        if probabilities:
            self.probabilities = np.zeros((num_classes, height, width), dtype=np.float32)
            self.probabilities[0] = 1.0

    def paste(
        self, crop_probabilities: np.ndarray, matrix: np.ndarray, view: int = 0, window: Window | None = None
    ) -> None:
        """Warp one crop's (Nc, S, S) probabilities back with its (2, 3) photo -> crop matrix; ``view``: its
        view's index, 0 the training framing, higher wider; ``window``: photo rows and cols it may paste on
        (default: all)."""
        if not 0 <= view < MAX_VIEWS:
            raise ValueError(f"view must be from 0 to {MAX_VIEWS - 1}, got {view}")
        height, width = self.labels.shape
        reach = _footprint(matrix, crop_probabilities.shape[-1], height, width)
        if reach is None:
            return
        rows, cols = reach
        if window is not None:
            rows = slice(max(rows.start, window[0].start), min(rows.stop, window[0].stop))
            cols = slice(max(cols.start, window[1].start), min(cols.stop, window[1].stop))
            if rows.start >= rows.stop or cols.start >= cols.stop:
                return
        step = max(1, _STRIP_PIXELS // max(1, cols.stop - cols.start))
        planes = np.ascontiguousarray(crop_probabilities, dtype=np.float32)
        sure = _sure_labels(planes) if self.probabilities is None else None
        for start in range(rows.start, rows.stop, step):
            strip = (slice(start, min(rows.stop, start + step)), cols)
            if sure is None:
                warped, inside, centrality = _warp_back(planes, matrix, *strip)
                labels = warped.argmax(0).astype(np.uint8)
            else:
                labels, inside, centrality = _warp_labels_back(planes, sure, matrix, *strip)
            claim = centrality * np.float32(0.999)
            claim += np.float32(MAX_VIEWS - 1 - view)
            claim[labels > 0] += MAX_VIEWS + 1
            wins = inside & (claim > self.claim[strip])
            np.copyto(self.claim[strip], claim, where=wins)
            np.copyto(self.labels[strip], labels, where=wins)
            if self.probabilities is not None:
                np.copyto(self.probabilities[(slice(None), *strip)], warped, where=wins)


def paste_back(
    crop_probabilities: Sequence[np.ndarray], matrices: Sequence[np.ndarray], height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Warps each face's (Nc, S, S) float32 crop probabilities back to the photo with its (2, 3) matrix.

    Returns (H, W) uint8 labels and (Nc, H, W) float32 probabilities. Pixels outside every face are background
    (class 0, probability 1); where faces overlap, ``PhotoCanvas``'s rule decides.
    Each face is only warped over its footprint, so the cost follows the faces' size, not the photo's.
    """
    if not crop_probabilities:
        raise ValueError("paste_back needs at least one face")
    canvas = PhotoCanvas(height, width, len(crop_probabilities[0]), probabilities=True)
    for crop, matrix in zip(crop_probabilities, matrices, strict=True):
        canvas.paste(np.asarray(crop, dtype=np.float32), matrix)
    assert canvas.probabilities is not None
    return canvas.labels, canvas.probabilities


def parse_photo_faces(
    image: np.ndarray,
    faces: Sequence[Face],
    parse_crops: Callable[[list[np.ndarray]], list[np.ndarray]],
    size: int,
    num_classes: int,
    views: Sequence[tuple[float, int]] | None = None,
    probabilities: bool = True,
    chunk: int = 8,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Aligns each face to one crop per view, parses the crops with ``parse_crops`` ((S, S, 3) uint8 RGB crops
    -> (Nc, S, S) float32 probabilities each), ``chunk`` faces (all their views in one call) at a time, and
    pastes them back.

    A view (scale, side) is a (side, side) crop with the face as large as in a ``scale`` x ``scale`` training
    crop (``alignment_matrix``); default one view, (size, size): the training framing. Views go from the
    narrowest, which decides where it reaches, to the widest; each adds face parts where the ones before it saw
    background or did not reach (see ``PhotoCanvas``); no crop pastes on a flat bar between the face and the
    widest crop's edge (``content_window``). Returns (H, W) uint8
    labels and, with ``probabilities``, (Nc, H, W) float32 probabilities (else None); all background when
    ``faces`` is empty. Memory: one chunk of crops (chunk x views) plus the photo's labels and claims.
    """
    height, width = image.shape[:2]
    canvas = PhotoCanvas(height, width, num_classes, probabilities)
    views = views or [(size, size)]
    if len({side for _, side in views}) != 1:
        raise ValueError(f"every view must have the same side (one network batch), got {views}")
    if len(views) > MAX_VIEWS:
        raise ValueError(f"at most {MAX_VIEWS} views per face, got {len(views)}")
    widest, side = min(scale for scale, _ in views), views[0][1]
    for start in range(0, len(faces), chunk):
        batch = faces[start : start + chunk]
        windows = [
            content_window(image, face.box, alignment_matrix(face.landmarks, widest, side), side) for face in batch
        ]
        # View-major, so that every primary crop is pasted before any wide one, as with one call per view;
        # one network batch for all views is cheaper on the CPU than one per view.
        aligned = [
            (view, window, *align_face(image, face.landmarks, scale, side))
            for view, (scale, _) in enumerate(views)
            for face, window in zip(batch, windows, strict=True)
        ]
        parsed = parse_crops([crop for _, _, crop, _ in aligned])
        for crop_probabilities, (view, window, _, matrix) in zip(parsed, aligned, strict=True):
            canvas.paste(np.asarray(crop_probabilities, dtype=np.float32), matrix, view=view, window=window)
    return canvas.labels, canvas.probabilities
