"""Batch prediction over files, directories and videos, with optional face detection and paste-back."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from agrnet.data.classes import colorize, overlay
from agrnet.data.datasets import IMAGE_SUFFIXES, DatasetError, load_image
from agrnet.images import DEFAULT_MAX_PIXELS
from agrnet.inference import FaceParser
from agrnet.outputs import prepare_out_dir

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


@dataclass
class PredictReport:
    """written: outputs verified on disk; failures: (input, reason); notes: renamed outputs, photos without a face."""

    written: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [*self.notes, f"{len(self.written)} output(s) written, {len(self.failures)} input(s) failed"]
        # Loader errors already start with the path; print it once.
        lines += [f"  FAILED {path}: {reason.removeprefix(f'{path}: ')}" for path, reason in self.failures]
        return "\n".join(lines)


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files as given; directories -> their image and video files (sorted, not recursive). A file
    reached twice (listed and inside a listed folder) is parsed once."""
    files: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            files.append(path)
        else:
            problems.append((path, "no such file or directory"))
    unique = {path.resolve(): path for path in reversed(files)}
    return [path for path in files if unique[path.resolve()] is path], problems


def output_names(files: list[Path]) -> tuple[dict[Path, str], list[str]]:
    """A distinct output name per input: its stem, or for inputs sharing a stem (``a/face.jpg``,
    ``b/face.jpg``), the stem numbered in input order (``face_1``, ``face_2``); one note per renamed input."""
    counts = Counter(path.stem for path in files)
    used = {stem for stem, count in counts.items() if count == 1}
    names: dict[Path, str] = {}
    notes: list[str] = []
    number: Counter[str] = Counter()
    for path in files:
        name = path.stem
        if counts[name] > 1:
            while name in used or name == path.stem:  # steps over a numbered name another input has
                number[path.stem] += 1
                name = f"{path.stem}_{number[path.stem]}"
            notes.append(f"note: {counts[path.stem]} inputs are named {path.stem}; outputs of {path} are {name}_*")
        used.add(name)
        names[path] = name
    return names, notes


def _why_unwritable(path: Path) -> str:
    """OpenCV only says False; name the likely cause."""
    if len(path.name.encode()) > 255:  # checked first: asking the file system about it fails too
        return f"the file name is {len(path.name.encode())} bytes, over the usual limit of 255"
    if path.is_dir():
        return "a folder of that name is in the way"
    return "is the folder writable, with space left?"


def write_image(path: Path, bgr: np.ndarray) -> Path:
    """``cv2.imwrite`` and check that the file is there; raises OSError naming the file otherwise."""
    try:
        ok = cv2.imwrite(str(path), bgr)
    except cv2.error as error:
        raise OSError(f"{path}: not written ({str(error).strip().splitlines()[-1]})") from None
    if not ok or not path.is_file():
        raise OSError(f"{path}: not written ({_why_unwritable(path)})")
    return path


def _write_outputs(
    report: PredictReport, out: Path, name: str, image: np.ndarray, labels: np.ndarray, palette: np.ndarray
) -> None:
    """Each output is counted only once it is verified on disk."""
    report.written.append(write_image(out / f"{name}_labels.png", labels))
    report.written.append(write_image(out / f"{name}_mask.png", colorize(labels, palette)[..., ::-1]))
    report.written.append(write_image(out / f"{name}_overlay.png", overlay(image, labels, palette)[..., ::-1]))


def _predict_video(parser: FaceParser, path: Path, target: Path, detect_faces: bool, flip: bool) -> Path:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DatasetError(f"{path}: cannot open video")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    writer = None
    frames = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            rgb = np.ascontiguousarray(frame[..., ::-1])
            labels = parser.predict(rgb, flip=flip, detect_faces=detect_faces).labels
            blended = overlay(rgb, labels, parser.spec.palette)
            if writer is None:
                size = (rgb.shape[1], rgb.shape[0])
                writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
                if not writer.isOpened():
                    raise OSError(f"{target}: not written ({_why_unwritable(target)})")
            writer.write(blended[..., ::-1])
            frames += 1
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if frames == 0:
        raise DatasetError(f"{path}: no readable frames")
    if not target.is_file() or target.stat().st_size == 0:
        raise OSError(f"{target}: not written ({_why_unwritable(target)})")
    return target


def predict_paths(
    parser: FaceParser,
    inputs: list[str],
    out: str | Path,
    detect_faces: bool = False,
    flip: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> PredictReport:
    """Parse every input; a bad file (over ``max_pixels`` included) or an output that cannot be
    written is recorded in the report and the rest still run. An unusable ``out`` is a ValueError
    before any work."""
    out = prepare_out_dir(out)
    files, problems = expand_inputs(inputs)
    names, notes = output_names(files)
    report = PredictReport(failures=problems, notes=notes)
    for path in tqdm(files, desc="predict", unit="file"):
        try:
            if path.suffix.lower() in VIDEO_SUFFIXES:
                target = out / f"{names[path]}_overlay.mp4"
                report.written.append(_predict_video(parser, path, target, detect_faces, flip))
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise DatasetError(f"{path}: not an image or video file (suffix {path.suffix or 'none'})")
            image = load_image(path, max_pixels)
            result = parser.predict(image, flip=flip, detect_faces=detect_faces)
            if detect_faces and not result.faces:
                report.notes.append(f"note: no face found in {path}; its label map is all background")
            labels = result.labels
            _write_outputs(report, out, names[path], image, labels, parser.spec.palette)
        except (DatasetError, ValueError, OSError, cv2.error) as error:
            report.failures.append((path, str(error)))
    return report
