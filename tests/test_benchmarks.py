"""The benchmark scripts run in their CI-sized form and write well-formed results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


@pytest.mark.parametrize(
    ("script", "result"),
    [
        ("latency.py", "latency_quick.json"),
        ("module_overhead.py", "module_overhead_quick_cpu.json"),
        ("train_step.py", "train_step_quick_cpu.json"),
        ("eval_throughput.py", "eval_throughput_quick_cpu.json"),
        ("gpu_parse.py", "gpu_parse_quick_cpu.json"),
    ],
)
def test_quick_benchmark(script: str, result: str, tmp_path: Path) -> None:
    env = os.environ | {"AGRNET_BENCH_RESULTS": str(tmp_path)}
    args = [sys.executable, script, "--quick"] + ([] if script == "latency.py" else ["--device", "cpu"])
    done = subprocess.run(args, cwd=BENCHMARKS, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    payload = json.loads((tmp_path / result).read_text())
    assert payload["machine"]["cpu_count"] >= 1
    rows = payload.get("rows") or payload["variants"]
    assert rows and all(value is not None for value in rows[0].values())
    if script == "module_overhead.py":
        ratios = {row["variant"]: row["ratio_to_baseline"] for row in payload["variants"]}
        assert ratios["baseline"] == 1.0 and set(ratios) == {
            "baseline", "spatial", "adaptive", "adaptive_graph", "adaptive_edge", "full"
        }  # fmt: skip
        assert {row["block"] for row in payload["scaling"]} == {"agrnet_graph", "non_local", "dual_attention"}


def test_average_weights_is_the_mean_of_floats_and_keeps_the_last_counters(tmp_path: Path) -> None:
    import torch

    from agrnet.checkpoints import atomic_save

    sys.path.insert(0, str(BENCHMARKS))
    try:
        from average_weights import average_checkpoints
    finally:
        sys.path.remove(str(BENCHMARKS))
    paths = []
    for i, (weight, count) in enumerate([(torch.tensor([1.0, 2.0]), 5), (torch.tensor([3.0, 6.0]), 9)]):
        state = {"config": {"seed": i}, "model": {"w": weight, "bn.num_batches_tracked": torch.tensor(count)},
                 "optimizer": {"lr": 0.1}}  # fmt: skip
        paths.append(tmp_path / f"{i}.pt")
        atomic_save(state, paths[-1])
    averaged = average_checkpoints(paths)
    assert torch.equal(averaged["model"]["w"], torch.tensor([2.0, 4.0]))
    assert averaged["model"]["bn.num_batches_tracked"].item() == 9 and averaged["config"] == {"seed": 1}
    assert "optimizer" not in averaged
    atomic_save({"config": {}, "model": {"other": torch.zeros(2)}}, tmp_path / "2.pt")
    with pytest.raises(SystemExit, match="not one architecture"):
        average_checkpoints([paths[0], tmp_path / "2.pt"])
