"""Question: on real street photos, does a detected face's parse reach as far as the person's hair and skin do?

The wild-face stand-ins (wild_faces.py) extend CelebA-HQ photos with made-up surround; here the surround is
real. ../shared/data/ccp holds full-body street photos (about 550 x 830, Clothing Co-Parsing, Apache-2.0)
whose labels include hair and skin. Each photo goes through the shipped face parser (or ``--checkpoint``) with
``detect_faces=True`` at each ``--zooms`` value; its hair is scored against CCP's hair, and its skin (the
face's parts and the neck merged, as in-the-wild skin sets score it) against CCP's skin, apart in three
regions around the photo's largest detected face: inside the zoom-1 crop (the training framing), the ring
that only the widest zoom's crop adds, and beyond it (never parsed: every true pixel there is a miss).

CCP's skin also covers arms, shoulders and legs, which a face parser calls background or cloth, so skin
beyond the face crop measures reach loosely; hair has no such mismatch. Nothing is chosen on these figures.
Writes benchmarks/results/ccp_heads_<split>.json and .md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from agrnet.data.classes import CELEBAMASK_HQ
from agrnet.data.datasets import open_split
from agrnet.inference import Parser
from common import RESULTS, write_result
from wild_faces import MERGED_SKIN, crop_footprints, zoom_label, zoom_setting

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ccp"
REGIONS = ("crop", "ring", "beyond")


def regions(parser: Parser, photo: np.ndarray, widest: float) -> dict[str, np.ndarray] | None:
    """(H, W) bool masks of the three regions around the photo's largest face (None: no face)."""
    inside = crop_footprints(parser, photo, [1.0, widest])
    if inside is None:
        return None
    crop, wide = inside
    return {"crop": crop, "ring": wide & ~crop, "beyond": ~wide}


def f1_cells(counts: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    """{region: [true positives, true pixels, predicted pixels]} -> F1 and the share of the true pixels, per
    region and over the whole photo ("all")."""
    counts = {**counts, "all": [sum(c[i] for c in counts.values()) for i in range(3)]}
    total = counts["all"][1]
    return {
        region: {"f1": 2 * tp / (truth + predicted) if truth + predicted else float("nan"),
                 "share": truth / max(1, total), "true_pixels": truth}
        for region, (tp, truth, predicted) in counts.items()
    }  # fmt: skip


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--data", default=str(SHARED))
    args.add_argument("--split", default="test", choices=["val", "test"])
    args.add_argument("--zooms", type=zoom_setting, nargs="+", default=[(1.0,), (1.5,)],
                      help="Parser.face_zoom values (1.5+2.5: two wide crops)")
    args.add_argument("--name", default="", help="suffix of the result files (ccp_heads_<split>[_<name>])")
    args.add_argument("--threads", type=int, default=2)
    args.add_argument("--checkpoint", help="a face training checkpoint (default: the shipped face model)")
    opts = args.parse_args()
    torch.set_num_threads(opts.threads)
    parser = Parser.from_checkpoint(opts.checkpoint, "cpu") if opts.checkpoint else Parser.from_pretrained(device="cpu")
    dataset = open_split("folder", opts.data, opts.split, 32, classes="ccp")
    ccp, face = dataset.spec.class_names, CELEBAMASK_HQ.class_names
    skin_ids = [face.index(n) for n in MERGED_SKIN]
    widest = max(zoom for zooms in opts.zooms for zoom in zooms)
    counts = {z: {k: {r: [0, 0, 0] for r in REGIONS} for k in ("hair", "skin")} for z in opts.zooms}
    missed = 0
    for index in tqdm(range(len(dataset)), desc=f"ccp {opts.split}", unit="img"):
        photo, labels = dataset.load(index)
        masks = regions(parser, photo, widest)
        if masks is None:
            missed += 1
            continue
        truth = {"hair": labels == ccp.index("hair"), "skin": labels == ccp.index("skin")}
        for zoom in opts.zooms:
            parser.face_zoom = zoom
            predicted = parser.predict(photo, detect_faces=True).labels
            guess = {"hair": predicted == face.index("hair"), "skin": np.isin(predicted, skin_ids)}
            for kind in ("hair", "skin"):
                for region, mask in masks.items():
                    t, p = truth[kind] & mask, guess[kind] & mask
                    cell = counts[zoom][kind][region]
                    cell[0] += int((t & p).sum())
                    cell[1] += int(t.sum())
                    cell[2] += int(p.sum())
    report = {
        "split": opts.split, "photos": len(dataset), "photos_without_face": missed, "widest_zoom": widest,
        "model": opts.checkpoint or "Parser.from_pretrained()",
        "zooms": {zoom_label(z): {k: f1_cells(c) for k, c in by_kind.items()} for z, by_kind in counts.items()},
    }  # fmt: skip
    name = f"ccp_heads_{opts.split}" + (f"_{opts.name}" if opts.name else "")
    write_result(name, report)
    (RESULTS / f"{name}.md").write_text(table(report))
    print(table(report))


def table(report: dict) -> str:
    widest = report["widest_zoom"]
    rows = [
        f"# Face parser on real street photos (CCP {report['split']}, {report['photos']} photos, "
        f"{report['photos_without_face']} without a detected face): F1 % against CCP's hair and skin, "
        f"model {report.get('model', 'Parser.from_pretrained()')}",
        "",
        f"Regions around the largest face: crop = the zoom-1 crop; ring = what the zoom-{widest:g} crop adds; "
        f"beyond = outside it (never parsed). Share: the class's true pixels in the region.",
        "",
        "| face_zoom | class | F1 whole photo | F1 crop | F1 ring | F1 beyond | share crop | share ring "
        "| share beyond |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for zoom, by_kind in report["zooms"].items():
        for kind, cells in by_kind.items():
            f1 = " | ".join(f"{100 * cells[r]['f1']:.1f}" for r in ("all", *REGIONS))
            share = " | ".join(f"{100 * cells[r]['share']:.1f} %" for r in REGIONS)
            rows.append(f"| {zoom} | {kind} | {f1} | {share} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
