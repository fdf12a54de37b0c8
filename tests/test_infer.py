"""tal-infer / tal.infer: results JSON, agnostic "action" output, open-vocabulary classification, refusals."""

import csv
import json

import pytest
from click.testing import CliRunner

from tal.cli.infer import main as infer_main
from tal.config import load_config
from tal.eval.detection import evaluate_detection
from tal.eval.predictions import load_predictions
from tal.infer import InferenceError, iter_detections
from tal.train import TrainInputs, train
from test_train_support import CLASSES, TINY, make_benchmark, provenance, single_thread

@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    store, ann, aset = make_benchmark(root, n_videos=8, rows=(48, 120), vocabulary=True,
                                      subsets=("training", "testing"))
    with single_thread():
        agnostic, closed = _train_both(root, store, ann)
    return root, store, ann, aset, agnostic, closed


def _train_both(root, store, ann):
    agnostic = train(load_config("small", TINY + ["data.mode=agnostic", "train.epochs=16",
                                                  "train.eval_subset=testing", "train.eval_every=8"]),
                     TrainInputs([store], [ann], subset=None), root / "agn", progress=False)
    closed = train(load_config("small", TINY + ["data.mode=closed", "train.epochs=1"]),
                   TrainInputs([store], [ann], subset=None), root / "closed", progress=False)
    return agnostic, closed


def _infer(*args):
    return CliRunner().invoke(infer_main, [str(a) for a in args], catch_exceptions=False)


def test_closed_model_writes_official_results_for_a_subset(runs):
    root, store, ann, aset, _, closed = runs
    out = root / "closed.json"
    res = _infer("--features", store, "--checkpoint", closed, "--annotations", ann, "--subset", "testing",
                 "--out", out)
    assert res.exit_code == 0, res.output
    preds = load_predictions(out)
    assert set(preds) == {v for v, a in aset.videos.items() if a.subset == "testing"}
    assert {d.label for dets in preds.values() for d in dets} <= set(CLASSES)
    assert json.loads(out.read_text())["version"]


def test_agnostic_model_outputs_action_and_ov_picks_planted_classes(runs):
    root, store, _, aset, agnostic, _ = runs
    plain = dict(iter_detections(store, agnostic))
    assert {d.label for dets in plain.values() for d in dets} == {"action"}
    split = root / "split.json"
    split.write_text(json.dumps({"name": "tiny", "base": CLASSES[:2], "novel": CLASSES[2:]}))
    out = root / "ov.json"
    res = _infer("--features", store, "--checkpoint", agnostic, "--vocab", "tiny", "--split", split,
                 "--classes", "all", "--out", out)
    assert res.exit_code == 0, res.output
    preds = load_predictions(out)
    report = evaluate_detection(aset, preds, [0.3, 0.5, 0.7])
    assert report.average_mAP >= 0.8, report.per_class
    novel = _infer("--features", store, "--checkpoint", agnostic, "--vocab", "tiny", "--split", split,
                   "--classes", "novel", "--out", root / "novel.json")
    assert novel.exit_code == 0, novel.output
    assert {d.label for dets in load_predictions(root / "novel.json").values() for d in dets} == {"swim"}


def test_training_evaluated_the_held_out_subset(runs):
    root, *_ = runs
    rows = list(csv.DictReader((root / "agn" / "log.csv").open()))
    evaluated = {int(r["epoch"]): float(r["eval_average_mAP"]) for r in rows if r.get("eval_average_mAP")}
    assert sorted(evaluated) == [8, 16, 17]  # every 8 epochs and after the last
    assert evaluated[17] > 0.5


def test_iter_detections_streams_in_order(runs):
    _, store, _, aset, agnostic, _ = runs
    wanted = sorted(aset.videos)[::-1][:3]
    stream = iter_detections(store, agnostic, wanted)
    assert len(stream) == 3
    assert next(stream)[0] == wanted[0]
    assert [vid for vid, _ in stream] == wanted[1:]


def test_refusals_are_one_line_errors(runs, tmp_path):
    root, store, _, _, agnostic, closed = runs
    other, *_ = make_benchmark(tmp_path, n_videos=1, name="other",
                               store_provenance=provenance(pretrained="another-model"))
    res = _infer("--features", other, "--checkpoint", agnostic, "--out", tmp_path / "x.json")
    assert res.exit_code == 1 and "pretrained 'tiny-test' vs 'another-model'" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "x.json").exists()
    res = _infer("--features", store, "--checkpoint", closed, "--vocab", "tiny", "--out", tmp_path / "y.json")
    assert res.exit_code == 1 and "needs an agnostic model" in res.output
    res = _infer("--features", store, "--checkpoint", agnostic, "--vocab", "nope", "--out", tmp_path / "z.json")
    assert res.exit_code == 1 and "no vocabulary 'nope'" in res.output
    names = tmp_path / "names.txt"
    names.write_text("jump\nfly\n")
    res = _infer("--features", store, "--checkpoint", agnostic, "--class-names", names, "--out", tmp_path / "w.json")
    assert res.exit_code == 1 and "class(es) not in the vocabulary: fly" in res.output  # no quiet re-embedding
    res = _infer("--features", store, "--checkpoint", agnostic, "--vocab", "nope", "--class-names", names,
                 "--out", tmp_path / "w.json")
    assert res.exit_code == 1 and "no vocabulary 'nope'" in res.output  # an explicit --vocab that fails is an error
    res = _infer("--features", store, "--checkpoint", agnostic, "--class-names", names, "--embed-names",
                 "--out", tmp_path / "w.json")
    assert res.exit_code == 1 and "not made by an open_clip encoder stovtal can rebuild" in res.output
    assert not (tmp_path / "w.json").exists()
    with pytest.raises(InferenceError, match="needs an agnostic model"):
        list(iter_detections(store, closed, vocabulary=object()))


def test_embedding_names_uses_the_store_encoder_exactly_and_refuses_random_weights(tmp_path):
    """Re-embedding rebuilds the store's encoder from its provenance, init_seed included (random weights are
    only embedded when asked for)."""
    import numpy as np

    from features.encoders import load_encoder
    from tal.infer import embed_class_names

    store, *_ = make_benchmark(tmp_path, n_videos=1, dim=384, name="vit",
                               store_provenance=provenance(encoder="ViT-S-32", pretrained="random", init_seed=5))
    with pytest.raises(InferenceError, match="randomly initialised ViT-S-32 .init_seed 5.*--allow-random-text"):
        embed_class_names(store, ["high jump", "golf swing"])
    vocab = embed_class_names(store, ["high jump", "golf swing"], "a video of {}.", allow_random=True)
    same = load_encoder("ViT-S-32", "none", device="cpu", seed=5).encode_texts(["a video of high jump.",
                                                                                 "a video of golf swing."])
    np.testing.assert_allclose(vocab.embeddings, same, rtol=0, atol=1e-6)
    other_seed = load_encoder("ViT-S-32", "none", device="cpu", seed=0).encode_texts(["a video of high jump."])
    assert not np.allclose(vocab.embeddings[0], other_seed[0], atol=1e-3)
