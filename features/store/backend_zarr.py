"""Zarr 3 backend: a directory store whose every file write is atomic (zarr's LocalStore writes a temp
file and renames it), so a killed writer can only leave whole chunk files behind.

Every chunk is written as a file, zeros included (zarr's ``write_empty_chunks``), so a chunk file that is missing
inside the committed data was lost: reading it is an error naming the file, never zeros."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore

from .model import RowsUnreadable, StoreError
from .records import COMMIT_KEYS, index_width

INDEX_CHUNK = 1024          # videos per index chunk: a commit rewrites at most one 88 KB chunk
ARRAY_CONFIG = {"write_empty_chunks": True}  # an all-zero chunk is a file too: a missing file means lost data
BLOB_CHUNK = 1 << 16        # bytes per id/log chunk
ROW_CHUNK_BYTES = 1 << 20    # ~1 MiB row chunks: each append rewrites at most one partly filled chunk


def row_chunk(dim: int, itemsize: int) -> int:
    rows = max(1, ROW_CHUNK_BYTES // (dim * itemsize))
    return int(min(1 << 16, max(256, 1 << (rows.bit_length() - 1))))


class ZarrBackend:
    kind = "zarr"

    @staticmethod
    def lock_path(path: Path) -> Path:
        return path / "stovtal.lock"

    @staticmethod
    def create(path: Path, header: dict) -> None:
        tmp = path.with_name(f".{path.name}.creating-{uuid.uuid4().hex}")
        dim, dtype = header["dim"], np.dtype(header["dtype"])
        try:
            group = zarr.create_group(store=LocalStore(tmp), zarr_format=3, attributes={"stovtal": header})
            chunk = row_chunk(dim, dtype.itemsize)
            # Rows stay uncompressed: float16 CLIP features barely compress, and decoding would add
            # latency to every read (the whole point of the layout).
            group.create_array("rows", shape=(chunk, dim), chunks=(chunk, dim), dtype=dtype,
                               compressors=None, filters=None, fill_value=0)
            ncol = index_width(header["format"])
            group.create_array("index", shape=(INDEX_CHUNK, ncol), chunks=(INDEX_CHUNK, ncol),
                               dtype="float64", fill_value=0)
            for name in ("ids", "log"):
                group.create_array(name, shape=(BLOB_CHUNK,), chunks=(BLOB_CHUNK,), dtype="uint8",
                                   fill_value=0)
            commit = group.create_array("commit", shape=(len(COMMIT_KEYS),), chunks=(len(COMMIT_KEYS),),
                                        dtype="int64", compressors=None, filters=None, fill_value=0)
            commit.with_config(ARRAY_CONFIG)[:] = 0  # the commit record exists from the start
            if path.exists():
                raise StoreError(f"{path}: already exists")
            os.rename(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def __init__(self, path: Path, writable: bool):
        self.path = path
        self.writable = writable
        self._store = LocalStore(path, read_only=not writable)
        self._open_group()
        try:
            self._arrays = {"commit": self._group["commit"].with_config(ARRAY_CONFIG)}
        except KeyError:
            raise StoreError(f"{self.path}: not a stovtal zarr store (no commit array)") from None
        self._tails: dict[str, tuple[int, np.ndarray]] = {}
        self._raw_rows = _raw_layout(path / "rows", self.header)
        if writable:
            _remove_partials(path)

    def _open_group(self):
        try:
            self._group = zarr.open_group(self._store, mode="r+" if self.writable else "r",
                                          use_consolidated=False)
            self.header = dict(self._group.attrs["stovtal"])
        except (FileNotFoundError, KeyError, ValueError) as exc:
            raise StoreError(f"{self.path}: not a stovtal zarr store ({exc})") from None

    def read_commit(self, refresh: bool = False) -> dict:
        commit = dict(zip(COMMIT_KEYS, (int(x) for x in self._arrays["commit"][:])))
        if refresh or "rows" not in self._arrays:
            # Open the data arrays after reading the commit: a writer grows them before it commits,
            # so these shapes always cover the committed prefix.
            self._arrays.update({name: self._group[name].with_config(ARRAY_CONFIG)
                                 for name in ("rows", "index", "ids", "log")})
            self._check_metadata_chunks(commit)
        return commit

    def _chunk_file(self, name: str, k: int) -> Path:
        arr = self._arrays[name]
        return self.path / name / arr.metadata.encode_chunk_key((k,) + (0,) * (arr.ndim - 1))

    def _check_metadata_chunks(self, commit: dict) -> None:
        """The commit record and every chunk of the committed index, ids and log must be on disk: zarr would
        read a missing one as zeros (an empty store, garbled ids). A few stat calls per 1,000 videos."""
        if not (self.path / "commit" / self._arrays["commit"].metadata.encode_chunk_key((0,))).exists():
            if any((self.path / "index" / "c").glob("*")) or any((self.path / "rows" / "c").glob("*")):
                raise StoreError(f"{self.path}: the commit record (commit/c/0) is missing; the store is damaged")
            return  # a store created by an older stovtal and never written: empty
        for name, key in (("index", "videos"), ("ids", "id_bytes"), ("log", "log_bytes")):
            chunk = self._arrays[name].chunks[0]
            for k in range(-(-commit[key] // chunk)):
                path = self._chunk_file(name, k)
                if not path.exists():
                    raise StoreError(f"{self.path}: chunk file {path.relative_to(self.path)} of the {name} array "
                                     "is missing; the store is damaged")

    def write_commit(self, commit: dict) -> None:
        # One atomic file replace of a 32-byte chunk: the instant a video becomes visible.
        self._arrays["commit"][:] = np.array([commit[k] for k in COMMIT_KEYS], dtype=np.int64)

    def capacity(self) -> dict:
        a = self._arrays
        return {"rows": a["rows"].shape[0], "videos": a["index"].shape[0],
                "id_bytes": a["ids"].shape[0], "log_bytes": a["log"].shape[0]}

    def ensure_capacity(self, need: dict, committed: dict) -> None:
        cap = self.capacity()
        for key, name in (("rows", "rows"), ("videos", "index"), ("id_bytes", "ids"), ("log_bytes", "log")):
            if need[key] > cap[key]:
                arr = self._arrays[name]
                chunk = arr.chunks[0]
                new = -(-max(need[key], 2 * cap[key]) // chunk) * chunk  # whole chunks, see _append
                arr.resize((new,) + arr.shape[1:])

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        if self._raw_rows is None:
            return self._read_zarr(start, stop)
        out = np.empty((stop - start, self.header["dim"]), dtype=self._raw_rows[1])
        self._read_raw_into(start, stop, out)
        return out

    def read_rows_into(self, start: int, stop: int, out: np.ndarray) -> None:
        """Rows [start, stop) into ``out``: straight from the chunk files when the dtypes agree."""
        if self._raw_rows is not None and out.dtype == self._raw_rows[1] and out.flags.c_contiguous:
            self._read_raw_into(start, stop, out)
        else:
            np.copyto(out, self.read_rows(start, stop))

    def _read_zarr(self, start: int, stop: int) -> np.ndarray:
        """zarr's own reader (layouts other than plain chunks), refusing missing chunks instead of zeros."""
        chunk = self._arrays["rows"].chunks[0]
        for k in range(start // chunk, -(-stop // chunk)):
            path = self._chunk_file("rows", k)
            if not path.exists():
                raise RowsUnreadable(f"chunk file {path.relative_to(self.path)} is missing",
                                     max(start, k * chunk), min(stop, (k + 1) * chunk))
        try:
            return self._arrays["rows"][start:stop]
        except Exception as exc:  # a damaged (e.g. truncated, compressed) chunk: zarr/numcodecs raise many types
            raise RowsUnreadable(f"zarr cannot read rows {start}-{stop} ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''})", start, stop) from None

    def _read_raw_into(self, start: int, stop: int, out: np.ndarray) -> None:
        """Read rows straight from the chunk files, skipping zarr's ~1.5 ms per-call machinery.

        Valid because the rows array is stored uncompressed: per the zarr v3 spec, chunk (k, 0) is the
        file rows/c/k/0 holding chunk_rows x D little-endian values. (A missing chunk would be all fill
        value; stovtal writes every chunk, so inside the committed rows it means lost data: an error.)
        Zarr replaces chunk files atomically, so a chunk is always read whole-old or whole-new."""
        chunk, dtype = self._raw_rows
        dim = self.header["dim"]
        flat = memoryview(out.reshape(-1).view(np.uint8))
        rowbytes = dim * dtype.itemsize
        pos = start
        while pos < stop:
            k = pos // chunk
            end = min(stop, (k + 1) * chunk)
            dst = flat[(pos - start) * rowbytes:(end - start) * rowbytes]
            try:
                fd = os.open(self.path / "rows" / "c" / str(k) / "0", os.O_RDONLY)
            except FileNotFoundError:
                raise RowsUnreadable(f"chunk file rows/c/{k}/0 is missing", pos, end) from None
            try:
                got, want = 0, len(dst)
                while got < want:
                    n = os.preadv(fd, [dst[got:]], (pos - k * chunk) * rowbytes + got)
                    if n == 0:
                        size = os.fstat(fd).st_size
                        raise RowsUnreadable(f"chunk file rows/c/{k}/0 is truncated ({size} of "
                                             f"{chunk * rowbytes} bytes)", pos, end)
                    got += n
            finally:
                os.close(fd)
            pos = end

    def read_index(self, n: int) -> np.ndarray:
        return self._read_metadata("index", n) if n else np.zeros((0, self._arrays["index"].shape[1]))

    def read_bytes(self, name: str, n: int) -> bytes:
        return self._read_metadata(name, n).tobytes() if n else b""

    def _read_metadata(self, name: str, n: int) -> np.ndarray:
        try:
            return self._arrays[name][:n]
        except Exception as exc:  # a damaged (compressed) chunk file: zarr/numcodecs raise many types
            raise StoreError(f"{self.path}: the {name} array cannot be read ({type(exc).__name__}); "
                             "the store is damaged") from None

    def write_rows(self, start: int, rows: np.ndarray) -> None:
        self._append("rows", start, rows)

    def write_index(self, i: int, rows: np.ndarray) -> None:
        self._append("index", i, rows)

    def write_bytes(self, name: str, start: int, data: bytes) -> None:
        self._append(name, start, np.frombuffer(data, dtype=np.uint8))

    def _append(self, name: str, start: int, data: np.ndarray) -> None:
        """Write data at start as whole chunks only, so zarr never reads a chunk back to merge it.

        The start of the partly filled last chunk is kept in memory (read from disk once), and written
        again together with the new data; data past `start` in the cache (from a write that was never
        committed) is dropped."""
        arr = self._arrays[name]
        chunk = arr.chunks[0]
        first = start // chunk * chunk
        cached = self._tails.get(name)
        if cached is not None and cached[0] == first and first + len(cached[1]) >= start:
            prefix = cached[1][:start - first]
        else:
            prefix = arr[first:start]
        self._tails.pop(name, None)
        full = np.concatenate([prefix, np.asarray(data, dtype=arr.dtype)])
        end = first + -(-len(full) // chunk) * chunk
        padded = np.zeros((end - first,) + arr.shape[1:], dtype=arr.dtype)
        padded[:len(full)] = full
        arr[first:end] = padded
        last = (first + len(full)) // chunk * chunk
        self._tails[name] = (last, full[last - first:].copy())

    def bytes_on_disk(self) -> int:
        total = 0
        for root, _dirs, files in os.walk(self.path):
            for f in files:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
        return total

    def close(self) -> None:
        self._store.close()


def _raw_layout(array_dir: Path, header: dict):
    """(chunk_rows, dtype) when the rows array is plain uncompressed little-endian chunks, else None."""
    try:
        meta = json.loads((array_dir / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    dtype = np.dtype(header["dtype"]).newbyteorder("<")
    plain = (meta.get("codecs") == [{"name": "bytes", "configuration": {"endian": "little"}}]
             and meta.get("chunk_key_encoding") == {"name": "default", "configuration": {"separator": "/"}}
             and meta.get("data_type") == np.dtype(header["dtype"]).name
             and meta.get("chunk_grid", {}).get("name") == "regular")
    if not plain:
        return None
    chunk_shape = meta["chunk_grid"]["configuration"]["chunk_shape"]
    if len(chunk_shape) != 2 or chunk_shape[1] != header["dim"]:
        return None
    return int(chunk_shape[0]), dtype


def _remove_partials(path: Path) -> None:
    # A killed writer may leave zarr's "<chunk>.<hex>.partial" temp files; they are never read.
    for root, _dirs, files in os.walk(path):
        for f in files:
            if f.endswith(".partial"):
                os.unlink(os.path.join(root, f))
