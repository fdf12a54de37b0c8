"""Detection mAP: hand-computed cases, equality with a plain official-semantics loop on real ground truth,
and property tests."""

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eval_reference import reference_ap, reference_gt_bsn, reference_gt_official
from tal.data.annotations import AnnotationError, AnnotationSet, AnnotationWarning, Segment, VideoAnnotation, load_annotations
from tal.eval.detection import TIOU_PRESETS, EvaluationWarning, evaluate_detection
from tal.eval.predictions import Detection, PredictionError, load_predictions, write_predictions


def make_gt(videos: dict[str, list[tuple]]) -> AnnotationSet:
    return AnnotationSet({vid: VideoAnnotation(vid, "testing", 100.0, None, [Segment(s, e, lab) for s, e, lab in segs])
                          for vid, segs in videos.items()})


def quiet_eval(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvaluationWarning)
        return evaluate_detection(*args, **kwargs)


# ---------------------------------------------------------------- hand-computed cases

def test_hand_computed_single_class():
    gt = make_gt({"v": [(0, 10, "a"), (20, 30, "a")]})
    preds = {"v": [Detection("a", 0.9, 0, 10),      # TP on gt0
                   Detection("a", 0.8, 0, 10),      # duplicate -> FP (gt0 taken)
                   Detection("a", 0.7, 21, 30)]}    # tIoU 0.9 with gt1 -> TP at 0.5, FP at 0.95
    r = evaluate_detection(gt, preds, [0.5, 0.95])
    # 0.5: P/R = (1, .5), (.5, .5), (2/3, 1) -> envelope at TPs: 1, 2/3 -> AP = .5*1 + .5*2/3
    assert r.mAP[0] == pytest.approx(0.5 + 1 / 3)
    # 0.95: only the first is a TP -> AP = .5
    assert r.mAP[1] == pytest.approx(0.5)
    assert r.average_mAP == pytest.approx((0.5 + 1 / 3 + 0.5) / 2)


def test_falls_through_to_next_best_free_instance():
    # gt0 [0,10], gt1 [2,12].  A [0,10] takes gt0.  B [0.2,10.2]: tIoU 0.942 with gt0 (taken) and
    # 8.2/11.8 = 0.695 with gt1, so the official loop moves on to gt1: TP at 0.6, FP at 0.8.
    gt = make_gt({"v": [(0, 10, "a"), (2, 12, "a")]})
    preds = {"v": [Detection("a", 0.9, 0, 10), Detection("a", 0.8, 0.2, 10.2)]}
    r = evaluate_detection(gt, preds, [0.6, 0.8])
    assert r.mAP[0] == pytest.approx(1.0)
    assert r.mAP[1] == pytest.approx(0.5)


def test_equal_tiou_takes_the_later_instance_like_the_official_code():
    # The first detection has tIoU 1/3 with both instances; the official argsort()[::-1] tries the later
    # one first, so the second detection (tIoU 1 with the later one, 0 with the earlier) is a false positive.
    gt = make_gt({"v": [(1, 2, "a"), (2, 3, "a")]})
    preds = {"v": [Detection("a", 0.9, 1.5, 2.5), Detection("a", 0.8, 2, 3)]}
    assert evaluate_detection(gt, preds, [0.3]).mAP[0] == pytest.approx(0.5)


def test_mean_over_gt_classes_and_missing_predictions():
    gt = make_gt({"v": [(0, 10, "a")], "w": [(5, 6, "b")]})
    r = evaluate_detection(gt, {"v": [Detection("a", 1.0, 0, 10)]}, [0.5])
    assert r.per_class["a"][0] == 1.0 and r.per_class["b"][0] == 0.0
    assert r.mAP[0] == pytest.approx(0.5)


def test_tied_scores_official_order_or_input_order():
    gt = make_gt({"v": [(0, 10, "a")]})
    tp_first = {"v": [Detection("a", 0.5, 0, 10), Detection("a", 0.5, 50, 60)]}
    fp_first = {"v": [Detection("a", 0.5, 50, 60), Detection("a", 0.5, 0, 10)]}
    assert evaluate_detection(gt, tp_first, [0.5], ties="stable").mAP[0] == pytest.approx(1.0)
    assert evaluate_detection(gt, fp_first, [0.5], ties="stable").mAP[0] == pytest.approx(0.5)
    # the official argsort()[::-1]: a small array is sorted stably, then reversed -- the later tie comes first
    assert evaluate_detection(gt, tp_first, [0.5]).mAP[0] == pytest.approx(0.5)
    assert evaluate_detection(gt, fp_first, [0.5]).mAP[0] == pytest.approx(1.0)
    # the official input order is Python 2.7's dict order of the videos: {"a", "b", "c"} iterates a, c, b
    gt3 = make_gt({v: [(0, 10, "a")] for v in "abc"})
    preds = {v: [Detection("a", 0.5, 0, 10) if v == "c" else Detection("a", 0.5, 50, 60)] for v in "abc"}
    # official ranking: reverse of [a, c, b] = b, c, a -> FP, TP, FP; input order a, b, c would give FP, FP, TP
    assert evaluate_detection(gt3, preds, [0.5]).mAP[0] == pytest.approx(0.5 / 3)
    assert evaluate_detection(gt3, preds, [0.5], ties="stable").mAP[0] == pytest.approx(1 / 3 / 3)


def test_equal_tious_over_more_than_16_instances_follow_numpy_116():
    """Beyond 16 instances of a class in a video numpy's sort is not stable: the official loop visits equal
    tIoUs 19, 18, 1, ... for 20 of them (numpy 1.16's quicksort, reversed), not 19, 18, 17."""
    gt = make_gt({"v": [(0, 10, "a")] * 20})
    preds = {"v": [Detection("a", 0.9 - 0.1 * i, 0, 10) for i in range(3)]}
    _, official = evaluate_detection(gt, preds, [0.5], return_matching=True)
    _, stable = evaluate_detection(gt, preds, [0.5], ties="stable", return_matching=True)
    assert official.matched[0].tolist() == [19, 18, 1] and stable.matched[0].tolist() == [19, 18, 17]


def test_zero_length_detection_on_zero_length_instance_matches_as_in_the_official_code():
    """The official tIoU of two zero-length segments is 0/0 = NaN, which its loop counts as a match at every
    threshold (wherever the two lie in the video)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnnotationWarning)
        gt = make_gt({"v": [(5, 5, "a"), (20, 30, "a")]})
    preds = {"v": [Detection("a", 0.9, 40, 40), Detection("a", 0.8, 20, 30)]}
    assert evaluate_detection(gt, preds, [0.5, 0.95]).mAP.tolist() == [1.0, 1.0]


def test_unknown_labels_ignored_and_counted_and_unknown_videos_are_fp():
    gt = make_gt({"v": [(0, 10, "a")]})
    preds = {"v": [Detection("a", 0.9, 0, 10), Detection("zzz", 0.95, 0, 10)], "other": [Detection("a", 0.99, 0, 1)]}
    with pytest.warns(EvaluationWarning) as record:
        r = evaluate_detection(gt, preds, [0.5])
    text = " ".join(str(w.message) for w in record)
    assert "ignored 1 prediction" in text and "1 prediction(s) are on videos without ground truth" in text
    assert r.ignored_predictions == 1 and r.unmatched_video_predictions == 1
    assert r.mAP[0] == pytest.approx(0.5)  # the other-video FP ranks first


def test_dedup_gt_and_classes_argument():
    gt = make_gt({"v": [(0, 10, "a"), (0.0005, 10.0005, "a"), (30, 40, "b")]})
    preds = {"v": [Detection("a", 0.9, 0, 10), Detection("b", 0.8, 30, 40)]}
    assert evaluate_detection(gt, preds, [0.5]).per_class["a"][0] == pytest.approx(0.5)
    assert evaluate_detection(gt, preds, [0.5], dedup_gt=True).per_class["a"][0] == pytest.approx(1.0)
    r = quiet_eval(gt, preds, [0.5], classes=["b", "c"])
    assert list(r.per_class) == ["b"] and r.missing_classes == ["c"] and r.ignored_predictions == 1


def test_breakdown_bins_use_detad_normalised_precision():
    # Instances: [0,2] (length 2: XS) and [10,20] (length 10: M); one class, so N = 2 instances per class.
    gt = make_gt({"v": [(0, 2, "a"), (10, 20, "a")]})
    preds = {"v": [Detection("a", 0.9, 0, 2), Detection("a", 0.8, 40, 50), Detection("a", 0.7, 10, 20)]}
    report = evaluate_detection(gt, preds, [0.5], breakdown_bins="thumos")
    assert report.mAP[0] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    length = report.breakdown["length"]
    assert length["XS"]["num_gt"] == 1 and length["M"]["num_gt"] == 1 and length["S"]["num_gt"] == 0
    # XS: TP then FP (the M match is skipped): precision_N at the TP = 2/(2+0) -> AP 1.
    assert length["XS"]["mAP"] == [pytest.approx(1.0)]
    # M: FP then TP: precision_N = (1*2)/(1*2 + 1) = 2/3 (plain precision would be 1/2).
    assert length["M"]["mAP"] == [pytest.approx(2 / 3)]
    assert np.isnan(length["S"]["average_mAP"])
    assert report.breakdown["instances"]["S"]["num_gt"] == 2  # two instances in the video
    assert report.to_dict()["breakdown"] == report.breakdown


def test_report_to_dict_is_json_ready():
    gt = make_gt({"v": [(0, 10, "a")]})
    d = evaluate_detection(gt, {"v": [Detection("a", 1.0, 0, 10)]}, TIOU_PRESETS["thumos"]).to_dict()
    json.dumps(d)
    assert d["tiou_thresholds"] == [0.3, 0.4, 0.5, 0.6, 0.7] and d["mAP"] == [1.0] * 5
    assert d["per_class"] == {"a": [1.0] * 5} and d["average_mAP"] == 1.0


# ---------------------------------------------------------------- predictions file

def test_predictions_roundtrip_and_errors(tmp_path):
    preds = {"v1": [Detection("a", 0.5, 1.0, 2.0), Detection("b", 0.25, 3.0, 4.5)], "v2": []}
    path = tmp_path / "p.json"
    write_predictions(preds, path, external_data={"used": True, "details": "x"})
    data = json.loads(path.read_text())
    assert set(data) == {"version", "results", "external_data"} and data["external_data"]["used"] is True
    assert load_predictions(path) == preds
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": {"v1": [{"label": "a", "score": 1, "segment": [3, 1]}]}}))
    with pytest.raises(PredictionError, match=r"bad.json: video 'v1' field 'results\[0\]': segment end"):
        load_predictions(bad)
    bad.write_text(json.dumps({"results": {"v1": [{"label": "a", "segment": [0, 1]}]}}))
    with pytest.raises(PredictionError, match=r"'results\[0\]': needs 'label', 'score'"):
        load_predictions(bad)
    bad.write_text(json.dumps({"version": 1}))
    with pytest.raises(PredictionError, match="'results' missing"):
        load_predictions(bad)



def test_predictions_gzipped_and_unusual_but_valid_files(tmp_path):
    import gzip

    preds = {"v1": [Detection("a", 0.5, 1.0, 2.0), Detection("b", 0.25, 3.0, 4.5)], "v2": [],
             "v3": [Detection("a", 1.0, 0.0, 7.0)]}
    path = tmp_path / "p.json"
    write_predictions(preds, path)
    packed = tmp_path / "p.json.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    assert load_predictions(packed) == preds
    renamed = tmp_path / "p_gz.json"  # recognised by its bytes, not its name
    renamed.write_bytes(packed.read_bytes())
    assert load_predictions(renamed) == preds
    # numbers as strings and integer labels: read as before, by the checking path
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"results": {"v1": [{"label": 3, "score": "0.5", "segment": ["1", 2]}]}}))
    assert load_predictions(odd) == {"v1": [Detection("3", 0.5, 1.0, 2.0)]}
    # NaN is not JSON, but Python's json reads it; it stays a one-line error naming the field
    odd.write_text('{"results": {"v1": [{"label": "a", "score": NaN, "segment": [1, 2]}]}}')
    with pytest.raises(AnnotationError, match=r"odd.json: video 'v1' field 'results\[0\]' score: expected a finite"):
        load_predictions(odd)
    odd.write_text('{"results": {"v1": [{"label": "a", "score": 1, "segment": [1, 2, 3]}]}}')
    with pytest.raises(PredictionError, match=r"'results\[0\]': 'segment' must be \[start, end\]"):
        load_predictions(odd)
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(packed.read_bytes()[:-20])
    with pytest.raises(AnnotationError, match=r"cut.json.gz: cannot read \("):
        load_predictions(cut)


# ---------------------------------------------------------------- real ground truth vs the plain loop

def jittered_predictions(gt_rows, per_video, classes, seed):
    """Predictions derived from real GT: jittered boundaries, some wrong labels, some pure noise, all scores
    distinct; returned both as a dict for stovtal and as rows for the reference loop."""
    rng = np.random.default_rng(seed)
    by_video = {}
    for vid, label, s, e in gt_rows:
        by_video.setdefault(vid, []).append((label, s, e))
    n = per_video * len(by_video)
    scores = iter(rng.permutation(n) / n + 1e-3)
    preds, rows = {}, []
    for vid, segs in by_video.items():
        dets = []
        for _ in range(per_video):
            label, s, e = segs[rng.integers(len(segs))]
            length = max(e - s, 0.5)
            a = max(0.0, s + rng.normal(0, 0.15) * length)
            b = max(a + 0.05, e + rng.normal(0, 0.15) * length)
            if rng.random() < 0.2:
                label = classes[rng.integers(len(classes))]
            if rng.random() < 0.1:
                a, b = sorted(rng.uniform(0, e + 10, 2))
            dets.append(Detection(label, float(next(scores)), float(a), float(b)))
        preds[vid] = dets
        rows += [(vid, d.label, d.start, d.end, d.score) for d in dets]
    return preds, rows


def test_equals_official_loop_on_thumos14_test(shared_data):
    path = shared_data / "DETAD" / "thumos14_test_extra_characteristics.json"
    gt = load_annotations(path, subset="testing", clip=False)
    rows = reference_gt_official(path, "testing")
    thresholds = np.arange(0.3, 0.71, 0.1)
    preds, pred_rows = jittered_predictions(rows, 40, gt.classes, seed=1)
    report = evaluate_detection(gt, preds, thresholds)
    classes, ref = reference_ap(rows, pred_rows, thresholds)
    mine = np.stack([report.per_class[c] for c in classes], axis=1)
    np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(report.mAP, ref.mean(axis=1), rtol=0, atol=1e-9)
    assert 0.2 < report.average_mAP < 0.9  # a meaningful, non-degenerate score


def test_equals_official_loop_on_activitynet_val(shared_data):
    folder = shared_data / "BSN-boundary-sensitive-network"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnnotationWarning)
        gt = load_annotations(folder / "anet_anno_action.json", subset="validation", clip=False)
    rows = reference_gt_bsn(folder / "anet_anno_action.json", folder / "video_info_new.csv", "validation")
    assert len(rows) == 7293
    thresholds = np.linspace(0.5, 0.95, 10)
    preds, pred_rows = jittered_predictions(rows, 4, gt.classes, seed=2)
    report = evaluate_detection(gt, preds, thresholds)
    classes, ref = reference_ap(rows, pred_rows, thresholds)
    mine = np.stack([report.per_class[c] for c in classes], axis=1)
    np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-9)
    assert abs(report.average_mAP - ref.mean()) < 1e-9


def test_perfect_predictions_on_real_gt_score_one(shared_data):
    path = shared_data / "DETAD" / "thumos14_test_extra_characteristics.json"
    gt = load_annotations(path, subset="testing")
    preds = {vid: [Detection(s.label, 1.0 - 1e-4 * i, s.start, s.end) for i, s in enumerate(v.segments)]
             for vid, v in gt.videos.items()}
    r = evaluate_detection(gt, preds, TIOU_PRESETS["thumos"])
    np.testing.assert_allclose(r.mAP, 1.0)


# ---------------------------------------------------------------- properties

segments = st.tuples(st.floats(0, 50), st.floats(0.5, 20)).map(lambda t: (round(t[0], 2), round(t[0] + t[1], 2)))
LABELS = ["a", "b", "c"]


@st.composite
def problems(draw):
    gt = {}
    for v in range(draw(st.integers(1, 3))):
        segs = draw(st.lists(st.tuples(segments, st.sampled_from(LABELS)), min_size=1, max_size=5))
        gt[f"v{v}"] = [(s, e, lab) for (s, e), lab in segs]
    n = draw(st.integers(0, 15))
    vids = sorted(gt)
    scores = draw(st.lists(st.floats(0, 1), min_size=n, max_size=n, unique=True))
    dets = [(draw(st.sampled_from(vids)), Detection(draw(st.sampled_from(LABELS)), sc, *draw(segments)))
            for sc in scores]
    return make_gt(gt), dets


def as_dict(dets):
    out = {}
    for vid, d in dets:
        out.setdefault(vid, []).append(d)
    return out


THR = [0.1, 0.5, 0.9]


@settings(max_examples=60, deadline=None)
@given(problems(), st.randoms(use_true_random=False))
def test_permutation_invariance_with_distinct_scores(problem, rnd):
    gt, dets = problem
    shuffled = list(dets)
    rnd.shuffle(shuffled)
    a = quiet_eval(gt, as_dict(dets), THR)
    b = quiet_eval(gt, as_dict(shuffled), THR)
    np.testing.assert_allclose(a.mAP, b.mAP, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(problems())
def test_perfect_predictions_give_one(problem):
    gt, _ = problem
    preds = {vid: [Detection(s.label, 1.0, s.start, s.end) for s in v.segments] for vid, v in gt.videos.items()}
    np.testing.assert_allclose(evaluate_detection(gt, preds, THR).mAP, 1.0)


@settings(max_examples=60, deadline=None)
@given(problems(), st.sampled_from(LABELS), st.floats(0, 1.5), segments)
def test_adding_a_false_positive_never_raises_ap(problem, label, score, seg):
    gt, dets = problem
    before = quiet_eval(gt, as_dict(dets), THR)
    # An FP: a video with no ground truth of any class.
    after = quiet_eval(gt, as_dict(dets + [("nowhere", Detection(label, score, *seg))]), THR)
    for c in before.per_class:
        assert np.all(after.per_class[c] <= before.per_class[c] + 1e-12)


@settings(max_examples=60, deadline=None)
@given(problems(), st.lists(st.tuples(st.floats(0, 1), segments), max_size=5))
def test_unknown_labels_change_nothing(problem, extra):
    gt, dets = problem
    vid = next(iter(gt.videos))
    before = quiet_eval(gt, as_dict(dets), THR)
    after = quiet_eval(gt, as_dict(dets + [(vid, Detection("unknown", sc, *seg)) for sc, seg in extra]), THR)
    np.testing.assert_array_equal(before.mAP, after.mAP)
    assert after.ignored_predictions == before.ignored_predictions + len(extra)


@settings(max_examples=40, deadline=None)
@given(problems())
def test_matches_reference_loop_on_random_problems(problem):
    gt, dets = problem
    gt_rows = [(vid, s.label, s.start, s.end) for vid, v in gt.videos.items() for s in v.segments]
    pred_rows = [(vid, d.label, d.start, d.end, d.score) for vid, d in dets]
    classes, ref = reference_ap(gt_rows, pred_rows, THR)
    r = quiet_eval(gt, as_dict(dets), THR)
    mine = np.stack([r.per_class[c] for c in classes], axis=1)
    np.testing.assert_allclose(mine, ref, atol=1e-9)


def plain_ranked_ap(matched, positive, gt_class, bounds, skip_others, normalize):
    """One detection at a time: the all-point interpolated AP of each class and threshold."""
    n_t, n_c = matched.shape[0], len(bounds) - 1
    out = np.full((n_t, n_c), np.nan)
    for t in range(n_t):
        for c in range(n_c):
            npos = int(np.sum(positive & (gt_class == c)))
            if npos == 0:
                continue
            tp = fp = 0
            curve = []
            for i in range(bounds[c], bounds[c + 1]):
                g = matched[t, i]
                if g >= 0 and not positive[g] and skip_others:
                    continue
                if g >= 0 and positive[g]:
                    tp += 1
                else:
                    fp += 1
                if normalize is None:
                    precision = tp / (tp + fp)
                else:
                    precision = (tp / npos * normalize) / (tp / npos * normalize + fp)
                curve.append((precision, g >= 0 and positive[g]))
            out[t, c] = sum(max(p for p, _ in curve[k:]) for k, (_, hit) in enumerate(curve) if hit) / npos
    return out


@pytest.mark.parametrize("seed", range(6))
def test_ranked_ap_visits_only_true_positives_yet_equals_the_plain_loop(seed):
    from tal.eval.matching import ranked_average_precision
    rng = np.random.default_rng(seed)
    n_c, n_g, n_t = 4, 30, 3
    gt_class = rng.integers(n_c, size=n_g)
    sizes = rng.integers(0, 40, size=n_c)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    matched = np.full((n_t, bounds[-1]), -1)
    for t in range(n_t):  # each instance taken at most once, by a detection of its own class
        for c in range(n_c):
            own = rng.permutation(np.flatnonzero(gt_class == c))
            slots = rng.permutation(np.arange(bounds[c], bounds[c + 1]))[:len(own)]
            take = rng.random(len(slots)) < 0.6
            matched[t, slots[take]] = own[:len(slots)][take]
    positive = rng.random(n_g) < 0.5
    for skip, norm in ((False, None), (True, None), (True, 2.5), (False, 7.0)):
        mine = ranked_average_precision(matched, positive, gt_class, bounds, skip_others=skip, normalize=norm)
        ref = plain_ranked_ap(matched, positive, gt_class, bounds, skip, norm)
        np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-12)


def test_predictions_of_a_class_without_ground_truth_are_named_apart_from_unknown_labels():
    gt = make_gt({"v": [(0, 10, "a")]})
    preds = {"v": [Detection("a", 0.9, 0, 10), Detection("b", 0.95, 0, 10), Detection("b", 0.5, 20, 30),
                   Detection("zzz", 0.9, 0, 10)]}
    with pytest.warns(EvaluationWarning) as record:
        r = evaluate_detection(gt, preds, [0.5], classes=["a", "b"])
    assert [str(w.message) for w in record] == [
        "ignored 2 prediction(s) of class(es) without ground truth in these videos (b), left out of the mean; "
        "ignored 1 prediction(s) with labels outside the evaluated classes"]
    assert r.missing_classes == ["b"] and r.ignored_predictions == 3 and r.mAP[0] == 1.0
