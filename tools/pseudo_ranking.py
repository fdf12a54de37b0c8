"""Would another ranking of stage 1's proposals order the unlabelled videos' actions better than its own score?

    python tools/pseudo_ranking.py --features sim/web.zarr --truth sim/web.json --stage1 st/stage1/last.pt \
        --other st/thresholds/fold0/last.pt --other st/thresholds/fold1/last.pt --threshold 0.112 --out rank_out

Analysis only: it reads the unlabelled videos' truth (a simulation knows it). Stage 1 and every ``--other``
localizer (e.g. the cross-fitted fold models tal-selftrain trains anyway) propose on the store with the
pseudo-label filters (score >= 0.01, duplicates removed). Each of stage 1's proposals is then scored by

- ``stage1``: its own score (what tal-selftrain ranks by),
- ``recurrence``: its score combined with how its content recurs across other videos (``tal-selftrain --rerank
  recurrence``, :mod:`tal.recurrence`),
- with ``--other``: ``mean``: the mean of its score and each other model's best score at tIoU >= 0.5 (0 where it
  has none), ``others``: the other models' mean alone, and ``min``: the lowest of all.

Each ranking is scored as class-agnostic detections against the truth (``tal.pseudo.pseudo_label_quality``):
average mAP over tIoU 0.3:0.7 and AP at tIoU 0.5. With ``--threshold``: each model's count, precision and
recall of its proposals scoring >= τ (does τ mean the same for every model on this store?).
Results from the study's SIMULATED stage 1 are in docs/selftrain.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from features.cli_support import Command

def rescored(candidates: dict, others: list[dict]) -> dict[str, dict]:
    """{ranking: {video: [N] scores}} for stage 1's ``candidates`` ({video: [N, 3] start, end, score}) given
    the other models' candidates on the same videos (at least one)."""
    from tal.eval.detection import tiou_matrix

    out = {name: {} for name in ("stage1", "mean", "others", "min")}
    for vid, own in candidates.items():
        best = []
        for other in others:
            theirs = other.get(vid, np.zeros((0, 3)))
            overlap = tiou_matrix(own[:, :2], theirs[:, :2]) >= 0.5
            best.append(np.where(overlap, theirs[None, :, 2], 0.0).max(axis=1, initial=0.0))
        best = np.stack(best)
        out["stage1"][vid] = own[:, 2]
        out["mean"][vid] = (own[:, 2] + best.sum(axis=0)) / (1 + len(best))
        out["others"][vid] = best.mean(axis=0)
        out["min"][vid] = np.minimum(own[:, 2], best.min(axis=0))
    return out


def _propose(features, checkpoint, path: Path) -> dict:
    from tal.data.annotations import load_annotations
    from tal.pseudo import FilterConfig, pseudo_label_store, video_candidates
    from tal.selftrain import candidate_filter

    # resumes from (and refuses parts made with another checkpoint in) ``path``'s parts folder
    pseudo_label_store(features, checkpoint, path, candidate_filter(FilterConfig()), progress=True)
    return {vid: video_candidates(video) for vid, video in load_annotations(path).videos.items()}


def _write_ranking(like: Path, scores: dict, out: Path) -> Path:
    from tal.data.annotations import AnnotationSet, Segment, VideoAnnotation, load_annotations, write_official

    src = load_annotations(like)
    videos = {vid: VideoAnnotation(vid, v.subset, v.duration, v.fps,
                                   [Segment(s.start, s.end, "action", float(score), True)
                                    for s, score in zip(v.segments, scores[vid])])
              for vid, v in src.videos.items()}
    write_official(AnnotationSet(videos, {"ranking": out.stem}), out)
    return out


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--features", required=True, type=click.Path(exists=True), help="Unlabelled feature store.")
@click.option("--truth", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The unlabelled videos' true segments (analysis only).")
@click.option("--stage1", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--other", "others", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Another agnostic localizer's checkpoint (repeatable).")
@click.option("--threshold", type=float, default=None, help="Also compare the models at this τ.")
@click.option("--out", required=True, type=click.Path(file_okay=False))
def main(features, truth, stage1, others, threshold, out):
    from tal.pseudo import FilterConfig, pseudo_label_quality, refilter
    from tal.recurrence import rerank_candidates

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = {"stage1": stage1, **{f"other{i}": path for i, path in enumerate(others)}}
    files = {name: out / f"proposals_{name}.json" for name in models}
    proposals = {name: _propose(features, path, files[name]) for name, path in models.items()}
    result = {"rankings": {}, "at_threshold": {}}
    rankings = {"stage1": {vid: c[:, 2] for vid, c in proposals["stage1"].items()}, "recurrence": None}
    if others:
        rankings.update(rescored(proposals["stage1"], [proposals[n] for n in models if n != "stage1"]))
    for name, scores in rankings.items():
        path = out / f"ranking_{name}.json"
        if name == "recurrence":
            rerank_candidates(files["stage1"], features, path)
        else:
            _write_ranking(files["stage1"], scores, path)
        q = pseudo_label_quality(path, truth)
        result["rankings"][name] = {"average_mAP": q["average_mAP"],
                                    "AP@0.5": pseudo_label_quality(path, truth, tiou=(0.5,))["average_mAP"]}
        click.echo(f"ranking {name:7s} average mAP {q['average_mAP']:.3f}  AP@0.5 "
                   f"{result['rankings'][name]['AP@0.5']:.3f}")
    if threshold is not None:
        for name in models:
            kept = out / f"kept_{name}.json"
            refilter(files[name], kept, FilterConfig(threshold=threshold))
            q = pseudo_label_quality(kept, truth)
            result["at_threshold"][name] = {k: q[k] for k in ("pseudo_labels", "precision@0.5", "recall@0.5")}
            click.echo(f"{name:7s} at τ {threshold}: {q['pseudo_labels']} proposals, precision "
                       f"{q['precision@0.5']:.3f}, recall {q['recall@0.5']:.3f}")
    (out / "pseudo_ranking.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
