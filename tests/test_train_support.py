"""Tiny real-format benchmarks for the training tests: a real Zarr/HDF5 store with planted actions plus an
official-format annotation file. (Helpers only; the module holds no tests.)"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from features.store import Grid, VideoInfo, create_store
from tal.data.annotations import AnnotationSet, Segment, VideoAnnotation, write_official

GRID = Grid(fps=30.0, window=16, stride=4, frame_step=4)
CLASSES = ["jump", "run", "swim"]
# A model small enough to train in seconds on one CPU thread.
TINY = ["model.embd_dim=32", "model.fpn_dim=32", "model.head_dim=32", "model.max_seq_len=64",
        "model.droppath=0.0", "data.num_workers=0", "train.batch_size=4", "train.lr=3e-3",
        "train.warmup_epochs=1", "train.ema_decay=0.9"]


@contextmanager
def single_thread():
    """One torch thread, restored afterwards: the shared 2-core machine runs several suites at once and
    OpenMP threads spinning against each other slow these tiny models down many times."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def provenance(encoder="simulated", pretrained="tiny-test", grid=GRID, **extra):
    return {"encoder": encoder, "pretrained": pretrained, "image_size": 0, "preprocess": "none",
            "normalise": "l2", "fps": grid.fps, "window": grid.window, "stride": grid.stride,
            "frame_step": grid.frame_step, **extra}


def duration_of(num_rows: int, grid: Grid = GRID) -> float:
    """The duration whose snippet count on ``grid`` is exactly ``num_rows``."""
    return ((num_rows - 1) * grid.stride + grid.window) / grid.fps


def prototypes(dim: int, k: int) -> np.ndarray:
    """Orthonormal class directions (rows 0..k-1) and a background direction (row k), fixed for a given dim."""
    return np.linalg.qr(np.random.default_rng(1234).normal(size=(dim, dim)))[0][: k + 1]


def make_benchmark(root: Path, *, n_videos=12, dim=32, rows=(64, 160), classes=CLASSES, seed=0, name="tiny",
                   grid=GRID, suffix=".zarr", store_provenance=None, subsets=("training",), label_offset=0,
                   vocabulary=False):
    """Write ``root/name.zarr`` and ``root/name.json``; each video holds 1-3 actions of strong class prototypes.

    Returns (store_path, annotation_path, annotation_set)."""
    rng = np.random.default_rng(seed)
    protos = prototypes(dim, len(classes)) * 3.0
    store_path, ann_path = root / f"{name}{suffix}", root / f"{name}.json"
    videos = {}
    with create_store(store_path, dim=dim, provenance=store_provenance or provenance(grid=grid)) as store:
        for v in range(n_videos):
            vid = f"{name}_{v:03d}"
            t = int(rng.integers(rows[0], rows[1] + 1))
            feats = rng.normal(scale=0.3, size=(t, dim)) + protos[-1]  # background prototype
            centers = grid.centers(t)
            duration = duration_of(t, grid)
            segs, cursor = [], 4
            for _ in range(int(rng.integers(1, 4))):
                length = int(rng.integers(6, 24))
                gap = int(rng.integers(3, 16))
                a = cursor + gap
                if a + length >= t - 2:
                    break
                c = (v + len(segs) + label_offset) % len(classes)
                feats[a:a + length] = rng.normal(scale=0.3, size=(length, dim)) + protos[c]
                # the action covers rows a..a+length-1: from half a stride before the first centre to after the last
                half = 0.5 * grid.stride / grid.fps
                segs.append(Segment(float(centers[a] - half), float(centers[a + length - 1] + half), classes[c]))
                cursor = a + length
            info = VideoInfo(num_rows=t, fps=grid.fps, duration=duration,
                             num_frames=int(round(duration * grid.fps)), grid=grid)
            store.write_video(vid, feats.astype(np.float32), info)
            videos[vid] = VideoAnnotation(vid, subsets[v % len(subsets)], duration, grid.fps, segs)
        if vocabulary:
            store.add_vocabulary("tiny", list(classes), prototypes(dim, len(classes))[:-1], template="{}")
    aset = AnnotationSet(videos)
    write_official(aset, ann_path)
    return store_path, ann_path, aset
