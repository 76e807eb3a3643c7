"""The main job: the shipped models parse real photos out of the box (no downloads, no training).

The photos come from scikit-image (``skimage.data.astronaut``: Eileen Collins, NASA, public domain):
the photo itself, the photo turned by 25 degrees, and a two-face composite go through the face parser, so
that detection, alignment at any angle, several faces and paste-back are all exercised; the photo itself
(upper body) also goes through the human parser, whole.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from skimage import data

from agrnet.data.classes import LabelSpec, colorize, overlay
from agrnet.inference import Parser
from agrnet.outputs import prepare_out_dir
from agrnet.predict import write_image
from agrnet.pretrained import HUMAN_PARSER


def demo_photos() -> dict[str, np.ndarray]:
    """name -> (H, W, 3) uint8 RGB."""
    astronaut = data.astronaut()
    h, w = astronaut.shape[:2]
    turn = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 25, 1.0)
    turned = cv2.warpAffine(astronaut, turn, (w, h), borderMode=cv2.BORDER_REFLECT_101)
    smaller = cv2.resize(astronaut, (w * 3 // 4, h * 3 // 4), interpolation=cv2.INTER_AREA)
    pair = np.zeros((h, w + smaller.shape[1], 3), np.uint8)
    pair[:, :w] = astronaut
    pair[h - smaller.shape[0] :, w:] = smaller[:, ::-1]  # mirrored, so it is not a plain copy
    return {"astronaut": astronaut, "astronaut_turned": turned, "two_faces": pair}


def legend_panel(spec: LabelSpec, labels: np.ndarray, height: int) -> np.ndarray:
    """(height, 220, 3) uint8 RGB: a colour swatch and the name of each class present in ``labels``."""
    panel = np.full((height, 220, 3), 255, np.uint8)
    present = [c for c in range(1, spec.num_classes) if (labels == c).any()]
    row = max(14, min(28, height // max(1, len(present))))
    for i, c in enumerate(present):
        y = 6 + i * row
        panel[y : y + row - 4, 8:32] = spec.palette[c]
        cv2.putText(panel, spec.class_names[c], (40, y + row - 8), cv2.FONT_HERSHEY_SIMPLEX, row / 40, (0, 0, 0), 1,
                    cv2.LINE_AA)  # fmt: skip
    return panel


def _person_demo(out: Path, parser: Parser) -> dict[str, Any]:
    """The astronaut photo, whole, through the human parser: photo | overlay | legend."""
    photo = data.astronaut()
    start = time.perf_counter()
    labels = parser.predict(photo).labels
    seconds = time.perf_counter() - start
    spec = parser.spec
    strip = np.concatenate([photo, overlay(photo, labels, spec.palette), legend_panel(spec, labels, len(photo))], 1)
    written = {"person_astronaut_overlay.png": strip, "person_astronaut_labels.png": labels}
    for file, array in written.items():
        write_image(out / file, array[..., ::-1] if array.ndim == 3 else array)
    counts = np.bincount(labels.ravel(), minlength=spec.num_classes)
    return {
        "model": f"Parser.from_pretrained({HUMAN_PARSER!r})",
        "size": list(photo.shape[:2]),
        "seconds": round(seconds, 3),
        "pixels_per_class": {n: int(c) for n, c in zip(spec.class_names, counts, strict=True) if c},
        "files": sorted(written),
    }


def run_photo_demo(
    out: str | Path, parser: Parser | None = None, person_parser: Parser | None = None
) -> dict[str, Any]:
    """Parse every demo photo with the face parser (face detection) and the astronaut with the human parser;
    write overlays, colour masks, label maps and ``summary.json`` under ``out``; returns the summary."""
    out = prepare_out_dir(out)
    parser = parser or Parser.from_pretrained(device="cpu")
    palette = parser.spec.palette
    summary: dict[str, Any] = {"model": "Parser.from_pretrained()", "photos": {}}
    for name, photo in demo_photos().items():
        start = time.perf_counter()
        result = parser.predict(photo, detect_faces=True)
        seconds = time.perf_counter() - start
        written = {
            f"{name}_overlay.png": np.concatenate([photo, overlay(photo, result.labels, palette)], axis=1),
            f"{name}_mask.png": colorize(result.labels, palette),
            f"{name}_labels.png": result.labels,
        }
        for file, array in written.items():
            write_image(out / file, array[..., ::-1] if array.ndim == 3 else array)
        counts = np.bincount(result.labels.ravel(), minlength=len(parser.class_names))
        summary["photos"][name] = {
            "size": list(photo.shape[:2]),
            "faces": [{"box": [round(float(v), 1) for v in f.box], "score": round(f.score, 4)}
                      for f in result.faces or []],  # fmt: skip
            "seconds": round(seconds, 3),
            "pixels_per_class": {n: int(c) for n, c in zip(parser.class_names, counts, strict=True) if c},
            "files": sorted(written),
        }
    summary["person"] = _person_demo(out, person_parser or Parser.from_pretrained(HUMAN_PARSER, device="cpu"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
