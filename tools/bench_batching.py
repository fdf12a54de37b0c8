"""Length-aware batching against padding every batch to max_seq_len (ActionFormer's), measured in one run.

1. Epoch time, same model: the `thumos` preset at width 128 (the issue's side-by-side with ActionFormer: d128,
   window 19, max_seq_len 2304, batch 2), two runs built as tal-train builds them, one per batching, whose
   steps are interleaved one for one (tal.train.train_step, data loading included) so that a shared machine's
   changing load hits both alike; --epochs epochs, the last reported, on
   (a) THUMOS-length clips: the real THUMOS14 validation videos' lengths and ground truth (../shared/data;
       on average 0.52 of 2,304 rows after the crop, so ~1.9x is the limit), rows simulated as smooth random
       walks (D 512: speed does not depend on what the rows mean);                          target >= 1.7x
   (b) web-length clips: the demo's SIMULATED web store (tal-sim small preset, seed 0, 400 videos) with its
       ground truth as labels;                                                                  target >= 4x
2. mAP after the same epochs (--map): the `small` preset on the SIMULATED curated benchmark (tal-sim small,
   seed 0, closed vocabulary over 20 classes, curated test, average mAP at tIoU 0.3:0.7), training seeds 0, 1, 2,
   each batching; with the preset's max_seq_len (256: most clips are cropped to it) and with 1024 (every clip
   whole, so padding to max is 3-4x the rows). Prints mean ± std and the paired differences.

    python tools/bench_batching.py                 # part 1 (~12 min on a 2-core CPU)
    python tools/bench_batching.py --quick         # part 1 on 24 + 40 clips, one epoch
    python tools/bench_batching.py --map           # part 2 as well (~12 trainings, ~40 min more)

Data and runs are cached under --work (simulated stores are reused; trainings are redone).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS.parent))
sys.path.insert(0, str(TOOLS))
from random_walk_store import rows_for, write_random_walk_store  # noqa: E402

from tal.config import load_config  # noqa: E402
from tal.data.annotations import AnnotationSet, load_annotations, write_official  # noqa: E402
from tal.eval.detection import evaluate_detection  # noqa: E402
from tal.infer import iter_detections  # noqa: E402
from tal.train import TrainInputs, train  # noqa: E402
from bench_train import TrainingRun  # noqa: E402

SHARED = TOOLS.parents[1] / "shared" / "data"
THUMOS_GT = SHARED / "CSE499A--BBFormer" / "thumos14.json"
MODEL_128 = ["model.embd_dim=128", "model.fpn_dim=128", "model.head_dim=128"]
TIOU = [0.3, 0.4, 0.5, 0.6, 0.7]


# --------------------------------------------------------------------------------------------- data
def thumos_lengths_store(work: Path, n_videos: int | None) -> tuple[Path, Path]:
    """A store with the real THUMOS14 validation lengths (random-walk rows) and the real ground truth."""
    if not THUMOS_GT.exists():
        sys.exit(f"{THUMOS_GT}: not found (the real THUMOS14 ground truth from ../shared/data is needed for part 1a)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 4 segments start after the stated end: as ActionFormer, kept
        gt = load_annotations(THUMOS_GT, subset="validation")
    ids = sorted(gt.videos)
    if n_videos:
        ids = [ids[i] for i in np.random.default_rng(0).choice(len(ids), n_videos, replace=False)]
    out = work / f"thumos14_val_lengths_{len(ids)}"
    store, ann = out / "features.zarr", out / "thumos14_val.json"
    if not ann.exists():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        durations = [gt.videos[v].duration for v in ids]
        write_random_walk_store(store, [rows_for(d) for d in durations], 512, seed=0, ids=ids, durations=durations)
        write_official(AnnotationSet({v: gt.videos[v] for v in ids}), ann)
    return store, ann


def demo_web_store(work: Path) -> tuple[Path, Path]:
    """The demo's web store: tal-sim's small preset, seed 0, 400 web videos (the same bytes `make demo` writes)."""
    from tal.sim import preset, write_benchmark

    out = work / "sim_small_web"
    if not (out / "benchmark.json").exists():
        cfg, counts = preset("small", seed=0)
        write_benchmark(out, cfg, n_curated_train=0, n_web_unlabeled=counts.web, n_curated_test=0, n_web_test=0,
                        progress=False)
    return out / "web.zarr", out / "web.json"


def curated_benchmark(work: Path) -> dict:
    from tal.sim import preset, write_benchmark

    out = work / "sim_small_all"
    if not (out / "benchmark.json").exists():
        cfg, counts = preset("small", seed=0)
        write_benchmark(out, cfg, n_curated_train=counts.curated_train, n_web_unlabeled=0,
                        n_curated_test=counts.curated_test, n_web_test=0, labelled_classes="all", progress=False)
    return {"train": (out / "curated_train.zarr", out / "curated_train.json"),
            "test": (out / "curated_test.zarr", out / "curated_test.json")}


# --------------------------------------------------------------------------------------------- part 1
def interleaved_epochs(store: Path, ann: Path, subset: str, epochs: int) -> dict:
    """Seconds per epoch of each batching, their steps interleaved one for one (both runs have the same number
    of steps), so that a change in a shared machine's load hits both alike. A step's time includes waiting for
    its batch from the DataLoader workers."""
    runs = {b: TrainingRun(load_config("thumos", MODEL_128 + ["data.mode=agnostic", f"data.batching={b}"]),
                           store, ann, subset=subset) for b in ("max", "length")}
    seconds = {b: [] for b in runs}
    for epoch in range(epochs):
        loaders = {b: run.loader(run.batches(epoch)) for b, run in runs.items()}
        spent = dict.fromkeys(runs, 0.0)
        while loaders:
            for b in list(loaders):
                t = time.perf_counter()
                try:
                    batch = next(loaders[b])
                except StopIteration:
                    del loaders[b]
                    continue
                runs[b].step(batch)
                spent[b] += time.perf_counter() - t
        for b in runs:
            seconds[b].append(spent[b])
        print(f"    epoch {epoch + 1}: padded to max {spent['max']:.1f} s, length-aware {spent['length']:.1f} s",
              flush=True)
    return seconds


def part_epoch_time(name: str, store: Path, ann: Path, subset: str, epochs: int) -> dict:
    from features.store import open_store

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trained = [v for v, video in load_annotations(ann, subset=subset).videos.items() if video.segments]
    with open_store(store) as st:
        lengths = np.array([st.info(v).num_rows for v in trained])
    fill = np.minimum(lengths, 2304).mean() / 2304
    print(f"  {name}: {len(lengths)} clips", flush=True)
    seconds = interleaved_epochs(store, ann, subset, epochs)
    return {"videos": len(lengths), "mean_fill": float(fill), "limit": float(1 / fill), "seconds": seconds,
            "ratio": seconds["max"][-1] / seconds["length"][-1]}


# --------------------------------------------------------------------------------------------- part 2
def average_map(checkpoint: Path, store: Path, ann: Path) -> float:
    gt = load_annotations(ann)
    preds = dict(iter_detections(store, checkpoint))
    return float(evaluate_detection(gt, preds, TIOU).average_mAP)


def part_map(work: Path, seeds, seq_lens) -> dict:
    files = curated_benchmark(work)
    results = {}
    for seq_len in seq_lens:
        for batching in ("max", "length"):
            maps, seconds = [], []
            for seed in seeds:
                out = work / "runs" / f"map_{seq_len}_{batching}_{seed}"
                shutil.rmtree(out, ignore_errors=True)
                cfg = load_config("small", ["data.mode=closed", f"model.max_seq_len={seq_len}",
                                            f"train.seed={seed}", f"data.batching={batching}"])
                ckpt = train(cfg, TrainInputs(*[[p] for p in files["train"]]), out, progress=False)
                seconds.append(sum(r["seconds"] for r in torch.load(ckpt, weights_only=True)["history"]))
                maps.append(average_map(ckpt, *files["test"]))
                print(f"  max_seq_len {seq_len}, batching={batching:6s}, seed {seed}: average mAP {maps[-1]:.4f}, "
                      f"training {seconds[-1]:.0f} s", flush=True)
            results[(seq_len, batching)] = {"mAP": maps, "seconds": seconds}
    return results


def print_map(results: dict, seq_lens) -> None:
    print("\nSIMULATED curated benchmark (tal-sim small, seed 0), closed vocabulary, average mAP (%) over tIoU "
          "0.3:0.7, small preset, same epochs; mean ± std over training seeds")
    print(f"{'max_seq_len':>11s} {'padded to max':>16s} {'length-aware':>16s} {'paired diff':>16s} "
          f"{'train time ratio':>17s}")
    for seq_len in seq_lens:
        a, b = results[(seq_len, "max")], results[(seq_len, "length")]
        diff = [100 * (y - x) for x, y in zip(a["mAP"], b["mAP"])]
        ms = lambda v: f"{100 * np.mean(v):6.2f} ± {100 * np.std(v, ddof=1):5.2f}"  # noqa: E731
        print(f"{seq_len:11d} {ms(a['mAP']):>16s} {ms(b['mAP']):>16s} "
              f"{np.mean(diff):+6.2f} ± {np.std(diff, ddof=1):5.2f} {sum(a['seconds']) / sum(b['seconds']):16.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("bench_batching_data"))
    ap.add_argument("--quick", action="store_true", help="24 THUMOS-length and 40 web clips, one repeat")
    ap.add_argument("--epochs", type=int, default=2,
                    help="epochs per store, the two batchings' steps interleaved (the last one is reported: the "
                         "first also pays for preparing each new padded length's kernels once)")
    ap.add_argument("--map", action="store_true", help="also part 2: mAP after the same epochs, 3 seeds")
    ap.add_argument("--map-only", action="store_true", help="part 2 only")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--map-seq-lens", default="256,1024")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine, spinning OpenMP threads that wait for "
                         "each other swamp the timings; the ratios are what to compare)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    report = {"threads": torch.get_num_threads()}
    if not args.map_only:
        epochs = 1 if args.quick else args.epochs
        thumos = thumos_lengths_store(args.work, 24 if args.quick else None)
        web_store, web_ann = demo_web_store(args.work)
        if args.quick:
            web_ann = _first_videos(args.work, web_ann, 40)
        print(f"part 1: epoch time, thumos preset at width 128 (batch 2, max_seq_len 2304), "
              f"{torch.get_num_threads()} threads", flush=True)
        report["thumos"] = part_epoch_time("thumos14_val", *thumos, "validation", epochs)
        report["web"] = part_epoch_time("web", web_store, web_ann, "training", epochs)
        for key, target, what in (("thumos", 1.7, "THUMOS14 validation lengths (rows simulated)"),
                                  ("web", 4.0, "demo web store (SIMULATED)")):
            r = report[key]
            print(f"{what}: {r['videos']} clips, mean {r['mean_fill']:.2f} of 2,304 rows (limit "
                  f"{r['limit']:.2f}x): epoch {len(r['seconds']['max'])}: padded to max {r['seconds']['max'][-1]:.1f} s, "
                  f"length-aware {r['seconds']['length'][-1]:.1f} s = {r['ratio']:.2f}x faster (target >= {target}x: "
                  f"{'PASS' if r['ratio'] >= target else 'MISS'})", flush=True)
    if args.map or args.map_only:
        seeds = [int(s) for s in args.seeds.split(",")]
        seq_lens = [int(s) for s in args.map_seq_lens.split(",")]
        print(f"part 2: mAP after the same epochs, seeds {seeds}, max_seq_len {seq_lens}", flush=True)
        results = part_map(args.work, seeds, seq_lens)
        print_map(results, seq_lens)
        report["map"] = {f"{k[0]}_{k[1]}": v for k, v in results.items()}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


def _first_videos(work: Path, ann: Path, n: int) -> Path:
    """The first n videos of the annotation file (the store keeps all; training joins by id)."""
    aset = load_annotations(ann)
    keep = list(aset.videos)[:n]
    out = work / f"{ann.stem}_first{n}.json"
    write_official(aset.restrict_videos(keep), out)
    return out


if __name__ == "__main__":
    sys.exit(main())
