"""tal-infer: detections from a feature store and a checkpoint, written as an official results JSON."""

from __future__ import annotations

import logging

import click
from tqdm import tqdm

from features.class_names import read_class_names
from features.cli_support import Command


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--features", "features", multiple=True, required=True, type=click.Path(exists=True),
              help="Feature store (repeatable).")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--annotations", type=click.Path(exists=True), default=None,
              help="Annotation file whose --subset videos to run on (default: every video of the stores).")
@click.option("--subset", default=None, help="Subset of --annotations (e.g. testing).")
@click.option("--vocab", default=None, help="Store vocabulary for open-vocabulary classification (agnostic models).")
@click.option("--split", default=None, help="Base/novel split restricting the vocabulary, e.g. thumos14:75:0.")
@click.option("--classes", "which", type=click.Choice(["novel", "base", "all"]), default="all", show_default=True)
@click.option("--class-names", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File of class names (one a line) to classify into instead of a split.")
@click.option("--fusion", type=click.Choice(["geometric", "arithmetic", "actionness", "class"]), default="geometric",
              show_default=True, help="Open-vocabulary score: sqrt(actionness*p), mean, actionness or p.")
@click.option("--topk", type=int, default=1, show_default=True, help="Candidate classes per proposal (OV).")
@click.option("--skip-missing", is_flag=True, help="Skip annotated videos missing from the stores.")
@click.option("--prefer-store", type=click.Path(exists=True), default=None,
              help="A --features store whose rows win for videos that several stores hold with different rows "
                   "(default: such videos are an error).")
@click.option("--batch-size", type=int, default=1, show_default=True)
@click.option("--workers", type=int, default=0, show_default=True, help="DataLoader worker processes.")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Results JSON to write.")
def main(features, checkpoint, annotations, subset, vocab, split, which, class_names, fusion, topk, skip_missing,
         prefer_store, batch_size, workers, device, out):
    """Run a trained localizer over a store; agnostic models + --vocab classify open-vocabulary."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from tal.data.annotations import load_annotations
    from tal.eval.predictions import write_predictions
    from tal.eval.protocols import load_split
    from tal.infer import InferenceError, Localizer, embed_class_names, iter_detections, store_vocabulary
    from tal.model.ov import OVConfig

    if subset and not annotations:
        raise click.BadParameter("--subset needs --annotations (the store does not know subsets)",
                                 param_hint="--subset")
    localizer = Localizer.from_checkpoint(checkpoint)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    localizer.model.to(dev)
    video_ids = durations = None
    if annotations:
        aset = load_annotations(annotations, subset=subset)
        video_ids = list(aset.videos)
        durations = {v: a.duration for v, a in aset.videos.items()}
    names = None
    if class_names:
        names = read_class_names(class_names)
    elif split:
        s = load_split(split)
        names = {"novel": s.novel, "base": s.base, "all": s.all}[which]
    vocabulary = None
    if vocab or (names is not None and localizer.mode == "agnostic"):
        try:
            vocabulary = store_vocabulary(features[0], vocab)
            if names is not None:
                vocabulary = vocabulary.restrict(names, where=f"{features[0]} vocabulary {vocab or ''}".strip())
        except InferenceError:
            if not class_names:
                raise
            vocabulary = embed_class_names(features[0], names)
    ov_cfg = OVConfig(fusion=fusion, topk=topk, max_seg_num=localizer.config.model.max_seg_num)
    keep = set(names) if names is not None and vocabulary is None else None  # closed model: filter its classes
    preds = {}
    stream = iter_detections(list(features), localizer, video_ids, vocabulary=vocabulary, ov_config=ov_cfg,
                             batch_size=batch_size, num_workers=workers, skip_missing=skip_missing,
                             durations=durations, prefer_store=prefer_store)
    for vid, dets in tqdm(stream, unit="video", desc="inference"):
        preds[vid] = [d for d in dets if keep is None or d.label in keep]
    write_predictions(preds, out, external_data={"used": False, "details": f"stovtal checkpoint {checkpoint}"})
    click.echo(f"wrote {sum(len(d) for d in preds.values())} detections for {len(preds)} videos to {out}")


if __name__ == "__main__":
    main()
