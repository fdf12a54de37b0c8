"""Benchmark of the re-ranking by recurrence (`tal-selftrain --rerank recurrence`): its memory and speed on a
store of many proposals, every figure measured in this one run on this machine.

The re-ranking reads the store's rows twice (the centre and the whitening's fitting sample, then the
projection) so that it holds the whitened [N, 128] contents of the N proposals, not their [N, D] contents.
Measured at two store sizes: the peak resident memory (VmRSS, sampled while it runs) above the process's memory
before the call; its growth per proposal between the two sizes, as a ratio of one proposal's D float32
contents — what a one-pass design holds per proposal on top of everything else (target well below 1); the
part that does not grow with N (the similarity blocks: chunk x reference floats); proposals/s.

The features are smooth random walks and the proposals random segments with random scores: memory and speed
do not depend on what they mean.

    python tools/bench_rerank.py            # 1,000 and 5,000 videos, 60 proposals each, D = 512 (~15 min)
    python tools/bench_rerank.py --quick    # 1,000 and 2,000 videos (~6 min)

Both sizes hold more proposals than the neighbour reference sample (50,000), so that the similarity blocks are
the same size in both and the difference is what grows with N.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS.parent))
sys.path.insert(0, str(TOOLS))
from bench_pseudo import rss_mib  # noqa: E402
from random_walk_store import duration_for, write_random_walk_store  # noqa: E402

DIM, PER_VIDEO, ROWS = 512, 60, (200, 400)


def candidates(n: int, seed: int):
    """``PER_VIDEO`` random segments per video (1-40 rows long), scores uniform in [0.01, 1]."""
    from tal.data.annotations import AnnotationSet, Segment, VideoAnnotation

    rng = np.random.default_rng(seed)
    lengths = rng.integers(ROWS[0], ROWS[1] + 1, size=n)
    videos = {}
    for i, t in enumerate(lengths):
        duration = duration_for(int(t))
        starts = rng.uniform(0, duration * 0.9, PER_VIDEO)
        ends = np.minimum(starts + rng.uniform(0.2, 40 * 4 / 30, PER_VIDEO), duration)
        segs = [Segment(float(a), float(b), "action", float(s), True)
                for a, b, s in zip(starts, ends, rng.uniform(0.01, 1.0, PER_VIDEO))]
        videos[f"v{i:07d}"] = VideoAnnotation(f"v{i:07d}", "training", duration, 30.0, segs)
    return lengths, AnnotationSet(videos)


def rerank_in_child(store: str, cands: str, result: str) -> None:
    """Load the candidates, then re-rank them while a thread samples this process's VmRSS."""
    from tal.data.annotations import load_annotations
    from tal.recurrence import RecurrenceConfig, rerank_set

    aset = load_annotations(cands)
    before, peak, done = rss_mib(), [0.0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    _, what = rerank_set(aset, store, RecurrenceConfig(), progress=False)
    seconds = time.perf_counter() - t0
    done.set()
    thread.join()
    Path(result).write_text(json.dumps({"before_mib": before, "peak_mib": max(peak[0], rss_mib()),
                                        "seconds": seconds, "proposals": what["candidates"]}))


def measure(work: Path, n: int) -> dict:
    from tal.data.annotations import write_official

    folder = work / str(n)
    folder.mkdir()
    lengths, aset = candidates(n, seed=n)
    write_random_walk_store(folder / "web.zarr", lengths, DIM, seed=n)
    write_official(aset, folder / "cands.json")
    proc = multiprocessing.get_context("spawn").Process(  # a fresh process: its peak is this size's alone
        target=rerank_in_child, args=(str(folder / "web.zarr"), str(folder / "cands.json"), str(folder / "r.json")))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise SystemExit(f"re-ranking {n} videos failed (exit code {proc.exitcode})")
    r = json.loads((folder / "r.json").read_text())
    r.update(videos=n, extra_mib=r["peak_mib"] - r["before_mib"])
    print(f"[re-ranking, D={DIM}] {n:,} videos, {r['proposals']:,} proposals: {r['seconds']:.1f} s "
          f"({r['proposals'] / r['seconds']:,.0f} proposals/s); peak memory {r['extra_mib']:.0f} MiB above the "
          "start", flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1,000 and 2,000 videos instead of 1,000 and 5,000")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    sizes = (1_000, 2_000) if args.quick else (1_000, 5_000)
    work = Path(tempfile.mkdtemp(prefix="bench_rerank_"))
    try:
        small, large = (measure(work, n) for n in sizes)
        per_proposal = (large["extra_mib"] - small["extra_mib"]) * 2**20 / (large["proposals"] - small["proposals"])
        fixed = small["extra_mib"] - per_proposal * small["proposals"] / 2**20
        ratio = per_proposal / (DIM * 4)
        print(f"[re-ranking] memory per proposal {per_proposal:.0f} bytes = {ratio:.2f} x its D = {DIM} float32 "
              f"contents ({DIM * 4} bytes, what a one-pass design holds per proposal on top; target well below 1); "
              f"not growing with N: {fixed:.0f} MiB (similarity blocks)", flush=True)
        if args.json:
            args.json.write_text(json.dumps({"runs": [small, large], "bytes_per_proposal": per_proposal,
                                             "ratio_to_contents": ratio, "fixed_mib": fixed}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
