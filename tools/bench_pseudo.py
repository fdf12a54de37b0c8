"""Benchmark of pseudo-labelling (`tal-pseudo`), every figure measured in this one run on this machine.

1. THUMOS-length videos (1,000-2,304 rows, D = 512) with the `thumos` preset: end-to-end videos/s of
   `tal.pseudo.pseudo_label_store` (store reads, model, soft-NMS, filtering, streamed writing), and, from the
   same end-to-end runs, the model's *useful* FLOP/s — FLOPs per valid row (counted once by
   torch.utils.flop_counter on an unpadded max_seq_len input) x the rows of every video, over the end-to-end
   time — as a fraction of the dense-matmul FLOP/s measured here (target >= 0.5). Both sides best of 3.
2. 100,000 short simulated videos (D = 32, 16-48 rows, a small model): the resident memory (VmRSS) of the
   pseudo-labelling process sampled while it runs — after 1,000 videos, at 10,000 and at the end — and its
   growth (target: flat). The store is written by a separate process, so nothing here is the writer's memory.

The features are smooth random walks and the model is untrained (every proposal scores about the prior, the
worst case for NMS): speed and memory do not depend on what the features mean.

    python tools/bench_pseudo.py            # full
    python tools/bench_pseudo.py --quick    # a few minutes
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
import torch

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS.parent))
sys.path.insert(0, str(TOOLS))
from random_walk_store import write_random_walk_store  # noqa: E402

from features.store import open_store  # noqa: E402
from tal.checkpoint import save_checkpoint, store_provenance  # noqa: E402
from tal.config import load_config  # noqa: E402
from tal.model import build_model  # noqa: E402
from tal.pseudo import FilterConfig, pseudo_label_store  # noqa: E402

REPEATS = 3


def write_store(path: Path, n: int, dim: int, rows: tuple[int, int], seed: int, batch: int = 500) -> None:
    lengths = np.random.default_rng(seed).integers(rows[0], rows[1] + 1, size=n)
    write_random_walk_store(path, lengths, dim, seed, batch=batch)


def write_store_elsewhere(*args) -> None:
    """Write the store in a child process: the pseudo-labelling process never holds the writer's memory."""
    proc = multiprocessing.get_context("spawn").Process(target=write_store, args=args)
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise SystemExit(f"writing {args[0]} failed (exit code {proc.exitcode})")


def write_checkpoint(path: Path, store_path: Path, preset: str, sets=()) -> torch.nn.Module:
    with open_store(store_path) as st:
        prov = store_provenance(st)
    cfg = load_config(preset, list(sets) + ["data.mode=agnostic", f"model.input_dim={prov['dim']}",
                                            "model.num_classes=1"])
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    save_checkpoint(path, {"config": cfg.to_dict(), "model": model.state_dict(), "ema": model.state_dict(),
                           "provenance": prov, "classes": ["action"], "mode": "agnostic"})
    return model


def matmul_flops(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    t = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * n ** 3 * repeats / (time.perf_counter() - t)


@torch.no_grad()
def flops_per_row(model: torch.nn.Module) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    t = model.cfg.max_seq_len
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, model.cfg.input_dim, t), torch.ones(1, t, dtype=torch.bool))
    return counter.get_total_flops() / t


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmRSS")


def thumos_part(work: Path, n_videos: int) -> dict:
    store = work / "thumos.zarr"
    write_store_elsewhere(store, n_videos, 512, (1000, 2304), 1, 8)
    model = write_checkpoint(work / "thumos.pt", store, "thumos")
    with open_store(store) as st:
        rows = sum(st.info(v).num_rows for v in st.video_ids())
    useful = flops_per_row(model) * rows
    matmul, elapsed = [], []
    for r in range(REPEATS):  # the roofline before each end-to-end run: both sides see the same machine
        matmul.append(matmul_flops())
        t = time.perf_counter()
        stats = pseudo_label_store(store, work / "thumos.pt", work / f"thumos_pl_{r}.json", FilterConfig(),
                                   batch_size=1, progress=False)
        elapsed.append(time.perf_counter() - t)
    peak, best = max(matmul), min(elapsed)
    return {"videos": stats.videos, "rows": rows, "videos_per_s": stats.videos / best, "seconds": elapsed,
            "useful_gflop_per_s": useful / best / 1e9, "matmul_gflop_per_s": peak / 1e9,
            "matmul_runs_gflop_per_s": [m / 1e9 for m in matmul], "useful_fraction_of_matmul": useful / best / peak}


def scale_part(work: Path, n_videos: int, mark: int) -> dict:
    store = work / "many.zarr"
    t = time.perf_counter()
    write_store_elsewhere(store, n_videos, 32, (16, 48), 2, 2000)
    write_s = time.perf_counter() - t
    small = ["model.embd_dim=32", "model.fpn_dim=32", "model.head_dim=32", "model.n_head=2",
             "model.attn_window=5", "model.max_seq_len=64"]
    write_checkpoint(work / "many.pt", store, "small", small)
    out = work / "many_pl.json"
    part = out.with_name(out.name + ".parts") / "shard-00000-of-00001.jsonl"
    marks = {"start": rss_mib()}
    wanted = sorted({min(1_000, mark), mark, n_videos})
    done = threading.Event()

    def watch():  # count finished lines of the part file; sample the resident memory as each mark passes
        seen, offset = 0, 0
        while not done.is_set():
            if part.exists():
                with open(part, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                    offset += len(chunk)
                    seen += chunk.count(b"\n")
                for m in wanted:
                    if seen >= m and m not in marks:
                        marks[m] = rss_mib()
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t = time.perf_counter()
    stats = pseudo_label_store(store, work / "many.pt", out, FilterConfig(), batch_size=32, progress=False)
    elapsed = time.perf_counter() - t
    done.set()
    watcher.join()
    marks["after_merge"] = rss_mib()
    first, at_mark, end = marks.get(wanted[0]), marks.get(mark), marks.get(n_videos)
    return {"videos": stats.videos, "store_write_s": write_s, "pseudo_s": elapsed,
            "videos_per_s": stats.videos / elapsed, "pseudo_labels": stats.segments,
            "rss_mib": {str(k): v for k, v in marks.items()},
            "growth_mib_after_first": None if first is None else end - first,
            "growth_mib_after_mark": None if at_mark is None else end - at_mark,
            "output_mib": out.stat().st_size / 2 ** 20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 THUMOS-length videos; 1,000 → 5,000 short videos")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n_thumos, (mark, n_many) = (4, (1_000, 5_000)) if args.quick else (40, (10_000, 100_000))
    work = Path(tempfile.mkdtemp(prefix="bench_pseudo_"))
    try:
        print(f"torch threads: {torch.get_num_threads()}; work dir {work}", flush=True)
        # The many-videos run goes first so that its memory is its own, not the THUMOS model's.
        many = scale_part(work, n_many, mark)
        rss = "; ".join(f"{int(k):,} videos {v:.0f} MiB" for k, v in many["rss_mib"].items() if k.isdigit())
        print(f"[small model, D=32, 16-48 rows] {many['videos']} videos: {many['videos_per_s']:.0f} videos/s; "
              f"RSS while labelling: start {many['rss_mib']['start']:.0f} MiB; {rss}; growth from {mark:,} to "
              f"{many['videos']:,} videos {many['growth_mib_after_mark']:+.1f} MiB (target: flat); after merging "
              f"{many['rss_mib']['after_merge']:.0f} MiB; pseudo-label file {many['output_mib']:.1f} MiB", flush=True)
        thumos = thumos_part(work, n_thumos)
        print(f"[thumos preset, 1,000-2,304 rows, D=512] {thumos['videos']} videos: "
              f"{thumos['videos_per_s']:.2f} videos/s end to end (best of {REPEATS}); useful model FLOPs over the "
              f"same runs {thumos['useful_gflop_per_s']:.1f} GFLOP/s = {thumos['useful_fraction_of_matmul']:.2f} "
              f"of dense matmul ({thumos['matmul_gflop_per_s']:.1f} GFLOP/s, best of {REPEATS}) (target >= 0.5)",
              flush=True)
        if args.json:
            args.json.write_text(json.dumps({"thumos": thumos, "many": many}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
