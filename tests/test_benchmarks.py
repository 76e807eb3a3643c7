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


def test_recalibrate_bn_recomputes_only_the_batchnorm_statistics_from_training_canvases(tmp_path: Path) -> None:
    import torch
    from conftest import tiny_train_config

    from agrnet.checkpoints import load_checkpoint, model_from_checkpoint
    from agrnet.data.synth import generate
    from agrnet.train import train

    sys.path.insert(0, str(BENCHMARKS))
    try:
        from recalibrate_bn import image_batches, recalibrate, training_faces
    finally:
        sys.path.remove(str(BENCHMARKS))
    generate(tmp_path / "data", 30, 48, seed=1, progress=False)
    source = train(tiny_train_config(tmp_path / "data", tmp_path / "run", "iterations=1"), progress=False)
    recalibrated = recalibrate(source, batches=2, batch_size=4, seed=3)
    before = load_checkpoint(source)["model"]
    after = recalibrated["model"]
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.rsplit(".", 1)[1] in ("running_mean", "running_var", "num_batches_tracked") for k in moved)
    assert "optimizer" not in recalibrated

    # The first BatchNorm sees the same tensor in any mode: its statistics must be those of its inputs on the
    # same 2 x 4 training canvases (mean of the per-batch means and of the per-batch unbiased variances).
    model, config = model_from_checkpoint(source)
    name, first_bn = next((n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d))
    inputs: list[torch.Tensor] = []
    first_bn.register_forward_hook(lambda module, args, output: inputs.append(args[0].detach()))
    model.eval()
    with torch.no_grad():
        for images in image_batches(training_faces(config, 3), 2, 4, 3):
            model(images)
    means = torch.stack([x.mean((0, 2, 3)) for x in inputs]).mean(0)
    variances = torch.stack([x.transpose(0, 1).flatten(1).var(1) for x in inputs]).mean(0)
    torch.testing.assert_close(after[f"{name}.running_mean"], means, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(after[f"{name}.running_var"], variances, rtol=1e-4, atol=1e-5)
