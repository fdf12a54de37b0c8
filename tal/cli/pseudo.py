"""tal-pseudo: pseudo-label an unlabelled feature store with a class-agnostic localizer; `merge` joins shards.

    tal-pseudo --features web.zarr --checkpoint stage1/last.pt --threshold 0.05 --out pl.json
    tal-pseudo --features web.zarr --checkpoint stage1/last.pt --shard 0/4 --out pl.json   # one of 4 processes
    tal-pseudo merge pl.json                 # after all shards: joins pl.json.parts/ into pl.json
"""

from __future__ import annotations

import logging

import click

from features.cli_support import Group
from features.shards import ShardError, parse_shard
from tal.pseudo import FilterConfig, PseudoLabelError, merge_parts, parts_dir_for, pseudo_label_store


@click.group(cls=Group, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--features", "store", type=click.Path(exists=True), help="Unlabelled feature store (.zarr/.h5).")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), help="Stage-1 agnostic checkpoint.")
@click.option("--threshold", default=0.05, show_default=True, type=float, help="Keep proposals scoring >= this (τ).")
@click.option("--ignore-threshold", default=None, type=float,
              help="Proposals scoring in [this, τ) become ignore regions: stage 2 learns them neither as actions "
                   "nor as background (default: none, everything below τ is background).")
@click.option("--top-k", default=None, type=click.IntRange(min=1), help="At most K pseudo-labels per video.")
@click.option("--dedup-iou", default=0.5, show_default=True, type=float,
              help="Drop a proposal overlapping a better one by tIoU >= this; 1 disables.")
@click.option("--min-duration", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Drop pseudo-labels shorter than this many seconds.")
@click.option("--shard", default="0/1", show_default=True, help="i/n: this process handles videos i, i+n, ...")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
              help="Videos per forward pass (padded to the longest).")
@click.option("--num-workers", default=0, show_default=True, type=click.IntRange(min=0), help="DataLoader workers.")
@click.option("--device", default=None, help="torch device (default: cpu).")
@click.option("--out", type=click.Path(dir_okay=False), help="Pseudo-label file (official annotation JSON).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def main(ctx, store, checkpoint, threshold, ignore_threshold, top_k, dedup_iou, min_duration, shard, batch_size, num_workers, device,
         out, quiet):
    """Write class-agnostic pseudo-labels (label "action", score, pseudo: true) for every video of a store.

    Resumable: a rerun skips finished shards and videos. With --shard i/n, run `tal-pseudo merge OUT` once all
    n shards are done.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if ctx.invoked_subcommand is not None:
        return
    missing = [name for name, value in (("--features", store), ("--checkpoint", checkpoint), ("--out", out))
               if value is None]
    if missing:
        raise click.UsageError(f"missing option(s): {', '.join(missing)}")
    try:  # bad option values: usage errors (exit 2)
        cfg = FilterConfig(threshold=threshold, ignore_threshold=ignore_threshold, top_k=top_k,
                           dedup_iou=None if dedup_iou >= 1 else dedup_iou,
                           min_duration=min_duration)
    except PseudoLabelError as e:
        raise click.BadParameter(str(e)) from None
    try:
        index, count = parse_shard(shard)
    except ShardError as e:
        raise click.BadParameter(str(e), param_hint="--shard") from None
    stats = pseudo_label_store(store, checkpoint, out, cfg, shard=(index, count), batch_size=batch_size,
                               num_workers=num_workers, device=device, progress=not quiet)
    click.echo(f"shard {index}/{count}: {stats.videos} videos, {stats.segments} pseudo-labels, "
               f"{stats.fallback_videos} fell back to their top-1 proposal")
    if count == 1:
        click.echo(out)
    else:
        click.echo(f"parts in {parts_dir_for(out)}; when all {count} shards are done: tal-pseudo merge {out}")


@main.command("merge")
@click.argument("out", type=click.Path(dir_okay=False))
@click.argument("parts", nargs=-1, type=click.Path(exists=True))
def merge_command(out, parts):
    """Join finished shard parts (default OUT.parts/) into the pseudo-label file OUT, atomically."""
    stats = merge_parts(out, parts or None)
    click.echo(f"{stats.videos} videos, {stats.segments} pseudo-labels -> {out}")


if __name__ == "__main__":
    main()
