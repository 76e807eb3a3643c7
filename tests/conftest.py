from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agrnet.build import ModelConfig
from agrnet.config import TrainConfig, load_config

# A training setup small enough for CPU tests (about 0.1 s per iteration) that keeps every part.
TINY_TRAINING = [
    "model.backbone=resnet18", "model.channels=16", "model.context_channels=32", "model.edge_channels=8",
    "model.top_k=2", "data.size=48", "data.workers=0", "optim.batch_size=4", "log_every=1", "val_every=1000",
    # Pinned here so that the tests do not follow the demo's choices (ImageNet MobileNetV2, AdamW).
    "model.pretrained=null", "model.output_stride=8", "optim.name=sgd", "optim.lr=0.01",
]  # fmt: skip


def tiny_train_config(data_root: Path, out_dir: Path, *extra: str) -> TrainConfig:
    return load_config("synthetic", [f"data.root={data_root}", f"out_dir={out_dir}", *TINY_TRAINING, *extra])


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_config() -> ModelConfig:
    """A model small enough for CPU tests that still has every part of the full AGRNet."""
    return ModelConfig(num_classes=5, backbone="resnet18", channels=16, context_channels=32, edge_channels=8, top_k=2)
