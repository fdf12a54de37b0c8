"""The official ActivityNet layout ({"version", "taxonomy", "database"}) and ActionFormer's variant of it.

ActionFormer's THUMOS14 file is the same layout with capitalised subsets ("Validation"/"Test"), a per-video
``fps`` and extra per-instance fields (``label_id``, ``segment(frames)``), which are ignored.  DETAD's files
omit ``duration``; it is then unknown (nan) and nothing is clipped.
"""

from __future__ import annotations

from tal.data.annotation_types import AnnotationBuilder, AnnotationError


def read(builder: AnnotationBuilder, data, require_fps: bool = False) -> None:
    database = data.get("database") if isinstance(data, dict) else None
    if not isinstance(database, dict):
        raise AnnotationError(f"{builder.path}: field 'database' missing or not an object")
    for vid, entry in database.items():
        if not isinstance(entry, dict):
            raise AnnotationError(f"{builder.where(vid)}: entry is not an object")
        for key in ("subset", "annotations") + (("fps", "duration") if require_fps else ()):
            if key not in entry:
                raise AnnotationError(f"{builder.where(vid, key)}: missing")
        video = builder.add_video(vid, entry["subset"], entry.get("duration"), entry.get("fps"))
        builder.add_segment_list(video, vid, entry["annotations"])
        if "ignore" in entry:
            builder.add_ignore_list(video, vid, entry["ignore"])
