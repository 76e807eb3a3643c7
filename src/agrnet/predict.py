"""The per-photo work of ``agrnet predict`` (decode, parse, write verified outputs, one result row per
input) and the plain folder mode; ``agrnet.batch`` runs the same work at scale."""

from __future__ import annotations

import itertools
import os
import shutil
import struct
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from agrnet import __version__
from agrnet.data.classes import colorize, overlay
from agrnet.data.datasets import IMAGE_SUFFIXES, DatasetError, load_image
from agrnet.images import DEFAULT_MAX_PIXELS, check_size
from agrnet.inference import Parser
from agrnet.outputs import prepare_out_dir

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
OUTPUT_KINDS = ("labels", "mask", "overlay")
# The names agrnet gives its outputs; a listed file with such a name is checked for agrnet's tag.
OUTPUT_ENDINGS = tuple(f"_{kind}.png" for kind in OUTPUT_KINDS) + ("_overlay.mp4",)
MP4V_MAX_SIDE = 8190  # MPEG-4 Part 2 sides are at most 8191; the mp4v encoder takes even sizes
# Tags that mark a file as written by agrnet, so that a rerun never takes it for a photo and never
# refuses to replace it: a PNG text chunk after the header, an ignorable MP4 ``free`` box at the end.
_PNG_TAG = b"agrnet predict"
_PNG_TAG_CHUNK = b"tEXtSoftware\x00" + _PNG_TAG
_MP4_TAG = struct.pack(">I", 8 + len(_PNG_TAG)) + b"free" + _PNG_TAG
_temp_names = itertools.count()


def printable(text: str | os.PathLike[str]) -> str:
    """A path or message safe to print and to store as UTF-8: bytes of a file name that is not UTF-8
    (a Latin-1 ``Jos\\xe9.jpg``) are shown as ``\\xe9``."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


@dataclass(frozen=True, slots=True)
class Task:
    """One input. source: its path as listed; key: its outputs' path under the output folder, without
    the ``_labels.png`` ending (``sub/face``); problem: why it cannot be parsed, found while listing."""

    source: str
    key: str
    problem: str | None = None


@dataclass(frozen=True)
class Settings:
    """What every worker needs to parse a task and write its outputs. tmp_dir: where files are written
    before being renamed into place (None: beside each output)."""

    out: str
    outputs: tuple[str, ...] = OUTPUT_KINDS
    detect_faces: bool = False
    flip: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    model: str = ""
    model_version: str = ""
    tmp_dir: str | None = None


@dataclass
class PredictReport:
    """written: outputs verified on disk; failures: (input, reason); notes: renamed outputs, photos without a face."""

    written: list[Path] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False

    def summary(self) -> str:
        lines = [*self.notes]
        if self.interrupted:
            lines.append("interrupted (Ctrl-C): stopped after the photo in progress; what was written is complete")
        lines.append(f"{len(self.written)} output(s) written, {len(self.failures)} input(s) failed")
        # Loader errors already start with the path; print it once.
        for path, reason in self.failures:
            lines.append(f"  FAILED {printable(path)}: {reason.removeprefix(f'{printable(path)}: ')}")
        return "\n".join(lines)


def is_agrnet_output(path: str | Path) -> bool:
    """Whether ``path`` carries agrnet's tag, i.e. an earlier run wrote it (reads at most 64 bytes)."""
    try:
        with open(path, "rb") as f:
            if str(path).endswith(".mp4"):
                f.seek(max(0, os.fstat(f.fileno()).st_size - len(_MP4_TAG)))
                return f.read() == _MP4_TAG
            return _PNG_TAG_CHUNK in f.read(64)
    except OSError:
        return False


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files as given; directories -> their image and video files (sorted, not recursive), without
    the outputs of earlier runs. A file reached twice (listed and inside a listed folder) is parsed once."""
    files: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(
                p
                for p in path.iterdir()
                if p.is_file() and not p.name.startswith(".")
                and not (p.name.endswith(OUTPUT_ENDINGS) and is_agrnet_output(p))
            )  # fmt: skip
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
    """Name the likely cause of a write that failed without a clear error."""
    if len(os.fsencode(path.name)) > 255:  # checked first: asking the file system about it fails too
        return f"the file name is {len(os.fsencode(path.name))} bytes, over the usual limit of 255"
    if path.is_dir():
        return "a folder of that name is in the way"
    return "is the folder writable, with space left?"


def _check_target(path: Path) -> None:
    """Before encoding: the name must fit, no folder may be in the way, and no file agrnet did not
    write (an input) is ever replaced."""
    if len(os.fsencode(path.name)) > 255 or path.is_dir():
        raise OSError(f"{printable(path)}: not written ({_why_unwritable(path)})")
    if os.path.lexists(path) and not is_agrnet_output(path):
        raise OSError(
            f"{printable(path)}: not written: a file agrnet did not write is there (an input?) and is never "
            "replaced; choose another --out"
        )


def _publish(path: Path, write: Callable[[Path], None], tmp_dir: str | None) -> None:
    """``write`` a temporary file, then rename it to ``path``: a crash never leaves a partial ``path``."""
    folder = Path(tmp_dir) if tmp_dir else path.parent
    temporary = folder / f".agrnet-{os.getpid()}-{next(_temp_names)}.tmp"
    try:
        write(temporary)
        os.replace(temporary, path)
    except OSError as error:
        reason = error.strerror if error.errno and error.strerror else _why_unwritable(path)
        raise OSError(f"{printable(path)}: not written ({reason})") from None
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)


def write_image(path: Path, bgr: np.ndarray, tmp_dir: str | None = None) -> Path:
    """Encode a PNG in memory, tag it, write it atomically and check its size on disk; raises OSError
    naming the file otherwise. Python writes the file: OpenCV crashes on paths that are not UTF-8."""
    _check_target(path)
    ok, encoded = cv2.imencode(".png", bgr)
    if not ok:
        raise OSError(f"{printable(path)}: not written (PNG encoding failed for an image of shape {bgr.shape})")
    data = encoded.tobytes()
    data = data[:33] + _png_chunk(b"tEXt", b"Software\x00" + _PNG_TAG) + data[33:]  # 33: signature + IHDR
    _publish(path, lambda temporary: temporary.write_bytes(data), tmp_dir)
    if not path.is_file() or path.stat().st_size != len(data):
        raise OSError(f"{printable(path)}: not written ({_why_unwritable(path)})")
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _write_outputs(
    settings: Settings, key: str, image: np.ndarray, labels: np.ndarray, palette: np.ndarray, written: list[str]
) -> None:
    """Write the chosen outputs of one photo, appending to ``written`` the path (relative to the output
    folder) of each once verified on disk."""
    target = Path(settings.out, key)
    target.parent.mkdir(parents=True, exist_ok=True)
    images = {
        "labels": lambda: labels,
        "mask": lambda: colorize(labels, palette)[..., ::-1],
        "overlay": lambda: overlay(image, labels, palette)[..., ::-1],
    }
    for kind in settings.outputs:
        write_image(target.with_name(f"{target.name}_{kind}.png"), images[kind](), settings.tmp_dir)
        written.append(f"{key}_{kind}.png")


def result_row(task: Task, settings: Settings, status: str, **fields: Any) -> dict[str, Any]:
    """One results-table row (schema: ``agrnet.batch.SCHEMA``)."""
    row: dict[str, Any] = {
        "path": printable(task.source), "output": printable(task.key), "status": status, "reason": None,
        "note": None, "width": None, "height": None, "frames": None, "faces": None, "pixels": None,
        "outputs": [], "seconds": None, "model": settings.model, "model_version": settings.model_version,
    }  # fmt: skip
    row.update(fields)
    return row


def _reason(error: Exception) -> str:
    """One line; errors of kinds agrnet does not raise itself keep their type name."""
    text = str(error) if isinstance(error, (ValueError, OSError)) else f"{type(error).__name__}: {error}"
    return printable(" ".join(text.split()))


def _faces(faces: list | None) -> list[dict[str, Any]] | None:
    if faces is None:
        return None
    return [
        {"box": face.box.astype(float).tolist(), "landmarks": face.landmarks.astype(float).tolist(),
         "score": float(face.score)}
        for face in faces
    ]  # fmt: skip


def parse_batch(parser: Parser, tasks: Sequence[Task], settings: Settings) -> list[dict[str, Any]]:
    """The work of every engine: decode, parse and write each task; one row per task, in order.

    Any failure of one input (listing problem, decode, parse, write) is that input's row with status
    ``failed`` and the reason; only KeyboardInterrupt and MemoryError stop the batch. Photos are
    parsed through the network together, videos and ``detect_faces`` photos one by one.
    """
    rows: list[dict[str, Any] | None] = [None] * len(tasks)
    photos: list[tuple[int, np.ndarray, float]] = []
    for i, task in enumerate(tasks):
        start = time.perf_counter()
        try:
            if task.problem is not None:
                raise DatasetError(task.problem)
            suffix = os.path.splitext(task.source)[1].lower()
            if suffix in VIDEO_SUFFIXES:
                rows[i] = _videoresult_row(parser, task, settings)
                continue
            if suffix not in IMAGE_SUFFIXES:
                raise DatasetError(f"{printable(task.source)}: not an image or video file (suffix {suffix or 'none'})")
            photos.append((i, load_image(Path(task.source), settings.max_pixels), time.perf_counter() - start))
        except MemoryError:
            raise
        except Exception as error:
            rows[i] = result_row(task, settings, "failed", reason=_reason(error))
    outcomes = _parse_photos(parser, [image for _, image, _ in photos], settings)
    for (i, image, seconds), result in zip(photos, outcomes, strict=True):
        rows[i] = _photoresult_row(parser, tasks[i], settings, image, result, seconds)
    return [row for row in rows if row is not None]


def _parse_photos(parser: Parser, images: list[np.ndarray], settings: Settings) -> list[Any]:
    """Parsings (or the exception of that photo), one per image; a batch that fails is parsed again one
    by one so that only the photo at fault fails."""
    start = time.perf_counter()
    if images and not settings.detect_faces:
        try:
            results: list[Any] = parser.predict_batch(images, flip=settings.flip, batch_size=len(images))
            share = (time.perf_counter() - start) / len(images)
            return [(result, share) for result in results]
        except MemoryError:
            raise
        except Exception:
            pass
    outcomes: list[Any] = []
    for image in images:
        start = time.perf_counter()
        try:
            result: Any = parser.predict(image, flip=settings.flip, detect_faces=settings.detect_faces)
        except MemoryError:
            raise
        except Exception as error:
            result = error
        outcomes.append((result, time.perf_counter() - start))
    return outcomes


def _photoresult_row(
    parser: Parser, task: Task, settings: Settings, image: np.ndarray, outcome: Any, seconds: float
) -> dict[str, Any]:
    result, parse_seconds = outcome
    start = time.perf_counter()
    outputs: list[str] = []  # a failed row lists what was written before the failure
    size = {"width": image.shape[1], "height": image.shape[0]}
    try:
        if isinstance(result, Exception):
            raise result
        labels = result.labels
        _write_outputs(settings, task.key, image, labels, parser.spec.palette, outputs)
    except MemoryError:
        raise
    except Exception as error:
        return result_row(task, settings, "failed", reason=_reason(error), outputs=outputs, **size)
    no_face = settings.detect_faces and not result.faces
    skipped = result.faces_skipped
    note = f"{printable(task.source)}: {skipped} more face(s) found, beyond max_faces, not parsed" if skipped else None
    return result_row(
        task, settings, "no_face" if no_face else "ok", **size, note=note,
        faces=_faces(result.faces), outputs=outputs, seconds=seconds + parse_seconds + time.perf_counter() - start,
        pixels=np.bincount(labels.ravel(), minlength=parser.spec.num_classes).tolist(),
    )  # fmt: skip


def _videoresult_row(parser: Parser, task: Task, settings: Settings) -> dict[str, Any]:
    """Parse every frame of a video into an overlay video ``KEY_overlay.mp4``."""
    start = time.perf_counter()
    target = Path(settings.out, f"{task.key}_overlay.mp4")
    target.parent.mkdir(parents=True, exist_ok=True)
    _check_target(target)
    # OpenCV takes only paths and crashes on names that are not UTF-8: it reads and writes ASCII names
    # in a private temporary folder, and Python moves the result into place.
    with tempfile.TemporaryDirectory(prefix="agrnet-video-") as scratch:
        source = Path(scratch, "input" + os.path.splitext(task.source)[1].lower())
        os.symlink(os.path.abspath(task.source), source)
        encoded = Path(scratch, "overlay.mp4")
        size, frames, pixels = _parse_video(parser, task, settings, source, encoded)
        _publish(target, lambda temporary: shutil.copyfile(encoded, temporary), settings.tmp_dir)
    width, height = size
    note = None
    if width % 2 or height % 2:
        note = (f"{printable(task.source)} is {width}×{height}; its overlay video is {width + width % 2}×"
                f"{height + height % 2} (mp4v takes even sizes; the last row or column is repeated)")  # fmt: skip
    return result_row(
        task, settings, "ok", width=width, height=height, frames=frames, pixels=pixels.tolist(), note=note,
        outputs=[f"{task.key}_overlay.mp4"], seconds=time.perf_counter() - start,
    )  # fmt: skip


def _parse_video(
    parser: Parser, task: Task, settings: Settings, source: Path, encoded: Path
) -> tuple[tuple[int, int], int, np.ndarray]:
    """Frames of ``source`` -> tagged overlay video at ``encoded``; (width, height), frames, pixels per class."""
    name = printable(task.source)
    capture = cv2.VideoCapture(str(source))
    if not capture.isOpened():
        raise DatasetError(f"{name}: cannot open video")
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    writer = None
    frames = 0
    pixels = np.zeros(parser.spec.num_classes, np.int64)
    try:
        if min(size) > 0:  # from the header (0 when unknown), before any frame is decoded
            _check_frame(size, settings.max_pixels, name)
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            size = (frame.shape[1], frame.shape[0])
            _check_frame(size, settings.max_pixels, name)
            rgb = np.ascontiguousarray(frame[..., ::-1])
            labels = parser.predict(rgb, flip=settings.flip, detect_faces=settings.detect_faces).labels
            pixels += np.bincount(labels.ravel(), minlength=len(pixels))
            blended = overlay(rgb, labels, parser.spec.palette)[..., ::-1]
            even = np.pad(blended, ((0, size[1] % 2), (0, size[0] % 2), (0, 0)), mode="edge")
            if writer is None:
                fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
                writer = cv2.VideoWriter(str(encoded), cv2.VideoWriter_fourcc(*"mp4v"), fps, even.shape[1::-1])
                if not writer.isOpened():
                    raise OSError(f"{name}: the mp4v encoder refused {even.shape[1]}×{even.shape[0]} frames")
            writer.write(even)
            frames += 1
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if frames == 0:
        raise DatasetError(f"{name}: no readable frames")
    if not encoded.is_file() or encoded.stat().st_size == 0:
        raise OSError(f"{name}: the mp4v encoder wrote nothing for {size[0]}×{size[1]} frames")
    with open(encoded, "ab") as f:
        f.write(_MP4_TAG)
    return size, frames, pixels


def _check_frame(size: tuple[int, int], max_pixels: int, name: str) -> None:
    """The pixel budget and the encoder's limit, for a frame of (width, height) ``size``."""
    check_size(*size, max_pixels=max_pixels, label=f"{name} (a video frame)")
    if max(size) > MP4V_MAX_SIDE:
        raise DatasetError(
            f"{name}: {size[0]}×{size[1]} frames are beyond the mp4v encoder (sides up to {MP4V_MAX_SIDE}); "
            "downscale the video"
        )


def model_identity(checkpoint: str | None, shipped: str | None = None) -> tuple[str, str]:
    """(model, model_version) for the results table: the file name (or the shipped model's, default
    the face parser) and agrnet's version with the first 12 hex digits of the file's sha256."""
    from agrnet.pretrained import DEFAULT_PRETRAINED, PRETRAINED, sha256_of

    if checkpoint is None:
        name = shipped or DEFAULT_PRETRAINED
        return f"shipped:{name}", f"agrnet {__version__}, sha256 {PRETRAINED[name].sha256[:12]}"
    return printable(os.path.basename(checkpoint)), f"agrnet {__version__}, sha256 {sha256_of(Path(checkpoint))[:12]}"


def predict_paths(
    parser: Parser,
    inputs: list[str],
    out: str | Path,
    detect_faces: bool = False,
    flip: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    outputs: tuple[str, ...] = OUTPUT_KINDS,
    batch_size: int = 1,
) -> PredictReport:
    """The plain mode: every input's outputs side by side in ``out`` (no results table). A bad file
    (over ``max_pixels`` included) or an output that cannot be written is recorded in the report and
    the rest still run; Ctrl-C stops after the batch in progress (``report.interrupted``). An unusable
    ``out`` is a ValueError before any work."""
    out = prepare_out_dir(out)
    files, problems = expand_inputs(inputs)
    names, notes = output_names(files)
    report = PredictReport(failures=problems, notes=notes)
    settings = Settings(str(out), outputs, detect_faces, flip, max_pixels)
    tasks = [Task(str(path), names[path]) for path in files]
    try:
        with tqdm(total=len(tasks), desc="predict", unit="file") as bar:
            for start in range(0, len(tasks), batch_size):
                for row in parse_batch(parser, tasks[start : start + batch_size], settings):
                    _reportresult_row(report, out, row)
                    bar.update()
    except KeyboardInterrupt:
        report.interrupted = True
    return report


def _reportresult_row(report: PredictReport, out: Path, row: dict[str, Any]) -> None:
    report.written += [out / name for name in row["outputs"]]
    if row["status"] == "failed":
        report.failures.append((Path(row["path"]), row["reason"]))
    if row["status"] == "no_face":
        report.notes.append(f"note: no face found in {row['path']}; its label map is all background")
    if row["note"]:
        report.notes.append(f"note: {row['note']}")
