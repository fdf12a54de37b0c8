"""HDF5 backend: one file whose datasets are contiguous and allocated up front.

HDF5 cannot update its own metadata crash-safely, so the live file's structure never changes:
the library only creates files; all data goes in and out with pread/pwrite at each dataset's byte
offset (valid for contiguous, unfiltered datasets). A commit is one 32-byte pwrite. When a dataset is
full, a bigger file is built beside the store, the committed bytes are copied, and it replaces the
store with os.replace — amortised O(1) per row by doubling; a killed writer leaves the old file.
(The guarantee is against the writer dying; like the zarr backend, nothing is fsync'ed, so surviving
a power cut is up to the filesystem.)
"""

from __future__ import annotations

import json
import mmap
import os
import uuid
from pathlib import Path

import h5py
import numpy as np

from .model import RowsUnreadable, StoreError
from .records import COMMIT_KEYS, index_width

DATASETS = {  # name -> (capacity key, dtype, trailing shape given the header)
    "rows": ("rows", None),
    "index": ("videos", "<f8"),
    "ids": ("id_bytes", "u1"),
    "log": ("log_bytes", "u1"),
}
INITIAL = {"rows": 4096, "videos": 1024, "id_bytes": 1 << 16, "log_bytes": 1 << 16}
COPY_BLOCK = 64 << 20


def _dataset_layout(header: dict, name: str):
    if name == "rows":
        return np.dtype(header["dtype"]).newbyteorder("<"), (header["dim"],)
    if name == "index":
        return np.dtype("<f8"), (index_width(header["format"]),)
    return np.dtype("u1"), ()


def _build(path: Path, header: dict, caps: dict) -> None:
    """Create an HDF5 file with contiguous, early-allocated, never-filled datasets (holes until written)."""
    with h5py.File(path, "w", locking=False) as f:
        f.attrs["stovtal"] = json.dumps(header)
        for name, (key, _) in DATASETS.items():
            dtype, tail = _dataset_layout(header, name)
            _contiguous(f, name, (caps[key],) + tail, dtype)
        _contiguous(f, "commit", (len(COMMIT_KEYS),), np.dtype("<i8"))
    with h5py.File(path, "r", locking=False) as f:
        off = f["commit"].id.get_offset()
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, np.zeros(len(COMMIT_KEYS), "<i8").tobytes(), off)
    finally:
        os.close(fd)


def _contiguous(f: h5py.File, name: str, shape: tuple, dtype: np.dtype) -> None:
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    dcpl.set_obj_track_times(False)
    space = h5py.h5s.create_simple(shape)
    h5py.h5d.create(f.id, name.encode(), h5py.h5t.py_create(dtype), space, dcpl=dcpl).close()


class Hdf5Backend:
    kind = "hdf5"

    @staticmethod
    def lock_path(path: Path) -> Path:
        return path.with_name(path.name + ".lock")

    @staticmethod
    def create(path: Path, header: dict) -> None:
        tmp = path.with_name(f".{path.name}.creating-{uuid.uuid4().hex}.tmp")
        try:
            _build(tmp, header, INITIAL)
            try:
                os.link(tmp, path)  # fails if the path exists: never clobber a store
            except FileExistsError:
                raise StoreError(f"{path}: already exists") from None
        finally:
            tmp.unlink(missing_ok=True)

    def __init__(self, path: Path, writable: bool):
        self.path = path
        self.writable = writable
        if writable:
            for stale in path.parent.glob(f".{path.name}.*.tmp"):
                stale.unlink(missing_ok=True)  # left by a killed writer; we hold the lock
        self._open()

    def _open(self):
        self._file, self._mm, self._wfd = None, None, None
        try:
            self._file = h5py.File(self.path, "r", locking=False)
            self.header = json.loads(self._file.attrs["stovtal"])
            self._offset, self._cap = {}, {}
            for name in list(DATASETS) + ["commit"]:
                ds = self._file[name]
                self._offset[name] = ds.id.get_offset()
                self._cap[name] = ds.shape[0]
                if self._offset[name] is None:
                    raise ValueError(f"dataset {name!r} is not contiguous and allocated")
        except (OSError, KeyError, ValueError) as exc:
            self.close()
            if "truncated file" in str(exc):  # HDF5 checks the file's end against its own record of it
                raise StoreError(f"{self.path}: the file is truncated; the store is damaged ({exc})") from None
            raise StoreError(f"{self.path}: not a stovtal HDF5 store ({exc})") from None
        self._rowbytes = {name: int(np.prod(_dataset_layout(self.header, name)[1], dtype=np.int64))
                          * _dataset_layout(self.header, name)[0].itemsize for name in DATASETS}
        self._fd = self._file.id.get_vfd_handle()
        # Reads copy out of a shared read-only mapping: ~20% faster than pread here, and it sees the
        # writer's pwrites (same page cache). The live file is never truncated, only replaced, so the
        # mapping stays valid; anything past its end (none expected) falls back to pread.
        size = os.fstat(self._fd).st_size
        self._mm = mmap.mmap(self._fd, size, access=mmap.ACCESS_READ) if size else None
        self._wfd = os.open(self.path, os.O_RDWR) if self.writable else None

    # --- raw I/O --------------------------------------------------------------------------------
    def _pread_into(self, out: np.ndarray, offset: int) -> np.ndarray:
        view = memoryview(out).cast("B")
        done = 0
        while done < len(view):
            n = os.preadv(self._fd, [view[done:]], offset + done)
            if n == 0:
                raise StoreError(f"{self.path}: file is truncated")
            done += n
        return out

    def _pwrite(self, data, offset: int) -> None:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.pwrite(self._wfd, view[done:], offset + done)

    def _read(self, name: str, start: int, stop: int) -> np.ndarray:
        dtype, tail = _dataset_layout(self.header, name)
        offset = self._offset[name] + start * self._rowbytes[name]
        count = (stop - start) * self._rowbytes[name] // dtype.itemsize
        if stop > start and self._mm is not None and offset + count * dtype.itemsize <= len(self._mm):
            return np.frombuffer(self._mm, dtype, count, offset).reshape((stop - start,) + tail).copy()
        out = np.empty((stop - start,) + tail, dtype=dtype)
        if stop > start:
            try:
                self._pread_into(out, offset)
            except StoreError:
                if name == "rows":
                    raise RowsUnreadable(f"the file ends before rows {start}-{stop} (truncated)", start, stop) from None
                raise
        return out

    # --- backend interface ------------------------------------------------------------------------
    def read_commit(self, refresh: bool = False) -> dict:
        c = np.empty(len(COMMIT_KEYS), "<i8")
        self._pread_into(c, self._offset["commit"])
        return dict(zip(COMMIT_KEYS, (int(x) for x in c)))

    def write_commit(self, commit: dict) -> None:
        # 32 bytes in one pwrite: the instant a video becomes visible.
        self._pwrite(np.array([commit[k] for k in COMMIT_KEYS], "<i8"), self._offset["commit"])

    def capacity(self) -> dict:
        return {key: self._cap[name] for name, (key, _) in DATASETS.items()}

    def ensure_capacity(self, need: dict, committed: dict) -> None:
        cap = self.capacity()
        if all(need[k] <= cap[k] for k in cap):
            return
        new_caps = {k: max(need[k], 2 * cap[k]) if need[k] > cap[k] else cap[k] for k in cap}
        tmp = self.path.with_name(f".{self.path.name}.grow-{uuid.uuid4().hex}.tmp")
        try:
            _build(tmp, self.header, new_caps)
            with h5py.File(tmp, "r", locking=False) as f:
                new_off = {name: f[name].id.get_offset() for name in list(DATASETS) + ["commit"]}
            dst = os.open(tmp, os.O_RDWR)
            try:
                for name, (key, _) in DATASETS.items():
                    _copy_range(self._fd, dst, self._offset[name], new_off[name],
                                committed[key] * self._rowbytes[name])
                _copy_range(self._fd, dst, self._offset["commit"], new_off["commit"], 8 * len(COMMIT_KEYS))
            finally:
                os.close(dst)
            self.close()
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        self._open()

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return self._read("rows", start, stop)

    def read_rows_into(self, start: int, stop: int, out: np.ndarray) -> None:
        """Rows [start, stop) into ``out``, converted to its dtype while copied out of the mapping (one pass)."""
        dtype, tail = _dataset_layout(self.header, "rows")
        offset = self._offset["rows"] + start * self._rowbytes["rows"]
        if stop > start and self._mm is not None and offset + (stop - start) * self._rowbytes["rows"] <= len(self._mm):
            np.copyto(out, np.frombuffer(self._mm, dtype, (stop - start) * tail[0], offset).reshape(out.shape))
        elif stop > start:
            np.copyto(out, self._read("rows", start, stop))

    def read_index(self, n: int) -> np.ndarray:
        return self._read("index", 0, n)

    def read_bytes(self, name: str, n: int) -> bytes:
        return self._read(name, 0, n).tobytes()

    def write_rows(self, start: int, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(rows, dtype=_dataset_layout(self.header, "rows")[0])
        self._pwrite(data, self._offset["rows"] + start * self._rowbytes["rows"])

    def write_index(self, i: int, rows: np.ndarray) -> None:
        self._pwrite(np.ascontiguousarray(rows, "<f8"), self._offset["index"] + i * self._rowbytes["index"])

    def write_bytes(self, name: str, start: int, data: bytes) -> None:
        self._pwrite(data, self._offset[name] + start)

    def bytes_on_disk(self) -> int:
        return os.stat(self.path).st_blocks * 512

    def close(self) -> None:
        if self._wfd is not None:
            os.close(self._wfd)
            self._wfd = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self._file is not None:
            self._file.close()
            self._file = None


def _copy_range(src: int, dst: int, src_off: int, dst_off: int, count: int) -> None:
    """Copy bytes between files in the kernel (reflinks where the filesystem can)."""
    while count > 0:
        try:
            n = os.copy_file_range(src, dst, min(count, COPY_BLOCK), src_off, dst_off)
        except OSError:
            n = os.pwrite(dst, os.pread(src, min(count, COPY_BLOCK), src_off), dst_off)
        if n == 0:
            raise StoreError(f"short copy at byte {src_off}")
        src_off, dst_off, count = src_off + n, dst_off + n, count - n
