"""`make demo` (tal.demo) on a tiny simulated benchmark: the report's required keys, the table and the plot."""

import json

from tal.demo import run_demo
from test_pseudo import TINY_SETS


def test_demo_report_holds_both_stages_under_every_protocol(tmp_path):
    report = run_demo(tmp_path / "demo", seed=3, progress=False, overrides=TINY_SETS,
                      counts={"curated_train": 8, "web": 10, "curated_test": 6, "web_test": 6})
    saved = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert saved["simulated"] is True and saved["seed"] == 3 and "SIMULATED" in saved["note"]
    for stage in ("stage1", "stage2"):
        assert 0.0 <= saved[stage]["novel_only"] <= 1.0 and 0.0 <= saved[stage]["cross_domain"] <= 1.0
        assert set(saved[stage]["generalized"]) == {"all", "base", "novel"}
    counts = saved["counts"]
    assert counts["labeled_videos"] == 8 and counts["unlabeled_videos"] == 10
    assert counts["pseudo_labels"]["round1.pseudo"] >= 10  # at least the top-1 of every web video
    for row in ("novel-only", "generalized all", "generalized base", "generalized novel", "cross-domain (web)"):
        assert row in report["table"]
    assert (tmp_path / "demo" / "map_per_stage.png").stat().st_size > 1000
