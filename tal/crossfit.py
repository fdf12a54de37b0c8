"""Held-out evidence for the pseudo-label thresholds by cross-fitting (see :mod:`tal.thresholds`).

The labelled videos (those with segments of the training classes) are dealt into K folds by a seeded
permutation. Fold k's model is trained by the recipe it stands for on the other folds (``OUT/fold<k>/``,
resumable like any run) — for a later stage also on that stage's pseudo-labels — and proposes actions on fold
k; the proposals go through the pseudo-label filters (clip, minimum duration, duplicates; no threshold) and are
matched to fold k's instances, class-agnostically.
Each fold's sample is cached (``OUT/fold<k>/heldout.json``), its proposals too (``heldout_proposals.json``: the
evidence for ``--rerank auto``, :func:`tal.recurrence.choose_rerank`), so a rerun only redoes what is missing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from tal.atomic import atomic_write_json
from tal.data.annotations import AnnotationSet, write_official
from tal.thresholds import ScoreSample, ThresholdError, match_proposals

log = logging.getLogger("tal.crossfit")

HELDOUT_PROPOSALS = "heldout_proposals.json"


def labelled_videos(inputs) -> AnnotationSet:
    """The human-labelled training videos as training sees them: the subset, the split's training classes,
    videos with at least one segment. Video ids must be unique across the annotation files."""
    from tal.train import _load_human, _split_classes

    keep = _split_classes(inputs)
    videos = {}
    for path, aset in _load_human(inputs, inputs.subset):
        if keep is not None:
            aset = aset.restrict_classes(keep)
        for vid, video in aset.videos.items():
            if not video.segments:
                continue
            if vid in videos:
                raise ThresholdError(f"{path}: video {vid} is labelled in two annotation files")
            videos[vid] = video
    return AnnotationSet(videos)


def fold_assignment(video_ids: list[str], folds: int, seed: int) -> list[list[str]]:
    if len(video_ids) < folds:
        raise ThresholdError(f"cross-fitting {folds} folds needs at least {folds} labelled videos, "
                             f"got {len(video_ids)}")
    order = np.random.default_rng(seed).permutation(len(video_ids))
    return [sorted(video_ids[i] for i in order[k::folds]) for k in range(folds)]


def heldout_sample(run_cfg, inputs, out_dir, filter_cfg, *, folds: int = 2, alpha: float = 0.5, seed: int = 0,
                   progress: bool = True, need_proposals: bool = False) -> ScoreSample:
    """Train the fold models (or reuse them) and return the held-out (score, hit) sample of all folds.

    ``inputs``: the training inputs of the stage the thresholds are for; its human labels are split into folds,
    its pseudo-labels (unlabelled videos only) go to every fold model. ``need_proposals``: a fold cached before
    its proposals were kept is redone (for ``--rerank auto``)."""
    out_dir = Path(out_dir)
    labelled = labelled_videos(inputs)
    assignment = fold_assignment(sorted(labelled.videos), folds, seed)
    samples = []
    for k, heldout in enumerate(assignment):
        fold_dir = out_dir / f"fold{k}"
        cached, proposals_file = fold_dir / "heldout.json", fold_dir / HELDOUT_PROPOSALS
        if cached.exists() and (proposals_file.exists() or not need_proposals):
            samples.append(ScoreSample.from_dict(json.loads(cached.read_text())))
            continue
        train_ids = [v for j, part in enumerate(assignment) if j != k for v in part]
        log.info("cross-fitting fold %d/%d: training on %d labelled videos, holding out %d", k + 1, folds,
                 len(train_ids), len(heldout))
        proposals = _fold_proposals(run_cfg, inputs, labelled.restrict_videos(train_ids), labelled, heldout,
                                    fold_dir, filter_cfg, progress)
        instances = {vid: [[s.start, s.end] for s in labelled.videos[vid].segments] for vid in heldout}
        sample = match_proposals(instances, proposals, alpha)
        atomic_write_json(cached, sample.to_dict())
        samples.append(sample)
    return ScoreSample.concat(samples)


def _fold_proposals(run_cfg, inputs, train_set: AnnotationSet, labelled: AnnotationSet, heldout: list[str],
                    fold_dir: Path, filter_cfg, progress: bool) -> dict:
    """Train a fold model on ``train_set`` (resumable in ``fold_dir``) and return its proposals on the
    ``heldout`` videos, through the pseudo-label filters without a threshold: {video: (segments, scores)}; also
    written to ``fold_dir/heldout_proposals.json``."""
    from tal.infer import iter_detections
    from tal.pseudo import filter_proposals
    from tal.train import train

    ann = fold_dir / "train.json"
    write_official(train_set, ann)
    ckpt = train(run_cfg, dataclasses.replace(inputs, annotations=[str(ann)]), fold_dir, resume=True,
                 progress=progress)
    proposals = {}
    for vid, dets in iter_detections(inputs.features, ckpt, heldout, batch_size=8, prefer_store=inputs.prefer_store):
        video = labelled.videos[vid]
        duration = video.duration if np.isfinite(video.duration) else max((d.end for d in dets), default=0.0)
        segs = np.array([[d.start, d.end] for d in dets], np.float64).reshape(-1, 2)
        result = filter_proposals(segs, [d.score for d in dets], duration,
                                  dataclasses.replace(filter_cfg, threshold=0.0, ignore_threshold=None))
        proposals[vid] = (result.segments, result.scores)
    write_official(_proposal_set(labelled, proposals), fold_dir / HELDOUT_PROPOSALS)
    return proposals


def _proposal_set(labelled: AnnotationSet, proposals: dict) -> AnnotationSet:
    from tal.data.annotations import VideoAnnotation
    from tal.pseudo import pseudo_segments

    return AnnotationSet({vid: VideoAnnotation(vid, labelled.videos[vid].subset, labelled.videos[vid].duration,
                                               labelled.videos[vid].fps, pseudo_segments(segs, scores))
                          for vid, (segs, scores) in proposals.items()})


def heldout_evidence(inputs, out_dir, folds: int, floor: float = 0.0) -> tuple[AnnotationSet, AnnotationSet]:
    """The held-out labelled videos (their human segments) and the fold models' proposals scoring >= ``floor``
    on them, all folds together, from a finished :func:`heldout_sample` in ``out_dir``."""
    from tal.data.annotations import load_annotations

    proposals = {}
    for k in range(folds):
        for vid, video in load_annotations(Path(out_dir) / f"fold{k}" / HELDOUT_PROPOSALS).videos.items():
            video.segments = [s for s in video.segments if s.score >= floor]
            proposals[vid] = video
    return labelled_videos(inputs).restrict_videos(list(proposals)), AnnotationSet(proposals)


def class_folds(labelled: AnnotationSet, folds: int, seed: int) -> list[tuple[list[str], list[str], list[str]]]:
    """The labelled classes dealt into ``folds`` by a seeded permutation; per fold (its held-out classes, the
    videos holding none of them, the videos holding one)."""
    classes = sorted({s.label for v in labelled.videos.values() for s in v.segments})
    if len(classes) < folds:
        raise ThresholdError(f"holding classes out in {folds} folds needs at least {folds} labelled classes, "
                             f"got {len(classes)}")
    order = np.random.default_rng(seed).permutation(len(classes))
    out = []
    for k in range(folds):
        held = sorted(classes[i] for i in order[k::folds])
        holds = {vid for vid, v in labelled.videos.items() if any(s.label in held for s in v.segments)}
        out.append((held, sorted(set(labelled.videos) - holds), sorted(holds)))
    return out


def unseen_class_ap(run_cfg, inputs, out_dir, filter_cfg, *, folds: int = 2, alpha: float = 0.5, seed: int = 0,
                    floor: float = 0.0, progress: bool = True) -> dict:
    """How well the recipe finds actions of classes it never saw, as novel classes are for stage 1: per class
    fold, a model trained on the labelled videos holding none of its classes proposes on those holding one, and
    its class-agnostic AP at tIoU ``alpha`` is measured on the held-out classes' instances (proposals scoring
    >= ``floor``; those matching an instance of another class are left out: neither right nor wrong). Returns
    the mean AP over folds and each fold's; cached per fold (``OUT/fold<k>/unseen.json``)."""
    from tal.data.annotations import VideoAnnotation
    from tal.eval.detection import tiou_matrix
    from tal.pseudo import agnostic_ap

    out_dir = Path(out_dir)
    labelled = labelled_videos(inputs)
    per_fold = []
    for k, (held, train_ids, heldout) in enumerate(class_folds(labelled, folds, seed)):
        fold_dir = out_dir / f"fold{k}"
        cached = fold_dir / "unseen.json"
        if cached.exists():
            per_fold.append(json.loads(cached.read_text()))
            continue
        if not train_ids:
            raise ThresholdError(f"class fold {k + 1}/{folds}: every labelled video holds one of its held-out "
                                 f"classes ({', '.join(held)}): nothing to train on")
        log.info("class fold %d/%d: training on %d labelled videos without %s, proposing on the %d with them",
                 k + 1, folds, len(train_ids), ", ".join(held), len(heldout))
        proposals = _fold_proposals(run_cfg, inputs, labelled.restrict_videos(train_ids), labelled, heldout,
                                    fold_dir, filter_cfg, progress)
        truth, kept = {}, {}
        for vid, (segs, scores) in proposals.items():
            video = labelled.videos[vid]
            others = np.array([[s.start, s.end] for s in video.segments if s.label not in held]).reshape(-1, 2)
            keep = np.asarray(scores) >= floor
            if len(others) and len(segs):
                keep &= ~(tiou_matrix(others, segs) >= alpha).any(axis=0)
            kept[vid] = (segs[keep], np.asarray(scores)[keep])
            truth[vid] = VideoAnnotation(vid, video.subset, video.duration, video.fps,
                                         [s for s in video.segments if s.label in held])
        truth = AnnotationSet(truth)
        ap = agnostic_ap(truth, _proposal_set(labelled, kept), alpha)
        fold = {"held_out_classes": held, "train_videos": len(train_ids), "heldout_videos": len(heldout),
                "instances": sum(len(v.segments) for v in truth.videos.values()), "ap": ap}
        atomic_write_json(cached, fold)
        per_fold.append(fold)
    return {"ap": float(np.mean([f["ap"] for f in per_fold])), "tiou": alpha, "floor": floor, "folds": per_fold}
