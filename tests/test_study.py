"""`make study` on a tiny simulated benchmark: ceiling recovery, ablations from a shared stage 1, scaling at
fixed compute and mix, the τ sweep, resuming, and tasks in their own processes."""

import collections
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tal.config import load_config
from tal.data.annotations import load_annotations
from tal.selftrain import stage_names
from tal.study import (StudySettings, ablation_config, collect, format_percent, main_config, run_study,
                       task_dependencies, task_dir)
from test_pseudo import TINY_SETS

SIZES = {"curated_train": 10, "web": 8, "curated_test": 6, "web_test": 6}


def tiny_settings(**kw) -> StudySettings:
    base = dict(seeds=[0, 1], ablations=["ignore", "rounds-2", "oracle-selection", "oracle-selection-w1"],
                scale=[0, 4, 12], taus=[0.2],
                overrides=list(TINY_SETS), counts=dict(SIZES))
    base.update(kw)
    return StudySettings(**base)


def _value(summary: dict, keys) -> float:
    for key in keys:
        summary = summary[key]
    return summary


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    return out, run_study(out, tiny_settings(), progress=False)


def test_headline_is_the_ceiling_recovery_of_every_seed(study):
    out, result = study
    assert result["simulated"] and result["seeds_done"] == [0, 1]
    for label, keys in (("novel-only", ("novel_only",)), ("base (generalized)", ("generalized", "base"))):
        for start, key in (("stage1", "recovery"), ("floor", "recovery_floor")):  # over stage 1 / over the floor
            per_seed = []
            for seed in (0, 1):
                report = json.loads((task_dir(out, f"main:{seed}") / "report.json").read_text())
                last = stage_names(report)[-1]  # the self-trained model: the last of the rounds the run chose
                s1, s2, top = (_value(report[stage], keys) for stage in (start, last, "ceiling"))
                per_seed.append((s2 - s1) / (top - s1) if top > s1 else float("nan"))
            row = result["main"][label][key]
            finite = [r for r in per_seed if r == r]
            assert row["n"] == len(finite) and (not finite or row["mean"] == pytest.approx(sum(finite) / len(finite)))
        reports = [json.loads((task_dir(out, f"main:{seed}") / "report.json").read_text()) for seed in (0, 1)]
        up = sum(_value(r[stage_names(r)[-1]], keys) > _value(r["stage1"], keys) for r in reports)
        assert result["main"][label]["seeds_up"] == {"up": up, "n": 2}
    ratio = result["stage1_novel_base_ratio"]
    assert set(ratio["per_seed"]) == {0, 1}
    assert result["pseudo_quality"]["precision@0.5"]["n"] == 2
    text = (out / "study.txt").read_text()
    assert "SIMULATED" in text and "recovered" in text and "over floor" in text
    assert "novel / base" in text and "rounds-2" in text and "seeds up" in text
    for seed in (0, 1):  # the rounds each main run chose (from its class check) and trained
        report = json.loads((task_dir(out, f"main:{seed}") / "report.json").read_text())
        assert result["rounds"][seed] == {"rounds": report["rounds"], "trained": len(stage_names(report)) - 1,
                                          "ratio": report["rounds_choice"]["ratio"]}
    assert "rounds per seed (chosen / trained): 0: " in text
    density = {s: result["pseudo_density"][s] for s in (0, 1)}  # what tal-selftrain recorded for the main runs
    assert density == {s: json.loads((task_dir(out, f"main:{s}") / "report.json").read_text())["counts"]
                       ["pseudo_label_details"]["round1.pseudo"]["density_ratio"] for s in (0, 1)}
    assert "per seed: 0: " + f"{density[0]:.2f}, 1: {density[1]:.2f}" in text
    for name in ("study_stages.png", "study_scaling.png", "study_tau.png"):
        assert (out / name).stat().st_size > 1000


def test_ablations_start_from_the_main_runs_stage_1(study):
    out, result = study
    for seed in (0, 1):
        main = task_dir(out, f"main:{seed}")
        for name in ("ignore", "rounds-2"):
            variant = task_dir(out, f"ablation:{seed}:{name}")
            assert (variant / "stage1" / "last.pt").read_bytes() == (main / "stage1" / "last.pt").read_bytes()
        # the default has no ignore regions; the ignore ablation's start at or below τ
        plain = json.loads((main / "pseudo_round1.json").read_text())
        assert plain["provenance"]["ignore_threshold"] is None
        assert not any(v.get("ignore") for v in plain["database"].values())
        ignoring = json.loads((task_dir(out, f"ablation:{seed}:ignore") / "pseudo_round1.json").read_text())
        assert ignoring["provenance"]["ignore_threshold"] <= ignoring["provenance"]["threshold"]
        rounds = json.loads((task_dir(out, f"ablation:{seed}:rounds-2") / "report.json").read_text())
        assert "stage3" in rounds and rounds["stage2"] == json.loads((main / "report.json").read_text())["stage2"]
    assert result["ablations"]["rounds-2"]["novel-only"]["n"] == 2


def test_oracle_selection_keeps_exactly_the_stage1_proposals_that_hit_the_truth(study):
    from tal.pseudo import pseudo_label_quality

    out, result = study
    for seed in (0, 1):
        folder = task_dir(out, f"ablation:{seed}:oracle-selection")
        truth = out / f"data_seed{seed}" / "web.json"
        candidates = json.loads((folder / "candidates.json").read_text())["database"]
        chosen = json.loads((folder / "pseudo.json").read_text())["database"]
        offered = {(v, tuple(a["segment"])) for v, e in candidates.items() for a in e["annotations"]}
        kept = {(v, tuple(a["segment"])) for v, e in chosen.items() for a in e["annotations"]}
        assert kept and kept <= offered and not any(e.get("ignore") for e in chosen.values())
        quality = pseudo_label_quality(folder / "pseudo.json", truth)
        assert quality["precision@0.5"] == 1.0
        assert quality["recall@0.5"] <= pseudo_label_quality(folder / "candidates.json", truth)["recall@0.5"]
        # the weight-1 variant trains on the same selection, each pseudo-label weighing 1
        unweighted = task_dir(out, f"ablation:{seed}:oracle-selection-w1")
        assert json.loads((unweighted / "pseudo.json").read_text())["database"] == chosen
        for folder_, weight in ((folder, "score"), (unweighted, "1")):
            config = yaml.safe_load((folder_ / "stage2" / "config.yaml").read_text())
            assert config["data"]["pseudo_weight"] == weight
    assert result["ablations"]["oracle-selection"]["round1.pseudo quality"]["precision@0.5"]["mean"] == 1.0


def test_local_precision_ablations_change_only_the_rule_and_the_weight(tmp_path):
    paths = collections.defaultdict(lambda: str(tmp_path / "unused"))  # configs only: nothing is read
    main = main_config(paths, 0, tiny_settings())
    local, local_w1 = ablation_config(main, "precision-local"), ablation_config(main, "precision-local-w1")
    assert main.threshold_rule.precision_of == "kept"
    assert local.threshold_rule == local_w1.threshold_rule == \
        type(main.threshold_rule)(**{**main.threshold_rule.to_dict(), "precision_of": "local"})
    assert (local.pseudo_weight, local_w1.pseudo_weight) == (main.pseudo_weight, "1")
    assert not local.ceiling and not local.floor and local.filter == main.filter


def test_soft_noisy_per_round_and_rerank_ablations_change_only_their_setting(tmp_path):
    paths = collections.defaultdict(lambda: str(tmp_path / "unused"))  # configs only: nothing is read
    main = main_config(paths, 0, tiny_settings())
    soft, noisy = ablation_config(main, "soft"), ablation_config(main, "noisy")
    once, again = ablation_config(main, "rounds-2"), ablation_config(main, "rounds-2-per-round")
    assert main.rounds == "auto" and ablation_config(main, "rounds-1").rounds == 1
    assert once.rounds == again.rounds == 2 and ablation_config(main, "rounds-3").rounds == 3
    stop = ablation_config(main, "rounds-3-stop")
    assert (stop.rounds, stop.stop_density, main.stop_density) == (3, 1.0, None)
    assert not main.threshold_rule.per_round and once.threshold_rule == main.threshold_rule
    assert again.threshold_rule == dataclasses.replace(main.threshold_rule, per_round=True)
    for name in ("rounds-2-per-round", "rounds-3"):
        assert task_dependencies(f"ablation:0:{name}") == ["main:0"]  # it shares the main run's stage 2
    assert main.pseudo_weight is None and load_config("small").data.pseudo_weight == "score"  # the default
    by_score, by_auto = ablation_config(main, "rerank-score"), ablation_config(main, "rerank-auto")
    assert (main.rerank, by_score.rerank, by_auto.rerank) == ("recurrence", "score", "auto")
    assert dataclasses.replace(by_score, rerank="recurrence") == dataclasses.replace(by_auto, rerank="recurrence") == \
        dataclasses.replace(main, ceiling=False, floor=False)
    equal, heavy = ablation_config(main, "recurrence-0.5"), ablation_config(main, "recurrence-0.8")
    assert (main.recurrence_weight, equal.recurrence_weight, heavy.recurrence_weight) == ("auto", 0.5, 0.8)
    for fixed in (equal, heavy):  # the two weights auto chooses between, nothing else changed
        assert dataclasses.replace(fixed, recurrence_weight="auto") == dataclasses.replace(main, ceiling=False,
                                                                                         floor=False)
    assert soft.pseudo_weight == "soft"
    assert noisy.later_overrides == list(main.later_overrides) + ["model.dropout=0.1", "model.droppath=0.3"]
    for variant in (soft, noisy):
        assert variant.threshold_rule == main.threshold_rule and variant.filter == main.filter
        assert not variant.ceiling and not variant.floor


def test_scaling_keeps_compute_and_mix_and_nests_the_web_videos(study):
    out, result = study
    assert sorted(result["scaling"], key=float) == ["0", "4", "12"]
    assert result["scaling"]["0"] == json.loads((task_dir(out, "main:0") / "report.json").read_text())["stage1"]
    cfg = yaml.safe_load((task_dir(out, "scale:0:12") / "stage2" / "config.yaml").read_text())
    # the main run's stage-2 epoch: 10 labelled + 8 web videos, and 8 more labelled clips where it kept the passes
    kept = json.loads((task_dir(out, "base:0") / "result.json").read_text())["label_passes"]["passes"] == "kept"
    clips = 18 + (8 if kept else 0)
    assert cfg["data"]["pseudo_ratio"] == pytest.approx(8 / clips) and cfg["data"]["epoch_clips"] == clips
    main = yaml.safe_load((task_dir(out, "main:0") / "stage2" / "config.yaml").read_text())["data"]
    assert (main["epoch_clips"] or 18, main["pseudo_ratio"] or 8 / 18) == (clips, pytest.approx(8 / clips))
    counts = [result["scaling"][n]["pseudo_quality"]["true_actions"] for n in ("4", "12")]
    assert counts[0] < counts[1]  # more unlabelled videos, more (nested) truth behind the pseudo-labels
    # the default re-ranks the web proposals; each point re-ranks its own first N videos among themselves
    ranked = {n: load_annotations(task_dir(out, f"scale:0:{n}") / "reranked.json") for n in (4, 12)}
    assert [len(ranked[n].videos) for n in (4, 12)] == [4, 12]
    assert all(result["scaling"][str(n)]["ranking"] == "recurrence" for n in (4, 12))
    first = list(ranked[4].videos)
    scores = {n: [s.score for v in first for s in ranked[n].videos[v].segments] for n in (4, 12)}
    assert len(scores[4]) == len(scores[12]) and scores[4] != scores[12]
    assert result["tau_sweep"]["0.2"]["pseudo_labels"] > 0


def test_rerun_collects_without_training_and_other_settings_are_refused(study):
    out, result = study
    stamp = (task_dir(out, "main:0") / "result.json").stat().st_mtime_ns
    again = run_study(out, tiny_settings(), progress=False)
    assert (task_dir(out, "main:0") / "result.json").stat().st_mtime_ns == stamp
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731 (nan == nan)
    assert same(again["main"], result["main"])
    with pytest.raises(Exception, match="other settings.*taus"):
        run_study(out, tiny_settings(taus=[0.3]), progress=False)
    assert same(collect(out, tiny_settings())["main"], again["main"])


def test_a_task_evaluated_with_another_naming_runs_again_without_training(study, monkeypatch):
    """A main run's result and stage evaluations from before evaluations recorded their naming are evaluated again
    (not mixed with tasks named with today's top 5); nothing is trained again and the figures are today's. The
    main run's copy of stage 1 takes the base task's fresh evaluation instead of evaluating that checkpoint again."""
    import tal.selftrain

    out, result = study
    folder, files, base = task_dir(out, "main:0"), task_dir(out, "scale-pl:0") / "result.json", task_dir(out, "base:0")
    cached = json.loads((folder / "result.json").read_text())
    checkpoints = {p: p.stat().st_mtime_ns for p in folder.glob("*/last.pt")}
    for path in [folder / "result.json", *folder.glob("*/eval.json"), files, base / "result.json",
                 base / "stage1" / "eval.json"]:
        legacy = json.loads(path.read_text())
        del legacy["naming"]
        path.write_text(json.dumps(legacy))
    stamp = files.stat().st_mtime_ns
    evaluated, evaluate = [], tal.selftrain.evaluate_stage
    monkeypatch.setattr(tal.selftrain, "evaluate_stage", lambda ckpt, *a, **k: evaluated.append(Path(ckpt)) or
                        evaluate(ckpt, *a, **k))
    again = run_study(out, tiny_settings(), progress=False)
    assert evaluated.count(base / "stage1" / "last.pt") == 1 and folder / "stage1" / "last.pt" not in evaluated
    assert (folder / "stage1" / "eval.json").read_text() == (base / "stage1" / "eval.json").read_text()
    assert files.stat().st_mtime_ns == stamp  # a pseudo-label task holds no evaluation: it does not run again
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731 (nan == nan)
    assert same(json.loads((folder / "result.json").read_text()), cached) and same(again["main"], result["main"])
    assert all(json.loads(p.read_text())["naming"] == cached["naming"] for p in folder.glob("*/eval.json"))
    assert again["naming"] == cached["naming"]  # study.json says once how every figure in it was named
    assert checkpoints and all(p.stat().st_mtime_ns == t for p, t in checkpoints.items())


def test_stage2_tasks_follow_the_main_runs_label_passes_unless_they_set_the_epoch(tmp_path):
    from tal.study import _passes

    cfg = main_config(collections.defaultdict(lambda: str(tmp_path / "unused")), 0, tiny_settings())
    kept = {"label_passes": {"passes": "kept"}}
    assert _passes(cfg, kept) == "kept" and _passes(cfg, {"label_passes": {"passes": "mixed"}}) == "mixed"
    assert _passes(cfg, {}) == "mixed"  # a base result from before the option: its runs trained mixed
    assert _passes(dataclasses.replace(cfg, pseudo_ratio=0.5), kept) == "mixed"  # the ratio-0.5 ablation
    assert _passes(dataclasses.replace(cfg, later_overrides=["data.epoch_clips=10"]), kept) == "mixed"


def test_cli_runs_tasks_in_parallel_processes(tmp_path):
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "tal.study", "--out", str(out), "--seeds", "4", "--ablations", "weight-1,in-domain",
           "--scale", "", "--taus", "", "--sizes", "curated_train=8,web=6,curated_test=4,web_test=4",
           "--jobs", "2", "--no-progress"] + [a for item in TINY_SETS for a in ("--set", item)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out / "study.json")
    result = json.loads((out / "study.json").read_text())
    assert result["seeds_done"] == [4] and set(result["ablations"]) == {"weight-1", "in-domain"}
    assert "novel-only own ceiling" in result["ablations"]["in-domain"]
    for task in ("main_4", "ablation_4_weight-1"):
        assert "done" in (out / "logs" / f"{task}.log").read_text()  # each task ran in its own process


@pytest.mark.parametrize("args, message", [(["--sizes", "web=0"], "--sizes"), (["--seeds", "a"], "integers"),
                                           (["--ablations", "nope"], "unknown ablation")])
def test_bad_options_are_usage_errors(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-m", "tal.study", "--out", str(tmp_path)] + args, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_proposal_recall_counts_top_k_matches_per_class_group():
    from tal.data.annotations import AnnotationSet, Segment, VideoAnnotation
    from tal.eval.predictions import Detection

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from proposal_recall import recall_at_k

    gt = AnnotationSet({"v": VideoAnnotation("v", "testing", 100.0, None, [
        Segment(10, 20, "run"), Segment(40, 50, "swim"), Segment(70, 80, "swim")])})
    props = {"v": [Detection("action", 0.9, 41, 50), Detection("action", 0.8, 0, 5),
                   Detection("action", 0.7, 10, 19), Detection("action", 0.1, 70, 80)]}
    assert recall_at_k(gt, props, ["run"], 3, 0.5) == (1.0, 1)
    assert recall_at_k(gt, props, ["swim"], 3, 0.5) == (0.5, 2)   # the 4th proposal is outside the top 3
    assert recall_at_k(gt, props, ["swim"], 4, 0.5) == (1.0, 2)
    assert recall_at_k(gt, props, ["swim"], 1, 0.95) == (0.0, 2)  # tIoU 0.9 < 0.95
    assert recall_at_k(gt, {}, ["run"], 10, 0.5) == (0.0, 1)



def test_pseudo_ranking_tool_rescores_stage1_proposals_by_agreement_and_recurrence(study, tmp_path):
    """tools/pseudo_ranking.py on the study's stage 1 and its cross-fitted fold models (real checkpoints and
    stores): the `stage1` ranking is stage 1's own proposals as they are, the others re-score the same ones."""
    from click.testing import CliRunner

    from tal.data.annotations import load_annotations
    from tal.pseudo import pseudo_label_quality

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from pseudo_ranking import main as pseudo_ranking

    out, _ = study
    base, data = task_dir(out, "base:0"), out / "data_seed0"
    args = ["--features", data / "web.zarr", "--truth", data / "web.json", "--stage1", base / "stage1" / "last.pt",
            "--threshold", "0.05", "--out", tmp_path / "rank"]
    for k in (0, 1):
        args += ["--other", base / "thresholds" / f"fold{k}" / "last.pt"]
    result = CliRunner().invoke(pseudo_ranking, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "rank" / "pseudo_ranking.json").read_text())
    own = tmp_path / "rank" / "proposals_stage1.json"
    assert saved["rankings"]["stage1"]["average_mAP"] == pseudo_label_quality(own, data / "web.json")["average_mAP"]
    proposals = load_annotations(own).videos
    scores = {name: load_annotations(tmp_path / "rank" / f"ranking_{name}.json").videos
              for name in ("stage1", "mean", "others", "min")}
    for vid, video in proposals.items():
        for i, seg in enumerate(video.segments):
            s1, mean, others, low = (scores[n][vid].segments[i].score for n in ("stage1", "mean", "others", "min"))
            assert (scores["mean"][vid].segments[i].start, s1) == (seg.start, seg.score)
            assert mean == pytest.approx((s1 + 2 * others) / 3) and low <= min(s1, others) + 1e-12
    # recurrence: the same proposals holding the same scores, handed out in another order
    ranked = load_annotations(tmp_path / "rank" / "ranking_recurrence.json").videos
    assert {v: [(s.start, s.end) for s in x.segments] for v, x in ranked.items()} == \
        {v: [(s.start, s.end) for s in x.segments] for v, x in proposals.items()}
    assert sorted(s.score for x in ranked.values() for s in x.segments) == \
        pytest.approx(sorted(s.score for x in proposals.values() for s in x.segments))
    assert set(saved["rankings"]) == {"stage1", "recurrence", "mean", "others", "min"}
    for name in ("stage1", "other0", "other1"):
        kept = load_annotations(tmp_path / "rank" / f"kept_{name}.json").videos
        assert saved["at_threshold"][name]["pseudo_labels"] == sum(len(v.segments) for v in kept.values())


def test_a_share_on_fewer_seeds_says_so_instead_of_a_zero_std():
    # seed 1's ceiling below its floor: the over-floor share exists on one seed of three
    assert format_percent({"mean": -0.7306, "std": 0.0, "n": 1}, 3) == "-73.06 (1 of 3)"
    assert format_percent({"mean": 0.1349, "std": 0.0696, "n": 3}, 3) == " 13.49 ±  6.96"
    assert format_percent({"mean": float("nan"), "std": float("nan"), "n": 0}, 3) == "undefined"
