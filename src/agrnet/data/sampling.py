"""The order in which training images are seen: a seeded permutation per epoch, optionally with
images that hold rare classes repeated (repeat-factor sampling, Gupta et al., LVIS, 2019)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

# A sampler key: (epoch, index) for an image's first showing in an epoch, (epoch, index, copy)
# for its further copies, so that each copy draws its own augmentation.
SampleKey = tuple[int, int] | tuple[int, int, int]


def repeat_factors(presence: np.ndarray, threshold: float) -> np.ndarray:
    """presence: (N, Nc) bool, class c in image i. -> (N,) float64 repeat factor of each image:
    r_c = max(1, sqrt(threshold / f_c)) with f_c the fraction of images that hold class c, and an
    image takes the largest r_c of its classes. threshold 0 repeats nothing."""
    images, _ = presence.shape
    if images == 0:
        raise ValueError("repeat factors need at least one image")
    # A class in no image gets a huge factor that no image ever takes.
    per_class = np.maximum(np.sqrt(threshold / np.maximum(presence.mean(axis=0), 1e-12)), 1.0)
    return np.where(presence, per_class[None, :], 1.0).max(axis=1)


class EpochSampler(torch.utils.data.Sampler):
    """Yields sample keys: a permutation per epoch seeded by (seed, epoch), sharded by rank.

    With ``repeats`` (N,) >= 1, an epoch is drawn from a pool in which image i appears
    floor(r_i) times plus once more with probability frac(r_i) (so r_i times on average), shuffled
    and cut to the split's size: an epoch keeps its length (the schedule and resume arithmetic do
    not change) while rare images are seen r_i times as often as the rest.
    ``start`` skips the keys already consumed in the current epoch, so a resumed run sees exactly
    the batches the interrupted one would have.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1, repeats: np.ndarray | None = None) -> None:
        if repeats is not None and (len(repeats) != size or not np.all(repeats >= 1)):
            raise ValueError(f"repeats must be {size} factors >= 1")
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.repeats = repeats
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def per_rank(self) -> int:
        return self.size // self.world

    def epoch_keys(self) -> list[SampleKey]:
        """All ranks' keys of the current epoch, in order (before sharding)."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.repeats is None:
            return [(self.epoch, int(i)) for i in torch.randperm(self.size, generator=generator)]
        whole = np.floor(self.repeats).astype(np.int64)
        extra = torch.rand(self.size, generator=generator, dtype=torch.float64).numpy() < self.repeats - whole
        pool = [(int(i), copy) for i in range(self.size) for copy in range(int(whole[i] + extra[i]))]
        order = torch.randperm(len(pool), generator=generator)[: self.size]
        return [(self.epoch, *pool[j]) if pool[j][1] else (self.epoch, pool[j][0]) for j in order.tolist()]

    def __iter__(self) -> Iterator[SampleKey]:
        keys = self.epoch_keys()[self.rank :: self.world][: self.per_rank()]
        return iter(keys[self.start :])

    def __len__(self) -> int:
        return self.per_rank() - self.start
