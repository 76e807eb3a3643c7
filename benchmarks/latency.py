"""Question 1: inference latency and throughput per backbone, input size and batch size.

CPU always; CUDA (fp32, AMP bf16 + channels_last, and AMP + torch.compile) when a GPU is present.
Prints a table and writes benchmarks/results/latency[_quick].json.
"""

from __future__ import annotations

import argparse

import torch

from agrnet.build import ModelConfig, build_agrnet
from common import median_time, result_name, table, write_result


def measure(backbone: str, size: int, batch: int, device: torch.device, mode: str, warmup: int, repeats: int):
    model = build_agrnet(ModelConfig(backbone=backbone)).eval().to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    amp = mode != "fp32"
    if amp:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    run_model = torch.compile(model) if mode == "amp+compile" else model

    @torch.no_grad()
    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            run_model(x)

    seconds = median_time(step, device, warmup, repeats)
    return {
        "backbone": backbone,
        "size": size,
        "batch": batch,
        "device": device.type,
        "mode": mode,
        "latency_ms": round(1000 * seconds, 2),
        "images_per_s": round(batch / seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="CI-sized: ResNet-18 at 128, seconds")
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument("--gpu-only", action="store_true", help="skip the CPU sweep (a GPU machine's time is short)")
    parser.add_argument("--no-compile", action="store_true", help="skip amp+compile (a compile per row: minutes)")
    args = parser.parse_args()
    backbones = ["resnet18"] if args.quick else ["resnet18", "resnet50", "resnet101"]
    sizes = [128] if args.quick else [256, 473, 512]
    batches = [1] if args.quick else [1, 8]
    warmup, repeats = (1, 3) if args.quick else (2, 5)
    rows = []
    if args.gpu_only and not torch.cuda.is_available():
        parser.error("--gpu-only needs a CUDA device")
    devices = [] if args.gpu_only else [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
    for device in devices:
        modes = ["fp32"] if device.type == "cpu" else ["fp32", "amp"] + ([] if args.no_compile else ["amp+compile"])
        for backbone in backbones:
            for size in sizes:
                for batch in batches:
                    if device.type == "cpu" and not args.quick and batch > 1 and backbone != "resnet18":
                        continue  # keeps the CPU sweep within minutes on 2 cores
                    for mode in modes:
                        cuda_warmup = 10 if mode == "amp+compile" else 5
                        rows.append(
                            measure(
                                backbone,
                                size,
                                batch,
                                device,
                                mode,
                                warmup if device.type == "cpu" else cuda_warmup,
                                repeats if device.type == "cpu" else 20,
                            )
                        )
                        print(table(rows[-1:], list(rows[-1])).splitlines()[-1], flush=True)
    print(table(rows, list(rows[0])))
    path = write_result(
        result_name("latency", args.quick, torch.device("cuda") if args.gpu_only else None), {"rows": rows}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
