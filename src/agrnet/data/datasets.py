"""Readers for LaPa, CelebAMask-HQ, Helen, LIP and the synthetic set.

Each reader checks the directory layout up front and lists what is missing; each sample is checked
when loaded (unreadable file, size mismatch, label values outside the class range) and the error
names the file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from agrnet.data.classes import HELEN, LABEL_SPECS, LabelSpec
from agrnet.data.transforms import IGNORE_INDEX, Augmentation, Border, Canvas, to_tensor, warp_pair
from agrnet.edges import label_edges
from agrnet.images import DEFAULT_MAX_PIXELS, ImageError, decode_image, open_checked

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
Split = Literal["train", "val", "test"]


class DatasetError(ValueError):
    """A dataset directory or file is missing or malformed; the message names it and the fix."""


@dataclass(frozen=True)
class Sample:
    """One image and where its labels come from.

    merge "index": ``labels[0]`` is an index PNG. "parts": ``labels[i]`` is a binary mask of class
    ``part_classes[i]``, painted in order (later parts overwrite). "argmax": ``labels[i]`` is the
    soft map of class i; the label is the per-pixel argmax (Helen).
    """

    image: Path
    labels: tuple[Path, ...]
    merge: Literal["index", "parts", "argmax"] = "index"
    part_classes: tuple[int, ...] = ()


def load_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Any readable image -> (H, W, 3) uint8 RGB as displayed (EXIF orientation applied); grayscale,
    palette, RGBA and 16-bit included. The pixel budget is checked from the header before decoding."""
    try:
        return decode_image(path, max_pixels)
    except ImageError as error:
        raise DatasetError(str(error)) from None


def _load_gray(path: Path) -> np.ndarray:
    """A label map as stored, under the same header-checked pixel budget as photos."""
    try:
        image = open_checked(path, DEFAULT_MAX_PIXELS)
    except ImageError as error:
        raise DatasetError(str(error)) from None
    with image:
        if image.mode not in ("L", "P", "1", "I", "I;16"):
            raise DatasetError(
                f"{path}: label maps must be single-channel index PNGs, got mode {image.mode} "
                "(an RGB colour map? convert it to class indices first)"
            )
        try:
            return np.asarray(image).astype(np.uint8 if image.mode in ("L", "P", "1") else np.int64)
        except MemoryError:
            raise
        except Exception as error:  # the decoder runs in np.asarray; any plugin failure is this file's
            raise DatasetError(f"{path}: cannot read label map ({error})") from None


def load_labels(sample: Sample, num_classes: int) -> np.ndarray:
    """-> (H, W) uint8 class indices with 255 for ignored pixels; values are checked."""
    if sample.merge == "index":
        labels = _load_gray(sample.labels[0])
    elif sample.merge == "parts":
        labels = None
        for path, cls in zip(sample.labels, sample.part_classes, strict=True):
            mask = _load_gray(path)
            if labels is None:
                labels = np.zeros(mask.shape, dtype=np.uint8)
            if mask.shape != labels.shape:
                raise DatasetError(f"{path}: mask size {mask.shape} differs from the other parts {labels.shape}")
            labels[mask > 0] = cls
        if labels is None:
            raise DatasetError(f"{sample.image}: no part masks found")
    else:
        maps = [_load_gray(p) for p in sample.labels]
        shapes = {m.shape for m in maps}
        if len(shapes) != 1:
            raise DatasetError(f"{sample.labels[0].parent}: label maps differ in size {sorted(shapes)}")
        labels = np.argmax(np.stack(maps), axis=0).astype(np.uint8)
    if (labels == IGNORE_INDEX).all():
        raise DatasetError(
            f"{sample.labels[0]}: every label is {IGNORE_INDEX} (ignored): nothing to train on or score; "
            "remove the sample or fix its labels"
        )
    bad = (labels >= num_classes) & (labels != IGNORE_INDEX)
    if bad.any():
        values = sorted(int(v) for v in np.unique(labels[bad]))[:8]
        raise DatasetError(
            f"{sample.labels[0]}: label values {values} are outside 0..{num_classes - 1} (and not 255); "
            "is this the right dataset or class count?"
        )
    return labels.astype(np.uint8)


class ParsingDataset(torch.utils.data.Dataset):
    """Samples of one split, warped onto the canvas ``size`` (S or (height, width)) for training or evaluation.

    Indexing with an int gives the un-augmented letterboxed sample. Indexing with (epoch, index)
    draws the augmentation from a generator seeded by (seed, epoch, index): results then depend on
    neither worker count nor resumption.
    Each item: image (3, Sh, Sw) float, labels (Sh, Sw) int64, edges (Sh, Sw) bool, index int.
    """

    def __init__(
        self,
        samples: list[Sample],
        spec: LabelSpec,
        size: Canvas,
        augmentation: Augmentation | None = None,
        seed: int = 0,
    ) -> None:
        if not samples:
            raise DatasetError("the split holds no samples")
        self.samples, self.spec, self.size = samples, spec, size
        self.augmentation, self.seed = augmentation, seed
        self._flip_lut = spec.flip_lut()

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The original (H, W, 3) RGB image and (H, W) labels, sizes checked."""
        sample = self.samples[index]
        image = load_image(sample.image)
        labels = load_labels(sample, self.spec.num_classes)
        if image.shape[:2] != labels.shape:
            if sample.merge == "parts":  # CelebAMask-HQ: 1024^2 images, 512^2 masks
                image = np.asarray(Image.fromarray(image).resize(labels.shape[::-1], Image.BILINEAR))
            else:
                raise DatasetError(
                    f"{sample.image}: image size {image.shape[:2]} differs from its labels {labels.shape} "
                    f"({sample.labels[0]})"
                )
        return image, labels

    def __getitem__(self, key: int | tuple[int, ...]) -> dict[str, torch.Tensor | int]:
        """key: an index, or a training key (epoch, index[, copy]) whose augmentation it seeds."""
        augmentation, index = (self.augmentation, key[1]) if isinstance(key, tuple) else (None, key)
        image, labels = self.load(index)
        scale, angle, flip = 1.0, 0.0, False
        border: Border = "pad"
        if augmentation is not None:
            rng = np.random.default_rng([self.seed, *key])  # type: ignore[misc]
            scale, angle, flip = augmentation.sample(rng)
            border = augmentation.surround
        flip_lut = self._flip_lut if flip else None
        image, warped = warp_pair(image, labels, self.size, scale, angle, flip_lut, border)
        assert warped is not None
        if augmentation is not None:
            image = augmentation.degrade_image(image, rng)
        label_tensor = torch.from_numpy(warped.astype(np.int64))
        return {
            "image": to_tensor(image),
            "labels": label_tensor,
            "edges": label_edges(label_tensor),
            "index": index,
        }


def class_counts(dataset: ParsingDataset, skip_bad: bool = False) -> np.ndarray:
    """(N, Nc) int64 pixels of each class in each image's original labels (ignored pixels left
    out). ``skip_bad``: an unreadable label counts as no pixels instead of raising."""
    num_classes = dataset.spec.num_classes
    counts = np.zeros((len(dataset.samples), num_classes), dtype=np.int64)
    for i, sample in enumerate(dataset.samples):
        try:
            labels = load_labels(sample, num_classes)
        except DatasetError:
            if not skip_bad:
                raise
            continue
        counts[i] = np.bincount(labels.ravel(), minlength=256)[:num_classes]
    return counts


def class_frequencies(dataset: ParsingDataset, skip_bad: bool = False) -> np.ndarray:
    """(Nc,) float64 pixel fraction of each class over the dataset's original labels (ignored
    pixels left out). ``skip_bad``: leave out unreadable labels instead of raising."""
    return pixel_frequencies(class_counts(dataset, skip_bad).sum(axis=0))


def pixel_frequencies(counts: np.ndarray) -> np.ndarray:
    """counts: (Nc,) labelled pixels per class. -> (Nc,) float64 share of each class."""
    if counts.sum() == 0:
        raise DatasetError("no labelled pixel in the split: class frequencies are undefined")
    return counts / counts.sum()


def _require_dirs(root: Path, dirs: list[str], dataset: str) -> None:
    if not root.is_dir():
        raise DatasetError(f"{root}: {dataset} directory does not exist")
    missing = [d for d in dirs if not (root / d).is_dir()]
    if missing:
        raise DatasetError(f"{root}: {dataset} layout is missing folder(s) {', '.join(missing)}")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


class MissingLabelsError(DatasetError):
    """Images without a label map; ``paired`` holds the samples that have one, so a check can go on."""

    def __init__(self, message: str, missing: list[Path], paired: list[Sample]) -> None:
        super().__init__(message)
        self.missing, self.paired = missing, paired


def _pair_by_stem(images: list[Path], label_dir: Path, where: str) -> list[Sample]:
    # Suffixes in any case: cameras and some tools write ".PNG".
    labels = {p.stem: p for p in label_dir.iterdir() if p.suffix.lower() == ".png"}
    missing = [p for p in images if p.stem not in labels]
    paired = [Sample(p, (labels[p.stem],)) for p in images if p.stem in labels]
    if missing:
        raise MissingLabelsError(
            f"{label_dir}: no label PNG for {len(missing)} image(s) of {where}, e.g. {[p.name for p in missing[:3]]}",
            missing,
            paired,
        )
    return paired


def folder_samples(root: Path, split: Split, dataset: str = "image folder") -> list[Sample]:
    """``{train,val,test}/{images/*.jpg, labels/*.png}``: index-label PNGs paired with images by stem
    (LaPa's layout; its ``landmarks/`` folder is unused)."""
    _require_dirs(root, [f"{split}/images", f"{split}/labels"], dataset)
    return _pair_by_stem(_images_in(root / split / "images"), root / split / "labels", f"{root / split}")


def lip_samples(root: Path, split: Split) -> list[Sample]:
    """LIP layout ``TrainVal_images/{train,val}_images`` and
    ``TrainVal_parsing_annotations/{train,val}_segmentations``. LIP's labelled splits are train and val."""
    if split == "test":
        raise DatasetError("LIP has no labelled test split; results are reported on val")
    images, labels = f"TrainVal_images/{split}_images", f"TrainVal_parsing_annotations/{split}_segmentations"
    _require_dirs(root, [images, labels], "LIP")
    return _pair_by_stem(_images_in(root / images), root / labels, str(root / images))


def helen_samples(root: Path, split: Split) -> list[Sample]:
    """Smith et al. Helen: ``images/<id>.jpg``, ``labels/<id>/<id>_lbl00..10.png`` and split lists
    ``exemplars.txt`` (train), ``tuning.txt`` (val), ``testing.txt`` (test) of "n , id" lines."""
    list_file = {"train": "exemplars.txt", "val": "tuning.txt", "test": "testing.txt"}[split]
    _require_dirs(root, ["images", "labels"], "Helen")
    if not (root / list_file).is_file():
        raise DatasetError(f"{root}: Helen split list {list_file} is missing")
    ids = [line.split(",")[-1].strip() for line in (root / list_file).read_text().splitlines() if line.strip()]
    samples = []
    for image_id in ids:
        image = next((root / "images" / f"{image_id}{s}" for s in IMAGE_SUFFIXES
                      if (root / "images" / f"{image_id}{s}").is_file()), None)  # fmt: skip
        maps = tuple(root / "labels" / image_id / f"{image_id}_lbl{c:02d}.png" for c in range(HELEN.num_classes))
        if image is None:
            raise DatasetError(f"{root / 'images'}: image {image_id} listed in {list_file} is missing")
        absent = [m.name for m in maps if not m.is_file()]
        if absent:
            raise DatasetError(f"{root / 'labels' / image_id}: missing label maps {absent[:3]}")
        samples.append(Sample(image, maps, merge="argmax"))
    return samples


# CelebAMask-HQ part file names in the official g_mask.py painting order (class index = position + 1).
CELEBAMASK_PARTS = (
    "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)  # fmt: skip


def celebamask_split(orig_index: int) -> Split:
    """Official g_partition.py rule on CelebA's original index."""
    if orig_index >= 182638:
        return "test"
    if orig_index >= 162771:
        return "val"
    return "train"


def celebamask_hq_samples(root: Path, split: Split) -> list[Sample]:
    """``CelebA-HQ-img/<k>.jpg``, ``CelebAMask-HQ-mask-anno/<k // 2000>/<k:05d>_<part>.png`` and
    ``CelebA-HQ-to-CelebA-mapping.txt`` (columns idx, orig_idx, orig_file) for the official split."""
    _require_dirs(root, ["CelebA-HQ-img", "CelebAMask-HQ-mask-anno"], "CelebAMask-HQ")
    mapping = root / "CelebA-HQ-to-CelebA-mapping.txt"
    if not mapping.is_file():
        raise DatasetError(f"{root}: CelebA-HQ-to-CelebA-mapping.txt is missing (needed for the split)")
    samples = []
    for line in mapping.read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) < 2:
            continue
        k, orig = int(fields[0]), int(fields[1])
        if celebamask_split(orig) != split:
            continue
        folder = root / "CelebAMask-HQ-mask-anno" / str(k // 2000)
        parts = [(folder / f"{k:05d}_{name}.png", i + 1) for i, name in enumerate(CELEBAMASK_PARTS)]
        present = [(p, c) for p, c in parts if p.is_file()]  # absent parts are simply not in the image
        image = root / "CelebA-HQ-img" / f"{k}.jpg"
        if not image.is_file():
            raise DatasetError(f"{image}: image listed in the mapping file is missing")
        if not present:
            raise DatasetError(f"{folder}: no part masks for image {k}")
        samples.append(
            Sample(image, tuple(p for p, _ in present), merge="parts", part_classes=tuple(c for _, c in present))
        )
    return samples


def lapa_samples(root: Path, split: Split) -> list[Sample]:
    return folder_samples(root, split, "LaPa")


READERS: dict[str, Callable[[Path, Split], list[Sample]]] = {
    "folder": folder_samples,
    "lapa": lapa_samples,
    "synthetic": lapa_samples,
    "helen": helen_samples,
    "celebamask_hq": celebamask_hq_samples,
    "lip": lip_samples,
}


def label_spec(kind: str, classes: str | None = None) -> LabelSpec:
    """The classes of a dataset: its own for the named kinds, ``classes`` for a generic ``folder``."""
    name = classes or kind
    if kind == "folder" and not classes:
        raise DatasetError(f"data.kind=folder needs data.classes, one of {sorted(LABEL_SPECS)}")
    if name not in LABEL_SPECS:
        raise DatasetError(f"unknown label spec {name!r}; choose one of {sorted(LABEL_SPECS)}")
    return LABEL_SPECS[name]


def open_split(
    kind: str,
    root: str | Path,
    split: Split,
    size: Canvas,
    augmentation: Augmentation | None = None,
    seed: int = 0,
    classes: str | None = None,
) -> ParsingDataset:
    """One split of a dataset; ``classes`` names the label spec of a ``folder`` dataset."""
    if kind not in READERS:
        raise DatasetError(f"unknown dataset kind {kind!r}; choose one of {sorted(READERS)}")
    spec = label_spec(kind, classes)
    return ParsingDataset(READERS[kind](Path(root), split), spec, size, augmentation, seed)


def check_dataset(
    kind: str, root: str | Path, splits: tuple[Split, ...] = ("train", "val", "test"), classes: str | None = None
) -> list[str]:
    """Load every sample of every split and return one line per problem (empty when all is well).

    Problems do not stop the check: the whole dataset is read and everything wrong is listed.
    """
    from tqdm import tqdm

    spec = label_spec(kind, classes)  # a usage error, before any reading
    problems = []
    for split in splits:
        try:
            dataset = open_split(kind, root, split, size=32, classes=classes)
        except MissingLabelsError as error:
            problems += [f"[{split}] {image}: no label map {image.stem}.png" for image in error.missing]
            if not error.paired:
                continue
            dataset = ParsingDataset(error.paired, spec, 32)
        except DatasetError as error:
            problems.append(f"[{split}] {error}")
            continue
        for index in tqdm(range(len(dataset)), desc=f"check {split}", unit="img"):
            try:
                dataset.load(index)
            except DatasetError as error:
                problems.append(f"[{split}] {error}")
    return problems
