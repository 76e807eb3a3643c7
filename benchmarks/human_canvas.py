"""Question: what does a smaller canvas trade for speed with the shipped human parser?

The same weights (``Parser.from_pretrained("agrnet_mbv2_ccp", size=...)``) on tall canvases (``--canvases``; the
model before 2026-12-04 23:20 trained on 512 x 352, the shipped one on 640 x 448), each scored on the CCP photos of
one split at their own size (mean IoU with background, mean F1 without), and timed on the same photos (fp32, batch
1, median of per-photo times, canvases interleaved photo by photo so that machine noise hits all alike). A canvas
is chosen on val (the default split); ``--split test`` then reports the choice once. Writes
benchmarks/results/human_canvas_<split>[_quick]_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from agrnet.data.datasets import open_split
from agrnet.inference import Parser
from agrnet.metrics import ConfusionMatrix, summarize
from agrnet.pretrained import HUMAN_PARSER
from common import RESULTS, machine, result_name, table, write_result

CCP = Path(__file__).parents[2] / "shared" / "data" / "ccp"
CANVASES = ((640, 448), (512, 352), (448, 304), (384, 256))


def parse_canvases(text: str) -> tuple[tuple[int, int], ...]:
    """Parse "384x256,448x304" into ((384, 256), (448, 304)), height by width."""
    try:
        return tuple((int(h), int(w)) for h, w in (item.split("x") for item in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"canvases look like 384x256,448x304, not {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10 photos")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--canvases", type=parse_canvases, default=CANVASES, help="e.g. 384x256,448x304")
    args = parser.parse_args()
    canvases: tuple[tuple[int, int], ...] = args.canvases
    if not CCP.is_dir():
        raise SystemExit(f"needs the CCP photos at {CCP}")
    torch.set_num_threads(args.threads)
    photos = open_split("folder", CCP, args.split, canvases[0], classes="ccp")
    count = 10 if args.quick else len(photos)
    parsers = {size: Parser.from_pretrained(HUMAN_PARSER, device="cpu", size=size) for size in canvases}
    matrices = {size: ConfusionMatrix(photos.spec.num_classes) for size in canvases}
    times: dict[tuple[int, int], list[float]] = {size: [] for size in canvases}
    for index in range(count):
        image, labels = photos.load(index)
        for size, model in parsers.items():
            start = time.perf_counter()
            predicted = model.predict(image).labels
            times[size].append(time.perf_counter() - start)
            matrices[size].update(torch.from_numpy(predicted), torch.from_numpy(labels))
    rows = []
    for size in canvases:
        summary = summarize(matrices[size].matrix, photos.spec)
        rows.append({
            "canvas": f"{size[0]}x{size[1]}", "mean_iou": round(100 * summary["mean_iou"], 2),
            "mean_f1": round(100 * summary["mean_f1"], 2),
            "median_ms": round(1000 * statistics.median(times[size]), 1),
        })  # fmt: skip
    text = table(rows, list(rows[0]))
    print(text)
    name = result_name(f"human_canvas_{args.split}", args.quick, torch.device("cpu"))
    write_result(name, {"split": args.split, "photos": count, "threads": args.threads, "rows": rows})
    header = f"{count} CCP {args.split} photos at their own size, {args.threads} threads, fp32, batch 1"
    header += f" ({machine()['cpu']})\n\n"
    (RESULTS / f"{name}.md").write_text(header + text + "\n")
    print(f"wrote {RESULTS / name}.json and .md")


if __name__ == "__main__":
    main()
