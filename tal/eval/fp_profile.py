"""Where a detector's high-scoring false positives come from: a false-positive profile after DETAD
(Alwassel et al., ECCV 2018, after Hoiem et al.'s object-detection diagnosis).

Per class, detections are ranked by score and the top ``G·top`` of them are looked at (``G`` = the class's
ground-truth instances; DETAD plots the profile from 1G to 10G). Each gets one category at tIoU ``alpha``:

- ``true_positive``: tIoU >= alpha with a free instance of its class (greedy by score, as mAP matches);
- ``duplicate``: tIoU >= alpha with an instance of its class that a better detection already took;
- ``localization``: its best tIoU with an instance of its class lies in [0.1, alpha);
- ``wrong_label``: tIoU >= alpha with an instance of another class (e.g. a base instance named as novel);
- ``confusion``: tIoU in [0.1, alpha) with an instance of another class only;
- ``background``: tIoU < 0.1 with every instance.

The categories are tested in that order, so each detection has exactly one. Ground truth and detections
are compared in the label space of the detections: pass class-agnostic ground truth (every label
"action") to profile a localizer's own ranking.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from tal.data.annotations import AnnotationSet
from tal.eval.detection import tiou_matrix

CATEGORIES = ("true_positive", "duplicate", "localization", "wrong_label", "confusion", "background")
NEAR = 0.1  # below this tIoU a detection does not touch an instance (DETAD's threshold)


def _instances(gt: AnnotationSet) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for vid, video in gt.videos.items():
        segs = np.array([[s.start, s.end] for s in video.segments], np.float64).reshape(-1, 2)
        out[vid] = (segs, np.array([s.label for s in video.segments], dtype=object))
    return out


def false_positive_profile(gt: AnnotationSet, predictions: dict, classes=None, alpha: float = 0.5,
                           top: float = 1.0) -> dict:
    """Counts and fractions of each category among every class's top ``G·top`` detections.

    ``predictions``: ``{video_id: [Detection, ...]}`` (``tal.eval.predictions.Detection``); ``classes``: the
    classes to profile (default: every class of the ground truth). Detections on videos outside the ground
    truth are background. Returns ``{"counts": {...}, "fractions": {...}, "looked_at": N}``."""
    instances = _instances(gt)
    num_gt = Counter(s.label for v in gt.videos.values() for s in v.segments)
    classes = sorted(num_gt) if classes is None else list(classes)
    by_class: dict[str, list] = {c: [] for c in classes}
    for vid, dets in predictions.items():
        for d in dets:
            if d.label in by_class:
                by_class[d.label].append((d.score, vid, d.start, d.end))
    counts = Counter({c: 0 for c in CATEGORIES})
    for cls in classes:
        budget = int(round(num_gt.get(cls, 0) * top))
        ranked = sorted(by_class[cls], key=lambda r: -r[0])[:budget]
        taken: set[tuple[str, int]] = set()
        for _, vid, start, end in ranked:
            counts[_category(instances.get(vid), cls, vid, start, end, taken, alpha)] += 1
    looked_at = sum(counts.values())
    return {"alpha": alpha, "top": top, "looked_at": looked_at, "counts": dict(counts),
            "fractions": {c: counts[c] / looked_at if looked_at else float("nan") for c in CATEGORIES}}


def _category(found, cls: str, vid: str, start: float, end: float, taken: set, alpha: float) -> str:
    if found is None or not len(found[0]):
        return "background"
    segs, labels = found
    tiou = tiou_matrix(np.array([[start, end]], np.float64), segs)[0]
    own = labels == cls
    free = own & np.array([(vid, i) not in taken for i in range(len(segs))])
    if free.any() and tiou[free].max() >= alpha:
        best = int(np.flatnonzero(free)[np.argmax(tiou[free])])
        taken.add((vid, best))
        return "true_positive"
    if own.any() and tiou[own].max() >= alpha:
        return "duplicate"
    if own.any() and tiou[own].max() >= NEAR:
        return "localization"
    other = ~own
    if other.any() and tiou[other].max() >= alpha:
        return "wrong_label"
    if other.any() and tiou[other].max() >= NEAR:
        return "confusion"
    return "background"
