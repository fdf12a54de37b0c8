"""Stage 2 of self-training at web scale: iterations/s and peak RSS, memory flat in the number of web videos.

Trains the `small` preset (agnostic, length-aware batches, 2 DataLoader workers) for one epoch of a fixed size
(data.epoch_clips, half of them pseudo-labelled) on the labelled curated store (120 videos) plus N SIMULATED
web videos with pseudo-labels, for N = 1,000 and N = 10,000 (--web-videos), each in a fresh process so that its
peak RSS is its own; prints iterations/s, the peak RSS of the training process and of its workers, and the
ratio of the peaks (target: ~1, rows are read lazily and only per-video metadata is held).

Data: tal-sim's small preset, seed 0, with 10,000 web videos (the demo's world and web domain; simulated once
into --work, ~3.5 GB, ~30 CPU-minutes). Pseudo-labels: the web videos' simulated ground truth written as a
pseudo-label file (label "action", scores drawn in [0.05, 1]) for the first N web videos; both runs open the
same 10,000-video store.

    python tools/bench_stage2.py [--work bench_stage2_data] [--web-videos 1000,10000] [--clips 800]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_WEB = 10_000


def simulate(work: Path) -> Path:
    from tal.sim import preset, write_benchmark

    out = work / f"sim_web{N_WEB}"
    if not (out / "benchmark.json").exists():
        cfg, counts = preset("small", seed=0)
        print(f"simulating {counts.curated_train} curated + {N_WEB:,} web videos into {out} (SIMULATED; cached)",
              flush=True)
        write_benchmark(out, cfg, n_curated_train=counts.curated_train, n_web_unlabeled=N_WEB, n_curated_test=0,
                        n_web_test=0, labelled_classes="base")
    return out


def pseudo_labels(sim: Path, n: int) -> Path:
    """The first n web videos' simulated ground truth as class-agnostic pseudo-labels with scores."""
    from tal.data.annotations import AnnotationSet, Segment, VideoAnnotation, load_annotations, write_official

    out = sim / f"pseudo_first{n}.json"
    if not out.exists():
        web = load_annotations(sim / "web.json")
        rng = np.random.default_rng(0)
        videos = {}
        for vid in list(web.videos)[:n]:
            v = web.videos[vid]
            segs = [Segment(s.start, s.end, "action", score=float(rng.uniform(0.05, 1.0))) for s in v.segments]
            videos[vid] = VideoAnnotation(vid, v.subset, v.duration, v.fps, segs)
        write_official(AnnotationSet(videos), out)
    return out


def child(sim: Path, n: int, clips: int, threads: int) -> dict:
    """One stage-2 epoch in this process; its own peak RSS and its workers'."""
    import torch

    from tal.config import load_config
    from tal.train import TrainInputs, train

    torch.set_num_threads(threads)
    pl = pseudo_labels(sim, n)
    out = sim.parent / "runs" / f"stage2_{n}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config("small", ["data.mode=agnostic", "train.epochs=1", "train.warmup_epochs=0",
                                f"data.epoch_clips={clips}", "data.pseudo_ratio=0.5", "data.num_workers=2"])
    ckpt = train(cfg, TrainInputs([sim / "curated_train.zarr", sim / "web.zarr"], [sim / "curated_train.json"],
                                  pseudo=[pl]), out, progress=False)
    state = torch.load(ckpt, weights_only=True)
    seconds = state["history"][-1]["seconds"]
    steps = state["scheduler"]["steps_per_epoch"]
    return {"web_videos": n, "iterations": steps, "seconds": seconds, "it_per_s": steps / seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_rss_workers_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("bench_stage2_data"))
    ap.add_argument("--web-videos", default=f"1000,{N_WEB}", help="pseudo-labelled web videos per run")
    ap.add_argument("--clips", type=int, default=800, help="clips per epoch (data.epoch_clips), half pseudo")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training process")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    sim = simulate(args.work)
    if args.child is not None:
        print(json.dumps(child(sim, args.child, args.clips, args.threads)))
        return 0
    runs = []
    for n in (int(x) for x in args.web_videos.split(",")):
        pseudo_labels(sim, n)  # written here, so that the child's memory is the training's alone
        done = subprocess.run([sys.executable, __file__, "--work", str(args.work), "--clips", str(args.clips),
                               "--threads", str(args.threads), "--child", str(n)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = runs[-1]
        print(f"stage 2, small preset, 120 labelled + {r['web_videos']:,} pseudo-labelled SIMULATED web videos: "
              f"{r['iterations']} iterations in {r['seconds']:.1f} s = {r['it_per_s']:.2f} it/s; peak RSS "
              f"{r['peak_rss_mib']:.0f} MiB (DataLoader workers {r['peak_rss_workers_mib']:.0f} MiB)", flush=True)
    if len(runs) > 1:
        a, b = runs[0], runs[-1]
        print(f"peak RSS at {b['web_videos']:,} / at {a['web_videos']:,} web videos: "
              f"{b['peak_rss_mib'] / a['peak_rss_mib']:.3f} (training process), "
              f"{b['peak_rss_workers_mib'] / a['peak_rss_workers_mib']:.3f} (workers) (target: flat, ~1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
