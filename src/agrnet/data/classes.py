"""Label specifications of the supported datasets: names, palette and left/right pairs, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

_FACE11 = (
    "background", "skin", "left_brow", "right_brow", "left_eye", "right_eye",
    "nose", "upper_lip", "inner_mouth", "lower_lip", "hair",
)  # fmt: skip

# A fixed palette of 20 distinguishable colours; class i takes colour i.
_PALETTE = np.array(
    [
        (0, 0, 0), (255, 204, 153), (102, 51, 0), (153, 76, 0), (0, 102, 255), (0, 204, 255),
        (255, 102, 102), (204, 0, 51), (102, 0, 102), (255, 51, 153), (51, 153, 51), (255, 255, 0),
        (0, 255, 255), (128, 128, 255), (255, 128, 0), (0, 128, 128), (128, 0, 255), (192, 192, 192),
        (128, 255, 128), (255, 0, 255),
    ],
    dtype=np.uint8,
)  # fmt: skip


@dataclass(frozen=True)
class LabelSpec:
    """Classes of one dataset. ``flip_pairs`` are swapped when an image is mirrored; ``subject`` says
    what an image of the dataset shows: an aligned face or a whole person."""

    name: str
    class_names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    # Classes left out of "mean F1" (the paper's F1 means exclude background).
    f1_excluded: tuple[int, ...] = (0,)
    subject: Literal["face", "person"] = "face"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def palette(self) -> np.ndarray:
        """(num_classes, 3) uint8 RGB."""
        return _PALETTE[: self.num_classes]

    def flip_lut(self) -> np.ndarray:
        """(256,) uint8 lookup that swaps left/right labels and keeps the rest (255 included)."""
        lut = np.arange(256, dtype=np.uint8)
        for a, b in self.flip_pairs:
            lut[a], lut[b] = b, a
        return lut


LAPA = LabelSpec("lapa", _FACE11, ((2, 3), (4, 5)))
HELEN = LabelSpec("helen", _FACE11, ((2, 3), (4, 5)))
SYNTHETIC = LabelSpec("synthetic", _FACE11, ((2, 3), (4, 5)))
CELEBAMASK_HQ = LabelSpec(
    "celebamask_hq",
    (
        "background",
        "skin",
        "nose",
        "eye_g",
        "l_eye",
        "r_eye",
        "l_brow",
        "r_brow",
        "l_ear",
        "r_ear",
        "mouth",
        "u_lip",
        "l_lip",
        "hair",
        "hat",
        "ear_r",
        "neck_l",
        "neck",
        "cloth",
    ),  # fmt: skip
    ((4, 5), (6, 7), (8, 9)),
)
LIP = LabelSpec(
    "lip",
    (
        "background",
        "hat",
        "hair",
        "glove",
        "sunglasses",
        "upper_clothes",
        "dress",
        "coat",
        "socks",
        "pants",
        "jumpsuits",
        "scarf",
        "skirt",
        "face",
        "left_arm",
        "right_arm",
        "left_leg",
        "right_leg",
        "left_shoe",
        "right_shoe",
    ),  # fmt: skip
    ((14, 15), (16, 17), (18, 19)),
    subject="person",
)

# Clothing Co-Parsing's 59 tags grouped into 17 classes named after LIP's (../shared/data/README.md).
# CCP marks all bare skin as one class and has no left/right, hence no flip pairs.
CCP = LabelSpec(
    "ccp",
    (
        "background", "hat", "hair", "glove", "sunglasses", "upper_clothes", "dress", "coat", "socks",
        "pants", "jumpsuits", "scarf", "skirt", "skin", "shoes", "bag", "accessories",
    ),
    (),
    subject="person",
)  # fmt: skip

LABEL_SPECS: dict[str, LabelSpec] = {s.name: s for s in (LAPA, HELEN, SYNTHETIC, CELEBAMASK_HQ, LIP, CCP)}

# Helen's merged groups for its F1 table (DESIGN-NOTES §9): pooled F1 over the union of classes.
HELEN_GROUPS: dict[str, tuple[int, ...]] = {
    "skin": (1,), "nose": (6,), "u_lip": (7,), "i_mouth": (8,), "l_lip": (9,),
    "eyes": (4, 5), "brows": (2, 3), "mouth": (7, 8, 9), "overall": (2, 3, 4, 5, 6, 7, 8, 9),
}  # fmt: skip

# Cross-dataset label maps (Table IV): source class index -> target class index; unlisted -> background.
LABEL_MAPS: dict[str, tuple[str, str, dict[int, int]]] = {
    "celebamask_hq_to_helen": (
        "celebamask_hq",
        "helen",
        {1: 1, 2: 6, 4: 4, 5: 5, 6: 2, 7: 3, 10: 8, 11: 7, 12: 9, 13: 10},
    ),
}


def label_map_lut(name: str) -> np.ndarray:
    """(256,) lookup implementing a LABEL_MAPS entry (255 stays 255)."""
    if name not in LABEL_MAPS:
        raise ValueError(f"unknown label map {name!r}; choose one of {sorted(LABEL_MAPS)}")
    lut = np.zeros(256, dtype=np.uint8)
    lut[255] = 255
    for source, target in LABEL_MAPS[name][2].items():
        lut[source] = target
    return lut


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) label map -> (H, W, 3) uint8 RGB; ignored/unknown values are white."""
    lut = np.full((256, 3), 255, dtype=np.uint8)
    lut[: len(palette)] = palette
    return lut[labels]


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a colourised label map over an (H, W, 3) uint8 RGB image; background stays unblended."""
    colours = colorize(labels, palette).astype(np.float32)
    mask = (labels > 0)[..., None]
    blended = np.where(mask, (1 - alpha) * image + alpha * colours, image)
    return blended.astype(np.uint8)
