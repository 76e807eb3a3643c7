"""Question: should the wide second view of ``detect_faces=True`` show the face smaller on the training canvas
(the shipped ``face_zoom``), or at the training scale on a larger canvas, which sees as much around it?

The wild-face stand-ins of ``wild_faces.py`` (val, ``--surround capped`` by default): each photo's detected faces
are aligned to every view of a setting and pasted back with ``PhotoCanvas`` (the first view is the primary one).
A view (scale, side) is a side x side crop with the face as large as in a scale x scale training crop; crops of
one side go through ``Parser.from_pretrained(size=side)`` (the network is convolutional, so a larger canvas at
the training scale sees more around the face at the same pixels per face). The cost column is the network
canvas pixels per face against one training crop. Choose on val. Writes
benchmarks/results/wide_views_<split>_<surround>.json and .md.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from tqdm import tqdm

from agrnet.data.classes import CELEBAMASK_HQ
from agrnet.data.datasets import open_split
from agrnet.detection.align import PhotoCanvas, align_face
from agrnet.detection.mtcnn import Face
from agrnet.inference import Parser
from agrnet.metrics import ConfusionMatrix, summarize
from common import RESULTS, machine, write_result
from wild_faces import SHARED, merged_scores, region_scores, wild_photo

View = tuple[int, int]
# The shipped model's canvas is 384: "zoom 1.5" is Parser.face_zoom = 1.5, the others keep the face at or near
# the training scale and widen the canvas instead.
SETTINGS: dict[str, tuple[View, ...]] = {
    "training framing only (face_zoom=1)": ((384, 384),),
    "+ wide 384 canvas, face at 2/3 (face_zoom=1.5, shipped)": ((384, 384), (256, 384)),
    "+ wide 576 canvas, face at training scale": ((384, 384), (384, 576)),
    "+ wide 480 canvas, face at 5/6": ((384, 384), (320, 480)),
    "576 canvas at training scale alone": ((384, 576),),
}
REPORTED = ("skin", "hair", "neck", "cloth")


def parse_views(
    photo: np.ndarray, faces: list[Face], parsers: dict[int, Parser], views: tuple[View, ...]
) -> np.ndarray:
    """(H, W, 3) photo and its detected faces -> (H, W) uint8 labels from every face in every view."""
    canvas = PhotoCanvas(*photo.shape[:2], CELEBAMASK_HQ.num_classes, probabilities=False)
    for index, (scale, side) in enumerate(views):
        aligned = [align_face(photo, face.landmarks, scale, side) for face in faces]
        if not aligned:
            break
        parsed = parsers[side].predict_batch([crop for crop, _ in aligned], probabilities=True)
        for parsing, (_, matrix) in zip(parsed, aligned, strict=True):
            assert parsing.probabilities is not None
            canvas.paste(parsing.probabilities, matrix, view=index)
    return canvas.labels


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--split", default="val", choices=["val", "test"])
    args.add_argument("--limit", type=int, default=100, help="photos (the first N of the split)")
    args.add_argument("--surround", default="capped", choices=["reflect", "capped"])
    args.add_argument("--seed", type=int, default=0)
    args.add_argument("--threads", type=int, default=2)
    opts = args.parse_args()
    torch.set_num_threads(opts.threads)
    sides = sorted({side for views in SETTINGS.values() for _, side in views})
    parsers = {side: Parser.from_pretrained(device="cpu", size=side) for side in sides}
    dataset = open_split("folder", SHARED, opts.split, 32, classes="celebamask_hq")
    dataset.samples = dataset.samples[: opts.limit]
    rng = np.random.default_rng(opts.seed)
    photos = [wild_photo(*dataset.load(i), rng, opts.surround) for i in range(len(dataset))]
    # Detection does not depend on the views: once per photo, shared by every setting.
    detector = parsers[sides[0]].detector
    faces = [detector.detect(photo) for photo, _, _ in tqdm(photos, desc="detection", unit="img")]

    rows = []
    for setting, views in SETTINGS.items():
        matrices = {region: ConfusionMatrix(CELEBAMASK_HQ.num_classes) for region in ("all", "photo", "surround")}
        pairs = zip(photos, faces, strict=True)
        for (photo, labels, footprint), found in tqdm(pairs, desc=setting[:30], total=len(photos)):
            predicted, truth = torch.from_numpy(parse_views(photo, found, parsers, views)), torch.from_numpy(labels)
            inside = torch.from_numpy(footprint)
            matrices["all"].update(predicted, truth)
            matrices["photo"].update(predicted[inside], truth[inside])
            matrices["surround"].update(predicted[~inside], truth[~inside])
        summary = summarize(matrices["all"].matrix, CELEBAMASK_HQ)
        row = {"setting": setting, "views": [list(v) for v in views],
               "cost": round(sum(side * side for _, side in views) / 384**2, 2),
               "mean_f1": round(100 * summary["mean_f1"], 2)}  # fmt: skip
        row |= {name: round(100 * summary["per_class"][name]["f1"], 2) for name in REPORTED}
        row["merged_pixel_accuracy"] = round(100 * merged_scores(matrices["all"].matrix.numpy())["pixel_accuracy"], 2)
        for region in ("photo", "surround"):
            scores = region_scores(matrices[region].matrix.numpy())
            row |= {f"{name}_{region}": round(100 * scores[f"{name}_f1"], 2) for name in ("hair", "neck")}
        rows.append(row)
        print(row, flush=True)
    name = f"wide_views_{opts.split}_{opts.surround}"
    write_result(name, {"split": opts.split, "photos": len(photos), "surround": opts.surround, "seed": opts.seed,
                        "machine": machine(), "rows": rows})  # fmt: skip
    (RESULTS / f"{name}.md").write_text(table(rows, opts.split, len(photos), opts.surround))
    print(f"wrote {RESULTS / name}.json and .md")


def table(rows: list[dict], split: str, count: int, surround: str) -> str:
    lines = [
        f"# Wide second views on the wild-face stand-ins ({split}, {count} photos, surround {surround}; shipped face"
        " parser)", "",
        "views: (scale, side) per crop, the first primary; cost: canvas pixels per face / one 384 crop; F1 %.", "",
        "| setting | views | cost | mean F1 | skin | hair | neck | cloth | merged pixel acc. | hair photo "
        "| hair surround | neck photo | neck surround |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        cells = [r["setting"], " ".join(f"{s}/{c}" for s, c in r["views"]), r["cost"], r["mean_f1"],
                 *(r[n] for n in REPORTED), r["merged_pixel_accuracy"], r["hair_photo"], r["hair_surround"],
                 r["neck_photo"], r["neck_surround"]]  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
