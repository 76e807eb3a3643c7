"""Question 4: evaluation throughput over a dataset directory, data loading included.

Times (a) the loader alone (decode, letterbox, labels), (b) the model alone on the same batches held
in memory, and (c) the whole ``evaluate_dataset`` pass. When (c) is close to (b), the loader is not
the bottleneck. Without --data, a synthetic set is generated in a temporary directory.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from agrnet.build import ModelConfig, build_agrnet
from agrnet.data.datasets import open_split
from agrnet.data.synth import generate
from agrnet.data.transforms import canvas_hw
from agrnet.evaluate import _collate, _OriginalResolution, evaluate_dataset, predict_logits
from common import result_name, sync, table, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", help="a dataset directory (default: a generated synthetic set)")
    parser.add_argument("--kind", default="synthetic")
    parser.add_argument("--split", default="test")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    backbone, size, num, batch = ("resnet18", 128, 60, 4) if args.quick else ("resnet18", 256, 100, 8)
    if device.type == "cuda" and not args.quick:
        backbone, size = "resnet101", 473
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data or tmp)
        if args.data is None:
            generate(root, num * 10, 512 if not args.quick else 160, progress=False)
        dataset = open_split(args.kind, root, args.split, size)
        model = build_agrnet(ModelConfig(backbone=backbone, num_classes=dataset.spec.num_classes)).eval().to(device)
        samples = _OriginalResolution(dataset, [canvas_hw(size)])
        loader = torch.utils.data.DataLoader(samples, batch_size=batch, num_workers=args.workers, collate_fn=_collate)
        start = time.perf_counter()
        batches = [images for (images,), _, _ in loader]
        loader_s = time.perf_counter() - start
        predict_logits(model, batches[0].to(device))  # warm-up
        start = time.perf_counter()
        for images in batches:
            predict_logits(model, images.to(device))
        sync(device)
        model_s = time.perf_counter() - start
        start = time.perf_counter()
        evaluate_dataset(model, dataset, device, batch_size=batch, workers=args.workers, progress=False)
        total_s = time.perf_counter() - start
    n = len(dataset)
    row = {
        "images": n,
        "backbone": backbone,
        "size": size,
        "device": device.type,
        "workers": args.workers,
        "loader_img_s": round(n / loader_s, 1),
        "model_img_s": round(n / model_s, 1),
        "evaluate_img_s": round(n / total_s, 1),
        "evaluate_over_model_time": round(total_s / model_s, 3),
    }
    print(table([row], list(row)))
    print(f"wrote {write_result(result_name('eval_throughput', args.quick, device), {'rows': [row]})}")


if __name__ == "__main__":
    main()
