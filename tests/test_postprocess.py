"""Vectorised NMS / soft-NMS / score voting against straightforward Python loops."""

import math
import random

import pytest
import torch

from tal.model.postprocess import nms, postprocess, score_voting, segment_iou, soft_nms


def py_iou(a, b):
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def py_nms(segs, scores, labels, thr, max_num):
    order = sorted(range(len(segs)), key=lambda i: (-scores[i], i))
    keep = []
    suppressed = set()
    for i in order:
        if i in suppressed:
            continue
        keep.append(i)
        if len(keep) == max_num:
            break
        for j in order:
            if j not in suppressed and j != i and labels[j] == labels[i] and py_iou(segs[i], segs[j]) > thr:
                suppressed.add(j)
    return keep


def py_soft_nms(segs, scores, labels, sigma, min_score, max_num):
    scores = list(scores)
    alive = [s >= min_score for s in scores]
    keep, kept_scores = [], []
    while any(alive) and len(keep) < max_num:
        i = max((j for j in range(len(segs)) if alive[j]), key=lambda j: (scores[j], -j))
        keep.append(i)
        kept_scores.append(scores[i])
        alive[i] = False
        for j in range(len(segs)):
            if alive[j] and labels[j] == labels[i]:
                scores[j] *= math.exp(-py_iou(segs[i], segs[j]) ** 2 / sigma)
                alive[j] = scores[j] >= min_score
    return keep, kept_scores


def random_case(rng, n, n_classes):
    segs = []
    for _ in range(n):
        s = rng.uniform(0, 100)
        segs.append([s, s + rng.uniform(0.5, 30)])
    scores = [rng.random() for _ in range(n)]
    labels = [rng.randrange(n_classes) for _ in range(n)]
    return segs, scores, labels


def test_segment_iou_matches_python():
    rng = random.Random(0)
    a, _, _ = random_case(rng, 20, 1)
    b, _, _ = random_case(rng, 15, 1)
    got = segment_iou(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    ref = torch.tensor([[py_iou(x, y) for y in b] for x in a], dtype=torch.float64)
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("seed", range(6))
def test_nms_matches_brute_force(seed):
    rng = random.Random(seed)
    segs, scores, labels = random_case(rng, 120, 1 + seed % 3)
    thr = [0.1, 0.3, 0.5][seed % 3]
    max_num = [200, 10][seed % 2]
    got = nms(torch.tensor(segs, dtype=torch.float64), torch.tensor(scores, dtype=torch.float64),
              torch.tensor(labels), thr, max_num)
    assert got.tolist() == py_nms(segs, scores, labels, thr, max_num)


@pytest.mark.parametrize("seed", range(6))
def test_soft_nms_matches_brute_force(seed):
    rng = random.Random(100 + seed)
    segs, scores, labels = random_case(rng, 100, 1 + seed % 3)
    sigma = [0.5, 0.75, 0.3][seed % 3]
    max_num = [300, 25][seed % 2]
    idx, out = soft_nms(torch.tensor(segs, dtype=torch.float64), torch.tensor(scores, dtype=torch.float64),
                        torch.tensor(labels), sigma, 0.01, max_num)
    ref_idx, ref_scores = py_soft_nms(segs, scores, labels, sigma, 0.01, max_num)
    assert idx.tolist() == ref_idx
    torch.testing.assert_close(out, torch.tensor(ref_scores, dtype=torch.float64))
    assert (out[:-1] >= out[1:]).all()  # picks come out best first


def test_soft_nms_decays_overlaps_and_is_class_wise():
    segs = torch.tensor([[0.0, 10.0], [1.0, 10.0], [0.0, 10.0], [50.0, 60.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    labels = torch.tensor([0, 0, 1, 0])
    idx, out = soft_nms(segs, scores, labels, sigma=0.5, min_score=0.001)
    kept = dict(zip(idx.tolist(), out.tolist()))
    assert kept[0] == pytest.approx(0.9)
    assert kept[1] == pytest.approx(0.8 * math.exp(-0.81 / 0.5))  # IoU 0.9 with the first pick
    assert kept[2] == pytest.approx(0.7)  # another class: untouched
    assert kept[3] == pytest.approx(0.6)


def test_score_voting_averages_overlapping_candidates():
    all_segs = torch.tensor([[0.0, 10.0], [1.0, 11.0], [40.0, 50.0], [0.0, 10.5]])
    all_scores = torch.tensor([0.6, 0.3, 0.9, 0.5])
    all_labels = torch.tensor([0, 0, 0, 1])
    refined = score_voting(all_segs[:1], all_labels[:1], all_segs, all_scores, all_labels, 0.7)
    # [1, 11] overlaps [0, 10] with IoU 9/11 >= 0.7 (same class); [0, 10.5] is another class
    expected = (0.6 * all_segs[0] + 0.3 * all_segs[1]) / 0.9
    torch.testing.assert_close(refined[0], expected)


def test_postprocess_methods_and_limits():
    rng = random.Random(3)
    segs, scores, labels = random_case(rng, 300, 2)
    s, sc, lab = torch.tensor(segs), torch.tensor(scores), torch.tensor(labels)
    for method in ("soft", "hard", "none"):
        out = postprocess(s, sc, lab, method=method, iou_threshold=0.3, max_seg_num=50, voting_thresh=0.7)
        assert out["segments"].shape == (50, 2) and out["scores"].shape == (50,) and out["labels"].shape == (50,)
        assert (out["scores"][:-1] >= out["scores"][1:]).all()
    empty = postprocess(s[:0], sc[:0], lab[:0], method="soft")
    assert empty["segments"].shape == (0, 2)
    with pytest.raises(ValueError, match="unknown NMS method"):
        postprocess(s, sc, lab, method="linear")
