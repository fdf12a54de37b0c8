"""The compact THUMOS14 JSON: {vid: {"duration", "frames", "subset", "annotations": [{segment, label}]}}."""

from __future__ import annotations

from tal.data.annotation_types import AnnotationBuilder, AnnotationError


def read(builder: AnnotationBuilder, data) -> None:
    for vid, entry in data.items():
        if not isinstance(entry, dict):
            raise AnnotationError(f"{builder.where(vid)}: entry is not an object")
        for key in ("subset", "duration", "annotations"):
            if key not in entry:
                raise AnnotationError(f"{builder.where(vid, key)}: missing")
        fps = None
        if entry.get("frames") and entry["duration"]:
            # Frames over duration gives the source fps these files were cut at.
            fps = float(entry["frames"]) / float(entry["duration"])
        video = builder.add_video(vid, entry["subset"], entry["duration"], fps)
        builder.add_segment_list(video, vid, entry["annotations"])
