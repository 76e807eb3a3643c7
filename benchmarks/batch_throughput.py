"""Question: how close to the model's own speed does agrnet predict run, in each engine?

The same photos (default 200 of ../shared/data/celebamask-mini/test/images, the shipped model,
``--detect-faces``) through: the model alone (``Parser.predict`` on decoded arrays, 1 torch
thread), one ``agrnet predict`` process (``--threads 1``), ``--engine ray`` with 1 and 2 actors
(1 CPU and 1 torch thread each) and 2 ``--shard`` processes side by side. Each run is a fresh CLI
process into a fresh folder; images per second count the whole command, and for Ray also after
subtracting a separately measured ``ray.init`` + ``ray.shutdown``. Ratios are to the model alone.
Writes benchmarks/results/batch_throughput[_quick].json and .md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from agrnet.data.datasets import load_image
from agrnet.inference import Parser
from common import CELEBAMASK_MINI, RESULTS, result_name, table, write_result

PHOTOS = CELEBAMASK_MINI / "test" / "images"


def _model_only(photos: list[Path], detect_faces: bool) -> float:
    torch.set_num_threads(1)
    parser = Parser.from_pretrained(device="cpu")
    images = [load_image(photo) for photo in photos]
    parser.predict(images[0], detect_faces=detect_faces)  # warm-up
    start = time.perf_counter()
    for image in images:
        parser.predict(image, detect_faces=detect_faces)
    return time.perf_counter() - start


def _ray_startup() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import ray; ray.init(address='local', include_dashboard=False); "
                    "ray.shutdown()"], check=True, capture_output=True)  # fmt: skip
    return time.perf_counter() - start


def _runs(folder: Path, extra: list[str]) -> dict[str, list[list[str]]]:
    base = ["predict", str(folder / "in"), "--layout", "tree", "--threads", "1", "--device", "cpu", *extra]
    ray = [*base, "--engine", "ray", "--cpus-per-worker", "1"]
    return {
        "one process": [base],
        "ray, 1 actor": [[*ray, "--workers", "1"]],
        "ray, 2 actors": [[*ray, "--workers", "2"]],
        "2 shard processes": [[*base, "--shard", "0/2"], [*base, "--shard", "1/2"]],
    }


def _timed(commands: list[list[str]], out: Path) -> float:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    processes = [
        subprocess.Popen([sys.executable, "-m", "agrnet.cli", *command, "--out", str(out)], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for command in commands
    ]  # fmt: skip
    for process in processes:
        _, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"{commands}: exit {process.returncode}\n{err[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="8 photos")
    parser.add_argument("--photos", type=int, help="how many (default 200; --quick 8)")
    parser.add_argument("--no-detect-faces", action="store_true", help="parse each photo as one face crop")
    args = parser.parse_args()
    if not PHOTOS.is_dir():
        raise SystemExit(f"{PHOTOS} is missing; the benchmark needs those photos")
    photos = sorted(PHOTOS.glob("*.jpg"))[: args.photos or (8 if args.quick else 200)]
    detect = not args.no_detect_faces
    model_seconds = _model_only(photos, detect)
    startup = _ray_startup()
    rows = [{"run": "model alone", "seconds": round(model_seconds, 2),
             "images_per_s": round(len(photos) / model_seconds, 2), "ratio_to_model": 1.0}]  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        (folder / "in").mkdir()
        for photo in photos:
            os.symlink(photo, folder / "in" / photo.name)
        for name, commands in _runs(folder, ["--detect-faces"] if detect else []).items():
            seconds = _timed(commands, folder / name.replace(" ", "_").replace(",", ""))
            working = seconds - startup if name.startswith("ray") else seconds
            rows.append({"run": name, "seconds": round(seconds, 2), "images_per_s": round(len(photos) / working, 2),
                         "ratio_to_model": round(model_seconds / working, 3)})  # fmt: skip
    print(table(rows, list(rows[0])))
    name = result_name("batch_throughput", args.quick)
    payload = {"photos": len(photos), "detect_faces": detect, "ray_startup_s": round(startup, 2), "rows": rows}
    path = write_result(name, payload)
    lines = [f"{len(photos)} photos, detect_faces={detect}, Ray start-up {startup:.1f} s (subtracted for Ray rows)", "",
             "| run | seconds | images/s | ratio to the model alone |", "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['run']} | {r['seconds']} | {r['images_per_s']} | {r['ratio_to_model']} |" for r in rows]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
