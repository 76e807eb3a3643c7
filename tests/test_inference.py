from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import tiny_train_config
from PIL import Image
from skimage import data

from agrnet.checkpoints import model_from_checkpoint
from agrnet.cli import main
from agrnet.data.synth import generate
from agrnet.data.transforms import to_tensor, warp_pair
from agrnet.inference import FaceParser
from agrnet.predict import predict_paths
from agrnet.train import train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inference")
    generate(root / "data", 12, 48, progress=False)
    return train(tiny_train_config(root / "data", root / "run", "iterations=3", "val_every=3"), progress=False)


@pytest.fixture(scope="module")
def parser(checkpoint: Path) -> FaceParser:
    return FaceParser.from_checkpoint(checkpoint, device="cpu")


def test_parser_takes_paths_pil_and_arrays_at_their_own_size(parser: FaceParser, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (37, 61, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    from_path = parser.predict(tmp_path / "a.png", probabilities=True)
    from_pil = parser.predict(Image.fromarray(rgb))
    from_array = parser.predict(rgb)
    assert from_path.labels.shape == (37, 61) and from_path.labels.dtype == np.uint8
    assert np.array_equal(from_path.labels, from_array.labels) and np.array_equal(from_pil.labels, from_array.labels)
    assert from_path.probabilities is not None and from_path.probabilities.shape == (11, 37, 61)
    np.testing.assert_allclose(from_path.probabilities.sum(0), 1, atol=1e-5)
    assert np.array_equal(from_path.probabilities.argmax(0), from_path.labels)
    batch = parser.predict_batch([rgb, rgb[:20], rgb[..., 0]], flip=True, batch_size=2)
    assert [b.labels.shape for b in batch] == [(37, 61), (20, 61), (37, 61)]


def test_parser_handles_gray_rgba_and_16_bit_files(parser: FaceParser, tmp_path: Path) -> None:
    Image.fromarray(np.zeros((30, 20), np.uint8)).save(tmp_path / "gray.png")
    Image.fromarray(np.zeros((30, 20, 4), np.uint8)).save(tmp_path / "rgba.png")
    cv2.imwrite(str(tmp_path / "deep.png"), np.full((30, 20), 40000, np.uint16))
    for name in ("gray.png", "rgba.png", "deep.png"):
        assert parser.predict(tmp_path / name).labels.shape == (30, 20)
    with pytest.raises(ValueError, match="must be uint8 or uint16"):
        parser.predict(np.zeros((4, 4, 3), np.float32))


def test_predict_cli_skips_bad_files_and_reports(checkpoint: Path, tmp_path: Path, capsys) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        Image.fromarray(np.full((40, 30, 3), 60 * i, np.uint8)).save(inputs / f"ok{i}.jpg")
    (inputs / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (inputs / "empty.png").write_bytes(b"")
    (inputs / "notes.txt").write_text("hello")
    status = main(["predict", str(checkpoint), str(inputs), "--out", str(tmp_path / "out"), "--device", "cpu"])
    summary = capsys.readouterr().out
    assert status == 1
    assert "6 output(s) written, 3 input(s) failed" in summary
    assert "corrupt.jpg" in summary and "empty.png" in summary and "not an image or video" in summary
    failed = [line for line in summary.splitlines() if line.startswith("  FAILED")]
    assert len(failed) == 3 and all(line.count(str(inputs)) == 1 for line in failed), failed
    labels = np.asarray(Image.open(tmp_path / "out" / "ok1_labels.png"))
    assert labels.shape == (40, 30) and labels.max() < 11
    assert (tmp_path / "out" / "ok0_overlay.png").is_file() and (tmp_path / "out" / "ok0_mask.png").is_file()


def test_predict_video(checkpoint: Path, tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (32, 24))
    for i in range(3):
        writer.write(np.full((24, 32, 3), 50 * i, np.uint8))
    writer.release()
    assert main(["predict", str(checkpoint), str(video), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    capture = cv2.VideoCapture(str(tmp_path / "out" / "clip_overlay.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3


def test_detect_faces_parses_only_around_the_faces_found(checkpoint: Path, parser: FaceParser, tmp_path: Path) -> None:
    photo = data.astronaut()  # public domain (NASA), shipped by scikit-image
    result = parser.predict(photo, detect_faces=True, probabilities=True)
    assert result.faces is not None and len(result.faces) == 1
    assert result.labels.shape == photo.shape[:2] and result.probabilities is not None
    x0, y0, x1, y1 = result.faces[0].box
    side, cx, cy = max(x1 - x0, y1 - y0), (x0 + x1) / 2, (y0 + y1) / 2
    far = np.ones(photo.shape[:2], bool)  # the aligned crop spans about two face boxes
    reach = 2.5 * side
    far[max(0, int(cy - reach)) : int(cy + reach), max(0, int(cx - reach)) : int(cx + reach)] = False
    assert (result.labels[far] == 0).all() and (result.probabilities[0][far] == 1).all()
    assert parser.predict(np.full((40, 60, 3), 90, np.uint8), detect_faces=True).faces == []
    cv2.imwrite(str(tmp_path / "astronaut.png"), photo[..., ::-1])
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(tmp_path / "astronaut.png"), "--out", str(out),
                 "--detect-faces", "--device", "cpu"]) == 0  # fmt: skip
    assert np.array_equal(cv2.imread(str(out / "astronaut_labels.png"), cv2.IMREAD_UNCHANGED), result.labels)
    cv2.imwrite(str(tmp_path / "wall.png"), np.full((40, 60, 3), 90, np.uint8))
    report = predict_paths(parser, [str(tmp_path / "wall.png")], out, detect_faces=True)
    assert report.notes == [f"note: no face found in {tmp_path / 'wall.png'}; its label map is all background"]
    assert not cv2.imread(str(out / "wall_labels.png"), cv2.IMREAD_UNCHANGED).any()


def test_cli_face_zoom(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--face-zoom sets the wide crops of --detect-faces: the same map as the library's face_zoom; a bad value or
    --face-zoom without --detect-faces is one line, exit 2, nothing written."""
    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), data.astronaut()[..., ::-1])
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(photo), "--out", str(out), "--detect-faces", "--face-zoom", "1.5",
                 "2.5", "--device", "cpu", "--outputs", "labels"]) == 0  # fmt: skip
    wider = FaceParser.from_checkpoint(checkpoint, device="cpu")
    wider.face_zoom = (1.5, 2.5)
    expected = wider.predict(data.astronaut(), detect_faces=True).labels
    assert np.array_equal(cv2.imread(str(out / "astronaut_labels.png"), cv2.IMREAD_UNCHANGED), expected)
    capsys.readouterr()
    for bad in (["--detect-faces", "--face-zoom", "2", "1.5"], ["--face-zoom", "2"]):
        assert main(["predict", str(checkpoint), str(photo), "--out", str(tmp_path / "bad"), *bad]) == 2
        assert capsys.readouterr().err.count("\n") == 1
        assert not (tmp_path / "bad").exists()


def test_visualizations(checkpoint: Path, tmp_path: Path) -> None:
    image = tmp_path / "face.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (50, 40, 3), dtype=np.uint8)).save(image)
    assert main(["visualize", str(checkpoint), str(image), "--out", str(tmp_path / "viz")]) == 0
    for name in ("vertices.png", "adjacency.png", "projection.png"):
        with Image.open(tmp_path / "viz" / name) as figure:
            assert figure.size[0] > 300 and figure.size[1] > 300


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_parity(checkpoint: Path, tmp_path: Path, fmt: str, parser: FaceParser) -> None:
    from agrnet.checkpoints import model_from_checkpoint
    from agrnet.export import export_model

    model, config = model_from_checkpoint(checkpoint)
    out = tmp_path / f"model.{fmt}"
    report = export_model(model, out, config.data.size, config.data.kind, fmt)  # type: ignore[arg-type]
    assert report["max_abs_diff"] < 1e-3 and report["argmax_agreement"] > 0.999
    if fmt == "onnx":
        onnx_parser = FaceParser.from_onnx(out)
        image = np.random.default_rng(3).integers(0, 255, (45, 33, 3), dtype=np.uint8)
        agreement = (onnx_parser.predict(image).labels == parser.predict(image).labels).mean()
        assert agreement > 0.99


def test_parser_runs_a_folded_copy_and_leaves_the_callers_model_alone(checkpoint: Path) -> None:
    model, config = model_from_checkpoint(checkpoint, torch.device("cpu"))
    model.train()
    parser = FaceParser(config.data.spec(), config.data.canvas, model=model)

    def batchnorms(module: torch.nn.Module) -> int:
        return sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())

    # the ResNet's blocks keep theirs (attributes, not a Sequential); the stem, downsampling and heads fold
    assert model.training and parser.model is not model and 0 < batchnorms(parser.model) < batchnorms(model)
    image = np.random.default_rng(1).integers(0, 255, (40, 33, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = model.eval()(to_tensor(warp_pair(image, None, parser.size)[0])[None]).logits
    got = parser._logits(to_tensor(warp_pair(image, None, parser.size)[0])[None], flip=False)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
