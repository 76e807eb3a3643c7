"""Procedural face-parsing data with the LaPa classes, written in the LaPa layout.

Each face is drawn from a random generator seeded by (seed, index): head pose (roll, a crude yaw by
shifting the features, scale, position), skin/hair/lip/background colours, hair style, open or closed
eyes and mouth, lighting gradient, occluders (labelled background, as anything covering the face)
and sensor noise. Labels follow LaPa: 0 bg, 1 skin, 2/3 brows, 4/5 eyes, 6 nose, 7 upper lip,
8 inner mouth, 9 lower lip, 10 hair; "left" is the left of the image.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm


class _FaceFrame:
    """Maps face-local coordinates (u, v in units of the face half-axes) to image pixels."""

    def __init__(self, centre: np.ndarray, half_width: float, half_height: float, roll: float, yaw: float):
        self.centre, self.a, self.b, self.roll, self.yaw = centre, half_width, half_height, roll, yaw
        theta = np.deg2rad(roll)
        self.rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])

    def point(self, u: float, v: float, shift: bool = True) -> np.ndarray:
        u = u + (self.yaw * 0.35 if shift else 0.0)
        return self.centre + self.rotation @ np.array([u * self.a, v * self.b])

    def points(self, uv: np.ndarray, shift: bool = True) -> np.ndarray:
        return np.stack([self.point(u, v, shift) for u, v in uv])


def _ellipse_uv(cu: float, cv: float, ru: float, rv: float, n: int, t0: float = 0, t1: float = 2 * np.pi):
    t = np.linspace(t0, t1, n, endpoint=t1 - t0 < 2 * np.pi - 1e-6)
    return np.stack([cu + ru * np.cos(t), cv + rv * np.sin(t)], axis=1)


def _fill(image: np.ndarray, labels: np.ndarray, pts: np.ndarray, colour: np.ndarray, cls: int | None) -> None:
    poly = np.round(pts * 16).astype(np.int32)  # 4 fractional bits: smooth outlines at small sizes
    cv2.fillPoly(image, [poly], colour.tolist(), lineType=cv2.LINE_AA, shift=4)
    if cls is not None:
        cv2.fillPoly(labels, [poly], int(cls), lineType=cv2.LINE_8, shift=4)


def _random_colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> np.ndarray:
    return rng.integers(low, high, 3).astype(np.float64)


def draw_face(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> image (size, size, 3) uint8 RGB, labels (size, size) uint8, landmarks (106, 2) float.

    The steps draw back to front, each consuming the generator in a fixed order, so a (seed, index)
    pair always yields the same face.
    """
    image = np.empty((size, size, 3), dtype=np.float64)
    image[:] = _random_colour(rng, 20, 236)
    labels = np.zeros((size, size), dtype=np.uint8)
    for _ in range(rng.integers(2, 7)):  # background clutter
        centre = rng.uniform(0, size, 2)
        _fill(image, labels, _ellipse_uv(*centre, *rng.uniform(3, size / 4, 2), 24), _random_colour(rng), None)

    a = rng.uniform(0.17, 0.27) * size
    b = a * rng.uniform(1.2, 1.45)
    centre = np.array([size / 2, size / 2]) + rng.uniform(-0.08, 0.08, 2) * size
    face = _FaceFrame(centre, a, b, roll=rng.uniform(-25, 25), yaw=rng.uniform(-0.3, 0.3))
    skin = np.array([rng.uniform(120, 250), rng.uniform(80, 200), rng.uniform(50, 170)])
    hair = _random_colour(rng, 10, 200) * rng.uniform(0.3, 1.0)

    landmarks = _draw_head(rng, image, labels, face, skin, hair)
    landmarks += _draw_brows_and_eyes(rng, image, labels, face, hair)
    landmarks += _draw_nose(rng, image, labels, face, skin)
    landmarks += _draw_mouth(rng, image, labels, face)
    if rng.random() < 0.3:  # occluder: a hand, microphone or sticker in front of the face
        oc = centre + rng.uniform(-1, 1, 2) * a
        occluder = _ellipse_uv(*oc, *(rng.uniform(0.15, 0.45, 2) * a), 24)
        _fill(image, labels, occluder, _random_colour(rng), 0)
    image = _light(rng, image)
    return np.clip(image, 0, 255).astype(np.uint8), labels, _resample(np.concatenate(landmarks), 106)


def _draw_head(
    rng: np.random.Generator,
    image: np.ndarray,
    labels: np.ndarray,
    face: _FaceFrame,
    skin: np.ndarray,
    hair: np.ndarray,
) -> list[np.ndarray]:
    """Hair behind the head (a cap, sometimes long hair down the sides), the skin, an optional fringe.

    -> the jaw contour's landmarks."""
    cap_rv = rng.uniform(0.75, 1.0)
    _fill(image, labels, face.points(_ellipse_uv(0, -0.2, 1.18, cap_rv, 40), shift=False), hair, 10)
    if rng.random() < 0.5:
        length = rng.uniform(0.6, 1.3)
        box = np.array([[-1.2, -0.3], [1.2, -0.3], [1.25, length], [-1.25, length]])
        _fill(image, labels, face.points(box, shift=False), hair, 10)

    contour = face.points(_ellipse_uv(0, 0, 1, 1, 48), shift=False)
    _fill(image, labels, contour, skin, 1)
    jaw = face.points(_ellipse_uv(0, 0, 1, 1, 33, 0, np.pi), shift=False)

    if rng.random() < 0.5:  # fringe over the forehead
        fringe = _ellipse_uv(rng.uniform(-0.3, 0.3), -0.95, rng.uniform(0.7, 1.1), rng.uniform(0.25, 0.45), 30)
        _fill(image, labels, face.points(fringe, shift=False), hair, 10)
    return [jaw]


def _draw_brows_and_eyes(
    rng: np.random.Generator, image: np.ndarray, labels: np.ndarray, face: _FaceFrame, hair: np.ndarray
) -> list[np.ndarray]:
    """-> per side, the brow's and the eye's landmarks (image left first)."""
    brow_colour = hair * rng.uniform(0.5, 1.0)
    eye_open = rng.uniform(0.35, 1.0)
    landmarks = []
    for side, (brow_cls, eye_cls) in ((-1, (2, 4)), (1, (3, 5))):
        eu, ev = side * rng.uniform(0.33, 0.42), rng.uniform(-0.18, -0.05)
        top = _ellipse_uv(eu, ev - 0.16, 0.2, 0.06, 9, np.pi, 2 * np.pi)
        thickness = rng.uniform(0.035, 0.07)
        brow = np.concatenate([top, (top + [0, thickness])[::-1]])
        _fill(image, labels, face.points(brow), brow_colour, brow_cls)
        landmarks.append(face.points(top))
        eye = _ellipse_uv(eu, ev, rng.uniform(0.13, 0.18), 0.075 * eye_open, 20)
        _fill(image, labels, face.points(eye), np.array([235.0, 235, 235]), eye_cls)
        iris = _ellipse_uv(eu + rng.uniform(-0.04, 0.04), ev, 0.05, 0.05 * eye_open, 12)
        _fill(image, labels, face.points(iris), _random_colour(rng, 0, 120), eye_cls)
        landmarks.append(face.points(eye[::2]))
    return landmarks


def _draw_nose(
    rng: np.random.Generator, image: np.ndarray, labels: np.ndarray, face: _FaceFrame, skin: np.ndarray
) -> list[np.ndarray]:
    nose_len = rng.uniform(0.2, 0.32)
    nose = np.array([[0.0, -0.05], [0.1, nose_len], [0.0, nose_len + 0.04], [-0.1, nose_len]])
    _fill(image, labels, face.points(nose), skin * rng.uniform(0.7, 0.9), 6)
    return [face.points(np.concatenate([nose, _ellipse_uv(0, nose_len, 0.08, 0.03, 11)]))]


def _draw_mouth(rng: np.random.Generator, image: np.ndarray, labels: np.ndarray, face: _FaceFrame) -> list[np.ndarray]:
    """Lips, open (inner mouth visible) in about half the faces."""
    mv, mw = rng.uniform(0.5, 0.6), rng.uniform(0.25, 0.4)
    opening = rng.uniform(0.0, 0.12) if rng.random() < 0.6 else 0.0
    lip = np.array([rng.uniform(150, 230), rng.uniform(40, 110), rng.uniform(50, 120)])
    upper = np.concatenate(
        [_ellipse_uv(0, mv, mw, 0.08, 12, np.pi, 2 * np.pi), _ellipse_uv(0, mv, mw, 0.01, 6, 0, np.pi)]
    )
    lower = _ellipse_uv(0, mv + opening, mw * 0.95, 0.09, 14, 0, np.pi)
    lower = np.concatenate([lower, [[-mw * 0.95, mv + opening], [mw * 0.95, mv + opening]][::-1]])
    if opening > 0:
        inner = _ellipse_uv(0, mv + opening / 2, mw * 0.85, opening / 2 + 0.01, 16)
        _fill(image, labels, face.points(inner), np.array([60.0, 20, 30]) * rng.uniform(0.5, 1.5), 8)
    _fill(image, labels, face.points(upper), lip, 7)
    _fill(image, labels, face.points(lower), lip * 0.9, 9)
    return [face.points(np.concatenate([upper[::2], lower[::2]]))]


def _light(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """A linear gradient of random direction and strength, then sensor noise and an optional blur."""
    size = image.shape[0]
    ys, xs = np.mgrid[0:size, 0:size] / size - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    light = 1 + rng.uniform(0, 0.8) * (np.cos(angle) * xs + np.sin(angle) * ys)
    image = image * light[..., None] * rng.uniform(0.7, 1.2)
    image += rng.normal(0, rng.uniform(0, 12), image.shape)
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.2))
    return image


def _resample(points: np.ndarray, n: int) -> np.ndarray:
    index = np.linspace(0, len(points) - 1, n).round().astype(int)
    return points[index]


def split_counts(num: int) -> dict[str, int]:
    """Train/val/test sizes for ``num`` images (80/10/10, at least one of each)."""
    if num < 3:
        raise ValueError(f"need at least 3 images (one per split), got {num}")
    val = max(1, round(num * 0.1))
    test = max(1, round(num * 0.1))
    return {"train": num - val - test, "val": val, "test": test}


def generate(out: str | Path, num: int, size: int, seed: int = 0, progress: bool = True) -> dict[str, int]:
    """Write ``num`` faces of ``size`` x ``size`` under ``out`` in the LaPa layout; returns split sizes.

    Existing files are overwritten; generation is deterministic in (seed, num, size).
    """
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    out = Path(out)
    counts = split_counts(num)
    index = 0
    with tqdm(total=num, desc="synth", disable=not progress, unit="img") as bar:
        for split, count in counts.items():
            for sub in ("images", "labels", "landmarks"):
                (out / split / sub).mkdir(parents=True, exist_ok=True)
            for _ in range(count):
                image, labels, landmarks = draw_face(np.random.default_rng([seed, index]), size)
                name = f"{index:06d}"
                cv2.imwrite(str(out / split / "images" / f"{name}.jpg"), image[..., ::-1],
                            [cv2.IMWRITE_JPEG_QUALITY, 92])  # fmt: skip
                cv2.imwrite(str(out / split / "labels" / f"{name}.png"), labels)
                coords = " ".join(f"{v:.2f}" for v in landmarks.ravel())
                (out / split / "landmarks" / f"{name}.txt").write_text(f"106\n{coords}\n")
                index += 1
                bar.update()
    return counts
