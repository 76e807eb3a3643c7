"""Table I(a) on real faces: one Markdown row per ablation from the ``agrnet evaluate --json`` files
(``ROW_sSEED.json``, written by ``benchmarks/ablation_real.sh``) in a folder; seeds side by side and their mean.

Usage: python benchmarks/ablation_table.py benchmarks/results/ablation_real/it1000 [--per-class SEED]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

ROWS = ("baseline", "baseline_full_loss", "spatial", "adaptive", "adaptive_graph", "adaptive_edge", "full")


def _row_order(name: str) -> int:
    """Table I(a)'s order; rows it does not name go last."""
    return ROWS.index(name) if name in ROWS else len(ROWS)


def read_runs(folder: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """{row: {seed: summary}} for every ``ROW_sSEED.json`` in ``folder``."""
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted(folder.glob("*_s*.json")):
        match = re.fullmatch(r"(.+)_s(\d+)", path.stem)
        if match:
            runs.setdefault(match[1], {})[int(match[2])] = json.loads(path.read_text())["summary"]
    return runs


def table(runs: dict[str, dict[int, dict[str, Any]]]) -> str:
    seeds = sorted({seed for per_seed in runs.values() for seed in per_seed})
    head = [f"test mean F1 seed {s}" for s in seeds] + ["test mean F1 (mean)", "test mean IoU (mean)"]
    lines = ["| ablation | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for name in sorted(runs, key=_row_order):
        per_seed = runs[name]
        cells = [f"{100 * per_seed[s]['mean_f1']:.2f}" if s in per_seed else "–" for s in seeds]
        for metric in ("mean_f1", "mean_iou"):
            cells.append(f"{100 * sum(r[metric] for r in per_seed.values()) / len(per_seed):.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_class_table(runs: dict[str, dict[int, dict[str, Any]]], seed: int) -> str:
    """Test F1 of every class (background included) per row, for one seed."""
    names = sorted((n for n in runs if seed in runs[n]), key=_row_order)
    classes = list(runs[names[0]][seed]["per_class"])
    lines = [f"| class (seed {seed}) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for cls in classes:
        cells = [f"{100 * runs[n][seed]['per_class'][cls]['f1']:.1f}" for n in names]
        lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--per-class", type=int, metavar="SEED", help="also print per-class test F1 for SEED")
    args = parser.parse_args()
    runs = read_runs(args.folder)
    print(table(runs))
    if args.per_class is not None:
        print("\n" + per_class_table(runs, args.per_class))


if __name__ == "__main__":
    main()
