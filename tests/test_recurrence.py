"""tal.recurrence: a second ranking of unlabelled proposals by how their content recurs across other videos."""

import json

import numpy as np
import pytest

from test_pseudo import TINY_CLASSES, tiny_world

from tal.recurrence import (RecurrenceConfig, combined_order, percentile, recurrence, rerank_candidates,
                            segment_contents, transplant, whiten)


def _auc(pos, neg):
    """P(a positive outranks a negative)."""
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def test_percentile_shares_ties_and_transplant_keeps_the_scores():
    assert percentile(np.array([0.3, 0.1, 0.3, 0.9])).tolist() == pytest.approx([0.625, 0.25, 0.625, 1.0])
    scores = np.array([0.9, 0.05, 0.4, 0.2, 0.6])
    recur = np.array([0.0, 0.9, 0.8, 0.1, 0.5])
    order = combined_order(scores, recur)
    # geometric means of the percentiles: 0.6 (80 % / 60 %) ties 0.4 (60 % / 80 %), the higher score first;
    # then 0.9 (100 % / 20 %) ties 0.05 (20 % / 100 %); 0.2 (40 % / 40 %) last
    assert order.tolist() == [4, 2, 0, 1, 3]
    new = transplant(scores, order)
    assert sorted(new) == sorted(scores)  # the same scores: counts above any τ are unchanged
    assert new[order].tolist() == sorted(scores, reverse=True)


def test_the_recurrence_weight_moves_the_order_from_the_score_to_the_recurrence():
    from tal.pseudo import PseudoLabelError

    scores = np.array([0.9, 0.05, 0.4, 0.2, 0.6])
    recur = np.array([0.0, 0.9, 0.8, 0.1, 0.5])
    assert combined_order(scores, recur, 0.0).tolist() == [0, 4, 2, 3, 1]  # the score alone
    assert combined_order(scores, recur, 1.0).tolist() == [1, 2, 4, 3, 0]  # the recurrence alone
    # 0.8: 0.4 (60 % / 80 %) before 0.6 (80 % / 60 %), which tie at 0.5; 0.05 (20 % / 100 %) passes both 0.6
    # and 0.2, and 0.9 (100 % / 20 %), second at 0.5, falls to the end
    assert combined_order(scores, recur, 0.8).tolist() == [2, 1, 4, 3, 0]
    assert combined_order(scores, recur, 0.5).tolist() == combined_order(scores, recur).tolist() == [4, 2, 0, 1, 3]
    for bad in (-0.1, 1.5):
        with pytest.raises(PseudoLabelError, match=f"weight in the ranking must lie in \\[0, 1\\], got {bad}"):
            RecurrenceConfig(weight=bad)


def test_the_automatic_weight_leans_on_the_recurrence_where_unseen_classes_are_missed():
    from tal.recurrence import EQUAL_WEIGHT, RECURRENCE_HEAVY, UNSEEN_RATIO, choose_weight

    missed = choose_weight(0.1, 0.5)  # held-out classes found a fifth as well as trained ones
    assert missed["weight"] == RECURRENCE_HEAVY == 0.8 and missed["ratio"] == pytest.approx(0.2)
    assert choose_weight(0.5, 0.5)["weight"] == choose_weight(0.31, 0.5)["weight"] == EQUAL_WEIGHT == 0.5
    assert choose_weight(UNSEEN_RATIO * 0.5, 0.5)["weight"] == RECURRENCE_HEAVY  # the limit itself leans
    nothing = choose_weight(0.0, 0.0)  # the recipe finds nothing even of its own classes: no evidence either way
    assert nothing["weight"] == EQUAL_WEIGHT and nothing["ratio"] is None


def test_a_check_whose_fold_models_find_little_of_their_own_classes_is_weak():
    from tal.recurrence import WEAK_CHECK_AP, weak_check, weak_check_text

    assert weak_check(0.055) and weak_check(WEAK_CHECK_AP - 1e-6)  # 30 labelled videos: fold models near chance
    assert not weak_check(WEAK_CHECK_AP) and not weak_check(0.29) and not weak_check(None)  # None: no check ran
    assert "held-out videos' AP 0.055, below 0.2" in weak_check_text(0.055)
    assert "--recurrence-weight, --rounds and --label-passes" in weak_check_text(0.055)


def test_segment_contents_is_what_a_segment_adds_to_its_surroundings():
    rng = np.random.default_rng(0)
    base = rng.normal(size=16)
    rows = np.tile(base, (40, 1)) + 0.01 * rng.normal(size=(40, 16))
    added = rng.normal(size=16)
    rows[10:20] += added
    (c,) = segment_contents(rows, np.array([[10.0, 19.0]]))  # rows 10..19 (the end row included)
    assert np.corrcoef(c, added)[0, 1] > 0.99 and np.linalg.norm(c) == pytest.approx(np.linalg.norm(added), rel=0.05)
    # a segment as long as the video has no surroundings: the video's mean is subtracted
    whole = segment_contents(rows, np.array([[0.0, 39.0]]))
    assert np.abs(whole).max() < 1e-9


def _contents(rng, n_videos=40, dim=64, classes=3):
    """Per video one action of a recurring class and one look-alike of a look of its own; every segment also
    carries a strong direction shared by all in random amounts (what whitening is for)."""
    protos = rng.normal(size=(classes, dim))
    shared = rng.normal(size=(4, dim)) * 6
    rows, owner, is_action = [], [], []
    for v in range(n_videos):
        for action in (True, False):
            content = protos[v % classes] if action else rng.normal(size=dim)
            rows.append(content + rng.normal(size=4) @ shared + 0.5 * rng.normal(size=dim))
            owner.append(v)
            is_action.append(action)
    return np.array(rows), np.array(owner), np.array(is_action)


def test_recurring_contents_rank_above_unique_ones_once_whitened():
    contents, owner, is_action = _contents(np.random.default_rng(1))
    cfg = RecurrenceConfig(k=5, dims=32)
    recur = recurrence(whiten(contents, cfg), owner, cfg)
    assert _auc(recur[is_action], recur[~is_action]) > 0.95
    # on the raw contents the shared directions dominate the cosine
    raw = contents / np.linalg.norm(contents, axis=1, keepdims=True)
    unwhitened = recurrence(raw.astype(np.float32), owner, cfg)
    assert _auc(unwhitened[is_action], unwhitened[~is_action]) < 0.8


def test_neighbours_come_from_other_videos_only():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(30, 8))
    z[:10] = z[0]  # ten copies of one content, all in video 0
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    owner = np.r_[np.zeros(10, int), np.arange(1, 21)]
    recur = recurrence(z.astype(np.float32), owner, RecurrenceConfig(k=3, chunk=7))
    assert recur[:10].max() < 0.99  # its own copies do not count
    owner[1] = 1  # one copy in another video: now it has a perfect neighbour (k = 1)
    recur = recurrence(z.astype(np.float32), owner, RecurrenceConfig(k=1))
    assert recur[0] == pytest.approx(1.0, abs=1e-5)


def _store_with_proposals(root, recurring: str, action_scores, other_scores, n=30, seed=5):
    """A real store of ``n`` videos, each with an action (rows 10-19) and a look-alike (rows 35-44); the
    ``recurring`` kind ("actions" or "look-alikes") shares a class direction across videos, the other has a
    look of its own per video. Returns (truth: the actions, candidates: both, scored as given, plus an ignore
    region of score 0.02)."""
    from features.store import Grid, VideoInfo, create_store
    from tal.data.annotations import AnnotationSet, Segment, VideoAnnotation

    world = tiny_world(dim=32)
    rng = np.random.default_rng(seed)
    grid = Grid(fps=30.0, window=16, stride=4, frame_step=4)
    prov = {"encoder": "simulated", "pretrained": "random", "image_size": 0, "preprocess": "none",
            "normalise": "l2", "fps": 30.0, "window": 16, "stride": 4, "frame_step": 4}
    store = create_store(root / "web.zarr", dim=32, provenance=prov, dtype="float16")
    truth, cands, pending = {}, {}, []
    duration = (59 * 4 + 16) / 30.0
    sec = lambda r: (r * 4 + 8) / 30.0  # noqa: E731 row centre in seconds
    for i in range(n):
        vid = f"w{i:03d}"
        x = rng.normal(scale=0.3, size=(60, 32)) + rng.normal(size=32)
        shared = world["action"] + world["protos"][i % len(TINY_CLASSES)]
        own = 2.8 * rng.normal(size=32) / np.sqrt(32)
        x[10:20] += shared if recurring == "actions" else own
        x[35:45] += own if recurring == "actions" else shared
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        pending.append((vid, x.astype(np.float32), VideoInfo(60, 30.0, duration, -1, grid)))
        action, other = (sec(10), sec(19)), (sec(35), sec(44))
        truth[vid] = VideoAnnotation(vid, "training", duration, 30.0, [Segment(*action, "action")])
        cands[vid] = VideoAnnotation(vid, "training", duration, 30.0,
                                     [Segment(*action, "action", float(rng.uniform(*action_scores)), True),
                                      Segment(*other, "action", float(rng.uniform(*other_scores)), True)],
                                     [(sec(50), sec(55), 0.02)])
    store.write_videos(pending)
    store.close()
    return AnnotationSet(truth), AnnotationSet(cands)


def test_rerank_gives_the_high_scores_to_recurring_segments_of_a_real_store(tmp_path):
    """Actions (the tiny world's action + class direction) scored low, look-alikes (a look of their own) high:
    re-ranked, the actions hold the high scores; the file keeps every candidate and the same scores."""
    from tal.data.annotations import load_annotations, write_official

    _, videos = _store_with_proposals(tmp_path, "actions", (0.1, 0.3), (0.6, 0.9))
    write_official(videos, tmp_path / "cands.json")
    done = rerank_candidates(tmp_path / "cands.json", tmp_path / "web.zarr", tmp_path / "ranked.json",
                             RecurrenceConfig(k=5, dims=16), progress=False)
    ranked = load_annotations(tmp_path / "ranked.json")
    assert done["candidates"] == 90 and done["videos"] == 30 and done["weight"] == 0.5
    assert json.loads((tmp_path / "ranked.json").read_text())["provenance"]["rerank"] == done
    before = sorted(s.score for v in videos.videos.values() for s in v.segments) + [0.02] * 30
    assert sorted(s.score for v in ranked.videos.values() for s in v.segments) == pytest.approx(sorted(before))
    action_scores = np.array([v.segments[0].score for v in ranked.videos.values()])
    other_scores = np.array([s.score for v in ranked.videos.values() for s in v.segments[1:]])
    assert all(not v.ignore for v in ranked.videos.values())  # ignore regions are candidates like the rest
    # before: every action below every look-alike (AUC 0); the geometric mean of the two percentiles lifts a
    # low-scored action that recurs above a high-scored look-alike that does not
    assert _auc(action_scores, other_scores) > 0.8
    top = np.sort(np.r_[action_scores, other_scores])[-30]  # the 30 highest scores: the look-alikes' before
    assert (action_scores >= top).sum() > 15


def test_rerank_streams_the_store_twice_and_equals_whitening_all_contents_in_memory(tmp_path):
    """The re-ranking holds only the whitened contents (two passes over the rows: the centre and the fitting
    sample, then the projection); with a fitting sample smaller than the proposals it ranks as whitening the
    whole [N, D] contents in memory does."""
    from features.store import open_store
    from tal.data.annotations import write_official
    from tal.data.grid import seconds_to_grid
    from tal.pseudo import video_candidates
    from tal.recurrence import rerank_set

    _, videos = _store_with_proposals(tmp_path, "actions", (0.1, 0.6), (0.3, 0.9))
    cfg = RecurrenceConfig(k=5, dims=16, fit=40)
    ranked, done = rerank_set(videos, tmp_path / "web.zarr", cfg, progress=False)
    cands = [video_candidates(v) for v in videos.videos.values()]
    with open_store(tmp_path / "web.zarr", "r") as st:
        contents = np.concatenate([segment_contents(st.read(vid).astype(np.float32),
                                                    seconds_to_grid(c[:, :2], st.info(vid).grid))
                                   for vid, c in zip(videos.videos, cands)])
    owner = np.concatenate([np.full(len(c), i) for i, c in enumerate(cands)])
    scores = np.concatenate([c[:, 2] for c in cands])
    expected = transplant(scores, combined_order(scores, recurrence(whiten(contents, cfg), owner, cfg)))
    got = np.array([s.score for v in ranked.videos.values() for s in v.segments])
    assert done["candidates"] == 90 > cfg.fit and got == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("recurring, expected", [("actions", "recurrence"), ("look-alikes", "score")])
def test_the_held_out_choice_re_ranks_only_where_it_ranks_better(tmp_path, recurring, expected):
    """Overlapping score ranges; where the actions recur, re-ranking raises the held-out AP and is chosen; where
    the look-alikes recur instead, it lowers it and the score's order stays."""
    from tal.recurrence import choose_rerank

    truth, proposals = _store_with_proposals(tmp_path, recurring, (0.3, 0.8), (0.2, 0.7))
    choice = choose_rerank(truth, proposals, [tmp_path / "web.zarr"], RecurrenceConfig(k=5, dims=16),
                           progress=False)
    ap = choice["heldout_ap"]
    assert choice["chosen"] == expected and choice["heldout_videos"] == 30 and choice["heldout_proposals"] == 90
    assert (ap["recurrence"] > ap["score"]) == (expected == "recurrence") and abs(ap["recurrence"] - ap["score"]) > 0.05


def test_too_few_proposals_and_videos_missing_from_the_store_are_one_line_errors(tmp_path):
    from tal.data.annotations import AnnotationSet, Segment, VideoAnnotation, write_official
    from tal.pseudo import PseudoLabelError

    from test_pseudo import make_tiny_store

    make_tiny_store(tmp_path / "web.zarr", tiny_world(), 2, TINY_CLASSES, seed=0)
    one = {"v000000": VideoAnnotation("v000000", "training", 5.0, 30.0, [Segment(0.5, 1.5, "action", 0.5, True)])}
    write_official(AnnotationSet(one), tmp_path / "one.json")
    with pytest.raises(PseudoLabelError, match="one.json: recurrence needs proposals in at least two videos"):
        rerank_candidates(tmp_path / "one.json", tmp_path / "web.zarr", tmp_path / "out.json", progress=False)
    nope = VideoAnnotation("nope", "training", 5.0, 30.0, one["v000000"].segments)
    write_official(AnnotationSet({**one, "nope": nope}), tmp_path / "two.json")
    with pytest.raises(PseudoLabelError, match="two.json: video nope is in none of the stores"):
        rerank_candidates(tmp_path / "two.json", tmp_path / "web.zarr", tmp_path / "out.json", progress=False)
    assert not (tmp_path / "out.json").exists()
