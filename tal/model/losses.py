"""Sigmoid focal loss and 1-D distance-IoU loss (unreduced; the model reduces and normalises)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0):
    """Elementwise focal loss (Lin et al.): alpha_t * (1 - p_t)^gamma * BCE; alpha < 0 disables alpha weighting."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def diou_loss_1d(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-point 1-D DIoU loss between (left, right) distances [N, 2] measured from the same point.

    1 - IoU + (centre distance / length of the enclosing segment)^2."""
    lp, rp = pred[:, 0], pred[:, 1]
    lg, rg = target[:, 0], target[:, 1]
    inter = torch.minimum(lp, lg) + torch.minimum(rp, rg)
    union = lp + rp + lg + rg - inter
    iou = inter / union.clamp(min=eps)
    enclose = torch.maximum(lp, lg) + torch.maximum(rp, rg)
    centre_gap = 0.5 * ((rp - lp) - (rg - lg))
    return 1 - iou + (centre_gap / enclose.clamp(min=eps)) ** 2
