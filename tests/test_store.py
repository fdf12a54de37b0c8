"""The feature-store API on both backends (real zarr 3 directories and real HDF5 files)."""

import math
import pickle
import subprocess
import sys

import numpy as np
import pytest

from features.store import (FeatureStore, Grid, StoreError, VideoInfo, Vocabulary, allowed_row_counts,
                            create_store, open_store)
from features.store.ops import validate

GRID = Grid(fps=30.0, window=16, stride=4, frame_step=4)
PROV = {"encoder": "simulated", "pretrained": "random", "image_size": 224, "preprocess": "none",
        "normalise": "l2-mean-of-l2", "fps": 30.0, "window": 16, "stride": 4, "frame_step": 4}
ODD_IDS = ["plain", "with/slash", "../x", "..", ".", "a b  c", "ünïcødé/视频", "/abs/path", "x\\y", "%2F", "-rf"]


@pytest.fixture(params=[".zarr", ".h5"], ids=["zarr", "hdf5"])
def suffix(request):
    return request.param


def make_info(t, grid=GRID):
    n_target = (t - 1) * grid.stride + grid.window if t else 0
    return VideoInfo(num_rows=t, fps=25.0, duration=n_target / grid.fps, num_frames=int(n_target * 25 / 30),
                     grid=grid)


def rows_for(i, t, dim=16):
    return np.random.default_rng(i).standard_normal((t, dim)).astype(np.float32)


def test_round_trip_rows_info_and_order(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    with create_store(path, dim=16, provenance=PROV) as s:
        assert s.dtype == np.float16 and s.dim == 16
        for i, t in enumerate([5, 0, 17, 1]):
            s.write_video(f"v{i}", rows_for(i, t), make_info(t))
        assert s.read("v2").shape == (17, 16)  # the writer reads what it wrote
    with open_store(path) as s:
        assert s.video_ids() == ["v0", "v1", "v2", "v3"]
        assert len(s) == 4 and "v2" in s and "v9" not in s
        for i, t in enumerate([5, 0, 17, 1]):
            got = s.read(f"v{i}")
            assert got.dtype == np.float16 and got.shape == (t, 16)
            np.testing.assert_array_equal(got, rows_for(i, t).astype(np.float16))
            assert s.info(f"v{i}") == make_info(t)
        assert s.provenance["encoder"] == "simulated" and s.provenance["dtype"] == "float16"
        assert s.provenance["dim"] == 16 and "created" in s.provenance and "stovtal_version" in s.provenance
        assert [v for v, _ in s.iter_videos()] == s.video_ids()
        assert validate(s) == []


def test_float32_on_request_is_exact(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    x = rows_for(0, 9)
    with create_store(path, dim=16, provenance=PROV, dtype="float32") as s:
        s.write_video("a", x, make_info(9))
    with open_store(path) as s:
        assert s.dtype == np.float32
        np.testing.assert_array_equal(s.read("a"), x)


def test_odd_ids_round_trip_and_stay_inside(tmp_path, suffix):
    work = tmp_path / "work"
    work.mkdir()
    path = work / f"s{suffix}"
    with create_store(path, dim=16, provenance=PROV) as s:
        for i, vid in enumerate(ODD_IDS):
            s.write_video(vid, rows_for(i, 3), make_info(3))
        s.add_failure("../../escape", "broken file")
    with open_store(path) as s:
        assert s.video_ids() == ODD_IDS
        for i, vid in enumerate(ODD_IDS):
            np.testing.assert_array_equal(s.read(vid), rows_for(i, 3).astype(np.float16))
        assert s.failures() == {"../../escape": "broken file"}
    # nothing outside the store (the .h5 has a sibling lock file, nothing else)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    assert sorted(p.name for p in work.iterdir()) in ([path.name], [path.name, path.name + ".lock"])


@pytest.mark.parametrize("bad_id", ["", None, 7, "\ud800"])
def test_bad_ids_are_refused(tmp_path, suffix, bad_id):
    with create_store(tmp_path / f"s{suffix}", dim=16, provenance=PROV) as s:
        with pytest.raises(StoreError, match="video id"):
            s.write_video(bad_id, rows_for(0, 2), make_info(2))
        assert len(s) == 0


def test_bad_writes_are_refused_and_change_nothing(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    with create_store(path, dim=16, provenance=PROV) as s:
        s.write_video("ok", rows_for(0, 4), make_info(4))
        cases = [
            (rows_for(1, 4)[:, :8], make_info(4), "shape"),
            (np.zeros(16), make_info(1), "shape"),
            (np.full((4, 16), np.nan), make_info(4), "NaN"),
            (np.full((4, 16), 1e6), make_info(4), "NaN/inf"),  # overflows float16
            (rows_for(1, 4), make_info(5), "num_rows"),
            (rows_for(1, 4), VideoInfo(4, 30.0, 1.0, 30, Grid(30.0, 16, 0)), "grid"),
            (np.array([["a"] * 16]), make_info(1), "numeric"),
        ]
        for rows, info, msg in cases:
            with pytest.raises(StoreError, match=msg) as exc:
                s.write_video("new", rows, info)
            assert "'new'" in str(exc.value) and str(path) in str(exc.value)
        with pytest.raises(StoreError, match="already in the store"):
            s.write_video("ok", rows_for(0, 4), make_info(4))
    with open_store(path) as s:
        assert s.video_ids() == ["ok"] and validate(s) == []


def test_create_and_open_errors(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    with pytest.raises(StoreError, match="no such store"):
        open_store(path)
    create_store(path, dim=4, provenance=PROV).close()
    with pytest.raises(StoreError, match="already exists"):
        create_store(path, dim=4, provenance=PROV)
    with pytest.raises(StoreError, match="dtype"):
        create_store(tmp_path / f"t{suffix}", dim=4, provenance=PROV, dtype="int8")
    with pytest.raises(StoreError, match="unknown store type"):
        create_store(tmp_path / "s.npy", dim=4, provenance=PROV)
    with open_store(path) as s, pytest.raises(StoreError, match="not open for writing"):
        s.write_video("a", np.zeros((1, 4)), make_info(1))
    with open_store(path) as s, pytest.raises(StoreError, match="no video 'zz'"):
        s.read("zz")


def test_not_a_store_gives_clear_error(tmp_path, suffix):
    path = tmp_path / f"junk{suffix}"
    if suffix == ".zarr":
        path.mkdir()
    else:
        path.write_bytes(b"this is not hdf5")
    with pytest.raises(StoreError, match="not a stovtal"):
        open_store(path)


def test_growth_keeps_everything(tmp_path, suffix, monkeypatch):
    """Outgrow every initial capacity several times (zarr resize / HDF5 rebuild paths)."""
    from features.store import backend_hdf5, backend_zarr
    monkeypatch.setattr(backend_hdf5, "INITIAL", {"rows": 16, "videos": 4, "id_bytes": 64, "log_bytes": 64})
    monkeypatch.setattr(backend_zarr, "INDEX_CHUNK", 4)
    monkeypatch.setattr(backend_zarr, "BLOB_CHUNK", 64)
    monkeypatch.setattr(backend_zarr, "ROW_CHUNK_BYTES", 16 * 2 * 8)
    monkeypatch.setattr(backend_zarr, "row_chunk", lambda dim, itemsize: 8)
    path = tmp_path / f"s{suffix}"
    with create_store(path, dim=16, provenance=PROV) as s:
        for i in range(130):
            s.write_video(f"video_{i:05d}_" + "x" * 40, rows_for(i, 1 + i % 13), make_info(1 + i % 13))
            if i % 100 == 0:  # long reasons outgrow the log
                s.add_failure(f"f{i}", "r" * 800)
    with open_store(path) as s:
        assert len(s) == 130
        for i in (0, 1, 77, 129):
            np.testing.assert_array_equal(s.read(f"video_{i:05d}_" + "x" * 40),
                                          rows_for(i, 1 + i % 13).astype(np.float16))
        assert len(s.failures()) == 2 and validate(s) == []
        if suffix == ".zarr":  # the direct chunk-file read path agrees with zarr's own reader
            assert s._b._raw_rows is not None
            for a, b in [(0, 3), (5, 40), (7, 8), (100, s.num_rows)]:
                np.testing.assert_array_equal(s._b.read_rows(a, b), s._b._arrays["rows"][a:b])
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_failures_latest_reason_and_cleared_by_success(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    with create_store(path, dim=16, provenance=PROV) as s:
        s.add_failure("a", "zero-byte file")
        s.add_failure("b", "truncated")
        s.add_failure("a", "still zero-byte")
        s.write_video("b", rows_for(0, 2), make_info(2))
    with open_store(path) as s:
        assert s.failures() == {"a": "still zero-byte"}


def test_vocabularies(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    emb = np.random.default_rng(0).standard_normal((3, 16)) * 5
    with create_store(path, dim=16, provenance=PROV) as s:
        s.add_vocabulary("thumos/14", ["High jump", "Golf swing", "Ski"], emb, template="a video of {}.",
                         provenance={"encoder": "simulated"})
        with pytest.raises(StoreError, match=r"shape \[K, 16\]"):
            s.add_vocabulary("bad", ["a", "b", "c"], np.ones((3, 8)))
        with pytest.raises(StoreError, match="3 embeddings for 2 class names"):
            s.add_vocabulary("bad", ["a", "b"], emb)
        s.add_vocabulary("v2", ["x"], np.ones((1, 16)))
        s.add_vocabulary("v2", ["y"], -np.ones((1, 16)))  # same name replaces
    with open_store(path) as s:
        assert s.vocabulary_names() == ["thumos/14", "v2"]
        v = s.vocabulary("thumos/14")
        assert isinstance(v, Vocabulary) and v.classes == ["High jump", "Golf swing", "Ski"]
        assert v.embeddings.dtype == np.float32 and v.template == "a video of {}."
        np.testing.assert_allclose(np.linalg.norm(v.embeddings, axis=1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(v.embeddings, emb / np.linalg.norm(emb, axis=1, keepdims=True), rtol=1e-6)
        assert s.vocabulary("v2").classes == ["y"]
        with pytest.raises(StoreError, match="no vocabulary 'nope'"):
            s.vocabulary("nope")


_HOLD_WRITER = """
import sys, time
from features.store import open_store
s = open_store(sys.argv[1], "a")
print("open", flush=True)
time.sleep(60)
"""


def test_single_writer_lock_released_when_writer_dies(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    create_store(path, dim=4, provenance=PROV).close()
    child = subprocess.Popen([sys.executable, "-c", _HOLD_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "open"
        with pytest.raises(StoreError, match="already open for writing by another process"):
            open_store(path, "a")
        with open_store(path) as r:  # readers are never blocked
            assert len(r) == 0
    finally:
        child.kill()
        child.wait()
    open_store(path, "a").close()  # the kernel dropped the dead writer's lock


def test_reader_sees_only_committed_videos_and_refresh(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    w = create_store(path, dim=16, provenance=PROV)
    w.write_video("a", rows_for(0, 3), make_info(3))
    r = open_store(path)
    w.write_video("b", rows_for(1, 3), make_info(3))
    assert r.video_ids() == ["a"]
    r.refresh()
    assert r.video_ids() == ["a", "b"]
    np.testing.assert_array_equal(r.read("b"), rows_for(1, 3).astype(np.float16))
    w.close()
    r.close()


def test_pickle_reopens_read_only(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    with create_store(path, dim=16, provenance=PROV) as w:
        w.write_video("a", rows_for(0, 3), make_info(3))
        with pytest.raises(StoreError, match="cannot be sent"):
            pickle.dumps(w)
    with open_store(path) as s:
        clone = pickle.loads(pickle.dumps(s))
        assert isinstance(clone, FeatureStore) and clone.mode == "r"
        np.testing.assert_array_equal(clone.read("a"), s.read("a"))
        clone.close()


def test_iter_videos_subset_in_store_order(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    with create_store(path, dim=16, provenance=PROV) as s:
        for i in range(20):
            s.write_video(f"v{i}", rows_for(i, i % 5), make_info(i % 5))
    with open_store(path) as s:
        got = list(s.iter_videos(["v7", "v3", "v4", "v19"]))
        assert [v for v, _ in got] == ["v3", "v4", "v7", "v19"]
        for v, rows in got:
            np.testing.assert_array_equal(rows, s.read(v))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_reads_into_preallocated_buffers(tmp_path, suffix, dtype, monkeypatch):
    import features.store.core as core

    monkeypatch.setattr(core, "SCAN_BLOCK_BYTES", 16 * 16 * 2 * 3)  # blocks of a few rows: videos span blocks
    path = tmp_path / f"s{suffix}"
    lengths = [5, 0, 17, 1, 40]
    with create_store(path, dim=16, provenance=PROV, dtype=dtype) as s:
        for i, t in enumerate(lengths):
            s.write_video(f"v{i}", rows_for(i, t), make_info(t))
    with open_store(path) as s:
        whole = s.read_all()
        assert whole.dtype == np.dtype(dtype) and whole.shape == (sum(lengths), 16)
        buffer = np.full((sum(lengths), 16), np.nan, np.float32)
        assert s.read_all(out=buffer) is buffer
        for i, t in enumerate(lengths):
            a, b = s.row_span(f"v{i}")
            stored = rows_for(i, t).astype(dtype)
            np.testing.assert_array_equal(whole[a:b], stored)
            np.testing.assert_array_equal(buffer[a:b], stored.astype(np.float32))  # converted while read
            one = np.empty((t, 16), np.float32)
            assert s.read(f"v{i}", out=one) is one
            np.testing.assert_array_equal(one, stored.astype(np.float32))
        with pytest.raises(StoreError, match=r"video 'v0': out must be a float array of shape \[5, 16\]"):
            s.read("v0", out=np.empty((4, 16), np.float32))
        with pytest.raises(StoreError, match="all rows: out must be a float array"):
            s.read_all(out=np.empty((sum(lengths), 16), np.int32))


def test_grid_centers_and_row_rule():
    g = Grid(fps=30.0, window=16, stride=4, frame_step=4)
    np.testing.assert_allclose(g.centers(3), [8 / 30, 12 / 30, 16 / 30])
    assert Grid.from_dict(g.to_dict()) == g
    assert g.num_snippets(15) == 0 and g.num_snippets(16) == 1 and g.num_snippets(20) == 2
    info = VideoInfo(num_rows=2, fps=30.0, duration=20 / 30, num_frames=20, grid=g)
    assert 2 in allowed_row_counts(info)
    assert allowed_row_counts(VideoInfo(2, math.nan, 1.0, -1, g)) is None
    assert 50 not in allowed_row_counts(info)
