"""The official THUMOS14 temporal annotations: a directory of ``<Class>_<val|test>.txt`` files.

Each line is ``video_name start end`` in seconds.  ``Ambiguous`` marks stretches that are neither counted
nor penalised by the THUMOS evaluator; it is dropped by default.  A video exists only through its lines, so
a video whose only lines are Ambiguous (video_test_0001292) is absent.  Durations are unknown (nan).
"""

from __future__ import annotations

import re

from tal.data.annotation_types import AnnotationBuilder, AnnotationError

FILE_RE = re.compile(r"^(?P<label>[A-Za-z0-9]+)_(?P<subset>val|test|validation|train)\.txt$")
AMBIGUOUS = "Ambiguous"


def read(builder: AnnotationBuilder, keep_ambiguous: bool = False) -> None:
    files = sorted(p for p in builder.path.iterdir() if FILE_RE.match(p.name))
    if not files:
        raise AnnotationError(f"{builder.path}: no '<Class>_<val|test>.txt' annotation files")
    counts: dict[str, int] = {}
    for path in files:
        match = FILE_RE.match(path.name)
        label, subset = match["label"], match["subset"]
        if label == AMBIGUOUS and not keep_ambiguous:
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3:
                raise AnnotationError(f"{path}: line {lineno}: expected 'video start end', got {line.strip()!r}")
            vid = parts[0]
            video = builder.add_video(vid, subset, None)
            counts[vid] = counts.get(vid, 0) + 1
            builder.add_segment(video, parts[1:], label, index=counts[vid] - 1)
