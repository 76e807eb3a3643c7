"""Question: does a detected face's parse cover its whole head (hair to the shoulders, neck) when the photo
shows more than the CelebA-HQ framing?

In-the-wild stand-ins built from ../shared/data/celebamask-mini: each face photo is shrunk (scale U(0.4, 0.7),
so faces are press-photo sized) and extended on every side (a border of U(0.05, 0.25) of its side per edge,
so the face sits off-centre), the labels alike, which continues hair, neck and clothes past the original
framing, where the standard aligned crop never looks. ``--surround reflect`` (the first version) mirrors
every edge; where a border is deeper than the distance from that edge to the face it adds mirrored cheeks,
ears or chins, and the mirrored bottom puts a second, upside-down neck under the clothes. ``--surround
capped`` caps the top, left and right mirrors short of the face and replicates the bottom row downwards
instead. Each photo goes through ``detect_faces=True`` at each ``--zooms`` value (``Parser.face_zoom``); one
confusion matrix per zoom over all pixels, also merged to background / skin / hair. Also reported: the share
of true hair, neck and skin pixels outside the zoom-1 crop's footprint, and hair and neck F1 apart on the
original photo's own pixels and on the made-up surround (``by_region``), which tells a parse that misses
the head from one that misreads a mirror or a replicated stripe.

Choose the zoom on ``--split val``; report on test. Writes benchmarks/results/wild_faces_<split>[_<name>].json and .md.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch
from tqdm import tqdm

from agrnet.data.classes import CELEBAMASK_HQ
from agrnet.data.datasets import open_split
from agrnet.data.transforms import canvas_hw
from agrnet.detection.align import alignment_matrix, crop_coordinates, inside_crop
from agrnet.inference import Parser, wide_zooms
from agrnet.metrics import ConfusionMatrix, summarize
from common import CELEBAMASK_MINI, RESULTS, write_result

REPORTED = ("skin", "hair", "neck", "cloth")
FACE_PARTS = ("skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth", "u_lip",
              "l_lip")  # fmt: skip
# Three classes as in-the-wild hair/skin sets score them: skin is the face's own surface and the neck
# (glasses, which lie on it, too); hat, earrings, necklace and cloth count as background.
MERGED_SKIN = (*FACE_PARTS, "neck")


def merged_scores(matrix: np.ndarray) -> dict[str, float]:
    """19x19 confusion (rows truth) -> pixel accuracy and F1 of background / skin / hair after merging."""
    names = CELEBAMASK_HQ.class_names
    group = np.array([1 if n in MERGED_SKIN else 2 if n == "hair" else 0 for n in names])
    merged = np.zeros((3, 3), dtype=np.float64)
    np.add.at(merged, (group[:, None], group[None, :]), matrix)
    f1 = 2 * np.diag(merged) / (merged.sum(0) + merged.sum(1))
    return {"pixel_accuracy": float(np.trace(merged) / merged.sum()), "background_f1": float(f1[0]),
            "skin_f1": float(f1[1]), "hair_f1": float(f1[2])}  # fmt: skip


def wild_photo(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, surround: str = "reflect"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S, S, 3) face photo and (S, S) labels -> a shrunk, extended photo, its labels and the (H, W) bool
    footprint of the original photo in it.

    surround "reflect": every edge mirrored by U(0.05, 0.25) of the side. "capped": top, left and right
    mirrored by the same draw capped at 0.8 of the distance from that edge to the face (so that no mirrored
    cheek, ear or chin appears), the bottom edge replicated (a torso goes on downwards, where a mirror would
    put a second, upside-down neck under the clothes)."""
    side = round(image.shape[0] * rng.uniform(0.4, 0.7))
    small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
    small_labels = cv2.resize(labels, (side, side), interpolation=cv2.INTER_NEAREST)
    top, bottom, left, right = (round(side * b) for b in rng.uniform(0.05, 0.25, 4))
    if surround == "reflect":
        pad = ((top, bottom), (left, right))
        photo, photo_labels = np.pad(small, (*pad, (0, 0)), mode="reflect"), np.pad(small_labels, pad, mode="reflect")
        return photo, photo_labels, np.pad(np.ones((side, side), bool), pad)
    rows, cols = np.nonzero(np.isin(small_labels, [CELEBAMASK_HQ.class_names.index(n) for n in FACE_PARTS]))
    if len(rows):
        top, left = min(top, int(0.8 * rows.min())), min(left, int(0.8 * cols.min()))
        right = min(right, int(0.8 * (side - 1 - cols.max())))
    sides = ((top, 0), (left, right))
    photo, photo_labels = np.pad(small, (*sides, (0, 0)), mode="reflect"), np.pad(small_labels, sides, mode="reflect")
    below = ((0, bottom), (0, 0))
    footprint = np.pad(np.ones((side, side), bool), ((top, bottom), (left, right)))
    return np.pad(photo, (*below, (0, 0)), mode="edge"), np.pad(photo_labels, below, mode="edge"), footprint


def region_scores(matrix: np.ndarray) -> dict[str, float]:
    """19x19 confusion of one region -> hair and neck F1 and their true pixel counts (F1 NaN without any)."""
    per_class, scores = summarize(matrix, CELEBAMASK_HQ)["per_class"], {}
    for name in ("hair", "neck"):
        scores[f"{name}_f1"] = float(per_class[name]["f1"])
        scores[f"{name}_pixels"] = int(matrix[CELEBAMASK_HQ.class_names.index(name)].sum())
    return scores


def zoom_setting(text: str) -> tuple[float, ...]:
    """argparse type of ``--zooms``: "1.5" (one wide crop) or "1.5+2.5" (a wider third one): a face_zoom."""
    try:
        zooms = tuple(float(part) for part in text.split("+"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a zoom is a number or numbers joined by +, e.g. 1.5+2.5: {text!r}") from None
    wide_zooms(zooms)  # the Parser's own check, so that a bad setting fails before any parsing
    return zooms


def zoom_label(zooms: tuple[float, ...]) -> str:
    return "+".join(f"{zoom:g}" for zoom in zooms)


def crop_footprints(parser: Parser, photo: np.ndarray, zooms: list[float]) -> list[np.ndarray] | None:
    """(H, W) bool per zoom: pixels inside that zoom's crop of the photo's largest face (None: no face)."""
    faces = parser.detector.detect(photo)
    if not faces:
        return None
    face = max(faces, key=lambda f: float((f.box[2] - f.box[0]) * (f.box[3] - f.box[1])))
    size = canvas_hw(parser.size)[0]
    rows, cols = slice(0, photo.shape[0]), slice(0, photo.shape[1])
    return [inside_crop(*crop_coordinates(alignment_matrix(face.landmarks, size / z, size), rows, cols), size)
            for z in zooms]  # fmt: skip


def outside_shares(parser: Parser, photos: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, float]:
    """The share of each reported class's true pixels that lies outside the zoom-1 (training framing) crop."""
    names = CELEBAMASK_HQ.class_names
    outside = {name: [0, 0] for name in REPORTED}  # true pixels outside the zoom-1 crop, all true pixels
    for photo, labels, _ in photos:
        inside = crop_footprints(parser, photo, [1.0])
        mask = None if inside is None else ~inside[0]
        for name in REPORTED:
            here = labels == names.index(name)
            outside[name][0] += int((here & mask).sum()) if mask is not None else 0
            outside[name][1] += int(here.sum())
    return {n: round(a / max(1, b), 4) for n, (a, b) in outside.items()}


def score_setting(
    parser: Parser, inputs: list[tuple[np.ndarray, np.ndarray, np.ndarray]], detect: bool, setting: str
) -> dict[str, object]:
    """Parse every (photo, labels, footprint) with the parser's current ``face_zoom``; the scores over all pixels,
    merged to background / skin / hair, and split into the photo's own pixels and its made-up surround."""
    classes = len(CELEBAMASK_HQ.class_names)
    matrix, missed, start = ConfusionMatrix(classes), 0, time.perf_counter()
    regions = {"photo": ConfusionMatrix(classes), "surround": ConfusionMatrix(classes)}
    for photo, labels, footprint in tqdm(inputs, desc=setting, unit="img"):
        result = parser.predict(photo, detect_faces=detect)
        missed += detect and not result.faces
        predicted, truth, inside = (torch.from_numpy(a) for a in (result.labels, labels, footprint))
        matrix.update(predicted, truth)
        regions["photo"].update(predicted[inside], truth[inside])
        regions["surround"].update(predicted[~inside], truth[~inside])
    return {
        **summarize(matrix.matrix, CELEBAMASK_HQ), "merged": merged_scores(matrix.matrix.numpy()),
        "confusion": matrix.matrix.tolist(),
        "by_region": {region: region_scores(m.matrix.numpy()) for region, m in regions.items()},
        "photos_without_face": missed, "seconds_per_photo": (time.perf_counter() - start) / len(inputs),
    }  # fmt: skip


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--data", default=str(CELEBAMASK_MINI))
    args.add_argument("--split", default="val", choices=["val", "test"])
    args.add_argument("--limit", type=int, default=200, help="photos (the first N of the split)")
    args.add_argument("--zooms", type=zoom_setting, nargs="+", default=[(1.0,), (1.25,), (1.5,), (1.75,), (2.0,)],
                      help="Parser.face_zoom values (1: the training framing alone; 1.5+2.5: two wide crops)")
    args.add_argument("--seed", type=int, default=0)
    args.add_argument("--surround", default="reflect", choices=["reflect", "capped"],
                      help="how the photo is extended (see wild_photo)")
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
    photos = [wild_photo(image, labels, rng, opts.surround) for image, labels in originals]

    model = opts.checkpoint or "Parser.from_pretrained()"
    report: dict[str, object] = {
        "split": opts.split, "photos": len(photos), "seed": opts.seed, "surround": opts.surround, "model": model,
        "zooms": {},
    }  # fmt: skip
    report["outside_zoom1_crop"] = outside_shares(parser, photos)
    # The reference: the same faces as aligned crops (the original photos, no detection).
    aligned = [(image, labels, np.ones(labels.shape, bool)) for image, labels in originals]
    settings: list[tuple[str, tuple[float, ...], list, bool]] = [("aligned crop", (1.0,), aligned, False)]
    settings += [(zoom_label(zooms), zooms, photos, True) for zooms in opts.zooms]
    for setting, zooms, inputs, detect in settings:
        parser.face_zoom = zooms
        report["zooms"][setting] = score_setting(parser, inputs, detect, setting)  # type: ignore[index]
    name = f"wild_faces_{opts.split}" + (f"_{opts.name}" if opts.name else "")
    write_result(name, report)
    (RESULTS / f"{name}.md").write_text(table(report))
    print(table(report))


def table(report: dict) -> str:
    rows = [
        f"# Wild-face stand-ins ({report['split']} split, {report['photos']} photos, seed {report['seed']}, "
        f"surround {report.get('surround', 'reflect')}): "
        f"F1 % through detect_faces=True, model {report.get('model', 'Parser.from_pretrained()')}",
        "",
        "Share of true pixels outside the zoom-1 aligned crop: "
        + ", ".join(f"{n} {100 * v:.1f} %" for n, v in report["outside_zoom1_crop"].items()),
        "",
        "Merged: background / skin (face and neck) / hair, as in-the-wild hair and skin sets are scored.",
        "",
        "| face_zoom | mean F1 | " + " | ".join(REPORTED) + " | mean IoU | merged: pixel acc. | skin | hair "
        "| no face | s/photo |",
        "|---|---|" + "---|" * len(REPORTED) + "---|---|---|---|---|---|",
    ]
    for zoom, s in report["zooms"].items():
        f1 = [100 * s["per_class"][n]["f1"] for n in REPORTED]
        rows.append(
            f"| {zoom} | {100 * s['mean_f1']:.2f} | " + " | ".join(f"{v:.1f}" for v in f1)
            + f" | {100 * s['mean_iou']:.2f} | " + merged_cells(s.get("merged"))
            + f" | {s['photos_without_face']} | {s['seconds_per_photo']:.3f} |"
        )
    return "\n".join(rows + region_rows(report["zooms"])) + "\n"


def region_rows(zooms: dict[str, dict]) -> list[str]:
    """Hair and neck F1 on the original photo's pixels and on the made-up surround (older files: none)."""
    rows = ["", "By region: the original photo's pixels vs the made-up surround (share: true pixels there).", "",
            "| face_zoom | hair F1 photo | hair F1 surround | hair share surround | neck F1 photo "
            "| neck F1 surround | neck share surround |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for zoom, s in zooms.items():
        if "by_region" not in s or zoom == "aligned crop":
            continue
        photo, around = s["by_region"]["photo"], s["by_region"]["surround"]
        cells = []
        for name in ("hair", "neck"):
            share = around[f"{name}_pixels"] / max(1, around[f"{name}_pixels"] + photo[f"{name}_pixels"])
            cells += [f"{100 * photo[f'{name}_f1']:.1f}", f"{100 * around[f'{name}_f1']:.1f}", f"{100 * share:.1f} %"]
        rows.append(f"| {zoom} | " + " | ".join(cells) + " |")
    return rows if len(rows) > 5 else []


def merged_cells(merged: dict[str, float] | None) -> str:
    """Older result files have no merged scores."""
    if merged is None:
        return " | ".join(["-"] * 3)
    return " | ".join(f"{100 * merged[k]:.1f}" for k in ("pixel_accuracy", "skin_f1", "hair_f1"))


if __name__ == "__main__":
    main()
