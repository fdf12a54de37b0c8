"""Detection mAP with the semantics of the official ActivityNet evaluator (Evaluation/eval_detection.py).

Semantics, per class:
- detections are ranked by descending score. Equal scores (``ties="official"``, the default) come in the order
  the official run visits them: it reads the results with Python 2.7 (videos in that dict's iteration order)
  and ranks with ``argsort()[::-1]``, numpy 1.16's unstable quicksort reversed -- both ported in
  :mod:`tal.eval.ranking`, so the result does not depend on the numpy or Python installed. ``ties="stable"``
  keeps input order instead (video order of the predictions dict, then list order);
- at each tIoU threshold a detection is a true positive when, among the ground-truth instances of the same
  video and class not yet taken at that threshold, the one with the highest tIoU reaches the threshold; that
  instance is then taken.  (The official loop walks the instances by descending tIoU, skipping taken ones,
  so a detection falls through to the next-best free instance.)  Equal tIoUs pick the later instance (file
  order), as the official ``argsort()[::-1]`` does for up to 16 instances of a class in a video (numpy
  sorts those stably); beyond that in numpy 1.16's order (``ties="official"``) or still later-first;
- tIoU of two segments follows the official arithmetic, including its 0/0: a zero-length detection and a
  zero-length instance of the same class and video give NaN, which the official loop counts as a match at
  every threshold (wherever they lie); it is done the same way here;
- AP is all-point interpolation over the monotone precision envelope; a class's mAP uses every instance of
  it as positives; mAP is the mean over the classes present in the ground truth (or the given ``classes``
  that have ground truth); average mAP is the mean over thresholds;
- detections on videos absent from the ground truth are false positives (as in the official code);
  detections with labels outside the evaluated classes are ignored and counted.

The matching itself (flat arrays, vectorised greedy matching, AP) is in :mod:`tal.eval.matching`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from tal.data.annotations import AnnotationSet
from tal.eval.breakdown import breakdown
from tal.eval.matching import (Matching, flatten_ground_truth, flatten_predictions, match_detections, per_class_ap,
                               tiou_matrix)
from tal.eval.predictions import Detection

__all__ = ["TIOU_PRESETS", "DetectionReport", "EvaluationWarning", "Matching", "evaluate_detection", "tiou_matrix"]

TIOU_PRESETS = {"thumos": np.array([0.3, 0.4, 0.5, 0.6, 0.7]), "anet": np.linspace(0.5, 0.95, 10)}


class EvaluationWarning(UserWarning):
    """Predictions that were ignored or cannot match (unknown labels, videos outside the ground truth)."""


@dataclass
class DetectionReport:
    tiou_thresholds: np.ndarray
    mAP: np.ndarray
    average_mAP: float
    per_class: dict[str, np.ndarray]
    num_gt: dict[str, int] = field(default_factory=dict)
    num_predictions: int = 0
    ignored_predictions: int = 0      # labels outside the evaluated classes
    unmatched_video_predictions: int = 0  # on videos without ground truth (false positives)
    missing_classes: list[str] = field(default_factory=list)  # requested classes without ground truth
    breakdown: dict = field(default_factory=dict)  # filled by tal.eval.breakdown

    def to_dict(self) -> dict:
        out = {
            "tiou_thresholds": [float(t) for t in self.tiou_thresholds],
            "mAP": [float(m) for m in self.mAP],
            "average_mAP": float(self.average_mAP),
            "per_class": {c: [float(a) for a in ap] for c, ap in self.per_class.items()},
            "num_gt": dict(self.num_gt),
            "num_predictions": self.num_predictions,
            "ignored_predictions": self.ignored_predictions,
            "unmatched_video_predictions": self.unmatched_video_predictions,
        }
        if self.missing_classes:
            out["missing_classes"] = list(self.missing_classes)
        if self.breakdown:
            out["breakdown"] = self.breakdown
        return out


def _ignored_message(preds, evaluated, missing) -> str:
    """Why predictions were not scored: labels of requested classes without ground truth here (named: a small
    test set often lacks a class; the official evaluator leaves it out of the mean) or outside the vocabulary."""
    known, without_gt = set(evaluated), set(missing)
    outside = [d.label for dets in preds.values() for d in dets if d.label not in known]
    no_gt = [label for label in outside if label in without_gt]
    parts = []
    if no_gt:
        names = sorted(set(no_gt))
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        parts.append(f"ignored {len(no_gt)} prediction(s) of class(es) without ground truth in these videos "
                     f"({shown}), left out of the mean")
    if len(outside) > len(no_gt):
        parts.append(f"ignored {len(outside) - len(no_gt)} prediction(s) with labels outside the evaluated classes")
    return "; ".join(parts)


def evaluate_detection(gt: AnnotationSet, preds: dict[str, list[Detection]], tiou_thresholds,
                       dedup_gt: bool = False, classes=None, *, breakdown_bins: str | None = None,
                       ties: str = "official", return_matching: bool = False):
    """mAP of ``preds`` against ``gt`` (all its videos: pick a subset first) at each tIoU threshold.

    ``classes``: the evaluated vocabulary (default: the classes present in ``gt``); requested classes without
    ground truth are reported in ``missing_classes`` and left out of the mean.  ``breakdown_bins``
    ("thumos"/"anet") fills ``report.breakdown`` (see :mod:`tal.eval.breakdown`).  ``ties``: equal scores (and
    equal tIoUs) in the official evaluator's order ("official", see :mod:`tal.eval.ranking`) or in input order
    ("stable").  With ``return_matching`` the :class:`Matching` is returned too."""
    gt_arrays = flatten_ground_truth(gt, classes, dedup_gt)
    missing = [] if classes is None else [c for c in dict.fromkeys(classes) if c not in set(gt_arrays.classes)]
    pred_arrays = flatten_predictions(preds, gt_arrays, ties)
    if pred_arrays.ignored:
        warnings.warn(_ignored_message(preds, gt_arrays.classes, missing), EvaluationWarning, stacklevel=2)
    if pred_arrays.unmatched_video:
        warnings.warn(f"{pred_arrays.unmatched_video} prediction(s) are on videos without ground truth "
                      f"(counted as false positives)", EvaluationWarning, stacklevel=2)
    matching = match_detections(gt_arrays, pred_arrays, tiou_thresholds, ties)
    ap = per_class_ap(matching)
    thresholds = matching.tiou_thresholds
    m_ap = ap.mean(axis=1) if ap.shape[1] else np.full(len(thresholds), np.nan)
    report = DetectionReport(
        tiou_thresholds=thresholds,
        mAP=m_ap,
        average_mAP=float(m_ap.mean()) if m_ap.size else float("nan"),
        per_class={c: ap[:, i] for i, c in enumerate(gt_arrays.classes)},
        num_gt={c: int(n) for c, n in zip(gt_arrays.classes, np.bincount(gt_arrays.label, minlength=len(gt_arrays.classes)))},
        num_predictions=len(pred_arrays),
        ignored_predictions=pred_arrays.ignored,
        unmatched_video_predictions=pred_arrays.unmatched_video,
        missing_classes=missing,
    )
    if breakdown_bins:
        report.breakdown = breakdown(matching, breakdown_bins)
    return (report, matching) if return_matching else report
