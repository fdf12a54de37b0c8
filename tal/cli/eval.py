"""tal-eval: detection mAP (official ActivityNet semantics), OV-TAL protocols, JSON report and plots."""

from __future__ import annotations

import logging
import warnings

import click
import numpy as np

from features.cli_support import Command
from tal.atomic import atomic_write_json
from tal.eval.breakdown import BINS
from tal.eval.detection import TIOU_PRESETS, evaluate_detection
from tal.eval.inputs import id_mismatch_hint, load_ground_truth
from tal.eval.predictions import load_predictions
from tal.eval.protocols import MODES, evaluate_protocol, load_splits, summarize_splits
from tal.eval.report import format_per_class, format_result, format_summary, strict_json

log = logging.getLogger("tal.eval")


def parse_tiou(text: str) -> np.ndarray:
    """``0.3,0.4,0.5`` or ``start:stop:step`` (inclusive stop, e.g. 0.5:0.95:0.05)."""
    try:
        if ":" in text:
            a, b, step = (float(x) for x in text.split(":"))
            values = np.round(np.arange(a, b + step / 2, step), 10)
        else:
            values = np.array([float(x) for x in text.split(",") if x.strip()])
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated numbers or start:stop:step") from None
    if values.size == 0 or np.any(values <= 0) or np.any(values > 1):
        raise click.BadParameter(f"{text!r}: thresholds must lie in (0, 1]")
    return values


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--gt", "gt_path", required=True, type=click.Path(exists=True), help="Ground truth (any supported format).")
@click.option("--pred", "pred_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Predictions: official results JSON.")
@click.option("--subset", default=None, help="training / validation / testing (needed when GT holds several).")
@click.option("--gt-format", default="auto", show_default=True,
              type=click.Choice(["auto", "official", "actionformer", "bsn", "compact", "thumos-txt"]))
@click.option("--video-info", type=click.Path(exists=True, dir_okay=False), help="BSN video_info CSV (default: beside the GT).")
@click.option("--tiou", default=None, help="Thresholds: 0.3,0.4,0.5 or 0.5:0.95:0.05.")
@click.option("--preset", type=click.Choice(sorted(TIOU_PRESETS)), default=None,
              help="thumos = 0.3:0.7:0.1; anet = 0.5:0.95:0.05 (default when --tiou is not given).")
@click.option("--split", "split_spec", default=None,
              help="Base/novel split: thumos14:75:0, anet:50:0-9, thumos14:50:all, or a split file.")
@click.option("--mode", type=click.Choice(MODES), default=None, help="Protocol with --split (default: novel).")
@click.option("--dedup-gt", is_flag=True, help="Drop duplicate GT instances (ActionFormer/OpenTAD convention).")
@click.option("--bins", type=click.Choice(sorted(BINS)), default=None,
              help="Breakdown bins (default: anet with --preset anet, else thumos).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the full result as JSON.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False), help="Write PNG plots into this directory.")
@click.option("--videos", default=None, help="Comma-separated video ids for timeline plots (default: first 3).")
@click.option("--per-class", is_flag=True, help="Also print per-class AP.")
@click.option("--strict", is_flag=True, help="Treat zero-length GT segments as errors.")
@click.option("--drop-v-prefix", is_flag=True,
              help="Drop a leading 'v_' from ground-truth ids (BSN/ActionFormer files vs ActivityNet's official ids).")
@click.option("--ties", type=click.Choice(["official", "stable"]), default="official", show_default=True,
              help="Order of equal scores: the official evaluator's (numpy 1.16 quicksort, reversed) or input "
                   "order.")
def main(gt_path, pred_path, subset, gt_format, video_info, tiou, preset, split_spec, mode, dedup_gt, bins,
         json_out, plot_dir, videos, per_class, strict, drop_v_prefix, ties):
    """Score temporal action detections exactly as the official ActivityNet evaluator does."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with warnings.catch_warnings():
        # Data warnings (clipped segments, ignored predictions) as one log line each, without source lines.
        warnings.simplefilter("default")
        warnings.showwarning = lambda message, category, *args, **kwargs: log.warning("%s", message)
        run(gt_path, pred_path, subset, gt_format, video_info, tiou, preset, split_spec, mode, dedup_gt, bins,
            json_out, plot_dir, videos, per_class, strict, drop_v_prefix, ties)


def run(gt_path, pred_path, subset, gt_format, video_info, tiou, preset, split_spec, mode, dedup_gt, bins,
        json_out, plot_dir, videos, per_class, strict, drop_v_prefix, ties):
    if tiou and preset:
        raise click.BadParameter("give --tiou or --preset, not both")
    thresholds = parse_tiou(tiou) if tiou else TIOU_PRESETS[preset or "anet"]
    bins = bins or ("anet" if preset == "anet" else "thumos")
    if mode and not split_spec:
        raise click.BadParameter("--mode needs --split")
    gt = load_ground_truth(gt_path, gt_format, subset, strict=strict, video_info=video_info,
                           drop_v_prefix=drop_v_prefix)
    preds = load_predictions(pred_path)
    splits = load_splits(split_spec) if split_spec else []
    chosen = [v.strip() for v in videos.split(",") if v.strip()] if videos else list(gt.videos)[:3]
    unknown = [v for v in chosen if v not in gt.videos and v not in preds]
    if plot_dir and unknown:
        raise click.BadParameter(f"--videos: not in the ground truth subset or predictions: {', '.join(unknown)}")
    if preds and not set(preds) & set(gt.videos):
        log.warning("none of the %d predicted videos is in the ground truth%s", len(preds),
                    id_mismatch_hint(gt.videos, preds))
    log.info("%d GT videos, %d instances, %d classes; %d predictions on %d videos", len(gt.videos),
             gt.num_segments, len(gt.classes), sum(len(d) for d in preds.values()), len(preds))

    if not splits:
        result = evaluate_detection(gt, preds, thresholds, dedup_gt=dedup_gt, breakdown_bins=bins,
                                    ties=ties).to_dict()
        click.echo(format_result(result))
        headline = result
    else:
        runs = [evaluate_protocol(gt, preds, s, mode or "novel", thresholds, dedup_gt, breakdown_bins=bins,
                                  ties=ties) for s in splits]
        for run in runs:
            click.echo(format_result(run, title=f"split {run['split']} (mode {run['mode']})"))
            click.echo()
        result = runs[0] if len(runs) == 1 else {"mode": runs[0]["mode"], "runs": runs,
                                                  "summary": summarize_splits(runs)}
        if len(runs) > 1:
            click.echo(format_summary(result["summary"]))
        headline = runs[0]
    if per_class:
        click.echo(format_per_class(headline))

    if json_out:
        result["gt"] = str(gt_path)
        result["pred"] = str(pred_path)
        result["dedup_gt"] = bool(dedup_gt)
        result["ties"] = ties
        atomic_write_json(json_out, strict_json(result))
        log.info("wrote %s", json_out)
    if plot_dir:
        from tal.eval.plots import write_plots

        for path in write_plots(headline, plot_dir, gt, preds, chosen):
            log.info("wrote %s", path)


if __name__ == "__main__":
    main()
