"""Evaluation over a whole split at the original label resolution (one confusion matrix)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from agrnet.data.classes import LabelSpec
from agrnet.data.datasets import DatasetError, ParsingDataset
from agrnet.data.transforms import to_tensor, warp_pair
from agrnet.metrics import ConfusionMatrix, summarize
from agrnet.modeling.agrnet import AGRNet
from agrnet.tta import canvas_labels, check_scales, scaled_canvas

log = logging.getLogger(__name__)


Sample = tuple[list[torch.Tensor], torch.Tensor]


class _OriginalResolution(torch.utils.data.Dataset):
    """The image letterboxed onto each canvas for the network, plus the untouched original labels for scoring.

    A sample that cannot be loaded comes back as its error message, so one bad file does not stop
    the evaluation of a whole split.
    """

    def __init__(self, dataset: ParsingDataset, canvases: list[tuple[int, int]]) -> None:
        self.dataset, self.canvases = dataset, canvases

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample | str:
        try:
            image, labels = self.dataset.load(index)
        except DatasetError as error:
            return str(error)
        canvases = [to_tensor(warp_pair(image, None, canvas)[0]) for canvas in self.canvases]
        return canvases, torch.from_numpy(labels.astype(np.int64))


def _collate(items: list[Sample | str]) -> tuple[list[torch.Tensor], list[torch.Tensor], list[str]]:
    """-> one (N, 3, Sh, Sw) batch per canvas, the N label maps, the error messages."""
    good = [item for item in items if not isinstance(item, str)]
    errors = [item for item in items if isinstance(item, str)]
    batches = [torch.stack(canvases) for canvases in zip(*(canvases for canvases, _ in good), strict=True)]
    return batches, [labels for _, labels in good], errors


def flip_permutation(spec: LabelSpec, num_classes: int) -> list[int]:
    """Channel order that swaps left/right classes, for mirrored test-time augmentation."""
    return [int(c) for c in spec.flip_lut()[:num_classes]]


@torch.no_grad()
def predict_logits(
    model: AGRNet,
    images: torch.Tensor,
    flip_perm: list[int] | None = None,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Canvas logits (N, Nc, S, S) in float32; with ``flip_perm`` averaged with the mirrored pass."""
    device_type = images.device.type
    with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = model(images).logits.float()
        if flip_perm is not None:
            mirrored = model(images.flip(-1)).logits.float().flip(-1)[:, flip_perm]
            logits = (logits + mirrored) / 2
    return logits


@torch.no_grad()
def evaluate_dataset(
    model: AGRNet,
    dataset: ParsingDataset,
    device: torch.device,
    flip: bool = False,
    amp_dtype: torch.dtype | None = None,
    label_lut: np.ndarray | None = None,
    model_spec: LabelSpec | None = None,
    batch_size: int = 4,
    workers: int = 0,
    progress: bool = True,
    scales: Sequence[float] = (1.0,),
) -> tuple[dict[str, Any], np.ndarray]:
    """Score ``model`` on every image of ``dataset``; returns (summary, confusion matrix).

    ``label_lut`` maps the model's classes (``model_spec``, default the dataset's) to the dataset's
    (cross-dataset evaluation, Table IV). ``flip`` averages with the mirrored image, swapping the
    model's left/right classes. ``scales``: canvas size factors whose probabilities are averaged
    (``agrnet.tta``); the default is the dataset's canvas alone.
    """
    model.eval()
    spec = dataset.spec
    if label_lut is None and model.num_classes != spec.num_classes:
        raise ValueError(
            f"the model predicts {model.num_classes} classes but {spec.name} has {spec.num_classes}; "
            "pass a label map for cross-dataset evaluation"
        )
    flip_perm = flip_permutation(model_spec or spec, model.num_classes) if flip else None
    lut = None if label_lut is None else torch.from_numpy(label_lut.astype(np.int64)).to(device)
    matrix = ConfusionMatrix(spec.num_classes)
    canvases = [scaled_canvas(dataset.size, scale) for scale in check_scales(scales)]
    loader = torch.utils.data.DataLoader(
        _OriginalResolution(dataset, canvases), batch_size=batch_size, num_workers=workers, collate_fn=_collate
    )
    skipped: list[str] = []
    scored = 0
    for batches, labels, errors in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
        skipped += errors
        if not labels:
            continue
        scored += len(labels)
        logits = [predict_logits(model, images.to(device), flip_perm, amp_dtype) for images in batches]
        for i, target in enumerate(labels):
            prediction = canvas_labels([canvas[i] for canvas in logits], *target.shape)
            if lut is not None:
                prediction = lut[prediction]
            matrix.update(prediction, target.to(device))
    if skipped:
        log.warning("skipped %d unreadable sample(s):\n  %s", len(skipped), "\n  ".join(skipped))
    summary = summarize(matrix.matrix, spec) | {"images": scored, "skipped": skipped}
    return summary, matrix.matrix.numpy()
