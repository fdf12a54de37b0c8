"""Plain value types shared by every feature-store backend."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from features.errors import StovtalError


class StoreError(StovtalError):
    """A one-line problem with a store, naming the store path and the video/field at fault."""


class RowsUnreadable(StoreError):
    """Row data that is gone or cut short on disk (a missing or truncated chunk file, a truncated HDF5 file).

    Raised by a backend with what is wrong (e.g. ``chunk file rows/c/3/0 is missing``) and the rows
    ``[start, stop)`` it could not read; the store adds its path and the video."""

    def __init__(self, message: str, start: int, stop: int):
        super().__init__(message)
        self.start, self.stop = start, stop


@dataclass(frozen=True)
class Grid:
    """The snippet grid a video was sampled on (all counts in target frames)."""

    fps: float
    window: int
    stride: int
    frame_step: int = 1

    def centers(self, n: int) -> np.ndarray:
        """Centre time in seconds of each of ``n`` snippets: (i*stride + window/2)/fps."""
        return (np.arange(n, dtype=np.float64) * self.stride + self.window / 2.0) / self.fps

    def num_snippets(self, n_target_frames: int) -> int:
        """How many whole windows fit in ``n_target_frames`` target frames."""
        return max(0, (int(n_target_frames) - self.window) // self.stride + 1)

    def to_dict(self) -> dict:
        return {"fps": float(self.fps), "window": int(self.window), "stride": int(self.stride),
                "frame_step": int(self.frame_step)}

    @classmethod
    def from_dict(cls, d: dict) -> "Grid":
        return cls(fps=float(d["fps"]), window=int(d["window"]), stride=int(d["stride"]),
                   frame_step=int(d.get("frame_step", 1)))


@dataclass(frozen=True)
class VideoInfo:
    num_rows: int       # T
    fps: float          # source video fps (nan if unknown)
    duration: float     # seconds
    num_frames: int     # source frames (-1 if unknown)
    grid: Grid

    def _key(self) -> tuple:
        # an unknown (NaN) fps or duration equals itself, so stored and copied infos compare equal
        nan_free = [None if isinstance(x, float) and math.isnan(x) else x for x in (self.fps, self.duration)]
        return (self.num_rows, *nan_free, self.num_frames, self.grid)

    def __eq__(self, other):
        return isinstance(other, VideoInfo) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())


@dataclass(frozen=True)
class Vocabulary:
    name: str
    classes: list[str]
    embeddings: np.ndarray          # [K, D] float32
    template: str | None = None
    provenance: dict = field(default_factory=dict)


def allowed_row_counts(info: VideoInfo) -> set[int] | None:
    """Row counts consistent with a video's grid, or None when the source length is unknown.

    The number of target frames is duration * grid.fps; extractors differ on whether the last partial
    frame counts (floor / round / ceil), so each of those is accepted. Imported features carry no source
    frame count (num_frames == -1) and are not checked.
    """
    if info.num_frames < 0 or not math.isfinite(info.duration) or info.duration < 0:
        return None
    n = info.duration * info.grid.fps
    candidates = {math.floor(n + 1e-6), round(n), math.ceil(n - 1e-6)}
    return {info.grid.num_snippets(c) for c in candidates}
