"""Shared helpers for the benchmark scripts: timing, machine description, result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

# Committed results live here; tests point AGRNET_BENCH_RESULTS elsewhere.
RESULTS = Path(os.environ.get("AGRNET_BENCH_RESULTS", Path(__file__).parent / "results"))
# The real faces beside the checkout (../shared/data), the default --data of the scripts that score on them.
CELEBAMASK_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "celebamask-mini"


def machine() -> dict[str, object]:
    info: dict[str, object] = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        model_name = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
        info["cpu"] = model_name
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn`` in seconds after ``warmup`` calls (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def result_name(question: str, quick: bool, device: torch.device | None = None) -> str:
    """``question[_quick][_cpu|_cuda]``; no device part for a file that holds several devices."""
    device_part = "" if device is None else ("_cuda" if device.type == "cuda" else "_cpu")
    return question + ("_quick" if quick else "") + device_part


def write_result(name: str, payload: dict[str, object]) -> Path:
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    return path


def table(rows: list[dict[str, object]], columns: list[str]) -> str:
    widths = [max(len(c), *(len(f"{r.get(c, '')}") for r in rows)) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(f"{r.get(c, '')}".ljust(w) for c, w in zip(columns, widths, strict=True)) for r in rows]
    return "\n".join(lines)
