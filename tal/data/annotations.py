"""Annotation files: format detection, the readers' entry point and the official ActivityNet writer.

The types and the validation rules every reader shares live in :mod:`tal.data.annotation_types` (re-exported
here); the readers for the individual file formats live in :mod:`tal.data.formats`.
"""

from __future__ import annotations

import math
from pathlib import Path

from tal.atomic import atomic_write_json
from tal.data import formats
from tal.data.annotation_types import (SUBSETS, AnnotationBuilder, AnnotationError, AnnotationSet,
                                       AnnotationWarning, Segment, VideoAnnotation, canonical_subset, paused_gc,
                                       read_json, to_float)

__all__ = ["SUBSETS", "FORMATS", "AnnotationBuilder", "AnnotationError", "AnnotationSet", "AnnotationWarning",
           "Segment", "VideoAnnotation", "canonical_subset", "detect_format", "load_annotations", "paused_gc",
           "read_json", "to_float", "to_official", "write_official"]

FORMATS = ("official", "actionformer", "bsn", "compact", "thumos-txt")


def detect_format(path: Path, data=None) -> str:
    """Guess the format from a directory or the JSON's top-level layout."""
    if path.is_dir():
        return "thumos-txt"
    if data is None:
        data = read_json(path)
    if not isinstance(data, dict) or not data:
        raise AnnotationError(f"{path}: expected a JSON object of videos or a 'database'")
    if "results" in data and "database" not in data:
        raise AnnotationError(f"{path}: this is a predictions file ('results'), not ground truth")
    if "database" in data:
        database = data["database"]
        first = next(iter(database.values()), {}) if isinstance(database, dict) else {}
        anns = first.get("annotations") if isinstance(first, dict) else None
        if anns and isinstance(anns[0], dict) and ("label_id" in anns[0] or "segment(frames)" in anns[0]):
            return "actionformer"
        return "official"
    first = next(iter(data.values()))
    if isinstance(first, dict) and "duration_second" in first:
        return "bsn"
    if isinstance(first, dict) and "annotations" in first:
        return "compact"
    raise AnnotationError(f"{path}: unrecognised annotation layout (no 'database', 'duration_second' or 'annotations')")


def load_annotations(path, fmt: str = "auto", subset: str | None = None, *, strict: bool = False,
                     clip: bool = True, video_info=None, keep_ambiguous: bool = False) -> AnnotationSet:
    """Read ground truth in any supported format; ``subset`` keeps one canonical subset.

    ``clip=False`` keeps segments that run past the video's end as given (the evaluator reads ground truth
    this way, as the official ActivityNet evaluator does); they are still counted in a warning.
    ``video_info``: the BSN ``video_info_new.csv`` (default: found beside the JSON).  ``keep_ambiguous``: keep
    THUMOS14's ``Ambiguous`` class when reading the per-class txt directory.
    """
    path = Path(path)
    if not path.exists():
        raise AnnotationError(f"{path}: no such file or directory")
    data = None if path.is_dir() else read_json(path)
    if fmt == "auto":
        fmt = detect_format(path, data)
    if subset is not None:
        subset = canonical_subset(subset, f"{path}: requested subset")
    builder = AnnotationBuilder(path, strict=strict, clip=clip, subset=subset)
    if fmt in ("official", "actionformer"):
        formats.official.read(builder, data, require_fps=(fmt == "actionformer"))
    elif fmt == "bsn":
        formats.bsn.read(builder, data, video_info)
    elif fmt == "compact":
        formats.compact.read(builder, data)
    elif fmt == "thumos-txt":
        formats.thumos_txt.read(builder, keep_ambiguous=keep_ambiguous)
    else:
        raise AnnotationError(f"{path}: unknown annotation format {fmt!r} (expected one of {', '.join(FORMATS)})")
    provenance = data.get("provenance") if isinstance(data, dict) and isinstance(data.get("provenance"), dict) else None
    return builder.finish(fmt, provenance)


def to_official(aset: AnnotationSet) -> dict:
    database = {}
    for vid, video in aset.videos.items():
        entry = {"subset": video.subset,
                 "duration": None if not math.isfinite(video.duration) else video.duration}
        if video.fps is not None:
            entry["fps"] = video.fps
        annotations = []
        for seg in video.segments:
            ann = {"segment": [seg.start, seg.end], "label": seg.label}
            if seg.score is not None:
                ann["score"] = seg.score
            if seg.pseudo:
                ann["pseudo"] = True
            annotations.append(ann)
        entry["annotations"] = annotations
        if video.ignore:
            entry["ignore"] = [list(r) for r in video.ignore]
        database[vid] = entry
    out = {"version": "stovtal", "taxonomy": [{"nodeName": c} for c in aset.classes], "database": database}
    extra = {k: v for k, v in aset.provenance.items() if k not in ("source", "format")}
    if extra:
        out["provenance"] = extra
    return out


def write_official(aset: AnnotationSet, path) -> None:
    """Write the official ActivityNet layout atomically (``provenance`` goes in a top-level key)."""
    atomic_write_json(path, to_official(aset), indent=None)
