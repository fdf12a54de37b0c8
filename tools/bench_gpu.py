"""The GPU benchmark: extraction, training and pseudo-labelling throughput on one device, in one run.

1. Training iterations/s of the `thumos` preset (batch 2, max_seq_len 2304, D 512) with AMP — bfloat16 where
   the device supports it, else float16 with loss scaling (tal-train's train.amp_dtype) — length-aware batches
   against padded-to-max ones, data loading included (clip lengths uniform in 150-2,304 rows: on average about
   the real THUMOS14 validation videos' 0.52 of max_seq_len; random-walk rows, random actions).
2. Pseudo-labelling videos/s: tal.pseudo.pseudo_label_store end to end (store reads, model, soft-NMS,
   filtering, streamed writing) over web-length videos (150-670 rows) with the `thumos` preset's model.
3. Extraction snippets/s of open_clip ViT-B-16 (random weights: speed does not depend on them) in fp16 on real
   mp4s: end to end (`features.extract.extract_videos`: decode threads -> encoder -> HDF5 store) for each
   --decode-workers count, against decode-only (the same decode threads, frames discarded) and encoder-only
   (pre-decoded frames). The videos are repeated as separate jobs to make the runs long enough.

Every section writes its figures to --out as soon as it ends (a run cut short keeps what it measured).
Runs on a CPU with --device cpu --small (tiny models, a few videos), as the test suite does.

    python tools/bench_gpu.py --out bench_gpu.json                         # CUDA, ~3 minutes on an H100
    python tools/bench_gpu.py --device cpu --small --out /tmp/bench.json   # a smoke run
    python tools/bench_gpu.py --videos DIR [...]                           # mp4s to use (default: found)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS.parent))
sys.path.insert(0, str(TOOLS))

# Sizes: (full: one GPU in a few minutes, small: a CPU smoke run)
SIZES = {
    "full": dict(train_videos=200, train_iters=150, warmup=15, pseudo_videos=2000, pseudo_batch=16,
                 frames=24_000, encoder_batch=64, model="ViT-B-16", grid=(30.0, 16, 4, 4), overrides=[]),
    "small": dict(train_videos=8, train_iters=2, warmup=1, pseudo_videos=6, pseudo_batch=3, frames=40,
                  encoder_batch=16, model="tiny", grid=(30.0, 32, 16, 16),
                  overrides=["model.embd_dim=32", "model.fpn_dim=32", "model.head_dim=32", "model.max_seq_len=256",
                             "data.num_workers=0"]),
}
# A tiny open_clip architecture for CPU smoke runs (real open_clip code, few weights).
TINY_CLIP = {"embed_dim": 64,
             "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}


def device_info(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        info.update(name=torch.cuda.get_device_name(device), bf16=torch.cuda.is_bf16_supported())
    return info


# --------------------------------------------------------------------------------------------- training
def random_actions(store: Path, out: Path, seed: int) -> Path:
    """1-4 actions of 5-60 snippets per video, official format, subset training."""
    from features.store import open_store
    from tal.data.annotations import AnnotationSet, Segment, VideoAnnotation, write_official
    from tal.data.grid import GridMap

    rng = np.random.default_rng(seed)
    videos = {}
    with open_store(store) as st:
        for vid in st.video_ids():
            info = st.info(vid)
            grid = GridMap.from_grid(info.grid, info.duration)
            segs = []
            for _ in range(int(rng.integers(1, 5))):
                length = int(rng.integers(5, 61))
                start = int(rng.integers(0, max(info.num_rows - length, 1)))
                a, b = grid.to_seconds(np.array([[start, min(start + length, info.num_rows)]], np.float64))[0]
                segs.append(Segment(float(a), float(b), "action"))
            videos[vid] = VideoAnnotation(vid, "training", info.duration, info.fps, segs)
    write_official(AnnotationSet(videos), out)
    return out


def training_section(work: Path, device: torch.device, size: dict) -> dict:
    from bench_train import bench_training
    from random_walk_store import write_random_walk_store

    from tal.config import load_config

    sets = size["overrides"] + ["data.mode=agnostic"]
    if device.type == "cuda":
        sets.append(f"data.num_workers={min(4, os.cpu_count() or 1)}")
    longest = load_config("thumos", sets).max_seq_len
    lengths = np.random.default_rng(0).integers(longest * 150 // 2304, longest + 1, size=size["train_videos"])
    store = write_random_walk_store(work / "train.h5", lengths, 512, seed=0)
    ann = random_actions(store, work / "train.json", seed=0)
    amp = None
    if device.type == "cuda":
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    result = {"amp": str(amp).replace("torch.", "") if amp else "off (cpu)", "videos": len(lengths),
              "max_seq_len": longest, "mean_fill": float(lengths.mean() / longest)}
    for batching in ("length", "max"):
        cfg = load_config("thumos", sets + [f"data.batching={batching}"])
        _, it_s, _, rows = bench_training(cfg, store, ann, size["train_iters"], size["warmup"], device=device,
                                          amp_dtype=amp, repeats=1)
        result[batching] = {"it_per_s": it_s, "valid_rows_per_it": rows, "iterations": size["train_iters"]}
    result["length_vs_max"] = result["length"]["it_per_s"] / result["max"]["it_per_s"]
    return result


# --------------------------------------------------------------------------------------------- pseudo-labels
def pseudo_section(work: Path, device: torch.device, size: dict) -> dict:
    from bench_pseudo import write_checkpoint, write_store

    from tal.pseudo import FilterConfig, pseudo_label_store

    store = work / "web.h5"
    write_store(store, size["pseudo_videos"], 512, (150, 670), 3)
    write_checkpoint(work / "web.pt", store, "thumos", size["overrides"])
    pseudo_label_store(store, work / "web.pt", work / "warm.json", FilterConfig(), batch_size=size["pseudo_batch"],
                       device=device, progress=False, shard=(0, max(size["pseudo_videos"] // 8, 1)))  # warm-up
    t = time.perf_counter()
    stats = pseudo_label_store(store, work / "web.pt", work / "pl.json", FilterConfig(),
                               batch_size=size["pseudo_batch"], device=device, progress=False)
    elapsed = time.perf_counter() - t
    return {"videos": stats.videos, "seconds": elapsed, "videos_per_s": stats.videos / elapsed,
            "batch_size": size["pseudo_batch"], "pseudo_labels": stats.segments}


# --------------------------------------------------------------------------------------------- extraction
def find_videos(given) -> list[Path]:
    from bench_extract import sample_videos

    if not given:
        return sample_videos()
    found = []
    for item in map(Path, given):
        found += sorted(item.glob("*.mp4")) if item.is_dir() else [item]
    return found


def decode_only(jobs, options, preprocess, workers: int) -> tuple[int, int, float]:
    """(frames, snippets, seconds) of the pipeline's decode threads with nothing consuming but a counter."""
    from features.extract import _Chunk, _DecodeWorker, _End, _Fail, _next, _Start, stop_decoders

    threads = [_DecodeWorker(jobs[w::workers], options, preprocess, pin=False) for w in range(workers)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    frames = snippets = 0
    for k in range(len(jobs)):  # consumed in the order extract_videos consumes them
        worker = threads[k % workers]
        item = _next(worker)
        if isinstance(item, _Start):
            snippets += item.plan.num_snippets
            while not isinstance(item, (_End, _Fail)):
                item = _next(worker)
                if isinstance(item, _Chunk):
                    frames += len(item.frames)
    elapsed = time.perf_counter() - t
    stop_decoders(threads)
    return frames, snippets, elapsed


def extraction_section(work: Path, device: torch.device, size: dict, videos: list[Path], decode_workers) -> dict:
    from features.decode import VideoSource, plan_snippets
    from features.encoders import load_encoder
    from features.extract import ExtractOptions, VideoJob, extract_videos
    from features.store import Grid

    model = size["model"]
    if model == "tiny":
        model = str(work / "tiny-clip.json")
        Path(model).write_text(json.dumps(TINY_CLIP))
    encoder = load_encoder(model, "none", device=str(device), precision="fp16" if device.type == "cuda" else "fp32")
    grid = Grid(*size["grid"])
    frames_once = 0
    for path in videos:
        source = VideoSource(path)
        frames_once += len(plan_snippets(source.timestamps, source.duration, grid).source_frames)
        source.close()
    repeat = max(1, -(-size["frames"] // frames_once))
    jobs = [VideoJob(f"{path.stem}-{r}", path) for r in range(repeat) for path in videos]
    options = ExtractOptions(grid=grid, batch_size=size["encoder_batch"], dtype="float16")
    result = {"model": encoder.model_name, "precision": encoder.precision, "videos": len(videos),
              "repeat": repeat, "jobs": len(jobs), "batch_size": size["encoder_batch"]}

    # encoder-only: one pass of pre-decoded, pre-processed frames, encoded `repeat` times
    chunks = []
    for path in videos:
        source = VideoSource(path)
        plan = plan_snippets(source.timestamps, source.duration, grid)
        chunks += [encoder.preprocess(source.decode(plan.source_frames[s:s + options.batch_size]))
                   for s in range(0, len(plan.source_frames), options.batch_size)]
        source.close()
    flat = torch.cat(chunks)
    batches = list(flat.split(options.batch_size))
    encoder.encode_images(batches[0])  # warm-up
    t = time.perf_counter()
    for _ in range(repeat):
        for batch in batches:
            encoder.encode_images(batch)  # returns numpy: synchronises
    enc_s = time.perf_counter() - t
    result["encoder_only_frames_per_s"] = repeat * len(flat) / enc_s

    result["decode_only"], result["end_to_end"] = {}, {}
    for workers in decode_workers:
        frames, snippets, dec_s = decode_only(jobs, ExtractOptions(grid=grid, batch_size=options.batch_size,
                                                                   decode_workers=workers), encoder.preprocess,
                                              workers)
        result["decode_only"][workers] = {"frames_per_s": frames / dec_s, "snippets_per_s": snippets / dec_s,
                                          "frames": frames, "snippets": snippets}
        store = work / f"extract_{workers}.h5"
        t = time.perf_counter()
        summary = extract_videos(jobs, store, encoder, ExtractOptions(grid=grid, batch_size=options.batch_size,
                                                                     dtype="float16", decode_workers=workers),
                                 progress=False)
        e2e_s = time.perf_counter() - t
        if summary.failed:
            raise SystemExit(f"extraction failed on {len(summary.failed)} video(s): {summary.lines()[1:3]}")
        result["end_to_end"][workers] = {"snippets_per_s": summary.snippets / e2e_s,
                                         "frames_per_s": summary.frames / e2e_s, "snippets": summary.snippets,
                                         "frames": summary.frames}
        store.unlink(missing_ok=True)
    snippets_per_frame = summary.snippets / summary.frames
    result["encoder_only_snippets_per_s"] = result["encoder_only_frames_per_s"] * snippets_per_frame
    return result


# --------------------------------------------------------------------------------------------- report
def print_section(name: str, r: dict) -> None:
    if name == "training":
        print(f"training (thumos preset, AMP {r['amp']}): length-aware {r['length']['it_per_s']:.2f} it/s, "
              f"padded to max {r['max']['it_per_s']:.2f} it/s ({r['length_vs_max']:.2f}x; clips fill "
              f"{r['mean_fill']:.2f} of max_seq_len)", flush=True)
    elif name == "pseudo":
        print(f"pseudo-labelling (thumos preset model, batch {r['batch_size']}): {r['videos_per_s']:.1f} videos/s "
              f"end to end ({r['videos']} web-length videos)", flush=True)
    else:
        print(f"extraction ({r['model']} {r['precision']}, batch {r['batch_size']}, {r['videos']} real mp4s x "
              f"{r['repeat']}): encoder-only {r['encoder_only_snippets_per_s']:.0f} snippets/s", flush=True)
        for w, e in r["end_to_end"].items():
            d = r["decode_only"][w]
            print(f"  {w:3d} decode workers: end to end {e['snippets_per_s']:.0f} snippets/s = "
                  f"{e['snippets_per_s'] / r['encoder_only_snippets_per_s']:.2f} of encoder-only; decode-only "
                  f"{d['snippets_per_s']:.0f} snippets/s ({d['frames_per_s']:.0f} frames/s)", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--small", action="store_true", help="tiny models and few videos (a CPU smoke run)")
    ap.add_argument("--videos", nargs="*", default=None, help="mp4 files or folders (default: the sample videos)")
    ap.add_argument("--decode-workers", default=None, help="comma-separated counts (default: 4 and cores-2)")
    ap.add_argument("--sections", default="training,pseudo,extraction")
    ap.add_argument("--out", type=Path, default=Path("bench_gpu.json"))
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available here (use --device cpu --small for a smoke run)")
    size = SIZES["small" if args.small else "full"]
    cores = os.cpu_count() or 1
    workers = ([int(w) for w in args.decode_workers.split(",")] if args.decode_workers
               else ([1] if args.small else sorted({min(4, cores), max(cores - 2, 1)})))
    videos = find_videos(args.videos)
    sections = args.sections.split(",")
    if "extraction" in sections and not videos:
        ap.error("no mp4 videos found: pass --videos (e.g. the mp4s of ../shared/data/real-features)")
    work = Path(tempfile.mkdtemp(prefix="bench_gpu_", dir=args.work))
    report = {"info": device_info(device), "small": args.small}
    print(json.dumps(report["info"]), flush=True)
    try:
        # extraction last: loading an encoder makes CUDA deterministic for the rest of the process
        for name in ("training", "pseudo", "extraction"):
            if name not in sections:
                continue
            t = time.perf_counter()
            if name == "training":
                report[name] = training_section(work, device, size)
            elif name == "pseudo":
                report[name] = pseudo_section(work, device, size)
            else:
                report[name] = extraction_section(work, device, size, videos, workers)
            report[name]["section_seconds"] = time.perf_counter() - t
            print_section(name, report[name])
            args.out.write_text(json.dumps(report, indent=1, default=str))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
