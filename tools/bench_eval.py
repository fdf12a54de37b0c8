"""Benchmark tal.eval detection mAP on real ground truth with derived predictions.

Cases (from the issue): ActivityNet-1.3 validation (BSN files, 4,728 videos) with 100 predictions per
video at tIoU 0.5:0.95:0.05, and THUMOS14 test (DETAD file, 212 videos) with 200 per video at 0.3:0.7:0.1.
Predictions are real GT segments with jittered boundaries, 20% wrong labels, 10% random segments, and
distinct scores.  Prints seconds for evaluate_detection (in memory) and for load_predictions + evaluate from
the JSON file, the best of --repeats, and the speed-up over a plain per-prediction loop with the official
semantics (tests/eval_reference.py) measured on a subsample in the same run; for ActivityNet also the whole
`tal-eval` process (start-up, imports, GT and predictions JSON, breakdowns, report) on the plain and on a
gzipped predictions file (target <= 2 s).

    .venv/bin/python tools/bench_eval.py [--data ../shared/data] [--repeats 3]
    .venv/bin/python tools/bench_eval.py --write-predictions demo_out/eval   # just write the derived predictions
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from tal.data.annotations import load_annotations
from tal.eval.detection import TIOU_PRESETS, evaluate_detection
from tal.eval.predictions import Detection, load_predictions, write_predictions

REPO = Path(__file__).resolve().parents[1]
TARGET_ANET_S = 2.0


def derived_predictions(gt, per_video: int, seed: int) -> dict[str, list[Detection]]:
    rng = np.random.default_rng(seed)
    classes = gt.classes
    total = per_video * len(gt.videos)
    scores = (rng.permutation(total) + 1) / (total + 1)
    preds, k = {}, 0
    for vid, video in gt.videos.items():
        segs = video.segments or []
        dets = []
        for _ in range(per_video):
            if segs and rng.random() > 0.1:
                s = segs[rng.integers(len(segs))]
                length = max(s.end - s.start, 0.5)
                a = max(0.0, s.start + rng.normal(0, 0.15) * length)
                b = max(a + 0.05, s.end + rng.normal(0, 0.15) * length)
                label = s.label if rng.random() > 0.2 else classes[rng.integers(len(classes))]
            else:
                span = video.duration if np.isfinite(video.duration) else 100.0
                a, b = sorted(rng.uniform(0, span, 2))
                label = classes[rng.integers(len(classes))]
            dets.append(Detection(label, float(scores[k]), float(a), float(b)))
            k += 1
        preds[vid] = dets
    return preds


def best_of(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` runs (also CPU time, in ``best_of.cpu``: the machine is shared)."""
    times, cpu, out = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    best_of.cpu = min(cpu)
    return min(times), out


def load_reference():
    spec = importlib.util.spec_from_file_location("eval_reference", REPO / "tests" / "eval_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def whole_process(args: list, repeats: int) -> tuple[float, float]:
    """Best wall time and best CPU time of ``tal-eval args`` run as its own process (start-up included)."""
    walls, cpus = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "tal.cli.eval", *map(str, args)], capture_output=True, text=True)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if done.returncode != 0:
            raise SystemExit(f"tal-eval failed: {done.stderr[-2000:]}")
    return min(walls), min(cpus)


def bench_case(name, gt, per_video, thresholds, repeats, baseline_videos, cli_args=None):
    preds = derived_predictions(gt, per_video, seed=0)
    n = sum(len(d) for d in preds.values())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pred.json"
        write_predictions(preds, path)
        t_eval, report = best_of(lambda: evaluate_detection(gt, preds, thresholds), repeats)
        c_eval = best_of.cpu
        t_full, _ = best_of(lambda: evaluate_detection(gt, load_predictions(path), thresholds), repeats)
        c_full = best_of.cpu
        processes = {}
        if cli_args is not None:
            packed = path.with_suffix(".json.gz")
            packed.write_bytes(gzip.compress(path.read_bytes()))
            for label, pred in (("plain", path), ("gzipped", packed)):
                processes[label] = whole_process(cli_args + ["--pred", pred], repeats)
    print(f"{name}: {len(gt.videos)} videos, {gt.num_segments} GT, {n} predictions, {len(thresholds)} thresholds")
    print(f"  evaluate_detection       {t_eval:7.3f} s wall  {c_eval:7.3f} s CPU   (average mAP {report.average_mAP:.4f})")
    print(f"  load JSON + evaluate     {t_full:7.3f} s wall  {c_full:7.3f} s CPU")
    for label, (wall, cpu) in processes.items():
        print(f"  tal-eval process, {label:7s} {wall:7.3f} s wall  {cpu:7.3f} s CPU   (start-up, imports, GT and "
              f"predictions JSON, mAP, breakdowns, report; best of {repeats})")
    # Speed-up over the plain loop, both timed on the same subsample of videos.
    ref = load_reference()
    keep = list(gt.videos)[:baseline_videos]
    sub_gt = gt.restrict_videos(keep)
    sub_preds = {v: preds[v] for v in keep}
    gt_rows = [(v, s.label, s.start, s.end) for v in keep for s in gt.videos[v].segments]
    pred_rows = [(v, d.label, d.start, d.end, d.score) for v in keep for d in sub_preds[v]]
    t_fast, fast = best_of(lambda: evaluate_detection(sub_gt, sub_preds, thresholds), repeats)
    t_loop, (classes, loop_ap) = best_of(lambda: ref.reference_ap(gt_rows, pred_rows, thresholds), 1)
    agree = np.nanmax(np.abs(np.stack([fast.per_class[c] for c in classes], 1) - loop_ap))
    print(f"  vs plain loop on {len(keep)} videos: {t_loop:.3f} s / {t_fast:.3f} s = {t_loop / t_fast:.0f}x faster"
          f" (max |AP diff| {agree:.1e})")
    return t_eval, t_full, c_eval, processes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-videos", type=int, default=200)
    parser.add_argument("--write-predictions", type=Path, metavar="DIR",
                        help="Only write the derived predictions (anet_val_pred.json, thumos14_test_pred.json) to DIR.")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # clipping/zero-length notes about the real GT are expected
    bsn = args.data / "BSN-boundary-sensitive-network" / "anet_anno_action.json"
    if not bsn.exists():
        parser.error(f"{bsn}: not found; point --data at the shared data folder")
    anet = load_annotations(bsn, subset="validation", clip=False)
    if args.write_predictions:
        thumos = load_annotations(args.data / "DETAD" / "thumos14_test_extra_characteristics.json", subset="testing")
        args.write_predictions.mkdir(parents=True, exist_ok=True)
        for name, gt, per_video in (("anet_val_pred.json", anet, 100), ("thumos14_test_pred.json", thumos, 200)):
            write_predictions(derived_predictions(gt, per_video, seed=0), args.write_predictions / name)
            print(f"wrote {args.write_predictions / name}")
        return
    t_anet, t_anet_full, c_anet, processes = bench_case("ActivityNet-1.3 val", anet, 100, TIOU_PRESETS["anet"], args.repeats,
                                             args.baseline_videos,
                                             cli_args=["--gt", bsn, "--subset", "validation", "--preset", "anet"])
    thumos = load_annotations(args.data / "DETAD" / "thumos14_test_extra_characteristics.json", subset="testing")
    bench_case("THUMOS14 test", thumos, 200, TIOU_PRESETS["thumos"], args.repeats, 40)
    # The machine may be shared: CPU time shows the evaluator's own cost when wall time is inflated.
    verdict = "met" if t_anet < TARGET_ANET_S else ("met in CPU time" if c_anet < TARGET_ANET_S else "MISSED")
    print(f"ActivityNet target < {TARGET_ANET_S:.0f} s: {verdict} (evaluate {t_anet:.2f} s wall = "
          f"{t_anet / TARGET_ANET_S:.2f} of the target, {c_anet:.2f} s CPU = {c_anet / TARGET_ANET_S:.2f}; "
          f"{t_anet_full:.2f} s wall with JSON loading); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for label, (wall, cpu) in processes.items():
        verdict = "met" if wall <= TARGET_ANET_S else ("met in CPU time" if cpu <= TARGET_ANET_S else "MISSED")
        print(f"tal-eval whole process on the {label} file <= {TARGET_ANET_S:.0f} s: {verdict} ({wall:.2f} s wall, "
              f"{cpu:.2f} s CPU)")

if __name__ == "__main__":
    main()
