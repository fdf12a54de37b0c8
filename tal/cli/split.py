"""tal-split: show the shipped base/novel splits and make new ones (seeded, Kinetics-400 overlap, cross-dataset)."""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from features.class_names import read_class_names
from features.cli_support import Group
from tal.data.annotations import load_annotations
from tal.eval.protocols import Split, load_splits, write_split_file
from tal.eval.splitgen import cross_dataset_split, kinetics_split, random_split


def read_classes(gt_path, classes_path, what: str) -> list[str]:
    """Class names from a ground-truth file (any format) or a text file with one name per line."""
    if bool(gt_path) == bool(classes_path):
        raise click.UsageError(f"give exactly one of --{what}gt or --{what}classes")
    if gt_path:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # clipping notes do not matter for the class list
            return load_annotations(gt_path).classes
    return read_class_names(classes_path)


def _emit(split: Split, out) -> None:
    if out:
        write_split_file(split, out)
        click.echo(f"wrote {out}: {len(split.base)} base, {len(split.novel)} novel")
    click.echo(f"[base] ({len(split.base)}): {', '.join(split.base)}")
    click.echo(f"[novel] ({len(split.novel)}): {', '.join(split.novel)}")


def _gt_or_classes(prefix=""):
    def decorate(f):
        f = click.option(f"--{prefix}classes", f"{prefix.replace('-', '_')}classes_path",
                         type=click.Path(exists=True, dir_okay=False), help="Text file, one class per line.")(f)
        return click.option(f"--{prefix}gt", f"{prefix.replace('-', '_')}gt_path", type=click.Path(exists=True),
                            help="Ground-truth file to take the classes from.")(f)
    return decorate


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Base/novel class splits for open-vocabulary TAL."""


@main.command()
@click.argument("spec")
def show(spec):
    """Print a split: thumos14:75:0, anet:50:3 or a split file."""
    for split in load_splits(spec):
        click.echo(f"split {split.name}")
        _emit(split, None)


@main.command()
@_gt_or_classes()
@click.option("--novel-fraction", type=float, default=0.25, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--num-splits", type=int, default=1, show_default=True,
              help="Seeds seed..seed+N-1; with N > 1, -o is a directory of split_<seed>.json files.")
@click.option("-o", "--out", type=click.Path(), help="Write the split (.json, else two-section text).")
def random(gt_path, classes_path, novel_fraction, seed, num_splits, out):
    """Seeded random base/novel split of any dataset's classes."""
    classes = read_classes(gt_path, classes_path, "")
    if num_splits == 1:
        _emit(random_split(classes, novel_fraction, seed), out)
        return
    if not out:
        raise click.UsageError("--num-splits > 1 needs -o DIRECTORY")
    Path(out).mkdir(parents=True, exist_ok=True)
    for s in range(seed, seed + num_splits):
        _emit(random_split(classes, novel_fraction, s), Path(out) / f"split_{s}.json")


@main.command()
@_gt_or_classes()
@click.option("--reference", type=click.Path(exists=True, dir_okay=False),
              help="Reference class list (default: Kinetics-400 from torchvision's metadata).")
@click.option("-o", "--out", type=click.Path(), help="Write the split (.json, else two-section text).")
def kinetics(gt_path, classes_path, reference, out):
    """The seed paper's split: base = classes overlapping Kinetics-400 (after lemmatising), novel = rest."""
    classes = read_classes(gt_path, classes_path, "")
    ref = read_classes(None, reference, "") if reference else None
    split, matched = kinetics_split(classes, ref)
    for c, r in matched.items():
        click.echo(f"  {c}  ~  {r}")
    _emit(split, out)


@main.command()
@_gt_or_classes("train-")
@_gt_or_classes("target-")
@click.option("-o", "--out", type=click.Path(), help="Write the split (.json, else two-section text).")
def cross(train_gt_path, train_classes_path, target_gt_path, target_classes_path, out):
    """Cross-dataset split: base = target classes the training vocabulary also names, novel = rest."""
    train = read_classes(train_gt_path, train_classes_path, "train-")
    target = read_classes(target_gt_path, target_classes_path, "target-")
    split, matched = cross_dataset_split(train, target)
    for c, r in matched.items():
        click.echo(f"  {c}  ~  {r}")
    _emit(split, out)


if __name__ == "__main__":
    main()
