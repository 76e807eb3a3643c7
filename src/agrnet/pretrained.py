"""Weights that ship inside the package: a plain name -> file table, checked by sha256 at load.

A shipped file holds the fp16 weights and the resolved training config (no optimizer state), so
``Parser.from_pretrained()`` works offline and out of the box. ``pack_checkpoint`` makes one
from a training checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from agrnet.checkpoints import atomic_save, load_checkpoint, model_from_checkpoint
from agrnet.config import TrainConfig, from_dict
from agrnet.modeling.agrnet import AGRNet


@dataclass(frozen=True)
class ShippedModel:
    """One shipped model: its file under ``agrnet/weights``, that file's sha256, what it is, the licence its
    weights carry (from their training data) and its measured test scores (README model cards)."""

    file: str
    sha256: str
    description: str
    licence: str
    scores: str


PRETRAINED: dict[str, ShippedModel] = {
    "agrnet_mbv2_celebamask": ShippedModel(
        file="agrnet_mbv2_celebamask.pt",
        sha256="ea087de94c4fefda6d36364de690c5a39b3958be0940d3abb827d7a907da19ae",
        description="face parser: AGRNet-MobileNetV2 (OS8, C=96, 384 px canvas) trained on 3,500 CelebAMask-HQ "
        "faces (256 px at OS16, then fine-tuned at 384 px with scales 0.5-1.25, then three times with "
        "class-balanced CE, then twice more adding a Lovasz-softmax term, then three times at output stride 8; "
        "the weights are half the average of the second and third stride-8 runs' best and one sixth each of three "
        "fine-tunes of that average with a mirrored training surround)",
        licence="non-commercial research and educational use only (CelebAMask-HQ licence)",
        scores="test mean F1 84.9 (85.1 with flip, 85.3 with flip and scales (0.833, 1, 1.167)), mean IoU 76.7 "
        "on 500 CelebAMask-HQ faces",
    ),
    "agrnet_mbv2_ccp": ShippedModel(
        file="agrnet_mbv2_ccp.pt",
        sha256="62665a89a5d9485b5fd3a44ec8a3766aaa80a38d7c9d523d1167c5f11634cdf9",
        description="human parser: AGRNet-MobileNetV2 (OS16, C=96, 640x448 canvas) trained on 704 Clothing "
        "Co-Parsing street photos (2,200 iterations at 384x256, then 1,000 with class-balanced CE, then 1,500 at "
        "512x352 on CPU, then 4,095 of batch 16 at 512x352 on an H200, then 500 at 640x448 on CPU); whole photos "
        "of people, no face detection",
        licence="Apache-2.0 (the Clothing Co-Parsing dataset repository's licence)",
        scores="test mean IoU 49.6 (with background; 50.0 with flip, 50.2 with flip and scales (0.8, 1)), "
        "mean F1 57.2, pixel accuracy 94.2 on 100 CCP photos",
    ),
}
DEFAULT_PRETRAINED = "agrnet_mbv2_celebamask"
HUMAN_PARSER = "agrnet_mbv2_ccp"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _weights_dir() -> Path:
    return Path(str(resources.files("agrnet").joinpath("weights")))


def pretrained_path(name: str | None = None) -> Path:
    """The checked file of a shipped model; ValueError if unknown, missing or corrupted."""
    name = name or DEFAULT_PRETRAINED
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; choose one of {sorted(PRETRAINED)}")
    entry = PRETRAINED[name]
    path = _weights_dir() / entry.file
    if not path.is_file():
        raise ValueError(f"{path}: the shipped weights of {name} are missing; reinstall agrnet")
    found = sha256_of(path)
    if found != entry.sha256:
        raise ValueError(
            f"{path}: sha256 {found[:12]}... does not match the expected {entry.sha256[:12]}...; the file is "
            "corrupted or was replaced: reinstall agrnet"
        )
    return path


def describe_models() -> str:
    """One block per shipped model: name, what it is, classes, licence, scores (``agrnet models``)."""
    blocks = []
    for name, entry in PRETRAINED.items():
        config = from_dict(load_checkpoint(pretrained_path(name))["config"])
        spec = config.data.spec()
        height, width = config.data.canvas
        default = " (default)" if name == DEFAULT_PRETRAINED else ""
        blocks.append(
            f"{name}{default}\n  {entry.description}; canvas {height}x{width}\n"
            f"  {spec.num_classes} classes ({spec.subject}s): {', '.join(spec.class_names)}\n"
            f"  licence: {entry.licence}\n  scores: {entry.scores}"
        )
    return "\n\n".join(blocks)


def load_pretrained(name: str | None = None, map_location: str | torch.device = "cpu") -> tuple[AGRNet, TrainConfig]:
    """A shipped model in fp32 (``load_state_dict`` copies the fp16 file into fp32 parameters) and the
    config it was trained with."""
    return model_from_checkpoint(pretrained_path(name), map_location)


def pack_checkpoint(checkpoint: str | Path, out: str | Path, metrics: dict[str, Any] | None = None) -> str:
    """Write a training checkpoint's weights in fp16 with its config (and optional test metrics) to
    ``out``; returns the new file's sha256 for the ``PRETRAINED`` table."""
    state = load_checkpoint(checkpoint)
    config = from_dict(state["config"])
    weights = {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}
    packed = {"config": dataclasses.asdict(config), "model": weights, "metrics": metrics or {}}
    atomic_save(packed, Path(out))
    return sha256_of(Path(out))
