"""Multi-scale test-time augmentation (``agrnet.tta``) in ``Parser``, ``evaluate_dataset`` and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_train_config
from PIL import Image
from skimage import data

from agrnet.checkpoints import model_from_checkpoint
from agrnet.cli import main
from agrnet.data.datasets import open_split
from agrnet.data.synth import generate
from agrnet.data.transforms import to_tensor, unletterbox, warp_pair
from agrnet.distill import TtaTeacher
from agrnet.evaluate import evaluate_dataset
from agrnet.inference import Parser
from agrnet.metrics import ConfusionMatrix
from agrnet.train import train
from agrnet.tta import check_scales, scaled_canvas

SCALES = (0.75, 1.0, 1.5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tta")
    generate(root / "data", 12, 48, progress=False)
    return train(tiny_train_config(root / "data", root / "run", "iterations=3", "val_every=3"), progress=False)


def test_check_scales_takes_distinct_factors_in_range() -> None:
    assert check_scales([1, 0.5]) == (1.0, 0.5)
    for bad in [(), "1", None, [True], [float("nan")], [0.1], [5.0], [1, 1.0]]:
        with pytest.raises(ValueError, match="scale"):
            check_scales(bad)  # type: ignore[arg-type]


def test_scaled_canvas_scales_each_side_and_keeps_the_minimum() -> None:
    assert scaled_canvas(384, 320 / 384) == (320, 320)
    assert scaled_canvas((512, 352), 1.25) == (640, 440)
    assert scaled_canvas((40, 33), 0.25) == (32, 32)


def test_multiscale_parse_is_the_mean_of_single_scale_parses(checkpoint: Path) -> None:
    image = np.random.default_rng(0).integers(0, 255, (37, 61, 3), dtype=np.uint8)  # odd, not the canvas's aspect
    plain = Parser.from_checkpoint(checkpoint, device="cpu")
    multi = Parser.from_checkpoint(checkpoint, device="cpu", scales=SCALES)
    for flip in (False, True):
        got = multi.predict(image, probabilities=True, flip=flip)
        singles = [
            Parser.from_checkpoint(checkpoint, device="cpu", size=scaled_canvas(plain.size, scale))
            .predict(image, probabilities=True, flip=flip)
            .probabilities
            for scale in SCALES
        ]
        assert got.probabilities is not None and got.labels.shape == (37, 61)
        np.testing.assert_allclose(got.probabilities, np.mean(singles, axis=0), atol=1e-5)
        assert np.array_equal(got.labels, got.probabilities.argmax(0))
        assert np.array_equal(multi.predict(image, flip=flip).labels, got.labels)  # the labels-only path
    batch = multi.predict_batch([image, image[:20, :9]], batch_size=2)
    assert np.array_equal(batch[0].labels, multi.predict(image).labels) and batch[1].labels.shape == (20, 9)
    one = Parser.from_checkpoint(checkpoint, device="cpu", scales=(1.0,)).predict(image, probabilities=True)
    assert np.array_equal(one.probabilities, plain.predict(image, probabilities=True).probabilities)


def test_multiscale_detect_faces_averages_each_crop(checkpoint: Path) -> None:
    photo = data.astronaut()  # public domain (NASA), shipped by scikit-image
    plain = Parser.from_checkpoint(checkpoint, device="cpu").predict(photo, detect_faces=True, probabilities=True)
    multi = Parser.from_checkpoint(checkpoint, device="cpu", scales=(0.75, 1.0))
    result = multi.predict(photo, detect_faces=True, probabilities=True)
    assert result.faces is not None and len(result.faces) == 1 and result.labels.shape == photo.shape[:2]
    assert result.probabilities is not None and plain.probabilities is not None
    np.testing.assert_allclose(result.probabilities.sum(0), 1, atol=1e-4)
    assert np.array_equal(result.labels, result.probabilities.argmax(0))
    face = plain.probabilities[0] < 1  # where a crop was parsed; the rest is background in both
    assert np.array_equal(face, result.probabilities[0] < 1)
    assert np.abs(result.probabilities - plain.probabilities)[:, face].max() > 1e-3  # the second scale counted


def test_evaluate_with_scales_matches_a_per_image_reference(checkpoint: Path) -> None:
    model, config = model_from_checkpoint(checkpoint, torch.device("cpu"))
    model.eval()
    dataset = open_split("synthetic", config.data.root, "val", config.data.canvas)
    _, default = evaluate_dataset(model, dataset, torch.device("cpu"), progress=False)
    _, one = evaluate_dataset(model, dataset, torch.device("cpu"), progress=False, scales=(1.0,))
    assert np.array_equal(default, one)
    _, matrix = evaluate_dataset(model, dataset, torch.device("cpu"), batch_size=3, progress=False, scales=(0.75, 1.5))
    reference = ConfusionMatrix(dataset.spec.num_classes)
    with torch.no_grad():
        for index in range(len(dataset)):
            image, labels = dataset.load(index)
            h, w = labels.shape
            mean = 0
            for scale in (0.75, 1.5):
                canvas = to_tensor(warp_pair(image, None, scaled_canvas(dataset.size, scale))[0])[None]
                mean = mean + unletterbox(model(canvas).logits, h, w)[0].softmax(0) / 2
            reference.update(mean.argmax(0), torch.from_numpy(labels.astype(np.int64)))
    assert matrix.sum() == reference.matrix.numpy().sum()
    assert np.abs(matrix - reference.matrix.numpy()).sum() <= 1e-3 * matrix.sum()  # batched float noise at ties
    assert not np.array_equal(matrix, default)


def test_cli_scales(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--split", "val", "--scales", "0.75", "1",
                 "--workers", "0", "--json", str(out)]) == 0  # fmt: skip
    assert json.loads(out.read_text())["scales"] == [0.75, 1.0]
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--split", "val", "--scales", "1", "1"]) == 2
    assert "scales must be distinct" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--checkpoint", str(checkpoint), "--scales", "9"])
    assert exit_info.value.code == 2 and "must be from 0.25 to 4" in capsys.readouterr().err
    image = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(image)
    assert main(["predict", str(checkpoint), str(image), "--out", str(tmp_path / "out"), "--scales", "0.75", "1",
                 "--device", "cpu"]) == 0  # fmt: skip
    labels = np.array(Image.open(tmp_path / "out" / "face_labels.png"))
    expected = Parser.from_checkpoint(checkpoint, device="cpu", scales=(0.75, 1.0)).predict(image).labels
    assert np.array_equal(labels, expected)


def test_distillation_teacher_matches_a_naive_reference(checkpoint: Path) -> None:
    # The teacher (BatchNorm folded, channels_last) against the unfolded model by hand: flip-averaged
    # logits (left/right classes swapped back), softmax per canvas, canvases resized to the batch's size.
    model, config = model_from_checkpoint(checkpoint)
    model.eval()
    spec = config.data.spec()
    assert any(a != b for a, b in enumerate(spec.flip_lut()[: model.num_classes]))  # the swap is exercised
    images = torch.randn(2, 3, 64, 56)
    perm = [int(c) for c in spec.flip_lut()[: model.num_classes]]
    expected = torch.zeros(2, model.num_classes, 64, 56)
    with torch.no_grad():
        for scale, size in ((0.75, (48, 42)), (1.0, (64, 56)), (1.5, (96, 84))):
            view = torch.nn.functional.interpolate(images, size=size, mode="bilinear", antialias=scale < 1)
            logits = (model(view).logits + model(view.flip(-1)).logits.flip(-1)[:, perm]) / 2
            expected += torch.nn.functional.interpolate(logits, size=(64, 56), mode="bilinear").softmax(1) / 3
    got = TtaTeacher(model, spec, torch.device("cpu"), scales=SCALES)(images)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.sum(1), torch.ones(2, 64, 56))
