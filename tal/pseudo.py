"""Pseudo-labels for unlabelled videos: filtering of agnostic proposals and a streaming, resumable writer.

Pipeline per video (seconds throughout): clip every proposal to ``[0, duration]`` → drop empty or too-short
segments → remove duplicates (greedy by score, tIoU ≥ ``dedup_iou``) → keep score ≥ τ → optional top-k.
If the threshold keeps nothing, the single best surviving proposal is kept (the seed paper keeps at least the
top-1 proposal per web video, so every unlabelled video contributes a positive).

Writing is streamed so memory stays flat in the number of videos: each shard appends one JSON line per video
to ``<out>.parts/shard-I-of-N.jsonl`` (flushed per line) and marks itself finished with an atomically written
``.done.json``. A rerun skips finished shards and, inside an unfinished shard, the videos already written
(a torn last line from a kill is cut off). :func:`merge_parts` assembles the parts, again streaming, into one
official-format annotation file written atomically.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from features.errors import StovtalError
from features.hashing import sha256_file
from features.shards import shard_slice
from tal.atomic import atomic_open, atomic_write_json
from tal.eval.detection import tiou_matrix

log = logging.getLogger(__name__)

PSEUDO_LABEL = "action"
PSEUDO_SUBSET = "training"


class PseudoLabelError(StovtalError, ValueError):
    """A one-line message naming the file, shard or video at fault."""


# --------------------------------------------------------------------------------------------- filtering
@dataclass(frozen=True)
class FilterConfig:
    threshold: float = 0.05
    top_k: int | None = None
    dedup_iou: float | None = 0.5  # None or >= 1 disables duplicate removal
    min_duration: float = 0.0
    # Proposals scoring in [ignore_threshold, threshold) become ignore regions (stage 1 was unsure: trained
    # neither as actions nor as background); None: everything below the threshold is background.
    ignore_threshold: float | None = None

    def __post_init__(self):
        if not 0.0 <= self.threshold <= 1.0:
            raise PseudoLabelError(f"threshold must lie in [0, 1], got {self.threshold}")
        if self.ignore_threshold is not None and not 0.0 <= self.ignore_threshold <= self.threshold:
            raise PseudoLabelError(f"ignore threshold must lie in [0, threshold = {self.threshold}], "
                                   f"got {self.ignore_threshold}")
        if self.top_k is not None and self.top_k < 1:
            raise PseudoLabelError(f"top_k must be >= 1, got {self.top_k}")
        if self.dedup_iou is not None and not 0.0 < self.dedup_iou <= 1.0:
            raise PseudoLabelError(f"dedup_iou must lie in (0, 1], got {self.dedup_iou}")
        if self.min_duration < 0:
            raise PseudoLabelError(f"min_duration must be >= 0, got {self.min_duration}")


@dataclass
class FilterResult:
    segments: np.ndarray  # [K, 2] float64 seconds, sorted by descending score
    scores: np.ndarray  # [K] float64
    fell_back: bool  # True when the threshold kept nothing and the top-1 was kept instead
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # [J, 3] start, end, score


def _dedup_mask(segments: np.ndarray, iou: float) -> np.ndarray:
    """Greedy: walk segments in score order, drop any with tIoU >= iou against an already kept one."""
    tiou = tiou_matrix(segments, segments)
    keep = np.ones(len(segments), dtype=bool)
    for i in range(len(segments)):
        if keep[i]:
            later = np.arange(i + 1, len(segments))
            keep[later[tiou[i, i + 1 :] >= iou]] = False
    return keep


def filter_proposals(segments, scores, duration: float, cfg: FilterConfig) -> FilterResult:
    """Turn one video's agnostic proposals (seconds) into pseudo-labels; see the module docstring."""
    segments = np.asarray(segments, dtype=np.float64).reshape(-1, 2)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(segments) != len(scores):
        raise PseudoLabelError(f"{len(segments)} segments but {len(scores)} scores")
    finite = np.isfinite(segments).all(axis=1) & np.isfinite(scores)
    segments, scores = segments[finite], scores[finite]
    segments = np.clip(segments, 0.0, max(float(duration), 0.0))
    long_enough = (segments[:, 1] - segments[:, 0]) > max(cfg.min_duration, 0.0) - 1e-9
    long_enough &= segments[:, 1] > segments[:, 0]
    segments, scores = segments[long_enough], scores[long_enough]
    order = np.argsort(-scores, kind="stable")
    segments, scores = segments[order], scores[order]
    if cfg.dedup_iou is not None and cfg.dedup_iou < 1.0 and len(segments) > 1:
        keep = _dedup_mask(segments, cfg.dedup_iou)
        segments, scores = segments[keep], scores[keep]
    kept = scores >= cfg.threshold
    fell_back = bool(len(scores) > 0 and not kept.any())
    if fell_back:
        kept[0] = True
    unsure = ~kept & (scores >= cfg.ignore_threshold) if cfg.ignore_threshold is not None else ~kept & False
    ignore = np.concatenate([segments[unsure], scores[unsure, None]], axis=1)
    segments, scores = segments[kept], scores[kept]
    if cfg.top_k is not None:
        segments, scores = segments[: cfg.top_k], scores[: cfg.top_k]
    return FilterResult(segments, scores, fell_back, ignore)


# --------------------------------------------------------------------------------------------- sharding
def parts_dir_for(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".parts")


def _part_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}"


# --------------------------------------------------------------------------------------------- shard writer
@dataclass
class ShardStats:
    videos: int = 0
    segments: int = 0
    fallback_videos: int = 0
    empty_videos: int = 0

    def add(self, n_segments: int, fell_back: bool) -> None:
        self.videos += 1
        self.segments += n_segments
        self.fallback_videos += int(fell_back)
        self.empty_videos += int(n_segments == 0)

    def merge(self, other: "ShardStats") -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)


def _video_record(video_id: str, duration: float, fps, result: FilterResult) -> dict:
    fps = None if fps is None or not np.isfinite(fps) else float(fps)
    return {
        "video_id": video_id,
        "duration": float(duration),
        "fps": fps,
        "fell_back": result.fell_back,
        # [start, end, score] rounded (0.1 ms is far below any snippet grid; keeps parts compact), and the end
        # clipped again after rounding so that no segment runs past the video.
        "segments": [[round(float(s), 4), min(round(float(e), 4), float(duration)), round(float(c), 6)]
                     for (s, e), c in zip(result.segments, result.scores)],
        "ignore": [[round(float(s), 4), min(round(float(e), 4), float(duration)), round(float(c), 6)]
                   for s, e, c in result.ignore],
    }


class ShardWriter:
    """Appends one JSON line per video to a shard's part file; resumable after a kill.

    Use ``pending(ids)`` to get the ids still to do (validated against what is already written), ``write``
    for each, then ``finish()``. ``done`` tells whether the shard was already finished.
    """

    def __init__(self, parts_dir: Path, index: int, count: int, run_meta: dict):
        self.parts_dir = Path(parts_dir)
        self.index, self.count = index, count
        self.part_path = self.parts_dir / f"{_part_name(index, count)}.jsonl"
        self.done_path = self.parts_dir / f"{_part_name(index, count)}.done.json"
        self.stats = ShardStats()
        self._file = None
        self._check_run_meta(run_meta)

    def _check_run_meta(self, run_meta: dict) -> None:
        """Parts made with other settings must never be mixed into this run."""
        meta_path = self.parts_dir / "run.json"
        wanted = dict(run_meta, shards=self.count)
        if meta_path.exists():
            found = json.loads(meta_path.read_text())
            if found != wanted:
                diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
                raise PseudoLabelError(
                    f"{self.parts_dir}: existing parts were made with different settings ({', '.join(diff)}); "
                    "delete that folder or choose another --out")
        else:
            atomic_write_json(meta_path, wanted)

    @property
    def done(self) -> bool:
        return self.done_path.exists()

    def pending(self, ids: list[str]) -> list[str]:
        """Ids not yet written; truncates a torn trailing line and checks written ids match ``ids``' prefix."""
        if self.done:
            counts = json.loads(self.done_path.read_text())
            self.stats = ShardStats(**{k: counts[k] for k in asdict(ShardStats())})
            return []
        written = 0
        good_bytes = 0
        if self.part_path.exists():
            with open(self.part_path, "rb") as f:
                for raw in f:
                    if not raw.endswith(b"\n"):
                        break  # torn write from a kill: drop it
                    try:
                        rec = json.loads(raw)
                    except json.JSONDecodeError:
                        break
                    if written >= len(ids) or rec.get("video_id") != ids[written]:
                        raise PseudoLabelError(
                            f"{self.part_path}: line {written + 1} holds video {rec.get('video_id')!r} but the store "
                            f"now lists {ids[written] if written < len(ids) else 'no more videos'!r} there; "
                            "the store changed since this run started — delete the parts folder")
                    self.stats.add(len(rec["segments"]), rec["fell_back"])
                    written += 1
                    good_bytes += len(raw)
            with open(self.part_path, "r+b") as f:
                f.truncate(good_bytes)
        if written:
            log.info("%s: resuming after %d finished videos", self.part_path.name, written)
        return ids[written:]

    def write(self, video_id: str, duration: float, fps, result: FilterResult) -> None:
        if self._file is None:
            self.parts_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(self.part_path, "a")
        self._file.write(json.dumps(_video_record(video_id, duration, fps, result), separators=(",", ":")) + "\n")
        self._file.flush()  # a killed process loses at most the line being written
        self.stats.add(len(result.segments), result.fell_back)

    def finish(self) -> ShardStats:
        self.close()
        self.part_path.parent.mkdir(parents=True, exist_ok=True)
        self.part_path.touch()  # an empty shard still has a (empty) part
        atomic_write_json(self.done_path, {"shard": self.index, "shards": self.count, **asdict(self.stats)})
        return self.stats

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# --------------------------------------------------------------------------------------------- merge
def _discover_parts(sources: Iterable[Path]) -> list[Path]:
    parts: list[Path] = []
    for src in map(Path, sources):
        if not src.exists():
            raise PseudoLabelError(f"{src}: no such parts folder or part file (run tal-pseudo first)")
        if src.is_dir():
            parts.extend(sorted(src.glob("shard-*-of-*.jsonl")))
        elif src.suffix == ".jsonl" and src.exists():
            parts.append(src)
        else:
            raise PseudoLabelError(f"{src}: not a parts folder or a shard-*.jsonl part file")
    return parts


def _iter_records(part: Path) -> Iterator[dict]:
    with open(part) as f:
        for lineno, line in enumerate(f, 1):
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise PseudoLabelError(f"{part}:{lineno}: unreadable pseudo-label line ({e.msg})") from None


def merge_parts(out: Path, sources: Iterable[Path] | None = None, extra_provenance: dict | None = None) -> ShardStats:
    """Join finished shard parts into one official-format annotation file at ``out`` (streamed, atomic).

    ``sources``: parts folders and/or part files; default ``<out>.parts``. Every shard 0..n-1 of one run must
    be present and finished, and all must share the same settings.
    """
    out = Path(out)
    sources = list(sources) if sources else [parts_dir_for(out)]
    parts = _discover_parts(sources)
    if not parts:
        raise PseudoLabelError(f"no shard parts found in {', '.join(map(str, sources))}")
    metas, shards, count = [], set(), None
    for part in parts:
        m = re.fullmatch(r"shard-(\d+)-of-(\d+)\.jsonl", part.name)
        if not m:
            raise PseudoLabelError(f"{part}: part files must be named shard-I-of-N.jsonl")
        i, n = int(m.group(1)), int(m.group(2))
        if count is not None and n != count:
            raise PseudoLabelError(f"{part}: from a {n}-shard run, but other parts come from a {count}-shard run")
        count = n
        if i in shards:
            raise PseudoLabelError(f"{part}: shard {i}/{n} given twice")
        shards.add(i)
        if not part.with_name(f"{_part_name(i, n)}.done.json").exists():
            raise PseudoLabelError(f"{part}: shard {i}/{n} is not finished; rerun tal-pseudo --shard {i}/{n}")
        meta_path = part.parent / "run.json"
        if not meta_path.exists():
            raise PseudoLabelError(f"{meta_path}: missing run settings for {part.name}")
        metas.append(json.loads(meta_path.read_text()))
    missing = sorted(set(range(count)) - shards)
    if missing:
        raise PseudoLabelError(f"shards {missing} of {count} are missing from {', '.join(map(str, sources))}")
    if any(m != metas[0] for m in metas[1:]):
        raise PseudoLabelError("the parts were made with different settings (checkpoint, threshold or store)")
    parts.sort(key=lambda p: int(p.name.split("-")[1]))

    # Shards are disjoint slices of one store listing (same settings, distinct indices), so no id set is
    # kept here: merge memory stays flat in the number of videos too.
    stats = ShardStats()
    with atomic_open(out, "w", encoding="utf-8") as f:
        # Same layout as tal.data.annotations.write_official, written piecewise.
        f.write('{"version": "stovtal", "taxonomy": [{"nodeName": "%s"}], "database": {' % PSEUDO_LABEL)
        first = True
        for part in parts:
            for rec in _iter_records(part):
                vid = rec["video_id"]
                entry = {"subset": PSEUDO_SUBSET, "duration": rec["duration"]}
                if rec.get("fps") is not None:
                    entry["fps"] = rec["fps"]
                entry["annotations"] = [{"segment": [s, e], "label": PSEUDO_LABEL, "score": c, "pseudo": True}
                                        for s, e, c in rec["segments"]]
                if rec.get("ignore"):
                    entry["ignore"] = rec["ignore"]
                f.write(("" if first else ",") + "\n" + json.dumps(vid) + ": " + json.dumps(entry))
                first = False
                stats.add(len(rec["segments"]), rec["fell_back"])
        provenance = dict(metas[0], **(extra_provenance or {}))
        provenance.update(videos=stats.videos, segments=stats.segments,
                          fallback_videos=stats.fallback_videos, empty_videos=stats.empty_videos)
        f.write("\n}, \"provenance\": " + json.dumps(provenance, sort_keys=True) + "}\n")
    log.info("wrote %s: %d videos, %d pseudo-labels (%d videos fell back to top-1)",
             out, stats.videos, stats.segments, stats.fallback_videos)
    return stats


# --------------------------------------------------------------------------------------------- generation
CHUNK_VIDEOS = 256  # inference is driven in chunks so per-video bookkeeping never spans the whole store


def _duration(info) -> float:
    """The store's duration, or the grid's extent when the store does not know it."""
    if np.isfinite(info.duration) and info.duration > 0:
        return float(info.duration)
    g = info.grid
    return float(((info.num_rows - 1) * g.stride + g.window) / g.fps)


def pseudo_label_store(store, checkpoint, out, cfg: FilterConfig, *, shard: tuple[int, int] = (0, 1),
                       batch_size: int = 8, num_workers: int = 0, device=None, progress: bool = True,
                       merge: bool | None = None, provenance: dict | None = None) -> ShardStats:
    """Pseudo-label every video of ``store`` (one shard of it) with an agnostic ``checkpoint``'s EMA weights.

    Writes ``<out>.parts/``; when this is the only shard (or ``merge=True``), also assembles ``out``.
    ``provenance``: more to record with the settings (e.g. how the thresholds were chosen). Returns this
    shard's counts. Errors (bad checkpoint, mismatching or empty store) raise one-line
    ``PseudoLabelError``/``CheckpointError``/``StoreError`` messages.
    """
    from tqdm import tqdm

    from features.store import open_store
    from tal.checkpoint import check_compatible
    from tal.infer import Localizer, iter_detections

    store, checkpoint, out = Path(store), Path(checkpoint), Path(out)
    index, count = shard
    localizer = Localizer.from_checkpoint(checkpoint, weights="ema")
    if localizer.mode != "agnostic":
        raise PseudoLabelError(f"{checkpoint}: pseudo-labels need a class-agnostic localizer "
                               f"(this one is closed over {len(localizer.classes)} classes)")
    with open_store(store, "r") as st:
        ids = st.video_ids()
        if not ids:
            raise PseudoLabelError(f"{store}: the unlabelled store holds no videos")
        check_compatible(localizer.provenance, st, checkpoint)
        encoder = {k: st.provenance.get(k) for k in ("encoder", "pretrained", "dim")}
    mcfg = localizer.config.model
    run_meta = {
        "kind": "pseudo-labels", "label": PSEUDO_LABEL,
        "checkpoint": str(checkpoint.resolve()), "checkpoint_sha256": sha256_file(checkpoint),
        "weights": localizer.weights,
        "store": str(store.resolve()), "store_encoder": encoder,
        "threshold": cfg.threshold, "top_k": cfg.top_k, "dedup_iou": cfg.dedup_iou, "min_duration": cfg.min_duration,
        "ignore_threshold": cfg.ignore_threshold, "nms": mcfg.nms_method, "max_proposals": mcfg.max_seg_num,
        **(provenance or {}),
    }
    writer = ShardWriter(parts_dir_for(out), index, count, run_meta)
    mine = shard_slice(ids, index, count)
    del ids
    todo = writer.pending(mine)
    log.info("shard %d/%d of %s: %d videos, %d to do", index, count, store, len(mine), len(todo))
    try:
        with open_store(store, "r") as st, tqdm(total=len(mine), initial=len(mine) - len(todo), unit="video",
                                                desc=f"pseudo-labels {index}/{count}", disable=not progress) as bar:
            for lo in range(0, len(todo), CHUNK_VIDEOS):
                chunk = todo[lo: lo + CHUNK_VIDEOS]
                for vid, dets in iter_detections(store, localizer, chunk, batch_size=batch_size,
                                                 num_workers=num_workers, device=device, check_store=False):
                    info = st.info(vid)
                    duration = _duration(info)
                    segs = np.array([[d.start, d.end] for d in dets], dtype=np.float64).reshape(-1, 2)
                    scores = np.array([d.score for d in dets], dtype=np.float64)
                    writer.write(vid, duration, info.fps, filter_proposals(segs, scores, duration, cfg))
                    bar.update(1)
        stats = writer.finish()
    finally:
        writer.close()
    if stats.fallback_videos:
        log.warning("threshold %.3g kept no proposal in %d of %d videos of shard %d/%d; kept their top-1 instead%s",
                    cfg.threshold, stats.fallback_videos, stats.videos, index, count,
                    " — every video fell back: the threshold is above all scores"
                    if stats.fallback_videos == stats.videos else "")
    if merge or (merge is None and count == 1):
        merge_parts(out)
    return stats


def pseudo_segments(segments, scores) -> list:
    """Pseudo-label segments (label ``PSEUDO_LABEL``, ``pseudo=True``) from [N, 2] seconds and [N] scores."""
    from tal.data.annotations import Segment

    return [Segment(float(a), float(b), PSEUDO_LABEL, float(c), pseudo=True) for (a, b), c in zip(segments, scores)]


def video_candidates(video) -> np.ndarray:
    """[N, 3] start, end, score of a pseudo-labelled video's segments and ignore regions (a file written with
    lower thresholds holds every proposal above the lower one as one or the other)."""
    cand = [(s.start, s.end, s.score if s.score is not None else 1.0) for s in video.segments] + video.ignore
    return np.array(cand, dtype=np.float64).reshape(-1, 3)


def refilter(src, out, cfg: FilterConfig, provenance: dict | None = None, limit: int | None = None) -> ShardStats:
    """Filter an existing pseudo-label file again (e.g. a τ sweep without rerunning the model); ``limit``
    keeps only the first videos of the file (a scaling curve over the number of unlabelled videos).

    Exact when ``src`` was written with thresholds <= ``cfg``'s (its ignore regions count as candidates), no
    top-k and the same dedup and minimum duration: filtering is then idempotent except for the stricter
    thresholds.
    """
    from tal.data.annotations import AnnotationSet, load_annotations, write_official

    aset = load_annotations(src)
    stats = ShardStats()
    videos = {}
    for vid, video in list(aset.videos.items())[:limit]:
        cand = video_candidates(video)
        result = filter_proposals(cand[:, :2], cand[:, 2], video.duration, cfg)
        video.segments = pseudo_segments(result.segments, result.scores)
        video.ignore = [tuple(map(float, r)) for r in result.ignore]
        stats.add(len(video.segments), result.fell_back)
        videos[vid] = video
    prov = dict(aset.provenance)  # the writer drops the reader's source/format entries
    prov.update(asdict(cfg), refiltered_from=str(src), videos=stats.videos, segments=stats.segments,
                fallback_videos=stats.fallback_videos, empty_videos=stats.empty_videos, **(provenance or {}))
    write_official(AnnotationSet(videos, prov), out)
    return stats


def agnostic_detections(gt, pl) -> tuple:
    """``gt``'s videos that ``pl`` holds, every segment labelled "action", and ``pl``'s segments as detections
    (score 1 where none): class-agnostic evaluation of proposals (:func:`tal.eval.detection.evaluate_detection`)."""
    from tal.data.annotations import AnnotationSet, Segment, VideoAnnotation
    from tal.eval.predictions import Detection

    agnostic = AnnotationSet({vid: VideoAnnotation(vid, v.subset, v.duration, v.fps,
                                                   [Segment(s.start, s.end, PSEUDO_LABEL) for s in v.segments])
                              for vid, v in gt.videos.items() if vid in pl.videos})
    preds = {vid: [Detection(PSEUDO_LABEL, s.score if s.score is not None else 1.0, s.start, s.end)
                   for s in v.segments] for vid, v in pl.videos.items()}
    return agnostic, preds


def agnostic_ap(gt, pl, alpha: float = 0.5) -> float:
    """Class-agnostic AP at tIoU ``alpha`` of ``pl``'s segments (ranked by score) against ``gt``'s, on the videos
    ``pl`` holds (:func:`agnostic_detections`)."""
    from tal.eval.detection import evaluate_detection

    return float(evaluate_detection(*agnostic_detections(gt, pl), [alpha]).average_mAP)


def pseudo_label_quality(pl_path, gt_path, tiou=(0.3, 0.4, 0.5, 0.6, 0.7), novel=None) -> dict:
    """How good are the pseudo-labels? Scored as class-agnostic detections against the unlabelled videos' truth
    (analysis only: a simulation knows it, a real run rarely does): average mAP, and recall / precision at
    tIoU 0.5 (a truth instance is recalled, a pseudo-label is precise, when some segment of the other side
    overlaps it by tIoU >= 0.5). Given the ``novel`` class names, also the recall of base and of novel
    instances apart (``recall@0.5 base`` / ``recall@0.5 novel``): what self-training can teach about novel
    classes is bounded by how many of their instances stage 1 labels."""
    from tal.data.annotations import load_annotations
    from tal.eval.detection import evaluate_detection, tiou_matrix

    gt = load_annotations(gt_path)
    agnostic, preds = agnostic_detections(gt, load_annotations(pl_path))
    report = evaluate_detection(agnostic, preds, list(tiou))
    hits_gt = hits_pl = n_gt = n_pl = 0
    groups = {"base": [0, 0], "novel": [0, 0]}  # [recalled, instances]
    novel = None if novel is None else set(novel)
    for vid, video in agnostic.videos.items():
        g = np.array([[s.start, s.end] for s in video.segments]).reshape(-1, 2)
        p = np.array([[d.start, d.end] for d in preds[vid]]).reshape(-1, 2)
        n_gt, n_pl = n_gt + len(g), n_pl + len(p)
        ok = tiou_matrix(g, p) >= 0.5  # [0, M] or [N, 0] when a side is empty: no hits
        recalled = ok.any(axis=1)
        hits_gt += int(recalled.sum())
        hits_pl += int(ok.any(axis=0).sum())
        if novel is not None:
            for seg, hit in zip(gt.videos[vid].segments, recalled):
                counts = groups["novel" if seg.label in novel else "base"]
                counts[0] += int(hit)
                counts[1] += 1
    quality = {"average_mAP": float(report.average_mAP), "recall@0.5": hits_gt / max(n_gt, 1),
               "precision@0.5": hits_pl / max(n_pl, 1), "pseudo_labels": n_pl, "true_actions": n_gt}
    if novel is not None:
        for name, (hit, n) in groups.items():
            quality[f"recall@0.5 {name}"] = hit / n if n else None
            quality[f"true_actions {name}"] = n
    return quality


def select_true_positives(src, gt_path, out, alpha: float = 0.5) -> ShardStats:
    """Analysis only: keep the pseudo-labels (and ignore-region candidates) of ``src`` that take a true
    instance at tIoU >= ``alpha`` (best score first, one per instance) and drop every other one — a perfect
    selection among stage 1's proposals. Stage 2 on it bounds what any rule choosing among those proposals (a
    threshold, ignore regions, top-k) can reach; what stays missing is what stage 1 never proposed."""
    from tal.data.annotations import AnnotationSet, load_annotations, write_official
    from tal.thresholds import match_proposals

    truth = load_annotations(gt_path)
    aset = load_annotations(src)
    stats = ShardStats()
    for vid, video in aset.videos.items():
        if vid not in truth.videos:
            raise PseudoLabelError(f"{gt_path}: no truth for video {vid!r} of {src}")
        cand = video_candidates(video)
        order = np.argsort(-cand[:, 2], kind="stable")  # match_proposals visits proposals in this order
        gt = [[s.start, s.end] for s in truth.videos[vid].segments]
        hits = match_proposals({vid: gt}, {vid: (cand[:, :2], cand[:, 2])}, alpha).hits
        kept = cand[order][hits]
        video.segments = pseudo_segments(kept[:, :2], kept[:, 2])
        video.ignore = []
        stats.add(len(video.segments), False)
    prov = dict(aset.provenance)
    prov.update(selected_true_positives_from=str(src), truth=str(gt_path), alpha=alpha, videos=stats.videos,
                segments=stats.segments, empty_videos=stats.empty_videos)
    write_official(AnnotationSet(aset.videos, prov), out)
    return stats
