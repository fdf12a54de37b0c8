"""Pseudo-label filtering on hand cases, the resumable shard writer and the streamed merge."""

import json
import tracemalloc

import numpy as np
import pytest

from features.shards import ShardError, parse_shard, shard_slice
from tal.pseudo import (FilterConfig, FilterResult, PseudoLabelError, ShardWriter, filter_proposals, merge_parts,
                        parts_dir_for)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The models here are tiny: one thread avoids thread-pool overhead (and stalls on a shared 2-core box)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _filter(segs, scores, duration=100.0, **kw):
    return filter_proposals(np.array(segs, float), np.array(scores, float), duration, FilterConfig(**kw))


# ------------------------------------------------------------------------------------------ filtering
def test_threshold_keeps_scores_at_or_above_tau_sorted():
    r = _filter([[0, 10], [20, 30], [40, 50], [60, 70]], [0.04, 0.05, 0.5, 0.2], threshold=0.05)
    assert r.scores.tolist() == [0.5, 0.2, 0.05]
    assert r.segments.tolist() == [[40, 50], [60, 70], [20, 30]]
    assert not r.fell_back


def test_top1_fallback_when_threshold_keeps_nothing():
    r = _filter([[0, 10], [20, 30], [40, 50]], [0.01, 0.03, 0.02], threshold=0.4)
    assert r.fell_back
    assert r.segments.tolist() == [[20, 30]] and r.scores.tolist() == [0.03]


def test_no_proposals_gives_empty_without_fallback():
    r = _filter(np.zeros((0, 2)), np.zeros(0), threshold=0.4)
    assert len(r.segments) == 0 and not r.fell_back


def test_clipping_to_video_bounds_and_dropping_outside():
    r = _filter([[-5, 10], [95, 120], [130, 140]], [0.9, 0.8, 0.7], duration=100.0, threshold=0.0)
    assert r.segments.tolist() == [[0, 10], [95, 100]]  # the segment wholly past the end vanishes


def test_dedup_removes_lower_scored_overlaps_only():
    # [0,10] vs [1,10]: tIoU 0.9 → dropped; [0,10] vs [5,15]: tIoU 1/3 → kept at dedup 0.5.
    segs = [[0, 10], [1, 10], [5, 15], [50, 60]]
    r = _filter(segs, [0.9, 0.8, 0.7, 0.6], threshold=0.0, dedup_iou=0.5)
    assert r.segments.tolist() == [[0, 10], [5, 15], [50, 60]]
    r = _filter(segs, [0.9, 0.8, 0.7, 0.6], threshold=0.0, dedup_iou=0.3)
    assert r.segments.tolist() == [[0, 10], [50, 60]]
    r = _filter(segs, [0.9, 0.8, 0.7, 0.6], threshold=0.0, dedup_iou=None)
    assert len(r.segments) == 4


def test_dedup_is_greedy_a_dropped_segment_does_not_suppress_others():
    # B overlaps A (dropped); C overlaps B but not A → C must stay.
    # tIoU(A,B) = tIoU(B,C) = 7/13 ≥ 0.5, tIoU(A,C) = 0.25.
    segs = [[0, 10], [3, 13], [6, 16]]
    r = _filter(segs, [0.9, 0.8, 0.7], threshold=0.0, dedup_iou=0.5)
    assert r.segments.tolist() == [[0, 10], [6, 16]]


def test_top_k_after_threshold():
    segs = [[i * 10, i * 10 + 5] for i in range(6)]
    r = _filter(segs, [0.1, 0.6, 0.3, 0.9, 0.05, 0.7], threshold=0.2, top_k=2)
    assert r.scores.tolist() == [0.9, 0.7]


def test_min_duration_drops_short_segments():
    r = _filter([[0, 0.5], [10, 12], [20, 20]], [0.9, 0.5, 0.8], threshold=0.0, min_duration=1.0)
    assert r.segments.tolist() == [[10, 12]]


def test_nonfinite_proposals_are_ignored():
    r = _filter([[np.nan, 3], [1, 4]], [0.9, np.inf], threshold=0.0)
    assert len(r.segments) == 0


def test_unsure_proposals_become_ignore_regions_after_dedup():
    segs = [[0, 10], [1, 10], [20, 30], [40, 50], [60, 70]]
    r = _filter(segs, [0.9, 0.5, 0.3, 0.1, 0.01], threshold=0.4, ignore_threshold=0.05)
    assert r.segments.tolist() == [[0, 10]]
    # [1, 10] duplicates the kept [0, 10]: dropped, not ignored; below 0.05: background
    assert r.ignore.tolist() == [[20, 30, 0.3], [40, 50, 0.1]]
    assert _filter(segs, [0.9, 0.5, 0.3, 0.1, 0.01], threshold=0.4).ignore.shape == (0, 3)


def test_ignore_regions_survive_the_file_and_refilter_exactly(tmp_path):
    from tal.data.annotations import AnnotationSet, Segment, VideoAnnotation, load_annotations, write_official
    from tal.pseudo import refilter

    cand = [[0, 10, 0.9], [20, 30, 0.3], [40, 50, 0.1], [60, 70, 0.02]]
    video = VideoAnnotation("v", "training", 100.0, 30.0,
                            [Segment(a, b, "action", c, True) for a, b, c in cand if c >= 0.2],
                            [(a, b, c) for a, b, c in cand if 0.01 <= c < 0.2])
    src = tmp_path / "pl.json"
    write_official(AnnotationSet({"v": video}), src)
    assert load_annotations(src).videos["v"].ignore == [(40.0, 50.0, 0.1), (60.0, 70.0, 0.02)]
    refilter(src, tmp_path / "re.json", FilterConfig(threshold=0.25, ignore_threshold=0.05))
    again = load_annotations(tmp_path / "re.json").videos["v"]
    direct = _filter([c[:2] for c in cand], [c[2] for c in cand], threshold=0.25, ignore_threshold=0.05)
    assert [[s.start, s.end, s.score] for s in again.segments] == np.c_[direct.segments, direct.scores].tolist()
    assert [list(r) for r in again.ignore] == direct.ignore.tolist()


def test_quality_counts_recall_of_base_and_novel_instances_apart(tmp_path):
    from tal.data.annotations import AnnotationSet, Segment, VideoAnnotation, write_official
    from tal.pseudo import pseudo_label_quality

    truth = VideoAnnotation("v", "training", 100.0, 30.0, [Segment(0, 10, "run"), Segment(20, 30, "jump"),
                                                           Segment(40, 50, "swim")])
    pl = VideoAnnotation("v", "training", 100.0, 30.0, [Segment(0, 10, "action", 0.9, True),
                                                        Segment(41, 50, "action", 0.5, True),
                                                        Segment(70, 80, "action", 0.4, True)])
    write_official(AnnotationSet({"v": truth}), tmp_path / "gt.json")
    write_official(AnnotationSet({"v": pl}), tmp_path / "pl.json")
    q = pseudo_label_quality(tmp_path / "pl.json", tmp_path / "gt.json", novel=["jump", "swim"])
    assert (q["recall@0.5"], q["precision@0.5"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert (q["recall@0.5 base"], q["recall@0.5 novel"]) == (1.0, 0.5)
    assert (q["true_actions base"], q["true_actions novel"]) == (1, 2)
    assert "recall@0.5 novel" not in pseudo_label_quality(tmp_path / "pl.json", tmp_path / "gt.json")


@pytest.mark.parametrize("kw", [dict(threshold=1.5), dict(top_k=0), dict(dedup_iou=0.0), dict(min_duration=-1),
                                dict(threshold=0.2, ignore_threshold=0.3)])
def test_bad_filter_settings_are_refused(kw):
    with pytest.raises(PseudoLabelError):
        FilterConfig(**kw)


def test_shard_spec_and_slices():
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "a/b", "1", "0/0"):
        with pytest.raises(ShardError):
            parse_shard(bad)
    ids = [f"v{i}" for i in range(10)]
    parts = [shard_slice(ids, i, 3) for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(ids)


# ------------------------------------------------------------------------------------------ writer + merge
META = {"checkpoint_sha256": "ab" * 32, "threshold": 0.05, "store": "/x/web.zarr"}


def _result(k, i):
    segs = np.array([[j, j + 1.5] for j in range(k)], float)
    return FilterResult(segs, np.linspace(0.9, 0.1, k), fell_back=(i % 7 == 0))


def _write_shard(parts, i, n, ids, stop_after=None):
    w = ShardWriter(parts, i, n, META)
    todo = w.pending(shard_slice(ids, i, n))
    for j, vid in enumerate(todo):
        if stop_after is not None and j == stop_after:
            w.close()
            return w
        w.write(vid, 20.0, 30.0, _result(1 + hash(vid) % 3, j))
    w.finish()
    return w


def test_sharded_write_merge_official_format(tmp_path):
    out = tmp_path / "pl.json"
    ids = [f"vid_{i:03d}" for i in range(25)]
    for i in range(3):
        _write_shard(parts_dir_for(out), i, 3, ids)
    stats = merge_parts(out)
    doc = json.loads(out.read_text())
    assert set(doc["database"]) == set(ids)
    ann = doc["database"]["vid_004"]
    assert ann["subset"] == "training" and ann["duration"] == 20.0
    assert all(a["label"] == "action" and a["pseudo"] is True and 0 < a["score"] <= 1 for a in ann["annotations"])
    assert doc["provenance"]["checkpoint_sha256"] == META["checkpoint_sha256"]
    assert doc["provenance"]["threshold"] == 0.05 and doc["provenance"]["store"] == META["store"]
    n_segments = sum(len(v["annotations"]) for v in doc["database"].values())
    assert doc["provenance"]["segments"] == stats.segments == n_segments


def test_merge_refuses_missing_or_unfinished_shards(tmp_path):
    out = tmp_path / "pl.json"
    ids = [f"v{i}" for i in range(10)]
    _write_shard(parts_dir_for(out), 0, 2, ids)
    with pytest.raises(PseudoLabelError, match=r"missing"):
        merge_parts(out)
    _write_shard(parts_dir_for(out), 1, 2, ids, stop_after=2)
    with pytest.raises(PseudoLabelError, match=r"not finished"):
        merge_parts(out)
    assert not out.exists()


def test_resume_after_torn_write_gives_identical_output(tmp_path):
    ids = [f"v{i:02d}" for i in range(30)]
    ref = tmp_path / "ref.json"
    _write_shard(parts_dir_for(ref), 0, 1, ids)
    merge_parts(ref)

    out = tmp_path / "pl.json"
    _write_shard(parts_dir_for(out), 0, 1, ids, stop_after=11)
    part = parts_dir_for(out) / "shard-00000-of-00001.jsonl"
    with open(part, "a") as f:
        f.write('{"video_id": "v11", "dura')  # a kill in the middle of a line
    w = _write_shard(parts_dir_for(out), 0, 1, ids)
    assert w.stats.videos == 30
    merge_parts(out)
    a, b = json.loads(ref.read_text()), json.loads(out.read_text())
    assert a["database"] == b["database"]


def test_finished_shard_is_skipped(tmp_path):
    ids = [f"v{i}" for i in range(5)]
    parts = tmp_path / "pl.json.parts"
    _write_shard(parts, 0, 1, ids)
    w = ShardWriter(parts, 0, 1, META)
    assert w.done and w.pending(ids) == [] and w.stats.videos == 5


def test_parts_from_other_settings_are_refused(tmp_path):
    parts = tmp_path / "pl.json.parts"
    _write_shard(parts, 0, 1, ["a", "b"])
    with pytest.raises(PseudoLabelError, match="different settings.*threshold"):
        ShardWriter(parts, 0, 1, dict(META, threshold=0.2))


def test_changed_store_order_is_detected_on_resume(tmp_path):
    parts = tmp_path / "pl.json.parts"
    _write_shard(parts, 0, 1, ["a", "b", "c"], stop_after=2)
    w = ShardWriter(parts, 0, 1, META)
    with pytest.raises(PseudoLabelError, match="store changed"):
        w.pending(["a", "x", "c"])


def test_writer_and_merge_memory_is_flat_in_video_count(tmp_path):
    """Python heap peak while streaming 4,000 videos stays that of streaming 500 (no per-video state)."""
    def peak(n):
        out = tmp_path / f"pl{n}.json"
        ids = [f"video_{i:06d}" for i in range(n)]
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        _write_shard(parts_dir_for(out), 0, 1, ids)
        merge_parts(out)
        used = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        assert len(json.loads(out.read_text())["database"]) == n
        return used

    small, large = peak(500), peak(4000)
    # Only the shard's list of id pointers (8 B/id) may grow; a set or dict of ids would add > 30 B/id.
    assert large < small + 3500 * 24, (small, large)


# ------------------------------------------------------------------------------------------ tiny real stores
# A small world written through the public store/annotation APIs: D=16 rows; an action row is a shared
# "actionness" direction plus its class prototype, so an agnostic localizer learns quickly and partly transfers.
TINY_CLASSES = ["jump", "throw", "swim", "climb", "dive", "kick"]
TINY_SPLIT = {"name": "tiny", "base": ["jump", "throw", "swim", "climb"], "novel": ["dive", "kick"]}
TINY_SETS = ["model.embd_dim=16", "model.fpn_dim=16", "model.head_dim=16", "model.n_head=2",
             "model.max_seq_len=64", "model.attn_window=5", "train.batch_size=4", "train.lr=0.005",
             "train.epochs=2", "train.warmup_epochs=1", "data.num_workers=0", "data.crop_ratio=null"]


def tiny_world(seed=0, dim=16):
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(len(TINY_CLASSES), dim))
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    action = rng.normal(size=dim)
    action /= np.linalg.norm(action)
    return {"protos": protos, "action": action, "dim": dim}


def make_tiny_store(path, world, n_videos, classes, seed, rows=(40, 64), prefix="v", ann_path=None, subset="training",
                    vocab=False, batch=500):
    """Write a real store (and official annotations) of ``n_videos`` short videos holding ``classes``."""
    from features.store import Grid, VideoInfo, create_store
    from tal.data.annotations import AnnotationSet, Segment, VideoAnnotation, write_official

    rng = np.random.default_rng(seed)
    grid = Grid(fps=30.0, window=16, stride=4, frame_step=4)
    dim = world["dim"]
    prov = {"encoder": "simulated", "pretrained": "random", "image_size": 0, "preprocess": "none",
            "normalise": "l2", "fps": 30.0, "window": 16, "stride": 4, "frame_step": 4}
    store = create_store(path, dim=dim, provenance=prov, dtype="float16")
    videos, pending = {}, []
    for i in range(n_videos):
        vid = f"{prefix}{i:06d}"
        t = int(rng.integers(rows[0], rows[1] + 1))
        x = rng.normal(scale=0.35, size=(t, dim))
        segs = []
        start = int(rng.integers(2, 8))
        while start + 6 < t - 2 and len(segs) < 2:
            length = int(rng.integers(6, 14))
            end = min(start + length, t - 2)
            c = int(rng.choice([TINY_CLASSES.index(k) for k in classes]))
            x[start:end] += 1.2 * world["action"] + 1.0 * world["protos"][c]
            # grid row i covers [i*stride, i*stride+window) frames; label by row centres
            s_sec, e_sec = (start * 4 + 8) / 30.0, (end * 4 + 8) / 30.0
            segs.append(Segment(s_sec, e_sec, TINY_CLASSES[c]))
            start = end + int(rng.integers(6, 16))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        duration = ((t - 1) * 4 + 16) / 30.0
        info = VideoInfo(num_rows=t, fps=30.0, duration=duration, num_frames=-1, grid=grid)
        pending.append((vid, x.astype(np.float32), info))
        videos[vid] = VideoAnnotation(vid, subset, duration, 30.0, segs)
        if len(pending) >= batch:
            store.write_videos(pending)
            pending = []
    store.write_videos(pending)
    if vocab:
        text = world["protos"] + 0.3 * np.random.default_rng(seed + 99).normal(size=world["protos"].shape)
        text /= np.linalg.norm(text, axis=1, keepdims=True)
        store.add_vocabulary("tiny", TINY_CLASSES, text.astype(np.float32))
    store.close()
    if ann_path is not None:
        write_official(AnnotationSet(videos), ann_path)
    return videos


def make_labelled_and_web(root, n_web: int) -> dict:
    """24 labelled videos of base classes (lab.zarr/.json), n_web unlabelled ones (web.zarr; their truth, for
    analysis only, in web.json), split.json."""
    world = tiny_world()
    make_tiny_store(root / "lab.zarr", world, 24, TINY_SPLIT["base"], seed=1, ann_path=root / "lab.json")
    make_tiny_store(root / "web.zarr", world, n_web, TINY_CLASSES, seed=2, prefix="w", ann_path=root / "web.json")
    (root / "split.json").write_text(json.dumps(TINY_SPLIT))
    return world


@pytest.fixture(scope="module")
def tiny_stage1(tmp_path_factory):
    """A labelled store, an unlabelled store and a stage-1 agnostic checkpoint trained on base classes."""
    from tal.config import load_config
    from tal.train import TrainInputs, train

    root = tmp_path_factory.mktemp("tiny")
    world = make_labelled_and_web(root, n_web=30)
    cfg = load_config("small", TINY_SETS + ["data.mode=agnostic"])
    ckpt = train(cfg, TrainInputs([str(root / "lab.zarr")], [str(root / "lab.json")]), root / "stage1", progress=False)
    return root, world, ckpt


def test_pseudo_label_store_writes_official_file_with_provenance(tiny_stage1, tmp_path):
    from tal.data.annotations import load_annotations
    from features.hashing import sha256_file
    from tal.pseudo import pseudo_label_store

    root, _, ckpt = tiny_stage1
    out = tmp_path / "pl.json"
    stats = pseudo_label_store(root / "web.zarr", ckpt, out, FilterConfig(threshold=0.05, top_k=5), progress=False)
    aset = load_annotations(out)
    assert len(aset.videos) == stats.videos == 30
    assert aset.classes == ["action"]
    segs = [s for v in aset.videos.values() for s in v.segments]
    assert len(segs) == stats.segments and all(s.pseudo and s.score is not None for s in segs)
    assert all(len(v.segments) >= 1 and len(v.segments) <= 5 for v in aset.videos.values())  # top-1 floor, top-k cap
    assert all(0 <= s.start < s.end <= v.duration + 1e-6 for v in aset.videos.values() for s in v.segments)
    assert aset.provenance["checkpoint_sha256"] == sha256_file(ckpt)
    assert aset.provenance["threshold"] == 0.05 and aset.provenance["store"].endswith("web.zarr")
    assert aset.provenance["weights"] == "ema"


def test_a_checkpoint_without_ema_weights_is_recorded_as_such(tiny_stage1, tmp_path, caplog):
    import torch

    from tal.checkpoint import load_checkpoint, save_checkpoint
    from tal.data.annotations import load_annotations
    from tal.infer import Localizer
    from tal.pseudo import pseudo_label_store

    root, _, ckpt = tiny_stage1
    assert Localizer.from_checkpoint(ckpt).weights == "ema"
    state = load_checkpoint(ckpt)
    state["ema"] = None
    raw = tmp_path / "raw.pt"
    save_checkpoint(raw, {k: v for k, v in state.items() if k != "format"})
    with caplog.at_level("WARNING", logger="tal.infer"):
        loc = Localizer.from_checkpoint(raw)
        Localizer.from_checkpoint(raw)
    assert loc.weights == "model" and caplog.text.count("holds no EMA weights") == 1  # warned once
    assert all(torch.equal(a, b) for a, b in zip(loc.model.state_dict().values(), state["model"].values()))
    pseudo_label_store(root / "web.zarr", raw, tmp_path / "pl.json", FilterConfig(), progress=False)
    assert load_annotations(tmp_path / "pl.json").provenance["weights"] == "model"


def test_sharded_run_equals_single_run(tiny_stage1, tmp_path):
    from tal.pseudo import pseudo_label_store

    root, _, ckpt = tiny_stage1
    cfg = FilterConfig(threshold=0.1)
    pseudo_label_store(root / "web.zarr", ckpt, tmp_path / "one.json", cfg, progress=False)
    for i in range(3):
        pseudo_label_store(root / "web.zarr", ckpt, tmp_path / "three.json", cfg, shard=(i, 3), progress=False)
    assert not (tmp_path / "three.json").exists()  # shards wait for the merge step
    merge_parts(tmp_path / "three.json")
    one = json.loads((tmp_path / "one.json").read_text())["database"]
    three = json.loads((tmp_path / "three.json").read_text())["database"]
    assert one == three


def test_threshold_that_keeps_nothing_falls_back_with_warning(tiny_stage1, tmp_path, caplog):
    from tal.pseudo import pseudo_label_store

    root, _, ckpt = tiny_stage1
    with caplog.at_level("WARNING"):
        stats = pseudo_label_store(root / "web.zarr", ckpt, tmp_path / "pl.json", FilterConfig(threshold=1.0),
                                   progress=False)
    assert stats.fallback_videos == stats.videos == stats.segments == 30
    assert "every video fell back" in caplog.text


def test_cli_errors_are_one_line(tiny_stage1, tmp_path):
    """Empty store, mismatching checkpoint, bad shard: non-zero exit, one line naming the file, no traceback."""
    import subprocess
    import sys

    from click.testing import CliRunner

    from features.store import create_store
    from tal.cli.pseudo import main

    root, world, ckpt = tiny_stage1
    empty = tmp_path / "empty.zarr"
    create_store(empty, dim=16, provenance={"encoder": "simulated", "pretrained": "random", "fps": 30.0,
                                            "window": 16, "stride": 4, "frame_step": 4}).close()
    other = tmp_path / "other.zarr"
    make_tiny_store(other, tiny_world(dim=8), 2, TINY_CLASSES, seed=3)
    args = ["--checkpoint", str(ckpt), "--out", str(tmp_path / "x.json"), "-q"]
    r = subprocess.run([sys.executable, "-m", "tal.cli.pseudo", "--features", str(empty)] + args,
                       capture_output=True, text=True)
    assert r.returncode == 1 and "holds no videos" in r.stderr and str(empty) in r.stderr
    assert "Traceback" not in r.stderr
    r = CliRunner().invoke(main, ["--features", str(other)] + args)
    assert r.exit_code == 1 and "trained on other features" in r.output and str(other) in r.output
    r = CliRunner().invoke(main, ["--features", str(root / "web.zarr"), "--shard", "4/2"] + args)
    assert r.exit_code == 2 and "--shard" in r.output
    r = CliRunner().invoke(main, ["merge", str(tmp_path / "nothing.json")])
    assert r.exit_code == 1 and "run tal-pseudo first" in r.output
    assert not (tmp_path / "x.json").exists()


def test_generation_memory_is_flat_over_thousands_of_videos(tmp_path):
    """Peak Python heap of pseudo-labelling 1,500 tiny videos ≈ that of 150 (model + chunk, nothing per video)."""
    from tal.config import load_config
    from tal.model import build_model
    from tal.pseudo import pseudo_label_store
    import torch

    world = tiny_world()
    make_tiny_store(tmp_path / "many.zarr", world, 1500, TINY_CLASSES, seed=5, rows=(8, 16), batch=1000)
    make_tiny_store(tmp_path / "few.zarr", world, 150, TINY_CLASSES, seed=5, rows=(8, 16))
    # An untrained agnostic model is enough: memory, not accuracy, is under test.
    cfg = load_config("small", TINY_SETS + ["data.mode=agnostic", "model.input_dim=16", "model.num_classes=1"])
    from tal.checkpoint import save_checkpoint
    from features.store import open_store
    from tal.checkpoint import store_provenance

    with open_store(tmp_path / "many.zarr") as st:
        prov = store_provenance(st)
    model = build_model(cfg.model)
    save_checkpoint(tmp_path / "rand.pt", {"config": cfg.to_dict(), "model": model.state_dict(),
                                            "ema": model.state_dict(), "provenance": prov,
                                            "classes": ["action"], "mode": "agnostic"})
    torch.manual_seed(0)

    def peak(store):
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        pseudo_label_store(tmp_path / store, tmp_path / "rand.pt", tmp_path / f"{store}.json", FilterConfig(),
                           batch_size=64, progress=False)
        used = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        return used

    small, large = peak("few.zarr"), peak("many.zarr")
    n = len(json.loads((tmp_path / "many.zarr.json").read_text())["database"])
    assert n == 1500
    # Only the store's own index and the shard's id list grow with the store (~0.3 kB/video at most).
    assert large < small + 1350 * 300, (small, large)
