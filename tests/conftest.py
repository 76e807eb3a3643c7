from __future__ import annotations

import pytest
import torch

from agrnet.build import ModelConfig


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tiny_config() -> ModelConfig:
    """A model small enough for CPU tests that still has every part of the full AGRNet."""
    return ModelConfig(num_classes=5, backbone="resnet18", channels=16, context_channels=32, edge_channels=8, top_k=2)
