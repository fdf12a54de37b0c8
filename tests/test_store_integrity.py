"""Lost or damaged store data is found, never read as zeros: per-video checksums, missing and truncated chunk
files, truncated HDF5 files, and stores written before checksums existed (real zarr 3 and HDF5 stores)."""

import os
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

from features.store import Grid, StoreError, VideoInfo, create_store, open_store
from features.store import core as store_core
from features.store.backend_hdf5 import Hdf5Backend
from features.store.ops import convert, merge, validate
from features.store.records import C
from features.store_cli import main as store_cli

GRID = Grid(fps=30.0, window=16, stride=4, frame_step=4)
PROV = {"encoder": "simulated", "pretrained": "random", "fps": 30.0, "window": 16, "stride": 4, "frame_step": 4}
DIM = 512                      # float16 x 512: zarr chunks of 1024 rows, so videos span chunk boundaries
LENGTHS = [700, 600, 900, 300]  # rows: chunk 0 = v0 + most of v1, chunk 1 = v1's tail + v2, ...


def info(t):
    n = (t - 1) * GRID.stride + GRID.window
    return VideoInfo(num_rows=t, fps=30.0, duration=n / GRID.fps, num_frames=n, grid=GRID)


def rows(i, t):
    return np.random.default_rng(i).standard_normal((t, DIM)).astype(np.float16)


def write(path, lengths=LENGTHS):
    with create_store(path, dim=DIM, provenance=PROV) as s:
        for i, t in enumerate(lengths):
            s.write_video(f"v{i}", rows(i, t), info(t))


def videos_in_chunk(k, chunk=1024, lengths=LENGTHS):
    start, out = 0, []
    for i, t in enumerate(lengths):
        if start < (k + 1) * chunk and start + t > k * chunk:
            out.append(f"v{i}")
        start += t
    return out


def flip_low_bit(path, offset):
    """Damage one byte without making the value non-finite (the lowest mantissa bit of a float16)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 1]))


def cli(*args):
    return CliRunner().invoke(store_cli, [str(a) for a in args])


@pytest.mark.parametrize("suffix", [".zarr", ".h5"], ids=["zarr", "hdf5"])
def test_every_video_carries_a_checksum_that_deep_validation_verifies(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    write(path)
    with open_store(path) as s:
        assert s.has_checksums and s.format == 2
        assert s.checksum("v2") == zlib.crc32(rows(2, 900).astype("<f2").tobytes())
        assert validate(s, deep=True) == []
        np.testing.assert_array_equal(s.read("v1", verify=True), rows(1, 600))
    res = cli("validate", path, "--deep")
    assert res.exit_code == 0 and "OK (4 videos, checksums verified)" in res.output


@pytest.mark.parametrize("suffix", [".zarr", ".h5"], ids=["zarr", "hdf5"])
def test_a_damaged_byte_is_found_by_deep_validation_convert_and_merge(tmp_path, suffix):
    path = tmp_path / f"s{suffix}"
    write(path)
    with open_store(path) as s:
        start, _ = s.row_span("v2")
    if suffix == ".zarr":
        chunk_file, offset = path / "rows" / "c" / "1" / "0", (start + 5 - 1024) * DIM * 2
    else:
        backend = Hdf5Backend(path, writable=False)
        chunk_file, offset = path, backend._offset["rows"] + (start + 5) * DIM * 2
        backend.close()
    flip_low_bit(chunk_file, offset)
    with open_store(path) as s:
        assert s.read("v2").shape == (900, DIM)  # a plain read does not pay for the checksum
        assert validate(s) == []                  # shape, dtype and finite values still look fine
        damaged = zlib.crc32(s.read("v2").astype("<f2").tobytes())
        assert damaged != s.checksum("v2")
        assert validate(s, deep=True) == [f"video 'v2': rows are damaged (crc32 {damaged:08x}, "
                                          f"stored {s.checksum('v2'):08x})"]
        with pytest.raises(StoreError, match=r"video 'v2': rows are damaged"):
            s.read("v2", verify=True)
    res = cli("validate", path, "--deep")
    assert res.exit_code == 1 and "BAD video 'v2': rows are damaged" in res.output and "1 problem(s)" in res.output
    # copies refuse to carry the damage forward under a fresh checksum, and leave nothing behind
    with pytest.raises(StoreError, match="video 'v2': rows are damaged"):
        convert(path, tmp_path / "copy.zarr")
    assert not (tmp_path / "copy.zarr").exists() and not list(tmp_path.glob(".copy*"))
    with pytest.raises(StoreError, match="video 'v2': rows are damaged"):
        merge(tmp_path / "merged.h5", [path])


def test_a_missing_zarr_chunk_file_is_an_error_naming_the_videos_and_the_file(tmp_path):
    path = tmp_path / "s.zarr"
    write(path)
    (path / "rows" / "c" / "1" / "0").unlink()
    lost = videos_in_chunk(1)
    assert lost == ["v1", "v2"]
    with open_store(path) as s:
        np.testing.assert_array_equal(s.read("v0"), rows(0, 700))
        for vid in lost:
            with pytest.raises(StoreError, match=rf"s.zarr: video '{vid}' cannot be read: chunk file rows/c/1/0 "
                                                 r"is missing"):
                s.read(vid)
        with pytest.raises(StoreError, match="video 'v1'"):
            list(s.iter_videos())
        assert validate(s) == [f"video '{vid}': cannot be read: chunk file rows/c/1/0 is missing" for vid in lost]
        assert [(v, r is None) for v, r, _ in s.scan()] == [("v0", False), ("v1", True), ("v2", True),
                                                              ("v3", False)]
    res = cli("validate", path)
    assert res.exit_code == 1 and res.output.count("BAD video") == 2 and "rows/c/1/0 is missing" in res.output
    assert "Traceback" not in res.output
    with open_store(path) as s:  # zarr's own reader (used for layouts other than plain chunks) refuses too
        s._b._raw_rows = None
        np.testing.assert_array_equal(s.read("v3"), rows(3, 300))
        with pytest.raises(StoreError, match="video 'v2' cannot be read: chunk file rows/c/1/0 is missing"):
            s.read("v2")


def test_a_truncated_zarr_chunk_file_is_an_error(tmp_path):
    path = tmp_path / "s.zarr"
    write(path)
    chunk = path / "rows" / "c" / "2" / "0"
    os.truncate(chunk, 1000)
    with open_store(path) as s, pytest.raises(StoreError, match=r"video 'v2' cannot be read: chunk file rows/c/2/0 "
                                                                r"is truncated \(1000 of 1048576 bytes\)"):
        s.read("v2")


def test_a_lost_zarr_metadata_chunk_is_refused_at_open(tmp_path):
    path = tmp_path / "s.zarr"
    write(path)
    (path / "index" / "c" / "0" / "0").unlink()
    with pytest.raises(StoreError, match=r"chunk file index/c/0/0 of the index array is missing"):
        open_store(path)
    write(tmp_path / "t.zarr")
    (tmp_path / "t.zarr" / "commit" / "c" / "0").unlink()  # would read as an empty store
    with pytest.raises(StoreError, match="commit record .* is missing"):
        open_store(tmp_path / "t.zarr")


def test_all_zero_rows_are_stored_not_mistaken_for_lost_data(tmp_path):
    path = tmp_path / "z.zarr"
    with create_store(path, dim=DIM, provenance=PROV) as s:
        s.write_video("zeros", np.zeros((1500, DIM)), info(1500))  # a whole chunk of zeros, then a partial one
        s.write_video("after", rows(1, 10), info(10))
    assert (path / "rows" / "c" / "0" / "0").exists()
    with open_store(path) as s:
        assert not s.read("zeros", verify=True).any() and validate(s, deep=True) == []


def test_a_truncated_hdf5_store_is_refused(tmp_path):
    path = tmp_path / "s.h5"
    write(path)
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(StoreError, match="s.h5: the file is truncated; the store is damaged"):
        open_store(path)


@pytest.mark.parametrize("suffix", [".zarr", ".h5"], ids=["zarr", "hdf5"])
def test_stores_written_before_checksums_still_open_append_and_validate(tmp_path, suffix, monkeypatch):
    """Format 1 (10 index columns, no crc32): written here by the same code paths, as stovtal wrote them before checksums."""
    path = tmp_path / f"old{suffix}"
    monkeypatch.setattr(store_core, "FORMAT_VERSION", 1)
    write(path, LENGTHS[:2])
    monkeypatch.undo()
    with open_store(path, "a") as s:
        assert s.format == 1 and not s.has_checksums and s._index.shape[1] == C["crc32"]
        s.write_video("v9", rows(9, 50), info(50))  # appending keeps the old layout
        assert s.checksum("v9") is None
    with open_store(path) as s:
        np.testing.assert_array_equal(s.read("v9", verify=True), rows(9, 50))
        assert validate(s, deep=True) == []
    res = cli("validate", path, "--deep")
    assert res.exit_code == 0 and "no checksums" in res.output and "3 videos readable" in res.output
    convert(path, tmp_path / f"new{suffix}")  # a copy made now has them
    with open_store(tmp_path / f"new{suffix}") as s:
        assert s.has_checksums and validate(s, deep=True) == [] and s.video_ids() == ["v0", "v1", "v9"]
