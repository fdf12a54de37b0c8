"""OV-TAL protocols: shipped splits, split files, evaluation modes, split generation and the lemmatiser."""

import json
import warnings

import numpy as np
import pytest

from tal.data.annotations import AnnotationSet, Segment, VideoAnnotation, load_annotations
from tal.eval.detection import EvaluationWarning, evaluate_detection
from tal.eval.lemma import lemmas, lemmatize_word, split_words
from tal.eval.predictions import Detection
from tal.eval.protocols import (Split, SplitError, evaluate_protocol, load_split, load_splits, read_split_file,
                                summarize_splits, write_split_file)
from tal.eval.splitgen import cross_dataset_split, kinetics400_classes, kinetics_split, random_split


@pytest.mark.parametrize("dataset, ratio, sizes", [("thumos14", 75, (15, 5)), ("thumos14", 50, (10, 10)),
                                                   ("anet", 75, (150, 50)), ("anet", 50, (100, 100))])
def test_shipped_splits_are_partitions(dataset, ratio, sizes):
    splits = load_splits(f"{dataset}:{ratio}:all")
    assert len(splits) == 10
    full = set(splits[0].all)
    for s in splits:
        assert (len(s.base), len(s.novel)) == sizes
        assert set(s.all) == full and not set(s.base) & set(s.novel)
    assert len({tuple(s.novel) for s in splits}) > 1  # the ten splits differ


def test_shipped_splits_match_real_class_names(shared_data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        thumos = load_annotations(shared_data / "DETAD" / "thumos14_test_extra_characteristics.json")
    names = (shared_data / "BSN-boundary-sensitive-network" / "action_name.csv").read_text().split("\n")[1:]
    assert set(load_split("thumos14:75:0").all) == set(thumos.classes)
    assert set(load_split("anet:50:3").all) == {n.strip() for n in names if n.strip()}
    # The shipped copy equals the source lists.
    src = shared_data / "Efficient-Prompt" / "open_set_action_localisation" / "train75_test25" / "THUMOS14"
    assert load_split("th14:75:4").novel == (src / "test" / "split_4.list").read_text().split()


def test_split_specs_and_errors(tmp_path):
    assert [s.name for s in load_splits("anet:75:2-4")] == ["anet:75:2", "anet:75:3", "anet:75:4"]
    for bad, pattern in [("thumos14:60:0", "ratio"), ("ucf:75:0", "unknown dataset"), ("thumos14:75:10", "range"),
                         ("nonsense", "not a file"), ("thumos14:75:0-2", None)]:
        with pytest.raises(SplitError, match=pattern):
            load_split(bad)


def test_split_files_roundtrip_and_errors(tmp_path):
    split = Split("mine", ["a b", "c"], ["d"])
    for name in ("s.json", "s.txt"):
        write_split_file(split, tmp_path / name)
        back = read_split_file(tmp_path / name)
        assert (back.base, back.novel) == (split.base, split.novel)
        assert load_split(str(tmp_path / name)).novel == ["d"]
    bad = tmp_path / "bad.txt"
    bad.write_text("[base]\nx\n[novel]\nx\n")
    with pytest.raises(SplitError, match="both base and novel: x"):
        read_split_file(bad)
    bad.write_text("x\n[novel]\ny\n")
    with pytest.raises(SplitError, match="line 1: class name before"):
        read_split_file(bad)
    bad.write_text('{"base": ["x"], "novel": 3}')
    with pytest.raises(SplitError, match="'novel' must be a list"):
        read_split_file(bad)
    bad.write_text('{"base": ["x"],, }')
    with pytest.raises(SplitError, match="invalid JSON at line 1 column 16"):
        read_split_file(bad)


def _toy():
    gt = AnnotationSet({
        "v1": VideoAnnotation("v1", "testing", 60, None, [Segment(0, 10, "base1"), Segment(20, 30, "novel1")]),
        "v2": VideoAnnotation("v2", "testing", 60, None, [Segment(5, 15, "novel2"), Segment(30, 40, "base1")]),
    })
    preds = {"v1": [Detection("base1", 0.9, 0, 10), Detection("novel1", 0.8, 20, 30), Detection("novel2", 0.7, 40, 50)],
             "v2": [Detection("novel2", 0.6, 5, 15), Detection("base1", 0.5, 50, 55)]}
    return gt, preds, Split("toy", ["base1"], ["novel1", "novel2"])


def test_generalized_mode_reports_all_base_novel():
    gt, preds, split = _toy()
    out = evaluate_protocol(gt, preds, split, "generalized", [0.5])
    # base1: TP, FP -> recall .5 at precision 1 -> AP .5.  novel1: AP 1.  novel2: FP then TP -> AP .5.
    assert out["base"]["mAP"] == [pytest.approx(0.5)]
    assert out["novel"]["mAP"] == [pytest.approx(0.75)]
    assert out["all"]["mAP"] == [pytest.approx((0.5 + 1 + 0.5) / 3)]
    assert out["mAP"] == out["all"]["mAP"] and out["all"]["num_classes"] == 3
    direct = evaluate_detection(gt, preds, [0.5])
    assert out["all"]["average_mAP"] == pytest.approx(direct.average_mAP)
    json.dumps(out)


def test_novel_mode_uses_novel_vocabulary_only():
    gt, preds, split = _toy()
    with pytest.warns(EvaluationWarning, match="ignored 2"):
        out = evaluate_protocol(gt, preds, split, "novel", [0.5], breakdown_bins="thumos")
    assert set(out) >= {"novel", "mAP", "average_mAP", "per_class", "breakdown"} and "base" not in out
    assert out["ignored_predictions"] == 2
    assert set(out["per_class"]) == {"novel1", "novel2"}
    assert out["mAP"] == [pytest.approx(0.75)]


def test_protocol_errors():
    gt, preds, _ = _toy()
    with pytest.raises(SplitError, match="none of its classes"):
        evaluate_protocol(gt, preds, Split("x", ["p"], ["q"]), "novel", [0.5])
    with pytest.raises(SplitError, match="unknown mode"):
        evaluate_protocol(gt, preds, Split("x", ["base1"], ["novel1"]), "zero", [0.5])


def test_summary_mean_and_sample_std():
    runs = [{"split": "a", "tiou_thresholds": [0.5], "novel": {"mAP": [0.2], "average_mAP": 0.2}},
            {"split": "b", "tiou_thresholds": [0.5], "novel": {"mAP": [0.4], "average_mAP": 0.4}}]
    s = summarize_splits(runs)
    assert s["novel"]["average_mAP"]["mean"] == pytest.approx(0.3)
    assert s["novel"]["average_mAP"]["std"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert "base" not in s and s["splits"] == ["a", "b"]


def test_random_split_seeded_and_sized():
    classes = [f"c{i}" for i in range(20)]
    a, b, c = random_split(classes, 0.25, 0), random_split(classes, 0.25, 0), random_split(classes, 0.25, 1)
    assert a == b and a.novel != c.novel
    assert len(a.novel) == 5 and set(a.all) == set(classes)
    with pytest.raises(SplitError):
        random_split(classes, 1.0, 0)


@pytest.mark.parametrize("word, lemma", [("running", "run"), ("mopping", "mop"), ("making", "make"),
                                         ("diving", "dive"), ("juggling", "juggle"), ("dunking", "dunk"),
                                         ("leaves", "leaf"), ("crunches", "crunch"), ("puppies", "puppy"),
                                         ("billiards", "billiard"), ("dress", "dress"), ("skiing", "ski")])
def test_lemmatize_word(word, lemma):
    assert lemmatize_word(word) == lemma


def test_lemmas_of_class_names():
    assert split_words("CleanAndJerk") == ["clean", "and", "jerk"]
    assert lemmas("BasketballDunk") == lemmas("dunking basketball") == {"basketball", "dunk"}
    assert lemmas("Playing kickball") == lemmas("playing kickball") == {"kickball"}
    assert lemmas("skiing (not slalom or crosscountry)") == {"ski"}


def test_kinetics_split_on_real_thumos(shared_data):
    k400 = kinetics400_classes()
    assert len(k400) == 400 and "dunking basketball" in k400
    classes = load_split("thumos14:50:0").all
    split, matched = kinetics_split(classes, k400)
    assert matched["BasketballDunk"] == "dunking basketball" and matched["Shotput"] == "shot put"
    assert {"CliffDiving", "HighJump", "PoleVault"} <= set(split.base)
    assert {"CricketShot", "BaseballPitch", "GolfSwing"} <= set(split.novel)
    assert sorted(split.all) == sorted(classes)


def test_cross_dataset_split():
    split, matched = cross_dataset_split(["High jump", "Long jump", "Archery"], ["HighJump", "LongJump", "Diving"])
    assert split.base == ["HighJump", "LongJump"] and split.novel == ["Diving"]
