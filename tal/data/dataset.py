"""Feature-store datasets: annotations joined to store rows by video id, read lazily per DataLoader worker.

Only small per-video metadata (row count, grid, duration, segments) is held in memory; rows are read from the
store when an item is asked for, through a store handle each worker process opens for itself. A dataset larger
than RAM therefore trains. Segments are converted from seconds to grid units with the video's own grid
(``tal.data.grid``); training items are cropped to ``max_seq_len`` keeping an action, or resized to a fixed
length (ActivityNet style).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from features.errors import StovtalError
from tal.data.grid import GridMap

log = logging.getLogger(__name__)

PSEUDO_LABEL = "action"


class DatasetError(StovtalError, ValueError):
    """A one-line message naming the store/annotation file and the videos at fault."""


@dataclass
class VideoRecord:
    """What the dataset keeps per video: no feature rows."""

    store: int  # index into the dataset's store paths
    video_id: str
    num_rows: int
    duration: float  # seconds
    grid: GridMap  # native seconds <-> row map of this video
    segments: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float64))  # [N, 2] seconds
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float64))  # [M, 2] seconds, unknown
    pseudo: bool = False


# --------------------------------------------------------------------------------------------- store handles
class StoreSet:
    """Store paths, each opened read-only on first use in the current process (DataLoader workers included).

    ``prefer``: the store (one of ``paths``) whose rows win for a video that several stores hold with different
    rows; without it such a video is an error (see :func:`locate_videos`)."""

    def __init__(self, paths, prefer=None):
        self.paths = [Path(p) for p in paths]
        self.prefer = None
        if prefer is not None:
            matches = [i for i, p in enumerate(self.paths) if p.resolve() == Path(prefer).resolve()]
            if not matches:
                raise DatasetError(f"--prefer-store {prefer}: not one of the feature stores "
                                   f"({', '.join(map(str, self.paths))})")
            self.prefer = matches[0]
        self._open: dict[int, object] = {}
        self._pid = None

    def __getitem__(self, i):
        if self._pid != os.getpid():  # forked into a worker: never share the parent's file handles
            self._open, self._pid = {}, os.getpid()
        if i not in self._open:
            from features.store import open_store

            self._open[i] = open_store(self.paths[i], "r")
        return self._open[i]

    def __len__(self):
        return len(self.paths)

    def __getstate__(self):
        return {"paths": self.paths, "prefer": self.prefer, "_open": {}, "_pid": None}

    def close(self):
        if self._pid == os.getpid():
            for store in self._open.values():
                store.close()
        self._open = {}


def _shown(ids: list, limit: int = 10) -> str:
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def locate_videos(stores: StoreSet, video_ids, what: str, skip_missing: bool) -> dict[str, int]:
    """video id -> index of the store that holds it; missing ids are an error listing them, or skipped.

    A video in several stores is taken from the first of them when every copy is the same (same info and rows,
    by checksum), from ``stores.prefer`` when that store holds it; otherwise it is an error naming the videos
    and stores: which rows to train or infer on is the user's choice, never the order of --features."""
    from features.store.ops import same_video

    where, missing, conflicts = {}, [], {}
    for vid in video_ids:
        holders = [i for i in range(len(stores)) if vid in stores[i]]
        if not holders:
            missing.append(vid)
        elif len(holders) == 1 or stores.prefer in holders:
            where[vid] = holders[0] if len(holders) == 1 else stores.prefer
        elif all(same_video(stores[holders[0]], stores[i], vid) for i in holders[1:]):
            where[vid] = holders[0]
        else:
            conflicts[vid] = holders
    if conflicts:
        ids = list(conflicts)
        pairs = sorted({tuple(h) for h in conflicts.values()})
        in_stores = "; ".join(" and ".join(str(stores.paths[i]) for i in h) for h in pairs)
        raise DatasetError(f"{what}: {len(ids)} video(s) are in several stores with different rows ({in_stores}): "
                           f"{_shown(ids)}; name the store whose rows to use with --prefer-store")
    if missing:
        shown = _shown(missing)
        names = ", ".join(str(p) for p in stores.paths)
        if not skip_missing:
            raise DatasetError(f"{what}: {len(missing)} video(s) not in any store ({names}): {shown} "
                               "(use --skip-missing to skip them)")
        log.warning("%s: skipping %d video(s) not in any store: %s", what, len(missing), shown)
    return where


def _record(stores: StoreSet, store_index: int, vid: str, fallback_duration: float | None) -> VideoRecord:
    info = stores[store_index].info(vid)
    duration = info.duration if info.duration and info.duration > 0 else fallback_duration
    if not duration or not duration > 0:
        raise DatasetError(f"{stores.paths[store_index]}: video {vid} has no usable duration")
    return VideoRecord(store_index, vid, int(info.num_rows), float(duration), GridMap.from_grid(info.grid, duration))


def build_records(stores: StoreSet, aset, *, source: str, mode: str, classes: list[str] | None,
                  pseudo: bool = False, pseudo_weight: str = "score", skip_missing: bool = False,
                  drop_empty: bool | None = None) -> list[VideoRecord]:
    """Training records for one annotation set.

    ``mode='closed'``: label ids index ``classes``; ``mode='agnostic'``: every label is class 0. Pseudo-labels are
    class-agnostic whatever the mode, weighted by their score (``pseudo_weight='score'``, and ``'soft'``, where
    the training loss reads the weight as a probability) or 1.
    """
    if drop_empty is None:  # human labels: a video without them is not part of the split; a pseudo-labelled
        drop_empty = not pseudo  # video without actions is background to learn from
    where = locate_videos(stores, list(aset.videos), source, skip_missing)
    index = {c: i for i, c in enumerate(classes or [])}
    records, empty = [], 0
    for vid, video in aset.videos.items():
        if vid not in where:
            continue
        segs = [s for s in video.segments if s.end > s.start]
        if not segs and drop_empty:
            empty += 1
            continue
        rec = _record(stores, where[vid], vid, video.duration)
        rec.segments = np.array([[s.start, s.end] for s in segs], np.float64).reshape(-1, 2)
        if mode == "closed" and not pseudo:
            unknown = sorted({s.label for s in segs} - set(index))
            if unknown:
                raise DatasetError(f"{source}: video {vid} has label(s) outside the class list: {', '.join(unknown)}")
            rec.labels = np.array([index[s.label] for s in segs], np.int64)
        else:
            rec.labels = np.zeros(len(segs), np.int64)
        if pseudo and pseudo_weight in ("score", "soft"):
            rec.weights = np.array([1.0 if s.score is None else float(s.score) for s in segs], np.float32)
            if pseudo_weight == "soft" and not ((rec.weights >= 0) & (rec.weights <= 1)).all():
                raise DatasetError(f"{source}: video {vid} has pseudo-label score(s) outside [0, 1] "
                                   f"({rec.weights.min():.4g}..{rec.weights.max():.4g}); pseudo_weight 'soft' reads "
                                   "a score as the probability of an action")
        else:
            rec.weights = np.ones(len(segs), np.float32)
        rec.ignore = np.array([[a, b] for a, b, _ in video.ignore], np.float64).reshape(-1, 2)
        rec.pseudo = pseudo
        records.append(rec)
    if empty:
        log.info("%s: %d video(s) without segments left out of training", source, empty)
    return records


def inference_records(stores: StoreSet, video_ids=None, skip_missing: bool = False,
                      durations: dict | None = None) -> list[VideoRecord]:
    """Records without labels for ``video_ids`` (default: every video of every store, in store order)."""
    if video_ids is None:
        video_ids = list(dict.fromkeys(vid for i in range(len(stores)) for vid in stores[i].video_ids()))
    where = locate_videos(stores, list(video_ids), "requested videos", skip_missing)
    pairs = [(vid, where[vid]) for vid in video_ids if vid in where]
    durations = durations or {}
    return [_record(stores, i, vid, durations.get(vid)) for vid, i in pairs]


# --------------------------------------------------------------------------------------------- cropping
def crop_window(num_rows: int, segments: np.ndarray, crop_len: int, rng: np.random.Generator) -> int:
    """Start row of a ``crop_len`` window that holds one randomly chosen action whole when one fits.

    Choosing the action first, then a start among those that contain it, guarantees the crop keeps an action
    (ActionFormer retries random windows instead). If no action fits, the window lies inside a random action.
    Actions are clipped to the video first (grid-unit segments may reach half a snippet past either end).
    """
    last = num_rows - crop_len
    if last <= 0:
        return 0
    if len(segments):
        s = np.clip(np.floor(segments[:, 0]), 0, num_rows)  # the part of each action inside the video
        e = np.clip(np.ceil(segments[:, 1]), 0, num_rows)
        lo, hi = np.maximum(e - crop_len, 0), np.minimum(s, last)  # starts whose window holds the action
        feasible = np.flatnonzero((lo <= hi) & (e > s))
        if len(feasible):
            k = rng.choice(feasible)
            return int(rng.integers(lo[k], hi[k] + 1))
        k = rng.integers(len(segments))  # no action fits: a window inside one
        lo_in, hi_in = max(int(s[k]), 0), min(int(e[k]) - crop_len, last)
        if lo_in <= hi_in:
            return int(rng.integers(lo_in, hi_in + 1))
    return int(rng.integers(0, last + 1))


def crop_segments(segments, labels, weights, start: int, length: int, keep_thresh: float):
    """Clip segments (grid units) to ``[start, start+length]``; keep those with >= keep_thresh of them inside."""
    if not len(segments):
        return segments, labels, weights
    left = np.maximum(segments[:, 0], start)
    right = np.minimum(segments[:, 1], start + length)
    inside = np.clip(right - left, 0, None) / np.maximum(segments[:, 1] - segments[:, 0], 1e-6)
    keep = (inside >= keep_thresh) & (right > left)
    clipped = np.stack([left, right], 1)[keep] - start
    return clipped, labels[keep], weights[keep]


# --------------------------------------------------------------------------------------------- dataset
class FeatureDataset(Dataset):
    """Items: ``dict(video_id, feats [D, T] float32, segments [N, 2] grid units, labels, weights, grid, ...)``.

    ``training=True``: long videos are cropped to ``max_seq_len`` keeping an action (and randomly shortened to a
    ``crop_ratio`` of their length when set); with ``resize_len`` every video is interpolated to that length.
    """

    def __init__(self, store_paths, records: list[VideoRecord], *, training: bool, max_seq_len: int,
                 resize_len: int | None = None, trunc_thresh: float = 0.5, crop_ratio=None):
        self.stores = StoreSet(store_paths)
        self.records = records
        self.training = training
        self.max_seq_len = int(max_seq_len)
        self.resize_len = resize_len
        self.trunc_thresh = trunc_thresh
        self.crop_ratio = crop_ratio

    def __len__(self):
        return len(self.records)

    def clip_lengths(self) -> list[int]:
        """Each item's rows at most, known without reading: the resize length, or (training) the video's rows
        capped at max_seq_len — random crops only shorten. Length-aware batching sorts by these."""
        if self.resize_len:
            return [int(self.resize_len)] * len(self.records)
        cap = self.max_seq_len if self.training else None
        return [min(r.num_rows, cap) if cap else r.num_rows for r in self.records]

    def read_rows(self, rec: VideoRecord) -> np.ndarray:
        if rec.num_rows < 1:
            raise DatasetError(f"{self.stores.paths[rec.store]}: video {rec.video_id} has no feature rows")
        store = self.stores[rec.store]
        return store.read(rec.video_id, out=np.empty((rec.num_rows, store.dim), np.float32))  # converted as read

    def __getitem__(self, i):
        rec = self.records[i]
        rows = self.read_rows(rec)
        feats = torch.from_numpy(np.ascontiguousarray(rows.T))  # [D, T]
        grid = rec.grid
        labels, weights = rec.labels, rec.weights
        if self.resize_len and feats.shape[1] != self.resize_len:
            t = feats.shape[1]
            feats = F.interpolate(feats[None], size=self.resize_len, mode="linear", align_corners=False)[0]
            grid = grid.resized(t, self.resize_len)
        segments = grid.to_grid(rec.segments).reshape(-1, 2)
        ignore = grid.to_grid(rec.ignore).reshape(-1, 2)
        if self.training and not self.resize_len:
            feats, segments, labels, weights, ignore = self._crop(feats, segments, labels, weights, ignore)
        return {
            "video_id": rec.video_id,
            "feats": feats.contiguous(),
            "segments": torch.as_tensor(segments, dtype=torch.float32).reshape(-1, 2),
            "labels": torch.as_tensor(labels, dtype=torch.long),
            "weights": torch.as_tensor(weights, dtype=torch.float32),
            "ignore": torch.as_tensor(ignore, dtype=torch.float32).reshape(-1, 2),
            "grid": grid,
            "duration": rec.duration,
            "pseudo": rec.pseudo,
        }

    def _crop(self, feats, segments, labels, weights, ignore):
        # torch's RNG is seeded per DataLoader worker (and restored on resume); derive a numpy generator from it.
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        t = feats.shape[1]
        crop_len = min(t, self.max_seq_len)
        if self.crop_ratio is not None and t <= self.max_seq_len:
            lo = max(round(self.crop_ratio[0] * t), 1)
            crop_len = int(rng.integers(lo, max(lo, round(self.crop_ratio[1] * t)) + 1))
        if crop_len >= t:
            return feats, segments, labels, weights, ignore
        start = crop_window(t, segments, crop_len, rng)
        segments, labels, weights = crop_segments(segments, labels, weights, start, crop_len, self.trunc_thresh)
        # an unknown region stays unknown however little of it the crop keeps
        ignore, _, _ = crop_segments(ignore, np.zeros(len(ignore)), np.zeros(len(ignore)), start, crop_len, 0.0)
        return feats[:, start:start + crop_len], segments, labels, weights, ignore
