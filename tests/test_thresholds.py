"""Pseudo-label thresholds from held-out evidence (tal.thresholds) and the cross-fitting folds (tal.crossfit)."""

import numpy as np
import pytest

from tal.crossfit import class_folds, fold_assignment
from tal.thresholds import (ScoreSample, ThresholdError, ThresholdRule, choose_thresholds, local_precision,
                            match_proposals, operating_point, threshold_for_local_precision, threshold_for_precision,
                            threshold_for_recall)


def synthetic_sample(seed: int, warp=lambda s: s, n: int = 4000, share_true: float = 0.3) -> ScoreSample:
    """Held-out proposals whose true ones score higher on average; ``warp`` re-maps every score monotonically,
    as a model whose scores are inflated (or deflated) against the same evidence would."""
    rng = np.random.default_rng(seed)
    hits = rng.random(n) < share_true
    scores = np.where(hits, rng.beta(5, 2, n), rng.beta(2, 5, n))
    return ScoreSample(warp(scores), hits, int(hits.sum() * 1.2))


@pytest.mark.parametrize("precision_of", ["local", "kept"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inflated_scores_get_a_higher_threshold_and_deflated_ones_a_lower(seed, precision_of):
    rule = ThresholdRule(precision=0.7, recall=0.9, precision_of=precision_of)
    plain = choose_thresholds(synthetic_sample(seed), rule)
    inflated = choose_thresholds(synthetic_sample(seed, lambda s: np.sqrt(s)), rule)
    deflated = choose_thresholds(synthetic_sample(seed, lambda s: s ** 2), rule)
    assert deflated["threshold"] < plain["threshold"] < inflated["threshold"]
    assert deflated["ignore_threshold"] < plain["ignore_threshold"] < inflated["ignore_threshold"]
    # a monotone re-mapping keeps the ranking: the same proposals are kept at the same precision and recall
    for other in (inflated, deflated):
        assert other["at_threshold"]["proposals"] == plain["at_threshold"]["proposals"]
        assert other["at_threshold"]["precision"] == pytest.approx(plain["at_threshold"]["precision"])
        assert other["at_ignore_threshold"]["recall"] == pytest.approx(plain["at_ignore_threshold"]["recall"])


def test_threshold_is_the_lowest_score_reaching_the_precision_and_recall_the_highest():
    # ranked: hit, hit, miss, hit, miss, miss, hit, miss; 5 instances
    sample = ScoreSample(np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]),
                         np.array([1, 1, 0, 1, 0, 0, 1, 0], bool), 5)
    # precision at each cut-off: 1, 1, .67, .75, .6, .5, .57, .5
    assert threshold_for_precision(sample, 0.75) == 0.6
    assert threshold_for_precision(sample, 0.55) == 0.3
    assert threshold_for_precision(sample, 1.0) == 0.8
    # recall at each cut-off: .2 .4 .4 .6 .6 .6 .8 .8
    assert threshold_for_recall(sample, 0.6) == 0.6
    assert threshold_for_recall(sample, 0.8) == 0.3
    assert threshold_for_recall(sample, 0.9) == 0.2  # never reached: every proposal is kept
    assert operating_point(sample, 0.6) == {"threshold": 0.6, "proposals": 4, "precision": 0.75, "recall": 0.6,
                                            "local_precision": 0.5}


def test_local_precision_is_the_isotonic_fit_of_hit_on_score():
    # ascending: 0.2 miss, 0.3 hit, 0.4 miss, 0.5 miss, 0.6 hit, 0.7 miss, 0.8 hit, 0.9 hit
    sample = ScoreSample(np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]),
                         np.array([1, 1, 0, 1, 0, 0, 1, 0], bool), 5)
    values, fit = local_precision(sample)
    assert values.tolist() == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    # violators pooled: {0.3, 0.4, 0.5} -> 1/3, {0.6, 0.7} -> 1/2
    assert fit == pytest.approx([0, 1 / 3, 1 / 3, 1 / 3, 0.5, 0.5, 1, 1])
    assert threshold_for_local_precision(sample, 0.5) == 0.6  # the kept set's precision allows 0.3 here
    assert threshold_for_precision(sample, 0.5) == 0.2
    assert threshold_for_local_precision(sample, 0.3) == 0.3
    assert threshold_for_local_precision(sample, 1.0) == 0.8
    # tied scores are one point of the fit: kept or dropped together
    ties = ScoreSample(np.array([0.9, 0.5, 0.5, 0.1]), np.array([0, 1, 0, 1], bool), 2)
    assert local_precision(ties)[1] == pytest.approx([0.5, 0.5, 0.5])
    assert threshold_for_local_precision(ties, 0.5) == 0.1
    assert threshold_for_local_precision(ties, 0.6) == 0.9  # never reached: the best score (top-1 fallback)
    choice = choose_thresholds(ties, ThresholdRule(precision=0.6, recall=None, precision_of="local"))
    assert not choice["precision_reached"] and choice["threshold"] == 0.9


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_local_precision_stops_where_recall_is_saturated_and_the_kept_rule_does_not(seed):
    """A stage 1 that already finds nearly every held-out instance with high scores, over a long tail of low-scoring
    false proposals (the shape where the kept set's precision keeps lowering τ through proposals that are
    mostly wrong, while recall barely moves)."""
    rng = np.random.default_rng(seed)
    true, false = rng.beta(8, 2, 1000), rng.beta(1, 6, 5000)
    sample = ScoreSample(np.concatenate([true, false]), np.arange(6000) < 1000, 1050)
    kept = choose_thresholds(sample, ThresholdRule(precision=0.5, recall=None, precision_of="kept"))
    local = choose_thresholds(sample, ThresholdRule(precision=0.5, recall=None, precision_of="local"))
    assert local["threshold"] > kept["threshold"]
    assert kept["at_threshold"]["local_precision"] < 0.2  # the kept rule's last proposals are mostly wrong
    assert local["at_threshold"]["local_precision"] >= 0.5 and local["precision_reached"]
    # half the proposals, nearly all of them right, for a few points of recall
    assert local["at_threshold"]["proposals"] < 0.6 * kept["at_threshold"]["proposals"]
    assert local["at_threshold"]["precision"] > kept["at_threshold"]["precision"] + 0.3
    assert local["at_threshold"]["recall"] > kept["at_threshold"]["recall"] - 0.06


def test_ties_are_kept_or_dropped_together_and_unreachable_precision_keeps_the_top():
    sample = ScoreSample(np.array([0.9, 0.5, 0.5, 0.1]), np.array([0, 1, 0, 1], bool), 2)
    assert threshold_for_precision(sample, 0.5) == 0.1  # 0.5 is not a cut between the tied proposals
    assert threshold_for_precision(sample, 0.99) == 0.9
    choice = choose_thresholds(sample, ThresholdRule(precision=0.99, recall=None))
    assert not choice["precision_reached"] and "ignore_threshold" not in choice


def test_match_proposals_is_greedy_by_score_with_each_instance_taken_once():
    instances = {"a": [[0.0, 10.0], [20.0, 30.0]], "b": []}
    proposals = {"a": (np.array([[1.0, 10.0], [0.0, 9.0], [21.0, 25.0], [50.0, 60.0]]), np.array([0.5, 0.9, 0.7, 0.8])),
                 "b": (np.array([[0.0, 5.0]]), np.array([0.6]))}
    sample = match_proposals(instances, proposals, alpha=0.5)
    assert sample.num_instances == 2
    got = sorted(zip(sample.scores.tolist(), sample.hits.tolist()))
    # 0.9 takes [0, 10]; 0.5 overlaps it too but it is taken; [21, 25] has tIoU 0.4 with [20, 30]
    assert got == [(0.5, False), (0.6, False), (0.7, False), (0.8, False), (0.9, True)]


def test_bad_rules_and_empty_evidence_are_one_line_errors():
    with pytest.raises(ThresholdError, match="precision"):
        ThresholdRule(precision=0.0)
    with pytest.raises(ThresholdError, match="folds"):
        ThresholdRule(folds=1)
    with pytest.raises(ThresholdError, match="precision_of"):
        ThresholdRule(precision_of="all")
    with pytest.raises(ThresholdError, match="hold no instances"):
        choose_thresholds(ScoreSample(np.zeros(0), np.zeros(0, bool), 0), ThresholdRule())


def test_folds_partition_the_videos_and_depend_on_the_seed():
    ids = [f"v{i}" for i in range(11)]
    folds = fold_assignment(ids, 3, seed=0)
    assert sorted(v for f in folds for v in f) == sorted(ids) and [len(f) for f in folds] == [4, 4, 3]
    assert fold_assignment(ids, 3, seed=0) == folds and fold_assignment(ids, 3, seed=1) != folds
    with pytest.raises(ThresholdError, match="at least 3"):
        fold_assignment(ids[:2], 3, seed=0)


def test_class_folds_hold_each_class_out_once_with_the_videos_that_show_it():
    from tal.data.annotations import AnnotationSet, Segment, VideoAnnotation

    labels = {"a": ["jump"], "b": ["throw"], "c": ["swim", "jump"], "d": ["climb"], "e": ["swim"], "f": ["throw"]}
    labelled = AnnotationSet({vid: VideoAnnotation(vid, "training", 10.0, 30.0,
                                                   [Segment(i, i + 1.0, c) for i, c in enumerate(cs)])
                              for vid, cs in labels.items()})
    folds = class_folds(labelled, 2, seed=0)
    assert sorted(c for held, _, _ in folds for c in held) == ["climb", "jump", "swim", "throw"]
    for held, train_ids, heldout in folds:
        assert sorted(train_ids + heldout) == sorted(labels)
        assert all(not set(labels[v]) & set(held) for v in train_ids)  # never trained on a held-out class
        assert all(set(labels[v]) & set(held) for v in heldout)
    assert class_folds(labelled, 2, seed=0) == folds
    with pytest.raises(ThresholdError, match="at least 5 labelled classes, got 4"):
        class_folds(labelled, 5, seed=0)
