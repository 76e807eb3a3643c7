"""Round 2 of the reliability checks: settings, Python API arguments, outputs and files of the wrong kind."""

from __future__ import annotations

import errno
import json
import os
import re
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from conftest import tiny_train_config
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from agrnet.cli import main
from agrnet.config import ConfigError, load_config
from agrnet.data.synth import generate
from agrnet.inference import FaceParser
from agrnet.predict import output_names
from agrnet.train import train


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
        ("snapshot_every=-1", "snapshot_every must be at least 0, got -1"),
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
    from agrnet.devices import resolve_device

    with pytest.raises(ValueError, match=r"device cuda:7: this machine has \d+ CUDA device\(s\)"):
        resolve_device("cuda:7")


def test_threads_bind_opencv_as_well_as_torch() -> None:
    import torch

    from agrnet.devices import set_threads

    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        set_threads(1)
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (1, 1)
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    generate(root / "data", 12, 48, progress=False)
    return train(tiny_train_config(root / "data", root / "run", "iterations=2"), progress=False)


@pytest.fixture(scope="module")
def parser(checkpoint: Path) -> FaceParser:
    return FaceParser.from_checkpoint(checkpoint, device="cpu")


def _photo(path: Path, value: int = 90) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 30, 3), value, np.uint8)).save(path)
    return path


def test_an_output_blocked_by_a_folder_is_a_failure(checkpoint: Path, tmp_path: Path, capsys) -> None:
    photo = _photo(tmp_path / "in" / "face.png")
    (tmp_path / "out" / "face_mask.png").mkdir(parents=True)
    assert main(["predict", str(checkpoint), str(photo), "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "1 output(s) written, 1 input(s) failed" in out
    assert "face_mask.png: not written (a folder of that name is in the way)" in out


def test_an_over_long_output_name_is_a_failure(checkpoint: Path, tmp_path: Path, capsys) -> None:
    photo = _photo(tmp_path / "in" / f"{'x' * 248}.png")  # fits; the outputs' names do not
    assert main(["predict", str(checkpoint), str(photo), "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "0 output(s) written, 1 input(s) failed" in out and "over the usual limit of 255" in out
    assert not list((tmp_path / "out").iterdir())


def test_a_video_that_cannot_be_written_is_a_failure(checkpoint: Path, tmp_path: Path, capsys) -> None:
    clip = tmp_path / "in" / "clip.avi"
    clip.parent.mkdir()
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 24))
    for _ in range(2):
        writer.write(np.full((24, 32, 3), 100, np.uint8))
    writer.release()
    (tmp_path / "out" / "clip_overlay.mp4").mkdir(parents=True)
    assert main(["predict", str(checkpoint), str(clip), "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "0 output(s) written, 1 input(s) failed" in out and "clip_overlay.mp4: not written" in out


def test_inputs_sharing_a_name_get_distinct_outputs(checkpoint: Path, tmp_path: Path, capsys) -> None:
    a, b = _photo(tmp_path / "a" / "face.png", 10), _photo(tmp_path / "b" / "face.jpg", 200)
    _photo(tmp_path / "b" / "face_1.png")  # a numbered name is taken already: skipped
    assert main(["predict", str(checkpoint), str(tmp_path / "a"), str(tmp_path / "b"), str(a),
                 "--out", str(tmp_path / "out")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "9 output(s) written, 0 input(s) failed" in out
    assert f"note: 2 inputs are named face; outputs of {a} are face_2_*" in out
    assert f"note: 2 inputs are named face; outputs of {b} are face_3_*" in out
    assert len(list((tmp_path / "out").iterdir())) == 9


def test_output_names_are_distinct_and_deterministic() -> None:
    files = [Path("x/face.png"), Path("y/face.png"), Path("face_1.png"), Path("z/face.jpg"), Path("solo.png")]
    names, notes = output_names(files)
    assert list(names.values()) == ["face_2", "face_3", "face_1", "face_4", "solo"]
    assert len(notes) == 3 and output_names(files) == (names, notes)


@pytest.mark.parametrize("make", ["file", "unwritable"])
def test_an_unusable_out_folder_is_a_usage_error(checkpoint: Path, tmp_path: Path, monkeypatch, capsys, make) -> None:
    photo = _photo(tmp_path / "face.png")
    out = tmp_path / "out"
    if make == "file":
        out.write_text("x")
    else:
        monkeypatch.setattr("tempfile.TemporaryFile", _read_only)
    for command in (["predict", str(checkpoint), str(photo)], ["visualize", str(checkpoint), str(photo)]):
        assert main([*command, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "is an existing file; choose a folder" in err if make == "file" else "is not writable" in err, err
    assert main(["export", str(checkpoint), "--out", str(out / "model.onnx")]) == 2


def _read_only(*args: object, **kwargs: object) -> None:
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))


def test_exif_orientation_is_applied_before_parsing(checkpoint: Path, tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated by 90 degrees: portrait
    photo = tmp_path / "phone.jpg"
    Image.fromarray(np.full((20, 40, 3), 120, np.uint8)).save(photo, exif=exif)
    assert main(["predict", str(checkpoint), str(photo), "--out", str(tmp_path / "out")]) == 0
    labels = cv2.imread(str(tmp_path / "out" / "phone_labels.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (40, 20)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds no pixel data: a pixel bomb costs nothing to make."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("width", "height", "message"),
    [(13000, 13000, "169000000 pixels exceeds the pixel budget"), (40000, 2, "has a side over 32766 pixels")],
)
def test_pixel_bombs_and_huge_sides_are_refused_in_one_line(
    checkpoint: Path, tmp_path: Path, capsys, width: int, height: int, message: str
) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(width, height))
    assert main(["predict", str(checkpoint), str(bomb), "--out", str(tmp_path / "out")]) == 1
    assert message in capsys.readouterr().out
    assert main(["visualize", str(checkpoint), str(bomb), "--out", str(tmp_path / "viz")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("agrnet visualize: error: ") and message in line


image_arrays = st.tuples(
    st.integers(0, 40), st.integers(0, 40), st.sampled_from([None, 0, 1, 2, 3, 4, 5]),
    st.sampled_from([np.uint8, np.uint16, np.int8, np.int32, np.int64, np.float32, np.float64, np.bool_]),
).flatmap(lambda t: hnp.arrays(t[3], (t[0], t[1]) if t[2] is None else (t[0], t[1], t[2])))  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(image_arrays)
def test_any_array_parses_to_a_map_or_is_refused_with_value_error(parser: FaceParser, array: np.ndarray) -> None:
    try:
        result = parser.predict(array)
    except ValueError:
        return
    assert result.labels.shape == array.shape[:2] and result.labels.dtype == np.uint8


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda p: p.predict(np.full((8, 8, 3), np.nan, np.float32)), ValueError, "must be uint8 or uint16"),
        (lambda p: p.predict(np.zeros((0, 8, 3), np.uint8)), ValueError, r"no pixels \(shape \(0, 8, 3\)\)"),
        (lambda p: p.predict(Image.new("RGB", (0, 4))), ValueError, "no pixels"),
        (lambda p: p.predict(np.zeros((2, 40000), np.uint8)), ValueError, "sides over 32766 pixels"),
        (lambda p: p.predict(np.zeros((8, 8, 2), np.uint8)), ValueError, r"got \(8, 8, 2\)"),
        (lambda p: p.predict(7), TypeError, "unsupported image type int"),
        (lambda p: p.predict_batch([np.zeros((8, 8), np.uint8)], batch_size=0), ValueError, "batch_size must be"),
        (lambda p: p.predict_batch([np.zeros((8, 8), np.uint8)], batch_size=2.5), ValueError, "batch_size must be"),
        (lambda p: p.predict_batch(np.zeros((8, 8), np.uint8)), TypeError, "a list of images"),
        (lambda p: p.predict_batch("face.jpg"), TypeError, "a list of images"),
        (lambda p: p.predict(np.zeros((8, 8), np.uint8), flip="no"), ValueError, "flip must be True or False"),
    ],
)
def test_api_arguments_are_checked_at_the_boundary(parser: FaceParser, call, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        call(parser)


def _onnx_model(path: Path, size: int = 48, classes: int = 11, dataset: str = "synthetic") -> Path:
    """A stand-in for an exported model (a 1x1 convolution) with its side file, built in milliseconds."""
    weight = onnx.numpy_helper.from_array(
        np.random.default_rng(0).normal(size=(classes, 3, 1, 1)).astype(np.float32), "w"
    )
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["images", "w"], ["logits"])], "m",
        [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["batch", 3, size, size])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", classes, size, size])],
        [weight],
    )  # fmt: skip
    model = onnx.helper.make_model(graph, producer_name="pytorch", opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)
    Path(f"{path}.json").write_text(json.dumps({"dataset": dataset, "size": size, "num_classes": classes}))
    return path


def test_a_valid_onnx_stand_in_works(tmp_path: Path) -> None:
    parser = FaceParser.from_onnx(_onnx_model(tmp_path / "m.onnx"))
    assert parser.predict(np.zeros((30, 20, 3), np.uint8)).labels.shape == (30, 20)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("garbage", "m.onnx: not a loadable ONNX model"),
        ("truncated", "m.onnx: not a loadable ONNX model .*is the file complete"),
        ("json", r"m.onnx.json: not valid JSON"),
        ("dataset", r"m.onnx.json: dataset must be one of .* got 'lapaa'"),
        ("size", r"m.onnx.json: the side file says size 64 but the model takes inputs of shape \['batch', 3, 48, 48\]"),
        ("classes", r"m.onnx.json: the side file says 19 classes but the model gives shape"),
    ],
)
def test_broken_onnx_files_are_usage_errors(tmp_path: Path, capsys, damage: str, message: str) -> None:
    path = _onnx_model(tmp_path / "m.onnx")
    side = Path(f"{path}.json")
    if damage == "garbage":
        path.write_bytes(b"this is not a model" * 10)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "json":
        side.write_text("{ not json")
    else:
        changed = {"dataset": {"dataset": "lapaa"}, "size": {"size": 64}, "classes": {"dataset": "celebamask_hq"}}
        side.write_text(json.dumps({"dataset": "synthetic", "size": 48} | changed[damage]))
    photo = _photo(tmp_path / "face.png")
    assert main(["predict", str(path), str(photo), "--out", str(tmp_path / "out")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert re.search(message, line), line


@pytest.mark.parametrize(
    ("make", "looks_like"),
    [
        ("image", "a PNG image"),
        ("yaml", "a text file (a YAML config?"),
        ("onnx", "an ONNX model: predict and serve take it named"),
    ],
)
def test_a_file_of_the_wrong_kind_as_checkpoint_says_what_it_looks_like(
    tmp_path: Path, capsys, make: str, looks_like: str
) -> None:
    wrong = tmp_path / "model.pt"
    if make == "image":
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(wrong, format="PNG")
    elif make == "yaml":
        wrong.write_text("model:\n  backbone: resnet18\n")
    else:
        _onnx_model(tmp_path / "real.onnx").rename(wrong)
    photo = _photo(tmp_path / "face.png")
    for command in (["evaluate", "--checkpoint", str(wrong)], ["visualize", str(wrong), str(photo), "--out", "x"],
                    ["export", str(wrong), "--out", str(tmp_path / "e.onnx")]):  # fmt: skip
        assert main(command) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert f"model.pt: not an agrnet checkpoint: the file looks like {looks_like}" in line


def test_the_pixel_budget_is_configurable(checkpoint: Path, tmp_path: Path, capsys) -> None:
    photo = _photo(tmp_path / "face.png")  # 30 x 40 = 1200 pixels
    args = ["--out", str(tmp_path / "out"), "--max-pixels", "1000"]
    assert main(["predict", str(checkpoint), str(photo), *args]) == 1
    assert "30×40 = 1200 pixels exceeds the pixel budget of 1000" in capsys.readouterr().out
    assert main(["visualize", str(checkpoint), str(photo), *args]) == 2
    assert "exceeds the pixel budget of 1000" in capsys.readouterr().err
    assert main(["predict", str(checkpoint), str(photo), "--out", str(tmp_path / "out"), "--max-pixels", "1200"]) == 0
