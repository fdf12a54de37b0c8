"""tal-train: train the localizer from feature stores (also the entry point of `torchrun -m tal.cli.train`)."""

from __future__ import annotations

import logging
import os

import click

from features.cli_support import Command
from tal.config import MODES, PRESETS, load_config


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--features", "features", multiple=True, required=True, type=click.Path(exists=True),
              help="Feature store (repeat for several; annotations join to the store holding each video).")
@click.option("--annotations", multiple=True, required=True, type=click.Path(exists=True),
              help="Human-labelled annotation file (repeatable; any format tal-eval reads).")
@click.option("--pseudo", multiple=True, type=click.Path(exists=True),
              help="Pseudo-label file from tal-pseudo (repeatable; class-agnostic, needs --mode agnostic).")
@click.option("--subset", default="training", show_default=True, help="Subset of the human annotations to train on.")
@click.option("--mode", type=click.Choice(MODES), default=None, help="closed (K classes) or agnostic (actionness).")
@click.option("--split", default=None, help="Base/novel split, e.g. thumos14:75:0 or a split file.")
@click.option("--classes", "which", type=click.Choice(["base", "all"]), default="all", show_default=True,
              help="With --split: train on its base classes or all.")
@click.option("--preset", default="thumos", show_default=True, help=f"{', '.join(PRESETS)} or a YAML file.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--epochs", type=int, default=None, help="Epochs after warm-up (train.epochs).")
@click.option("--batch-size", type=int, default=None)
@click.option("--lr", type=float, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set model.embd_dim=256 (repeatable).")
@click.option("--resume", is_flag=True, help="Continue from the run directory's last checkpoint.")
@click.option("--skip-missing", is_flag=True, help="Skip annotated videos missing from the stores.")
@click.option("--prefer-store", type=click.Path(exists=True), default=None,
              help="A --features store whose rows win for videos that several stores hold with different rows "
                   "(default: such videos are an error).")
@click.option("--pseudo-ratio", type=click.FloatRange(0, 1), default=None,
              help="Fraction of pseudo-labelled clips per epoch (default: natural proportion).")
@click.option("--pseudo-weight", type=click.Choice(["score", "1", "soft"]), default=None,
              help="A pseudo-label in the loss: weighted by its score, weight 1, or soft (an action with "
                   "probability = its score: score × action loss + (1 − score) × background loss).")
@click.option("--init-from", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Fine-tune: start from this checkpoint's (EMA) weights.")
@click.option("--init-ema-from", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Initialise the EMA model from this (stage-1) checkpoint; the student starts fresh.")
@click.option("--eval-subset", default=None, help="Held-out subset of --annotations to evaluate on.")
@click.option("--eval-every", type=int, default=None, help="Evaluate every N epochs (needs --eval-subset).")
@click.option("--workers", type=int, default=None, help="DataLoader worker processes (data.num_workers).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available).")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
def main(features, annotations, pseudo, subset, mode, split, which, preset, out, epochs, batch_size, lr, seed,
         overrides, resume, skip_missing, prefer_store, pseudo_ratio, pseudo_weight, init_from, init_ema_from, eval_subset,
         eval_every, workers, device, no_progress):
    """Train an ActionFormer-style localizer from feature stores; writes OUT/last.pt, config.yaml, log.csv."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from tal.train import TrainInputs, train

    options = {"data.mode": mode, "train.epochs": epochs, "train.batch_size": batch_size, "train.lr": lr,
               "train.seed": seed, "data.pseudo_ratio": pseudo_ratio, "data.pseudo_weight": pseudo_weight,
               "train.eval_subset": eval_subset, "train.eval_every": eval_every, "data.num_workers": workers}
    sets = [f"{k}={v}" for k, v in options.items() if v is not None]
    if skip_missing:
        sets.append("data.skip_missing=true")
    if eval_subset and eval_every is None:
        sets.append("train.eval_every=1")
    cfg = load_config(preset, list(overrides) + sets)
    inputs = TrainInputs(list(features), list(annotations), list(pseudo), subset, split, which, prefer_store)
    path = train(cfg, inputs, out, resume=resume, init_from=init_from, init_ema_from=init_ema_from,
                 device=device, progress=not no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"checkpoint: {path}")


if __name__ == "__main__":
    main()
