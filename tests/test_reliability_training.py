"""Round 2 of the reliability checks for training and data: disk full, concurrent runs, bad and
all-ignored samples."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAINING, tiny_train_config
from PIL import Image

from agrnet import train as train_module
from agrnet.checkpoints import CheckpointWriteError, atomic_save, load_checkpoint
from agrnet.cli import main
from agrnet.data.synth import generate
from agrnet.train import lock_out_dir, train


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reliability2")
    generate(root, 12, 48, progress=False)
    return root


def _train_args(data_root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", "synthetic", f"data.root={data_root}", f"out_dir={out}", *TINY_TRAINING, *extra]


def _messages(stderr: str) -> list[str]:
    """The error lines of stderr (the progress bar shares it), after checking there is no traceback."""
    assert "Traceback" not in stderr, stderr
    return re.findall(r"agrnet train: error: [^\r\n]*", stderr)


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
        RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/0"),
    ],
)
def test_disk_full_while_checkpointing_keeps_the_old_file(tmp_path: Path, monkeypatch, failure: Exception) -> None:
    path = tmp_path / "last.pt"
    atomic_save({"iteration": 1}, path)

    def full_disk(state: object, f) -> None:
        f.write(b"partial")
        raise failure

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(
        CheckpointWriteError, match=r"cannot write checkpoint .*last.pt \(.*MB free there\); the previous"
    ):
        atomic_save({"iteration": 2}, path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # the temporary file is gone
    assert torch.load(path, weights_only=True) == {"iteration": 1}


def test_disk_full_during_training_is_one_line_exit_1(data_root: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    real_save, calls = torch.save, []

    def full_after_first(state: object, f) -> None:
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(state, f)

    monkeypatch.setattr(torch, "save", full_after_first)
    assert main(_train_args(data_root, tmp_path, "iterations=3", "checkpoint_every=1")) == 1
    (err,) = _messages(capsys.readouterr().err)
    assert "No space left on device" in err and "continue with --resume" in err, err
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 1
    assert not list(tmp_path.glob(".*.tmp*"))


def test_a_second_run_in_the_same_folder_is_refused(data_root: Path, tmp_path: Path, capsys) -> None:
    tmp_path.mkdir(exist_ok=True)
    with lock_out_dir(tmp_path):
        assert main(_train_args(data_root, tmp_path, "iterations=1")) == 2
    err = capsys.readouterr().err
    assert f"is in use by another training run (pid {os.getpid()} on " in err and "since" in err
    assert not (tmp_path / "last.pt").exists()


def test_a_crashed_holder_does_not_block_the_folder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from agrnet.train import lock_out_dir\n"
         f"with lock_out_dir(Path({str(tmp_path)!r})):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
    holder.kill()
    holder.wait()
    with lock_out_dir(tmp_path):
        assert f"pid {os.getpid()}" in (tmp_path / ".lock").read_text()


@pytest.mark.parametrize("make", ["file", "unwritable"])
def test_an_unusable_out_dir_is_a_usage_error(data_root: Path, tmp_path: Path, monkeypatch, capsys, make: str) -> None:
    out = tmp_path / "out"
    if make == "file":
        out.write_text("x")
        expected = "is an existing file"
    else:
        monkeypatch.setattr("tempfile.TemporaryFile", _read_only)
        expected = "is not writable (Read-only file system)"
    assert main(_train_args(data_root, out, "iterations=1")) == 2
    assert expected in capsys.readouterr().err


def _read_only(*args: object, **kwargs: object) -> None:
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))


@pytest.fixture
def ignored_root(data_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the data whose first training label map is 255 everywhere."""
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    label = sorted((root / "train" / "labels").iterdir())[0]
    Image.fromarray(np.full((48, 48), 255, np.uint8)).save(label)
    return root, label


def test_check_data_reports_all_ignored_labels(ignored_root: tuple[Path, Path], capsys) -> None:
    root, label = ignored_root
    assert main(["check-data", str(root), "--kind", "synthetic", "--splits", "train"]) == 1
    assert f"[train] {label}: every label is 255 (ignored): nothing to train on or score" in capsys.readouterr().out


def test_a_bad_sample_stops_training_with_one_line(ignored_root: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    root, label = ignored_root
    assert main(_train_args(root, tmp_path / "run", "iterations=6", "data.workers=1")) == 2
    (err,) = _messages(capsys.readouterr().err)
    assert f"{label}: every label is 255" in err
    assert f"agrnet check-data {root} --kind synthetic" in err and "data.skip_bad_samples=true" in err


def test_bad_samples_can_be_skipped_and_are_listed(ignored_root: tuple[Path, Path], tmp_path: Path, caplog) -> None:
    root, label = ignored_root
    config = tiny_train_config(root, tmp_path / "run", "iterations=6", "data.skip_bad_samples=true")
    state = load_checkpoint(train(config, progress=False))
    assert state["iteration"] == 6
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert f"skipped 1 bad sample(s) (data.skip_bad_samples=true):\n  {label}: every label is 255" in caplog.text


def test_no_step_runs_on_fewer_than_two_samples() -> None:
    assert not train_module._can_step(1, torch.device("cpu"))
    assert train_module._can_step(2, torch.device("cpu"))


@pytest.fixture(scope="module")
def checkpoint(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tiny_train_config(data_root, tmp_path_factory.mktemp("ckpt"), "iterations=2"), progress=False)


def test_evaluate_with_every_label_ignored_fails_clearly(checkpoint: Path, data_root: Path, tmp_path: Path, capsys):
    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    for label in (root / "test" / "labels").iterdir():
        Image.fromarray(np.full((48, 48), 255, np.uint8)).save(label)
    status = main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(root), "--workers", "0"])
    captured = capsys.readouterr()
    assert status == 1 and "nan" not in captured.out
    assert "agrnet evaluate: error: none of the 1 images could be scored:" in captured.err
    assert "every label is 255 (ignored)" in captured.err


def test_evaluate_json_into_a_missing_folder_keeps_the_result(checkpoint: Path, data_root: Path, tmp_path: Path):
    target = tmp_path / "new" / "deeper" / "result.json"
    args = ["evaluate", "--checkpoint", str(checkpoint), "--data", str(data_root), "--workers", "0"]
    assert main([*args, "--json", str(target)]) == 0
    assert "confusion_matrix" in target.read_text()
    assert main([*args, "--json", str(tmp_path)]) == 2  # a folder: refused before evaluating


def test_evaluate_batch_size_is_checked_like_the_config(checkpoint: Path, capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["evaluate", "--checkpoint", str(checkpoint), "--batch-size", "0"])
    assert caught.value.code == 2 and "--batch-size: must be at least 1, got 0" in capsys.readouterr().err
