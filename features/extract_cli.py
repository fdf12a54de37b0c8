"""`tal-extract`: extract snippet features from videos (`videos`) and class-name embeddings (`text`).

Exit status of `tal-extract videos`: 0 every video extracted (or already there); 3 finished, but some
videos failed (each recorded with its reason in the store's failure log and the summary); 1 the run
could not go on (weights unavailable, incompatible store, ...); 2 bad command line.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from features.class_names import read_class_names
from features.cli_support import Group
from features.extract import (EXIT_SOME_FAILED, ExtractError, ExtractOptions, check_grid, collect_videos,
                              extract_videos, extract_vocabulary, shard_store_path)
from features.shards import parse_shard, shard_from_env, shard_slice
from features.store_encoder import store_encoder_options

log = logging.getLogger("features.extract")
DEFAULT_FRAME_STEP = 4   # per-frame encoders: every 4th target frame of a window (4 frames of 16)


def _setup_logging(level: str) -> None:
    # Libraries (open_clip logs to the root logger) only speak up from WARNING; stovtal at --log-level.
    # force=True: each invocation writes to the current stderr, also when called in-process.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("features").setLevel(getattr(logging, level.upper()))


def _load_encoder(model, pretrained, checkpoint, device, precision, seed=None, weights_format="auto",
                  text_checkpoint=None):
    from features.encoders import RANDOM_SEED, RANDOM_TAGS, load_encoder

    if checkpoint is None and pretrained is not None and pretrained.lower() in RANDOM_TAGS:
        click.secho(f"WARNING: --pretrained {pretrained}: {model} gets RANDOM weights; the features mean "
                    f"nothing (fine for tests and benchmarks). The store records pretrained='random'.",
                    fg="red", bold=True, err=True)
    if device == "auto" and "LOCAL_RANK" in os.environ:
        import torch
        if torch.cuda.is_available():  # torchrun: one GPU per local process
            device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    return load_encoder(model, pretrained, checkpoint, device=device, precision=precision,
                        seed=RANDOM_SEED if seed is None else seed, weights_format=weights_format,
                        text_checkpoint=text_checkpoint)


def _check_grid_options(fps, num_frames, stride, frame_step):
    if not fps > 0:
        raise click.BadParameter(f"{fps} must be > 0", param_hint="--fps")
    for name, value in (("--num-frames", num_frames), ("--stride", stride), ("--frame-step", frame_step)):
        if value is not None and value < 1:
            raise click.BadParameter(f"{value} must be >= 1", param_hint=name)


def _grid(encoder, fps, num_frames, stride, frame_step):
    """The snippet grid; --frame-step defaults to 4 for per-frame encoders and to window / clip length for
    clip encoders (16 / 8 = 2 for ViCLIP), and must give a clip encoder exactly its clip length."""
    from features.store import Grid

    if frame_step is None:
        frame_step = DEFAULT_FRAME_STEP
        if encoder.clip_frames:
            if num_frames % encoder.clip_frames:
                raise click.BadParameter(f"{encoder.model_name} embeds clips of {encoder.clip_frames} frames; "
                                         f"use a window that is a multiple of it, or give --frame-step",
                                         param_hint="--num-frames")
            frame_step = num_frames // encoder.clip_frames
    grid = Grid(fps=float(fps), window=num_frames, stride=stride, frame_step=frame_step)
    try:
        check_grid(encoder, grid)
    except ExtractError as exc:
        raise click.BadParameter(str(exc), param_hint="--frame-step") from None
    return grid


@click.group(cls=Group)
def main():
    """Extract open_clip snippet features into a feature store."""


@main.command("videos")
@click.argument("videos", nargs=-1, type=click.Path(path_type=Path))
@click.option("--list", "list_file", type=click.Path(path_type=Path), help="Text file of video paths, one a line.")
@click.option("--store", required=True, type=click.Path(path_type=Path),
              help="Feature store (.zarr directory or .h5 file); created, or resumed if it exists.")
@click.option("--model", default="ViT-B-16", show_default=True,
              help="open_clip architecture name, ViCLIP-B-16 / ViCLIP-L-14 (clip encoders), or a custom config "
                   "FILE.json (open_clip's layout, or ViCLIP's with \"model_type\": \"viclip\").")
@click.option("--pretrained", default=None,
              help="open_clip pretrained tag [default: openai], or 'none' for random weights. Beside an "
                   "open_clip-layout --checkpoint it only picks the preprocessing and activation.")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="Local weights file (recorded by sha256): open_clip/OpenAI, ViFi-CLIP or ViCLIP layout.")
@click.option("--weights-format", default="auto", show_default=True,
              help="Layout of --checkpoint: open_clip (also OpenAI's), vificlip, viclip, or auto to recognise "
                   "it from the key names.")
@click.option("--fps", default=30.0, show_default=True, help="Target frame rate of the grid.")
@click.option("--num-frames", "--window", "num_frames", default=16, show_default=True,
              help="Snippet window, in target frames.")
@click.option("--stride", default=4, show_default=True, help="Snippet stride, in target frames.")
@click.option("--frame-step", type=int, default=None,
              help="Encode every n-th target frame of a window [default: 4; clip encoders: window / clip length].")
@click.option("--batch-size", default=32, show_default=True, help="Frames per encoder call.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:1...")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto",
              show_default=True, help="auto: fp16 on CUDA, fp32 on CPU.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="Dtype of the stored rows.")
@click.option("--decode-workers", default=0, help="Decode threads (0: one per 4 CPU cores, at least 1).")
@click.option("--shard", help="i/n: extract every n-th video from the i-th into STORE.shard-i-of-n.SUFFIX "
                              "(RANK/WORLD_SIZE are used when started by torchrun).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]),
              show_default=True)
def videos_cmd(videos, list_file, store, model, pretrained, checkpoint, weights_format, fps, num_frames, stride,
               frame_step, batch_size, device, precision, dtype, decode_workers, shard, progress, log_level):
    """Extract snippet features of VIDEOS (files and/or directories) into --store."""
    _setup_logging(log_level)
    if not videos and list_file is None:
        raise click.UsageError("give video files/directories or --list FILE")
    if batch_size < 1:
        raise click.BadParameter(f"{batch_size} must be >= 1", param_hint="--batch-size")
    _check_grid_options(fps, num_frames, stride, frame_step)
    jobs = collect_videos(videos, list_file)
    where = parse_shard(shard) if shard else shard_from_env()
    if not jobs:
        raise click.ClickException("no videos found in " + ", ".join(str(v) for v in videos or [list_file]))
    if where is not None:
        jobs = shard_slice(jobs, *where)
        store = shard_store_path(store, *where)
        log.info("shard %d/%d: %d videos into %s", where[0], where[1], len(jobs), store)
        if not jobs:  # more shards than videos: this one has nothing to do, which is not an error
            click.echo(f"shard {where[0]}/{where[1]} has no videos; nothing to do")
            sys.exit(0)
    encoder = _load_encoder(model, pretrained, checkpoint, device, precision, weights_format=weights_format)
    grid = _grid(encoder, fps, num_frames, stride, frame_step)
    log.info("encoder %s (%s) on %s, %s, dim %d; grid %s", encoder.model_name, encoder.pretrained,
             encoder.device, encoder.precision, encoder.dim, grid)
    workers = decode_workers or max(1, (os.cpu_count() or 1) // 4)
    options = ExtractOptions(grid=grid, batch_size=batch_size, dtype=dtype, decode_workers=workers)
    summary = extract_videos(jobs, store, encoder, options, progress=progress)
    for line in summary.lines():
        click.echo(line, err=bool(summary.failed) and line.startswith("  FAILED"))
    click.echo(f"store: {store}")
    if summary.failed:
        click.echo(f"{len(summary.failed)} video(s) failed (recorded in the store's failure log); "
                   f"exit status {EXIT_SOME_FAILED}", err=True)
    sys.exit(summary.exit_code)


def _templates(given: tuple, templates_file) -> list[str]:
    """--template values then the --templates file's lines; each must hold {} exactly once."""
    templates = list(given) + (read_class_names(templates_file) if templates_file else [])
    for t in templates:
        if t.count("{}") != 1:
            raise click.BadParameter(f"{t!r} must contain {{}} exactly once", param_hint="--template")
    if len(set(templates)) != len(templates):
        raise click.BadParameter("a template is given twice", param_hint="--template")
    return templates


@main.command("text")
@click.option("--store", required=True, type=click.Path(path_type=Path), help="An existing feature store.")
@click.option("--classes", "classes_file", required=True, type=click.Path(path_type=Path),
              help="Class names, one a line.")
@click.option("--name", required=True, help="Vocabulary name, e.g. thumos14.")
@click.option("--template", "template", multiple=True,
              help='Prompt with {} for the class name, e.g. "a video of a person {}."; repeat it for a prompt '
                   'ensemble (per class, the normalised mean of the normalised prompt embeddings).')
@click.option("--templates", "templates_file", type=click.Path(path_type=Path),
              help="File of prompt templates, one a line, added to any --template.")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="Weights file; needed when the store was made from a checkpoint.")
@click.option("--text-checkpoint", type=click.Path(path_type=Path),
              help="Weights for the text-tower tensors --checkpoint lacks (a ViFi-CLIP file has no token "
                   "embedding: pass the CLIP weights it was fine-tuned from, e.g. OpenAI's ViT-B-16.pt).")
@click.option("--weights-format", default="auto", show_default=True,
              help="Layout of --checkpoint: open_clip (also OpenAI's), vificlip, viclip, or auto to recognise "
                   "it from the key names.")
@click.option("--model", default=None, help="Defaults to the store's encoder (a custom one needs its FILE.json); "
                                          "any other is refused.")
@click.option("--pretrained", default=None, help="Defaults to the store's; any other is refused.")
@click.option("--device", default="auto", show_default=True)
@click.option("--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"]),
              show_default=True)
def text_cmd(store, classes_file, name, template, templates_file, checkpoint, text_checkpoint, weights_format, model,
             pretrained, device, log_level):
    """Embed class names with the store's own encoder and cache them as vocabulary --name."""
    from features.store import open_store

    _setup_logging(log_level)
    templates = _templates(template, templates_file)
    classes = read_class_names(classes_file)
    with open_store(store) as fs:
        prov = dict(fs.provenance)
    model, pretrained, seed = store_encoder_options(store, prov, model, pretrained, checkpoint)
    encoder = _load_encoder(model, pretrained, checkpoint, device, "auto", seed=seed,
                            weights_format=weights_format, text_checkpoint=text_checkpoint)
    embeddings = extract_vocabulary(store, encoder, name, classes, templates)
    prompts = f"{len(templates)} templates" if len(templates) > 1 else "1 template" if templates else "bare names"
    click.echo(f"vocabulary {name!r}: {len(classes)} classes x {embeddings.shape[1]} dims, {prompts} "
               f"({encoder.model_name}/{encoder.pretrained}) cached in {store}")


if __name__ == "__main__":
    main()
