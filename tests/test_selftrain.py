"""tal-selftrain end to end on tiny real stores: stage table, resumption after SIGKILL, refused settings."""

import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from test_pseudo import TINY_CLASSES, TINY_SETS, TINY_SPLIT, make_labelled_and_web, make_tiny_store

from tal.model.ov import OVConfig
from tal.pseudo import FilterConfig, pseudo_label_quality
from tal.selftrain import (PROTOCOL_ROWS, EvalSet, RunState, SelfTrainConfig, SelfTrainError, _lookup, evaluate_stage,
                           format_table, named_as_today, run_selftrain, stage_inputs, stage_run_config, summarize)
from tal.thresholds import ThresholdRule


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("st_data")
    world = make_labelled_and_web(root, n_web=32)
    make_tiny_store(root / "test.zarr", world, 12, TINY_CLASSES, seed=3, prefix="t", ann_path=root / "test.json",
                    subset="testing", vocab=True)
    make_tiny_store(root / "webtest.zarr", world, 12, TINY_CLASSES, seed=4, prefix="x",
                    ann_path=root / "webtest.json", subset="testing", vocab=True)
    return root


def _config(root, **kw) -> SelfTrainConfig:
    kw.setdefault("recurrence_weight", 0.5)  # auto trains class-held-out fold models: chosen_run's test below
    kw.setdefault("rounds", 1)  # and so does --rounds auto
    kw.setdefault("label_passes", "mixed")  # and --label-passes auto
    return SelfTrainConfig(
        [str(root / "lab.zarr")], [str(root / "lab.json")], str(root / "web.zarr"),
        filter=FilterConfig(threshold=0.1), threshold_rule=None, split=str(root / "split.json"), preset="small",
        overrides=list(TINY_SETS), seed=0,
        tests=[EvalSet(str(root / "test.zarr"), str(root / "test.json")),
               EvalSet(str(root / "webtest.zarr"), str(root / "webtest.json"), cross_domain=True)],
        vocab="tiny", simulated=True, **kw)


def _cli_args(root, out):
    args = ["--labeled-features", root / "lab.zarr", "--labeled-annotations", root / "lab.json",
            "--unlabeled-features", root / "web.zarr", "--out", out, "--threshold", "0.1",
            "--split", root / "split.json", "--preset", "small", "--seed", "0",
            "--test-features", root / "test.zarr", "--test-annotations", root / "test.json",
            "--cross-features", root / "webtest.zarr", "--cross-annotations", root / "webtest.json",
            "--vocab", "tiny", "--simulated", "--no-progress",
            "--rounds", "1", "--recurrence-weight", "0.5",  # what _config runs, without the class check
            "--label-passes", "mixed"]
    for item in TINY_SETS:
        args += ["--set", item]
    return [str(a) for a in args]


@pytest.fixture(scope="module")
def reference_run(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("st_ref") / "run"
    report = run_selftrain(_config(tiny_data), out, progress=False)
    return out, report


def test_end_to_end_report_table_and_files(reference_run, tiny_data):
    out, report = reference_run
    for stage in ("stage1", "stage2"):
        # the report holds what the stage's evaluation measured, per protocol
        saved = json.loads((out / stage / "eval.json").read_text())
        assert report[stage]["novel_only"] == saved["novel_only"]["novel"]["average_mAP"]
        assert report[stage]["generalized"]["base"] == saved["generalized"]["base"]["average_mAP"]
        assert report[stage]["cross_domain"] == saved["cross_domain"]["all"]["average_mAP"]
        assert saved["generalized"]["videos_missing"] == 0 and saved["generalized"]["videos_scored"] == 12
    assert report["simulated"] and report["seed"] == 0
    assert report["counts"]["labeled_videos"] == 24 and report["counts"]["unlabeled_videos"] == 32
    # Every unlabelled video contributes at least its top-1 pseudo-label.
    assert report["counts"]["pseudo_labels"]["round1.pseudo"] >= 32
    pl = json.loads((out / "pseudo_round1.json").read_text())
    assert len(pl["database"]) == 32 and pl["provenance"]["threshold"] == 0.1
    state = json.loads((out / "state.json").read_text())["done"]
    assert state == ["stage1.train", "stage1.eval", "round1.pseudo", "stage2.train", "stage2.eval"]
    # Stage 2 really trained on the pseudo-labelled web videos next to the labelled ones.
    inputs = torch.load(out / "stage2" / "last.pt", weights_only=True)["inputs"]
    assert inputs["pseudo"] == [str(out / "pseudo_round1.json")] and str(tiny_data / "web.zarr") in inputs["features"]
    for name in ("report.json", "report.txt", "map_per_stage.png"):
        assert (out / name).stat().st_size > 0
    table = format_table(report)
    assert "novel-only" in table and "cross-domain" in table and "SIMULATED" in table


def test_pseudo_labels_per_minute_are_reported_beside_the_human_labels(reference_run, tiny_data):
    out, report = reference_run
    details = report["counts"]["pseudo_label_details"]["round1.pseudo"]
    pl = json.loads((out / "pseudo_round1.json").read_text())["database"]
    pseudo = sum(len(v["annotations"]) for v in pl.values()) / (sum(v["duration"] for v in pl.values()) / 60)
    # the human labels as stage 1 trains on them: training subset, base classes, videos holding one
    base = set(json.loads((tiny_data / "split.json").read_text())["base"])
    lab = json.loads((tiny_data / "lab.json").read_text())["database"]
    counted = [(sum(a["label"] in base for a in v["annotations"]), v["duration"]) for v in lab.values()
               if v["subset"] == "training"]
    human = sum(n for n, _ in counted) / (sum(d for n, d in counted if n) / 60)
    assert details["per_minute"] == pytest.approx(pseudo) and details["labelled_per_minute"] == pytest.approx(human)
    assert details["density_ratio"] == pytest.approx(pseudo / human)
    assert f"round1.pseudo: {pseudo:.2f} pseudo-labels per minute of unlabelled video, {pseudo / human:.2f} x the " \
        f"{human:.2f} human labels per minute of labelled video" in format_table(report).splitlines()


def test_videos_of_unknown_duration_are_left_out_of_the_density(reference_run, tiny_data, tmp_path):
    from tal.selftrain import pseudo_label_density

    out, report = reference_run
    pl = json.loads((out / "pseudo_round1.json").read_text())
    first = next(iter(pl["database"]))
    pl["database"][first]["duration"] = None
    rest = [v for k, v in pl["database"].items() if k != first]
    got = pseudo_label_density(_config(tiny_data), pl)
    assert got["per_minute"] == pytest.approx(sum(len(v["annotations"]) for v in rest)
                                              / (sum(v["duration"] for v in rest) / 60))
    assert got["labelled_per_minute"] == report["counts"]["pseudo_label_details"]["round1.pseudo"]["labelled_per_minute"]


def test_pseudo_labels_denser_than_the_human_labels_are_a_warning(caplog):
    from tal.selftrain import _log_density

    with caplog.at_level("INFO", logger="tal.selftrain"):
        _log_density("round1.pseudo", {"per_minute": 2.0, "labelled_per_minute": 4.0, "density_ratio": 0.5})
        _log_density("round1.pseudo", {"per_minute": 8.0, "labelled_per_minute": 4.0, "density_ratio": 2.0})
    assert [r.levelname for r in caplog.records] == ["INFO", "WARNING"]
    assert "2.00 x the 4.00 human labels per minute of labelled video" in caplog.records[1].getMessage()
    assert "at least 50.0 % of these pseudo-labels are false" in caplog.records[1].getMessage()


def test_rerun_of_finished_run_does_nothing(reference_run, tiny_data):
    out, report = reference_run
    before = (out / "stage2" / "last.pt").stat().st_mtime_ns
    again = run_selftrain(_config(tiny_data), out, progress=False)
    assert (out / "stage2" / "last.pt").stat().st_mtime_ns == before
    assert again["stage2"] == report["stage2"]


def test_a_stage_evaluated_with_another_naming_is_evaluated_again(reference_run, tiny_data, tmp_path):
    """An eval.json from before evaluations recorded their naming (the top class only) is not compared with stages
    named with today's top 5: a rerun evaluates that stage again, and trains nothing."""
    out, report = reference_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    legacy = json.loads((run / "stage1" / "eval.json").read_text())
    assert legacy.pop("naming") == OVConfig().to_dict()
    legacy["novel_only"]["novel"]["average_mAP"] = -1.0  # what a top-1 evaluation had measured
    (run / "stage1" / "eval.json").write_text(json.dumps(legacy))
    untouched = {p: p.stat().st_mtime_ns for p in (run / "stage1" / "last.pt", run / "stage2" / "last.pt",
                                                    run / "stage2" / "eval.json")}
    again = run_selftrain(_config(tiny_data), run, progress=False)
    assert again["stage1"] == report["stage1"] and again["stage2"] == report["stage2"]
    assert json.loads((run / "stage1" / "eval.json").read_text())["naming"] == OVConfig().to_dict()
    assert all(p.stat().st_mtime_ns == t for p, t in untouched.items())
    assert json.loads((run / "state.json").read_text())["done"].count("stage1.eval") == 1
    assert named_as_today({"naming": OVConfig().to_dict()}) and not named_as_today({})
    assert not named_as_today({"naming": OVConfig(topk=1).to_dict()})


def test_other_settings_on_existing_run_are_refused(reference_run, tiny_data):
    out, _ = reference_run
    cfg = _config(tiny_data)
    cfg.filter = FilterConfig(threshold=0.3)
    with pytest.raises(SelfTrainError, match="other settings.*filter"):
        run_selftrain(cfg, out, progress=False)


def _wait_for(proc, predicate, timeout=600):
    start = time.time()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"tal-selftrain ended (rc {proc.returncode}) before the kill point")
        if time.time() - start > timeout:
            raise AssertionError("kill point not reached in time")
        time.sleep(0.05)


def test_resume_after_sigkill_gives_the_same_result(reference_run, tiny_data, tmp_path):
    """Kill the CLI during pseudo-labelling, then during stage-2 training; the finished rerun matches."""
    ref_out, ref_report = reference_run
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "tal.cli.selftrain"] + _cli_args(tiny_data, out)
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the reference ran on one thread: same float reductions
    part = out / "pseudo_round1.candidates.json.parts" / "shard-00000-of-00001.jsonl"  # re-ranked by default
    for kill_point in (lambda: part.exists() and part.stat().st_size > 0,
                       lambda: (out / "stage2" / "last.pt").exists()):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_for(proc, kill_point)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    done = json.loads((out / "state.json").read_text())["done"]
    assert "stage2.eval" not in done
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("report.json") and "novel-only" in r.stdout

    ref = torch.load(ref_out / "stage2" / "last.pt", weights_only=True)
    got = torch.load(out / "stage2" / "last.pt", weights_only=True)
    assert ref["ema"].keys() == got["ema"].keys()
    assert all(torch.equal(ref["ema"][k], got["ema"][k]) for k in ref["ema"])
    pl_ref = json.loads((ref_out / "pseudo_round1.json").read_text())["database"]
    assert json.loads((out / "pseudo_round1.json").read_text())["database"] == pl_ref
    report = json.loads((out / "report.json").read_text())
    assert report["stage1"] == ref_report["stage1"] and report["stage2"] == ref_report["stage2"]


def test_empty_unlabelled_store_and_missing_vocab_are_clear_errors(tiny_data, tmp_path):
    from features.store import create_store

    empty = tmp_path / "empty.zarr"
    create_store(empty, dim=16, provenance={"encoder": "simulated", "pretrained": "random", "fps": 30.0,
                                            "window": 16, "stride": 4, "frame_step": 4}).close()
    cfg = _config(tiny_data)
    cfg.unlabeled_features = str(empty)
    with pytest.raises(SelfTrainError, match="empty.zarr: the unlabelled store holds no videos"):
        run_selftrain(cfg, tmp_path / "run", progress=False)
    cfg = _config(tiny_data)
    cfg.vocab = None
    with pytest.raises(SelfTrainError, match="--vocab"):
        run_selftrain(cfg, tmp_path / "run2", progress=False)


def test_pseudo_labels_for_videos_missing_from_the_stores_are_refused(reference_run, tiny_data, tmp_path):
    """Stage 2 given pseudo-labels without the store that holds their videos: one-line error naming them."""
    from click.testing import CliRunner

    from tal.cli.train import main

    out, _ = reference_run
    args = ["--features", str(tiny_data / "lab.zarr"), "--annotations", str(tiny_data / "lab.json"),
            "--pseudo", str(out / "pseudo_round1.json"), "--mode", "agnostic", "--preset", "small",
            "--out", str(tmp_path / "s2"), "--no-progress"]
    for item in TINY_SETS:
        args += ["--set", item]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "pseudo_round1.json" in r.output and "w000000" in r.output, r.output


@pytest.fixture(scope="module")
def chosen_run(tiny_data, tmp_path_factory):
    """The default rule (thresholds from cross-fitted stage-1 models), with the web truth, a ceiling and a floor;
    the ranking chosen on the held-out proposals (--rerank auto)."""
    out = tmp_path_factory.mktemp("st_chosen") / "run"
    cfg = _config(tiny_data, unlabeled_truth=str(tiny_data / "web.json"), ceiling=True, floor=True, rerank="auto",
                  recurrence_weight="auto", label_passes="auto")
    cfg.threshold_rule = ThresholdRule(precision=0.5, recall=0.9)
    return out, run_selftrain(cfg, out, progress=False)


def test_the_recurrence_weight_is_chosen_on_class_held_out_folds(chosen_run, tiny_data):
    from tal.crossfit import heldout_evidence
    from tal.eval.detection import evaluate_detection
    from tal.pseudo import agnostic_detections
    from tal.selftrain import CANDIDATE_FLOOR, stage_inputs

    out, report = chosen_run
    choice = json.loads((out / "unseen_classes" / "choice.json").read_text())
    assert report["recurrence_weight"] == {k: choice[k] for k in ("weight", "source", "ratio")}
    assert f"the recurrence weighs {choice['weight']:g}, the score {1 - choice['weight']:g} (chosen: models trained " \
           f"without some labelled classes find them {choice['ratio']:.2f} x as well" in format_table(report)
    folds = [json.loads((out / "unseen_classes" / f"fold{k}" / "unseen.json").read_text()) for k in range(2)]
    assert choice["class_folds"] == folds and choice["unseen_ap"] == pytest.approx(np.mean([f["ap"] for f in folds]))
    assert sorted(c for f in folds for c in f["held_out_classes"]) == sorted(TINY_SPLIT["base"])
    for k, fold in enumerate(folds):  # each fold model trained only on videos without its held-out classes
        trained = json.loads((out / "unseen_classes" / f"fold{k}" / "train.json").read_text())["database"]
        assert fold["train_videos"] == len(trained) > 0 and fold["instances"] > 0
        assert not {a["label"] for v in trained.values() for a in v["annotations"]} & set(fold["held_out_classes"])
    # against the threshold folds' held-out videos, all of whose classes their models trained on
    truth, proposals = heldout_evidence(stage_inputs(_config(tiny_data)), out / "thresholds", 2, CANDIDATE_FLOOR)
    seen = evaluate_detection(*agnostic_detections(truth, proposals), [0.5]).average_mAP
    assert seen > 0 and choice["seen_ap"] == pytest.approx(seen)
    assert choice["ratio"] == pytest.approx(choice["unseen_ap"] / seen)
    assert choice["weight"] == (0.8 if choice["ratio"] <= 0.5 else 0.5)  # tal.recurrence.choose_weight
    weak = choice["seen_ap"] < 0.2  # tal.recurrence.WEAK_CHECK_AP: the report and the table warn
    assert report.get("weak_class_check") == ({"seen_ap": choice["seen_ap"]} if weak else None)
    assert ("warning: the class check's fold models find few actions" in format_table(report)) == weak
    assert "warning: the class check" in format_table({**report, "weak_class_check": {"seen_ap": 0.05}})
    assert "warning: the class check" not in format_table({k: v for k, v in report.items() if k != "weak_class_check"})
    state = json.loads((out / "state.json").read_text())["done"]
    assert state.index("stage1.unseen") < state.index("round1.pseudo")
    prov = json.loads((out / "pseudo_round1.json").read_text())["provenance"]
    if prov["ranking"] == "recurrence":  # (--rerank auto may have kept the score's order)
        assert prov["recurrence_weight"] == choice
        assert prov["rerank"]["weight"] == choice["weight"]


def _epoch(run_dir) -> tuple:
    data = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]
    return data["epoch_clips"], data["pseudo_ratio"]


def test_label_passes_follow_the_class_check(chosen_run, tiny_data):
    """auto: the floor's passes over the labelled videos kept where held-out classes are found more than half as
    well, else every video once per epoch; the ceiling and the floor follow the later stages' choice."""
    out, report = chosen_run
    ratio = json.loads((out / "unseen_classes" / "choice.json").read_text())["ratio"]
    kept = ratio is not None and ratio > 0.5
    assert report["label_passes"]["passes"] == ("kept" if kept else "mixed")
    assert report["label_passes"]["ratio"] == ratio
    labelled, web = 24, 32
    for stage in ("stage2", "ceiling"):
        assert _epoch(out / stage) == ((labelled + 2 * web, pytest.approx(web / (labelled + 2 * web))) if kept
                                       else (None, None))
    assert _epoch(out / "floor") == (labelled + web + (web if kept else 0), None)
    assert f"label passes: {'kept' if kept else 'mixed'}" in format_table(report)


def test_label_passes_plan_reads_the_check_and_what_the_user_gave(tiny_data):
    from tal.selftrain import label_passes_plan

    auto = _config(tiny_data, label_passes="auto")
    assert label_passes_plan(auto, {"ratio": 0.76})["passes"] == "kept"
    assert label_passes_plan(auto, {"ratio": 0.5})["passes"] == "mixed"  # at most half as well: mixed
    assert label_passes_plan(auto, {"ratio": None})["passes"] == "mixed"  # no classes to hold out: no evidence
    assert label_passes_plan(auto, {"ratio": 0.76}, before_option=True)["passes"] == "mixed"
    for given in ({"pseudo_ratio": 0.5}, {"later_overrides": ["data.epoch_clips=100"]}):
        assert label_passes_plan(_config(tiny_data, label_passes="auto", **given), {"ratio": 0.9})["passes"] == "mixed"
        with pytest.raises(SelfTrainError, match="--label-passes kept sets stage 2's epoch itself"):
            _config(tiny_data, label_passes="kept", **given).validate()
    assert label_passes_plan(_config(tiny_data, label_passes="kept"), {"ratio": 0.1})["passes"] == "kept"


def test_kept_label_passes_train_the_floors_labelled_clips_plus_the_unlabelled(tiny_data, tmp_path):
    out = tmp_path / "run"
    report = run_selftrain(_config(tiny_data, label_passes="kept", floor=True), out, progress=False)
    assert report["label_passes"] == {"passes": "kept", "source": "given (--label-passes)"}
    assert _epoch(out / "stage2") == (24 + 64, pytest.approx(32 / 88)) and _epoch(out / "floor") == (88, None)
    assert _epoch(out / "stage1") == (None, None)


def test_a_run_started_before_label_passes_existed_goes_on_mixed(reference_run, tmp_path):
    """Its settings lack the option: resumed with the default (auto), nothing is trained again, no class check
    runs, and the report says its later stages trained every video once per epoch."""
    out = tmp_path / "run"
    shutil.copytree(reference_run[0], out)
    settings = json.loads((out / "selftrain.json").read_text())
    del settings["label_passes"]
    (out / "selftrain.json").write_text(json.dumps(settings))
    stamp = (out / "stage2" / "last.pt").stat().st_mtime_ns
    cfg = _config(Path(settings["labeled_features"][0]).parent, label_passes="auto")
    report = run_selftrain(cfg, out, progress=False)
    assert report["label_passes"]["passes"] == "mixed" and report["label_passes"]["source"].startswith("recorded")
    assert (out / "stage2" / "last.pt").stat().st_mtime_ns == stamp and not (out / "unseen_classes").exists()
    assert "(the run started before --label-passes existed)" in format_table(report)
    again = run_selftrain(dataclasses.replace(cfg, label_passes="mixed"), out, progress=False)  # what it ran: accepted
    assert again["label_passes"] == {"passes": "mixed", "source": "given (--label-passes)"}
    with pytest.raises(SelfTrainError, match="label_passes"):  # what it did not run: refused
        run_selftrain(dataclasses.replace(cfg, label_passes="kept"), out, progress=False)
    assert (out / "stage2" / "last.pt").stat().st_mtime_ns == stamp


def test_thresholds_chosen_on_held_out_videos_are_recorded_with_why(chosen_run):
    out, report = chosen_run
    choice = json.loads((out / "thresholds" / "choice.json").read_text())
    prov = json.loads((out / "pseudo_round1.json").read_text())["provenance"]
    assert prov["threshold"] == choice["threshold"] == report["threshold"]
    assert prov["ignore_threshold"] == choice["ignore_threshold"] <= choice["threshold"]
    assert prov["threshold_choice"] == choice and "held-out" in prov["threshold_source"]
    folds = [json.loads((out / "thresholds" / f"fold{k}" / "heldout.json").read_text()) for k in range(2)]
    assert choice["heldout_instances"] == sum(f["num_instances"] for f in folds) > 0
    # the two folds trained on disjoint halves of the 24 labelled videos
    halves = [set(json.loads((out / "thresholds" / f"fold{k}" / "train.json").read_text())["database"])
              for k in range(2)]
    assert not halves[0] & halves[1] and len(halves[0] | halves[1]) == 24
    state = json.loads((out / "state.json").read_text())["done"]
    assert state.index("stage1.thresholds") < state.index("round1.pseudo")


def test_auto_ranking_is_chosen_on_the_held_out_proposals_and_recorded(chosen_run, tiny_data):
    from tal.crossfit import heldout_evidence
    from tal.recurrence import RecurrenceConfig, choose_rerank
    from tal.selftrain import CANDIDATE_FLOOR

    out, _ = chosen_run
    choice = json.loads((out / "thresholds" / "rerank.json").read_text())
    prov = json.loads((out / "pseudo_round1.json").read_text())["provenance"]
    # "ranking" is recorded only when it is not the score's (as before --rerank: old parts folders resume)
    assert prov["rerank_choice"] == choice and prov.get("ranking", "score") == choice["chosen"]
    # the fold models' proposals on the videos they held out, every labelled video once
    truth, proposals = heldout_evidence(stage_inputs(_config(tiny_data)), out / "thresholds", 2, CANDIDATE_FLOOR)
    assert _config(tiny_data).rerank == "recurrence"  # the default; auto is measured in docs/selftrain.md
    assert sorted(proposals.videos) == sorted(truth.videos) and len(truth.videos) == 24
    # on the proposals the unlabelled candidates are cut at: none below CANDIDATE_FLOOR
    assert min(s.score for v in proposals.videos.values() for s in v.segments) >= CANDIDATE_FLOOR
    weight = json.loads((out / "unseen_classes" / "choice.json").read_text())["weight"]  # (the run's: auto)
    assert choice == choose_rerank(truth, proposals, [str(tiny_data / "lab.zarr")],
                                   RecurrenceConfig(seed=0, weight=weight), progress=False, what=str(out / "thresholds"))
    assert choice["chosen"] == max(("score", "recurrence"), key=lambda k: (choice["heldout_ap"][k], k == "score"))
    assert (out / "pseudo_round1.reranked.json").exists() == (choice["chosen"] == "recurrence")


def test_ceiling_floor_and_recovery_are_reported(chosen_run, tiny_data):
    out, report = chosen_run
    for stage in ("ceiling", "floor"):
        assert report[stage] == summarize(json.loads((out / stage / "eval.json").read_text()))
    # the ceiling trained on the web videos' truth, the floor on the labels alone at stage 2's compute
    truth = json.loads((out / "ceiling_labels.json").read_text())["database"]
    web = json.loads((tiny_data / "web.json").read_text())["database"]
    assert {v: [a["segment"] for a in x["annotations"]] for v, x in truth.items()} == \
        {v: [a["segment"] for a in x["annotations"]] for v, x in web.items()}
    floor = torch.load(out / "floor" / "last.pt", weights_only=True)
    extra = 32 if report["label_passes"]["passes"] == "kept" else 0  # as many clips as stage 2 trains
    assert floor["inputs"]["pseudo"] == [] and floor["config"]["data"]["epoch_clips"] == 24 + 32 + extra
    for label, keys in PROTOCOL_ROWS:
        s1, s2, top, low = (_lookup(report[k], keys) for k in ("stage1", "stage2", "ceiling", "floor"))
        if top > s1:
            assert report["recovery"][label] == pytest.approx((s2 - s1) / (top - s1))
        if top > low:  # the unlabelled videos' share at equal training time
            assert report["recovery_over_floor"][label] == pytest.approx((s2 - low) / (top - low))
        else:
            assert math.isnan(report["recovery_over_floor"][label])
    quality = report["counts"]["pseudo_label_details"]["round1.pseudo"]["quality"]
    novel = json.loads((tiny_data / "split.json").read_text())["novel"]
    assert quality == pseudo_label_quality(out / "pseudo_round1.json", tiny_data / "web.json", novel=novel)
    # recall of base and of novel instances apart: together they make the overall recall
    n = {g: quality[f"true_actions {g}"] for g in ("base", "novel")}
    assert n["base"] + n["novel"] == quality["true_actions"] and min(n.values()) > 0
    recalled = sum(quality[f"recall@0.5 {g}"] * n[g] for g in n)
    assert recalled == pytest.approx(quality["recall@0.5"] * quality["true_actions"])
    assert f"novel {quality['recall@0.5 novel']:.3f}" in format_table(report)
    table = format_table(report)
    assert "recovered" in table and "over floor" in table and f"precision {quality['precision@0.5']:.3f}" in table


def test_table_compares_the_last_stage_with_stage_1():
    # --rounds 2: the change column is stage 3 - stage 1 (what the run gained), not stage 2 - stage 1
    report = {f"stage{k}": {"novel_only": v} for k, v in ((1, 0.10), (2, 0.12), (3, 0.15))}
    report["ceiling"] = {"novel_only": 0.30}
    head, _, row = format_table(report).splitlines()
    assert head.split()[-1] == "3-1" and "Δ 2-1" not in head
    assert row.split()[-1] == "+5.00" and row.split()[1:4] == ["10.00", "12.00", "15.00"]
    assert "Δ" not in format_table({"stage1": {"novel_only": 0.1}, "floor": {"novel_only": 0.2}}).splitlines()[0]


@pytest.mark.parametrize("per_round", [True, False])
def test_later_rounds_choose_their_threshold_for_the_stage_that_pseudo_labels(tiny_data, tmp_path, per_round):
    out = tmp_path / "run"
    cfg = _config(tiny_data)
    cfg.rounds, cfg.tests = 2, []
    cfg.threshold_rule = ThresholdRule(precision=0.5, recall=0.9, per_round=per_round)
    run_selftrain(cfg, out, progress=False)
    prov = [json.loads((out / f"pseudo_round{k}.json").read_text())["provenance"] for k in (1, 2)]
    first = json.loads((out / "thresholds" / "choice.json").read_text())
    assert prov[0]["threshold_choice"] == first and first["stage"] == 1
    state = json.loads((out / "state.json").read_text())["done"]
    if not per_round:  # round 1's thresholds, reused
        assert prov[1]["threshold_choice"] == first and not (out / "thresholds_stage2").exists()
        assert "stage2.thresholds" not in state
        return
    again = json.loads((out / "thresholds_stage2" / "choice.json").read_text())
    assert prov[1]["threshold_choice"] == again and again["stage"] == 2 and "stage 2" in prov[1]["threshold_source"]
    assert prov[1]["threshold"] == again["threshold"] != first["threshold"]
    assert state.index("stage2.train") < state.index("stage2.thresholds") < state.index("round2.pseudo")
    for k in range(2):
        # stage 2's recipe on the same folds as round 1's, with round 1's pseudo-labels
        fold = torch.load(out / "thresholds_stage2" / f"fold{k}" / "last.pt", weights_only=True)
        assert fold["inputs"]["pseudo"] == [str(out / "pseudo_round1.json")]
        assert str(tiny_data / "web.zarr") in fold["inputs"]["features"]
        assert (out / "thresholds_stage2" / f"fold{k}" / "train.json").read_text() == \
            (out / "thresholds" / f"fold{k}" / "train.json").read_text()
        assert json.loads((out / "thresholds_stage2" / f"fold{k}" / "heldout.json").read_text()) != \
            json.loads((out / "thresholds" / f"fold{k}" / "heldout.json").read_text())


def test_later_rounds_stop_where_their_pseudo_labels_outgrow_the_human_labels(tiny_data, tmp_path, caplog):
    runs = {}
    for limit in (1e-6, 1e6):  # below any density: round 2 stops; above any: it trains
        cfg = _config(tiny_data, stop_density=limit)
        cfg.rounds, cfg.tests = 2, []
        runs[limit] = (tmp_path / f"run{limit:g}", cfg)
        with caplog.at_level("WARNING", logger="tal.selftrain"):
            report = run_selftrain(cfg, runs[limit][0], progress=False)
        runs[limit] += (report,)
    out, cfg, report = runs[1e-6]
    ratio = report["counts"]["pseudo_label_details"]["round2.pseudo"]["density_ratio"]
    assert report["stopped"] == {"before_stage": 3, "step": "round2.pseudo", "density_ratio": ratio,
                                 "stop_density": 1e-6}
    assert (out / "pseudo_round2.json").exists() and not (out / "stage3").exists()
    assert "stage3.train" not in json.loads((out / "state.json").read_text())["done"]
    assert any("stage 3 is not trained, stage 2 is the last" in r.getMessage() for r in caplog.records)
    assert f"stopped before stage 3: round2.pseudo's pseudo-labels are {ratio:.2f} x" in format_table(report)
    assert run_selftrain(cfg, out, progress=False)["stopped"] == report["stopped"]  # a rerun stops alike
    # round 1's stage trains whatever its density: stopping there would be no self-training at all
    assert report["counts"]["pseudo_label_details"]["round1.pseudo"]["density_ratio"] > 1e-6
    assert (out / "stage2" / "last.pt").exists()
    out, _, report = runs[1e6]
    assert "stopped" not in report and (out / "stage3" / "last.pt").exists()
    for bad, rounds in ((0.0, 2), (1.0, 1)):  # no limit at all; a limit with no round for it to stop
        cfg = _config(tiny_data, stop_density=bad)
        cfg.rounds = rounds
        with pytest.raises(SelfTrainError, match="stop-density"):
            run_selftrain(cfg, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_auto_rounds_follow_the_class_check(chosen_run, tiny_data, tmp_path):
    import shutil

    from tal.selftrain import AUTO_ROUNDS, AUTO_STOP_DENSITY, round_plan

    auto = _config(tiny_data, rounds="auto", recurrence_weight="auto")
    # the rule: more rounds where held-out classes are found at most half as well as held-out videos
    assert (round_plan(auto, {"ratio": 0.5})["rounds"], round_plan(auto, {"ratio": 0.5})["stop_density"]) == \
        (AUTO_ROUNDS, AUTO_STOP_DENSITY) == (3, 1.0)
    for ratio in (0.51, 2.0, None):  # found well, or no classes to hold out: one round, nothing to stop
        assert (round_plan(auto, {"ratio": ratio})["rounds"], round_plan(auto, {"ratio": ratio})["stop_density"]) == \
            (1, None)
    given_limit = round_plan(dataclasses.replace(auto, stop_density=2.0), {"ratio": 0.2})
    assert given_limit["stop_density"] == 2.0 and "more than 2 x as dense" in given_limit["rule"]
    assert round_plan(_config(tiny_data, rounds=2), {"ratio": 0.2})["rounds"] == 2  # a given count is kept
    # runs from the chosen run's stage 1 and class check, its recorded ratio set to either side of the limit
    src, _ = chosen_run
    cfg = dataclasses.replace(auto, tests=[], threshold_rule=ThresholdRule(precision=0.5, recall=0.9))
    for ratio, rounds in ((0.3, 3), (0.9, 1)):
        out = tmp_path / f"run{ratio}"
        for part in ("stage1", "thresholds", "unseen_classes"):
            shutil.copytree(src / part, out / part)
        choice = json.loads((out / "unseen_classes" / "choice.json").read_text())
        (out / "unseen_classes" / "choice.json").write_text(json.dumps({**choice, "ratio": ratio}))
        (out / "state.json").write_text(json.dumps({"done": ["stage1.train", "stage1.unseen"]}))
        report = run_selftrain(cfg, out, progress=False)
        assert report["rounds"] == rounds and report["rounds_choice"] == round_plan(cfg, {"ratio": ratio})
        trained = [k for k in range(2, 5) if (out / f"stage{k}" / "last.pt").exists()]
        details = report["counts"]["pseudo_label_details"]
        if rounds == 1:
            assert trained == [2] and list(details) == ["round1.pseudo"] and "stopped" not in report
        else:  # every later round trained unless its pseudo-labels were denser than the human labels
            stop = report.get("stopped")
            assert trained == list(range(2, (stop["before_stage"] if stop else 5)))
            assert all(details[f"round{k - 1}.pseudo"]["density_ratio"] <= 1.0 for k in trained if k > 2)
            assert not stop or (stop["stop_density"] == 1.0 and stop["density_ratio"] > 1.0)
        assert f"rounds: {rounds}" in format_table(report) and f"the class check's ratio {ratio:.2f}" in \
            format_table(report)


def test_recurrence_reranks_the_proposals_before_the_thresholds_cut_them(tiny_data, tmp_path):
    from tal.data.annotations import load_annotations
    from tal.pseudo import refilter
    from tal.selftrain import CANDIDATE_FLOOR

    out = tmp_path / "run"
    cfg = _config(tiny_data, rerank="recurrence", recurrence_weight=0.8)
    cfg.tests = []
    run_selftrain(cfg, out, progress=False)
    cands = load_annotations(out / "pseudo_round1.candidates.json")
    ranked = load_annotations(out / "pseudo_round1.reranked.json")
    assert cands.provenance["threshold"] == CANDIDATE_FLOOR < cfg.filter.threshold
    scores = sorted(s.score for v in cands.videos.values() for s in v.segments)
    scores += [r[2] for v in cands.videos.values() for r in v.ignore]
    # every candidate keeps a place; the scores are the same, handed out in the new order
    assert sorted(s.score for v in ranked.videos.values() for s in v.segments) == pytest.approx(sorted(scores))
    assert ranked.provenance["rerank"]["method"] == "recurrence"
    assert ranked.provenance["rerank"]["candidates"] == len(scores) and ranked.provenance["rerank"]["weight"] == 0.8
    # the pseudo-labels are the re-ranked candidates cut by the same filter, and say so
    refilter(out / "pseudo_round1.reranked.json", tmp_path / "again.json", cfg.filter)
    pl = json.loads((out / "pseudo_round1.json").read_text())
    assert pl["database"] == json.loads((tmp_path / "again.json").read_text())["database"]
    assert pl["provenance"]["rerank"] == ranked.provenance["rerank"] and pl["provenance"]["ranking"] == "recurrence"
    assert torch.load(out / "stage2" / "last.pt", weights_only=True)["inputs"]["pseudo"] == \
        [str(out / "pseudo_round1.json")]


def test_a_run_recorded_before_precision_of_existed_resumes_with_the_rule_it_used(tiny_data, tmp_path):
    cfg = _config(tiny_data)
    cfg.threshold_rule = ThresholdRule(precision_of="local")
    assert SelfTrainConfig.from_dict(cfg.to_dict()).threshold_rule.precision_of == "local"
    recorded = cfg.to_dict()
    del recorded["threshold_rule"]["precision_of"]  # as such runs wrote it: the kept set's precision was the rule
    del recorded["threshold_rule"]["per_round"]  # and round 1's thresholds were reused
    del recorded["rerank"]  # and the proposals were ranked by score
    del recorded["recurrence_weight"]  # (re-ranked runs weighed the recurrence as the score, 0.5)
    old = SelfTrainConfig.from_dict(recorded)
    assert old.threshold_rule.precision_of == "kept" and old.threshold_rule.per_round is False
    assert old.rerank == "score" and old.recurrence_weight == 0.5
    # such a run directory resumes with today's equivalent settings, and is still refused with other ones
    out = tmp_path / "run"
    out.mkdir()
    (out / "selftrain.json").write_text(json.dumps(recorded))
    cfg.threshold_rule, cfg.rerank = ThresholdRule(precision_of="kept"), "score"
    RunState(out, cfg)
    RunState(out, dataclasses.replace(cfg, recurrence_weight="auto"))  # today's default: no weight where no re-ranking
    other = _config(tiny_data, init="ema", rerank="score")
    other.threshold_rule = cfg.threshold_rule
    with pytest.raises(SelfTrainError, match=r"other settings \(init: 'none' recorded, 'ema' given\)"):
        RunState(out, other)
    (out / "selftrain.json").write_text(json.dumps({**recorded, "rounds_per_epoch": 3}))  # not tal-selftrain's
    with pytest.raises(SelfTrainError, match="selftrain.json: not the settings of a tal-selftrain run"):
        RunState(out, cfg)


def test_auto_ranking_without_held_out_folds_is_refused(tiny_data, tmp_path):
    with pytest.raises(SelfTrainError, match="--rerank auto chooses on the held-out videos of the threshold rule"):
        run_selftrain(_config(tiny_data, rerank="auto"), tmp_path / "run", progress=False)
    with pytest.raises(SelfTrainError, match=r"--recurrence-weight must be auto or lie in \[0, 1\], got 1.5"):
        run_selftrain(_config(tiny_data, recurrence_weight=1.5), tmp_path / "run", progress=False)
    for bad in ("two", True, 2.5, -1):  # a bool is an int to Python, not a count of rounds
        with pytest.raises(SelfTrainError, match=r"--rounds must be auto or an integer >= 0, got " + repr(bad)):
            run_selftrain(_config(tiny_data, rounds=bad), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_stage_options_do_not_leak_into_stage_1(tiny_data):
    cfg = _config(tiny_data, pseudo_ratio=0.5, pseudo_weight="1", later_overrides=["train.epochs=1"])
    first, later = stage_run_config(cfg, later=False), stage_run_config(cfg, later=True)
    assert first.data.pseudo_ratio is None and first.data.pseudo_weight == "score" and first.train.epochs == 2
    assert later.data.pseudo_ratio == 0.5 and later.data.pseudo_weight == "1" and later.train.epochs == 1


def test_test_videos_missing_from_the_store_are_refused_unless_skipped(reference_run, tiny_data, tmp_path):
    from tal.data.annotations import AnnotationSet, Segment, VideoAnnotation, load_annotations, write_official

    gt = load_annotations(tiny_data / "test.json")
    extra = {f"gone{i}": VideoAnnotation(f"gone{i}", "testing", 10.0, 30.0, [Segment(1.0, 2.0, "jump")])
             for i in range(3)}
    write_official(AnnotationSet({**gt.videos, **extra}), tmp_path / "test_more.json")
    cfg = _config(tiny_data)
    cfg.tests = [EvalSet(str(tiny_data / "test.zarr"), str(tmp_path / "test_more.json"))]
    ckpt = reference_run[0] / "stage1" / "last.pt"
    with pytest.raises(SelfTrainError, match="3 of 15 annotated videos are not in"):
        evaluate_stage(ckpt, cfg)
    cfg.skip_missing = True
    result = evaluate_stage(ckpt, cfg)
    assert result["generalized"]["videos_missing"] == 3 and result["generalized"]["videos_scored"] == 12


def test_a_bad_override_fails_before_the_run_directory_records_settings(tiny_data, tmp_path):
    from tal.config import ConfigError

    cfg = _config(tiny_data)
    cfg.later_overrides = ["train.lr=abc"]
    with pytest.raises(ConfigError, match="train.lr"):
        run_selftrain(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "selftrain.json").exists()  # the corrected command can use the same --out
