"""Table I(a) on real faces: one Markdown row per ablation from the ``agrnet evaluate --json`` files in a folder.

Usage: python benchmarks/ablation_table.py benchmarks/results/ablation_real
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROWS = ("baseline", "spatial", "adaptive", "adaptive_graph", "adaptive_edge", "full")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    folder = parser.parse_args().folder
    lines = ["| ablation | test mean F1 | test mean IoU | test mean accuracy |", "|---|---|---|---|"]
    for name in ROWS:
        path = folder / f"{name}.json"
        if path.is_file():
            s = json.loads(path.read_text())["summary"]
            lines.append(f"| {name} | {100 * s['mean_f1']:.2f} | {100 * s['mean_iou']:.2f} | "
                         f"{100 * s['mean_accuracy']:.2f} |")  # fmt: skip
    print("\n".join(lines))


if __name__ == "__main__":
    main()
