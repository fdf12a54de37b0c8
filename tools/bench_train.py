"""Training and inference speed of the localizer on a THUMOS-sized SIMULATED store, on this machine's CPU.

Prints, measured in one run:
- training iterations/s with the `thumos` preset (batch 2, max_seq_len 2304, data loading included) and the
  model FLOP/s achieved (forward + backward counted with torch.utils.flop_counter) as a fraction of the dense
  float32 matmul FLOP/s measured here (aim >= 0.3);
- inference videos/s (tal.infer.iter_detections: reading, forward, soft-NMS) and its FLOP/s fraction
  (aim >= 0.5), plus the fraction of the forward passes alone;
- peak RSS of this process and of its DataLoader workers (target < 4 GiB).

The store (413 videos of up to 2,304 rows, D = 512, from tal.sim's thumos preset) is cached in --work.
Usage: python tools/bench_train.py [--quick] [--work bench_train_data] [--threads N]
"""

from __future__ import annotations

import dataclasses
import os
import resource
import time
from pathlib import Path

import click
import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from tal.config import load_config
from tal.data.collate import PadCollate
from tal.data.dataset import StoreSet
from tal.infer import Localizer, iter_detections
from tal.model import build_model
from tal.model.ema import ModelEMA
from tal.model.optim import param_groups
from tal.train import TrainInputs, build_training_set, train_step


def thumos_store(work: Path, n_videos: int) -> tuple[Path, Path]:
    from tal.sim import preset, write_benchmark

    out = work / f"thumos_{n_videos}"
    if not (out / "benchmark.json").exists():
        cfg, _ = preset("thumos", seed=0)
        print(f"simulating {n_videos} THUMOS-sized videos into {out} (SIMULATED data; cached for reruns)")
        write_benchmark(out, cfg, n_curated_train=n_videos, n_web_unlabeled=0, n_curated_test=0, n_web_test=0,
                        labelled_classes="all")
    return out / "curated_train.zarr", out / "curated_train.json"


def matmul_flops(seconds: float) -> float:
    """Dense float32 matmul FLOP/s on this machine (the roofline the model is compared with)."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - t0)


def peak_rss_mib() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def bench_training(cfg, store, ann, iters: int, warmup: int):
    dataset, classes, prov = build_training_set(cfg, TrainInputs([store], [ann]))
    cfg.model = dataclasses.replace(cfg.model, input_dim=prov["dim"], num_classes=len(classes))
    model = build_model(cfg.model)
    ema = ModelEMA(model, cfg.train.ema_decay)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True, num_workers=cfg.data.num_workers,
                        collate_fn=PadCollate(cfg.model.max_stride, min_len=cfg.max_seq_len), drop_last=True)
    model.train()
    batches = iter(loader)
    step = lambda: train_step(model, model, ema, optimizer, scaler, next(batches), torch.device("cpu"),  # noqa: E731
                              cfg.train.clip_grad, False)
    for _ in range(warmup):
        step()
    with FlopCounterMode(display=False) as counter:  # forward + backward of one batch (shapes are fixed)
        step()
    flops_per_iter = counter.get_total_flops()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    elapsed = time.perf_counter() - t0
    return model, classes, prov, iters / elapsed, flops_per_iter


def bench_inference(cfg, model, classes, prov, store, n_videos: int):
    """(videos/s end to end, FLOP/s end to end, FLOP/s of the forward passes alone)."""
    from tal.data.dataset import FeatureDataset, inference_records

    stores = StoreSet([store])
    ids = stores[0].video_ids()[:n_videos]
    ds = FeatureDataset([store], inference_records(stores, ids), training=False, max_seq_len=cfg.max_seq_len)
    stores.close()
    collate = PadCollate(cfg.model.max_stride)
    batches = [collate([ds[i]]) for i in range(len(ds))]
    ds.stores.close()
    model.eval()
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            for batch in batches:
                model(batch["feats"], batch["masks"])
        flops = counter.get_total_flops()
        t0 = time.perf_counter()
        for batch in batches:
            model(batch["feats"], batch["masks"])
        forward_s = time.perf_counter() - t0
    localizer = Localizer(model, cfg, "closed", classes, prov, source="bench model")
    list(iter_detections(store, localizer, ids[:1]))  # warm-up
    t0 = time.perf_counter()
    n = sum(1 for _ in iter_detections(store, localizer, ids))
    elapsed = time.perf_counter() - t0
    return n / elapsed, flops / elapsed, flops / forward_s


@click.command()
@click.option("--quick", is_flag=True, help="24 videos, fewer iterations (a smoke run).")
@click.option("--work", default="bench_train_data", show_default=True, type=click.Path(file_okay=False))
@click.option("--threads", type=int, default=None, help="torch threads (default: all cores).")
def main(quick, work, threads):
    torch.set_num_threads(threads or os.cpu_count())
    torch.manual_seed(0)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    n_videos, iters, warmup, infer_videos = (24, 3, 1, 6) if quick else (413, 6, 1, 20)
    store, ann = thumos_store(work, n_videos)
    cfg = load_config("thumos", ["data.mode=closed"])
    # the matmul roofline is timed before, between and after the model runs and the best is kept, so that a
    # busy machine cannot flatter the ratios by slowing the baseline alone
    seconds = 2.0 if quick else 4.0
    rooflines = [matmul_flops(seconds)]
    model, classes, prov, it_s, flops_iter = bench_training(cfg, store, ann, iters, warmup)
    train_flops = flops_iter * it_s
    rooflines.append(matmul_flops(seconds))
    vid_s, infer_flops, forward_flops = bench_inference(cfg, model, classes, prov, store, infer_videos)
    rooflines.append(matmul_flops(seconds))
    peak_matmul = max(rooflines)
    rss, rss_workers = peak_rss_mib()
    print(f"SIMULATED THUMOS-sized store: {n_videos} videos, D {prov['dim']}, preset thumos "
          f"(batch {cfg.train.batch_size}, max_seq_len {cfg.model.max_seq_len}), {torch.get_num_threads()} threads")
    print(f"dense matmul (float32):   {peak_matmul / 1e9:8.1f} GFLOP/s  (best of "
          f"{', '.join(f'{r / 1e9:.1f}' for r in rooflines)})")
    print(f"training:                 {it_s:8.3f} iterations/s  ({flops_iter / 1e9:.1f} GFLOP/iteration, "
          f"{train_flops / 1e9:.1f} GFLOP/s = {train_flops / peak_matmul:.2f} of matmul; aim >= 0.3)")
    print(f"inference:                {vid_s:8.3f} videos/s      ({infer_flops / 1e9:.1f} GFLOP/s = "
          f"{infer_flops / peak_matmul:.2f} of matmul; aim >= 0.5; forward passes alone: "
          f"{forward_flops / peak_matmul:.2f})")
    print(f"peak RSS:                 {rss:8.0f} MiB (DataLoader workers: {rss_workers:.0f} MiB; target < 4096)")


if __name__ == "__main__":
    main()
