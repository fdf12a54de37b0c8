"""Seconds <-> grid units (feature-row index), as ActionFormer converts them.

Row ``i`` of a store is the snippet centred at ``(i*stride + window/2)/fps`` seconds, so a time ``t`` maps to the
fractional row ``t*fps/stride - 0.5*window/stride``. That map is affine; resizing a video's rows to a fixed length
(ActivityNet style) composes it with another affine map, so one small class covers both cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GridMap:
    """``grid = scale * seconds + offset``; back to seconds is clamped to ``[0, duration]``."""

    scale: float  # grid units per second
    offset: float  # grid units at t = 0
    duration: float  # seconds (the clamp for the inverse)

    @classmethod
    def from_grid(cls, grid, duration: float) -> "GridMap":
        """The native map of a store grid (anything with fps, window, stride)."""
        if grid.fps <= 0 or grid.stride <= 0:
            raise ValueError(f"grid needs fps > 0 and stride > 0, got fps={grid.fps} stride={grid.stride}")
        return cls(grid.fps / grid.stride, -0.5 * grid.window / grid.stride, float(duration))

    def resized(self, num_rows: int, new_len: int) -> "GridMap":
        """The map after linearly interpolating ``num_rows`` rows to ``new_len`` (align_corners=False).

        Interpolation puts new row j at old position ``(j + 0.5) * num_rows/new_len - 0.5``; inverting that gives
        ``new = (old + 0.5) * new_len/num_rows - 0.5``.
        """
        r = new_len / num_rows
        return GridMap(self.scale * r, (self.offset + 0.5) * r - 0.5, self.duration)

    def to_grid(self, seconds) -> np.ndarray:
        return np.asarray(seconds, dtype=np.float64) * self.scale + self.offset

    def to_seconds(self, grid_units) -> np.ndarray:
        t = (np.asarray(grid_units, dtype=np.float64) - self.offset) / self.scale
        return np.clip(t, 0.0, self.duration)


def seconds_to_grid(seconds, grid, duration: float = float("inf")) -> np.ndarray:
    """``t*fps/stride - 0.5*window/stride`` for a store ``Grid``."""
    return GridMap.from_grid(grid, duration).to_grid(seconds)


def grid_to_seconds(grid_units, grid, duration: float) -> np.ndarray:
    """``(g*stride + 0.5*window)/fps`` clamped to ``[0, duration]``."""
    return GridMap.from_grid(grid, duration).to_seconds(grid_units)
