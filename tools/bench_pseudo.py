"""Benchmark of pseudo-labelling (`tal-pseudo`), every figure measured in this one run on this machine.

1. THUMOS-length videos (1,000-2,304 rows, D = 512) with the `thumos` preset: end-to-end videos/s of
   `tal.pseudo.pseudo_label_store` (store reads, model, soft-NMS, filtering, streamed writing), and the model's
   achieved FLOP/s (counted with torch.utils.flop_counter) as a fraction of the dense-matmul FLOP/s measured
   here (target >= 0.5).
2. 100,000 short simulated videos (D = 32, 16-48 rows, a small model): peak RSS after 10,000 and after 100,000
   videos (target: flat), read from /proc while the run goes on.

The features are smooth random walks and the model is untrained (every proposal scores about the prior, the
worst case for NMS): speed and memory do not depend on what the features mean.

    python tools/bench_pseudo.py            # full
    python tools/bench_pseudo.py --quick    # a few minutes
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.store import Grid, VideoInfo, create_store, open_store  # noqa: E402
from tal.checkpoint import save_checkpoint, store_provenance  # noqa: E402
from tal.config import load_config  # noqa: E402
from tal.model import build_model  # noqa: E402
from tal.pseudo import FilterConfig, pseudo_label_store  # noqa: E402

GRID = Grid(fps=30.0, window=16, stride=4, frame_step=4)
PROVENANCE = {"encoder": "simulated", "pretrained": "random", "image_size": None, "preprocess": "none",
              "normalise": "l2", "fps": 30.0, "window": 16, "stride": 4, "frame_step": 4, "simulated": True}


def write_store(path: Path, n: int, dim: int, rows: tuple[int, int], seed: int, batch: int = 500) -> None:
    rng = np.random.default_rng(seed)
    with create_store(path, dim=dim, provenance=PROVENANCE) as store:
        pending = []
        for i in range(n):
            t = int(rng.integers(rows[0], rows[1] + 1))
            x = np.cumsum(rng.normal(size=(t, dim)).astype(np.float32), axis=0) * 0.1 + rng.normal(size=dim)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            info = VideoInfo(num_rows=t, fps=30.0, duration=((t - 1) * 4 + 16) / 30.0, num_frames=-1, grid=GRID)
            pending.append((f"v{i:07d}", x, info))
            if len(pending) == batch:
                store.write_videos(pending)
                pending = []
        store.write_videos(pending)


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
def model_flops(model: torch.nn.Module, store_path: Path, n_videos: int) -> tuple[float, float]:
    """(FLOPs counted, seconds) of the forward pass alone over the first videos, one video per call."""
    from torch.utils.flop_counter import FlopCounterMode

    with open_store(store_path) as st:
        ids = st.video_ids()[:n_videos]
        feats = [torch.from_numpy(st.read(v).astype(np.float32)) for v in ids]
    stride = model.cfg.max_stride if hasattr(model, "cfg") else 32
    batches = []
    for x in feats:
        t = x.shape[0]
        padded = -(-t // stride) * stride
        f = torch.zeros(1, x.shape[1], padded)
        f[0, :, :t] = x.T
        m = torch.zeros(1, padded, dtype=torch.bool)
        m[0, :t] = True
        batches.append((f, m))
    model(*batches[0])  # warm-up
    counter = FlopCounterMode(display=False)
    with counter:
        for f, m in batches:
            model(f, m)
    flops = counter.get_total_flops()
    t = time.perf_counter()
    for f, m in batches:
        model(f, m)
    return float(flops), time.perf_counter() - t


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def thumos_part(work: Path, n_videos: int) -> dict:
    store = work / "thumos.zarr"
    write_store(store, n_videos, 512, (1000, 2304), seed=1, batch=8)
    model = write_checkpoint(work / "thumos.pt", store, "thumos")
    peak = matmul_flops()
    flops, secs = model_flops(model, store, min(n_videos, 4))
    t = time.perf_counter()
    stats = pseudo_label_store(store, work / "thumos.pt", work / "thumos_pl.json", FilterConfig(), batch_size=1,
                               progress=False)
    elapsed = time.perf_counter() - t
    return {"videos": stats.videos, "videos_per_s": stats.videos / elapsed, "seconds": elapsed,
            "model_gflop_per_s": flops / secs / 1e9, "matmul_gflop_per_s": peak / 1e9,
            "model_fraction_of_matmul": flops / secs / peak}


def scale_part(work: Path, n_videos: int, checkpoint_at: int) -> dict:
    store = work / "many.zarr"
    t = time.perf_counter()
    write_store(store, n_videos, 32, (16, 48), seed=2, batch=2000)
    write_s = time.perf_counter() - t
    small = ["model.embd_dim=32", "model.fpn_dim=32", "model.head_dim=32", "model.n_head=2",
             "model.attn_window=5", "model.max_seq_len=64"]
    write_checkpoint(work / "many.pt", store, "small", small)
    out = work / "many_pl.json"
    part = out.with_name(out.name + ".parts") / "shard-00000-of-00001.jsonl"
    marks: dict[str, float] = {}
    done = threading.Event()

    def watch():  # count finished lines of the part file; note the peak RSS when the mark is passed
        seen, offset = 0, 0
        while not done.is_set() and "at_mark" not in marks:
            if part.exists():
                with open(part, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                    offset += len(chunk)
                    seen += chunk.count(b"\n")
                if seen >= checkpoint_at:
                    marks["at_mark"] = peak_rss_mib()
                    marks["videos_at_mark"] = seen
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t = time.perf_counter()
    stats = pseudo_label_store(store, work / "many.pt", out, FilterConfig(), batch_size=32, progress=False)
    elapsed = time.perf_counter() - t
    done.set()
    watcher.join()
    final = peak_rss_mib()
    return {"videos": stats.videos, "store_write_s": write_s, "pseudo_s": elapsed,
            "videos_per_s": stats.videos / elapsed, "pseudo_labels": stats.segments,
            f"peak_rss_mib_at_{marks.get('videos_at_mark', 0)}": marks.get("at_mark"),
            f"peak_rss_mib_at_{stats.videos}": final,
            "rss_ratio_end_vs_mark": final / marks["at_mark"] if marks.get("at_mark") else None,
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
        # The many-videos run goes first so that its peak RSS is its own, not the THUMOS model's.
        many = scale_part(work, n_many, mark)
        keys = [k for k in many if k.startswith("peak_rss")]
        print(f"[small model, D=32, 16-48 rows] {many['videos']} videos: {many['videos_per_s']:.0f} videos/s; "
              + "; ".join(f"{k.replace('_', ' ')} = {many[k]:.0f}" for k in keys)
              + f"; ratio {many['rss_ratio_end_vs_mark']:.3f} (target: flat, ~1.0); "
              f"pseudo-label file {many['output_mib']:.1f} MiB", flush=True)
        thumos = thumos_part(work, n_thumos)
        print(f"[thumos preset, 1,000-2,304 rows, D=512] {thumos['videos']} videos: "
              f"{thumos['videos_per_s']:.2f} videos/s end to end; model {thumos['model_gflop_per_s']:.1f} GFLOP/s "
              f"= {thumos['model_fraction_of_matmul']:.2f} of dense matmul ({thumos['matmul_gflop_per_s']:.1f} "
              f"GFLOP/s) (target >= 0.5)", flush=True)
        if args.json:
            args.json.write_text(json.dumps({"thumos": thumos, "many": many}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
