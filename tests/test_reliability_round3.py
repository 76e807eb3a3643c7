"""Round 3 of the reliability checks (issue 20) outside predict: training folders and resumption, decoders,
label budgets, check-data, serve arguments and answers, export reports, profile, layering."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAINING, tiny_train_config
from PIL import Image

from agrnet.checkpoints import load_checkpoint
from agrnet.cli import main
from agrnet.data.synth import generate
from agrnet.images import ImageError, decode_image
from agrnet.inference import Parser
from agrnet.pretrained import load_pretrained
from agrnet.serve import Limits, parse_image
from agrnet.train import train


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("round3") / "data"
    generate(root, 12, 48, progress=False)
    return root


@pytest.fixture(scope="module")
def finished_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("round3") / "run"
    train(tiny_train_config(data_root, out, "iterations=4", "optim.name=adamw", "optim.lr=0.001"), progress=False)
    return out


def _errors(stderr: str, command: str) -> list[str]:
    return re.findall(rf"agrnet {command}: error: [^\r\n]*", stderr)


def test_a_second_run_into_a_finished_folder_is_refused(data_root: Path, finished_run: Path, capsys) -> None:
    before = {name: (finished_run / name).read_bytes() for name in ("last.pt", "log.csv")}
    args = ["train", "--config", "synthetic", f"data.root={data_root}", f"out_dir={finished_run}", "iterations=2"]
    assert main(args) == 2
    (line,) = _errors(capsys.readouterr().err, "train")
    assert "holds a training run (last.pt, best.pt, log.csv)" in line and "--resume" in line and "--overwrite" in line
    assert {name: (finished_run / name).read_bytes() for name in before} == before


def test_overwrite_replaces_the_run_without_mixing_logs(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny_train_config(data_root, out, "iterations=3"), progress=False)
    train(tiny_train_config(data_root, out, "iterations=2"), progress=False, overwrite=True)
    iterations = [line.split(",")[0] for line in (out / "log.csv").read_text().splitlines()[1:]]
    assert iterations == ["1", "2"] and load_checkpoint(out / "last.pt")["iteration"] == 2


def test_resume_without_a_last_checkpoint_is_refused(data_root: Path, tmp_path: Path, capsys) -> None:
    typo = tmp_path / "runz"
    args = ["train", "--resume", "--config", "synthetic", f"data.root={data_root}", f"out_dir={typo}"]
    assert main(args) == 2
    (line,) = _errors(capsys.readouterr().err, "train")
    assert f"--resume: {typo} holds no last.pt" in line
    assert not (typo / "log.csv").exists()


def test_resume_with_another_optimizer_is_one_line(data_root: Path, finished_run: Path, capsys) -> None:
    args = ["train", "--resume", "--config", "synthetic", f"data.root={data_root}", f"out_dir={finished_run}",
            *TINY_TRAINING, "optim.name=sgd", "iterations=6"]  # fmt: skip
    assert main(args) == 2
    (line,) = _errors(capsys.readouterr().err, "train")
    assert "trained with optim.name=adamw" in line and "resume with optim.name=adamw" in line


def test_resume_applies_a_new_learning_rate(data_root: Path, finished_run: Path, tmp_path: Path) -> None:
    """The recorded config must be what was used: lr 0.1 from iteration 4 on, poly-decayed."""
    out = tmp_path / "resumed"
    out.mkdir()
    (out / "last.pt").write_bytes((finished_run / "last.pt").read_bytes())
    overrides = ["optim.name=adamw", "optim.lr=0.1", "iterations=6", "optim.poly_power=1.0"]
    train(tiny_train_config(data_root, out, *overrides), resume=True, progress=False)
    state = load_checkpoint(out / "last.pt")
    assert state["config"]["optim"]["lr"] == 0.1
    rows = [line.split(",") for line in (out / "log.csv").read_text().splitlines()[1:]]
    lrs = {int(row[0]): float(row[2]) for row in rows}
    # The log's rate at iteration k is the one after k steps: 0.1 * (1 - k/6), not 0.001's schedule.
    assert lrs[5] == pytest.approx(0.1 * (1 - 5 / 6), rel=1e-3), lrs
    assert state["optimizer"]["param_groups"][0]["initial_lr"] == 0.1


def _dds_named_png(path: Path) -> Path:
    """A DDS header Pillow identifies but cannot decode (a pixel format it does not implement)."""
    header = bytearray(128)
    header[:4] = b"DDS "
    fields = {4: 124, 8: 0x1007, 12: 8, 16: 8, 76: 32, 80: 0x4, 84: int.from_bytes(b"ZZZZ", "little")}
    for offset, value in fields.items():
        header[offset : offset + 4] = value.to_bytes(4, "little")
    path.write_bytes(bytes(header) + bytes(64))
    return path


def test_a_decoder_that_is_not_implemented_is_a_per_file_error(tmp_path: Path) -> None:
    path = _dds_named_png(tmp_path / "fake.png")
    with pytest.raises(ImageError, match=r"fake.png: cannot read image"):
        decode_image(path)
    with pytest.raises(ImageError, match="upload: cannot read image"):
        decode_image(path.read_bytes())


def _huge_label_png(path: Path, side: int = 20000) -> Path:
    """A tiny file that declares a side x side grey PNG: a label-map pixel bomb."""
    row = b"\x00" + bytes(side)
    body = zlib.compress(row * 64, 9)  # only the first rows exist: the header is what matters

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def bombed_root(data_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "bombed"
    for split in ("train", "val", "test"):
        for kind in ("images", "labels"):
            (root / split / kind).mkdir(parents=True)
            for f in sorted((data_root / split / kind).iterdir()):
                (root / split / kind / f.name).write_bytes(f.read_bytes())
    victim = sorted((root / "train" / "labels").iterdir())[0]
    _huge_label_png(victim)
    test_victim = sorted((root / "test" / "labels").iterdir())[0]
    _huge_label_png(test_victim)
    return root


def test_label_pixel_bombs_are_one_line_everywhere(bombed_root: Path, tmp_path: Path, capsys) -> None:
    assert main(["check-data", str(bombed_root), "--kind", "synthetic"]) == 1
    out = capsys.readouterr().out
    assert len(re.findall(r"exceeds the pixel budget", out)) == 2, out
    assert "Traceback" not in out

    run = tmp_path / "run"
    config = tiny_train_config(bombed_root, run, "iterations=6", "data.skip_bad_samples=true")
    train(config, progress=False)  # the bomb is skipped and listed, not a traceback
    assert load_checkpoint(run / "last.pt")["iteration"] == 6

    assert main(["evaluate", "--checkpoint", str(run / "last.pt"), "--data", str(bombed_root)]) == 1
    captured = capsys.readouterr()
    assert "SKIPPED" in captured.out + captured.err and "exceeds the pixel budget" in captured.out + captured.err


def test_check_data_lists_every_problem_of_a_split(data_root: Path, tmp_path: Path, capsys) -> None:
    """One missing label must not hide the others; an upper-case .PNG label is found."""
    root = tmp_path / "mixed"
    for kind in ("images", "labels"):
        (root / "train" / kind).mkdir(parents=True)
        for f in sorted((data_root / "train" / kind).iterdir()):
            (root / "train" / kind / f.name).write_bytes(f.read_bytes())
    labels = sorted((root / "train" / "labels").iterdir())
    labels[0].rename(labels[0].with_suffix(".PNG"))  # found despite the case
    labels[1].unlink()  # missing
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(labels[2])  # RGB label
    Image.fromarray(np.full((48, 48), 300, np.uint16)).save(labels[3])  # value 300
    labels[4].write_bytes(labels[4].read_bytes()[:60])  # truncated
    assert main(["check-data", str(root), "--kind", "lapa", "--splits", "train"]) == 1
    out = capsys.readouterr().out
    assert f"{labels[1].stem}.jpg: no label map {labels[1].stem}.png" in out
    assert "label maps must be single-channel" in out and "[300]" in out
    assert labels[4].name in out and "4 problem(s) found" in out, out


def test_check_data_of_a_folder_without_classes_is_a_usage_error(data_root: Path, capsys) -> None:
    assert main(["check-data", str(data_root), "--kind", "folder"]) == 2
    (line,) = _errors(capsys.readouterr().err, "check-data")
    assert "data.kind=folder needs data.classes" in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "99999"], "argument --port: must be from 0 to 65535, got 99999"),
        (["--port", "-1"], "argument --port: must be from 0 to 65535, got -1"),
        (["--max-upload-mb", "inf"], "argument --max-upload-mb: must be a finite number > 0, got inf"),
        (["--max-upload-mb", "nan"], "argument --max-upload-mb: must be a finite number > 0, got nan"),
        (["--max-pixels", "0"], "argument --max-pixels: must be at least 1, got 0"),
    ],
)
def test_serve_arguments_are_checked_before_the_model_loads(args: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["serve", *args])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_serve_takes_scales_and_face_zoom_and_checks_them_before_serving(monkeypatch, capsys) -> None:
    """--scales and --face-zoom reach the served Parser; a bad --face-zoom is one line, exit 2, no server."""
    import agrnet.serve

    served: list[Parser] = []

    def fake_server(parser: Parser, *args: object) -> object:
        served.append(parser)
        raise KeyboardInterrupt  # stands in for Ctrl-C before serving: nothing binds a port

    monkeypatch.setattr(agrnet.serve, "make_server", fake_server)
    with pytest.raises(KeyboardInterrupt):
        main(["serve", "--device", "cpu", "--scales", "0.8", "1", "--face-zoom", "1.5", "2.5"])
    assert served[0].scales == (0.8, 1.0) and served[0].face_zoom == (1.5, 2.5)
    assert main(["serve", "--face-zoom", "3", "2"]) == 2
    (line,) = _errors(capsys.readouterr().err, "serve")
    assert "face_zoom must be a number from 1 to 4 or an increasing list of them" in line and len(served) == 1


def test_an_unknown_model_name_is_one_line_listing_the_known(capsys) -> None:
    assert main(["serve", "--model", "nope"]) == 2
    (line,) = _errors(capsys.readouterr().err, "serve")
    assert "unknown pretrained model 'nope'; choose one of ['agrnet_mbv2_ccp', 'agrnet_mbv2_celebamask']" in line


@pytest.fixture(scope="module")
def face_parser() -> Parser:
    return Parser.from_pretrained(device="cpu")


def test_parse_answers_carry_faces_and_the_label_png(face_parser: Parser) -> None:
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="PNG")
    answer = json.loads(parse_image(face_parser, buffer.getvalue(), Limits(), detect_faces=True, label_png=True))
    (face,) = answer["faces"]
    assert len(face["box"]) == 4 and np.array(face["landmarks"]).shape == (5, 2) and face["score"] > 0.9
    assert answer["faces_skipped"] == 0
    labels = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["labels"].split(",", 1)[1]))))
    assert labels.shape == tuple(answer["size"]) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= set(range(19)) and (labels == 13).any()  # hair found

    blank = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(blank, format="PNG")
    no_face = json.loads(parse_image(face_parser, blank.getvalue(), Limits(), detect_faces=True))
    assert no_face["faces"] == [] and "labels" not in no_face
    without = json.loads(parse_image(face_parser, blank.getvalue(), Limits()))
    assert without["faces"] is None


def test_export_report_on_stdout_is_json_and_takes_a_model_name(tmp_path: Path, capsys) -> None:
    assert main(["export", "agrnet_mbv2_celebamask", "--out", str(tmp_path / "m.onnx")]) == 0
    report = json.loads(capsys.readouterr().out)
    _, config = load_pretrained("agrnet_mbv2_celebamask")
    assert report["max_abs_diff"] < 1e-3 and (report["size"], report["width"]) == config.data.canvas


def test_profile_covers_mobilenet_with_the_shipped_settings(capsys) -> None:
    args = ["profile", "--backbone", "mobilenet_v2", "--output-stride", "16", "--channels", "96",
            "--num-classes", "19", "--image-size", "256", "--json"]  # fmt: skip
    assert main(args) == 0
    parts = json.loads(capsys.readouterr().out)["parts"]
    # The checkpoint, not Parser.model: Parser runs a copy with BatchNorm folded away.
    shipped, _ = load_pretrained("agrnet_mbv2_celebamask")
    assert parts["total"]["params"] == sum(p.numel() for p in shipped.parameters())


def test_inference_imports_no_training_code() -> None:
    code = "import sys, agrnet.inference, agrnet.pretrained; print(sorted(m for m in sys.modules if 'train' in m))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "agrnet.train" not in loaded, loaded


def test_sixteen_bit_and_sideways_pil_images_match_their_files(face_parser: Parser, tmp_path: Path) -> None:
    from skimage import data

    grey = (data.astronaut().mean(2) * 257).astype(np.uint16)
    image16 = Image.fromarray(grey)
    image16.save(tmp_path / "grey16.png")
    from_pil = face_parser.predict(Image.open(tmp_path / "grey16.png")).labels
    from_path = face_parser.predict(tmp_path / "grey16.png").labels
    assert (from_pil == from_path).mean() == 1.0

    sideways = Image.fromarray(np.ascontiguousarray(np.rot90(data.astronaut())))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored pixels are turned a quarter anticlockwise
    sideways.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    pil = face_parser.predict(Image.open(tmp_path / "phone.jpg"), detect_faces=True)
    path = face_parser.predict(tmp_path / "phone.jpg", detect_faces=True)
    assert pil.faces and path.faces and pil.labels.shape == path.labels.shape == (512, 512)
    assert torch.equal(torch.from_numpy(pil.labels), torch.from_numpy(path.labels))
