"""Label assignment: which ground-truth action each pyramid point learns, and its regression target."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Targets:
    cls: torch.Tensor  # [P, C] float, 1 for the class of the assigned action (ties: every tied action's class)
    offsets: torch.Tensor  # [P, 2] float (left, right) distances in units of the point's stride
    positive: torch.Tensor  # [P] bool
    weights: torch.Tensor  # [P] float, weight of the assigned action (1 where unassigned)


def assign_targets(
    points: torch.Tensor,
    gt_segments: torch.Tensor,
    gt_labels: torch.Tensor,
    num_classes: int,
    center_sample_radius: float = 1.5,
    gt_weights: torch.Tensor | None = None,
) -> Targets:
    """Assign ground truth to points of one video, ActionFormer-style.

    points [P, 4] (t, lo, hi, stride); gt_segments [N, 2] in grid units; gt_labels [N].
    A point is a candidate for an action if it lies strictly inside the action clipped to a window of
    radius * stride around its centre (centre sampling; radius <= 0 means anywhere inside the action), and
    its larger regression distance falls in the point's range [lo, hi). Among candidates the shortest action wins.
    """
    P, N = points.shape[0], gt_segments.shape[0]
    device = points.device
    if N == 0:
        return Targets(
            cls=torch.zeros(P, num_classes, device=device),
            offsets=torch.zeros(P, 2, device=device),
            positive=torch.zeros(P, dtype=torch.bool, device=device),
            weights=torch.ones(P, device=device),
        )
    gt = gt_segments.to(device=device, dtype=torch.float32)
    t, lo, hi, stride = (points[:, i : i + 1] for i in range(4))  # each [P, 1]
    start, end = gt[None, :, 0], gt[None, :, 1]  # [1, N]
    left, right = t - start, end - t  # [P, N]
    if center_sample_radius > 0:
        centre = 0.5 * (start + end)
        radius = stride * center_sample_radius
        inside = torch.minimum(t - torch.maximum(centre - radius, start), torch.minimum(centre + radius, end) - t) > 0
    else:
        inside = torch.minimum(left, right) > 0
    reach = torch.maximum(left, right)
    in_range = (reach >= lo) & (reach < hi)
    lengths = (end - start).expand(P, N).masked_fill(~(inside & in_range), float("inf"))
    min_len, winner = lengths.min(dim=1)
    positive = torch.isfinite(min_len)

    one_hot = torch.nn.functional.one_hot(gt_labels.to(device).long(), num_classes).float()  # [N, C]
    tied = (lengths <= min_len[:, None] + 1e-3) & torch.isfinite(lengths)
    cls = (tied.float() @ one_hot).clamp_(max=1.0)

    rows = torch.arange(P, device=device)
    offsets = torch.stack([left[rows, winner], right[rows, winner]], dim=1) / stride
    offsets = offsets * positive[:, None]
    if gt_weights is None:
        weights = torch.ones(P, device=device)
    else:
        weights = torch.where(positive, gt_weights.to(device=device, dtype=torch.float32)[winner], 1.0)
    return Targets(cls=cls, offsets=offsets, positive=positive, weights=weights)
