"""One GPU lease, prepared as a single command: fine-tune the shipped human parser on CCP's train split for a
wall-clock budget, then measure the GPU figures the CPU benchmarks lack.

Training: a 40-iteration probe measures images per second, the run gets as many iterations as fit the
budget (so its poly schedule ends), and each ``last.pt`` it writes (four, evenly spaced) is packed to fp16
in ``--out`` as ``ccp_gpu_itN.pt`` for selection on val afterwards, on the CPU machine: the lease carries
at most 64 MiB, room for the train split only. A run past its budget is stopped with SIGTERM, which
makes the trainer save ``last.pt``. Before it ``gpu_parse.py``, after it ``train_step.py`` and ``latency.py``
(``--gpu-only --no-compile``), each with its own time limit. Logs and result files are kept in
``--out``/results.tar.gz, rewritten after every step so that a killed command still returns them.

    python benchmarks/gpu_session.py --out $OUT --ccp .devdata/ccp --train-seconds 300
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from agrnet.checkpoints import load_checkpoint
from agrnet.pretrained import pack_checkpoint

# The recipe of the shipped 512 x 352 fine-tune (benchmarks/results/ccp/README.md), at batch 16.
RECIPE = [
    "init_from=agrnet_mbv2_ccp", "model.pretrained=null", "data.size=512", "data.width=352",
    "loss.class_balance=0.5", "optim.lr=0.0003", "seed=0",
]  # fmt: skip
SNAPSHOTS = 4


def agrnet(*args: str) -> list[str]:
    return [sys.executable, "-m", "agrnet.cli", *args]


def run_step(command: list[str], seconds: float, logs: Path, name: str) -> int:
    """Run ``command`` with its output in ``logs/name.log``; SIGTERM at ``seconds``, SIGKILL 60 s later."""
    with open(logs / f"{name}.log", "w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            return process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                return process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                return process.wait()


def probe_images_per_s(recipe: list[str], logs: Path) -> float:
    """Steady speed of the real recipe: the images per second of the last 10 of 40 iterations."""
    run_dir = Path("/tmp/agrnet_probe")
    command = agrnet("train", "--config", "ccp", "--overwrite", *recipe, "iterations=40", "log_every=10",
                     "checkpoint_every=1000", "val_every=1000", f"out_dir={run_dir}")  # fmt: skip
    rc = run_step(command, 240, logs, "probe")
    if rc != 0:
        raise SystemExit(f"probe failed (exit {rc}); see probe.log")
    with open(run_dir / "log.csv") as file:
        return float(list(csv.DictReader(file))[-1]["images_per_s"])


def train(args: argparse.Namespace, out: Path, logs: Path) -> None:
    recipe = [*RECIPE, f"data.root={args.ccp}", f"data.workers={args.workers}", f"device={args.device}",
              f"optim.batch_size={args.batch_size}", *args.override]  # fmt: skip
    speed = probe_images_per_s(recipe, logs)
    # 0.8: the probe runs inside one epoch; the real run also restarts its loader workers every epoch.
    fit = int(0.8 * speed * args.train_seconds / args.batch_size)
    iterations = max(SNAPSHOTS, fit // SNAPSHOTS * SNAPSHOTS)
    (logs / "plan.txt").write_text(f"probe {speed:.1f} images/s -> {iterations} iterations of {args.batch_size}\n")
    run_dir = Path("/tmp/agrnet_ccp_gpu")
    # Cleared here, not only by --overwrite: the watcher below would pack an earlier run's last.pt before the
    # trainer starts and clears the folder itself.
    shutil.rmtree(run_dir, ignore_errors=True)
    every = iterations // SNAPSHOTS
    command = agrnet("train", "--config", "ccp", "--overwrite", *recipe, f"iterations={iterations}",
                     f"checkpoint_every={every}", f"val_every={iterations}", f"out_dir={run_dir}")  # fmt: skip
    with open(logs / "train.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline, packed = time.monotonic() + args.train_seconds + 60, 0.0
        while process.poll() is None:
            if time.monotonic() > deadline:
                process.terminate()
                process.wait(timeout=120)
                break
            packed = pack_new_snapshot(run_dir, out, packed)
            time.sleep(2)
        pack_new_snapshot(run_dir, out, packed)
    if (run_dir / "log.csv").exists():
        shutil.copy(run_dir / "log.csv", logs / "ccp_gpu_log.csv")


def pack_new_snapshot(run_dir: Path, out: Path, packed: float) -> float:
    """Pack ``last.pt`` to ``out/ccp_gpu_itN.pt`` when it is newer than the last one packed; -> its mtime."""
    last = run_dir / "last.pt"
    if not last.exists() or last.stat().st_mtime <= packed:
        return packed
    mtime = last.stat().st_mtime
    iteration = load_checkpoint(last)["iteration"]
    print(f"snapshot at iteration {iteration}: {pack_checkpoint(last, out / f'ccp_gpu_it{iteration}.pt')}", flush=True)
    return mtime


def bundle(logs: Path, out: Path) -> None:
    with tarfile.open(out / "results.tar.gz", "w:gz") as tar:
        tar.add(logs, arcname="results")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ccp", default=".devdata/ccp", help="a folder holding CCP's train/ split")
    parser.add_argument("--train-seconds", type=float, default=300)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 4))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--override", nargs="*", default=[], help="more config overrides (a CPU smoke run: a small canvas)"
    )
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args()
    # Outside --out: what comes back from a lease is at most 8 files, so the logs travel as one archive.
    logs = Path(tempfile.mkdtemp()) / "results"
    logs.mkdir()
    os.environ["AGRNET_BENCH_RESULTS"] = str(logs)
    bench = Path(__file__).parent
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")

    def benchmark(name: str, seconds: float, *flags: str) -> None:
        if not args.skip_bench:
            command = [sys.executable, str(bench / f"{name}.py"), *flags]
            print(f"{name}: exit {run_step(command, seconds, logs, name)}", flush=True)
            bundle(logs, args.out)

    # The parsers' figures first (a minute), then training, then the slower sweeps: a lease cut short
    # still returns the figures users ask for first.
    benchmark("gpu_parse", 90)
    if not args.skip_train:
        train(args, args.out, logs)
        bundle(logs, args.out)
    benchmark("train_step", 80, "--device", "cuda")
    benchmark("latency", 100, "--gpu-only", "--no-compile")


if __name__ == "__main__":
    main()
