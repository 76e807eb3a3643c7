"""Round 2 of the reliability checks: settings, Python API arguments, outputs and files of the wrong kind."""

from __future__ import annotations

import pytest

from agrnet.config import ConfigError, load_config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("checkpoint_every=0", "checkpoint_every must be at least 1, got 0"),
        ("val_every=0", "val_every must be at least 1, got 0"),
        ("log_every=0", "log_every must be at least 1, got 0"),
        ("optim.batch_size=0", "optim.batch_size must be at least 2, got 0"),
        ("iterations=0", "iterations must be at least 1, got 0"),
        ("iterations=-5", "iterations must be at least 1, got -5"),
        ("data.size=0", "data.size must be at least 32, got 0"),
        ("data.workers=-1", "data.workers must be at least 0, got -1"),
        ("threads=-1", "threads must be at least 0, got -1"),
        ("model.channels=0", "model.channels must be at least 1, got 0"),
        ("model.top_k=0", "model.top_k must be at least 1, got 0"),
        ("optim.poly_power=-1", r"optim.poly_power must be a finite number >= 0, got -1.0"),
        ("optim.lr=nan", "optim.lr must be a finite number > 0, got nan"),
        ("optim.lr=0", "optim.lr must be a finite number > 0, got 0.0"),
        ("loss.final=inf", "loss.final must be a finite number >= 0, got inf"),
        ("device=banana", "device must be auto, cpu, cuda, cuda:N or mps, got 'banana'"),
    ],
)
def test_settings_are_range_checked_before_any_work(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_config("synthetic", [override])
    assert "\n" not in str(caught.value)


def test_boundary_values_are_accepted() -> None:
    config = load_config("synthetic", ["data.size=32", "optim.poly_power=0", "threads=0", "device=cuda:1"])
    assert config.data.size == 32 and config.optim.poly_power == 0.0


def test_a_missing_device_is_refused_before_training() -> None:
    from agrnet.train import resolve_device

    with pytest.raises(ValueError, match=r"device cuda:7: this machine has \d+ CUDA device\(s\)"):
        resolve_device("cuda:7")
