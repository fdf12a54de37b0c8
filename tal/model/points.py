"""Point generator: one anchor point per pyramid position, with its regression range and stride."""

from __future__ import annotations

import torch

from .config import ModelConfig


class PointGenerator:
    """Points [P, 4] = (position in input grid units, range lo, range hi, stride), levels concatenated.

    Position i of level l (stride s) is centred on input index i * s (masks and strided convs agree on this).
    Like ActionFormer, points for inputs up to max_seq_len * max_buffer_len_factor are built once and sliced;
    longer inputs get theirs built on demand.
    """

    def __init__(self, cfg: ModelConfig):
        self.strides = cfg.strides
        self.ranges = cfg.regression_range
        self.buffer_len = int(cfg.max_seq_len * cfg.max_buffer_len_factor)
        self._buffers: dict[torch.device, list[torch.Tensor]] = {}

    def _level(self, n: int, stride: int, rng, device) -> torch.Tensor:
        t = torch.arange(n, dtype=torch.float32, device=device) * stride
        lo, hi = rng
        return torch.stack([t, torch.full_like(t, lo), torch.full_like(t, hi), torch.full_like(t, stride)], dim=1)

    def __call__(self, level_sizes: list[int], device) -> torch.Tensor:
        device = torch.device(device)
        if level_sizes[0] > self.buffer_len:
            levels = [self._level(n, s, r, device) for n, s, r in zip(level_sizes, self.strides, self.ranges)]
            return torch.cat(levels, dim=0)
        if device not in self._buffers:
            self._buffers[device] = [
                self._level(-(-self.buffer_len // s), s, r, device) for s, r in zip(self.strides, self.ranges)
            ]
        return torch.cat([buf[:n] for buf, n in zip(self._buffers[device], level_sizes)], dim=0)
