"""A teacher for distillation: a frozen model's class probabilities on each training canvas, averaged over
its mirrored pass and several canvas sizes (the library's test-time augmentation, ``agrnet.tta``).

Why: on the face parser that augmentation adds about 0.4 test mean F1 at six times the network time; as
soft targets (``loss.distill``) it asks one plain pass of the student to see what the augmented teacher
sees, at no cost at inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from agrnet.data.classes import LabelSpec
from agrnet.evaluate import flip_permutation, predict_logits
from agrnet.modeling.agrnet import AGRNet
from agrnet.modeling.layers import inference_copy
from agrnet.tta import check_scales, scaled_canvas

# The face parser's best test-time augmentation on val (celebamask_mini_training.md): flip on 3 canvases.
TEACHER_SCALES = (0.8333, 1.0, 1.1667)


class TtaTeacher:
    """``model`` frozen (a BatchNorm-folded copy in eval mode); called on a training batch it returns the
    mean over ``scales`` of the softmax of its flip-averaged logits, resized back to the batch's canvas."""

    def __init__(
        self,
        model: AGRNet,
        spec: LabelSpec,
        device: torch.device,
        amp_dtype: torch.dtype | None = None,
        scales: Sequence[float] = TEACHER_SCALES,
    ) -> None:
        self.model = inference_copy(model, device)
        self.model.requires_grad_(False)
        self.flip_perm = flip_permutation(spec, model.num_classes)
        self.amp_dtype, self.scales = amp_dtype, check_scales(scales)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) normalised canvases -> probabilities (N, Nc, H, W) float32."""
        height, width = images.shape[-2:]
        total = None
        for scale in self.scales:
            size = scaled_canvas((height, width), scale)
            view = images
            if size != (height, width):
                view = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
            logits = predict_logits(self.model, view.contiguous(memory_format=torch.channels_last), self.flip_perm,
                                    self.amp_dtype)  # fmt: skip
            if logits.shape[-2:] != (height, width):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            probabilities = logits.softmax(1)
            total = probabilities if total is None else total.add_(probabilities)
        assert total is not None  # check_scales refuses an empty list
        return total.div_(len(self.scales))
