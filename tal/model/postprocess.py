"""Pure-PyTorch post-processing of 1-D detections: NMS, Gaussian soft-NMS, score voting.

Greedy suppression is sequential by nature; each step here is one vectorised pass over all candidates, and
the loop stops once `max_num` detections are kept (picked scores never increase, so truncating after the
loop would give the same result). Suppression is class-wise when labels are given. No compiled extension.
"""

from __future__ import annotations

import torch


def segment_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix [N, M] between segments a [N, 2] and b [M, 2] (start, end)."""
    inter = (torch.minimum(a[:, None, 1], b[None, :, 1]) - torch.maximum(a[:, None, 0], b[None, :, 0])).clamp(min=0)
    union = (a[:, None, 1] - a[:, None, 0]) + (b[None, :, 1] - b[None, :, 0]) - inter
    return inter / union.clamp(min=1e-8)


class _Overlaps:
    """IoU of one candidate against all, with the per-candidate work (columns, lengths, labels) done once.

    Greedy loops call this hundreds of times, so it avoids indexing tensors and works on contiguous columns."""

    def __init__(self, segments, labels):
        seg = segments.double()
        self.start, self.end = seg[:, 0].contiguous(), seg[:, 1].contiguous()
        self.length = self.end - self.start
        self._bounds = seg.tolist()
        multi = labels is not None and labels.numel() > 0 and bool((labels != labels[0]).any())
        self.labels = labels if multi else None

    def __call__(self, i: int) -> torch.Tensor:
        s, e = self._bounds[i]
        inter = (torch.clamp(self.end, max=e) - torch.clamp(self.start, min=s)).clamp_(min=0)
        iou = inter.div_((self.length + (e - s) - inter).clamp_(min=1e-8))
        if self.labels is not None:
            iou.mul_(self.labels == self.labels[i])
        return iou


def nms(segments, scores, labels=None, iou_threshold: float = 0.5, max_num: int | None = None) -> torch.Tensor:
    """Greedy hard NMS; returns indices of kept segments in descending score order."""
    n = segments.shape[0]
    limit = n if max_num is None else min(n, max_num)
    overlaps = _Overlaps(segments, labels)
    work = scores.double().clone()  # -inf marks a suppressed or picked candidate
    keep = []
    while len(keep) < limit:
        i = int(work.argmax())
        if work[i] == float("-inf"):
            break
        keep.append(i)
        work.masked_fill_(overlaps(i) > iou_threshold, float("-inf"))
        work[i] = float("-inf")
    return torch.tensor(keep, dtype=torch.long, device=segments.device)


def soft_nms(
    segments,
    scores,
    labels=None,
    sigma: float = 0.5,
    min_score: float = 0.001,
    max_num: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian soft-NMS: each pick decays the rest by exp(-IoU^2 / sigma); scores below min_score drop out.

    Returns (indices of picked segments, their decayed scores), in pick order (descending score)."""
    n = segments.shape[0]
    limit = n if max_num is None else min(n, max_num)
    overlaps = _Overlaps(segments, labels)
    work = scores.double().clone()
    work.masked_fill_(work < min_score, float("-inf"))
    keep, kept_scores = [], []
    while len(keep) < limit:
        i = int(work.argmax())
        best = float(work[i])
        if best == float("-inf"):
            break
        keep.append(i)
        kept_scores.append(best)
        work.mul_(overlaps(i).square_().div_(-sigma).exp_()).nan_to_num_(nan=float("-inf"))  # -inf * 0 = nan
        work[i] = float("-inf")
        work.masked_fill_(work < min_score, float("-inf"))
    idx = torch.tensor(keep, dtype=torch.long, device=segments.device)
    return idx, torch.tensor(kept_scores, dtype=scores.dtype, device=scores.device)


def score_voting(kept_segments, kept_labels, all_segments, all_scores, all_labels, iou_threshold: float = 0.7):
    """Refine each kept segment to the score-weighted mean of same-class candidates overlapping it by >= threshold."""
    if kept_segments.shape[0] == 0:
        return kept_segments
    iou = segment_iou(kept_segments, all_segments)
    w = (iou >= iou_threshold).float() * all_scores[None, :].float()
    if kept_labels is not None:
        w = w * (kept_labels[:, None] == all_labels[None, :])
    total = w.sum(dim=1, keepdim=True)
    voted = (w @ all_segments.float()) / total.clamp(min=1e-12)
    return torch.where(total > 0, voted, kept_segments.float()).to(kept_segments.dtype)


def postprocess(
    segments,
    scores,
    labels,
    *,
    method: str = "soft",
    iou_threshold: float = 0.1,
    sigma: float = 0.5,
    min_score: float = 0.001,
    max_seg_num: int = 200,
    voting_thresh: float = 0.0,
    class_wise: bool = True,
) -> dict:
    """NMS (hard | soft | none) + optional score voting; returns dict(segments, scores, labels), best first."""
    by_class = labels if class_wise else None
    if method == "hard":
        idx = nms(segments, scores, by_class, iou_threshold, max_seg_num)
        out_scores = scores[idx]
    elif method == "soft":
        idx, out_scores = soft_nms(segments, scores, by_class, sigma, min_score, max_seg_num)
    elif method == "none":
        out_scores, idx = scores.sort(descending=True, stable=True)
        out_scores, idx = out_scores[:max_seg_num], idx[:max_seg_num]
    else:
        raise ValueError(f"unknown NMS method {method!r} (hard, soft or none)")
    out_segments = segments[idx]
    out_labels = labels[idx]
    if voting_thresh > 0 and idx.numel() > 0:
        out_segments = score_voting(out_segments, by_class[idx] if by_class is not None else None,
                                    segments, scores, by_class, voting_thresh)
    return {"segments": out_segments, "scores": out_scores, "labels": out_labels}
