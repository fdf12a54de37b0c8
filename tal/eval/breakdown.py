"""mAP broken down by ground-truth characteristics, with DETAD's bins (Alwassel et al., ECCV 2018).

- action length (end - start, seconds), bins (lo, hi]: THUMOS14 XS (0,3] S (3,6] M (6,12] L (12,18] XL >18;
  ActivityNet XS (0,30] S (30,60] M (60,120] L (120,180] XL >180;
- instances per video (all classes, as DETAD's ``num-instances``): THUMOS14 XS 1, S 2-40, M 41-80, L >80;
  ActivityNet XS 1, S 2-4, M 5-8, L >8.

Per bin, as DETAD does: the bin's instances are the positives, detections matched (in the full matching)
to instances outside the bin are skipped, false positives stay, and precision is DETAD's normalised
precision R*N / (R*N + FP) with N the average number of instances per class over the whole ground truth --
so bins with few instances are not penalised for the false positives every bin shares.  ``overall`` is the
same normalised mAP on all instances, the reference the bins compare to.  A bin's mAP is the mean over
classes with instances in it.  Zero-length instances fall in XS.
"""

from __future__ import annotations

import numpy as np

from tal.eval.matching import Matching, per_class_ap

BINS = {
    "thumos": {
        "length": ([0, 3, 6, 12, 18, np.inf], ["XS", "S", "M", "L", "XL"]),
        "instances": ([0, 1, 40, 80, np.inf], ["XS", "S", "M", "L"]),
    },
    "anet": {
        "length": ([0, 30, 60, 120, 180, np.inf], ["XS", "S", "M", "L", "XL"]),
        "instances": ([0, 1, 4, 8, np.inf], ["XS", "S", "M", "L"]),
    },
}


def bin_index(values: np.ndarray, edges) -> np.ndarray:
    """Bin of each value for right-closed bins (e0, e1], (e1, e2], ...; values <= e0 go to the first bin."""
    idx = np.searchsorted(np.asarray(edges, np.float64), values, side="left") - 1
    return np.clip(idx, 0, len(edges) - 2)


def gt_characteristics(matching: Matching) -> dict[str, np.ndarray]:
    gt = matching.gt
    per_video = np.bincount(gt.video, minlength=len(gt.videos)) if len(gt) else np.zeros(0, np.int64)
    return {"length": gt.end - gt.start, "instances": per_video[gt.video].astype(np.float64)}


def breakdown(matching: Matching, bins: str = "thumos") -> dict:
    """``{characteristic: {bin: {"range", "num_gt", "mAP": [...], "average_mAP"}}}``."""
    if bins not in BINS:
        raise ValueError(f"unknown breakdown bins {bins!r} (expected one of {', '.join(BINS)})")
    values = gt_characteristics(matching)
    n_classes = max(len(matching.gt.classes), 1)
    average_n = len(matching.gt) / n_classes
    overall = per_class_ap(matching, normalize=average_n)
    overall_map = np.nanmean(overall, axis=1) if overall.shape[1] else np.full(overall.shape[0], np.nan)
    out = {"bins": bins, "normalized_to": average_n,
           "overall": {"mAP": [float(m) for m in overall_map], "average_mAP": float(np.mean(overall_map))}}
    for name, (edges, labels) in BINS[bins].items():
        which = bin_index(values[name], edges)
        table = {}
        for b, label in enumerate(labels):
            mask = which == b
            ap = per_class_ap(matching, gt_mask=mask, normalize=average_n)
            has = ~np.isnan(ap[0]) if ap.shape[1] else np.zeros(0, bool)
            m_ap = ap[:, has].mean(axis=1) if has.any() else np.full(ap.shape[0], np.nan)
            lo, hi = edges[b], edges[b + 1]
            table[label] = {"range": [float(lo), None if np.isinf(hi) else float(hi)],
                            "num_gt": int(mask.sum()),
                            "mAP": [float(m) for m in m_ap],
                            "average_mAP": float(np.mean(m_ap))}
        out[name] = table
    return out
