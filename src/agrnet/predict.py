"""Batch prediction over files, directories and videos, with optional face detection and paste-back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from agrnet.data.classes import colorize, overlay
from agrnet.data.datasets import IMAGE_SUFFIXES, DatasetError, load_image
from agrnet.inference import FaceParser

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
# A bundled OpenCV cascade: ships inside the opencv-python wheel, so detection runs offline.
CASCADE = "haarcascade_frontalface_default.xml"


@dataclass
class PredictReport:
    written: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{len(self.written)} output(s) written, {len(self.failures)} input(s) failed"]
        # Loader errors already start with the path; print it once.
        lines += [f"  FAILED {path}: {reason.removeprefix(f'{path}: ')}" for path, reason in self.failures]
        return "\n".join(lines)


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files as given; directories -> their image and video files (sorted, not recursive)."""
    files, problems = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            files.append(path)
        else:
            problems.append((path, "no such file or directory"))
    return files, problems


class FaceDetector:
    """OpenCV Haar cascade; returns square boxes enlarged around each face to include hair."""

    def __init__(self, margin: float = 0.8) -> None:
        path = Path(cv2.data.haarcascades) / CASCADE
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise RuntimeError(f"could not load the bundled face detector {path}")
        self.margin = margin

    def __call__(self, image: np.ndarray) -> list[tuple[int, int, int, int]]:
        """(H, W, 3) RGB -> boxes (x0, y0, x1, y1), clipped to the image."""
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        faces = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
        h, w = gray.shape
        boxes = []
        for x, y, fw, fh in faces:
            side = int(max(fw, fh) * (1 + self.margin))
            cx, cy = x + fw / 2, y + fh / 2 - 0.1 * fh  # shift up a little: hair sits above the box
            x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
            boxes.append((x0, y0, int(min(w, x0 + side)), int(min(h, y0 + side))))
        return boxes


def parse_photo(parser: FaceParser, image: np.ndarray, detector: FaceDetector | None, flip: bool) -> np.ndarray:
    """Labels for the whole photo; with a detector each face crop is parsed and pasted back."""
    if detector is None:
        return parser.predict(image, flip=flip).labels
    labels = np.zeros(image.shape[:2], dtype=np.uint8)
    for x0, y0, x1, y1 in detector(image):
        crop_labels = parser.predict(image[y0:y1, x0:x1], flip=flip).labels
        region = labels[y0:y1, x0:x1]
        np.copyto(region, crop_labels, where=crop_labels > 0)
    return labels


def _write_outputs(out: Path, stem: str, image: np.ndarray, labels: np.ndarray, palette: np.ndarray) -> list[Path]:
    paths = [out / f"{stem}_labels.png", out / f"{stem}_mask.png", out / f"{stem}_overlay.png"]
    cv2.imwrite(str(paths[0]), labels)
    cv2.imwrite(str(paths[1]), colorize(labels, palette)[..., ::-1])
    cv2.imwrite(str(paths[2]), overlay(image, labels, palette)[..., ::-1])
    return paths


def _predict_video(parser: FaceParser, path: Path, out: Path, detector: FaceDetector | None, flip: bool) -> Path:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DatasetError(f"{path}: cannot open video")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    target = out / f"{path.stem}_overlay.mp4"
    writer = None
    frames = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            rgb = np.ascontiguousarray(frame[..., ::-1])
            blended = overlay(rgb, parse_photo(parser, rgb, detector, flip), parser.spec.palette)
            if writer is None:
                size = (rgb.shape[1], rgb.shape[0])
                writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
            writer.write(blended[..., ::-1])
            frames += 1
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if frames == 0:
        raise DatasetError(f"{path}: no readable frames")
    return target


def predict_paths(
    parser: FaceParser, inputs: list[str], out: str | Path, detect_faces: bool = False, flip: bool = False
) -> PredictReport:
    """Parse every input; a bad file is recorded in the report and the rest still run."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files, problems = expand_inputs(inputs)
    report = PredictReport(failures=problems)
    detector = FaceDetector() if detect_faces else None
    for path in tqdm(files, desc="predict", unit="file"):
        try:
            if path.suffix.lower() in VIDEO_SUFFIXES:
                report.written.append(_predict_video(parser, path, out, detector, flip))
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise DatasetError(f"{path}: not an image or video file (suffix {path.suffix or 'none'})")
            image = load_image(path)
            labels = parse_photo(parser, image, detector, flip)
            report.written += _write_outputs(out, path.stem, image, labels, parser.spec.palette)
        except (DatasetError, ValueError, OSError, cv2.error) as error:
            report.failures.append((path, str(error)))
    return report
