"""Question: does a detected face's parse cover its whole head (hair to the shoulders, neck) when the photo
shows more than the CelebA-HQ framing?

In-the-wild stand-ins built from ../shared/data/celebamask-mini: each face photo is shrunk (scale U(0.4, 0.7),
so faces are press-photo sized) and extended on every side by reflection (a border of U(0.05, 0.25) of its side
per edge, so the face sits off-centre), the labels alike. Reflection continues hair, neck and clothes past the
original framing, where the standard aligned crop never looks, without mirroring the eyes (the borders stay
shallower than the distance from the photo's edge to the eyes) and so without adding mirrored faces. Each
photo goes through ``detect_faces=True`` at each ``--zooms`` value (``Parser.face_zoom``); one confusion
matrix per zoom over all pixels. Also reported: the share of true hair, neck and skin pixels outside the
zoom-1 crop's footprint.

Choose the zoom on ``--split val``; report on test. Writes benchmarks/results/wild_faces_<split>.json and .md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from agrnet.data.classes import CELEBAMASK_HQ
from agrnet.data.datasets import open_split
from agrnet.data.transforms import canvas_hw
from agrnet.detection.align import alignment_matrix, crop_coordinates, inside_crop
from agrnet.inference import Parser
from agrnet.metrics import ConfusionMatrix, summarize
from common import RESULTS, write_result

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "celebamask-mini"
REPORTED = ("skin", "hair", "neck", "cloth")


def wild_photo(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(S, S, 3) face photo and (S, S) labels -> a shrunk, reflection-extended photo and its labels."""
    side = round(image.shape[0] * rng.uniform(0.4, 0.7))
    small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
    small_labels = cv2.resize(labels, (side, side), interpolation=cv2.INTER_NEAREST)
    top, bottom, left, right = (round(side * b) for b in rng.uniform(0.05, 0.25, 4))
    pad = ((top, bottom), (left, right))
    return np.pad(small, (*pad, (0, 0)), mode="reflect"), np.pad(small_labels, pad, mode="reflect")


def outside_crop(parser: Parser, photo: np.ndarray) -> np.ndarray | None:
    """(H, W) bool: pixels outside the zoom-1 aligned crop of the photo's largest face (None: no face)."""
    faces = parser.detector.detect(photo)
    if not faces:
        return None
    face = max(faces, key=lambda f: float((f.box[2] - f.box[0]) * (f.box[3] - f.box[1])))
    size = canvas_hw(parser.size)[0]
    matrix = alignment_matrix(face.landmarks, size)
    map_x, map_y = crop_coordinates(matrix, slice(0, photo.shape[0]), slice(0, photo.shape[1]))
    return ~inside_crop(map_x, map_y, size)


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--data", default=str(SHARED))
    args.add_argument("--split", default="val", choices=["val", "test"])
    args.add_argument("--limit", type=int, default=200, help="photos (the first N of the split)")
    args.add_argument("--zooms", type=float, nargs="+", default=[1.0, 1.25, 1.5, 1.75, 2.0],
                      help="Parser.face_zoom values (1: the training framing alone)")
    args.add_argument("--seed", type=int, default=0)
    args.add_argument("--threads", type=int, default=2)
    args.add_argument("--checkpoint", help="a training checkpoint (default: the shipped model)")
    args.add_argument("--name", default="", help="suffix of the result files (wild_faces_<split>[_<name>])")
    opts = args.parse_args()
    torch.set_num_threads(opts.threads)
    parser = Parser.from_checkpoint(opts.checkpoint, "cpu") if opts.checkpoint else Parser.from_pretrained(device="cpu")
    dataset = open_split("folder", opts.data, opts.split, 32, classes="celebamask_hq")
    dataset.samples = dataset.samples[: opts.limit]
    rng = np.random.default_rng(opts.seed)
    originals = [dataset.load(i) for i in range(len(dataset))]
    photos = [wild_photo(image, labels, rng) for image, labels in originals]

    names = CELEBAMASK_HQ.class_names
    outside = {name: [0, 0] for name in REPORTED}  # true pixels outside the zoom-1 crop, all true pixels
    for photo, labels in photos:
        mask = outside_crop(parser, photo)
        for name in REPORTED:
            here = labels == names.index(name)
            outside[name][0] += int((here & mask).sum()) if mask is not None else 0
            outside[name][1] += int(here.sum())

    model = opts.checkpoint or "Parser.from_pretrained()"
    report: dict[str, object] = {
        "split": opts.split, "photos": len(photos), "seed": opts.seed, "model": model, "zooms": {}
    }  # fmt: skip
    report["outside_zoom1_crop"] = {n: round(a / max(1, b), 4) for n, (a, b) in outside.items()}
    # The reference: the same faces as aligned crops (the original photos, no detection).
    settings: list[tuple[str, list, bool]] = [("aligned crop", originals, False)]
    settings += [(f"{zoom:g}", photos, True) for zoom in opts.zooms]
    for setting, inputs, detect in settings:
        parser.face_zoom = float(setting) if detect else 1.0
        matrix, missed, start = ConfusionMatrix(len(names)), 0, time.perf_counter()
        for photo, labels in tqdm(inputs, desc=setting, unit="img"):
            result = parser.predict(photo, detect_faces=detect)
            missed += detect and not result.faces
            matrix.update(torch.from_numpy(result.labels), torch.from_numpy(labels))
        summary = summarize(matrix.matrix, CELEBAMASK_HQ)
        report["zooms"][setting] = {  # type: ignore[index]
            **summary, "photos_without_face": missed, "seconds_per_photo": (time.perf_counter() - start) / len(photos)
        }
    name = f"wild_faces_{opts.split}" + (f"_{opts.name}" if opts.name else "")
    write_result(name, report)
    (RESULTS / f"{name}.md").write_text(table(report))
    print(table(report))


def table(report: dict) -> str:
    rows = [
        f"# Wild-face stand-ins ({report['split']} split, {report['photos']} photos, seed {report['seed']}): "
        f"F1 % through detect_faces=True, model {report.get('model', 'Parser.from_pretrained()')}",
        "",
        "Share of true pixels outside the zoom-1 aligned crop: "
        + ", ".join(f"{n} {100 * v:.1f} %" for n, v in report["outside_zoom1_crop"].items()),
        "",
        "| face_zoom | mean F1 | " + " | ".join(REPORTED) + " | mean IoU | no face | s/photo |",
        "|---|---|" + "---|" * len(REPORTED) + "---|---|---|",
    ]
    for zoom, s in report["zooms"].items():
        f1 = [100 * s["per_class"][n]["f1"] for n in REPORTED]
        rows.append(
            f"| {zoom} | {100 * s['mean_f1']:.2f} | " + " | ".join(f"{v:.1f}" for v in f1)
            + f" | {100 * s['mean_iou']:.2f} | {s['photos_without_face']} | {s['seconds_per_photo']:.3f} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
