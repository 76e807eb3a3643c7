from __future__ import annotations

import ast
import csv
import logging
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAINING, tiny_train_config

from agrnet.checkpoints import load_checkpoint, model_from_checkpoint
from agrnet.config import ConfigError, load_config
from agrnet.data.datasets import class_counts, class_frequencies, load_labels, open_split
from agrnet.data.sampling import repeat_factors
from agrnet.data.synth import generate
from agrnet.losses import balanced_class_weights
from agrnet.train import train


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, 30, 48, seed=1, progress=False)
    return root


def _losses(out: Path) -> list[float]:
    with open(out / "log.csv") as f:
        return [ast.literal_eval(row["loss_terms"])["total"] for row in csv.DictReader(f)]


def test_smoke_training_lowers_the_loss(synthetic_root: Path, tmp_path: Path) -> None:
    config = tiny_train_config(synthetic_root, tmp_path / "run", "iterations=40", "val_every=40")
    last = train(config, progress=False)
    losses = _losses(tmp_path / "run")
    assert len(losses) == 40
    first, final = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert final < 0.8 * first, f"loss did not fall: {first:.3f} -> {final:.3f}"
    state = load_checkpoint(last)
    assert state["iteration"] == 40 and state["config"]["optim"]["lr"] == 0.01  # resolved config stored
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "config.yaml").is_file()
    model, stored = model_from_checkpoint(last)
    assert stored == config and model.num_classes == 11


def test_snapshots_are_kept_every_n_iterations_and_cleared_by_overwrite(synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "swa"
    train(tiny_train_config(synthetic_root, out, "iterations=5", "snapshot_every=2"), progress=False)
    assert sorted(p.name for p in out.glob("snapshot_*.pt")) == ["snapshot_000002.pt", "snapshot_000004.pt"]
    second, fourth = (load_checkpoint(out / f"snapshot_00000{i}.pt") for i in (2, 4))
    assert (second["iteration"], fourth["iteration"]) == (2, 4)
    assert any(not torch.equal(second["model"][k], fourth["model"][k]) for k in second["model"])  # weights moved

    with pytest.raises(ValueError, match="snapshot_000002.pt"):  # a new run would mix its snapshots with these
        train(tiny_train_config(synthetic_root, out, "iterations=1"), progress=False)
    train(tiny_train_config(synthetic_root, out, "iterations=1"), progress=False, overwrite=True)
    assert not list(out.glob("snapshot_*.pt"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_killed_run_resumes_to_the_same_weights(synthetic_root: Path, tmp_path: Path, sig: signal.Signals) -> None:
    extra = ["iterations=10", "checkpoint_every=1"]
    reference = train(tiny_train_config(synthetic_root, tmp_path / "straight", *extra), progress=False)

    out = tmp_path / "killed"
    args = [f"data.root={synthetic_root}", f"out_dir={out}", *TINY_TRAINING, *extra]
    process = subprocess.Popen(
        [sys.executable, "-m", "agrnet.cli", "train", "--config", "synthetic", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "log.csv").is_file() and len(_losses(out)) >= 4):
        time.sleep(0.05)
    process.send_signal(sig)
    process.wait(timeout=60)
    stopped_at = load_checkpoint(out / "last.pt")["iteration"]  # loadable: never half-written
    assert 1 <= stopped_at < 10, f"the run was not interrupted mid-way (stopped at {stopped_at})"
    if sig != signal.SIGKILL:  # SIGINT and SIGTERM save and exit cleanly
        assert process.returncode == 0 and b"continue with --resume" in process.stderr.read()

    resumed = train(tiny_train_config(synthetic_root, out, *extra), resume=True, progress=False)
    a, b = load_checkpoint(reference)["model"], load_checkpoint(resumed)["model"]
    assert load_checkpoint(resumed)["iteration"] == 10
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=f"{key} differs after resume")


def test_init_from_starts_a_fresh_run_from_the_source_weights(synthetic_root: Path, tmp_path: Path) -> None:
    source = train(tiny_train_config(synthetic_root, tmp_path / "source", "iterations=3"), progress=False)
    # lr ~ 0 so that one step leaves the parameters where the source put them
    extra = [f"init_from={source}", "iterations=1", "optim.lr=1e-12", "optim.momentum=0"]
    tuned = train(tiny_train_config(synthetic_root, tmp_path / "tuned", *extra), progress=False)
    before, after = load_checkpoint(source), load_checkpoint(tuned)
    assert after["iteration"] == 1  # the schedule starts fresh, not at the source's iteration 3
    fresh = train(tiny_train_config(synthetic_root, tmp_path / "fresh", *extra[1:]), progress=False)
    names = [name for name, _ in model_from_checkpoint(source)[0].named_parameters()]
    for name in names:
        torch.testing.assert_close(after["model"][name], before["model"][name], msg=f"{name} not taken over")
    assert any(not torch.equal(load_checkpoint(fresh)["model"][n], before["model"][n]) for n in names)
    wider = tiny_train_config(synthetic_root, tmp_path / "wider", f"init_from={source}", "model.channels=24")
    with pytest.raises(ValueError, match="its model differs from this run's.*channels"):
        train(wider, progress=False)


def test_init_from_takes_a_stride_16_model_to_stride_8(synthetic_root: Path, tmp_path: Path) -> None:
    mobilenet = ["model.backbone=mobilenet_v2", "iterations=1"]
    source = train(tiny_train_config(synthetic_root, tmp_path / "os16", *mobilenet, "model.output_stride=16"),
                   progress=False)  # fmt: skip
    extra = [*mobilenet, "model.output_stride=8", f"init_from={source}", "optim.lr=1e-12", "optim.momentum=0"]
    tuned = train(tiny_train_config(synthetic_root, tmp_path / "os8", *extra), progress=False)
    model, config = model_from_checkpoint(tuned)
    assert config.model.output_stride == 8 and model.backbone.feature_info[-1].stride == 8
    before, after = load_checkpoint(source)["model"], load_checkpoint(tuned)["model"]
    for name, _ in model.named_parameters():
        torch.testing.assert_close(after[name], before[name], msg=f"{name} not taken over")


def test_distillation_trains_towards_the_teacher(synthetic_root: Path, tmp_path: Path) -> None:
    source = train(tiny_train_config(synthetic_root, tmp_path / "teacher", "iterations=3"), progress=False)
    extra = [f"distill_from={source}", "loss.distill=1.0", "iterations=6"]
    train(tiny_train_config(synthetic_root, tmp_path / "student", *extra), progress=False)
    with open(tmp_path / "student" / "log.csv") as f:
        terms = [ast.literal_eval(row["loss_terms"]) for row in csv.DictReader(f)]
    assert len(terms) == 6 and all(math.isfinite(t["distill"]) and t["distill"] > 0 for t in terms)
    for alone in ([f"distill_from={source}"], ["loss.distill=1.0"]):
        with pytest.raises(ConfigError, match="go together"):
            tiny_train_config(synthetic_root, tmp_path / "bad", *alone)
    other_classes = tiny_train_config(synthetic_root, tmp_path / "bad", "distill_from=agrnet_mbv2_celebamask",
                                      "loss.distill=1.0")  # fmt: skip
    with pytest.raises(ValueError, match="it parses celebamask_hq, this run synthetic"):
        train(other_classes, progress=False)


def test_class_balance_weighs_by_the_train_label_frequencies(
    synthetic_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    split = open_split("synthetic", str(synthetic_root), "train", 48)
    frequencies = class_frequencies(split)
    counts = sum(np.bincount(load_labels(s, 11).ravel(), minlength=256)[:11] for s in split.samples)
    np.testing.assert_allclose(frequencies, counts / counts.sum())
    with caplog.at_level(logging.INFO, logger="agrnet.train"):
        config = tiny_train_config(synthetic_root, tmp_path / "run", "iterations=3", "loss.class_balance=0.5")
        train(config, progress=False)
    assert all(np.isfinite(_losses(tmp_path / "run")))
    weights = balanced_class_weights(torch.from_numpy(frequencies), 0.5)
    rarest, commonest = int(frequencies.argmin()), int(frequencies.argmax())
    assert weights[rarest] > 1 > weights[commonest]
    names = split.spec.class_names
    assert f"{names[rarest]}={weights[rarest]:.2f}" in caplog.text
    with pytest.raises(ConfigError, match="loss.class_balance must be a finite number >= 0"):
        load_config("synthetic", ["loss.class_balance=-0.5"])


def test_repeat_threshold_repeats_the_images_of_rare_classes(
    synthetic_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    split = open_split("synthetic", str(synthetic_root), "train", 48)
    presence = class_counts(split) > 0
    expected = repeat_factors(presence, 1.0)
    assert expected.max() > 1, "the synthetic split has no class rarer than the others"
    with caplog.at_level(logging.INFO, logger="agrnet.train"):
        config = tiny_train_config(synthetic_root, tmp_path / "run", "iterations=3", "data.repeat_threshold=1")
        train(config, progress=False)
    assert all(np.isfinite(_losses(tmp_path / "run")))
    repeated = int((expected > 1).sum())
    assert f"{repeated} of {len(expected)} images repeated, up to {expected.max():.2f} times" in caplog.text
    with pytest.raises(ConfigError, match="data.repeat_threshold is a share of images in"):
        load_config("synthetic", ["data.repeat_threshold=2"])


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown config key optim.lrr; did you mean optim.lr"):
        load_config("synthetic", ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match="iterations must be an integer"):
        load_config("synthetic", ["iterations=many"])
    with pytest.raises(ConfigError, match="data.scale_min and data.scale_max must satisfy"):
        load_config("synthetic", ["data.scale_min=1.3"])
    with pytest.raises(ConfigError, match="data.degrade is a probability"):
        load_config("synthetic", ["data.degrade=1.5"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        load_config("synthetic", ["lr"])
    with pytest.raises(ConfigError, match="neither a file nor one of"):
        load_config("lapaa")
    assert load_config("configs/lapa.yaml").model.backbone == "resnet101"
    assert load_config("synthetic", ["optim.lr=1e-3"]).optim.lr == 1e-3
    assert load_config("synthetic", ["ablation=baseline"]).resolved_model().projection == "none"


def test_torchrun_two_processes_on_cpu(synthetic_root: Path, tmp_path: Path) -> None:
    """The torchrun environment selects DistributedDataParallel (gloo on CPU); rank 0 writes."""
    out = tmp_path / "ddp"
    args = [f"data.root={synthetic_root}", f"out_dir={out}", *TINY_TRAINING, "iterations=3", "optim.batch_size=2"]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "agrnet.cli", "train", "--config", "synthetic", *args],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    state = load_checkpoint(out / "last.pt")
    assert state["iteration"] == 3
    with open(out / "log.csv") as f:
        assert len(list(csv.DictReader(f))) == 3  # one writer: rank 0
