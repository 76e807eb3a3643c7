"""Question 2: what the graph modules cost.

(a) Latency of every Table I(a) variant relative to the baseline (backbone + context + fusion +
    classifier), measured side by side in one run.
(b) Scaling curve at one feature map of width C: the AGRNet graph head (raw head Z0, top-K
    projection, graph reasoning, reprojection) against a non-local block (Wang et al. 2018) and a
    dual-attention block (position + channel attention, Fu et al. 2019) of the same width, as the
    map grows. Memory is the size of the tensors autograd saves for backward (any device), plus the
    CUDA peak where a GPU is used.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from torch import nn

from agrnet.build import ABLATIONS, ModelConfig, ablation, build_agrnet
from agrnet.modeling.graph import AdaptiveProjection, Classifier, GraphReasoning, Reprojection
from common import median_time, result_name, table, write_result


class NonLocal(nn.Module):
    """Embedded-Gaussian non-local block: softmax(theta^T phi) over all N = H*W positions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = channels // 2
        self.theta, self.phi, self.g = (nn.Conv2d(channels, inner, 1) for _ in range(3))
        self.out = nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q = self.theta(x).flatten(2).transpose(1, 2)  # (N, HW, C/2)
        k = self.phi(x).flatten(2)  # (N, C/2, HW)
        v = self.g(x).flatten(2).transpose(1, 2)
        attention = torch.bmm(q, k).softmax(-1)  # (N, HW, HW): the O(N^2) term
        return x + self.out(torch.bmm(attention, v).transpose(1, 2).reshape(n, -1, h, w))


class DualAttention(nn.Module):
    """DANet's position attention (HW x HW) and channel attention (C x C), summed."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query, self.key = nn.Conv2d(channels, channels // 8, 1), nn.Conv2d(channels, channels // 8, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma_p, self.gamma_c = nn.Parameter(torch.ones(1)), nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)
        k = self.key(x).flatten(2)
        position = torch.bmm(self.value(x).flatten(2), torch.bmm(q, k).softmax(-1).transpose(1, 2))
        flat = x.flatten(2)
        channel = torch.bmm(torch.bmm(flat, flat.transpose(1, 2)).softmax(-1), flat)
        return x + self.gamma_p * position.view(n, c, h, w) + self.gamma_c * channel.view(n, c, h, w)


class GraphHead(nn.Module):
    """AGRNet's graph branch on X0 given the edge probability E: Z0, top-K vertices, GCN, reprojection."""

    def __init__(self, channels: int, num_classes: int = 11, top_k: int = 4) -> None:
        super().__init__()
        self.raw_head = Classifier(channels, 48, num_classes, bias=False)
        self.projection = AdaptiveProjection(num_classes, top_k)
        self.reasoning = GraphReasoning(num_classes * top_k, channels)
        self.reprojection = Reprojection()

    def forward(self, x0: torch.Tensor, edge_prob: torch.Tensor) -> torch.Tensor:
        vertices, _ = self.projection(x0 * (1 - edge_prob), self.raw_head(x0))
        reprojected, _ = self.reprojection(vertices, self.reasoning(vertices), x0 * edge_prob, edge_prob)
        return x0 + reprojected


def saved_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the tensors autograd keeps for backward during ``fn()`` (training-memory proxy)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def variant_overhead(backbone: str, size: int, device: torch.device, warmup: int, repeats: int) -> list[dict]:
    """Median latency per variant, timed in interleaved rounds (one forward of each variant per round)
    so that drift in machine speed affects every variant alike."""
    x = torch.randn(1, 3, size, size, device=device)
    names = ["baseline", *[n for n in ABLATIONS if n != "baseline"]]
    models = {n: build_agrnet(ablation(n, ModelConfig(backbone=backbone))).eval().to(device) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.no_grad():
        for model in models.values():
            for _ in range(warmup):
                model(x)
        for _ in range(repeats):
            for name, model in models.items():
                times[name].append(median_time(lambda m=model: m(x), device, 0, 1))
    base = statistics.median(times["baseline"])
    rows = []
    for name in names:
        seconds = statistics.median(times[name])
        rows.append({"variant": name, "backbone": backbone, "size": size, "device": device.type,
                     "latency_ms": round(1000 * seconds, 1), "ratio_to_baseline": round(seconds / base, 4),
                     "repeats": repeats})  # fmt: skip
    print(table(rows, list(rows[0])), flush=True)
    return rows


def scaling(sides: list[int], channels: int, device: torch.device, warmup: int, repeats: int) -> list[dict]:
    blocks = {
        "agrnet_graph": GraphHead(channels),
        "non_local": NonLocal(channels),
        "dual_attention": DualAttention(channels),
    }
    rows = []
    for side in sides:
        x = torch.randn(1, channels, side, side, device=device)
        edge = torch.rand(1, 1, side, side, device=device)
        for name, block in blocks.items():
            block = block.to(device).eval()
            call = (lambda b=block, x=x, e=edge: b(x, e)) if name == "agrnet_graph" else (lambda b=block, x=x: b(x))
            with torch.no_grad():
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                seconds = median_time(call, device, warmup, repeats)
                peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
            block.train()
            saved = saved_bytes(call) / 2**20
            block.eval()
            rows.append(
                {
                    "block": name,
                    "side": side,
                    "pixels": side * side,
                    "device": device.type,
                    "latency_ms": round(1000 * seconds, 2),
                    "saved_for_backward_mb": round(saved, 1),
                    "cuda_peak_mb": None if peak is None else round(peak, 1),
                }
            )
            print(table(rows[-1:], list(rows[-1])).splitlines()[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="CI-sized: ResNet-18 at 128, small maps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.quick:
        variants = variant_overhead("resnet18", 128, device, 1, 3)
        curve = scaling([16, 32], 64, device, 1, 3)
    else:
        gpu = device.type == "cuda"
        variants = variant_overhead("resnet101", 473, device, 5 if gpu else 1, 30 if gpu else 9)
        curve = scaling([30, 60, 90, 119, 160], 256, device, 5 if gpu else 1, 20 if gpu else 3)
    print(table(curve, list(curve[0])))
    path = write_result(result_name("module_overhead", args.quick, device), {"variants": variants, "scaling": curve})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
