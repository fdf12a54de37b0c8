"""The snippet grid and frame timestamps, checked against decord's own timestamps on real videos."""

import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.decode import (DecodeError, VideoSource, nearest_frames, num_snippets, num_target_frames,
                             plan_snippets, window_offsets)
from features.store import Grid
from conftest import videos_named

GRID = Grid(fps=30.0, window=16, stride=4, frame_step=4)


def decord_reader(path):
    import decord
    return decord.VideoReader(str(path), ctx=decord.cpu(0))


@pytest.mark.parametrize("duration, fps, expected", [
    (0.0, 30.0, 0), (1.0, 30.0, 30), (1.0 + 1e-9, 30.0, 30), (1.01, 30.0, 31), (0.5, 25.0, 13), (16 / 30, 30.0, 16),
])
def test_num_target_frames(duration, fps, expected):
    assert num_target_frames(duration, fps) == expected


@pytest.mark.parametrize("n_target, expected", [(15, 0), (16, 1), (19, 1), (20, 2), (100, 22)])
def test_num_snippets_formula(n_target, expected):
    assert num_snippets(n_target, window=16, stride=4) == expected
    assert GRID.num_snippets(n_target) == expected  # the store's validator agrees


def test_window_offsets():
    assert window_offsets(16, 4).tolist() == [0, 4, 8, 12]
    assert window_offsets(16, 5).tolist() == [0, 5, 10, 15]
    assert window_offsets(8, 1).tolist() == list(range(8))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=40),
       st.lists(st.floats(-5, 110, allow_nan=False), min_size=1, max_size=40))
def test_nearest_frames_is_nearest(stamps, times):
    ts = np.sort(np.asarray(stamps))
    got = nearest_frames(ts, np.asarray(times))
    brute = np.abs(ts[None, :] - np.asarray(times)[:, None])
    assert np.allclose(brute[np.arange(len(times)), got], brute.min(axis=1))


def test_short_video_is_an_error():
    ts = np.arange(10) / 30.0
    with pytest.raises(DecodeError, match="shorter than one window"):
        plan_snippets(ts, 10 / 30.0, GRID)


def _check_plan_against_decord(path, grid):
    source = VideoSource(path)
    plan = plan_snippets(source.timestamps, source.duration, grid)
    vr = decord_reader(path)
    stamps = np.asarray(vr.get_frame_timestamp(np.arange(len(vr))), dtype=np.float64)
    assert source.num_frames == len(vr)
    # Duration is the end time of decord's last frame; the snippet count follows the documented formula.
    assert source.duration == pytest.approx(stamps[-1, 1], abs=1e-6)
    n_target = math.floor(stamps[-1, 1] * grid.fps - 1e-6) + 1
    assert plan.num_snippets == (n_target - grid.window) // grid.stride + 1
    # Every sampled target frame shows the source frame whose decord timestamp is nearest to j / fps.
    times = plan.target_frames / grid.fps
    chosen = plan.source_frames[plan.slots]
    gap = np.abs(stamps[chosen, 0] - times)
    best = np.abs(stamps[None, None, :, 0] - times[..., None]).min(axis=-1)
    assert np.allclose(gap, best, atol=1e-9)
    assert gap.max() <= 0.5 * np.diff(stamps[:, 0]).max() + 1e-6
    # Snippet i starts at i*stride target frames and is centred half a window later.
    centers = grid.centers(plan.num_snippets)
    assert np.allclose(plan.target_frames[:, 0], np.arange(plan.num_snippets) * grid.stride)
    assert np.allclose(centers - plan.target_frames[:, 0] / grid.fps, grid.window / 2 / grid.fps)
    # ...and its sampled frames' decord timestamps lie inside its window (up to half a source frame).
    half = 0.5 * np.diff(stamps[:, 0]).max() + 1e-6
    first_t, last_t = stamps[chosen[:, 0], 0], stamps[chosen[:, -1], 0]
    assert np.all(first_t >= centers - grid.window / 2 / grid.fps - half)
    assert np.all(last_t < centers + grid.window / 2 / grid.fps + half)
    # Each needed source frame appears once, and the decoded pixels are decord's own frames.
    assert np.all(np.diff(plan.source_frames) > 0)
    pick = plan.source_frames[[0, len(plan.source_frames) // 2, -1]]
    assert np.array_equal(source.decode(pick), vr.get_batch(pick.tolist()).asnumpy())
    return source, plan


def test_grid_matches_decord_timestamps(real_videos):
    for path in real_videos:
        if os.path.getsize(path) > 1_500_000:  # the two biggest files add time, not coverage
            continue
        _check_plan_against_decord(path, GRID)


def test_low_fps_source_repeats_frames_and_encodes_them_once(real_videos):
    # v_GGSY1Qvo990 is 19.62 fps: several 30 fps target frames share one source frame.
    path = videos_named(real_videos, "v_GGSY1Qvo990")["v_GGSY1Qvo990"]
    source, plan = _check_plan_against_decord(path, Grid(fps=30.0, window=16, stride=4, frame_step=1))
    assert source.fps == pytest.approx(19.62, abs=0.01)
    used = plan.source_frames[plan.slots]
    assert len(plan.source_frames) == len(np.unique(used)) < plan.target_frames.max() + 1


def test_other_target_fps(real_videos):
    path = videos_named(real_videos, "tennis26")["tennis26"]
    _, plan = _check_plan_against_decord(path, Grid(fps=10.0, window=8, stride=2, frame_step=2))
    assert plan.target_frames.shape[1] == 4


@pytest.fixture
def bad_files(tmp_path, real_videos):
    good = videos_named(real_videos, "v_GGSY1Qvo990")["v_GGSY1Qvo990"]
    data = good.read_bytes()
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a video\n")
    # Cut at a third, decord still opens the file and decoding fails; cut at a half, opening fails.
    (tmp_path / "trunc_decode.mp4").write_bytes(data[: len(data) // 3])
    (tmp_path / "trunc_open.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "dir.mp4").mkdir()
    (tmp_path / "broken.mp4").symlink_to(tmp_path / "nowhere.mp4")
    return tmp_path


@pytest.mark.parametrize("name, reason", [
    ("zero.mp4", "empty file"), ("text.mp4", "cannot open"), ("trunc_decode.mp4", "truncated file"),
    ("trunc_open.mp4", "truncated file"),
    ("dir.mp4", "is a directory"), ("broken.mp4", "broken symbolic link"), ("missing.mp4", "file not found"),
])
def test_bad_files_give_one_line_reasons(bad_files, name, reason):
    with pytest.raises(DecodeError, match=reason) as info:
        source = VideoSource(bad_files / name)
        plan = plan_snippets(source.timestamps, source.duration, GRID)
        source.decode(plan.source_frames)
    assert "\n" not in str(info.value)
