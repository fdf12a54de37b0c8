"""tal-eval and tal-split end to end: real ground truth, derived predictions, JSON, plots, bad input."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tal.cli.eval import main as eval_main
from tal.cli.split import main as split_main
from tal.data.annotations import load_annotations
from tal.eval.predictions import Detection, write_predictions

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def thumos(shared_data, tmp_path_factory):
    """THUMOS14 test GT (DETAD, official format) and jittered predictions with distinct scores."""
    gt_path = shared_data / "DETAD" / "thumos14_test_extra_characteristics.json"
    gt = load_annotations(gt_path, subset="testing")
    rng = np.random.default_rng(0)
    preds, k = {}, 0
    for vid, video in gt.videos.items():
        dets = []
        for _ in range(20):
            s = video.segments[rng.integers(len(video.segments))]
            a = max(0.0, s.start + rng.normal(0, 0.3))
            k += 1
            dets.append(Detection(s.label, 1.0 - k * 1e-6, a, max(a + 0.1, s.end + rng.normal(0, 0.3))))
        preds[vid] = dets
    pred_path = tmp_path_factory.mktemp("preds") / "pred.json"
    write_predictions(preds, pred_path)
    return gt_path, pred_path


def run(cmd, *args):
    result = CliRunner().invoke(cmd, [str(a) for a in args])
    return result.exit_code, result.output


def test_tal_eval_console_script_table_json_plots(thumos, tmp_path):
    gt_path, pred_path = thumos
    out, plots = tmp_path / "r.json", tmp_path / "plots"
    proc = subprocess.run([BIN / "tal-eval", "--gt", gt_path, "--pred", pred_path, "--preset", "thumos",
                           "--json", out, "--plot", plots, "--videos", "video_test_0000004,video_test_0000896"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "mAP (%) @ tIoU" in proc.stdout and "by action length" in proc.stdout
    data = json.loads(out.read_text())
    assert data["tiou_thresholds"] == [0.3, 0.4, 0.5, 0.6, 0.7]
    assert len(data["mAP"]) == 5 and 0.1 < data["average_mAP"] < 1.0
    assert len(data["per_class"]) == 20 and all(len(v) == 5 for v in data["per_class"].values())
    assert set(data["breakdown"]["length"]) == {"XS", "S", "M", "L", "XL"}
    assert sum(c["num_gt"] for c in data["breakdown"]["length"].values()) == 3358
    assert sum(c["num_gt"] for c in data["breakdown"]["instances"].values()) == 3358
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert pngs == ["map_vs_tiou.png", "per_class_ap.png", "timeline_video_test_0000004.png",
                    "timeline_video_test_0000896.png"]
    assert all((plots / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert "NaN" not in out.read_text()  # strict JSON


def test_breakdown_instances_match_detad_annotation(thumos, tmp_path):
    """Our instances-per-video count equals the num-instances field DETAD ships with its THUMOS14 file."""
    from tal.eval.breakdown import BINS, bin_index

    gt_path, pred_path = thumos
    raw = json.loads(Path(gt_path).read_text())["database"]
    edges = BINS["thumos"]["instances"][0]
    expected = {}
    for v in raw.values():
        for a in v["annotations"]:
            b = int(bin_index(np.array([a["num-instances"]], float), edges)[0])
            expected[b] = expected.get(b, 0) + 1
    out = tmp_path / "r.json"
    code, output = run(eval_main, "--gt", gt_path, "--pred", pred_path, "--preset", "thumos", "--json", out)
    assert code == 0, output
    data = json.loads(out.read_text())
    labels = BINS["thumos"]["instances"][1]
    assert {labels.index(k): c["num_gt"] for k, c in data["breakdown"]["instances"].items() if c["num_gt"]} == expected


def test_tal_eval_with_splits(thumos, tmp_path):
    gt_path, pred_path = thumos
    out = tmp_path / "s.json"
    code, output = run(eval_main, "--gt", gt_path, "--pred", pred_path, "--tiou", "0.3:0.7:0.1",
                       "--split", "thumos14:75:0", "--mode", "generalized", "--json", out)
    assert code == 0, output
    data = json.loads(out.read_text())
    for group, n in (("all", 20), ("base", 15), ("novel", 5)):
        assert len(data[group]["mAP"]) == 5 and len(data[group]["per_class"]) == n
    assert data["tiou_thresholds"] == pytest.approx([0.3, 0.4, 0.5, 0.6, 0.7])
    code, output = run(eval_main, "--gt", gt_path, "--pred", pred_path, "--preset", "thumos",
                       "--split", "thumos14:50:0-2", "--json", out)
    assert code == 0, output
    data = json.loads(out.read_text())
    assert len(data["runs"]) == 3 and "±" in output
    assert set(data["summary"]["novel"]["average_mAP"]) == {"mean", "std"}


def test_tal_eval_dedup_and_subset_on_activitynet(shared_data, tmp_path):
    folder = shared_data / "BSN-boundary-sensitive-network"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gt = load_annotations(folder / "anet_anno_action.json", subset="validation")
    preds = {vid: [Detection(s.label, 1.0 - 1e-5 * i, s.start, s.end) for i, s in enumerate(v.segments)]
             for vid, v in list(gt.videos.items())[:50]}
    pred_path = tmp_path / "p.json"
    write_predictions(preds, pred_path)
    code, output = run(eval_main, "--gt", folder / "anet_anno_action.json", "--pred", pred_path)
    assert code != 0 and "several subsets" in output
    out = tmp_path / "r.json"
    code, output = run(eval_main, "--gt", folder / "anet_anno_action.json", "--subset", "validation",
                       "--pred", pred_path, "--preset", "anet", "--dedup-gt", "--json", out)
    assert code == 0, output
    data = json.loads(out.read_text())
    assert data["dedup_gt"] is True and len(data["mAP"]) == 10
    assert sum(data["num_gt"].values()) == 7293 - 19  # the 19 duplicated validation instances


@pytest.mark.parametrize("content, pattern", [
    ('{"database": {"v": {"subset": "validation", "annotations": [}}', "invalid JSON at line 1"),
    ('{"database": {"v": {"subset": "dev", "annotations": []}}}', "video 'v' field 'subset'"),
    ('{"database": {"v": {"subset": "testing", "annotations": [{"segment": [5, 1], "label": "a"}]}}}',
     "end 1.0 <= start 5.0"),
])
def test_tal_eval_bad_gt_exits_nonzero_with_one_line(tmp_path, thumos, content, pattern):
    bad = tmp_path / "gt.json"
    bad.write_text(content)
    code, output = run(eval_main, "--gt", bad, "--pred", thumos[1])
    assert code == 1
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and str(bad) in errors[0]
    assert pattern in errors[0]


def test_tal_eval_bad_options(thumos, tmp_path):
    gt_path, pred_path = thumos
    assert run(eval_main, "--gt", gt_path, "--pred", pred_path, "--tiou", "0,2")[0] == 2
    code, output = run(eval_main, "--gt", gt_path, "--pred", pred_path, "--split", "thumos14:33:0")
    assert code == 1 and "ratio" in output
    code, output = run(eval_main, "--gt", gt_path, "--pred", pred_path, "--split", "anet:75:0")
    assert code == 1 and "none of its classes" in output
    bad = tmp_path / "p.json"
    bad.write_text('{"results": {"v": [{"label": "a"}]}}')
    code, output = run(eval_main, "--gt", gt_path, "--pred", bad)
    assert code == 1 and "needs 'label', 'score'" in output


def test_tal_split_commands(tmp_path, shared_data):
    code, output = run(split_main, "show", "anet:75:1")
    assert code == 0 and "[novel] (50)" in output
    out = tmp_path / "k.json"
    gt = shared_data / "DETAD" / "thumos14_test_extra_characteristics.json"
    code, output = run(split_main, "kinetics", "--gt", gt, "-o", out)
    assert code == 0, output
    split = json.loads(out.read_text())
    assert "HighJump" in split["base"] and "CricketShot" in split["novel"]
    code, output = run(split_main, "random", "--gt", gt, "--novel-fraction", "0.5", "--seed", "3",
                       "--num-splits", "2", "-o", tmp_path / "rand")
    assert code == 0, output
    files = sorted((tmp_path / "rand").glob("*.json"))
    assert [f.name for f in files] == ["split_3.json", "split_4.json"]
    assert len(json.loads(files[0].read_text())["novel"]) == 10
    names = tmp_path / "train.txt"
    names.write_text("High jump\nArchery\n")
    code, output = run(split_main, "cross", "--train-classes", names, "--target-gt", gt, "-o", tmp_path / "c.txt")
    assert code == 0 and "[base] (1): HighJump" in output
    code, output = run(split_main, "random", "--gt", gt, "--classes", names)
    assert code == 2


def test_tiou_parsing_and_strict_json():
    from tal.cli.eval import parse_tiou
    from tal.eval.report import strict_json

    np.testing.assert_allclose(parse_tiou("0.5:0.95:0.05"), np.linspace(0.5, 0.95, 10), atol=1e-12)
    np.testing.assert_allclose(parse_tiou("0.3, 0.5"), [0.3, 0.5])
    assert strict_json({"a": [float("nan"), 1.0], "b": float("inf"), "c": "x"}) == {"a": [None, 1.0], "b": None, "c": "x"}


def test_v_prefix_mismatch_is_named_and_drop_v_prefix_fixes_it(tmp_path, caplog):
    from tal.data.annotations import AnnotationSet, Segment, VideoAnnotation, write_official

    gt = tmp_path / "gt.json"
    write_official(AnnotationSet({"v_abc": VideoAnnotation("v_abc", "validation", 20.0, None,
                                                          [Segment(1.0, 5.0, "jump")])}), gt)
    pred = tmp_path / "pred.json"
    write_predictions({"abc": [Detection("jump", 0.9, 1.0, 5.0)]}, pred)
    with caplog.at_level("WARNING", logger="tal.eval"):
        code, output = run(eval_main, "--gt", gt, "--pred", pred, "--tiou", "0.5")
    assert code == 0 and "none of the 1 predicted videos is in the ground truth" in caplog.text
    assert "--drop-v-prefix" in caplog.text and "100.00" not in output
    code, output = run(eval_main, "--gt", gt, "--pred", pred, "--tiou", "0.5", "--drop-v-prefix",
                       "--json", tmp_path / "r.json")
    assert code == 0 and json.loads((tmp_path / "r.json").read_text())["average_mAP"] == 1.0
    assert json.loads((tmp_path / "r.json").read_text())["ties"] == "official"
