"""The matching core of the detection evaluator: flat arrays, the greedy matching and AP.

Vectorised: all (detection, instance) pairs of the same video and class are built at once; the greedy
matching then runs in rounds over every class, video and threshold together.  In each round every
unresolved detection proposes its best free instance, and a proposal is final when no earlier unresolved
detection could still take that instance -- the earliest unresolved detection of a group always qualifies,
so the rounds end, and the result equals the sequential greedy loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter

import numpy as np

from tal.data.annotations import AnnotationSet, Segment
from tal.eval.predictions import Detection
from tal.eval.ranking import SMALL_SORT, numpy116_argsort, official_descending, py27_dict_order

DEDUP_TOLERANCE = 1e-3
TIE_ORDERS = ("official", "stable")


def dedup_segments(segments: list[Segment], tol: float = DEDUP_TOLERANCE) -> list[Segment]:
    """Drop instances repeating an earlier one's label with start and end within ``tol`` seconds
    (the ActionFormer/OpenTAD convention)."""
    kept: list[Segment] = []
    for seg in segments:
        if not any(k.label == seg.label and abs(k.start - seg.start) <= tol and abs(k.end - seg.end) <= tol
                   for k in kept):
            kept.append(seg)
    return kept


@dataclass
class GroundTruthArrays:
    """Flat ground truth of the evaluated classes, in file order."""
    video: np.ndarray      # int index into videos
    label: np.ndarray      # int index into classes
    start: np.ndarray
    end: np.ndarray
    classes: list[str]
    videos: dict[str, int]

    def __len__(self) -> int:
        return len(self.label)


@dataclass
class PredictionArrays:
    """Flat detections of the evaluated classes, ranked: by class, then descending score, then input order."""
    video: np.ndarray
    label: np.ndarray
    start: np.ndarray
    end: np.ndarray
    score: np.ndarray
    video_names: list[str]  # video index -> id (ground-truth videos first)
    ignored: int = 0
    unmatched_video: int = 0

    def __len__(self) -> int:
        return len(self.label)


@dataclass
class Matching:
    """Result of the greedy matching: ``matched[t, i]`` is the ground-truth index taken by ranked detection
    ``i`` at threshold ``t``, or -1 for a false positive."""
    gt: GroundTruthArrays
    preds: PredictionArrays
    tiou_thresholds: np.ndarray
    matched: np.ndarray


def flatten_ground_truth(gt: AnnotationSet, classes=None, dedup_gt: bool = False) -> GroundTruthArrays:
    present = gt.classes
    if classes is None:
        classes = present
    else:
        have = set(present)
        classes = [c for c in dict.fromkeys(classes) if c in have]
    class_index = {c: i for i, c in enumerate(classes)}
    videos: dict[str, int] = {}
    vid_l, lab_l, s_l, e_l = [], [], [], []
    for vid, video in gt.videos.items():
        v = videos.setdefault(vid, len(videos))
        segments = dedup_segments(video.segments) if dedup_gt else video.segments
        for seg in segments:
            c = class_index.get(seg.label)
            if c is not None:
                vid_l.append(v)
                lab_l.append(c)
                s_l.append(seg.start)
                e_l.append(seg.end)
    return GroundTruthArrays(np.asarray(vid_l, np.int64), np.asarray(lab_l, np.int64),
                             np.asarray(s_l, np.float64), np.asarray(e_l, np.float64), list(classes), videos)


def flatten_predictions(preds: dict[str, list[Detection]], gt: GroundTruthArrays,
                        ties: str = "official") -> PredictionArrays:
    """Ranked detections: by class, then descending score. Equal scores: ``ties="official"`` in the official
    evaluator's order (tal.eval.ranking), ``"stable"`` in input order (video order of ``preds``, then list order)."""
    if ties not in TIE_ORDERS:
        raise ValueError(f"ties must be one of {TIE_ORDERS}, got {ties!r}")
    class_index = {c: i for i, c in enumerate(gt.classes)}
    videos = dict(gt.videos)
    per_video = [videos.setdefault(vid, len(videos)) for vid in preds]
    counts = [len(dets) for dets in preds.values()]
    flat = [d for dets in preds.values() for d in dets]
    n = len(flat)
    # fromiter over C-level attribute getters: the cheapest way from many small objects to columns.
    label = np.fromiter(map(class_index.get, map(attrgetter("label"), flat), repeat(-1, n)), np.int64, count=n)
    start = np.fromiter(map(attrgetter("start"), flat), np.float64, count=n)
    end = np.fromiter(map(attrgetter("end"), flat), np.float64, count=n)
    score = np.fromiter(map(attrgetter("score"), flat), np.float64, count=n)
    video = np.repeat(np.asarray(per_video, np.int64), counts)
    known = label >= 0
    ignored = int(n - known.sum())
    unmatched = int((known & (video >= len(gt.videos))).sum())
    video, label, start, end, score = video[known], label[known], start[known], end[known], score[known]
    order = np.lexsort((-score, label))  # stable: equal scores keep input order
    if ties == "official" and len(order) > 1:
        tied = (np.diff(label[order]) == 0) & (np.diff(score[order]) == 0)
        if tied.any():  # without ties every correct sort gives this order
            pred_video = np.repeat(np.arange(len(counts)), counts)[known]
            order = _official_order(preds, pred_video, label, score)
    return PredictionArrays(video[order], label[order], start[order], end[order], score[order],
                            list(videos), ignored, unmatched)


def _official_order(preds, pred_video, label, score) -> np.ndarray:
    """The official ranking. Its input is the prediction file as Python 2.7 read it (videos in that dict's
    iteration order, each video's detections in list order); then, per class, ``score.argsort()[::-1]`` with
    numpy 1.16's sort. ``pred_video``: each detection's video as a position in ``preds``."""
    rank_of_video = np.empty(len(preds), np.int64)
    position = {vid: i for i, vid in enumerate(preds)}
    for r, vid in enumerate(py27_dict_order(list(preds))):
        rank_of_video[position[vid]] = r
    official_input = np.lexsort((np.arange(len(label)), rank_of_video[pred_video], label))
    bounds = np.flatnonzero(np.diff(label[official_input])) + 1
    return np.concatenate([block[official_descending(score[block])]
                           for block in np.split(official_input, bounds)])


def _inter_union(ps, pe, gs, ge):
    """Intersection and union of paired segments, in the official evaluator's operation order."""
    inter = np.clip(np.minimum(pe, ge) - np.maximum(ps, gs), 0, None)
    return inter, (ge - gs) + (pe - ps) - inter


def segment_iou_pairs(ps, pe, gs, ge) -> np.ndarray:
    """tIoU of paired segments, with the official evaluator's arithmetic (bit-identical results); 0 where the
    union is not positive (two zero-length segments)."""
    inter, union = _inter_union(ps, pe, gs, ge)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where(union > 0, iou, 0.0)


def tiou_matrix(a, b) -> np.ndarray:
    """tIoU [N, M] of segments a [N, 2] against b [M, 2] (start, end), with the arithmetic of segment_iou_pairs."""
    a, b = np.asarray(a, np.float64).reshape(-1, 2), np.asarray(b, np.float64).reshape(-1, 2)
    return segment_iou_pairs(a[:, None, 0], a[:, None, 1], b[None, :, 0], b[None, :, 1])


def _candidate_pairs(gt: GroundTruthArrays, preds: PredictionArrays, min_tiou: float, ties: str = "official"):
    """All (detection, instance) pairs of the same video and class with tIoU >= min_tiou, ordered by
    detection rank, then descending tIoU, then the order the official loop visits equal tIoUs in.

    As in the official code, a zero-length detection and a zero-length instance have tIoU 0/0 = NaN, which its
    loop takes for a match at every threshold and visits first: +inf here. Equal tIoUs: the official
    ``argsort()[::-1]`` visits the later instance first when a video has at most 16 instances of the class
    (numpy sorts those stably); beyond that, with ``ties="official"``, in numpy 1.16's order (tal.eval.ranking);
    ``ties="stable"`` keeps "later first" always."""
    n_classes = max(len(gt.classes), 1)
    gkey = gt.video * n_classes + gt.label
    g_order = np.argsort(gkey, kind="stable")
    gkey_sorted = gkey[g_order]
    groups, starts, sizes = np.unique(gkey_sorted, return_index=True, return_counts=True)
    pkey = preds.video * n_classes + preds.label
    where = np.minimum(np.searchsorted(groups, pkey), len(groups) - 1)
    found = groups[where] == pkey
    lo = starts[where]
    counts = np.where(found, sizes[where], 0)
    total = int(counts.sum())
    pair_p = np.repeat(np.arange(len(preds)), counts)
    first = np.cumsum(counts) - counts
    offsets = np.arange(total) - np.repeat(first, counts)
    pair_g = g_order[np.repeat(lo, counts) + offsets]
    inter, union = _inter_union(preds.start[pair_p], preds.end[pair_p], gt.start[pair_g], gt.end[pair_g])
    with np.errstate(divide="ignore", invalid="ignore"):
        official = inter / union
    iou = np.where(np.isnan(official), np.inf, np.where(union > 0, official, 0.0))
    keep = iou >= min_tiou
    visit = -offsets  # among equal tIoUs, the later instance first
    if ties == "official":
        _official_visits(visit, official, iou, keep, pair_p, counts, first)
    order = np.lexsort((visit[keep], -iou[keep], pair_p[keep]))
    return pair_p[keep][order], pair_g[keep][order], iou[keep][order]


def _official_visits(visit, official, iou, keep, pair_p, counts, first) -> None:
    """For detections with more than 16 instances to choose from and equal tIoUs among their candidates, the
    position of each instance in the official visiting order (numpy 1.16's argsort of the tIoUs, reversed)."""
    big = keep & (counts[pair_p] > SMALL_SORT)
    if not big.any():
        return
    p, v = pair_p[big], iou[big]
    o = np.lexsort((v, p))
    tied = (np.diff(p[o]) == 0) & (np.diff(v[o]) == 0)
    for det in np.unique(p[o][1:][tied]):
        span = slice(first[det], first[det] + counts[det])
        visiting = numpy116_argsort(official[span])[::-1]
        visit[span][visiting] = np.arange(counts[det])


def match_detections(gt: GroundTruthArrays, preds: PredictionArrays, tiou_thresholds,
                     ties: str = "official") -> Matching:
    thresholds = np.asarray(tiou_thresholds, np.float64)
    n_t, n_p, n_g = len(thresholds), len(preds), len(gt)
    matched = np.full((n_t, n_p), -1, np.int64)
    if n_p == 0 or n_g == 0 or n_t == 0:
        return Matching(gt, preds, thresholds, matched)
    pair_p, pair_g, iou = _candidate_pairs(gt, preds, float(thresholds.min()), ties)
    # One flat problem over all thresholds: ids t*n_p + p and t*n_g + g never collide across thresholds.
    act_p = np.concatenate([t * n_p + pair_p[iou >= thr] for t, thr in enumerate(thresholds)])
    act_g = np.concatenate([t * n_g + pair_g[iou >= thr] for t, thr in enumerate(thresholds)])
    taken = np.zeros(n_t * n_g, bool)
    flat_matched = matched.reshape(-1)
    earliest = np.empty(n_t * n_g, np.int64)
    while act_p.size:
        # Each unresolved detection proposes its best free instance (its first active pair).
        first = np.ones(act_p.size, bool)
        first[1:] = act_p[1:] != act_p[:-1]
        prop_p, prop_g = act_p[first], act_g[first]
        # A proposal is final when no earlier unresolved detection still has that instance as a candidate.
        earliest[act_g] = np.iinfo(np.int64).max
        np.minimum.at(earliest, act_g, act_p)
        win = earliest[prop_g] == prop_p
        taken[prop_g[win]] = True
        flat_matched[prop_p[win]] = prop_g[win] % n_g
        keep = ~taken[act_g] & (flat_matched[act_p] < 0)
        act_p, act_g = act_p[keep], act_g[keep]
    return Matching(gt, preds, thresholds, matched)


def _suffix_max_by_group(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Max of ``values`` from each position to the end of its group (groups contiguous), exactly: doubling
    steps (after the step s pass, each position holds the max of the next 2s positions of its group)."""
    out = values.copy()
    step = 1
    while step < len(out):
        later = np.where(group[step:] == group[:-step], out[step:], -np.inf)
        np.maximum(out[:-step], later, out=out[:-step])
        step *= 2
    return out


def ranked_average_precision(matched: np.ndarray, positive: np.ndarray, class_of_gt: np.ndarray, bounds: np.ndarray,
                             skip_others: bool = False, normalize: float | None = None) -> np.ndarray:
    """All-point interpolated AP, [T, C], of ranked detections laid out class after class (``bounds``: C + 1
    offsets) from the matching ``matched`` ([T, N] instance index or -1).  Classes without positives are nan.

    ``positive``: [G] instances that count as positives; with ``skip_others`` a detection matched to another
    instance is skipped (neither TP nor FP, DETAD's breakdown convention), else it is a false positive.
    ``normalize``: DETAD's normalised precision R*N / (R*N + FP) with N this average number of positives.

    Only the true positives are visited: precision falls at every false positive, so the best precision at
    a rank or later (the interpolation envelope) is always reached at a true positive, and recall rises by
    1/npos exactly there.  A few thousand true positives stand for hundreds of thousands of detections."""
    n_t = matched.shape[0]
    n_c = len(bounds) - 1
    npos = np.bincount(class_of_gt[positive], minlength=n_c).astype(np.float64)
    ap = np.zeros((n_t, n_c))
    for t in range(n_t):
        pos = np.flatnonzero(matched[t] >= 0)                    # matched detections, ascending rank
        hit = positive[matched[t, pos]]
        cls = np.searchsorted(bounds, pos, "right") - 1
        # Rank among the detections that count: skipped ones before it in its class do not.
        skipped_before = np.zeros(len(pos), np.int64)
        if skip_others:
            skipped = np.cumsum(~hit)
            first = np.searchsorted(cls, cls, "left")
            skipped_before = skipped - np.where(first > 0, skipped[first - 1], 0)
        pos, cls, skipped_before = pos[hit], cls[hit], skipped_before[hit]
        rank = (pos - bounds[cls] + 1 - skipped_before).astype(np.float64)
        tp_cum = (np.arange(len(pos)) - np.searchsorted(cls, cls, "left") + 1).astype(np.float64)
        if normalize is None:
            precision = tp_cum / rank
        else:
            scaled = tp_cum / npos[cls] * normalize
            precision = scaled / (scaled + (rank - tp_cum))
        ap[t] = np.bincount(cls, weights=_suffix_max_by_group(precision, cls), minlength=n_c)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(npos > 0, ap / npos, np.nan)


def class_slices(preds: PredictionArrays, n_classes: int) -> np.ndarray:
    """Start offsets of each class's block in the ranked detections (length n_classes + 1)."""
    return np.searchsorted(preds.label, np.arange(n_classes + 1), "left")


def per_class_ap(matching: Matching, gt_mask: np.ndarray | None = None, normalize: float | None = None) -> np.ndarray:
    """[T, C] AP; with ``gt_mask`` only the masked instances are positives and detections matched to
    other instances are skipped (DETAD's breakdown convention).  Classes without positives are nan."""
    gt, preds = matching.gt, matching.preds
    positive = np.ones(len(gt), bool) if gt_mask is None else np.asarray(gt_mask, bool)
    return ranked_average_precision(matching.matched, positive, gt.label, class_slices(preds, len(gt.classes)),
                                    skip_others=gt_mask is not None, normalize=normalize)
