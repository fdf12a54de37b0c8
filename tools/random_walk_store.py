"""Feature stores of smooth random walks, for benchmarks whose speed and memory depend on video lengths and D,
not on what the rows mean. (A helper of tools/bench_*.py; not a benchmark itself.)"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from features.store import Grid, VideoInfo, create_store  # noqa: E402

GRID = Grid(fps=30.0, window=16, stride=4, frame_step=4)
PROVENANCE = {"encoder": "simulated", "pretrained": "random", "image_size": None, "preprocess": "none",
              "normalise": "l2", "fps": 30.0, "window": 16, "stride": 4, "frame_step": 4, "simulated": True}


def rows_for(duration: float, grid: Grid = GRID) -> int:
    """Snippets of a video of ``duration`` seconds on ``grid`` (README: T = floor((n - window) / stride) + 1)."""
    return max(int((round(duration * grid.fps) - grid.window) // grid.stride) + 1, 1)


def duration_for(num_rows: int, grid: Grid = GRID) -> float:
    return ((num_rows - 1) * grid.stride + grid.window) / grid.fps


def write_random_walk_store(path: Path, lengths, dim: int, seed: int, ids=None, durations=None,
                            batch: int = 500) -> Path:
    """One video per length: L2-normalised smooth random walks, ids ``v0000000``... unless given."""
    rng = np.random.default_rng(seed)
    with create_store(path, dim=dim, provenance=PROVENANCE) as store:
        pending = []
        for i, t in enumerate(int(n) for n in lengths):
            x = np.cumsum(rng.normal(size=(t, dim)).astype(np.float32), axis=0) * 0.1 + rng.normal(size=dim)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            duration = duration_for(t) if durations is None else float(durations[i])
            info = VideoInfo(num_rows=t, fps=GRID.fps, duration=duration, num_frames=-1, grid=GRID)
            pending.append((f"v{i:07d}" if ids is None else ids[i], x, info))
            if len(pending) == batch:
                store.write_videos(pending)
                pending = []
        store.write_videos(pending)
    return path
