"""Question: where does one ``agrnet predict`` process spend its wall time, and what bounds its efficiency?

Runs the tree-layout batch path (``agrnet.batch.predict_tree``, what ``agrnet predict --layout tree`` runs)
in this process with 1 torch thread over the same photos as batch_throughput.py (default 200 test faces,
``--detect-faces``), once with all three outputs and once with ``--outputs labels``, and times every stage
by wrapping the function that does it: model loading, JPEG decode (``load_image``), face detection
(``MTCNN.detect``), the parsing network (``Parser._logits``: every forward pass), the rest of
``Parser.predict`` (alignment, softmax, paste-back), writing the outputs (colouring, PNG encoding, atomic
write) and what is left (results table, journal, listing). Then the rate a run over millions of photos
sees once started, of that process and of ``--engine ray`` with 1 and 2 actors (1 CPU and 1 torch thread
each, Ray started locally by ``predict_tree``), all with ``--outputs labels``: each runs on the first half
of the photos and on all of them, and the marginal rate is the second half's photos over the difference of
the two wall times, so that start-up (Ray, actors, model loading) cancels; beside it the sum of the results
table's per-photo seconds (the work measured where each photo is parsed), which start-up does not touch.
Writes benchmarks/results/batch_stages[_quick].json and .md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import agrnet.batch
import agrnet.predict
from agrnet.batch import RayOptions, list_tasks, predict_tree
from agrnet.detection.mtcnn import MTCNN
from agrnet.devices import set_threads
from agrnet.inference import Parser
from agrnet.predict import Settings
from common import CELEBAMASK_MINI, RESULTS, machine, result_name, write_result

PHOTOS = CELEBAMASK_MINI / "test" / "images"
STAGES = ("load model", "decode", "detection", "parsing network", "align + paste-back", "write outputs", "rest")


class Stopwatch:
    """Seconds spent inside wrapped functions, by stage; nested stages are subtracted from their parent."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[str] = []

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._stack.append(stage)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                self._stack.pop()
                self.seconds[stage] += spent
                if self._stack:
                    self.seconds[self._stack[-1]] -= spent

        return timed


def _patched(watch: Stopwatch) -> list[tuple[Any, str, Any]]:
    """Install the stage timers; returns what to restore."""
    targets = [
        (agrnet.predict, "load_image", "decode"),
        (MTCNN, "detect", "detection"),
        (Parser, "_logits", "parsing network"),
        (Parser, "predict", "align + paste-back"),
        (agrnet.predict, "_write_outputs", "write outputs"),
    ]
    saved = []
    for owner, name, stage in targets:
        original = getattr(owner, name)
        saved.append((owner, name, original))
        setattr(owner, name, watch.wrap(stage, original))
    return saved


def _load_shipped() -> Parser:
    return Parser.from_pretrained(device="cpu")


def _predict(
    make_parser: Callable[[], Parser], photos: Path, out: Path, outputs: tuple[str, ...], batch_size: int,
    ray_options: RayOptions | None = None,
) -> float:  # fmt: skip
    """Seconds of one ``predict_tree`` run over the photos with detect_faces; any failed photo ends the benchmark."""
    start = time.perf_counter()
    tasks = list_tasks([str(photos)], str(out))
    settings = Settings(str(out), outputs, detect_faces=True)
    report = predict_tree(make_parser, tasks, settings, batch_size=batch_size, ray_options=ray_options)
    if report.counts["failed"]:
        raise SystemExit(f"{report.counts['failed']} photos failed:\n{report.summary()}")
    return time.perf_counter() - start


def _run(photos: Path, out: Path, outputs: tuple[str, ...], batch_size: int) -> dict[str, Any]:
    watch = Stopwatch()

    def make_parser() -> Parser:
        loaded = time.perf_counter()
        parser = _load_shipped()
        parser.detector  # noqa: B018  (built here so that detection times only detection)
        watch.seconds["load model"] += time.perf_counter() - loaded
        return parser

    saved = _patched(watch)
    try:
        wall = _predict(make_parser, photos, out, outputs, batch_size)
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
    watch.seconds["rest"] = wall - sum(watch.seconds.values())
    photo_count = len(list(photos.iterdir()))
    return {
        "outputs": "+".join(outputs), "wall_s": round(wall, 2), "images_per_s": round(photo_count / wall, 3),
        "seconds": {stage: round(watch.seconds[stage], 2) for stage in STAGES},
        "share": {stage: round(watch.seconds[stage] / wall, 4) for stage in STAGES},
    }  # fmt: skip


def _wall(photos: Path, out: Path, workers: int, batch_size: int) -> tuple[float, float]:
    """-> (wall seconds, the sum of the results table's per-photo seconds) of one run with ``--outputs
    labels``; workers 0: this process, else Ray actors. The per-photo seconds are measured where the photo
    is parsed (decode, detection, parsing, paste-back, writing), so their sum shows whether a worker
    itself works faster or only the wall clock around it differs."""
    import pyarrow.parquet as pq

    options = RayOptions(workers=workers, cpus=1) if workers else None
    wall = _predict(_load_shipped, photos, out, ("labels",), batch_size, options)
    work = sum(pq.read_table(out / "results.parquet", columns=["seconds"])["seconds"].to_pylist())
    return wall, work


def _marginal(half: Path, full: Path, count: int, scratch: Path, workers: int, batch_size: int) -> dict[str, Any]:
    """Wall times on ``half`` (count // 2 photos) and ``full`` (count) -> the marginal rate of the second half."""
    name = f"ray, {workers} actor{'s' if workers > 1 else ''}" if workers else "one process"
    (half_wall, half_work), (wall, work) = [
        _wall(photos, scratch / f"{name}-{photos.name}", workers, batch_size) for photos in (half, full)
    ]
    rate = (count - count // 2) / (wall - half_wall)
    return {"run": name, "wall_half_s": round(half_wall, 2), "wall_s": round(wall, 2),
            "images_per_s": round(count / wall, 3), "marginal_images_per_s": round(rate, 3),
            "work_s": round(work, 2), "work_half_s": round(half_work, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="8 photos")
    parser.add_argument("--photos", type=int, help="how many (default 200; --quick 8)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-ray", action="store_true", help="only the one-process rows")
    args = parser.parse_args()
    if not PHOTOS.is_dir():
        raise SystemExit(f"{PHOTOS} is missing; the benchmark needs those photos")
    set_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    photos = sorted(PHOTOS.glob("*.jpg"))[: args.photos or (8 if args.quick else 200)]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folders = {"half": Path(scratch, "half"), "in": Path(scratch, "in")}
        for name, folder in folders.items():
            folder.mkdir()
            for photo in photos[: len(photos) // 2] if name == "half" else photos:
                os.symlink(photo, folder / photo.name)
        for outputs in (("labels", "mask", "overlay"), ("labels",)):
            rows.append(_run(folders["in"], Path(scratch, "+".join(outputs)), outputs, args.batch_size))
        workers = [0] if args.no_ray else [0, 1, 2]
        engines = [_marginal(*folders.values(), len(photos), Path(scratch), n, args.batch_size) for n in workers]
    for engine in engines:
        engine["ratio_to_one_process"] = round(engine["marginal_images_per_s"] / engines[0]["marginal_images_per_s"], 3)
    name = result_name("batch_stages", args.quick)
    path = write_result(name, {"photos": len(photos), "detect_faces": True, "batch_size": args.batch_size,
                               "machine": machine(), "rows": rows, "engines": engines})  # fmt: skip
    lines = [f"{len(photos)} photos, detect_faces, 1 torch thread, batch {args.batch_size}, one process "
             f"(`predict_tree` in the benchmark's process)", "",
             "| stage | " + " | ".join(f"{r['outputs']}: s (share)" for r in rows) + " |",
             "|---|" + "---|" * len(rows)]  # fmt: skip
    for stage in STAGES:
        cells = [f"{r['seconds'][stage]} ({100 * r['share'][stage]:.1f} %)" for r in rows]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines.append("| wall | " + " | ".join(f"{r['wall_s']} ({r['images_per_s']} img/s)" for r in rows) + " |")
    lines += ["", f"Marginal rate, `--outputs labels`: the second {len(photos) - len(photos) // 2} photos over the "
              "difference of the wall times on half and on all photos (start-up cancels)", "",
              "| run | wall, half (s) | wall, all (s) | images/s, whole run | marginal images/s | ratio to one "
              "| per-photo work, half / all (s) |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    lines += [f"| {e['run']} | {e['wall_half_s']} | {e['wall_s']} | {e['images_per_s']} | "
              f"{e['marginal_images_per_s']} | {e['ratio_to_one_process']} | {e['work_half_s']} / {e['work_s']} |"
              for e in engines]  # fmt: skip
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
