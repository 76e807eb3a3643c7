"""Parameters and FLOPs per AGRNet part (our version of the paper's Table I(d)).

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add; convolutions
and matrix products only: interpolation, softmax and normalisation are not counted).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from agrnet.modeling.agrnet import AGRNet

# Table rows -> the AGRNet attributes they sum. The projection row holds Z0, vertex selection and the
# reprojection (similarity, softmax, X̂_G P); fusion X0 is its own row because the baseline has it too.
PARTS: dict[str, tuple[str, ...]] = {
    "backbone": ("backbone",),
    "context": ("context",),
    "fusion": ("fusion",),
    "edge": ("edge",),
    "projection": ("raw_head", "projection", "reprojection"),
    "reasoning": ("reasoning",),
    "head": ("head",),
}


def profile_model(model: AGRNet, image_size: tuple[int, int], batch_size: int = 1) -> dict[str, dict[str, float]]:
    """Count per part on one forward pass at ``image_size`` (H, W), batch ``batch_size``.

    Returns {part: {"params": count, "flops": count, "macs": count}} with a "total" row. Runs on the
    model's device: build the model under ``torch.device("meta")`` to count without computing.
    """
    model = model.eval()
    images = torch.zeros(batch_size, 3, *image_size, device=next(model.parameters()).device)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(images)
    flops_by_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    table: dict[str, dict[str, float]] = {}
    for part, attributes in PARTS.items():
        params = flops = 0
        for attribute in attributes:
            module = getattr(model, attribute)
            if module is None:
                continue
            params += sum(p.numel() for p in module.parameters())
            flops += flops_by_module.get(f"{root}.{attribute}", 0)
        table[part] = {"params": params, "flops": flops, "macs": flops / 2}
    total_params = sum(p.numel() for p in model.parameters())
    total_flops = flops_by_module.get("Global", 0)
    table["total"] = {"params": total_params, "flops": total_flops, "macs": total_flops / 2}
    return table


def format_table(table: dict[str, dict[str, float]], title: str = "") -> str:
    lines = [title] if title else []
    lines.append(f"{'part':<12}{'params (M)':>12}{'GFLOPs':>12}{'GMACs':>12}")
    for part, row in table.items():
        lines.append(f"{part:<12}{row['params'] / 1e6:>12.3f}{row['flops'] / 1e9:>12.3f}{row['macs'] / 1e9:>12.3f}")
    return "\n".join(lines)
