"""`make demo` (tal.demo) on a tiny simulated benchmark: the report's required keys, the table and the plot."""

import json

import torch

from tal.demo import run_demo
from test_pseudo import TINY_SETS


def test_demo_report_holds_both_stages_under_every_protocol(tmp_path):
    report = run_demo(tmp_path / "demo", seed=3, progress=False, overrides=TINY_SETS,
                      counts={"curated_train": 8, "web": 10, "curated_test": 6, "web_test": 6})
    saved = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert saved["simulated"] is True and saved["seed"] == 3 and "SIMULATED" in saved["note"]
    assert saved["torch_threads"] == torch.get_num_threads()  # what the time (and the last digits) ran on
    for stage in ("stage1", "stage2"):
        # the report holds what the stage's own evaluation measured
        measured = json.loads((tmp_path / "demo" / "selftrain" / stage / "eval.json").read_text())
        assert saved[stage]["novel_only"] == measured["novel_only"]["novel"]["average_mAP"]
        assert saved[stage]["cross_domain"] == measured["cross_domain"]["all"]["average_mAP"]
        assert {g: saved[stage]["generalized"][g] for g in ("all", "base", "novel")} == {
            g: measured["generalized"][g]["average_mAP"] for g in ("all", "base", "novel")}
        assert f"{100 * saved[stage]['novel_only']:.2f}" in report["table"]
    # the pseudo-labels were chosen on held-out labelled videos and scored against the web videos' truth
    details = saved["counts"]["pseudo_label_details"]["round1.pseudo"]
    assert details["threshold"] == json.loads((tmp_path / "demo" / "selftrain" / "thresholds" / "choice.json")
                                              .read_text())["threshold"]
    assert details["quality"]["true_actions"] > 0 and "precision" in report["table"]
    counts = saved["counts"]
    assert counts["labeled_videos"] == 8 and counts["unlabeled_videos"] == 10
    assert counts["pseudo_labels"]["round1.pseudo"] >= 10  # at least the top-1 of every web video
    for row in ("novel-only", "generalized all", "generalized base", "generalized novel", "cross-domain (web)"):
        assert row in report["table"]
    assert (tmp_path / "demo" / "map_per_stage.png").stat().st_size > 1000
