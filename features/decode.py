"""Decode a video with decord and sample it on the snippet grid.

Frame-to-time mapping (documented in docs/extract.md):
- The clock is decord's own frame timestamps (presentation start time of each source frame, seconds).
- Target frame j (of the grid's ``fps``) sits at time ``j / fps``; it shows the source frame whose
  timestamp is nearest to that time (ties go to the earlier frame). Nothing is re-encoded: a source
  frame is simply repeated or skipped when the source fps differs from the target fps.
- The video has ``n_target = #{j >= 0 : j / fps < duration}`` target frames, where ``duration`` is the
  end time of the last source frame.
- Snippet i covers target frames ``[i*stride, i*stride + window)`` and is centred at
  ``(i*stride + window/2) / fps`` seconds; it samples the target frames ``i*stride + k*frame_step``
  (k = 0, 1, ... while inside the window).
- ``num_snippets = floor((n_target - window) / stride) + 1``; a video with ``n_target < window`` has no
  complete snippet and is a recorded failure.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from features.errors import StovtalError

# Extensions picked up when a directory is scanned for videos.
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv")


class DecodeError(StovtalError):
    """A video that cannot be used; the message is the one-line reason recorded in the failure log."""


def num_target_frames(duration: float, fps: float) -> int:
    """Number of target frames j with j / fps < duration (a small tolerance absorbs float noise)."""
    if not duration > 0:
        return 0
    return int(math.floor(duration * fps - 1e-6)) + 1


def num_snippets(n_target: int, window: int, stride: int) -> int:
    """Complete windows on the grid: floor((n_target - window) / stride) + 1, or 0 if shorter than one."""
    if n_target < window:
        return 0
    return (n_target - window) // stride + 1


def window_offsets(window: int, frame_step: int) -> np.ndarray:
    """Target-frame offsets sampled inside one window: 0, frame_step, 2*frame_step, ... < window."""
    return np.arange(0, window, frame_step, dtype=np.int64)


def nearest_frames(timestamps: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the source frame whose timestamp is nearest to each time (ties: the earlier frame)."""
    ts = np.asarray(timestamps, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    right = np.clip(np.searchsorted(ts, times, side="left"), 0, len(ts) - 1)
    left = np.clip(right - 1, 0, len(ts) - 1)
    take_left = np.abs(times - ts[left]) <= np.abs(ts[right] - times)
    return np.where(take_left, left, right).astype(np.int64)


@dataclass(frozen=True)
class SnippetPlan:
    """Which source frames one video needs, and how snippets pool them."""

    num_snippets: int
    target_frames: np.ndarray   # [S, F] target-frame indices each snippet samples
    source_frames: np.ndarray   # [U] sorted unique source frames to decode (each decoded/encoded once)
    slots: np.ndarray           # [S, F] row of source_frames used by each sampled target frame
    source_times: np.ndarray    # [U] decord timestamps of source_frames (seconds)


def plan_snippets(timestamps: np.ndarray, duration: float, grid) -> SnippetPlan:
    """Lay the grid (fps, window, stride, frame_step) over a video with these frame timestamps."""
    n_target = num_target_frames(duration, grid.fps)
    n = num_snippets(n_target, grid.window, grid.stride)
    if n == 0:
        raise DecodeError(
            f"shorter than one window: {duration:.3f} s gives {n_target} target frames at "
            f"{grid.fps:g} fps, a window needs {grid.window}")
    starts = np.arange(n, dtype=np.int64) * grid.stride
    target = starts[:, None] + window_offsets(grid.window, grid.frame_step)[None, :]
    # Source frame for every target frame used, then the unique set: overlapping windows share frames,
    # and several target frames share one source frame when the source fps is below the target fps.
    source_of_target = nearest_frames(timestamps, target.ravel() / grid.fps)
    unique, slots = np.unique(source_of_target, return_inverse=True)
    return SnippetPlan(
        num_snippets=n,
        target_frames=target,
        source_frames=unique,
        slots=slots.reshape(target.shape),
        source_times=np.asarray(timestamps, dtype=np.float64)[unique],
    )


def _check_path(path: Path) -> None:
    """Turn the usual unusable-path cases into a readable reason before decord sees them."""
    if path.is_symlink() and not path.exists():
        raise DecodeError(f"broken symbolic link (points to {os.readlink(path)})")
    if not path.exists():
        raise DecodeError("file not found")
    if path.is_dir():
        raise DecodeError("is a directory, not a video file")
    if not path.is_file():
        raise DecodeError("not a regular file")
    if not os.access(path, os.R_OK):
        raise DecodeError("permission denied")
    if path.stat().st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    if path.suffix.lower() in (".mp4", ".m4v", ".mov"):
        _check_bmff_complete(path)


# Top-level ISO-BMFF (mp4/mov) boxes a well-formed file can start with.
_BMFF_FIRST_BOXES = {b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pdin", b"styp", b"sidx", b"moof"}


def _check_bmff_complete(path: Path) -> None:
    """An mp4/mov whose last top-level box runs past the end of the file is truncated.

    decord cannot tell: depending on where the cut falls it fails to open, or it opens the readable
    prefix as a shorter video and may even decode the frames we ask for. Walking the top-level boxes
    (a few seeks) catches every cut."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        pos, first = 0, True
        while pos < size:
            f.seek(pos)
            head = f.read(16)
            if first and (len(head) < 8 or head[4:8] not in _BMFF_FIRST_BOXES):
                return  # not an ISO-BMFF file after all: decord will say what it is
            if len(head) < 8:
                raise DecodeError(f"truncated file: {size} bytes end inside a box header at byte {pos}")
            box_size, box_type = int.from_bytes(head[:4], "big"), head[4:8]
            first = False
            if box_size == 1:   # 64-bit size follows the type
                if len(head) < 16:
                    raise DecodeError(f"truncated file: {size} bytes end inside a box header at byte {pos}")
                box_size = int.from_bytes(head[8:16], "big")
            elif box_size == 0:  # box runs to the end of the file
                return
            if box_size < 8:
                raise DecodeError(f"corrupt mp4: box {box_type!r} at byte {pos} has size {box_size}")
            if pos + box_size > size:
                name = box_type.decode("latin-1")
                raise DecodeError(f"truncated file: box '{name}' at byte {pos} needs {box_size} bytes, "
                                  f"the file ends {pos + box_size - size} bytes short")
            pos += box_size


def _decord_reason(exc: Exception) -> str:
    """decord's messages carry C++ source locations and a stack dump; keep the one useful line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", text)   # "[03:37:13] src/x.cc:292: "
    return text.removeprefix("Error:").strip()


class VideoSource:
    """One video opened with decord: metadata, frame timestamps, and frame decoding."""

    def __init__(self, path, num_threads: int = 0):
        import decord  # imported here: decord is slow to import and only the decode worker needs it

        self.path = Path(path)
        _check_path(self.path)
        try:
            self._reader = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=num_threads)
            self.num_frames = len(self._reader)
        except Exception as exc:  # decord raises RuntimeError or DECORDError with a C++ trace
            raise DecodeError(
                f"cannot open as a video (truncated or corrupt file? decord: {_decord_reason(exc)})") from None
        if self.num_frames < 1:
            raise DecodeError("video has no frames")
        avg = float(self._reader.get_avg_fps())
        self.fps = avg if math.isfinite(avg) and avg > 0 else float("nan")
        self.timestamps, self.duration = self._read_timestamps()

    def _read_timestamps(self) -> tuple[np.ndarray, float]:
        """decord's per-frame [start, end] times; fall back to k / avg_fps if the container has none."""
        try:
            ts = np.asarray(self._reader.get_frame_timestamp(np.arange(self.num_frames)), dtype=np.float64)
        except Exception as exc:
            raise DecodeError(f"cannot read frame timestamps (decord: {_decord_reason(exc)})") from None
        starts, ends = ts[:, 0], ts[:, 1]
        usable = (np.all(np.isfinite(ts)) and np.all(np.diff(starts) >= 0)
                  and (self.num_frames == 1 or starts[-1] > starts[0]))
        if not usable:
            if not self.fps > 0:
                raise DecodeError("no usable frame timestamps and no frame rate")
            starts = np.arange(self.num_frames, dtype=np.float64) / self.fps
            return starts, self.num_frames / self.fps
        duration = float(ends[-1])
        if not duration > starts[-1]:
            step = 1.0 / self.fps if self.fps > 0 else float(np.median(np.diff(starts)))
            duration = float(starts[-1] + step)
        return starts, duration

    def decode(self, indices: np.ndarray) -> np.ndarray:
        """RGB uint8 frames [K, H, W, 3] for these source frame indices (sorted ascending)."""
        try:
            return self._reader.get_batch(np.asarray(indices, dtype=np.int64).tolist()).asnumpy()
        except Exception as exc:
            raise DecodeError(
                f"decoding failed in source frames {int(indices[0])}-{int(indices[-1])} "
                f"(truncated or corrupt file? decord: {_decord_reason(exc)})") from None

    def close(self) -> None:
        self._reader = None
