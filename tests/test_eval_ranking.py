"""tal.eval.ranking: the official evaluator's tie order, ported (numpy 1.16's argsort, Python 2.7's dict order),
and the official score it gives on the ActivityNet sample submission."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from tal.eval.detection import TIOU_PRESETS, evaluate_detection
from tal.eval.inputs import load_ground_truth
from tal.eval.predictions import load_predictions
from tal.eval.ranking import numpy116_argsort, official_descending, py27_dict_order, py27_str_hash

RECORDED = Path(__file__).parent / "data" / "numpy_quicksort_argsort.json"


def test_port_equals_numpy_quicksort_on_recorded_inputs():
    """np.argsort(kind="quicksort") recorded with numpy 1.24.4 (its argsort is numpy 1.16's introsort) on arrays
    full of ties, NaNs, sorted and reversed inputs, and one adversarial input that drives it into heapsort."""
    data = json.loads(RECORDED.read_text())
    assert data["numpy"] == "1.24.4" and len(data["inputs"]) == 70
    for values, expected in zip(data["inputs"], data["argsort"]):
        x = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        assert numpy116_argsort(x).tolist() == expected


def test_port_sorts_and_is_unstable_like_numpy_116():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 300).astype(float)
    order = numpy116_argsort(x)
    assert sorted(order.tolist()) == list(range(300)) and np.all(np.diff(x[order]) >= 0)
    assert order.tolist() != np.argsort(x, kind="stable").tolist()  # ties are not kept in input order
    assert numpy116_argsort(np.ones(16)).tolist() == list(range(16))  # up to 16 elements: insertion sort
    assert numpy116_argsort(np.ones(20))[::-1][:3].tolist() == [19, 18, 1]
    assert numpy116_argsort([]).tolist() == [] and numpy116_argsort([3.0]).tolist() == [0]
    assert numpy116_argsort([np.nan, 1.0, -0.0, 0.0]).tolist()[-1] == 0  # NaN sorts last
    distinct = rng.permutation(50).astype(float)
    assert official_descending(distinct).tolist() == np.argsort(-distinct).tolist()


def test_python27_dict_order():
    """Python 2.7 (64-bit) printed {'a': 1, 'c': 3, 'b': 2} for dict(a=1, b=2, c=3), and
    {'three': 3, 'two': 2, 'one': 1} for {'one': 1, 'two': 2, 'three': 3}; hash('a') was 12416037344."""
    assert py27_str_hash("a") == 12416037344 and py27_str_hash("") == 0
    assert py27_dict_order(["a", "b", "c"]) == ["a", "c", "b"]
    assert py27_dict_order(["one", "two", "three"]) == ["three", "two", "one"]
    keys = [f"video_{i:05d}" for i in range(3000)]  # several table resizes
    order = py27_dict_order(keys)
    assert sorted(order) == keys and order != keys


def test_official_tie_order_reproduces_the_official_score_on_the_activitynet_sample(shared_data):
    """ActivityNet's sample detection submission scores every prediction 1.0. With the BSN validation ground
    truth the official evaluator (Python 2.7, numpy 1.16.6) gives average mAP 0.9745 (shared/data SOURCES.md)."""
    sample = shared_data / "ActivityNet" / "sample_detection_prediction.json"
    bsn = shared_data / "BSN-boundary-sensitive-network" / "anet_anno_action.json"
    if not (sample.exists() and bsn.exists()):
        pytest.skip("the ActivityNet sample submission or the BSN ground truth is not in ../shared/data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-length instances, predictions on videos without ground truth
        gt = load_ground_truth(bsn, subset="validation", drop_v_prefix=True)  # official ids have no "v_"
        preds = load_predictions(sample)
        official = evaluate_detection(gt, preds, TIOU_PRESETS["anet"])
        stable = evaluate_detection(gt, preds, TIOU_PRESETS["anet"], ties="stable")
    assert round(official.average_mAP, 4) == 0.9745
    assert round(stable.average_mAP, 4) == 0.9774  # input order instead
    assert official.unmatched_video_predictions > 0  # predicted videos missing from BSN's list: false positives
