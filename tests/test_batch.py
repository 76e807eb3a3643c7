"""Batch parsing at scale (issue 19) and predict's input and output safety (issue 20), local engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from conftest import tiny_train_config
from PIL import Image

from agrnet.batch import STATE, list_tasks, merge_results, parse_shard, predict_tree, read_manifest
from agrnet.cli import main
from agrnet.data.synth import generate
from agrnet.inference import Parsing
from agrnet.predict import Settings, is_agrnet_output
from agrnet.train import train

pq = pytest.importorskip("pyarrow.parquet")
SRC = str(Path(__file__).parents[1] / "src")
KILL = 13  # a photo whose green channel at (0, 0) is this kills the stand-in's process


class StandIn:
    """A parser without a model: class 1 where red > 127. ``kill``: SIGKILL its own process on a photo
    marked KILL, every time, or only once (the first process to see it) when ``once`` names a flag file."""

    spec = SimpleNamespace(palette=np.array([[0, 0, 0], [255, 0, 0]], np.uint8), num_classes=2)

    def __init__(self, kill: bool = False, once: str | None = None) -> None:
        self.kill, self.once = kill, once

    def predict_batch(self, images: list[np.ndarray], flip: bool = False, batch_size: int = 8) -> list[Parsing]:
        return [self.predict(image) for image in images]

    def predict(self, image: np.ndarray, flip: bool = False, detect_faces: bool = False) -> Parsing:
        if self.kill and image[0, 0, 1] == KILL and not (self.once and os.path.exists(self.once)):
            if self.once:
                Path(self.once).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return Parsing((image[..., 0] > 127).astype(np.uint8), faces=[] if detect_faces else None)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("batch")
    generate(root / "data", 12, 48, progress=False)
    return train(tiny_train_config(root / "data", root / "run", "iterations=2"), progress=False)


def _photo(path: Path, red: int = 200, green: int = 0, size: tuple[int, int] = (24, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.zeros((*size, 3), np.uint8)
    image[:, : size[1] // 2, 0] = red
    image[..., 1] = green
    Image.fromarray(image).save(path)
    return path


def _tree(root: Path) -> list[Path]:
    """Two folders with a same-named photo, a nested one, and a non-photo that the walk leaves out."""
    photos = [_photo(root / "a" / "face.png"), _photo(root / "b" / "face.png", 30), _photo(root / "b" / "c" / "x.jpg")]
    (root / "b" / "readme.txt").write_text("not a photo")
    return photos


def _rows(out: Path) -> list[dict]:
    return pq.read_table(out / "results.parquet").to_pylist()


def _env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}


def _run(out: Path, tasks, **kwargs):
    settings = Settings(str(out), ("labels",), model="standin", model_version="0")
    return predict_tree(StandIn, tasks, settings, **kwargs)


def test_recursive_inputs_are_mirrored_and_recorded(checkpoint: Path, tmp_path: Path, capsys) -> None:
    _tree(tmp_path / "in")
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(tmp_path / "in"), "--recursive", "--out", str(out)]) == 0
    assert "3 parsed now (0 without a face), 0 failed, 0 done before, 0 left to do" in capsys.readouterr().out
    for key in ("a/face", "b/face", "b/c/x"):
        for kind in ("labels", "mask", "overlay"):
            assert is_agrnet_output(out / f"{key}_{kind}.png")
    rows = {row["output"]: row for row in _rows(out)}
    assert sorted(rows) == ["a/face", "b/c/x", "b/face"]
    for row in rows.values():
        labels = cv2.imread(str(out / row["outputs"][0]), cv2.IMREAD_UNCHANGED)
        assert row["status"] == "ok" and (row["width"], row["height"]) == (32, 24) == labels.shape[::-1]
        assert row["pixels"] == np.bincount(labels.ravel(), minlength=len(row["pixels"])).tolist()
        assert row["model"] == "last.pt" and row["model_version"].startswith("agrnet 0.1.0, sha256 ")


def test_a_rerun_skips_what_is_done_and_retries_failures(tmp_path: Path) -> None:
    photos = _tree(tmp_path / "in")
    (tmp_path / "in" / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    first = _run(out, list_tasks([str(tmp_path / "in")], str(out), recursive=True))
    assert first.counts == {"ok": 3, "failed": 1} and "broken.png: cannot read image" in first.failures[0][1]
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*_labels.png")}
    _photo(tmp_path / "in" / "b" / "broken.png")  # fixed by the user
    second = _run(out, list_tasks([str(tmp_path / "in")], str(out), recursive=True))
    assert second.done_before == 3 and second.counts == {"ok": 1}
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())  # done photos are not written again
    rows = _rows(out)
    assert len(rows) == 4 and {row["status"] for row in rows} == {"ok"} and len(photos) == 3


def test_shards_cover_every_input_exactly_once(tmp_path: Path) -> None:
    for i in range(7):
        _photo(tmp_path / "in" / f"{i}.png")
    out = tmp_path / "out"
    tasks = list_tasks([str(tmp_path / "in")], str(out))
    counts = [_run(out, tasks, shard=(rank, 3)).listed for rank in range(3)]
    assert counts == [3, 2, 2]
    assert sorted(row["output"] for row in _rows(out)) == sorted(str(i) for i in range(7))
    assert parse_shard(None, {"RANK": "1", "WORLD_SIZE": "4"}) == (1, 4) and parse_shard(None, {}) == (0, 1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shard", "3/2"], "--shard must be R/N with 0 <= R < N (shard R of N), got '3/2'"),
        (["--manifest", "{binary}"], "binary data, not a list of paths"),
        (["--manifest", "{words}"], "none of its 2 entries is an image or video path"),
        (["--manifest", "{csv}"], "no column 'path' (columns: file, label)"),
        (["--outputs", "labels,depth"], "--outputs takes a comma-separated subset of labels,mask,overlay"),
    ],
)
def test_usage_errors_are_one_line_before_any_work(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    (tmp_path / "binary").write_bytes(b"\x00\x01\x02" * 10)
    (tmp_path / "words").write_text("hello\nworld\n")
    (tmp_path / "m.csv").write_text("file,label\na.jpg,1\n")
    names = {"{binary}": "binary", "{words}": "words", "{csv}": "m.csv"}
    args = [str(tmp_path / names[a]) if a in names else a for a in args]
    assert main(["predict", str(tmp_path / "x.jpg"), "--out", str(tmp_path / "out"), *args]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert message in line
    assert not (tmp_path / "out" / STATE).exists()


def test_ray_engine_without_ray_says_how_to_install(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert main(["predict", str(tmp_path), "--engine", "ray", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == "agrnet predict: error: --engine ray needs Ray: pip install 'agrnet[ray]'"


def test_manifests_list_paths_and_bad_lines_fail_alone(tmp_path: Path) -> None:
    _photo(tmp_path / "photos" / "one.png")
    _photo(tmp_path / "photos" / "two.png")
    (tmp_path / "list.txt").write_bytes(b"# photos\nphotos/one.png\n\nphotos/gone.png\nphotos/\x07bad.png\n"
                                        + str(tmp_path / "photos" / "two.png").encode() + b"\n")  # fmt: skip
    out = tmp_path / "out"
    report = _run(out, list_tasks([], str(out), manifest=str(tmp_path / "list.txt")))
    assert report.counts == {"ok": 2, "failed": 2}
    reasons = dict(report.failures)
    assert "no such file" in reasons[str(tmp_path / "photos" / "gone.png")]
    assert any("line 5: unreadable (control characters)" in reason for reason in reasons.values())
    assert sorted(row["output"] for row in _rows(out) if row["status"] == "ok") == ["photos/one", "photos/two"]
    (tmp_path / "list.csv").write_text("file,path\nx,photos/one.png\ny,\n")
    csv = str(tmp_path / "list.csv")
    expected = [(str(tmp_path / "photos" / "one.png"), None), (f"{csv}:3", f"{csv} row 3: empty path")]
    assert read_manifest(csv) == expected


def test_a_worker_that_dies_on_a_photo_fails_that_photo_only(tmp_path: Path) -> None:
    """Three runs in subprocesses that a stand-in kills on the same photo: the first two die, the third
    fails that photo and finishes the rest."""
    for i in range(4):
        _photo(tmp_path / "in" / f"{i}.png", green=KILL if i == 2 else 0)
    out = tmp_path / "out"
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); from test_batch import StandIn; import functools\n"
        "from agrnet.batch import list_tasks, predict_tree\nfrom agrnet.predict import Settings\n"
        "r = predict_tree(functools.partial(StandIn, kill=True), list_tasks([sys.argv[2]], sys.argv[3]),"
        " Settings(sys.argv[3], ('labels',)), batch_size=4)\nprint(dict(r.counts))\n"
    )
    codes = []
    command = [sys.executable, "-c", script, str(Path(__file__).parent), str(tmp_path / "in"), str(out)]
    for _ in range(3):
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=_env())
        codes.append(done.returncode)
    assert codes == [-signal.SIGKILL, -signal.SIGKILL, 0], done.stderr[-2000:]
    rows = {row["output"]: row for row in _rows(out)}
    assert sorted(rows) == ["0", "1", "2", "3"]
    assert [rows[k]["status"] for k in "0123"] == ["ok", "ok", "failed", "ok"]
    assert "a worker process died while parsing it, twice; not retried" in rows["2"]["reason"]


def _predict_process(checkpoint: Path, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "agrnet.cli", "predict", str(checkpoint), *args, "--batch-size=1", "--threads=1"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())  # fmt: skip


def _wait_for_rows(out: Path, count: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        lines = sum(p.read_text().count("\n") for p in (out / STATE / "parts").glob("*.jsonl"))
        if lines >= count:
            return
        time.sleep(0.05)
    pytest.fail(f"no {count} rows before the deadline: {process.communicate()}")


def test_kill_9_mid_run_then_a_rerun_finishes_without_repeats(checkpoint: Path, tmp_path: Path) -> None:
    for i in range(12):
        _photo(tmp_path / "in" / f"{i:02d}.png", red=20 * i)
    out = tmp_path / "out"
    process = _predict_process(checkpoint, str(tmp_path / "in"), "--layout", "tree", "--out", str(out))
    (out / STATE / "parts").mkdir(parents=True, exist_ok=True)
    _wait_for_rows(out, 3, process)
    process.kill()
    process.wait()
    rerun = _predict_process(checkpoint, str(tmp_path / "in"), "--layout", "tree", "--out", str(out))
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr[-2000:]
    done_before = int(stdout.split(" done before")[0].rsplit(" ", 1)[1])
    assert 3 <= done_before < 12
    rows = _rows(out)
    assert sorted(row["output"] for row in rows) == [f"{i:02d}" for i in range(12)]  # each once
    assert all(is_agrnet_output(out / name) for row in rows for name in row["outputs"])
    assert not list((out / STATE / "tmp").iterdir()) and not list((out / STATE / "parts").iterdir())


@pytest.fixture
def sigint_not_ignored() -> Iterator[None]:
    """A suite started in the background by a non-interactive shell (``pytest &``) ignores SIGINT, and a child
    process inherits that and would never see Ctrl-C: give this process Python's handler while the test runs."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("layout", ["flat", "tree"])
@pytest.mark.usefixtures("sigint_not_ignored")
def test_ctrl_c_stops_cleanly_and_says_what_was_done(checkpoint: Path, tmp_path: Path, layout: str) -> None:
    for i in range(40):
        _photo(tmp_path / "in" / f"{i:02d}.png", size=(96, 96))
    out = tmp_path / "out"
    process = _predict_process(checkpoint, str(tmp_path / "in"), "--layout", layout, "--out", str(out))
    deadline = time.monotonic() + 120
    while not list(out.rglob("*_overlay.png")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-2000:]
    assert "interrupted" in stdout
    if layout == "tree":
        recorded = _rows(out)
        assert 1 <= len(recorded) < 40 and all(row["status"] == "ok" for row in recorded)


def test_outputs_never_replace_an_input_and_are_never_taken_as_inputs(
    checkpoint: Path, tmp_path: Path, capsys
) -> None:
    folder = tmp_path / "photos"
    _photo(folder / "face.jpg")
    user_labels = _photo(folder / "face_labels.png", 10)  # the user's own file, beside face.jpg
    original = user_labels.read_bytes()
    _photo(folder / "other.png")
    assert main(["predict", str(checkpoint), str(folder), "--out", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "face_labels.png: not written: a file agrnet did not write is there (an input?)" in out
    assert user_labels.read_bytes() == original
    before = sorted(p.name for p in folder.iterdir())
    assert main(["predict", str(checkpoint), str(folder), "--out", str(folder)]) == 1  # a second run
    out = capsys.readouterr().out
    assert "other_labels" not in out and "output(s) written, 1 input(s) failed" in out
    assert sorted(p.name for p in folder.iterdir()) == before  # 4 files do not become 13


def test_a_file_name_that_is_not_utf8_is_parsed(checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    _photo(folder / "plain.png")
    latin = os.fsdecode(bytes(folder) + b"/Jos\xe9.png")
    _photo(Path(latin))
    done = subprocess.run([sys.executable, "-m", "agrnet.cli", "predict", str(checkpoint), str(folder), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                          env=_env())  # fmt: skip
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "6 output(s) written, 0 input(s) failed" in done.stdout
    assert is_agrnet_output(os.fsdecode(bytes(tmp_path) + b"/out/Jos\xe9_labels.png"))


def test_any_decoder_exception_is_that_file_s_failure(checkpoint: Path, tmp_path: Path, capsys) -> None:
    dds = b"DDS " + (124).to_bytes(4, "little") + (0x1007).to_bytes(4, "little") + b"\x04\0\0\0" * 2
    dds = dds.ljust(76, b"\0") + (32).to_bytes(4, "little") + b"\x04\0\0\0XXXX"  # an unknown pixel format
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "texture.png").write_bytes(dds.ljust(192, b"\0"))
    _photo(tmp_path / "in" / "face.png")
    assert main(["predict", str(checkpoint), str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "3 output(s) written, 1 input(s) failed" in out and "texture.png" in out


def test_a_full_disk_fails_the_photo_with_the_reason(checkpoint: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    photo = _photo(tmp_path / "in" / "face.png")

    def no_space(source: object, target: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("agrnet.predict.os.replace", no_space)
    assert main(["predict", str(checkpoint), str(photo), "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "0 output(s) written, 1 input(s) failed" in out and "face_labels.png: not written (No space left" in out
    assert not list((tmp_path / "out").iterdir())  # no temporary file left behind


def _video(path: Path, width: int, height: int, frames: int = 2, fourcc: str = "MJPG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 5, (width, height))
    for i in range(frames):
        writer.write(np.full((height, width, 3), 60 * i, np.uint8))
    writer.release()
    return path


def test_video_frames_are_checked_against_the_pixel_budget(checkpoint: Path, tmp_path: Path, capsys) -> None:
    clip = _video(tmp_path / "clip.avi", 256, 256)
    args = ["predict", str(checkpoint), str(clip), "--out", str(tmp_path / "out")]
    assert main([*args, "--max-pixels", "1000"]) == 1
    assert "256×256 = 65536 pixels exceeds the pixel budget of 1000" in capsys.readouterr().out
    wide = _video(tmp_path / "wide.avi", 8200, 16)
    assert main(["predict", str(checkpoint), str(wide), "--out", str(tmp_path / "out")]) == 1
    assert "8200×16 frames are beyond the mp4v encoder (sides up to 8190)" in capsys.readouterr().out


class _Clip:
    """A stand-in for cv2.VideoCapture: OpenCV's own encoders crop odd sizes, so no odd video file can be made here."""

    def __init__(self, width: int, height: int) -> None:
        self.frames = [np.full((height, width, 3), 40 * i, np.uint8) for i in range(2)]
        self.props = {cv2.CAP_PROP_FRAME_WIDTH: width, cv2.CAP_PROP_FRAME_HEIGHT: height, cv2.CAP_PROP_FPS: 5}

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return True

    def get(self, prop: int) -> float:
        return self.props[prop]

    def read(self) -> tuple[bool, np.ndarray | None]:
        return (True, self.frames.pop()) if self.frames else (False, None)

    def release(self) -> None:
        pass


@pytest.mark.parametrize(("width", "height"), [(255, 255), (7, 3), (1, 1)])
def test_odd_and_tiny_videos_keep_every_pixel(checkpoint: Path, tmp_path: Path, monkeypatch, capsys, width, height):
    clip = _video(tmp_path / "clip.avi", 16, 16)
    opened = cv2.VideoCapture
    fake = lambda path: _Clip(width, height) if path.endswith(".avi") else opened(path)  # noqa: E731
    monkeypatch.setattr(cv2, "VideoCapture", fake)
    assert main(["predict", str(checkpoint), str(clip), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    capture = opened(str(tmp_path / "out" / "clip_overlay.mp4"))
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    assert size == (width + width % 2, height + height % 2) and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 2
    assert f"its overlay video is {size[0]}×{size[1]} (mp4v takes even sizes" in out
    assert is_agrnet_output(tmp_path / "out" / "clip_overlay.mp4")


def test_a_torchscript_file_is_refused_with_what_predict_takes(tmp_path: Path, capsys) -> None:
    torch.jit.script(torch.nn.Identity()).save(str(tmp_path / "ts.pt"))
    _photo(tmp_path / "face.png")
    assert main(["predict", str(tmp_path / "ts.pt"), str(tmp_path / "face.png"), "--out", str(tmp_path / "o")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "ts.pt: not an agrnet checkpoint: the file looks like a TorchScript file" in line
    assert "weights_only" not in line and "complete" not in line


def test_merging_keeps_the_latest_row_per_photo_and_skips_a_torn_line(tmp_path: Path) -> None:
    _photo(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    _run(out, list_tasks([str(tmp_path / "in")], str(out)))
    (row,) = _rows(out)
    journal = out / STATE / "parts" / "99999999999999999999-host-1-000000.jsonl"  # left by a killed writer
    journal.write_text(json.dumps(row | {"status": "failed", "reason": "later"}) + "\n" + '{"path": "cut sh')
    (merged,) = merge_results(out).to_pylist()
    assert merged["reason"] == "later" and not journal.exists()
    assert merge_results(out).to_pylist() == [merged] == _rows(out)
