"""Device names: one place that turns ``auto``/``cpu``/``cuda:N``/``mps`` into a device that exists,
for training and inference alike."""

from __future__ import annotations

import cv2
import torch

from agrnet.config import DEVICE_PATTERN


def set_threads(threads: int) -> None:
    """Threads of this process for torch and OpenCV alike: OpenCV's warps and resizes otherwise take every
    core, so N one-thread workers (Ray actors, shards) would contend for the cores in paste-back."""
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """auto | cpu | cuda | cuda:N | mps -> a device that exists on this machine, or a ValueError."""
    if not DEVICE_PATTERN.fullmatch(name):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.type == "cuda" and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA device(s); use cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device mps: MPS is not available on this machine; use cpu or auto")
    return device
