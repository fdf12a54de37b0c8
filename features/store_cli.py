"""`tal-store`: inspect, check, convert, import/export and merge feature stores."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import click
import numpy as np

from features.class_names import read_class_names
from features.cli_support import Group
from features.store import StoreError, open_store
from features.store import ops


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024


def _json_default(x):
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


@click.group(cls=Group)
def main():
    """Feature stores (.zarr directory or .h5/.hdf5 file): per-video CLIP snippet features with provenance."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def info(store, as_json):
    """Provenance, counts, dims, bytes on disk, vocabularies and failures of STORE."""
    with open_store(store) as s:
        d = ops.summary(s)
    if as_json:
        click.echo(json.dumps(d, indent=2, default=_json_default, ensure_ascii=False))
        return
    click.echo(f"store:      {d['path']} ({d['backend']})")
    click.echo(f"videos:     {d['videos']}   rows: {d['rows']}   dim: {d['dim']}   dtype: {d['dtype']}")
    click.echo(f"on disk:    {_human(d['bytes'])}")
    click.echo("provenance:")
    for k, v in d["provenance"].items():
        click.echo(f"  {k}: {v}")
    click.echo(f"vocabularies: {len(d['vocabularies'])}")
    for name, v in d["vocabularies"].items():
        templates = v["provenance"].get("templates") or []
        prompts = f"{len(templates)} templates (ensemble)" if len(templates) > 1 else f"template {v['template']!r}"
        click.echo(f"  {name}: {v['classes']} classes, {prompts}")
    click.echo(f"failures:   {len(d['failures'])}")
    for vid, reason in d["failures"].items():
        click.echo(f"  {vid}: {reason}")


@main.command()
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--deep", is_flag=True, help="Also verify every video's rows against its stored checksum.")
def validate(store, deep):
    """Check every video (rows readable, shape, dtype, finite values, length vs. grid; --deep: checksums);
    exit 1 naming each bad entry."""
    with open_store(store) as s:
        problems = ops.validate(s, progress=sys.stderr.isatty(), deep=deep)
        n, checksums = len(s), s.has_checksums
    for p in problems:
        click.echo(f"BAD {p}", err=True)
    if problems:
        raise click.ClickException(f"{store}: {len(problems)} problem(s) in {n} videos")
    if deep and not checksums:
        click.echo(f"{store}: OK ({n} videos readable; no checksums: written by an older stovtal, so the rows "
                   f"could not be verified; `tal-store convert` makes a copy with checksums)")
        return
    click.echo(f"{store}: OK ({n} videos{', checksums verified' if deep else ''})")


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
def convert(src, dst):
    """Copy SRC to DST (zarr <-> hdf5 by suffix) with identical content."""
    ops.convert(src, dst, progress=sys.stderr.isatty())
    click.echo(f"wrote {dst}")


@main.command("import-npy")
@click.argument("directory", type=click.Path(path_type=Path))
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--fps", type=float, required=True, help="Target fps of the grid the features were made on.")
@click.option("--stride", type=int, required=True, help="Snippet stride in target frames.")
@click.option("--window", type=int, required=True, help="Snippet window (num_frames) in target frames.")
@click.option("--frame-step", type=int, default=1, show_default=True)
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True)
@click.option("--encoder", default="external", show_default=True, help="Recorded as provenance 'encoder'.")
def import_npy(directory, store, fps, stride, window, frame_step, dtype, encoder):
    """Import DIRECTORY/<video_id>.npy|.npz (T x D each) into STORE (created if missing; resumable)."""
    res = ops.import_npy(directory, store, fps=fps, stride=stride, window=window, frame_step=frame_step,
                         dtype=dtype, encoder=encoder, progress=sys.stderr.isatty())
    click.echo(f"{store}: {res['videos']} videos")
    if res["failed"]:
        for vid, reason in res["failed"].items():
            click.echo(f"FAILED {vid}: {reason}", err=True)
        raise click.ClickException(f"{len(res['failed'])} file(s) could not be imported")


@main.command("export-npy")
@click.argument("store", type=click.Path(path_type=Path))
@click.argument("directory", type=click.Path(path_type=Path))
def export_npy(store, directory):
    """Write one float32 DIRECTORY/<id>.npy per video (only /, NUL, a leading . and % escaped in names)."""
    n = ops.export_npy(store, directory, progress=sys.stderr.isatty())
    click.echo(f"wrote {n} files to {directory}")


@main.command("add-vocab")
@click.argument("store", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Vocabulary name, e.g. thumos14.")
@click.option("--classes", "classes_file", type=click.Path(path_type=Path), required=True,
              help="Text file, one class name per line.")
@click.option("--embeddings", "emb_file", type=click.Path(path_type=Path), required=True,
              help=".npy of shape [K, D], one row per class, in the order of --classes.")
@click.option("--template", default=None, help="Prompt template the embeddings were made with.")
@click.option("--encoder", default="external", show_default=True, help="Recorded in the vocabulary provenance.")
def add_vocab(store, name, classes_file, emb_file, template, encoder):
    """Cache class-name text embeddings made elsewhere; their dimension must match the store."""
    classes = read_class_names(classes_file)
    try:
        emb = np.load(emb_file, allow_pickle=False)
    except Exception as exc:
        raise StoreError(f"{emb_file}: cannot be read as .npy ({exc})") from None
    with open_store(store, "a") as s:
        s.add_vocabulary(name, classes, emb, template=template,
                         provenance={"encoder": encoder, "source": str(emb_file)})
    click.echo(f"{store}: vocabulary {name!r} with {len(classes)} classes")


@main.command()
@click.argument("dst", type=click.Path(path_type=Path))
@click.argument("srcs", nargs=-1, required=True, type=click.Path(path_type=Path))
def merge(dst, srcs):
    """Join per-shard stores SRCS into DST (created if missing). Provenance must match; a video in
    several sources must be identical."""
    res = ops.merge(dst, srcs, progress=sys.stderr.isatty())
    click.echo(f"{dst}: added {res['added']} videos, now {res['videos']} videos, {res['failures']} failures")


if __name__ == "__main__":
    main()
