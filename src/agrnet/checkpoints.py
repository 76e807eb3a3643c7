"""Checkpoint files: atomic writes, safe loading (``weights_only=True``) and rebuilding the model a
checkpoint was trained with. Below both training and inference, so inference needs no training code."""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from agrnet.build import build_agrnet
from agrnet.config import TrainConfig, from_dict
from agrnet.modeling.agrnet import AGRNet


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota, I/O error); the previous file is intact."""


def atomic_save(state: dict[str, Any], path: Path) -> None:
    """Write to a temporary file, fsync, then rename: a crash leaves the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:  # torch's zip writer reports a full disk as a RuntimeError
        tmp.unlink(missing_ok=True)
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[0]
        free_mb = shutil.disk_usage(path.parent).free / 1e6
        raise CheckpointWriteError(
            f"cannot write checkpoint {path} ({reason}; {free_mb:.0f} MB free there); the previous {path.name}, "
            "if any, is unchanged; free some space and continue with --resume"
        ) from None
    with contextlib.suppress(OSError):  # directory fsync makes the rename durable where supported
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: arbitrary pickled code is refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    kind = _looks_like(path)
    if kind is not None:
        raise ValueError(f"{path}: not an agrnet checkpoint: the file looks like {kind}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, which is exactly what must not be done here.
        raise ValueError(
            f"{path}: refused: the file holds pickled objects other than tensors and plain data. Checkpoints are "
            "loaded with weights_only=True; files holding pickled code are refused."
        ) from None
    except Exception as error:  # a truncated or foreign file fails in several ways
        raise ValueError(
            f"{path}: not a loadable agrnet checkpoint ({type(error).__name__}: {str(error).splitlines()[0]}); "
            "is the file complete (a copy cut short, an interrupted download)?"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{path}: not an agrnet checkpoint (no 'model' and 'config' entries)")
    return state


_MAGIC = {
    b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image", b"BM": "a BMP image",
    b"RIFF": "a WebP image",
}  # fmt: skip


def _looks_like(path: Path) -> str | None:
    """What a file that is no checkpoint seems to be, from its first bytes; None for anything that
    may be one (torch's zip or pickle formats). Without this, torch reports a YAML file as pickled code."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK") and _is_torchscript(path):
        return (
            "a TorchScript file (agrnet export --format torchscript), for deployment with torch.jit.load; agrnet "
            "takes a training checkpoint (.pt), an exported .onnx (predict, serve) or a shipped model's name"
        )
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    if head.startswith(b"\x08") and (b"pytorch" in head or b"onnx" in head.lower()):
        return "an ONNX model: predict and serve take it named .onnx; evaluate, visualize, export need a .pt file"
    if head and all(byte >= 9 for byte in head):  # no control bytes: text, which torch never writes
        return "a text file (a YAML config? train takes it with --config)"
    return None


def _is_torchscript(path: Path) -> bool:
    """torch.jit.save writes a zip with the model's code; torch.save's zip has none."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def model_from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[AGRNet, TrainConfig]:
    """Rebuild the model a checkpoint was trained with (config stored inside) and load its weights."""
    state = load_checkpoint(path, map_location)
    config = from_dict(state["config"])
    # The stored weights replace the backbone's ImageNet initialisation: do not look for it.
    model = build_agrnet(replace(config.resolved_model(), pretrained=None))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not fit the stored config ({str(error).splitlines()[1:2]})") from None
    return model, config
