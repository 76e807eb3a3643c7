"""The main job: synthetic data -> short CPU training -> held-out evaluation -> report and overlays."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from agrnet.checkpoints import model_from_checkpoint
from agrnet.config import load_config
from agrnet.data.classes import overlay
from agrnet.data.datasets import ParsingDataset, open_split
from agrnet.data.synth import generate, split_counts
from agrnet.evaluate import evaluate_dataset
from agrnet.inference import Parser
from agrnet.metrics import format_results
from agrnet.modeling.agrnet import AGRNet
from agrnet.train import train

DEMO_IMAGES = 600
DEMO_IMAGE_SIZE = 160


def ensure_synthetic(root: Path, num: int = DEMO_IMAGES, size: int = DEMO_IMAGE_SIZE, seed: int = 0) -> None:
    """Generate the synthetic set unless a complete one is already there."""
    expected = split_counts(num)
    if all(len(list((root / s / "labels").glob("*.png"))) == n for s, n in expected.items()):
        return
    generate(root, num, size, seed)


def write_overlays(model: AGRNet, dataset: ParsingDataset, out: Path, count: int = 4) -> list[Path]:
    """Image | ground truth | prediction strips for the first ``count`` samples."""
    out.mkdir(parents=True, exist_ok=True)
    parser = Parser(dataset.spec, dataset.size, model=model)
    palette = dataset.spec.palette
    paths = []
    for index in range(min(count, len(dataset))):
        image, labels = dataset.load(index)
        prediction = parser.predict(image).labels
        strip = np.concatenate([image, overlay(image, labels, palette), overlay(image, prediction, palette)], 1)
        path = out / f"overlay_{index:02d}.png"
        cv2.imwrite(str(path), strip[..., ::-1])
        paths.append(path)
    return paths


def run_demo(out: str | Path, overrides: Sequence[str] = (), compare_baseline: bool = False) -> dict[str, Any]:
    """Run the main job under ``out``; returns what ``metrics.json`` holds."""
    out = Path(out)
    data_root = out / "data"
    ensure_synthetic(data_root)
    base = load_config("synthetic", [f"data.root={data_root}", f"out_dir={out / 'run'}", *overrides])
    runs = {"agrnet": base}
    if compare_baseline:
        runs["baseline"] = dataclasses.replace(
            base, ablation="baseline", out_dir=str(out / "run_baseline")
        )
    report: dict[str, Any] = {"data": str(data_root), "images": split_counts(DEMO_IMAGES), "runs": {}}
    tables = []
    for name, config in runs.items():
        start = time.perf_counter()
        train(config, overwrite=True)  # the demo's own folder: a rerun starts the demo again
        seconds = time.perf_counter() - start
        checkpoint = Path(config.out_dir) / "best.pt"
        model, _ = model_from_checkpoint(checkpoint if checkpoint.is_file() else Path(config.out_dir) / "last.pt")
        data = config.data
        test_set = open_split(data.kind, data.root, "test", data.canvas, classes=data.classes)
        summary, _ = evaluate_dataset(model, test_set, torch.device("cpu"))
        report["runs"][name] = {
            "variant": config.ablation or "full",
            "checkpoint": str(checkpoint),
            "train_seconds": round(seconds, 1),
            "iterations": config.iterations,
            "seed": config.seed,
            "test": summary,
        }
        tables.append(
            f"### {name} ({config.ablation or 'full'}), held-out test split\n\n{format_results(summary, test_set.spec)}"
        )
        if name == "agrnet":
            write_overlays(model, test_set, out / "overlays")
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    (out / "results.md").write_text("# agrnet demo results (F1 / IoU in %)\n\n" + "\n\n".join(tables) + "\n")
    return report

