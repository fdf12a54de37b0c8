"""Training of the localizer from feature stores: one process, or DDP under torchrun.

``train(cfg, inputs, out)`` runs the ActionFormer recipe — AdamW without decay on biases/norms/scales, linear
warm-up then cosine, model EMA, gradient clipping, AMP on CUDA — and after every epoch writes an atomic
checkpoint (``out/last.pt``), ``log.csv``, ``loss_curve.png`` and, when due, an evaluation of the EMA model on a
held-out subset. ``resume=True`` continues from ``out/last.pt``: every epoch is seeded from (seed, epoch, rank),
so a resumed run sees the same crops and order as an uninterrupted one.

Under ``torchrun --nproc_per_node N -m tal.cli.train ...`` (same options as ``tal-train``) each process trains on
its shard of every epoch (gloo on CPU, NCCL on GPU); only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from features.compat import mismatches
from features.errors import StovtalError
from tal import __version__
from tal.checkpoint import (CheckpointError, check_compatible, check_same_features, load_checkpoint, rng_state,
                            save_checkpoint, set_rng_state)
from tal.config import RunConfig, save_config
from tal.data.annotations import AnnotationSet, Segment, VideoAnnotation, load_annotations
from tal.data.collate import PadCollate
from tal.data.dataset import FeatureDataset, StoreSet, build_records
from tal.data.sampling import training_batches
from tal.model import build_model
from tal.model.ema import ModelEMA
from tal.model.optim import param_groups
from tal.runlog import TensorBoard, write_run_record

log = logging.getLogger("tal.train")

CHECKPOINT_NAME = "last.pt"
AGNOSTIC_CLASSES = ["action"]


class TrainError(StovtalError, ValueError):
    """A one-line message naming the run directory, file or option at fault."""


@dataclass
class TrainInputs:
    """What a run trains on. Splits and vocabularies apply to the human labels only."""

    features: list  # store paths; annotations join to the first store holding each video
    annotations: list  # human-labelled annotation files
    pseudo: list = field(default_factory=list)  # pseudo-label files (class-agnostic, label "action")
    subset: str | None = "training"  # subset of the human annotation files used for training
    split: str | None = None  # tal.eval.protocols.load_split spec, e.g. "thumos14:75:0"
    classes: str = "all"  # with a split: train on its base classes or all
    prefer_store: str | None = None  # the store whose rows win for a video several stores hold differently

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for key in ("features", "annotations", "pseudo"):
            d[key] = [str(p) for p in d[key]]
        d["prefer_store"] = None if self.prefer_store is None else str(self.prefer_store)
        return d


# --------------------------------------------------------------------------------------------- data
def _load_human(inputs: TrainInputs, subset) -> list[tuple[str, AnnotationSet]]:
    sets = []
    for path in inputs.annotations:
        aset = load_annotations(path)
        sets.append((str(path), aset.subset(subset) if subset else aset))
    return sets


def _split_classes(inputs: TrainInputs) -> list[str] | None:
    if inputs.split is None:
        return None
    from tal.eval.protocols import SplitError, load_split

    try:
        split = load_split(inputs.split)
    except SplitError as e:
        raise TrainError(f"--split {inputs.split}: {e}") from None
    if inputs.classes not in ("base", "all"):
        raise TrainError(f"--classes must be base or all for training, got {inputs.classes!r}")
    return list(split.base if inputs.classes == "base" else split.all)


def training_classes(cfg: RunConfig, inputs: TrainInputs, human) -> list[str]:
    """Closed mode: the split's classes or every label of the human training files; agnostic: ["action"]."""
    if cfg.data.mode == "agnostic":
        return list(AGNOSTIC_CLASSES)
    chosen = _split_classes(inputs)
    if chosen is not None:
        return chosen
    return sorted({c for _, aset in human for c in aset.classes})


def build_training_set(cfg: RunConfig, inputs: TrainInputs):
    """(dataset, classes, provenance) for a run; stores are closed again before workers fork."""
    if cfg.data.mode == "closed" and inputs.pseudo:
        raise TrainError("pseudo-labels are class-agnostic: train with --mode agnostic when using --pseudo")
    stores = StoreSet(inputs.features, inputs.prefer_store)
    try:
        provenance = check_same_features([stores[i] for i in range(len(stores))])
        human = _load_human(inputs, inputs.subset)
        classes = training_classes(cfg, inputs, human)
        keep = _split_classes(inputs)
        records = []
        for path, aset in human:
            if keep is not None:
                aset = aset.restrict_classes(keep)
            records += build_records(stores, aset, source=path, mode=cfg.data.mode, classes=classes,
                                     skip_missing=cfg.data.skip_missing)
        for path in inputs.pseudo:
            records += build_records(stores, load_annotations(path), source=str(path), mode=cfg.data.mode,
                                     classes=classes, pseudo=True, pseudo_weight=cfg.data.pseudo_weight,
                                     skip_missing=cfg.data.skip_missing)
        _warn_unexpected_grid(cfg, stores)
    finally:
        stores.close()
    if not records:
        raise TrainError(f"no training videos with segments in {', '.join(map(str, inputs.annotations))}"
                         + (f" (subset {inputs.subset})" if inputs.subset else ""))
    dataset = FeatureDataset(inputs.features, records, training=True, max_seq_len=cfg.max_seq_len,
                             resize_len=cfg.data.resize_len, trunc_thresh=cfg.data.trunc_thresh,
                             crop_ratio=cfg.data.crop_ratio)
    return dataset, classes, provenance


def _warn_unexpected_grid(cfg: RunConfig, stores: StoreSet) -> None:
    expected = cfg.data.expected_grid or {}
    for i in range(len(stores)):
        prov = stores[i].provenance or {}
        diffs = [f"{k} {prov.get(k)} (preset expects {v})" for k, v in expected.items() if prov.get(k) != v]
        if diffs:
            log.warning("%s: grid differs from the preset's: %s", stores.paths[i], ", ".join(diffs))


def evaluation_set(cfg: RunConfig, inputs: TrainInputs, classes: list[str]) -> AnnotationSet | None:
    """Held-out ground truth (train.eval_subset of the human files) in the label space the model predicts."""
    if not cfg.train.eval_every or not cfg.train.eval_subset:
        return None
    videos = {}
    for _, aset in _load_human(inputs, cfg.train.eval_subset):
        keep = _split_classes(inputs) if cfg.data.mode == "agnostic" else classes
        if keep is not None:
            aset = aset.restrict_classes(keep)
        for vid, v in aset.videos.items():
            segs = v.segments if cfg.data.mode == "closed" else [
                Segment(s.start, s.end, AGNOSTIC_CLASSES[0]) for s in v.segments]
            videos[vid] = VideoAnnotation(vid, v.subset, v.duration, v.fps, segs)
    return AnnotationSet(videos)


# --------------------------------------------------------------------------------------------- schedule
def learning_rate(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up from 0, then cosine decay to 0 (ActionFormer's schedule), per iteration."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------- distributed
@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device=None) -> "Distributed":
        """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; without them this is a single process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
        if world <= 1:
            return cls(0, 1, torch.device(device) if device is not None else torch.device("cuda" if cuda else "cpu"))
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if cuda:
            torch.cuda.set_device(local_rank)
        if not torch_dist.is_initialized():
            torch_dist.init_process_group(backend="nccl" if cuda else "gloo")
        return cls(rank, world, torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu"))

    def mean(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(t)
        return (t / self.world).tolist()

    def barrier(self):
        if self.world > 1:
            torch_dist.barrier()

    def close(self):
        if self.world > 1 and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


# --------------------------------------------------------------------------------------------- the run
def _start_state(run_dir: Path, resume: bool, cfg: RunConfig):
    ckpt_path = run_dir / CHECKPOINT_NAME
    if resume:
        if not ckpt_path.is_file():
            log.info("%s: no checkpoint to resume from; starting a new run", run_dir)
            return cfg, None
        state = load_checkpoint(ckpt_path)
        saved = dict(state["config"])
        if "batching" not in (saved.get("data") or {}):  # started before length-aware batching: keep its batches
            saved["data"] = {**(saved.get("data") or {}), "batching": "max"}
        return RunConfig.from_dict(saved, source=str(ckpt_path)), state
    if ckpt_path.exists():
        raise TrainError(f"{run_dir} already holds a checkpoint: pass --resume to continue it, or choose another --out")
    return cfg, None


def _load_weights(module, path, key_order, provenance, what):
    state = load_checkpoint(path)
    diffs = mismatches(state["provenance"], provenance, only_known=True)
    if diffs:
        raise CheckpointError(f"{path}: {what} was trained on other features ({', '.join(diffs)})")
    key = next(k for k in key_order if state.get(k) is not None)
    try:
        module.load_state_dict(state[key])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: {what}: its model does not match this run's "
                              f"({str(e).splitlines()[0]})") from None
    log.info("%s: weights (%s) from %s", what, key, path)


def train(cfg: RunConfig, inputs: TrainInputs, out, *, resume: bool = False, init_from=None, init_ema_from=None,
          device=None, progress: bool = True) -> Path:
    """Train and return the path of the final checkpoint (``out/last.pt``)."""
    run_dir = Path(out)
    dist = Distributed.from_env(device)
    try:
        return _train(cfg, inputs, run_dir, dist, resume, init_from, init_ema_from, progress)
    finally:
        dist.close()


@dataclass
class _Run:
    """What one training run carries from epoch to epoch (and saves in its checkpoint)."""

    cfg: RunConfig
    inputs: TrainInputs
    run_dir: Path
    dist: Distributed
    dataset: FeatureDataset
    classes: list
    provenance: dict
    model: torch.nn.Module
    net: torch.nn.Module  # the model, wrapped in DDP when distributed
    ema: ModelEMA
    ema_warmup: bool
    ema_initialised: bool  # the EMA started from stage-1 weights (--init-ema-from)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    use_amp: bool
    amp_dtype: torch.dtype
    start_epoch: int = 0
    step: int = 0
    history: list = field(default_factory=list)


def _train(cfg, inputs, run_dir, dist, resume, init_from, init_ema_from, progress):
    run = _set_up(cfg, inputs, run_dir, dist, resume, init_from, init_ema_from)
    cfg, seed = run.cfg, run.cfg.train.seed
    batches = epoch_batches(cfg, run.dataset, dist)
    steps_per_epoch = len(batches)
    total_steps = cfg.train.total_epochs * steps_per_epoch
    warmup_steps = cfg.train.warmup_epochs * steps_per_epoch
    eval_gt = evaluation_set(cfg, inputs, run.classes) if dist.is_main else None
    tb = TensorBoard(run_dir) if dist.is_main else None
    for epoch in range(run.start_epoch, cfg.train.total_epochs):
        seed_everything(seed + 100_003 * (epoch + 1) + dist.rank)  # same crops/dropout whether resumed or not
        batches.set_epoch(epoch)
        loader = DataLoader(run.dataset, batch_sampler=batches, collate_fn=training_collate(cfg),
                            num_workers=cfg.data.num_workers, pin_memory=dist.device.type == "cuda",
                            generator=torch.Generator().manual_seed(seed + epoch * 7919 + dist.rank))
        t0 = time.time()
        sums, count = _run_epoch(run, loader, epoch, warmup_steps, total_steps, progress)
        run.step += steps_per_epoch
        means = dist.mean([s / max(count, 1) for s in sums])
        row = {"epoch": epoch + 1, "lr": run.optimizer.param_groups[0]["lr"], "cls_loss": means[0],
               "reg_loss": means[1], "final_loss": means[2], "seconds": round(time.time() - t0, 2)}
        if dist.is_main:
            if eval_gt is not None and ((epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.total_epochs):
                row["eval_average_mAP"] = _evaluate(run.ema.module, cfg, run.classes, run.provenance, inputs,
                                                    eval_gt, dist)
            run.history.append(row)
            _save(run, epoch + 1, {"step": run.step, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps})
            write_run_record(run.history, run_dir, tb)
            _log_epoch(cfg, row)
        dist.barrier()
    if tb is not None:
        tb.close()
    return run_dir / CHECKPOINT_NAME


def _set_up(cfg, inputs, run_dir, dist, resume, init_from, init_ema_from) -> _Run:
    """Config (the checkpoint's when resuming), data, model, EMA and optimiser, restored from ``last.pt``."""
    if not dist.is_main:
        logging.getLogger("tal").setLevel(logging.WARNING)  # one voice per run
    cfg, state = _start_state(run_dir, resume, cfg)
    seed_everything(cfg.train.seed)
    dataset, classes, provenance = build_training_set(cfg, inputs)
    if state is not None:
        store = StoreSet(inputs.features)
        try:
            check_compatible(state["provenance"], store[0], run_dir / CHECKPOINT_NAME)
        finally:
            store.close()
        if list(state["classes"]) != classes:
            raise TrainError(f"{run_dir}: the checkpoint's classes differ from this run's; resume with the same inputs")
    cfg.model = dataclasses.replace(cfg.model, input_dim=provenance["dim"], num_classes=len(classes))
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        _add_file_log(run_dir)
    pseudo_count = sum(r.pseudo for r in dataset.records)
    log.info("training on %d videos (%d pseudo-labelled), mode %s, %d class(es), %d process(es) on %s",
             len(dataset), pseudo_count, cfg.data.mode, len(classes), dist.world, dist.device)

    model = build_model(cfg.model).to(dist.device)
    if init_from and state is None:
        _load_weights(model, init_from, ("ema", "model"), provenance, "--init-from")
    ema = ModelEMA(model, cfg.train.ema_decay)
    if init_ema_from and state is None:
        _load_weights(ema.module, init_ema_from, ("ema", "model"), provenance, "--init-ema-from")
    ema_initialised = bool(init_ema_from or (state or {}).get("ema_initialised"))
    if ema_initialised:  # a warm-up would overwrite the stage-1 weights the EMA starts from
        log.info("EMA starts from stage-1 weights: EMA warm-up off, decay %.4f", cfg.train.ema_decay)
    use_amp = cfg.train.amp and dist.device.type == "cuda"
    amp_dtype = getattr(torch, cfg.train.amp_dtype)
    run = _Run(cfg, inputs, run_dir, dist, dataset, classes, provenance, model, model, ema,
               ema_warmup=cfg.train.ema_warmup and not ema_initialised, ema_initialised=ema_initialised,
               optimizer=torch.optim.AdamW(param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr),
               scaler=torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16),
               use_amp=use_amp, amp_dtype=amp_dtype)
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        run.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            run.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        run.start_epoch, run.step = int(state["epoch"]), int(state["scheduler"]["step"])
        run.history = list(state["history"])
        log.info("resuming %s after epoch %d", run_dir, run.start_epoch)
    if dist.world > 1:
        run.net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    return run


def epoch_batches(cfg: RunConfig, dataset: FeatureDataset, dist: Distributed):
    """This rank's batch sampler: length-aware (``data.batching: length``) or padded to max_seq_len (``max``)."""
    return training_batches([r.pseudo for r in dataset.records], dataset.clip_lengths(), cfg.train.batch_size,
                            ratio=cfg.data.pseudo_ratio, epoch_clips=cfg.data.epoch_clips, seed=cfg.train.seed,
                            num_replicas=dist.world, rank=dist.rank, by_length=cfg.data.batching == "length",
                            window_batches=cfg.data.length_window)


def training_collate(cfg: RunConfig) -> PadCollate:
    """Pad to the batch's longest clip (length-aware) or to max_seq_len, always to a multiple of the top stride."""
    return PadCollate(cfg.model.max_stride, min_len=cfg.max_seq_len if cfg.data.batching == "max" else 0)


def _save(run: _Run, epoch: int, scheduler: dict) -> None:
    save_checkpoint(run.run_dir / CHECKPOINT_NAME, {
        "config": run.cfg.to_dict(), "mode": run.cfg.data.mode, "classes": run.classes,
        "provenance": run.provenance, "model": run.model.state_dict(), "ema": run.ema.state_dict(),
        "optimizer": run.optimizer.state_dict(), "scheduler": scheduler,
        "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else {}, "epoch": epoch, "rng": rng_state(),
        "history": run.history, "inputs": run.inputs.to_dict(), "stovtal_version": __version__,
        "ema_initialised": run.ema_initialised,
    })


def _log_epoch(cfg: RunConfig, row: dict) -> None:
    log.info("epoch %d/%d: loss %.4f (cls %.4f, reg %.4f), lr %.2e%s, %.1fs", row["epoch"], cfg.train.total_epochs,
             row["final_loss"], row["cls_loss"], row["reg_loss"], row["lr"],
             f", eval average mAP {row['eval_average_mAP']:.4f}" if "eval_average_mAP" in row else "", row["seconds"])


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """With warm-up the EMA follows the student closely at first, ``min(decay, (1+n)/(10+n))`` (as TensorFlow's
    ExponentialMovingAverage with num_updates), so that short runs are not dominated by the random init."""
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


def train_step(net, model, ema, optimizer, scaler, batch, device, clip_grad: float, use_amp: bool,
               amp_dtype: torch.dtype = torch.float16, soft: bool = False) -> list[float]:
    """One optimisation step on a collated batch; returns [cls_loss, reg_loss, final_loss]. ``soft``: segment
    weights are probabilities of being an action (``data.pseudo_weight: soft``, see ``ActionFormer.losses``)."""
    feats = batch["feats"].to(device, non_blocking=True)
    masks = batch["masks"].to(device, non_blocking=True)
    segs = [s.to(device) for s in batch["segments"]]
    labels = [lb.to(device) for lb in batch["labels"]]
    weights = [w.to(device) for w in batch["weights"]]
    ignore = [r.to(device) for r in batch["ignore"]]
    with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
        out = net(feats, masks)
        losses = model.losses(out, segs, labels, weights, ignore, soft=soft)
    loss = losses["final_loss"]
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip_grad > 0:
        scaler.unscale_(optimizer)
        # foreach: one multi-tensor pass (the default on GPUs; on CPU the same norms, bit-identical, ~2x faster)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad, foreach=True)
    scaler.step(optimizer)
    scaler.update()
    if ema is not None:
        ema.update(model)
    return [losses["cls_loss"].item(), losses["reg_loss"].item(), loss.item()]


def _run_epoch(run: _Run, loader, epoch, warmup_steps, total_steps, progress):
    cfg, dist = run.cfg, run.dist
    run.net.train()
    sums, count = [0.0, 0.0, 0.0], 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.train.total_epochs}", unit="batch", leave=False,
               disable=not (progress and dist.is_main))
    for i, batch in enumerate(bar):
        lr = learning_rate(run.step + i, cfg.train.lr, warmup_steps, total_steps)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        run.ema.decay = ema_decay_at(run.step + i, cfg.train.ema_decay, run.ema_warmup)
        values = train_step(run.net, run.model, run.ema, run.optimizer, run.scaler, batch, dist.device,
                            cfg.train.clip_grad, run.use_amp, run.amp_dtype, soft=cfg.data.pseudo_weight == "soft")
        if not all(math.isfinite(v) for v in values):
            raise TrainError(f"non-finite loss at epoch {epoch + 1}, iteration {i + 1}: {values}; lower --lr")
        sums = [s + v for s, v in zip(sums, values)]
        count += 1
        bar.set_postfix(loss=f"{values[2]:.3f}", lr=f"{lr:.1e}")
        if cfg.train.log_every and (i + 1) % cfg.train.log_every == 0:
            log.debug("epoch %d iter %d: loss %.4f lr %.2e", epoch + 1, i + 1, values[2], lr)
    return sums, count


def _evaluate(ema_model, cfg, classes, provenance, inputs, gt, dist) -> float:
    from tal.eval.detection import evaluate_detection
    from tal.infer import Localizer, iter_detections

    localizer = Localizer(ema_model, cfg, cfg.data.mode, classes, provenance, source="EMA model")
    stores = StoreSet(inputs.features)
    try:
        present = [v for v in gt.videos if any(v in stores[i] for i in range(len(stores)))]
    finally:
        stores.close()
    if not present:
        log.warning("evaluation subset %s: no videos in the stores; skipped", cfg.train.eval_subset)
        return float("nan")
    preds = dict(iter_detections(inputs.features, localizer, present, device=dist.device, check_store=False,
                                 prefer_store=inputs.prefer_store))
    report = evaluate_detection(gt.restrict_videos(present), preds, cfg.train.eval_tiou)
    return float(report.average_mAP)


def _add_file_log(run_dir: Path) -> None:
    path = (run_dir / "train.log").resolve()
    root = logging.getLogger("tal")
    if not any(getattr(h, "baseFilename", None) == str(path) for h in root.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)
