"""`make study` on a tiny simulated benchmark: every part of the report, the ceilings, per-seed processes."""

import json
import subprocess
import sys

import pytest

from tal.study import pseudo_label_quality, run_study
from test_pseudo import TINY_SETS

COUNTS = {"curated_train": 8, "curated_test": 6, "web_test": 6}
ARGS = dict(seeds=(0, 1), scale=(0, 4, 8), taus=(0.05, 0.4), sweep_videos=8, budget_videos=6,
            progress=False, overrides=TINY_SETS, counts=COUNTS)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    return out, run_study(out, **ARGS)


def test_study_reports_stages_scaling_sweep_and_ceilings(study):
    out, result = study
    assert result["simulated"] and set(result["per_seed"]) == {0, 1}
    assert sorted(int(n) for n in result["scaling"]) == [0, 4, 8]
    assert sorted(float(t) for t in result["tau_sweep"]) == [0.05, 0.4]
    for label, row in result["summary"].items():
        assert set(row) == {"stage1", "stage2", "delta", "stage2_oracle", "stage1_all_classes"}, label
        assert 0.0 <= row["stage2"]["mean"] <= 1.0
    seed0 = result["per_seed"][0]
    assert seed0["stage1"] == result["scaling"][0]  # N = 0 is stage 1 itself
    # the scaling files are nested: more videos, at least as many pseudo-labels
    counts = [result["scaling"][n]["pseudo_labels"] for n in (4, 8)]
    assert counts[0] <= counts[1]
    # variants other than the main one keep its labelled : pseudo mix (6 web : 8 labelled), at the same compute
    import yaml

    assert result["pseudo_mix"] == pytest.approx(6 / 14)
    mixed = yaml.safe_load((out / "seed0" / "stage2_n8_tau0.05_mix0.429_clips14" / "config.yaml").read_text())
    assert mixed["data"]["pseudo_ratio"] == pytest.approx(6 / 14) and mixed["data"]["epoch_clips"] == 14
    main = yaml.safe_load((out / "seed0" / "stage2_n6_tau0.05" / "config.yaml").read_text())
    assert main["data"]["pseudo_ratio"] is None
    # a higher τ keeps fewer pseudo-labels
    assert result["tau_sweep"][0.4]["pseudo_labels"] <= result["tau_sweep"][0.05]["pseudo_labels"]
    text = (out / "study.txt").read_text()
    assert "SIMULATED" in text and "perfect PL" in text and "τ = 0.4" in text
    for name in ("study_stages.png", "study_scaling.png", "study_tau.png"):
        assert (out / name).stat().st_size > 1000


def test_oracle_pseudo_labels_are_the_hidden_truth_of_the_same_videos(study):
    out, _ = study
    for seed, main in ((0, "pseudo_n6_tau0.05.json"), (1, "pseudo_round1.json")):
        oracle = out / f"seed{seed}" / "pseudo_oracle.json"
        videos = lambda p: set(json.loads(p.read_text())["database"])  # noqa: E731
        assert videos(oracle) == videos(out / f"seed{seed}" / main)
        quality = pseudo_label_quality(oracle, out / f"data_seed{seed}" / "web.json")
        assert quality["precision@0.5"] == quality["recall@0.5"] == 1.0
    all_classes = json.loads((out / "data_seed1_all_classes" / "curated_train.json").read_text())
    split = json.loads((out / "data_seed1" / "split.json").read_text())
    labels = {s["label"] for v in all_classes["database"].values() for s in v["annotations"]}
    assert labels & set(split["novel"])  # the ceiling's stage 1 does see novel classes


def test_rerun_collects_finished_parts_without_training(study, tmp_path):
    out, result = study
    parts = {s: (out / f"seed{s}" / "part.json").stat().st_mtime_ns for s in (0, 1)}
    again = run_study(out, **ARGS)
    assert {s: (out / f"seed{s}" / "part.json").stat().st_mtime_ns for s in (0, 1)} == parts
    assert again["summary"] == json.loads(json.dumps(result["summary"]))


def test_only_seed_must_be_one_of_the_seeds(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tal.study", "--out", str(tmp_path), "--seeds", "0,1",
                           "--only-seed", "5", "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--only-seed 5 is not one of --seeds" in proc.stderr


def test_proposal_recall_counts_top_k_matches_per_class_group():
    from pathlib import Path

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


def test_cli_runs_seeds_in_parallel_processes_then_collects(tmp_path):
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "tal.study", "--out", str(out), "--seeds", "4,5", "--scale", "0,4", "--taus", "0.2",
           "--sweep-videos", "4", "--budget-videos", "4", "--sizes", "curated_train=6,curated_test=4,web_test=4",
           "--jobs", "2", "--no-progress"] + [a for item in TINY_SETS for a in ("--set", item)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == str(out / "study.json")
    result = json.loads((out / "study.json").read_text())
    assert set(result["per_seed"]) == {"4", "5"} and "summary" in result
    for seed in (4, 5):
        assert "done" in (out / f"seed{seed}.log").read_text()  # each seed ran in its own process


def test_bad_sizes_are_a_usage_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tal.study", "--out", str(tmp_path), "--sizes", "web=5"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--sizes" in proc.stderr and "'web=5'" in proc.stderr
