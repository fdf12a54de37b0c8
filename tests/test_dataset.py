"""tal.data: seconds <-> grid units, crops that keep actions, padding and masks, store joins, pseudo mixing."""

import dataclasses
import pickle
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from features.store import Grid
from tal.data.annotations import AnnotationSet, Segment, VideoAnnotation
from tal.data.collate import PadCollate
from tal.data.dataset import (DatasetError, FeatureDataset, StoreSet, build_records, crop_segments, crop_window,
                              inference_records)
from tal.data.grid import GridMap, grid_to_seconds, seconds_to_grid
from tal.data.sampling import MixingSampler, epoch_sampler
from test_train_support import make_benchmark


# --------------------------------------------------------------------------------------------- grid
def test_seconds_to_grid_matches_actionformer_formula():
    g = Grid(fps=30.0, window=16, stride=4)
    assert seconds_to_grid(2.0, g) == pytest.approx(2.0 * 30 / 4 - 0.5 * 16 / 4)  # 13.0
    # row i is the snippet centred at (i*stride + window/2)/fps
    assert np.allclose(seconds_to_grid(g.centers(50), g), np.arange(50))


def test_grid_round_trip_and_clamp():
    rng = np.random.default_rng(0)
    for _ in range(50):
        g = Grid(fps=float(rng.choice([24.0, 25.0, 29.97, 30.0])), window=int(rng.integers(1, 33)),
                 stride=int(rng.integers(1, 17)))
        duration = float(rng.uniform(5, 500))
        t = rng.uniform(0, duration, size=20)
        assert np.allclose(grid_to_seconds(seconds_to_grid(t, g), g, duration), t)
    # back-conversion is clamped to the video
    g = Grid(30.0, 16, 4)
    assert grid_to_seconds(-10.0, g, 12.0) == 0.0
    assert grid_to_seconds(1e6, g, 12.0) == 12.0


def test_resized_map_follows_linear_interpolation():
    """Interpolating a ramp of old row positions must land where GridMap.resized says."""
    g = GridMap.from_grid(Grid(30.0, 16, 4), duration=40.0)
    for old_len, new_len in [(300, 192), (100, 192), (192, 192), (37, 8)]:
        ramp = torch.arange(old_len, dtype=torch.float64)[None, None]
        resized = F.interpolate(ramp, size=new_len, mode="linear", align_corners=False)[0, 0].numpy()
        new = g.resized(old_len, new_len)
        j = np.arange(1, new_len - 1)  # interior rows (the edges clamp)
        assert np.allclose(resized[j], (j + 0.5) * old_len / new_len - 0.5)
        t = new.to_seconds(j.astype(float))
        assert np.allclose(g.to_grid(t), resized[j])


# --------------------------------------------------------------------------------------------- crops
def test_crop_window_keeps_a_whole_action_when_one_fits():
    rng = np.random.default_rng(1)
    for _ in range(500):
        t = int(rng.integers(20, 400))
        crop = int(rng.integers(8, t))
        n = int(rng.integers(1, 5))
        starts = rng.uniform(-2, t - 2, size=n)
        segs = np.stack([starts, starts + rng.uniform(0.5, t / 2, size=n)], 1)
        segs[:, 1] = np.minimum(segs[:, 1], t + 1)
        start = crop_window(t, segs, crop, rng)
        assert 0 <= start <= t - crop
        visible = np.clip(segs, 0, t)  # the part of each action inside the video
        fits = (np.ceil(visible[:, 1]) - np.floor(visible[:, 0]) <= crop) & (visible[:, 1] > visible[:, 0])
        if fits.any():
            inside = (visible[:, 0] >= start - 1e-9) & (visible[:, 1] <= start + crop + 1e-9)
            assert inside.any(), (t, crop, segs, start)


def test_crop_segments_clips_and_drops_mostly_cut_actions():
    segs = np.array([[2.0, 12.0], [18.0, 30.0], [40.0, 44.0]])
    labels, weights = np.array([0, 1, 2]), np.array([1.0, 0.5, 0.2], np.float32)
    out, lab, w = crop_segments(segs, labels, weights, start=10, length=25, keep_thresh=0.5)
    # [2,12] keeps 2/10 -> dropped; [18,30] whole -> kept shifted; [40,44] outside -> dropped
    assert np.allclose(out, [[8.0, 20.0]]) and lab.tolist() == [1] and w.tolist() == [0.5]


# --------------------------------------------------------------------------------------------- dataset
@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    return make_benchmark(root, n_videos=8, rows=(40, 200), subsets=("training", "validation"))


def test_training_items_cropped_padded_and_masked(bench):
    store, ann, aset = bench
    stores = StoreSet([store])
    records = build_records(stores, aset, source="t", mode="closed", classes=sorted(aset.classes))
    ds = FeatureDataset([store], records, training=True, max_seq_len=64)
    batch = PadCollate(32, min_len=64)([ds[i] for i in range(len(ds))])
    assert batch["feats"].shape == (len(ds), 32, 64)
    for b, n in enumerate(batch["lengths"].tolist()):
        assert n <= 64
        assert batch["masks"][b, :n].all() and not batch["masks"][b, n:].any()
        assert (batch["feats"][b, :, n:] == 0).all()
        segs = batch["segments"][b]
        assert len(segs) >= 1  # a crop keeps an action
        assert (segs[:, 0] >= 0).all() and (segs[:, 1] <= n).all()


def test_inference_items_keep_full_length_padded_to_stride(bench):
    store, _, _ = bench
    stores = StoreSet([store])
    records = inference_records(stores)
    ds = FeatureDataset([store], records, training=False, max_seq_len=64)
    items = [ds[i] for i in range(3)]
    lengths = [it["feats"].shape[1] for it in items]
    assert lengths == [r.num_rows for r in records[:3]]
    batch = PadCollate(32)(items)
    assert batch["feats"].shape[2] % 32 == 0 and batch["feats"].shape[2] >= max(lengths)
    assert batch["feats"].shape[2] - max(lengths) < 32
    assert batch["masks"].sum(1).tolist() == lengths
    rows = StoreSet([store])[0].read(records[0].video_id).astype(np.float32)
    assert torch.equal(items[0]["feats"], torch.from_numpy(rows.T))


def test_segments_converted_with_each_videos_grid(bench):
    store, _, aset = bench
    records = build_records(StoreSet([store]), aset, source="t", mode="closed", classes=sorted(aset.classes))
    ds = FeatureDataset([store], records, training=False, max_seq_len=64)
    item = ds[0]
    video = aset.videos[item["video_id"]]
    expected = [[s.start * 30 / 4 - 2, s.end * 30 / 4 - 2] for s in video.segments]
    assert np.allclose(item["segments"].numpy(), expected, atol=1e-4)
    labels = [sorted(aset.classes).index(s.label) for s in video.segments]
    assert item["labels"].tolist() == labels


def test_resize_mode_gives_fixed_length_and_adjusted_segments(bench):
    store, _, aset = bench
    records = build_records(StoreSet([store]), aset, source="t", mode="agnostic", classes=None)
    ds = FeatureDataset([store], records, training=True, max_seq_len=96, resize_len=96)
    for i in range(len(ds)):
        item, rec = ds[i], records[i]
        assert item["feats"].shape == (32, 96)
        expected = rec.grid.resized(rec.num_rows, 96).to_grid(rec.segments)
        assert np.allclose(item["segments"].numpy(), expected, atol=1e-4)
        assert item["labels"].tolist() == [0] * len(rec.segments)


def test_missing_videos_listed_or_skipped(bench):
    store, _, aset = bench
    extra = dict(aset.videos)
    for k in ("ghost_1", "ghost_2"):
        extra[k] = VideoAnnotation(k, "training", 10.0, 30.0, [Segment(1.0, 2.0, "jump")])
    bigger = AnnotationSet(extra)
    with pytest.raises(DatasetError, match=r"2 video\(s\) not in any store.*ghost_1, ghost_2.*--skip-missing"):
        build_records(StoreSet([store]), bigger, source="gt.json", mode="agnostic", classes=None)
    records = build_records(StoreSet([store]), bigger, source="gt.json", mode="agnostic", classes=None,
                            skip_missing=True)
    assert {r.video_id for r in records} == set(aset.videos)


def test_videos_join_across_several_stores(tmp_path):
    a, _, aset_a = make_benchmark(tmp_path, n_videos=3, name="a")
    b, _, aset_b = make_benchmark(tmp_path, n_videos=4, name="b", seed=3)
    both = AnnotationSet({**aset_a.videos, **aset_b.videos})
    records = build_records(StoreSet([a, b]), both, source="gt", mode="agnostic", classes=None)
    assert Counter(r.store for r in records) == {0: 3, 1: 4}


def test_a_video_in_two_stores_needs_identical_rows_or_a_preferred_store(tmp_path):
    from features.store.ops import convert

    a, _, aset = make_benchmark(tmp_path, n_videos=3, name="s")
    copy = tmp_path / "copy.h5"
    convert(a, copy)                                                   # the same rows, another backend
    other = tmp_path / "other"
    other.mkdir()
    b, _, _ = make_benchmark(other, n_videos=2, name="s", seed=9)     # the same ids s_000, s_001, other rows
    records = build_records(StoreSet([a, copy]), aset, source="gt", mode="agnostic", classes=None)
    assert [r.store for r in records] == [0, 0, 0]                    # identical copies: the first store
    with pytest.raises(DatasetError, match=r"gt: 2 video\(s\) are in several stores with different rows "
                                           rf"\({a} and {b}\): s_000, s_001; name the store .* --prefer-store"):
        build_records(StoreSet([a, b]), aset, source="gt", mode="agnostic", classes=None)
    preferred = build_records(StoreSet([a, b], prefer=b), aset, source="gt", mode="agnostic", classes=None)
    assert [r.store for r in preferred] == [1, 1, 0]                  # s_002 is only in a
    with pytest.raises(DatasetError, match="s_000"):
        inference_records(StoreSet([a, b]))                             # every video of the stores: same rule
    assert [r.store for r in inference_records(StoreSet([a, b], prefer=a))] == [0, 0, 0]
    with pytest.raises(DatasetError, match="--prefer-store .*nope.zarr: not one of the feature stores"):
        StoreSet([a, b], prefer=tmp_path / "nope.zarr")


def test_pseudo_labels_are_agnostic_and_weighted(bench):
    store, _, aset = bench
    pseudo = AnnotationSet({vid: VideoAnnotation(vid, "training", v.duration, v.fps,
                                                 [Segment(s.start, s.end, "action", score=0.25 + 0.5 * (i % 2),
                                                          pseudo=True) for i, s in enumerate(v.segments)])
                            for vid, v in aset.videos.items()})
    stores = StoreSet([store])
    by_score = build_records(stores, pseudo, source="pl", mode="agnostic", classes=None, pseudo=True)
    ones = build_records(stores, pseudo, source="pl", mode="agnostic", classes=None, pseudo=True, pseudo_weight="1")
    soft = build_records(stores, pseudo, source="pl", mode="agnostic", classes=None, pseudo=True, pseudo_weight="soft")
    for r, r1, rs in zip(by_score, ones, soft):
        assert r.pseudo and r.labels.tolist() == [0] * len(r.labels)
        assert np.allclose(r.weights, [0.25 + 0.5 * (i % 2) for i in range(len(r.weights))])
        assert np.all(r1.weights == 1.0)
        assert np.array_equal(rs.weights, r.weights)  # soft: the score, read by the loss as a probability
    # soft reads a score as a probability: one outside [0, 1] is an error naming the file and video
    first = next(iter(pseudo.videos.values()))
    first.segments[0] = dataclasses.replace(first.segments[0], score=1.5)
    with pytest.raises(DatasetError, match=rf"pl: video {first.video_id} has pseudo-label score\(s\) outside"):
        build_records(stores, pseudo, source="pl", mode="agnostic", classes=None, pseudo=True, pseudo_weight="soft")
    build_records(stores, pseudo, source="pl", mode="agnostic", classes=None, pseudo=True)  # score: a weight


def test_dataset_pickles_without_rows_and_reads_in_workers(bench):
    store, _, aset = bench
    records = build_records(StoreSet([store]), aset, source="t", mode="agnostic", classes=None)
    ds = FeatureDataset([store], records, training=True, max_seq_len=64)
    ds[0]  # opens the store in this process...
    state = pickle.dumps(ds)
    assert len(state) < 20_000  # ...but a worker gets only paths and metadata, never rows or open handles
    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=PadCollate(32, 64))
    seen = [vid for batch in loader for vid in batch["video_id"]]
    assert sorted(seen) == sorted(r.video_id for r in records)


# --------------------------------------------------------------------------------------------- sampling
def test_mixing_sampler_proportions_and_sharding():
    flags = [False] * 30 + [True] * 90  # natural proportion would be 75 % pseudo
    for ratio in (0.0, 0.25, 0.5, 1.0):
        s = MixingSampler(flags, ratio, seed=0)
        order = list(s)
        assert len(order) == 120
        assert sum(flags[i] for i in order) == round(ratio * 120)
        if ratio == 0.25:  # 30 pseudo of 90 drawn without repeats, 90 human = 3 full passes over 30
            assert len({i for i in order if flags[i]}) == 30
            assert Counter(i for i in order if not flags[i]) == {i: 3 for i in range(30)}
    shards = [list(MixingSampler(flags, 0.25, seed=4, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 60
    assert sorted(shards[0] + shards[1]) == sorted(MixingSampler(flags, 0.25, seed=4))
    s = MixingSampler(flags, 0.25, seed=4)
    s.set_epoch(1)
    assert list(s) != list(MixingSampler(flags, 0.25, seed=4))  # a new order every epoch


def test_fixed_epoch_size_keeps_compute_and_mix_whatever_the_pool():
    for n_pseudo in (40, 400):  # more unlabelled videos, same clips per epoch and same mix
        flags = [False] * 12 + [True] * n_pseudo
        order = list(epoch_sampler(flags, 0.75, seed=0, epoch_clips=52))
        assert len(order) == 52 and sum(flags[i] for i in order) == 39
        assert len({i for i in order if flags[i]}) == 39  # pseudo clips drawn without repeats while they last
    flags = [False] * 10 + [True] * 30
    natural = list(epoch_sampler(flags, None, seed=0, epoch_clips=20))  # size only: natural proportion
    assert len(natural) == 20 and sum(flags[i] for i in natural) == 15


def test_natural_proportion_sees_every_clip_once_per_epoch():
    flags = [False] * 7 + [True] * 13
    shards = [list(epoch_sampler(flags, None, seed=0, num_replicas=2, rank=r)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(20))
