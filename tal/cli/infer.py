"""tal-infer: detections from a feature store and a checkpoint, written as an official results JSON."""

from __future__ import annotations

import logging

import click

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
              help="File of class names (one a line) to classify into instead of a split; taken from --vocab (or "
                   "the store's only vocabulary) unless --embed-names.")
@click.option("--embed-names", is_flag=True,
              help="Embed the class names now with the store's own text encoder (rebuilt from its provenance) "
                   "instead of reading a store vocabulary.")
@click.option("--template", default=None, help='With --embed-names: a prompt with {}, e.g. "a video of a person {}."')
@click.option("--allow-random-text", is_flag=True,
              help="With --embed-names on a store made with random weights: embed anyway (tests, benchmarks).")
@click.option("--fusion", type=click.Choice(["geometric", "arithmetic", "actionness", "class"]), default="geometric",
              show_default=True, help="Open-vocabulary score: sqrt(actionness*p), mean, actionness or p.")
@click.option("--topk", type=click.IntRange(min=1), default=None,
              help="Classes per proposal (OV): each proposal is named with its top K classes, each scored by the "
                   "fusion  [default: tal-selftrain's evaluation's, 5]")
@click.option("--skip-missing", is_flag=True, help="Skip annotated videos missing from the stores.")
@click.option("--prefer-store", type=click.Path(exists=True), default=None,
              help="A --features store whose rows win for videos that several stores hold with different rows "
                   "(default: such videos are an error).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="DataLoader worker processes.")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when available).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Results JSON to write.")
def main(features, checkpoint, annotations, subset, vocab, split, which, class_names, embed_names, template,
         allow_random_text, fusion, topk, skip_missing, prefer_store, batch_size, workers, device, out):
    """Run a trained localizer over a store; agnostic models + --vocab classify open-vocabulary."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from tal.infer import run_inference

    if template is not None and template.count("{}") != 1:
        raise click.BadParameter(f"{template!r} must contain {{}} exactly once", param_hint="--template")
    names = read_class_names(class_names) if class_names else None
    videos, detections = run_inference(
        list(features), checkpoint, out, annotations=annotations, subset=subset, vocab=vocab, split=split,
        which=which, names=names, embed_names=embed_names, allow_random_text=allow_random_text, template=template,
        fusion=fusion, topk=topk, skip_missing=skip_missing, prefer_store=prefer_store, batch_size=batch_size,
        num_workers=workers, device=device)
    click.echo(f"wrote {detections} detections for {videos} videos to {out}")


if __name__ == "__main__":
    main()
