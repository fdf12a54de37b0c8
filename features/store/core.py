"""FeatureStore: the one API over both backends, and the commit protocol that keeps stores whole.

Writing a video: (1) grow arrays if needed, (2) write its rows, index row and id bytes past the
committed ends, (3) publish a new commit record {videos, rows, id_bytes, log_bytes} in one atomic
write. Readers only look at the committed prefix, so anything a killed writer left past it is
invisible and is overwritten by the next writer. The index is read once at open (a few calls);
reading a video is then one contiguous slice of the row array.

Lost data is never read as zeros: each video's index row holds a crc32 of its stored rows (format 2), checked by
``read(vid, verify=True)``, ``iter_videos(verify=True)`` and ``scan`` (validate --deep, convert, merge); a row
chunk missing or cut short on disk is an error naming the video and the file on every read.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .lock import WriterLock
from .model import RowsUnreadable, StoreError, VideoInfo, Vocabulary
from .records import (C, FORMAT_VERSION, SUPPORTED_FORMATS, check_info, decode_ids, encode_id, failure_record,
                      index_row, index_width, info_from_row, parse_log, rows_checksum, vocabulary_from_record,
                      vocabulary_record)

DTYPES = ("float16", "float32")
SCAN_BLOCK_BYTES = 2 << 20  # small blocks come back from the heap warm; bigger ones page-fault afresh


def backend_for(path: Path):
    # Imported on demand: a process that only touches one backend never pays for the other's import.
    suffix = path.suffix.lower()
    if suffix == ".zarr":
        from .backend_zarr import ZarrBackend
        return ZarrBackend
    if suffix in (".h5", ".hdf5"):
        from .backend_hdf5 import Hdf5Backend
        return Hdf5Backend
    raise StoreError(f"{path}: unknown store type; use a .zarr directory or a .h5/.hdf5 file")


def create_store(path, *, dim: int, provenance: dict, dtype="float16") -> "FeatureStore":
    """Create an empty store (backend by suffix) and return it open for appending."""
    path = Path(path)
    backend = backend_for(path)
    dtype = np.dtype(dtype).name
    if dtype not in DTYPES:
        raise StoreError(f"{path}: dtype must be one of {DTYPES}, got {dtype}")
    if not isinstance(dim, (int, np.integer)) or dim < 1:
        raise StoreError(f"{path}: dim must be a positive integer, got {dim!r}")
    if path.exists():
        raise StoreError(f"{path}: already exists")
    prov = _plain_json(dict(provenance or {}), path)
    prov.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    prov.setdefault("stovtal_version", package_version())
    prov["dtype"], prov["dim"] = dtype, int(dim)
    header = {"format": FORMAT_VERSION, "dim": int(dim), "dtype": dtype, "provenance": prov}
    if not path.parent.is_dir():
        raise StoreError(f"{path}: parent directory does not exist")
    backend.create(path, header)
    return FeatureStore(path, "a")


def open_store(path, mode: str = "r") -> "FeatureStore":
    """Open an existing store read-only ("r") or for appending ("a")."""
    if mode not in ("r", "a"):
        raise StoreError(f"{path}: mode must be 'r' or 'a', got {mode!r}")
    return FeatureStore(Path(path), mode)


class FeatureStore:
    def __init__(self, path: Path, mode: str = "r"):
        self.path = Path(path)
        self.mode = mode
        backend = backend_for(self.path)
        if not self.path.exists():
            raise StoreError(f"{self.path}: no such store")
        self._lock, self._b = None, None
        try:
            self._lock = WriterLock(backend.lock_path(self.path), self.path) if mode == "a" else None
            self._b = backend(self.path, writable=(mode == "a"))
            header = self._b.header
            if header.get("format") not in SUPPORTED_FORMATS:
                raise StoreError(f"{self.path}: unsupported store format {header.get('format')!r} "
                                 f"(this stovtal reads formats {', '.join(map(str, SUPPORTED_FORMATS))})")
            self.format = int(header["format"])
            self.dim = int(header["dim"])
            self.dtype = np.dtype(header["dtype"])
            self.provenance = dict(header["provenance"])
            self.backend = self._b.kind
            self._load()
        except BaseException:
            self.close()  # never keep a lock or a file handle for a store we failed to open
            raise

    # --- reading -------------------------------------------------------------------------------------
    def _load(self) -> None:
        """Read the committed index, ids and metadata log (a handful of calls)."""
        self._commit = self._b.read_commit(refresh=True)
        n = self._commit["videos"]
        self._index = self._b.read_index(n)
        self._ids = decode_ids(self._b.read_bytes("ids", self._commit["id_bytes"]), self._index[:, C["id_end"]])
        self._pos = {vid: i for i, vid in enumerate(self._ids)}
        self._failures, self._vocabs = {}, {}
        for header, payload in parse_log(self._b.read_bytes("log", self._commit["log_bytes"]), str(self.path)):
            if header["kind"] == "failure":
                self._failures[header["id"]] = header["reason"]
            elif header["kind"] == "vocabulary":
                self._vocabs[header["name"]] = (header, payload)

    def refresh(self) -> None:
        """Re-read the commit record to see videos another process finished since open."""
        self._load()

    def video_ids(self) -> list[str]:
        return list(self._ids)

    def __contains__(self, vid) -> bool:
        return vid in self._pos

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def num_rows(self) -> int:
        return self._commit["rows"]

    def _row(self, vid) -> np.ndarray:
        try:
            return self._index[self._pos[vid]]
        except (KeyError, TypeError):
            raise StoreError(f"{self.path}: no video {vid!r}") from None

    def row_span(self, vid) -> tuple[int, int]:
        """Where a video's rows sit in the store's row array: [start, stop)."""
        row = self._row(vid)
        start = int(row[C["offset"]])
        return start, start + int(row[C["length"]])

    @property
    def has_checksums(self) -> bool:
        """Whether videos carry a crc32 of their rows (store format 2; format-1 stores predate them)."""
        return self.format >= 2

    def checksum(self, vid) -> int | None:
        """crc32 of the video's stored rows, or None in a store without checksums."""
        row = self._row(vid)
        return int(row[C["crc32"]]) if self.has_checksums else None

    def read(self, vid, out: np.ndarray | None = None, verify: bool = False) -> np.ndarray:
        """A video's rows [T, D] in the store's dtype, or written into ``out`` (any float dtype, converted while
        copied: e.g. float32 rows for a model without a second copy); ``verify`` also checks them against the
        stored checksum (computed over the stored dtype, so a converting ``out`` reads them once more)."""
        start, stop = self.row_span(vid)
        if out is not None:
            self._check_out(out, stop - start, f"video {vid!r}")
        try:
            if out is None or verify:
                rows = self._b.read_rows(start, stop)
            else:
                self._b.read_rows_into(start, stop, out)
                return out
        except RowsUnreadable as exc:
            raise StoreError(f"{self.path}: video {vid!r} cannot be read: {exc}") from None
        if verify:
            problem = self._damage(vid, rows)
            if problem:
                raise StoreError(f"{self.path}: video {vid!r}: {problem}")
        if out is None:
            return rows
        np.copyto(out, rows)
        return out

    def read_all(self, out: np.ndarray | None = None) -> np.ndarray:
        """Every committed row in store order as one [num_rows, D] array (video ``v`` is
        ``rows[slice(*row_span(v))]``), read block by block into ``out`` when given: a preallocated buffer of
        any float dtype, filled without per-video copies (a full scan's fastest path)."""
        n = self.num_rows
        out = np.empty((n, self.dim), self.dtype) if out is None else self._check_out(out, n, "all rows")
        block = max(1, SCAN_BLOCK_BYTES // (self.dim * self.dtype.itemsize))
        for a in range(0, n, block):
            try:
                self._b.read_rows_into(a, min(n, a + block), out[a:a + block])
            except RowsUnreadable as exc:
                raise StoreError(f"{self.path}: video {self._video_at(exc.start)!r} cannot be read: {exc}") from None
        return out

    def _video_at(self, row: int) -> str:
        """The id of the video holding committed row ``row``."""
        offsets = self._index[: len(self._ids), C["offset"]]
        order = np.argsort(offsets, kind="stable")
        i = order[np.searchsorted(offsets[order], row, side="right") - 1]
        return self._ids[int(i)]

    def _check_out(self, out, rows: int, what: str) -> np.ndarray:
        if not isinstance(out, np.ndarray) or out.shape != (rows, self.dim) or out.dtype.kind != "f":
            got = f"{out.dtype} {list(out.shape)}" if isinstance(out, np.ndarray) else type(out).__name__
            raise StoreError(f"{self.path}: {what}: out must be a float array of shape [{rows}, {self.dim}], got {got}")
        return out

    def _damage(self, vid, rows) -> str | None:
        if not self.has_checksums:
            return None
        stored, found = self.checksum(vid), rows_checksum(rows)
        if found != stored:
            return f"rows are damaged (crc32 {found:08x}, stored {stored:08x})"
        return None

    def info(self, vid) -> VideoInfo:
        return info_from_row(self._row(vid))

    def iter_videos(self, ids: Iterable[str] | None = None, verify: bool = False) -> Iterator[tuple[str, np.ndarray]]:
        """Yield (id, rows) in store order, reading many videos per call (a full scan's fast path).

        A video that cannot be read (or, with ``verify``, fails its checksum) stops the scan with an error."""
        for vid, rows, problem in self.scan(ids, verify):
            if problem is not None:
                raise StoreError(f"{self.path}: video {vid!r}: {problem}")
            yield vid, rows

    def scan(self, ids: Iterable[str] | None = None,
             verify: bool = False) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
        """Like iter_videos, but a damaged video yields ``(id, None, what is wrong)`` and the scan goes on."""
        wanted = None if ids is None else set(ids)
        order = [i for i, v in enumerate(self._ids) if wanted is None or v in wanted]
        block_rows = max(1, SCAN_BLOCK_BYTES // (self.dim * self.dtype.itemsize))
        k = 0
        while k < len(order):
            first = order[k]
            start = int(self._index[first, C["offset"]])
            j = k
            # extend the block over consecutive stored videos while it stays under the block size
            while j + 1 < len(order) and order[j + 1] == order[j] + 1:
                nxt = self._index[order[j + 1]]
                if nxt[C["offset"]] + nxt[C["length"]] - start > block_rows:
                    break
                j += 1
            last = self._index[order[j]]
            try:
                block = self._b.read_rows(start, int(last[C["offset"]] + last[C["length"]]))
            except RowsUnreadable:
                block = None  # read this block's videos one by one to name each damaged one
            for i in order[k:j + 1]:
                vid = self._ids[i]
                if block is None:
                    try:
                        rows = self._b.read_rows(*self.row_span(vid))
                    except RowsUnreadable as exc:
                        yield vid, None, f"cannot be read: {exc}"
                        continue
                else:
                    a = int(self._index[i, C["offset"]]) - start
                    rows = block[a:a + int(self._index[i, C["length"]])]
                problem = self._damage(vid, rows) if verify else None
                yield (vid, None, problem) if problem else (vid, rows, None)
            k = j + 1

    def failures(self) -> dict[str, str]:
        """Latest recorded reason per video, for videos that have not since been written."""
        return {vid: r for vid, r in self._failures.items() if vid not in self._pos}

    def vocabulary_names(self) -> list[str]:
        return list(self._vocabs)

    def vocabulary(self, name) -> Vocabulary:
        if name not in self._vocabs:
            raise StoreError(f"{self.path}: no vocabulary {name!r} (have: {', '.join(self._vocabs) or 'none'})")
        return vocabulary_from_record(*self._vocabs[name])

    def bytes_on_disk(self) -> int:
        return self._b.bytes_on_disk()

    # --- writing -------------------------------------------------------------------------------------
    def _writable(self) -> None:
        if self.mode != "a" or self._b is None:
            raise StoreError(f"{self.path}: store is not open for writing (use mode='a')")

    def write_video(self, vid, rows: np.ndarray, info: VideoInfo) -> None:
        """Append one video; it becomes visible to readers only once all of it is written."""
        self.write_videos([(vid, rows, info)])

    def write_videos(self, items: Iterable[tuple[str, np.ndarray, VideoInfo]]) -> None:
        """Append several videos with one commit: all of them become visible together, or none."""
        self._writable()
        checked, keys, batch = [], [], set()
        for vid, rows, info in items:
            checked.append(self._check_video(vid, rows, info, batch))
            keys.append(encode_id(vid))
            batch.add(vid)
        if not checked:
            return
        c = dict(self._commit)
        n_rows = sum(len(r) for _, r, _ in checked)
        need = {"rows": c["rows"] + n_rows, "videos": c["videos"] + len(checked),
                "id_bytes": c["id_bytes"] + sum(len(k) for k in keys), "log_bytes": c["log_bytes"]}
        self._b.ensure_capacity(need, c)
        if n_rows:
            block = checked[0][1] if len(checked) == 1 else np.concatenate([r for _, r, _ in checked])
            self._b.write_rows(c["rows"], block)
        entries, offset, id_end = [], c["rows"], c["id_bytes"]
        for (vid, rows, info), key in zip(checked, keys):
            id_end += len(key)
            entries.append(index_row(offset, info, id_end, rows_checksum(rows)))
            offset += len(rows)
        entries = np.stack(entries)[:, :index_width(self.format)]  # format-1 stores have no checksum column
        self._b.write_index(c["videos"], entries)
        self._b.write_bytes("ids", c["id_bytes"], b"".join(keys))
        self._b.write_commit(need)  # the commit point
        self._commit = need
        self._index = np.concatenate([self._index, entries])
        for vid, _, _ in checked:
            self._pos[vid] = len(self._ids)
            self._ids.append(vid)

    def _check_video(self, vid, rows, info, batch) -> tuple:
        encode_id(vid)
        where = f"{self.path}: video {vid!r}"
        if vid in self._pos or vid in batch:
            raise StoreError(f"{where} is already in the store")
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise StoreError(f"{where}: rows must have shape [T, {self.dim}], got {list(rows.shape)}")
        if not np.issubdtype(rows.dtype, np.number):
            raise StoreError(f"{where}: rows must be numeric, got {rows.dtype}")
        with np.errstate(over="ignore", invalid="ignore"):
            stored = rows.astype(self.dtype, copy=False)
        if not np.isfinite(stored).all():
            raise StoreError(f"{where}: rows contain NaN/inf (after conversion to {self.dtype})")
        check_info(info, len(rows), where)
        return vid, stored, info

    def _append_log(self, record: bytes) -> None:
        c = dict(self._commit)
        need = dict(c, log_bytes=c["log_bytes"] + len(record))
        self._b.ensure_capacity(need, c)
        self._b.write_bytes("log", c["log_bytes"], record)
        self._b.write_commit(need)
        self._commit = need

    def add_failure(self, vid, reason: str) -> None:
        self._writable()
        encode_id(vid)
        self._append_log(failure_record(vid, reason))
        self._failures[vid] = str(reason)

    def add_vocabulary(self, name, classes, embeddings, template=None, provenance=None) -> None:
        """Store class-name text embeddings [K, D]; rows are L2-normalised as stored. Same name replaces."""
        self._writable()
        where = f"{self.path}: vocabulary {name!r}"
        if not isinstance(name, str) or not name:
            raise StoreError(f"{self.path}: vocabulary name must be a non-empty string")
        classes = [str(c) for c in classes]
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise StoreError(f"{where}: embeddings must have shape [K, {self.dim}], got {list(emb.shape)}")
        if emb.shape[0] != len(classes):
            raise StoreError(f"{where}: {emb.shape[0]} embeddings for {len(classes)} class names")
        if not np.isfinite(emb).all():
            raise StoreError(f"{where}: embeddings contain NaN/inf")
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        if (norms == 0).any():
            raise StoreError(f"{where}: an embedding row is all zeros")
        vocab = Vocabulary(name=name, classes=classes, embeddings=emb / norms,
                           template=None if template is None else str(template),
                           provenance=_plain_json(dict(provenance or {}), self.path))
        record = vocabulary_record(vocab)
        self._append_log(record)
        header, payload = next(parse_log(record, where))
        self._vocabs[name] = (header, payload)

    def reserve(self, *, rows: int = 0, videos: int = 0, id_bytes: int = 0) -> None:
        """Grow capacity once up front when the final size is known (merge, convert, import)."""
        self._writable()
        c = self._commit
        self._b.ensure_capacity({"rows": c["rows"] + rows, "videos": c["videos"] + videos,
                                 "id_bytes": c["id_bytes"] + id_bytes, "log_bytes": c["log_bytes"]}, c)

    # --- lifetime ------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._b is not None:
            self._b.close()
            self._b = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self):
        # DataLoader workers get their own read-only handle; writers are never shared.
        if self.mode != "r":
            raise StoreError(f"{self.path}: a store open for writing cannot be sent to another process")
        return {"path": str(self.path)}

    def __setstate__(self, state):
        self.__init__(Path(state["path"]), "r")

    def __repr__(self) -> str:
        return (f"FeatureStore({str(self.path)!r}, {self.backend}, videos={len(self)}, dim={self.dim}, "
                f"dtype={self.dtype.name}, mode={self.mode!r})")


def _plain_json(value: dict, path: Path) -> dict:
    """Provenance as plain JSON types (numpy scalars/arrays and tuples converted), or a clear error."""
    def convert(x):
        if isinstance(x, (np.generic, np.ndarray)):
            return x.tolist()
        raise TypeError(f"{type(x).__name__} is not JSON")
    try:
        return json.loads(json.dumps(value, default=convert))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{path}: provenance must be JSON-serialisable ({exc})") from None


def package_version() -> str:
    try:
        from features import __version__
        return __version__
    except ImportError:
        return "unknown"
