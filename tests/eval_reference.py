"""A deliberately plain re-statement of the official ActivityNet detection-mAP loop, for cross-checking
the vectorised evaluator.  Reads ground truth straight from the raw JSON (no stovtal reader involved)."""

import json
import math

import numpy as np


def reference_gt_official(path, subset):
    """[(video, label, start, end)] from an official-layout file, exactly as the official code reads it."""
    with open(path) as fh:
        data = json.load(fh)
    rows = []
    for vid, entry in data["database"].items():
        if entry["subset"] != subset:
            continue
        for ann in entry["annotations"]:
            rows.append((vid, ann["label"], float(ann["segment"][0]), float(ann["segment"][1])))
    return rows


def reference_gt_bsn(json_path, csv_path, subset):
    import csv

    with open(csv_path, newline="") as fh:
        subsets = {row["video"]: row["subset"] for row in csv.DictReader(fh)}
    with open(json_path) as fh:
        data = json.load(fh)
    return [(vid, ann["label"], float(ann["segment"][0]), float(ann["segment"][1]))
            for vid, entry in data.items() if subsets[vid] == subset for ann in entry["annotations"]]


def _tiou(seg, cands):
    out = []
    for cs, ce in cands:
        inter = max(0.0, min(seg[1], ce) - max(seg[0], cs))
        union = (ce - cs) + (seg[1] - seg[0]) - inter
        out.append(math.nan if union == 0 else inter / union)  # numpy's 0/0 in the official code
    return out


def reference_ap(gt_rows, pred_rows, thresholds):
    """Per-class AP [T, C] (classes sorted) by the official loop; preds are (video, label, start, end, score)
    in input order, ranked by descending score with ties in input order (tal-eval --ties stable)."""
    classes = sorted({r[1] for r in gt_rows})
    result = np.zeros((len(thresholds), len(classes)))
    for ci, cls in enumerate(classes):
        gts = [r for r in gt_rows if r[1] == cls]
        by_video = {}
        for gi, (vid, _, s, e) in enumerate(gts):
            by_video.setdefault(vid, []).append((gi, s, e))
        preds = [p for p in pred_rows if p[1] == cls]
        preds = sorted(preds, key=lambda p: -p[4])  # Python's sort is stable: ties keep input order
        lock = [[False] * len(gts) for _ in thresholds]
        tp = np.zeros((len(thresholds), len(preds)))
        for pi, (vid, _, s, e, _) in enumerate(preds):
            cands = by_video.get(vid, [])
            ious = _tiou((s, e), [(cs, ce) for _, cs, ce in cands])
            # descending tIoU, NaN first (numpy sorts it last, then the order is reversed); ties: later first
            order = sorted(range(len(cands)), key=lambda j: (0, -j) if math.isnan(ious[j]) else (1, -ious[j], -j))
            for ti, thr in enumerate(thresholds):
                for j in order:
                    if ious[j] < thr:  # never true for NaN: the official loop counts it as a match
                        break
                    gi = cands[j][0]
                    if lock[ti][gi]:
                        continue
                    lock[ti][gi] = True
                    tp[ti, pi] = 1
                    break
        for ti in range(len(thresholds)):
            tp_cum = np.cumsum(tp[ti])
            fp_cum = np.cumsum(1 - tp[ti])
            rec = tp_cum / len(gts)
            prec = tp_cum / np.maximum(tp_cum + fp_cum, 1)
            mprec = np.concatenate([[0], prec, [0]])
            mrec = np.concatenate([[0], rec, [1]])
            for i in range(len(mprec) - 2, -1, -1):
                mprec[i] = max(mprec[i], mprec[i + 1])
            idx = np.where(mrec[1:] != mrec[:-1])[0] + 1
            result[ti, ci] = np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx])
    return classes, result
