"""tal-sim: write the simulated OV-TAL benchmark (stores, annotations, split, vocabulary)."""

from __future__ import annotations

import logging
from dataclasses import replace

import click

from features.cli_support import Command
from tal.sim.config import preset as make_preset
from tal.sim.writer import write_benchmark


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--seed", default=0, show_default=True, type=int, help="World and video seed.")
@click.option("--preset", "preset_name", default="small", show_default=True, type=click.Choice(["small", "thumos"]),
              help="small: short videos for the CPU demo; thumos: a THUMOS14-sized curated store (413 videos, "
                   "up to 2,304 rows).")
@click.option("--regime", default="specific", show_default=True, type=click.Choice(["specific", "shared"]),
              help="specific: actions are told apart only by class-specific appearance (stage-1 novel/base mAP "
                   "~0.4, as on real THUMOS14); shared: generator 1's world, where every action carries a generic "
                   "component (novel ~ base).")
@click.option("--curated-train", type=click.IntRange(min=0), help="Labelled curated training videos.")
@click.option("--web", type=click.IntRange(min=0), help="Unlabelled web videos (base + novel classes).")
@click.option("--curated-test", type=click.IntRange(min=0), help="Curated test videos (all classes).")
@click.option("--web-test", type=click.IntRange(min=0), help="Web test videos (all classes).")
@click.option("--labelled-classes", default="base", show_default=True, type=click.Choice(["base", "all"]),
              help="Classes of the curated training videos: base (open-vocabulary) or all (closed vocabulary).")
@click.option("--num-classes", type=click.IntRange(min=2), help="Number of classes (default 20, families of 4).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def main(out_dir, seed, preset_name, regime, curated_train, web, curated_test, web_test, labelled_classes, num_classes,
         quiet):
    """Simulate a seeded open-vocabulary TAL benchmark (SIMULATED data; see docs/sim.md)."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    cfg, counts = make_preset(preset_name, seed, regime)
    if num_classes is not None:
        cfg = replace(cfg, num_classes=num_classes)
    pick = lambda given, default: default if given is None else given  # noqa: E731
    paths = write_benchmark(out_dir, cfg, n_curated_train=pick(curated_train, counts.curated_train),
                            n_web_unlabeled=pick(web, counts.web),
                            n_curated_test=pick(curated_test, counts.curated_test),
                            n_web_test=pick(web_test, counts.web_test), labelled_classes=labelled_classes,
                            progress=not quiet)
    click.echo(f"SIMULATED benchmark (seed {seed}, preset {preset_name}, regime {regime}) written to {out_dir}:")
    for role, path in paths.items():
        click.echo(f"  {role:26s} {path}")


if __name__ == "__main__":
    main()
