"""BSN/G-TAD layout: {vid: {"duration_second", "duration_frame", "feature_frame", "annotations"}}.

The subset is not in the JSON.  It comes from BSN's ``video_info_new.csv`` (columns ``video`` and
``subset``; looked for beside the JSON unless given), or, for THUMOS14 ids without a CSV, from the id
itself (``video_validation_*`` / ``video_test_*``).
"""

from __future__ import annotations

import csv
from pathlib import Path

from tal.data.annotation_types import AnnotationBuilder, AnnotationError

CSV_NAMES = ("video_info_new.csv", "video_info.csv")


def _read_subsets(path: Path) -> dict[str, str]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise AnnotationError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not rows or "video" not in rows[0] or "subset" not in rows[0]:
        raise AnnotationError(f"{path}: needs CSV columns 'video' and 'subset'")
    return {row["video"]: row["subset"] for row in rows}


def _subset_from_id(vid: str) -> str | None:
    if vid.startswith("video_validation_"):
        return "validation"
    if vid.startswith("video_test_"):
        return "testing"
    return None


def read(builder: AnnotationBuilder, data, video_info=None) -> None:
    if video_info is None:
        video_info = next((builder.path.parent / n for n in CSV_NAMES if (builder.path.parent / n).exists()), None)
    subsets = _read_subsets(Path(video_info)) if video_info is not None else {}
    for vid, entry in data.items():
        if not isinstance(entry, dict):
            raise AnnotationError(f"{builder.where(vid)}: entry is not an object")
        for key in ("duration_second", "annotations"):
            if key not in entry:
                raise AnnotationError(f"{builder.where(vid, key)}: missing")
        subset = subsets.get(vid) or _subset_from_id(vid)
        if subset is None:
            source = f"not listed in {video_info}" if video_info is not None else "no video_info CSV"
            raise AnnotationError(f"{builder.where(vid, 'subset')}: unknown subset ({source})")
        fps = None
        if entry.get("duration_frame") and entry["duration_second"]:
            fps = float(entry["duration_frame"]) / float(entry["duration_second"])
        video = builder.add_video(vid, subset, entry["duration_second"], fps)
        builder.add_segment_list(video, vid, entry["annotations"])
