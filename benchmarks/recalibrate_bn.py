"""Recompute a checkpoint's BatchNorm running statistics on its own training pipeline, written as a checkpoint.

A weight average ("soup", ``average_weights.py``) averages the running means and variances of its members, which
need not be the statistics of the averaged network; stochastic weight averaging recomputes them for that reason
(Izmailov et al., 2018). This does the same with ``torch.optim.swa_utils.update_bn`` (a cumulative average over
the batches, train mode, no gradients): training-split faces drawn through the checkpoint's config (canvas, scale
range, flip, surround), everything else unchanged. Optimizer state is dropped, as in ``average_weights.py``.

    python recalibrate_bn.py ../runs/soup6.pt --batches 128 --out ../runs/soup6_bn.pt
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import torch
from average_weights import without_training_state
from torch.optim.swa_utils import update_bn
from tqdm import tqdm

from agrnet.checkpoints import atomic_save, load_checkpoint, model_from_checkpoint
from agrnet.config import TrainConfig
from agrnet.data.datasets import ParsingDataset, open_split
from agrnet.data.sampling import EpochSampler


def training_faces(config: TrainConfig, seed: int) -> ParsingDataset:
    """The train split as the checkpoint's run saw it (its augmentation), keys seeded by ``seed``."""
    data = config.data
    return open_split(data.kind, data.root, "train", data.canvas, data.augmentation(), seed, data.classes)


def image_batches(dataset: ParsingDataset, batches: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """(B, 3, H, W) training canvases, ``batches`` of them, in the order one training epoch would draw."""
    sampler = EpochSampler(len(dataset), seed, 0, 1, None)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=1)
    for batch in tqdm(islice(loader, batches), total=batches, desc="BatchNorm statistics"):
        yield batch["image"]


def recalibrate(path: Path, batches: int, batch_size: int, seed: int) -> dict[str, object]:
    model, config = model_from_checkpoint(path)
    dataset = training_faces(config, seed)
    if batches * batch_size > len(dataset):
        raise SystemExit(f"{batches} x {batch_size} faces asked, the train split has {len(dataset)}")
    update_bn(image_batches(dataset, batches, batch_size, seed), model)
    state = without_training_state(load_checkpoint(path))
    return {**state, "model": model.state_dict(), "bn_recalibrated": {"batches": batches, "batch_size": batch_size}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batches", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8, help="the training batch (default 8, as trained)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    atomic_save(recalibrate(args.checkpoint, args.batches, args.batch_size, args.seed), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
