"""Batching: pad a list of dataset items to one [B, D, T] tensor with a [B, T] validity mask.

Training batches are padded to ``max_seq_len`` at least (fixed shapes, as ActionFormer trains); every batch is
padded to a multiple of the largest pyramid stride, which the downsampling backbone needs.
"""

from __future__ import annotations

import torch


class PadCollate:
    """Picklable collate function (DataLoader workers need one)."""

    def __init__(self, multiple: int, min_len: int = 0):
        self.multiple = int(multiple)
        self.min_len = int(min_len)

    def padded_length(self, longest: int) -> int:
        length = max(longest, self.min_len)
        return -(-length // self.multiple) * self.multiple

    def __call__(self, items: list[dict]) -> dict:
        dim = items[0]["feats"].shape[0]
        lengths = [it["feats"].shape[1] for it in items]
        t = self.padded_length(max(lengths))
        feats = torch.zeros(len(items), dim, t, dtype=torch.float32)
        masks = torch.zeros(len(items), t, dtype=torch.bool)
        for b, (it, n) in enumerate(zip(items, lengths)):
            feats[b, :, :n] = it["feats"]
            masks[b, :n] = True
        batch = {"feats": feats, "masks": masks, "lengths": torch.tensor(lengths)}
        for key in ("video_id", "segments", "labels", "weights", "ignore", "grid", "duration", "pseudo"):
            batch[key] = [it[key] for it in items]
        return batch
