"""Epoch samplers: natural proportion (torch's DistributedSampler) or a fixed fraction of pseudo-labelled clips,
optionally over a fixed number of clips per epoch (the same compute whatever the number of unlabelled videos);
and the length-aware batch sampler that groups clips of similar length into batches.

All shard one seeded permutation per epoch across ranks, so DDP ranks see disjoint indices and a resumed run
replays the same order from the epoch it resumes at.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch.utils.data import BatchSampler, DistributedSampler, Sampler


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


LENGTH_JITTER = 0.1


class LengthBatchSampler(Sampler):
    """Batches of clips of similar length, so that padding each batch to its longest clip wastes little.

    Every epoch takes the whole epoch's order from ``order`` (a sampler for a single replica: a shuffle of the
    dataset, or a MixingSampler's pseudo/human mix), cuts it into windows of ``window_batches`` steps, sorts
    each window by clip length (jittered by up to ±10 %, so that batch mates change every epoch even when a
    window holds the whole epoch; stably: equal keys keep their random order), cuts it into steps of
    ``batch_size * num_replicas`` clips and shuffles the steps. Within a step the clips are dealt to the ranks
    in turn, so all ranks pad to about the same length at the same step (DDP waits for the slowest one).

    What stays as with ``order`` sharded directly: the epoch's clips and its pseudo/human mix, a random epoch
    (window membership and step order are drawn per epoch from ``seed``), disjoint clips per rank (the epoch
    is padded by wrapping around so it splits evenly, as DistributedSampler does) and the same number of
    batches on every rank. ``lengths``: an upper bound of each clip's rows (training crops only shorten).
    """

    def __init__(self, order, lengths, batch_size: int, *, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 window_batches: int = 32):
        if batch_size < 1 or window_batches < 1:
            raise ValueError("batch_size and window_batches must be >= 1")
        self.order, self.lengths = order, np.asarray(lengths)
        self.batch_size, self.window_batches = int(batch_size), int(window_batches)
        self.num_replicas, self.rank, self.seed = int(num_replicas), int(rank), int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.order.set_epoch(epoch)

    def _per_rank(self) -> int:
        return math.ceil(len(self.order) / self.num_replicas)

    def __len__(self):
        return math.ceil(self._per_rank() / self.batch_size)

    def steps(self) -> list[list[int]]:
        """This epoch's steps, each ``batch_size * num_replicas`` clips (the last may be smaller), all ranks'."""
        order = list(self.order)
        total = self._per_rank() * self.num_replicas
        order = list(itertools.islice(itertools.cycle(order), total)) if order else []
        rng = np.random.default_rng((self.seed, self.epoch))
        # sort keys jittered by up to ±LENGTH_JITTER (log scale): clips of nearly the same length trade places,
        # so batch mates change from epoch to epoch even when one window holds the whole epoch
        keys = self.lengths[order] * np.exp(rng.uniform(-LENGTH_JITTER, LENGTH_JITTER, len(order))) if order else []
        step = self.batch_size * self.num_replicas
        window = step * self.window_batches
        steps = []
        for a in range(0, total, window):
            chunk = [order[k] for k in sorted(range(a, min(a + window, total)), key=keys.__getitem__)]
            steps += [chunk[b:b + step] for b in range(0, len(chunk), step)]
        return [steps[i] for i in rng.permutation(len(steps))]

    def __iter__(self):
        for step in self.steps():
            yield step[self.rank::self.num_replicas]


class EpochBatchSampler(BatchSampler):
    """torch's BatchSampler over an epoch sampler, passing ``set_epoch`` on (ActionFormer's batching)."""

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


def training_batches(pseudo_flags, lengths, batch_size: int, *, ratio: float | None, epoch_clips: int | None,
                     seed: int, num_replicas: int = 1, rank: int = 0, by_length: bool = True,
                     window_batches: int = 32):
    """This rank's batches of every epoch (call ``set_epoch`` first): length-aware (LengthBatchSampler), or the
    epoch sampler's shard cut into batches in order (``by_length=False``, ActionFormer's)."""
    if not by_length:
        return EpochBatchSampler(epoch_sampler(pseudo_flags, ratio, seed=seed, num_replicas=num_replicas, rank=rank,
                                               epoch_clips=epoch_clips), batch_size, drop_last=False)
    order = epoch_sampler(pseudo_flags, ratio, seed=seed, epoch_clips=epoch_clips)
    return LengthBatchSampler(order, lengths, batch_size, num_replicas=num_replicas, rank=rank, seed=seed,
                              window_batches=window_batches)
