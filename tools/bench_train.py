"""Training and inference speed of the localizer on a THUMOS-sized SIMULATED store, on this machine's CPU.

Every ratio counts *useful* FLOPs only — those spent on valid rows, not on padding — against the dense float32
matmul FLOP/s measured in the same run. Useful FLOPs = (FLOPs per row) x (valid rows processed), with the FLOPs
per row counted once by torch.utils.flop_counter on a batch without padding at max_seq_len (forward + backward
for training, forward for inference). Both sides are the best of 3: three matmul timings spread over the run, and
three timed passes over the same batches / videos.

Prints, measured in one run:
- training iterations/s with the `thumos` preset (batch 2, max_seq_len 2304, the default length-aware batches,
  data loading included) and its useful FLOP/s as a fraction of matmul (aim >= 0.3);
- inference videos/s (tal.infer.iter_detections: reading, forward, soft-NMS) and its useful FLOP/s fraction
  (aim >= 0.5), plus the fraction of the forward passes alone;
- peak RSS of this process and of its DataLoader workers (target < 4 GiB).

The store (413 videos of up to 2,304 rows, D = 512, from tal.sim's thumos preset) is cached in --work.
Usage: python tools/bench_train.py [--quick] [--work bench_train_data] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import resource
import time
from pathlib import Path

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
from tal.train import Distributed, TrainInputs, build_training_set, epoch_batches, train_step, training_collate

REPEATS = 3


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


def flops_per_row(model, cfg, backward: bool) -> float:
    """FLOPs per valid row: one batch without padding at max_seq_len, counted by torch's flop counter."""
    b, t, device = cfg.train.batch_size, cfg.max_seq_len, next(model.parameters()).device
    feats = torch.randn(b, cfg.model.input_dim, t, device=device)
    masks = torch.ones(b, t, dtype=torch.bool, device=device)
    with FlopCounterMode(display=False) as counter:
        if backward:
            out = model(feats, masks)
            (out["cls_logits"].sum() + out["offsets"].sum()).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(feats, masks)
    return counter.get_total_flops() / (b * t)


class TrainingRun:
    """A training set, model, EMA and optimiser built as tal-train builds them, stepped one batch at a time
    (tal.train.train_step) so that benchmarks can time steps — and interleave two runs on a busy machine."""

    def __init__(self, cfg, store, ann, subset="training", device="cpu", amp_dtype=None, seed=0):
        self.cfg, self.device, self.amp_dtype = cfg, torch.device(device), amp_dtype
        self.dataset, self.classes, self.prov = build_training_set(cfg, TrainInputs([store], [ann], subset=subset))
        cfg.model = dataclasses.replace(cfg.model, input_dim=self.prov["dim"], num_classes=len(self.classes))
        torch.manual_seed(seed)
        self.model = build_model(cfg.model).to(self.device).train()
        self.ema = ModelEMA(self.model, cfg.train.ema_decay)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.train.weight_decay), lr=cfg.train.lr)
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16 and self.device.type == "cuda")

    def batches(self, epoch: int = 0) -> list[list[int]]:
        """This epoch's batches (dataset indices), as tal-train draws them for a single process."""
        sampler = epoch_batches(self.cfg, self.dataset, Distributed())
        sampler.set_epoch(epoch)
        return list(sampler)

    def loader(self, batches):
        """Collated batches, read by the preset's DataLoader workers."""
        return iter(DataLoader(self.dataset, batch_sampler=batches, num_workers=self.cfg.data.num_workers,
                               collate_fn=training_collate(self.cfg), pin_memory=self.device.type == "cuda"))

    def step(self, batch) -> None:
        # the losses' .item() synchronises with the device every step, as in tal-train
        train_step(self.model, self.model, self.ema, self.optimizer, self.scaler, batch, self.device,
                   self.cfg.train.clip_grad, self.amp_dtype is not None, self.amp_dtype or torch.float16)


def bench_training(cfg, store, ann, iters: int, warmup: int, device="cpu", amp_dtype=None, repeats=REPEATS):
    """(run, iterations/s, useful FLOP/s, valid rows per iteration): best of ``repeats`` passes over the same
    batches. ``amp_dtype`` (torch.float16 / torch.bfloat16): autocast, as tal-train on CUDA."""
    run = TrainingRun(cfg, store, ann, device=device, amp_dtype=amp_dtype)
    per_row = flops_per_row(run.model, cfg, backward=True)
    chosen = list(itertools.islice(itertools.cycle(run.batches()), warmup + iters))  # the same in every pass
    sync = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)
    best_s, rows = float("inf"), 0
    for _ in range(repeats):
        torch.manual_seed(0)  # the same crops in every pass
        it = run.loader(chosen)
        for _ in range(warmup):
            run.step(next(it))
        sync()
        rows, t0 = 0, time.perf_counter()
        for batch in it:
            run.step(batch)
            rows += int(batch["lengths"].sum())
        sync()
        best_s = min(best_s, time.perf_counter() - t0)
    return run, iters / best_s, per_row * rows / best_s, rows / iters


def bench_inference(cfg, model, classes, prov, store, n_videos: int):
    """(videos/s end to end, useful FLOP/s end to end, useful FLOP/s of the forward passes alone), best of 3."""
    from tal.data.dataset import FeatureDataset, inference_records

    stores = StoreSet([store])
    ids = stores[0].video_ids()[:n_videos]
    ds = FeatureDataset([store], inference_records(stores, ids), training=False, max_seq_len=cfg.max_seq_len)
    stores.close()
    collate = PadCollate(cfg.model.max_stride)
    batches = [collate([ds[i]]) for i in range(len(ds))]
    ds.stores.close()
    rows = sum(int(b["lengths"].sum()) for b in batches)
    model.eval()
    useful = flops_per_row(model, cfg, backward=False) * rows
    forward_s = float("inf")
    with torch.no_grad():
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            for batch in batches:
                model(batch["feats"], batch["masks"])
            forward_s = min(forward_s, time.perf_counter() - t0)
    localizer = Localizer(model, cfg, "closed", classes, prov, source="bench model")
    list(iter_detections(store, localizer, ids[:1]))  # warm-up
    elapsed = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        n = sum(1 for _ in iter_detections(store, localizer, ids))
        elapsed = min(elapsed, time.perf_counter() - t0)
    return n / elapsed, useful / elapsed, useful / forward_s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="24 videos, fewer iterations (a smoke run)")
    ap.add_argument("--work", default="bench_train_data", help="where the simulated store is cached")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = ap.parse_args()
    quick, work = args.quick, args.work
    torch.set_num_threads(args.threads or os.cpu_count())
    torch.manual_seed(0)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    n_videos, iters, warmup, infer_videos = (24, 3, 1, 6) if quick else (413, 8, 1, 20)
    store, ann = thumos_store(work, n_videos)
    cfg = load_config("thumos", ["data.mode=closed"])
    # the matmul roofline is timed before, between and after the model runs and the best is kept, so that a
    # busy machine cannot flatter the ratios by slowing the baseline alone
    seconds = 2.0 if quick else 4.0
    rooflines = [matmul_flops(seconds)]
    run, it_s, train_flops, rows_per_iter = bench_training(cfg, store, ann, iters, warmup)
    prov = run.prov
    rooflines.append(matmul_flops(seconds))
    vid_s, infer_flops, forward_flops = bench_inference(cfg, run.model, run.classes, prov, store, infer_videos)
    rooflines.append(matmul_flops(seconds))
    peak_matmul = max(rooflines)
    rss, rss_workers = peak_rss_mib()
    print(f"SIMULATED THUMOS-sized store: {n_videos} videos, D {prov['dim']}, preset thumos "
          f"(batch {cfg.train.batch_size}, max_seq_len {cfg.model.max_seq_len}, batching {cfg.data.batching}), "
          f"{torch.get_num_threads()} threads; FLOPs counted on valid rows only")
    print(f"dense matmul (float32):   {peak_matmul / 1e9:8.1f} GFLOP/s  (best of "
          f"{', '.join(f'{r / 1e9:.1f}' for r in rooflines)})")
    print(f"training:                 {it_s:8.3f} iterations/s  ({rows_per_iter:.0f} valid rows/iteration, "
          f"best of {REPEATS} passes over {iters} batches; {train_flops / 1e9:.1f} useful GFLOP/s = "
          f"{train_flops / peak_matmul:.2f} of matmul; aim >= 0.3)")
    print(f"inference:                {vid_s:8.3f} videos/s      ({infer_flops / 1e9:.1f} useful GFLOP/s = "
          f"{infer_flops / peak_matmul:.2f} of matmul; aim >= 0.5; forward passes alone: "
          f"{forward_flops / peak_matmul:.2f})")
    print(f"peak RSS:                 {rss:8.0f} MiB (DataLoader workers: {rss_workers:.0f} MiB; target < 4096)")


if __name__ == "__main__":
    main()
