"""Question: does averaging the face parser over several canvas sizes (multi-scale test-time augmentation) beat
its one training canvas, with and without flip?

For each face of a celebamask-mini split: the network on each ``--sizes`` canvas (and on its mirror, left/right
classes swapped), class probabilities brought back to the labels' 512x512, then every single size and every
subset of two or more averaged; one confusion matrix per setting, mean F1 without background. One network pass
per size serves every subset, so this sweeps what ``Parser(scales=...)`` / ``agrnet evaluate --scales`` offer
(they average a canvas's plain and mirrored logits, this script their probabilities). Choose on ``--split val``;
the test split only to report a choice. Writes benchmarks/results/tta_scales_<split>[_<name>].json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch

from agrnet.checkpoints import model_from_checkpoint
from agrnet.data.datasets import open_split
from agrnet.data.transforms import to_tensor, unletterbox, warp_pair
from agrnet.evaluate import flip_permutation
from agrnet.metrics import ConfusionMatrix, summarize
from agrnet.modeling.agrnet import AGRNet
from agrnet.pretrained import load_pretrained
from common import CELEBAMASK_MINI, RESULTS, write_result


@torch.inference_mode()
def probabilities(
    model: AGRNet, image: np.ndarray, size: int, perm: list[int]
) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(H, W, 3) image -> plain and mirrored (Nc, H, W) probabilities from one canvas, and the seconds of each
    forward pass."""
    canvas = to_tensor(warp_pair(image, None, size)[0])[None]
    start = time.perf_counter()
    logits = model(canvas).logits.float()
    middle = time.perf_counter()
    mirrored = model(canvas.flip(-1)).logits.float().flip(-1)[:, perm]
    end = time.perf_counter()
    h, w = image.shape[:2]
    plain, flipped = (unletterbox(x, h, w)[0].softmax(0) for x in (logits, mirrored))
    return plain, flipped, middle - start, end - middle


def settings(sizes: list[int]) -> list[tuple[int, ...]]:
    """Every single size, then every subset of two or more."""
    return [c for r in range(1, len(sizes) + 1) for c in itertools.combinations(sizes, r)]


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--checkpoint", help="a training checkpoint (default: the shipped model)")
    args.add_argument("--name", default="")
    args.add_argument("--data", default=str(CELEBAMASK_MINI))
    args.add_argument("--split", default="val", choices=["val", "test"])
    args.add_argument("--sizes", type=int, nargs="+", default=[320, 384, 448])
    args.add_argument("--limit", type=int, default=0, help="score only the first N images")
    opts = args.parse_args()
    torch.set_num_threads(2)
    model, _ = model_from_checkpoint(opts.checkpoint) if opts.checkpoint else load_pretrained()
    model.eval()
    dataset = open_split("folder", opts.data, opts.split, opts.sizes[0], classes="celebamask_hq")
    count = min(opts.limit or len(dataset), len(dataset))
    perm = flip_permutation(dataset.spec, model.num_classes)
    combos = settings(opts.sizes)
    matrices = {(c, f): ConfusionMatrix(dataset.spec.num_classes) for c in combos for f in (False, True)}
    seconds = {(s, f): 0.0 for s in opts.sizes for f in (False, True)}  # (size, flip): plain pass, or both
    for index in range(count):
        image, labels = dataset.load(index)
        target = torch.from_numpy(labels.astype(np.int64))
        per_size = {}
        for size in opts.sizes:
            plain, flipped, plain_s, mirrored_s = probabilities(model, image, size, perm)
            per_size[size] = (plain, (plain + flipped) / 2)
            seconds[size, False] += plain_s
            seconds[size, True] += plain_s + mirrored_s
        for (combo, flip), matrix in matrices.items():
            matrix.update(sum(per_size[s][flip] for s in combo).argmax(0), target)
        if index % 50 == 0:
            print(f"{index}/{count}", flush=True)
    rows = [
        {"sizes": "+".join(map(str, combo)), "flip": flip,
         "mean_f1": round(100 * summarize(matrix.matrix, dataset.spec)["mean_f1"], 2),
         "network_ms": round(1000 * sum(seconds[s, flip] for s in combo) / count, 1)}
        for (combo, flip), matrix in matrices.items()
    ]  # fmt: skip
    name = f"tta_scales_{opts.split}" + (f"_{opts.name}" if opts.name else "")
    model_name = opts.checkpoint or "the shipped model (Parser.from_pretrained())"
    write_result(name, {"split": opts.split, "images": count, "model": model_name, "rows": rows})
    lines = [f"# Multi-scale test-time augmentation ({opts.split}, {count} faces, {model_name}): mean F1 % "
             "without background at 512x512; network_ms: the network's forward passes per face "
             "(as trained, BatchNorm not folded), fp32, batch 1, 2 cores", "",
             "| canvas sizes averaged | flip | mean F1 | network ms |", "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['sizes']} | {'yes' if r['flip'] else 'no'} | {r['mean_f1']} | {r['network_ms']} |" for r in rows]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
