"""Localizer quality on the SIMULATED benchmark: tal-sim (small) -> train closed / agnostic -> infer -> eval.

Prints (all figures are on simulated data, see docs/sim.md):
- closed-vocabulary localizer (all 20 classes), curated test: average mAP over tIoU 0.3:0.7 (target >= 0.50);
- agnostic localizer trained on the base classes, proposals classified open-vocabulary with the novel
  vocabulary (novel-only protocol), against (a) the same number of random proposals per video classified the
  same way and (b) the closed-vocabulary model's novel mAP (an upper bound: it saw novel labels).

Reruns reuse the simulated data and finished runs in --work (training resumes).
Usage: python tools/quality_train.py [--work quality_train_out] [--seed 0] [--preset small] [--regime specific]
       [--set k=v ...] [--topk K]
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch

from tal.config import load_config
from tal.data.annotations import load_annotations
from tal.data.collate import PadCollate
from tal.data.dataset import FeatureDataset, StoreSet, inference_records
from tal.eval.predictions import Detection
from tal.eval.protocols import evaluate_protocol, load_split
from tal.eval.detection import evaluate_detection
from tal.infer import Localizer, iter_detections, store_vocabulary
from tal.model.ov import OVConfig, classify_proposals
from tal.train import TrainInputs, train

TIOU = [0.3, 0.4, 0.5, 0.6, 0.7]


def simulate(work: Path, seed: int, regime: str) -> dict:
    from tal.sim import preset, write_benchmark

    sim = work / "sim"
    manifest = sim / "benchmark.json"
    if not manifest.exists():
        cfg, counts = preset("small", seed=seed, regime=regime)
        write_benchmark(sim, cfg, n_curated_train=counts.curated_train, n_web_unlabeled=0,
                        n_curated_test=counts.curated_test, n_web_test=0, labelled_classes="all")
    return {"train_store": sim / "curated_train.zarr", "train_ann": sim / "curated_train.json",
            "test_store": sim / "curated_test.zarr", "test_ann": sim / "curated_test.json",
            "split": sim / "split.json"}


def run_training(out: Path, preset: str, mode: str, files: dict, overrides, split=None) -> Path:
    cfg = load_config(preset, list(overrides) + [f"data.mode={mode}"])
    inputs = TrainInputs([files["train_store"]], [files["train_ann"]], split=split,
                         classes="base" if split else "all")
    return train(cfg, inputs, out, resume=True)


@torch.no_grad()
def random_proposal_baseline(store: Path, checkpoint: Path, vocabulary, seed: int, ov_cfg: OVConfig) -> dict:
    """Per video: as many random segments as the model proposes (same lengths and actionness, random places),
    classified open-vocabulary exactly as the model's proposals are."""
    loc = Localizer.from_checkpoint(checkpoint)
    cfg, model = loc.config, loc.model.eval()
    stores = StoreSet([store])
    records = inference_records(stores)
    stores.close()
    ds = FeatureDataset([store], records, training=False, max_seq_len=cfg.max_seq_len,
                        resize_len=cfg.data.resize_len)
    collate = PadCollate(cfg.model.max_stride)
    text = torch.as_tensor(vocabulary.embeddings)
    nms = cfg.model.nms()
    rng = np.random.default_rng(seed)
    preds = {}
    for i in range(len(ds)):
        item = ds[i]
        batch = collate([item])
        prop = model.proposals(model(batch["feats"], batch["masks"]))[0]
        t = item["feats"].shape[1]
        lengths = (prop["segments"][:, 1] - prop["segments"][:, 0]).clamp(max=t).numpy()
        lengths = rng.permutation(lengths)
        starts = rng.uniform(0, np.maximum(t - lengths, 0))
        segs = torch.as_tensor(np.stack([starts, starts + lengths], 1), dtype=torch.float32)
        scores = torch.as_tensor(rng.permutation(prop["scores"].numpy()))
        s, sc, lb = classify_proposals(item["feats"].T, segs, scores, text, ov_cfg, nms)
        secs = item["grid"].to_seconds(s.double().numpy().reshape(-1, 2))
        preds[item["video_id"]] = [Detection(vocabulary.classes[int(c)], float(v), float(a), float(b))
                                   for (a, b), v, c in zip(secs, sc.numpy(), lb.numpy()) if b > a]
    ds.stores.close()
    return preds


@click.command()
@click.option("--work", default="quality_train_out", show_default=True, type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True)
@click.option("--preset", default="small", show_default=True)
@click.option("--regime", default="specific", show_default=True, type=click.Choice(["specific", "shared"]),
              help="tal.sim regime of the simulated data.")
@click.option("--set", "overrides", multiple=True, help="tal-train config override for both runs.")
@click.option("--topk", default=None, type=click.IntRange(min=1),
              help="Classes each proposal is named with (default: the evaluation's, tal.model.ov.OVConfig).")
def main(work, seed, preset, regime, overrides, topk):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = Path(work) / regime  # data and runs of each regime apart
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    files = simulate(work, seed, regime)
    split = load_split(str(files["split"]))
    gt = load_annotations(files["test_ann"])
    closed = run_training(work / "closed", preset, "closed", files, overrides)
    agnostic = run_training(work / "agnostic_base", preset, "agnostic", files, overrides, split=str(files["split"]))

    closed_preds = dict(iter_detections(files["test_store"], closed))
    closed_all = evaluate_detection(gt, closed_preds, TIOU).average_mAP
    closed_novel = evaluate_protocol(gt, closed_preds, split, "novel", TIOU)["average_mAP"]
    novel_vocab = store_vocabulary(files["test_store"], "sim").restrict(split.novel)
    ov_cfg = OVConfig() if topk is None else OVConfig(topk=topk)
    ov_preds = dict(iter_detections(files["test_store"], agnostic, vocabulary=novel_vocab, ov_config=ov_cfg))
    ov_novel = evaluate_protocol(gt, ov_preds, split, "novel", TIOU)["average_mAP"]
    random_preds = random_proposal_baseline(files["test_store"], agnostic, novel_vocab, seed, ov_cfg)
    random_novel = evaluate_protocol(gt, random_preds, split, "novel", TIOU)["average_mAP"]

    result = {
        "simulated": True, "seed": seed, "preset": preset, "regime": regime, "overrides": list(overrides),
        "tiou_thresholds": TIOU, "test_videos": len(gt.videos), "naming": ov_cfg.to_dict(),
        "closed_average_mAP": closed_all,
        "ov_novel_average_mAP": ov_novel,
        "random_proposals_novel_average_mAP": random_novel,
        "closed_upper_bound_novel_average_mAP": closed_novel,
        "seconds": round(time.time() - t0, 1),
    }
    (work / "quality.json").write_text(json.dumps(result, indent=2))
    print(f"SIMULATED benchmark (tal-sim small, seed {seed}, regime {regime}), curated test, average mAP over tIoU 0.3:0.7")
    print(f"  {'closed vocabulary, all %d classes:' % len(split.all):44s}{closed_all:.4f}   (target >= 0.50)")
    print(f"  {'agnostic (base) + OV, novel classes:':44s}{ov_novel:.4f}   (top {ov_cfg.topk} names per proposal)")
    print(f"  {'random proposals + OV, novel classes:':44s}{random_novel:.4f}   (baseline)")
    print(f"  {'closed vocabulary, novel classes:':44s}{closed_novel:.4f}   (upper bound)")
    print(f"  wall time {result['seconds']:.0f} s; {work / 'quality.json'}")
    ok = closed_all >= 0.5 and random_novel < ov_novel < closed_novel
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
