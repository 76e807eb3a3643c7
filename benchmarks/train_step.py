"""Question 3: training step time and memory per batch size; fp32 vs AMP (bf16) on GPU.

A step is forward + the full AGRNet loss + backward + SGD update. Memory: CUDA peak on GPU; on CPU
the bytes autograd saves for backward.
"""

from __future__ import annotations

import argparse

import torch

from agrnet.build import ModelConfig, build_agrnet
from agrnet.edges import label_edges
from agrnet.losses import AGRNetLoss
from common import median_time, result_name, table, write_result
from module_overhead import saved_bytes


def measure(backbone: str, size: int, batch: int, device: torch.device, amp: bool, warmup: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build_agrnet(ModelConfig(backbone=backbone)).train().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    criterion = AGRNetLoss()
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 11, (batch, size, size), device=device)
    edges = label_edges(labels)
    if amp:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)

    def forward_loss() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            output = model(images)
        return criterion(output, labels, edges)["total"]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        forward_loss().backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = median_time(step, device, warmup, repeats)
    memory = (
        torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else saved_bytes(forward_loss) / 2**20
    )
    return {
        "backbone": backbone,
        "size": size,
        "batch": batch,
        "device": device.type,
        "amp": amp,
        "step_ms": round(1000 * seconds, 1),
        "images_per_s": round(batch / seconds, 2),
        "memory_mb": round(memory, 1),
        "memory_kind": "cuda_peak" if device.type == "cuda" else "saved_for_backward",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="CI-sized: ResNet-18 at 128")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if args.quick:
        configs = [("resnet18", 128, b) for b in (2, 4)]
    elif gpu:
        # From 2: a batch of one has a 1x1 pooled context map, which BatchNorm refuses in training.
        configs = [("resnet101", 473, b) for b in (2, 4, 8, 16)]
    else:
        configs = [("resnet18", 256, b) for b in (2, 4, 8)] + [("resnet101", 473, 2)]
    rows = []
    for backbone, size, batch in configs:
        for amp in [False, True] if gpu else [False]:
            rows.append(measure(backbone, size, batch, device, amp, 3 if gpu else 1, 10 if gpu else 3))
            print(table(rows[-1:], list(rows[-1])).splitlines()[-1], flush=True)
    print(table(rows, list(rows[0])))
    print(f"wrote {write_result(result_name('train_step', args.quick, device), {'rows': rows})}")


if __name__ == "__main__":
    main()
