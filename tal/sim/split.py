"""Simulating a whole split (many videos of one domain) and turning plans into annotations."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from tal.data.annotations import AnnotationSet, Segment, VideoAnnotation, canonical_subset
from tal.sim.video import VideoPlan, plan_video, render_rows
from tal.sim.config import SimConfigError
from tal.sim.world import World, stream

CLASS_SETS = ("base", "novel", "all")


def allowed_classes(world: World, classes: str) -> np.ndarray:
    if classes not in CLASS_SETS:
        raise SimConfigError(f"classes must be one of {', '.join(CLASS_SETS)}, got {classes!r}")
    names = {"base": world.base, "novel": world.novel, "all": world.class_names}[classes]
    return world.class_index(names)


def video_id(name: str, index: int) -> str:
    return f"sim_{name}_{index:06d}"


def iter_plans(world: World, domain: str, n_videos: int, classes: str, name: str, start: int = 0
               ) -> Iterator[VideoPlan]:
    """Plans of videos ``start..n_videos-1`` of split ``name``; video i's plan depends only on (seed, name, i)."""
    world.cfg.domain(domain)  # validates the name
    allowed = allowed_classes(world, classes)
    for i in range(start, n_videos):
        vid = video_id(name, i)
        yield plan_video(world, domain, allowed, vid, stream(world.cfg.seed, "video", name, i, "plan"))


def rows_of(world: World, plan: VideoPlan, name: str, index: int) -> np.ndarray:
    return render_rows(world, plan, stream(world.cfg.seed, "video", name, index, "rows"))


def annotations_of(world: World, plans, subset: str, provenance: dict | None = None) -> AnnotationSet:
    subset = canonical_subset(subset, "simulated split")
    videos = {}
    for p in plans:
        segs = [Segment(s, e, world.class_names[k]) for s, e, k in p.labels]
        videos[p.video_id] = VideoAnnotation(p.video_id, subset, round(p.duration, 3), world.cfg.fps, segs)
    return AnnotationSet(videos, {"simulated": True, **(provenance or {})})


def simulate_split(world: World, domain: str, n_videos: int, subset: str = "training", classes: str = "all",
                   name: str | None = None) -> tuple[dict[str, np.ndarray], AnnotationSet]:
    """Rows per video id ([T, D] float32, L2-normalised) and the split's annotations, in memory.

    ``name`` keys the random stream (default ``"<domain>_<subset>"``): two splits with different names never
    share videos; the first n videos of a split are the same whatever n is (nested scaling sets).
    """
    name = name or f"{domain}_{canonical_subset(subset, 'simulated split')}"
    plans = list(iter_plans(world, domain, n_videos, classes, name))
    rows = {p.video_id: rows_of(world, p, name, i) for i, p in enumerate(plans)}
    return rows, annotations_of(world, plans, subset)
