"""Question: does cutting flat bars out of a face's paste window (``agrnet.detection.align.content_window``) fix
the stripe a wide crop paints on a letterbox or collage bar, without costing anything on real photos?

For each set, the photos where the rule cuts something around a detected face are parsed through
``detect_faces=True`` (default ``face_zoom``) twice, with the rule and without it (``content_window``
replaced by the whole photo), and scored against the true labels: 19-class mean F1, hair and neck F1 for
the face sets; hair F1 and skin F1 (the face's parts and the neck merged) against CCP's hair and skin.
Also counted: the true face-part pixels inside what the rule cuts (a cut may only ever remove background),
and the foreground the parser puts on the black band of ``agrnet demo``'s two_faces collage.

Sets (val splits only; nothing is chosen on them, the rule's two constants were set before): the 500
CelebAMask-HQ val photos as photos, the 200 wild-face stand-ins of ``wild_faces.py`` (both surrounds, seed
0) and the 100 CCP val street photos. Writes benchmarks/results/letterbox_bars.json and .md.

A first version of the rule also let the crops see the content reflected over the bar instead of the bar (as
at the photo's border); measured the same way on the 17 CelebAMask val photos with a cut (2026-12-05), mean F1
fell from 80.25 to 79.63 (the plain backdrops it cut are real context), so the crops see the photo as it is
and the rule only decides where they may paste.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import agrnet.detection.align as align
from agrnet.data.classes import CELEBAMASK_HQ
from agrnet.data.datasets import open_split
from agrnet.data.transforms import canvas_hw
from agrnet.demo_photos import demo_photos
from agrnet.inference import Parser, wide_zooms
from agrnet.metrics import ConfusionMatrix, summarize
from common import CELEBAMASK_MINI, RESULTS, machine, write_result
from wild_faces import MERGED_SKIN, wild_photo

CCP = Path(__file__).resolve().parents[2] / "shared" / "data" / "ccp"
CCP_HAIR, CCP_SKIN = 2, 13
RULE = align.content_window


def whole_photo(image: np.ndarray, box: np.ndarray, matrix: np.ndarray, side: int) -> align.Window:
    return slice(0, image.shape[0]), slice(0, image.shape[1])


def cut_mask(parser: Parser, photo: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels within some face's widest crop that the rule keeps from being labelled."""
    size = canvas_hw(parser.size)[0]
    widest = size / max((1.0, *wide_zooms(parser.face_zoom)))
    cut = np.zeros(photo.shape[:2], bool)
    for face in parser.detector.detect(photo):
        matrix = align.alignment_matrix(face.landmarks, widest, size)
        reach = align.inside_crop(*align.crop_coordinates(matrix, *whole_photo(photo, face.box, matrix, size)), size)
        kept = np.zeros_like(cut)
        kept[RULE(photo, face.box, matrix, size)] = True
        cut |= reach & ~kept
    return cut


def parse_both(parser: Parser, photos: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
    out = {}
    for mode, window in (("without", whole_photo), ("with", RULE)):
        align.content_window = window
        out[mode] = [parser.predict(photo, detect_faces=True).labels for photo in photos]
    align.content_window = RULE
    return out


def face_scores(predicted: list[np.ndarray], truth: list[np.ndarray]) -> dict[str, float]:
    matrix = ConfusionMatrix(CELEBAMASK_HQ.num_classes)
    for p, t in zip(predicted, truth, strict=True):
        matrix.update(torch.from_numpy(p), torch.from_numpy(t))
    summary = summarize(matrix.matrix, CELEBAMASK_HQ)
    per_class = summary["per_class"]
    return {"mean_f1": 100 * summary["mean_f1"], "hair_f1": 100 * per_class["hair"]["f1"],
            "neck_f1": 100 * per_class["neck"]["f1"]}  # fmt: skip


def ccp_scores(predicted: list[np.ndarray], truth: list[np.ndarray]) -> dict[str, float]:
    names = CELEBAMASK_HQ.class_names
    skin = [names.index(n) for n in MERGED_SKIN]
    counts = np.zeros((2, 3))  # hair, skin: true positives, true, predicted
    for p, t in zip(predicted, truth, strict=True):
        for row, (true, pred) in enumerate(
            ((t == CCP_HAIR, p == names.index("hair")), (t == CCP_SKIN, np.isin(p, skin)))
        ):
            counts[row] += (true & pred).sum(), true.sum(), pred.sum()
    f1 = 200 * counts[:, 0] / (counts[:, 1] + counts[:, 2])
    return {"hair_f1": float(f1[0]), "skin_f1": float(f1[1])}


def measure(parser: Parser, items: list[tuple[np.ndarray, np.ndarray]], score: Callable) -> dict[str, object]:
    """The photos (with their labels, 0 = background) where the rule cuts something, parsed with and
    without it."""
    cuts = [cut_mask(parser, photo) for photo, _ in items]
    chosen = [(item, cut) for item, cut in zip(items, cuts, strict=True) if cut.any()]
    photos, truth = [p for (p, _), _ in chosen], [t for (_, t), _ in chosen]
    parsed = parse_both(parser, photos)
    return {
        "photos": len(items), "photos_with_a_cut": len(chosen),
        "cut_pixels": int(sum(cut.sum() for _, cut in chosen)),
        "true_foreground_in_cuts": int(sum(((t > 0) & cut).sum() for (_, t), cut in chosen)),
        "pixels_changed": int(sum((a != b).sum() for a, b in zip(parsed["without"], parsed["with"], strict=True))),
        "without": score(parsed["without"], truth) if chosen else {},
        "with": score(parsed["with"], truth) if chosen else {},
    }  # fmt: skip


def collage_band(parser: Parser) -> dict[str, int]:
    """Foreground pixels on the black band above the smaller photo of the demo's two_faces collage."""
    photo = demo_photos()["two_faces"]
    rows = int((photo[:, -1] == 0).all(-1).sum())  # the band spans the top rows of the right-hand side
    band = np.zeros(photo.shape[:2], bool)
    band[:rows, (photo[:rows] == 0).all((0, 2))] = True
    parsed = parse_both(parser, [photo])
    return {mode: int((labels[0][band] > 0).sum()) for mode, labels in parsed.items()}


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--threads", type=int, default=2)
    opts = args.parse_args()
    torch.set_num_threads(opts.threads)
    parser = Parser.from_pretrained(device="cpu")
    report: dict[str, object] = {"machine": machine(), "face_zoom": parser.face_zoom, "sets": {}}
    report["collage_band_foreground"] = collage_band(parser)
    faces = open_split("folder", str(CELEBAMASK_MINI), "val", 32, classes="celebamask_hq")
    originals = [faces.load(i) for i in range(len(faces))]
    sets = {"celebamask val photos": (originals, face_scores)}
    for surround in ("capped", "reflect"):
        rng = np.random.default_rng(0)
        stand_ins = [wild_photo(image, labels, rng, surround)[:2] for image, labels in originals[:200]]
        sets[f"wild stand-ins val, {surround}"] = (stand_ins, face_scores)
    if CCP.is_dir():
        ccp = open_split("folder", str(CCP), "val", 32, classes="ccp")
        sets["ccp val"] = ([ccp.load(i) for i in range(len(ccp))], ccp_scores)
    for name, (items, score) in sets.items():
        report["sets"][name] = measure(parser, items, score)  # type: ignore[index]
        print(name, report["sets"][name], flush=True)  # type: ignore[index]
    write_result("letterbox_bars", report)
    (RESULTS / "letterbox_bars.md").write_text(table(report))
    print(table(report))


def table(report: dict) -> str:
    band = report["collage_band_foreground"]
    rows = [
        f"# Flat bars cut from the paste window (content_window), face_zoom {report['face_zoom']}, shipped model",
        "",
        f"agrnet demo's two_faces collage, foreground pixels on the black band: {band['without']} without the rule, "
        f"{band['with']} with it.",
        "",
        "| set | photos | with a cut | cut pixels | true foreground in cuts | pixels changed | without: scores "
        "| with: scores |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["sets"].items():
        cells = [", ".join(f"{k} {v:.2f}" for k, v in r[mode].items()) for mode in ("without", "with")]
        rows.append(f"| {name} | {r['photos']} | {r['photos_with_a_cut']} | {r['cut_pixels']} | "
                    f"{r['true_foreground_in_cuts']} | {r['pixels_changed']} | {cells[0]} | {cells[1]} |")  # fmt: skip
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
