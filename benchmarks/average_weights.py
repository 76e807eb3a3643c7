"""Uniform average of training checkpoints of one architecture (a "model soup"), written as a checkpoint.

Every floating-point tensor of the model, BatchNorm statistics included, is averaged; integer tensors (BatchNorm's
batch counters), the config and the rest come from the last checkpoint named. Optimizer state is dropped, so the
result can be evaluated, packed or used with ``init_from``, not resumed.

    python average_weights.py ../runs/face384_os8b/best.pt ../runs/face384_os8c/best.pt --out ../runs/soup_os8bc.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from agrnet.checkpoints import atomic_save, load_checkpoint


def average_checkpoints(paths: list[Path]) -> dict[str, object]:
    states = [load_checkpoint(p) for p in paths]
    models = [s["model"] for s in states]
    if any(m.keys() != models[0].keys() for m in models):
        raise SystemExit("the checkpoints hold different parameters: not one architecture")
    averaged = {}
    for name, last in models[-1].items():
        if last.is_floating_point():
            averaged[name] = torch.stack([m[name].float() for m in models]).mean(0).to(last.dtype)
        else:
            averaged[name] = last
    return {**without_training_state(states[-1]), "model": averaged, "averaged_from": [str(p) for p in paths]}


def without_training_state(state: dict[str, object]) -> dict[str, object]:
    """A checkpoint without what only resuming needs (optimizer, scheduler, scaler)."""
    return {k: v for k, v in state.items() if k not in ("optimizer", "scheduler", "scaler")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if len(args.checkpoints) < 2:
        raise SystemExit("name at least two checkpoints")
    atomic_save(average_checkpoints(args.checkpoints), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
