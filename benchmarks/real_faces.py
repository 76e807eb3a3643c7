"""Question: how well does a model parse real faces? Scores on ../shared/data/celebamask-mini.

For a checkpoint (default: the shipped model through ``Parser.from_pretrained()``): one
confusion matrix per split at the labels' 512x512, per-class F1 of all 19 classes, mean F1 without
background, mean IoU; optionally with flip test-time augmentation; and, with ``--detect-faces``, the
same test photos treated as in-the-wild photos (MTCNN detection, alignment, parsing, paste-back).
Writes benchmarks/results/real_faces_<name>.json and .md.
"""

from __future__ import annotations

import argparse
import json

import torch
from tqdm import tqdm

from agrnet.checkpoints import model_from_checkpoint
from agrnet.data.datasets import ParsingDataset, open_split
from agrnet.evaluate import evaluate_dataset
from agrnet.inference import Parser
from agrnet.metrics import ConfusionMatrix, format_results, summarize
from agrnet.pretrained import load_pretrained
from common import CELEBAMASK_MINI, RESULTS, write_result


def score_detected(parser: Parser, dataset: ParsingDataset) -> tuple[dict, int]:
    """Every photo through detect_faces=True; returns the summary and how many photos had no face."""
    matrix = ConfusionMatrix(dataset.spec.num_classes)
    missed = 0
    for index in tqdm(range(len(dataset)), desc="detect+parse", unit="img"):
        image, labels = dataset.load(index)
        result = parser.predict(image, detect_faces=True)
        missed += not result.faces
        matrix.update(torch.from_numpy(result.labels), torch.from_numpy(labels))
    return summarize(matrix.matrix, dataset.spec), missed


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__)
    args.add_argument("--checkpoint", help="a training checkpoint (default: the shipped model)")
    args.add_argument("--name", default="shipped")
    args.add_argument("--data", default=str(CELEBAMASK_MINI))
    args.add_argument("--splits", nargs="+", default=["val", "test"])
    args.add_argument("--flip", action="store_true", help="also score with flip test-time augmentation")
    args.add_argument("--detect-faces", action="store_true", help="also score test photos through detection")
    args.add_argument("--limit", type=int, default=0, help="score only the first N images per split")
    opts = args.parse_args()
    torch.set_num_threads(2)
    model, config = model_from_checkpoint(opts.checkpoint) if opts.checkpoint else load_pretrained()
    report: dict[str, object] = {"checkpoint": opts.checkpoint or "Parser.from_pretrained()", "scores": {}}
    sections = []
    for split in opts.splits:
        dataset = open_split("folder", opts.data, split, config.data.size, classes="celebamask_hq")
        if opts.limit:
            dataset.samples = dataset.samples[: opts.limit]
        for flip in [False, True] if opts.flip else [False]:
            summary, _ = evaluate_dataset(model, dataset, torch.device("cpu"), flip=flip)
            key = f"{split}{'_flip' if flip else ''}"
            report["scores"][key] = summary  # type: ignore[index]
            sections.append(f"### {key} ({len(dataset)} images)\n\n{format_results(summary, dataset.spec)}")
            print(sections[-1], flush=True)
        if opts.detect_faces and split == "test":
            parser = Parser(config.data.spec(), config.data.size, model=model)
            summary, missed = score_detected(parser, dataset)
            report["scores"]["test_detect_faces"] = {**summary, "photos_without_face": missed}  # type: ignore[index]
            sections.append(f"### test through detect_faces=True ({missed} photos without a face found)\n\n"
                            f"{format_results(summary, dataset.spec)}")  # fmt: skip
            print(sections[-1], flush=True)
    path = write_result(f"real_faces_{opts.name}", report)
    (RESULTS / f"real_faces_{opts.name}.md").write_text(
        f"# Real CelebAMask-HQ faces: {report['checkpoint']} (F1 / IoU in %)\n\n" + "\n\n".join(sections) + "\n"
    )
    print(f"wrote {path}")
    print(json.dumps({k: round(100 * v["mean_f1"], 2) for k, v in report["scores"].items()}))  # type: ignore[union-attr]


if __name__ == "__main__":
    main()
