"""Question: does a per-class shift of the final logits, chosen on val, raise the score of a trained parser?

Cross-entropy training leaves rare, thin classes (earrings, necklaces; gloves, scarves, socks) under-called by the
plain argmax: the shift trades some of their precision for recall (post-hoc logit adjustment). For every image of
``--split`` (default val) the network's logits (one pass, the checkpoint's canvas) are mapped back to the label grid
shrunk by ``--grid``; one shift per class (background fixed at 0) is chosen by coordinate ascent on the split's
``--metric`` (mean F1 without background for faces, mean IoU with background for people), each class in turn trying
every value of ``--candidates``. To see whether the choice carries over to unseen images, it is first made on the
even-numbered images and scored on the odd ones, then made again on all of them. The final shift is checked at full
label resolution through ``evaluate_dataset`` (before and after) and, with ``--out-checkpoint``, folded into the
final classifier's bias: the written checkpoint parses with the shift and needs no code to apply it.

Writes benchmarks/results/class_bias_<split>_<name>.json and .md. Choose on val; score test once, afterwards, with
``agrnet evaluate`` on the written checkpoint.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from agrnet.checkpoints import atomic_save, load_checkpoint, model_from_checkpoint
from agrnet.data.datasets import ParsingDataset, open_split
from agrnet.data.transforms import to_tensor, unletterbox, warp_pair
from agrnet.evaluate import evaluate_dataset
from agrnet.metrics import ConfusionMatrix, summarize
from agrnet.modeling.agrnet import AGRNet
from agrnet.pretrained import pretrained_path
from common import CELEBAMASK_MINI, RESULTS, write_result

Metric = Callable[[np.ndarray], float]


@torch.inference_mode()
def collect(model: AGRNet, dataset: ParsingDataset, grid: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per image: logits (Nc, h, w) float32 on the label grid times ``grid``, and the labels resized alike
    (nearest) to (h, w)."""
    scores, labels = [], []
    for index in tqdm(range(len(dataset)), desc="logits", unit="image"):
        image, target = dataset.load(index)
        h, w = max(1, round(target.shape[0] * grid)), max(1, round(target.shape[1] * grid))
        canvas = to_tensor(warp_pair(image, None, dataset.size)[0])[None]
        scores.append(unletterbox(model(canvas).logits.float(), h, w)[0])
        target_t = torch.from_numpy(target.astype(np.int64))[None, None].float()
        labels.append(torch.nn.functional.interpolate(target_t, size=(h, w), mode="nearest")[0, 0].long())
    return scores, labels


def flatten(
    scores: list[torch.Tensor], labels: list[torch.Tensor], num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (Nc, P) scores and (P,) labels of every labelled pixel (ignore values left out)."""
    flat_scores = torch.cat([s.flatten(1) for s in scores], dim=1)
    flat_labels = torch.cat([t.flatten() for t in labels])
    keep = flat_labels < num_classes
    return flat_scores[:, keep], flat_labels[keep]


def confusion(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> np.ndarray:
    matrix = ConfusionMatrix(num_classes)
    matrix.update(predictions, labels)
    return matrix.matrix.numpy()


def shifted_argmax(scores: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return (scores + bias[:, None]).argmax(0)


def search(
    scores: torch.Tensor, labels: torch.Tensor, metric: Metric, candidates: list[float], rounds: int
) -> torch.Tensor:
    """Coordinate ascent over the classes' shifts (class 0 stays 0) -> (Nc,) bias.

    For class c the best other class per pixel is computed once; c wins a pixel iff its score minus that best,
    plus the shift, is positive. Only pixels whose winner depends on the shift within the candidates' range are
    re-counted per candidate.
    """
    num_classes = scores.shape[0]
    bias = torch.zeros(num_classes)
    best = metric(confusion(labels, shifted_argmax(scores, bias), num_classes))
    low, high = min(candidates), max(candidates)
    for _ in range(rounds):
        improved = False
        for c in range(1, num_classes):
            others = scores + bias[:, None]
            others[c] = -torch.inf
            top, winner = others.max(0)
            margin = scores[c] - top
            varies = (margin > -high) & (margin <= -low)
            fixed = torch.where(margin > -low, c, winner)[~varies]
            base = confusion(labels[~varies], fixed, num_classes)
            v_margin, v_winner, v_labels = margin[varies], winner[varies], labels[varies]
            for value in candidates:
                predictions = torch.where(v_margin > -value, c, v_winner)
                score = metric(base + confusion(v_labels, predictions, num_classes))
                if score > best + 1e-6:
                    best, bias[c], improved = score, value, True
        if not improved:
            break
    return bias


def fold_bias(model: AGRNet, bias: torch.Tensor) -> None:
    """Add ``bias`` (Nc,) to the final classifier's output bias: logits = head(x) + bias everywhere."""
    last = model.head[-1]
    assert isinstance(last, torch.nn.Conv2d) and last.bias is not None
    with torch.no_grad():
        last.bias += bias.to(last.bias)


def write_checkpoint(source: Path, model: AGRNet, bias: torch.Tensor, out: Path) -> None:
    """The source checkpoint with the folded weights (in the source's dtypes) and the shift recorded."""
    state = load_checkpoint(source)
    weights = model.state_dict()
    state["model"] = {k: weights[k].to(v.dtype) for k, v in state["model"].items()}
    state["class_bias"] = [round(float(b), 4) for b in bias]
    atomic_save(state, out)


def holdout_check(
    scores: list[torch.Tensor], labels: list[torch.Tensor], num_classes: int, metric: Metric, args: argparse.Namespace
) -> dict[str, object]:
    """Shifts chosen on the even-numbered images, the metric on the odd ones before and after: does it carry over?"""
    even_scores, even_labels = flatten(scores[0::2], labels[0::2], num_classes)
    held_bias = search(even_scores, even_labels, metric, args.candidates, args.rounds)
    del even_scores, even_labels
    odd_scores, odd_labels = flatten(scores[1::2], labels[1::2], num_classes)
    zero = torch.zeros(num_classes)
    return {
        f"odd_{args.metric}_before": metric(confusion(odd_labels, shifted_argmax(odd_scores, zero), num_classes)),
        f"odd_{args.metric}_after": metric(confusion(odd_labels, shifted_argmax(odd_scores, held_bias), num_classes)),
        "even_bias": [round(float(b), 4) for b in held_bias],
    }


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="default: the shipped --model")
    parser.add_argument("--model", default="agrnet_mbv2_celebamask")
    parser.add_argument("--data", default=str(CELEBAMASK_MINI))
    parser.add_argument("--classes", default="celebamask_hq")
    parser.add_argument("--split", default="val")
    parser.add_argument("--metric", choices=["mean_f1", "mean_iou"], default="mean_f1")
    parser.add_argument("--grid", type=float, default=0.5, help="label grid factor for the search")
    parser.add_argument("--candidates", type=float, nargs="+", default=[x / 4 for x in range(-8, 13)])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", required=True)
    parser.add_argument("--out-checkpoint", type=Path, default=None)
    return parser.parse_args()


def main() -> None:
    args = arguments()

    source = Path(args.checkpoint) if args.checkpoint else pretrained_path(args.model)
    model, config = model_from_checkpoint(source)
    model.eval()
    dataset = open_split("folder", args.data, args.split, config.data.canvas, classes=args.classes)
    num_classes = model.num_classes

    def metric(matrix: np.ndarray) -> float:
        return summarize(matrix, dataset.spec)[args.metric]

    start = time.time()
    scores, labels = collect(model, dataset, args.grid)
    holdout = holdout_check(scores, labels, num_classes, metric, args)
    print("holdout (chosen on even, scored on odd):", {k: v for k, v in holdout.items() if "bias" not in k}, flush=True)
    all_scores, all_labels = flatten(scores, labels, num_classes)
    del scores, labels
    bias = search(all_scores, all_labels, metric, args.candidates, args.rounds)
    del all_scores, all_labels
    before, _ = evaluate_dataset(model, dataset, torch.device("cpu"))
    fold_bias(model, bias)
    after, _ = evaluate_dataset(model, dataset, torch.device("cpu"))
    if args.out_checkpoint:
        write_checkpoint(source, model, bias, args.out_checkpoint)

    per_class = {
        name: {"bias": round(float(bias[i]), 4), "f1_before": before["per_class"][name]["f1"],
               "f1_after": after["per_class"][name]["f1"], "iou_before": before["per_class"][name]["iou"],
               "iou_after": after["per_class"][name]["iou"]}
        for i, name in enumerate(dataset.spec.class_names)
    }  # fmt: skip
    result = {
        "question": __doc__.splitlines()[0],
        "checkpoint": str(source),
        "split": args.split,
        "images": len(dataset),
        "canvas": list(config.data.canvas),
        "metric": args.metric,
        "search_grid": args.grid,
        "candidates": args.candidates,
        "holdout": holdout,
        "full_resolution": {
            key: {"before": before[key], "after": after[key]}
            for key in ("mean_f1", "mean_iou", "mean_iou_no_bg", "pixel_accuracy")
        },
        "per_class": per_class,
        "out_checkpoint": str(args.out_checkpoint) if args.out_checkpoint else None,
        "seconds": round(time.time() - start),
    }
    name = f"class_bias_{args.split}_{args.name}"
    write_result(name, result)
    (RESULTS / f"{name}.md").write_text(markdown(result))


def markdown(result: dict) -> str:
    metric, holdout = result["metric"], result["holdout"]
    lines = [
        f"# Per-class logit shift chosen on {result['split']} ({result['images']} images), metric {metric}",
        "",
        f"Checkpoint `{result['checkpoint']}`, canvas {result['canvas']}, search on the label grid x "
        f"{result['search_grid']}. Chosen on the even images, scored on the odd ones: {metric} "
        f"{100 * holdout[f'odd_{metric}_before']:.2f} -> {100 * holdout[f'odd_{metric}_after']:.2f}.",
        "",
        "Full label resolution, chosen and scored on all images of the split (so this is the fit, not a test):",
        "",
        "| measure | before | after |",
        "|---|---|---|",
    ]
    for key, pair in result["full_resolution"].items():
        lines.append(f"| {key} | {100 * pair['before']:.2f} | {100 * pair['after']:.2f} |")
    lines += ["", "| class | shift | F1 before | F1 after | IoU before | IoU after |", "|---|---|---|---|---|---|"]
    for name, row in result["per_class"].items():
        lines.append(
            f"| {name} | {row['bias']:+.2f} | {100 * row['f1_before']:.1f} | {100 * row['f1_after']:.1f} | "
            f"{100 * row['iou_before']:.1f} | {100 * row['iou_after']:.1f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
