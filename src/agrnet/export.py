"""Export a trained model to ONNX or TorchScript, with a parity check against the eager model."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from agrnet.data.transforms import Canvas, canvas_hw
from agrnet.modeling.agrnet import AGRNet
from agrnet.outputs import prepare_out_file

log = logging.getLogger(__name__)


class LogitsOnly(nn.Module):
    """Exportable view of AGRNet: images (N, 3, S, S) -> final logits (N, Nc, S, S)."""

    def __init__(self, model: AGRNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).logits


def export_model(
    model: AGRNet,
    out: str | Path,
    size: Canvas,
    dataset: str,
    fmt: Literal["onnx", "torchscript"] = "onnx",
    check_batches: tuple[int, ...] = (1, 3),
    seed: int = 0,
) -> dict[str, object]:
    """Write ``out`` (+ ``out.json`` with the label set and canvas) and compare it with the eager
    model on random inputs of each batch size in ``check_batches`` (batch size is dynamic).

    Returns {"max_abs_diff": float, "argmax_agreement": float, ...}.
    """
    out = prepare_out_file(out)
    wrapper = LogitsOnly(model.eval().cpu()).eval()
    height, width = canvas_hw(size)
    example = torch.randn(2, 3, height, width)
    # The exporter prints its progress on stdout; it goes to stderr, so stdout carries only the report.
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")  # exporter chatter (deprecations, tracer notes)
        if fmt == "onnx":
            torch.onnx.export(
                wrapper, (example,), str(out), dynamo=True, input_names=["images"], output_names=["logits"],
                dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=1024)}}, external_data=False,
            )  # fmt: skip
            runner = _onnx_runner(out)
        elif fmt == "torchscript":
            with torch.no_grad():
                traced = torch.jit.trace(wrapper, example)
            traced.save(str(out))
            loaded = torch.jit.load(str(out))

            def runner(x: np.ndarray) -> np.ndarray:
                with torch.no_grad():
                    return loaded(torch.from_numpy(x)).numpy()
        else:
            raise ValueError(f"format must be 'onnx' or 'torchscript', got {fmt!r}")
    generator = torch.Generator().manual_seed(seed)
    max_diff, agreement = 0.0, []
    for batch in check_batches:
        x = torch.randn(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            reference = wrapper(x).numpy()
        got = runner(x.numpy())
        max_diff = max(max_diff, float(np.abs(got - reference).max()))
        agreement.append(float((got.argmax(1) == reference.argmax(1)).mean()))
    report = {
        "format": fmt, "file": str(out), "size": height, "width": width, "dataset": dataset,
        "num_classes": model.num_classes, "checked_batches": list(check_batches), "max_abs_diff": max_diff,
        "argmax_agreement": min(agreement),
    }  # fmt: skip
    out.with_suffix(out.suffix + ".json").write_text(json.dumps(report, indent=2))
    return report


def _onnx_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]
