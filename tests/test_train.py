"""tal.train: overfitting a tiny real-format store, run outputs, checkpoints, stage-2 initialisation, presets."""

import csv
import re

import pytest
import torch
import yaml

from tal.checkpoint import CheckpointError, load_checkpoint
from tal.config import ConfigError, load_config
from tal.eval.detection import evaluate_detection
from tal.infer import iter_detections
from tal.train import TrainError, TrainInputs, learning_rate, train
from test_train_support import TINY, make_benchmark, provenance, single_thread

@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return root, *make_benchmark(root, n_videos=8, rows=(48, 120))


@pytest.fixture(scope="module")
def closed_run(bench):
    root, store, ann, aset = bench
    cfg = load_config("small", TINY + ["data.mode=closed", "train.epochs=24"])
    with single_thread():
        ckpt = train(cfg, TrainInputs([store], [ann]), root / "closed", progress=False)
    return ckpt


def test_overfits_tiny_store(bench, closed_run):
    _, store, _, aset = bench
    preds = dict(iter_detections(store, closed_run))
    assert set(preds) == set(aset.videos)
    report = evaluate_detection(aset, preds, [0.3, 0.4, 0.5, 0.6, 0.7])
    assert report.average_mAP >= 0.95, report.mAP
    for vid, dets in preds.items():
        duration = aset.videos[vid].duration
        assert all(0 <= d.start < d.end <= duration for d in dets)
        assert {d.label for d in dets} <= set(aset.classes)


def test_run_directory_outputs(bench, closed_run):
    root, *_ = bench
    run = root / "closed"
    state = torch.load(closed_run, weights_only=True)  # plain types and tensors only
    assert state["epoch"] == 25 and state["mode"] == "closed" and state["classes"] == ["jump", "run", "swim"]
    assert state["provenance"]["encoder"] == "simulated" and state["provenance"]["dim"] == 32
    assert state["provenance"]["stride"] == 4 and state["provenance"]["window"] == 16
    for key in ("model", "ema", "optimizer", "scheduler", "rng", "config", "history"):
        assert key in state
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["embd_dim"] == 32 and saved["model"]["input_dim"] == 32
    assert saved["model"]["num_classes"] == 3 and saved["train"]["lr"] == pytest.approx(3e-3)
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 26))
    assert float(rows[-1]["final_loss"]) < float(rows[0]["final_loss"])
    assert (run / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(run.glob(".*.tmp"))  # no temp files left behind


def test_existing_run_needs_resume(bench, closed_run):
    root, store, ann, _ = bench
    cfg = load_config("small", TINY + ["data.mode=closed"])
    with pytest.raises(TrainError, match="--resume"):
        train(cfg, TrainInputs([store], [ann]), root / "closed", progress=False)


def test_mismatching_store_refused(bench, closed_run, tmp_path):
    _, _, _, aset = bench
    other_encoder, *_ = make_benchmark(tmp_path, n_videos=2, name="otherenc",
                                       store_provenance=provenance(encoder="ViT-B-16", pretrained="openai"))
    with pytest.raises(CheckpointError, match="encoder 'simulated' vs 'ViT-B-16'"):
        list(iter_detections(other_encoder, closed_run))
    other_dim, *_ = make_benchmark(tmp_path, n_videos=2, name="otherdim", dim=48)
    with pytest.raises(CheckpointError, match="dim 32 vs 48"):
        list(iter_detections(other_dim, closed_run))
    # the same encoder name with other random weights (init_seed) or another preprocessing is other features
    other_seed, *_ = make_benchmark(tmp_path, n_videos=2, name="otherseed", store_provenance=provenance(init_seed=7))
    with pytest.raises(CheckpointError, match="init_seed None vs 7"):
        list(iter_detections(other_seed, closed_run))
    other_norm, *_ = make_benchmark(tmp_path, n_videos=2, name="othernorm", store_provenance=provenance(normalise="x"))
    with pytest.raises(CheckpointError, match="normalise 'l2' vs 'x'"):
        list(iter_detections(other_norm, closed_run))


def test_checkpoint_without_newer_provenance_keys_still_loads(closed_run, bench):
    """A checkpoint written before a key joined features.compat.FEATURE_KEYS is compared on what it records."""
    from features.compat import mismatches

    state = load_checkpoint(closed_run)
    old = {k: state["provenance"][k] for k in ("encoder", "pretrained", "dim", "fps", "window", "stride", "frame_step")}
    assert mismatches(old, dict(state["provenance"], init_seed=3), only_known=True) == []
    assert mismatches(old, dict(state["provenance"], stride=2), only_known=True) == ["stride 4 vs 2"]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, closed_run):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(closed_run.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="bad.pt: not a readable stovtal checkpoint"):
        load_checkpoint(bad)


def _flat(state):
    return torch.cat([v.flatten().float() for k, v in state.items() if k != "loss_normalizer"])


def test_stage2_ema_initialised_from_stage1(bench, closed_run, tmp_path):
    root, store, ann, _ = bench
    stage1 = root / "agn1"
    cfg = load_config("small", TINY + ["data.mode=agnostic", "train.epochs=1", "train.warmup_epochs=0"])
    s1 = train(cfg, TrainInputs([store], [ann]), stage1, progress=False)
    cfg = load_config("small", TINY + ["data.mode=agnostic", "train.epochs=1", "train.warmup_epochs=0",
                                       "train.ema_decay=0.999", "train.lr=1e-6"])
    s2 = train(cfg, TrainInputs([store], [ann]), tmp_path / "s2", init_ema_from=s1, progress=False)
    st1, st2 = load_checkpoint(s1), load_checkpoint(s2)
    ema1, ema2, student2 = _flat(st1["ema"]), _flat(st2["ema"]), _flat(st2["model"])
    # EMA after 2 steps at 0.999 is ~stage-1 weights; the student started fresh, far from them
    assert (ema2 - ema1).norm() < 0.05 * (student2 - ema1).norm()
    # --init-from fine-tunes: the student itself starts from stage 1
    s3 = train(cfg, TrainInputs([store], [ann]), tmp_path / "s3", init_from=s1, progress=False)
    assert (_flat(load_checkpoint(s3)["model"]) - ema1).norm() < 0.05 * (student2 - ema1).norm()
    # a checkpoint whose model does not fit this run is refused
    with pytest.raises(CheckpointError, match="does not match"):
        train(load_config("small", TINY + ["data.mode=agnostic", "model.embd_dim=16"]),
              TrainInputs([store], [ann]), tmp_path / "s4", init_from=closed_run, progress=False)


def test_pseudo_labels_need_agnostic_mode(bench, tmp_path):
    _, store, ann, _ = bench
    with pytest.raises(TrainError, match="--mode agnostic"):
        train(load_config("small", TINY + ["data.mode=closed"]), TrainInputs([store], [ann], [ann]),
              tmp_path / "x", progress=False)


def test_schedule_warms_up_then_decays():
    lrs = [learning_rate(s, 1.0, 10, 110) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] < 0.01


def test_presets_and_overrides():
    thumos = load_config("thumos")
    assert thumos.model.max_seq_len == 2304 and thumos.model.attn_window == 19 and thumos.train.lr == 1e-4
    assert (thumos.train.epochs, thumos.train.warmup_epochs, thumos.train.batch_size) == (30, 5, 2)
    assert thumos.train.weight_decay == 0.05 and thumos.data.expected_grid == {"window": 16, "stride": 4}
    anet = load_config("anet")
    assert anet.data.resize_len == 192 and anet.model.attn_window == [7, 7, 7, 7, 7, -1]
    assert (anet.model.embd_dim, anet.train.lr, anet.train.epochs, anet.train.batch_size) == (256, 1e-3, 10, 16)
    assert anet.model.label_smoothing == 0.1 and anet.model.reg_loss_weight == 2.0
    small = load_config("small", ["model.attn_window=[5,5,5,5,5,-1]", "train.lr=2e-4", "data.pseudo_weight=1"])
    assert small.model.attn_window == [5, 5, 5, 5, 5, -1] and small.train.lr == 2e-4
    assert small.data.pseudo_weight == "1"
    for bad, msg in [("model.nope=1", "nope"), ("train.lr=-1", "lr"), ("data.mode=open", "mode"), ("x", "key=value")]:
        with pytest.raises(ConfigError, match=msg):
            load_config("small", [bad])
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("nonexistent")


def test_set_keeps_text_text_and_parses_numbers_the_config_expects(tmp_path):
    cfg = load_config("small", ["train.eval_subset=2014", "train.lr=1e-3", "train.epochs=3", "model.min_score=1e-4",
                                "data.crop_ratio=[5e-1, 1]", "train.eval_tiou=[0.3, 5e-1]", "data.pseudo_ratio=1"])
    assert cfg.train.eval_subset == "2014" and cfg.train.lr == 1e-3 and cfg.train.epochs == 3
    assert cfg.model.min_score == 1e-4 and cfg.data.crop_ratio == [0.5, 1] and cfg.train.eval_tiou == [0.3, 0.5]
    assert cfg.data.pseudo_ratio == 1.0 and isinstance(cfg.data.pseudo_ratio, float)
    assert load_config("small", ["train.eval_subset=2014.10"]).train.eval_subset == "2014.10"  # not 2014.1
    assert load_config("small", ["train.eval_subset=null"]).train.eval_subset is None
    preset = tmp_path / "p.yaml"
    preset.write_text("train:\n  eval_subset: 2014\n  lr: 1e-3\n")
    from_file = load_config(str(preset))
    assert from_file.train.eval_subset == "2014" and from_file.train.lr == 1e-3
    for bad, msg in [("train.lr=abc", "train.lr: expected a number, got 'abc'"),
                     ("train.epochs=2.5", "train.epochs: expected an integer, got 2.5"),
                     ("train.ema_warmup=maybe", "train.ema_warmup: expected bool, got 'maybe'"),
                     ("data.mode=[a]", "data.mode: expected str, got ['a']"),
                     ("train.lr=", "train.lr: expected a number, got nothing")]:
        with pytest.raises(ConfigError, match=re.escape(msg)):
            load_config("small", [bad])


def test_stage2_trains_on_labels_plus_pseudo_labels_from_another_store(bench, tmp_path):
    from tal.data.annotations import AnnotationSet, Segment, VideoAnnotation, write_official

    _, store, ann, _ = bench
    web, _, web_gt = make_benchmark(tmp_path, n_videos=6, name="web", seed=5, rows=(48, 96))
    pseudo = AnnotationSet({vid: VideoAnnotation(vid, "training", v.duration, v.fps,
                                                 [Segment(s.start, s.end, "action", score=0.6, pseudo=True)
                                                  for s in v.segments]) for vid, v in web_gt.videos.items()})
    write_official(pseudo, tmp_path / "pl.json")
    cfg = load_config("small", TINY + ["data.mode=agnostic", "train.epochs=1", "train.warmup_epochs=0",
                                       "data.pseudo_ratio=0.5", "data.pseudo_weight=score"])
    ckpt = train(cfg, TrainInputs([store, web], [ann], [tmp_path / "pl.json"]), tmp_path / "s2", progress=False)
    state = load_checkpoint(ckpt)
    assert state["inputs"]["pseudo"] == [str(tmp_path / "pl.json")] and state["classes"] == ["action"]
    # 8 human + 6 pseudo clips per epoch at batch 4
    assert state["scheduler"]["steps_per_epoch"] == 4
