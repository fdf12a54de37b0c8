"""Class-agnostic proposal recall per class group: does a localizer *find* novel-class actions as well as base ones?

    python tools/proposal_recall.py --features test.zarr --annotations test.json --split split.json \
        --checkpoint stage1=run/stage1/last.pt --checkpoint stage2=run/stage2/last.pt [--top-k 10,50] [--tiou 0.5]

For each checkpoint: recall at tIoU ≥ --tiou of each group's ground-truth instances (base, novel) by the top-k
agnostic proposals of their video (scores after the checkpoint's NMS), before any open-vocabulary naming.
Separates localization from classification: an OV mAP gap with equal recall is a naming gap.
Prints one line per checkpoint; --json writes the figures.
"""

from __future__ import annotations

import json

import click
import numpy as np


def recall_at_k(gt, proposals: dict, labels, k: int, tiou: float) -> tuple[float, int]:
    """Fraction of ``gt`` instances with a label in ``labels`` matched (tIoU ≥ ``tiou``) by one of the top-k
    proposals of their video; and how many instances that is."""
    from tal.eval.detection import tiou_matrix

    labels = set(labels)
    hit = total = 0
    for vid, video in gt.videos.items():
        g = np.array([[s.start, s.end] for s in video.segments if s.label in labels], np.float64).reshape(-1, 2)
        top = sorted(proposals.get(vid, []), key=lambda d: -d.score)[:k]
        p = np.array([[d.start, d.end] for d in top], np.float64).reshape(-1, 2)
        total += len(g)
        hit += int((tiou_matrix(g, p) >= tiou).any(axis=1).sum())
    return hit / max(total, 1), total


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--features", required=True, type=click.Path(exists=True), help="Test feature store.")
@click.option("--annotations", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--split", "split_spec", required=True, help="Split spec or file (base / novel classes).")
@click.option("--checkpoint", "checkpoints", multiple=True, required=True, metavar="NAME=PATH")
@click.option("--top-k", default="10,50", show_default=True)
@click.option("--tiou", default=0.5, show_default=True, type=float)
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None)
def main(features, annotations, split_spec, checkpoints, top_k, tiou, threads, json_out):
    import torch

    from tal.data.annotations import load_annotations
    from tal.eval.protocols import load_split
    from tal.infer import Localizer, iter_detections

    torch.set_num_threads(threads)
    gt = load_annotations(annotations)
    split = load_split(split_spec)
    ks = [int(k) for k in top_k.split(",")]
    results = {}
    for item in checkpoints:
        name, sep, path = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r}: expected NAME=PATH", param_hint="--checkpoint")
        proposals = dict(iter_detections(features, Localizer.from_checkpoint(path), list(gt.videos), batch_size=8))
        results[name] = {f"R@{k}": {group: recall_at_k(gt, proposals, getattr(split, group), k, tiou)[0]
                                    for group in ("base", "novel")} for k in ks}
        click.echo(f"{name:<24}" + "  ".join(f"R@{k} base {r['base']:.3f} novel {r['novel']:.3f}"
                                             for k, r in ((k, results[name][f'R@{k}']) for k in ks)))
    if json_out:
        with open(json_out, "w") as fh:
            json.dump({"features": features, "annotations": annotations, "tiou": tiou, "recall": results}, fh,
                      indent=1)


if __name__ == "__main__":
    main()
