"""Epoch samplers: natural proportion (torch's DistributedSampler) or a fixed fraction of pseudo-labelled clips,
optionally over a fixed number of clips per epoch (the same compute whatever the number of unlabelled videos).

Both shard one seeded permutation per epoch across ranks, so DDP ranks see disjoint indices and a resumed run
replays the same order from the epoch it resumes at.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DistributedSampler, Sampler


class MixingSampler(Sampler):
    """Epochs of ``size`` items (default ``len(dataset)``) of which ``round(ratio * size)`` are pseudo-labelled.

    Each kind is drawn without replacement while it lasts and cycles through fresh permutations when the ratio
    asks for more clips of one kind than exist, so every clip is seen before any repeats.
    """

    def __init__(self, pseudo_flags, ratio: float, *, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 size: int | None = None):
        self.pseudo = [i for i, p in enumerate(pseudo_flags) if p]
        self.human = [i for i, p in enumerate(pseudo_flags) if not p]
        if ratio > 0 and not self.pseudo:
            raise ValueError("pseudo_ratio > 0 but there are no pseudo-labelled videos")
        if ratio < 1 and not self.human:
            raise ValueError("pseudo_ratio < 1 but there are no human-labelled videos")
        self.ratio, self.seed = float(ratio), int(seed)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.size = len(pseudo_flags) if size is None else int(size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self):
        return math.ceil(self.size / self.num_replicas)

    @staticmethod
    def _draw(pool, n, g):
        out = []
        while len(out) < n:
            out += [pool[i] for i in torch.randperm(len(pool), generator=g).tolist()]
        return out[:n]

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        n_pseudo = round(self.ratio * self.size)
        picks = self._draw(self.pseudo, n_pseudo, g) + self._draw(self.human, self.size - n_pseudo, g)
        order = [picks[i] for i in torch.randperm(len(picks), generator=g).tolist()]
        total = len(self) * self.num_replicas
        order += order[: total - len(order)]  # pad so every rank gets the same count
        return iter(order[self.rank:total:self.num_replicas])


def epoch_sampler(pseudo_flags, ratio: float | None, *, seed: int, num_replicas: int = 1, rank: int = 0,
                  epoch_clips: int | None = None):
    if ratio is None and epoch_clips is None:
        return DistributedSampler(range(len(pseudo_flags)), num_replicas=num_replicas, rank=rank,
                                  shuffle=True, seed=seed)
    if ratio is None:  # a fixed epoch size at the natural proportion
        ratio = sum(map(bool, pseudo_flags)) / max(len(pseudo_flags), 1)
    return MixingSampler(pseudo_flags, ratio, seed=seed, num_replicas=num_replicas, rank=rank, size=epoch_clips)
