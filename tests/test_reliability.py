"""Bad input everywhere a user gives us data, numerical faults, safe loading and fuzzing."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_train_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from agrnet.checkpoints import load_checkpoint
from agrnet.cli import main
from agrnet.data.classes import LAPA
from agrnet.data.datasets import DatasetError, load_image
from agrnet.data.synth import generate
from agrnet.data.transforms import warp_pair
from agrnet.edges import label_edges
from agrnet.metrics import ConfusionMatrix, summarize
from agrnet.train import NonFiniteLossError, train


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reliability")
    generate(root, 12, 48, progress=False)
    return root


@pytest.fixture(scope="module")
def checkpoint(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ckpt")
    return train(tiny_train_config(data_root, out, "iterations=2"), progress=False)


def test_check_data_lists_every_problem_and_continues(data_root: Path, tmp_path: Path, capsys) -> None:
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(data_root, root)
    train_images = sorted((root / "train" / "images").iterdir())
    train_images[0].write_bytes(b"")  # zero-byte image
    train_images[1].write_bytes(train_images[2].read_bytes()[:200])  # truncated JPEG
    (root / "train" / "images" / "zz_notes.jpg").write_text("not an image")  # wrong extension
    (root / "train" / "labels" / "zz_notes.png").write_bytes(
        (root / "train" / "labels" / train_images[3].with_suffix(".png").name).read_bytes()
    )
    Image.fromarray(np.full((48, 48), 77, np.uint8)).save(
        root / "train" / "labels" / train_images[4].with_suffix(".png").name
    )
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(
        root / "train" / "labels" / train_images[5].with_suffix(".png").name
    )
    Image.fromarray(np.zeros((20, 48), np.uint8)).save(
        root / "train" / "labels" / train_images[6].with_suffix(".png").name
    )
    shutil.rmtree(root / "val")
    assert main(["check-data", str(root), "--kind", "synthetic"]) == 1
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert len(lines) == 7, out
    assert f"{train_images[0].name}: cannot read image (empty file)" in out
    assert f"{train_images[1].name}: cannot read image" in out
    assert "zz_notes.jpg: cannot read image" in out
    assert "label values [77] are outside 0..10" in out
    assert "single-channel index PNGs, got mode RGB" in out
    assert "image size (48, 48) differs from its labels (20, 48)" in out
    assert "[val]" in out and "missing folder(s) val/images, val/labels" in out
    assert "7 problem(s) found" in out


def test_evaluate_skips_bad_samples_and_reports(checkpoint: Path, data_root: Path, tmp_path: Path, capsys) -> None:
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    bad = sorted((root / "train" / "images").iterdir())[0]
    bad.write_bytes(b"garbage")
    status = main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(root), "--split", "train",
                   "--device", "cpu", "--workers", "0"])  # fmt: skip
    out = capsys.readouterr().out
    assert status == 1
    assert "scored 9 of 10 images; 1 skipped" in out and bad.name in out


def test_checkpoint_of_another_class_count_is_refused_clearly(checkpoint: Path, tmp_path: Path, capsys) -> None:
    celeb = tmp_path / "celeb"
    (celeb / "CelebA-HQ-img").mkdir(parents=True)
    (celeb / "CelebAMask-HQ-mask-anno" / "0").mkdir(parents=True)
    (celeb / "CelebA-HQ-to-CelebA-mapping.txt").write_text("idx orig_idx orig_file\n0 190000 a.jpg\n")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(celeb / "CelebA-HQ-img" / "0.jpg")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(celeb / "CelebAMask-HQ-mask-anno" / "0" / "00000_skin.png")
    status = main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(celeb), "--kind", "celebamask_hq"])
    assert status == 2
    assert "the model predicts 11 classes but celebamask_hq has 19" in capsys.readouterr().err


def test_resume_with_another_backbone_is_refused(checkpoint: Path, data_root: Path) -> None:
    config = tiny_train_config(data_root, checkpoint.parent, "iterations=4", "model.backbone=resnet34")
    with pytest.raises(ValueError, match=r"trained with another model .*'backbone': \('resnet18', 'resnet34'\)"):
        train(config, resume=True, progress=False)


class Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this ran while loading",))


def test_untrusted_pickle_and_foreign_files_are_refused(tmp_path: Path, capsys) -> None:
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"model": Payload(), "config": {}}))
    with pytest.raises(ValueError, match="weights_only=True; files holding pickled code are refused"):
        load_checkpoint(evil)
    assert "this ran while loading" not in capsys.readouterr().out
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an agrnet checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    assert main(["predict", str(tmp_path / "missing.pt"), "x.jpg", "--out", str(tmp_path)]) == 2


def test_truncated_checkpoint_is_named_as_incomplete(checkpoint: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.pt"
    cut.write_bytes(checkpoint.read_bytes()[:50_000])
    with pytest.raises(ValueError, match=r"cut.pt: not a loadable agrnet checkpoint .*is the file complete"):
        load_checkpoint(cut)


def test_nonfinite_loss_stops_with_step_and_terms(data_root: Path, tmp_path: Path) -> None:
    config = tiny_train_config(data_root, tmp_path, "iterations=30", "optim.lr=1e12")
    with pytest.raises(NonFiniteLossError, match=r"non-finite (loss|gradient) at iteration \d+ \(epoch \d+\): final="):
        train(config, progress=False)
    state = load_checkpoint(tmp_path / "nonfinite.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_nonfinite_loss_can_be_skipped(data_root: Path, tmp_path: Path) -> None:
    config = tiny_train_config(data_root, tmp_path, "iterations=30", "optim.lr=1e12", "on_nonfinite=skip")
    state = load_checkpoint(train(config, progress=False))
    assert state["iteration"] == 30
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


label_maps = st.integers(1, 24).flatmap(
    lambda h: st.integers(1, 24).flatmap(
        lambda w: st.lists(st.sampled_from([0, 1, 2, 3, 10, 255]), min_size=h * w, max_size=h * w).map(
            lambda v: np.array(v, dtype=np.uint8).reshape(h, w)
        )
    )
)


@settings(max_examples=60, deadline=None)
@given(label_maps)
def test_edges_match_a_naive_loop(labels: np.ndarray) -> None:
    got = label_edges(torch.from_numpy(labels.astype(np.int64))).numpy()
    h, w = labels.shape
    for y in range(h):
        for x in range(w):
            expected = labels[y, x] != 255 and any(
                0 <= y + dy < h and 0 <= x + dx < w and labels[y + dy, x + dx] not in (255, labels[y, x])
                for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))
            )
            assert got[y, x] == expected


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(label_maps, st.floats(0.75, 1.25), st.floats(-30, 30), st.booleans(), st.integers(8, 40))
def test_warp_keeps_label_values_and_padding(
    labels: np.ndarray, scale: float, angle: float, flip: bool, size: int
) -> None:
    image = np.repeat(labels[..., None], 3, axis=2)
    lut = LAPA.flip_lut() if flip else None
    out_image, out_labels = warp_pair(image, labels, size, scale, angle, lut)
    assert out_image.shape == (size, size, 3) and out_labels is not None and out_labels.shape == (size, size)
    allowed = set(np.unique(labels if lut is None else lut[labels]).tolist()) | {255}
    assert set(np.unique(out_labels).tolist()) <= allowed


@settings(max_examples=60, deadline=None)
@given(label_maps, st.integers(0, 2**32 - 1))
def test_metrics_stay_in_range_and_count_valid_pixels(labels: np.ndarray, seed: int) -> None:
    target = torch.from_numpy(labels.astype(np.int64))
    target[target == 10] = 4
    prediction = torch.from_numpy(np.random.default_rng(seed).integers(0, 5, labels.shape))
    cm = ConfusionMatrix(5)
    cm.update(prediction, target)
    assert int(cm.matrix.sum()) == int((target != 255).sum())
    spec = type(LAPA)("t", ("a", "b", "c", "d", "e"), ())
    summary = summarize(cm.matrix, spec)
    for key in ("mean_f1", "mean_iou", "mean_iou_no_bg", "mean_accuracy", "pixel_accuracy"):
        value = summary[key]
        assert np.isnan(value) or 0.0 <= value <= 1.0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2048), st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM"]))
def test_random_bytes_to_the_image_loader(tmp_path: Path, body: bytes, magic: bytes) -> None:
    path = tmp_path / "fuzz.jpg"
    path.write_bytes(magic + body)
    try:
        image = load_image(path)
    except DatasetError as error:
        assert "fuzz.jpg" in str(error)
    else:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
