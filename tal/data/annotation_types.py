"""The canonical annotation types and the validation rules every format reader shares.

One in-memory form for every dataset: per video its subset, duration (seconds, ``nan`` when the file does
not give it), fps when known, and segments in seconds with string labels.

Validation rules (shared by every reader, see :class:`AnnotationBuilder`):
- negative times and ``end < start`` are errors;
- zero-length segments (``end == start``) are kept and counted in a warning, because the official
  ActivityNet-1.3 ground truth holds three of them and the official evaluator counts them as positives that
  only a zero-length detection matches (its tIoU is 0/0); ``strict=True`` turns them into errors;
- segments past the video's end are clipped to the duration (``clip=True``, the default) and counted in one
  warning; segments that start after the stated end are kept as given (clipping would erase them, and the
  stated duration is as likely wrong, e.g. THUMOS14 video_test_0000270) and counted in another;
- subset names are canonicalised to ``training`` / ``validation`` / ``testing``; anything else is an error.
"""

from __future__ import annotations

import gc
import gzip
import json
import math
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from features.errors import StovtalError

SUBSETS = ("training", "validation", "testing")
_SUBSET_ALIASES = {
    "training": "training", "train": "training",
    "validation": "validation", "val": "validation", "valid": "validation",
    "testing": "testing", "test": "testing",
}


class AnnotationError(StovtalError, ValueError):
    """A bad annotation file; the message is one line naming the file and the video/field at fault."""


class AnnotationWarning(UserWarning):
    """Recoverable oddities in an annotation file (clipped or zero-length segments)."""


@dataclass
class Segment:
    start: float
    end: float
    label: str
    score: float | None = None
    pseudo: bool = False

    @property
    def length(self) -> float:
        return self.end - self.start


@dataclass
class VideoAnnotation:
    video_id: str
    subset: str
    duration: float
    fps: float | None
    segments: list[Segment]
    # Regions whose labels are unknown (pseudo-labels: proposals stage 1 was unsure of): (start, end, score);
    # training neither rewards nor penalises detections there.
    ignore: list[tuple[float, float, float]] = field(default_factory=list)


@dataclass
class AnnotationSet:
    videos: dict[str, VideoAnnotation]
    provenance: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return sorted({s.label for v in self.videos.values() for s in v.segments})

    @property
    def num_segments(self) -> int:
        return sum(len(v.segments) for v in self.videos.values())

    def subset(self, name: str) -> "AnnotationSet":
        wanted = canonical_subset(name, where="subset()")
        return AnnotationSet({k: v for k, v in self.videos.items() if v.subset == wanted}, dict(self.provenance))

    def restrict_classes(self, labels) -> "AnnotationSet":
        keep = set(labels)
        videos = {
            k: VideoAnnotation(v.video_id, v.subset, v.duration, v.fps, [s for s in v.segments if s.label in keep],
                               list(v.ignore))
            for k, v in self.videos.items()
        }
        return AnnotationSet(videos, dict(self.provenance))

    def restrict_videos(self, video_ids) -> "AnnotationSet":
        keep = set(video_ids)
        return AnnotationSet({k: v for k, v in self.videos.items() if k in keep}, dict(self.provenance))


def canonical_subset(name, where: str) -> str:
    key = str(name).strip().lower()
    if key not in _SUBSET_ALIASES:
        raise AnnotationError(f"{where}: unknown subset {name!r} (expected one of {', '.join(SUBSETS)})")
    return _SUBSET_ALIASES[key]


@contextmanager
def paused_gc():
    """Pause the cyclic garbage collector while building many small objects that hold no cycles.

    A results file is ~10^6 dicts, lists and floats: the collector's repeated passes over them while they are
    being created cost several times the parsing itself. Reference counting still frees everything."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_json(path: Path):
    """Parse a JSON file, plain or gzip-compressed, with a one-line error carrying the line and column of a
    syntax error.

    orjson parses; a document it refuses (NaN literals, integers beyond 64 bits, any syntax error) is parsed
    again by the standard library, so what is accepted and what an error says are exactly json's."""
    try:
        raw = Path(path).read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise AnnotationError(f"{path}: cannot read ({reason})") from None
    with paused_gc():
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        try:
            return json.loads(raw.decode("utf-8"))
        except json.JSONDecodeError as exc:
            raise AnnotationError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        except UnicodeDecodeError as exc:
            raise AnnotationError(f"{path}: not UTF-8 text ({exc.reason})") from None


def to_float(value, where: str) -> float:
    """Parse a number (some files store times as strings); reject bools, None and non-finite values."""
    if isinstance(value, bool) or value is None:
        raise AnnotationError(f"{where}: expected a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise AnnotationError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(out):
        raise AnnotationError(f"{where}: expected a finite number, got {value!r}")
    return out


class AnnotationBuilder:
    """Collects videos for one file, applying the shared validation rules and counting warnings."""

    def __init__(self, path: Path, strict: bool = False, clip: bool = True, subset: str | None = None):
        self.path = Path(path)
        self.wanted_subset = subset
        self.strict = strict
        self.clip = clip
        self.videos: dict[str, VideoAnnotation] = {}
        self.clipped = 0
        self.past_end = 0
        self.beyond_end = 0
        self.zero_length = 0

    def where(self, video_id: str, field_name: str | None = None) -> str:
        return f"{self.path}: video {video_id!r}" + (f" field {field_name!r}" if field_name else "")

    def add_video(self, video_id: str, subset, duration, fps=None) -> VideoAnnotation | None:
        """Register a video; None when it belongs to a subset that was not asked for (its segments are
        then skipped, so warnings count only the requested subset)."""
        video_id = str(video_id)
        subset = canonical_subset(subset, self.where(video_id, "subset"))
        if self.wanted_subset is not None and subset != self.wanted_subset:
            return None
        dur = math.nan if duration is None else to_float(duration, self.where(video_id, "duration"))
        if dur < 0:
            raise AnnotationError(f"{self.where(video_id, 'duration')}: negative duration {dur}")
        fps_value = None if fps is None else to_float(fps, self.where(video_id, "fps"))
        video = self.videos.get(video_id)
        if video is None:
            video = self.videos[video_id] = VideoAnnotation(video_id, subset, dur, fps_value, [])
        elif video.subset != subset:
            raise AnnotationError(f"{self.where(video_id, 'subset')}: listed in both {video.subset} and {subset}")
        return video

    def add_segment(self, video: VideoAnnotation | None, segment, label, score=None, pseudo=False, index=0) -> None:
        if video is None:
            return
        where = self.where(video.video_id, f"annotations[{index}]")
        if not isinstance(segment, (list, tuple)) or len(segment) != 2:
            raise AnnotationError(f"{where}: 'segment' must be [start, end], got {segment!r}")
        if not isinstance(label, str) or not label:
            raise AnnotationError(f"{where}: 'label' must be a non-empty string, got {label!r}")
        start, end = to_float(segment[0], where + " segment"), to_float(segment[1], where + " segment")
        if start < 0 or end < 0:
            raise AnnotationError(f"{where}: negative time in segment [{start}, {end}]")
        if end < start or (self.strict and end == start):
            raise AnnotationError(f"{where}: segment end {end} <= start {start}")
        if math.isfinite(video.duration) and end > video.duration:
            if start >= video.duration:
                self.beyond_end += 1  # clipping would erase it; the stated duration is as likely wrong
            elif self.clip:
                end = video.duration
                self.clipped += 1
            else:
                self.past_end += 1
        if end == start:
            self.zero_length += 1
        score_value = None if score is None else to_float(score, where + " score")
        video.segments.append(Segment(start, end, label, score_value, bool(pseudo)))

    def add_segment_list(self, video: VideoAnnotation | None, video_id: str, annotations) -> None:
        """The JSON formats' ``annotations: [{segment, label, score?, pseudo?}, ...]`` of one video."""
        if not isinstance(annotations, list):
            raise AnnotationError(f"{self.where(video_id, 'annotations')}: expected a list")
        for i, ann in enumerate(annotations):
            if not isinstance(ann, dict) or "segment" not in ann or "label" not in ann:
                raise AnnotationError(f"{self.where(video_id, f'annotations[{i}]')}: needs 'segment' and 'label'")
            self.add_segment(video, ann["segment"], ann["label"], ann.get("score"), ann.get("pseudo", False), i)

    def add_ignore_list(self, video: VideoAnnotation | None, video_id: str, regions) -> None:
        """A pseudo-label file's ``ignore: [[start, end, score], ...]`` of one video."""
        if video is None:
            return
        if not isinstance(regions, list):
            raise AnnotationError(f"{self.where(video_id, 'ignore')}: expected a list of [start, end, score]")
        for i, r in enumerate(regions):
            where = self.where(video_id, f"ignore[{i}]")
            if not isinstance(r, (list, tuple)) or len(r) != 3:
                raise AnnotationError(f"{where}: expected [start, end, score], got {r!r}")
            start, end, score = (to_float(v, where) for v in r)
            if start < 0 or end < start:
                raise AnnotationError(f"{where}: bad region [{start}, {end}]")
            video.ignore.append((start, end, score))

    def finish(self, fmt: str, provenance: dict | None = None) -> AnnotationSet:
        if self.clipped:
            warnings.warn(f"{self.path}: clipped {self.clipped} segment(s) that ran past the video's end",
                          AnnotationWarning, stacklevel=3)
        if self.past_end:
            warnings.warn(f"{self.path}: {self.past_end} segment(s) run past the video's end (kept as given)",
                          AnnotationWarning, stacklevel=3)
        if self.beyond_end:
            warnings.warn(f"{self.path}: {self.beyond_end} segment(s) start after the stated video end (kept as given)",
                          AnnotationWarning, stacklevel=3)
        if self.zero_length:
            warnings.warn(f"{self.path}: kept {self.zero_length} zero-length segment(s) "
                          "(only zero-length detections match them)", AnnotationWarning, stacklevel=3)
        prov = {"source": str(self.path), "format": fmt, **(provenance or {})}
        return AnnotationSet(self.videos, prov)
