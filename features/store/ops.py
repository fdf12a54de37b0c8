"""Whole-store operations behind `tal-store`: summary, validate, convert, merge, npy import/export."""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import uuid
from pathlib import Path

import numpy as np
from tqdm import tqdm

from features.compat import differing_keys

from .core import FeatureStore, package_version, backend_for, create_store, open_store
from .model import Grid, StoreError, VideoInfo, allowed_row_counts

log = logging.getLogger(__name__)

# --- file names for ids ---------------------------------------------------------------------------
# ActionFormer/OpenTAD name feature files `<video id>.npy`, so ids are written verbatim; only what a file name
# cannot hold is escaped: "/" and NUL, a leading "." (hidden files, "." and ".."), and "%" itself, which makes
# the escaping reversible. import-npy undoes exactly these four and nothing else.
_ESCAPES = {"%": "%25", "/": "%2F", "\0": "%00"}
_UNESCAPE = re.compile(r"%25|%2F|%00")


def id_to_filename(vid: str, suffix: str = ".npy") -> str:
    """``<id><suffix>`` with only ``%``, ``/``, NUL and a leading ``.`` escaped (``%25 %2F %00 %2E``)."""
    name = "".join(_ESCAPES.get(ch, ch) for ch in vid)
    if name.startswith("."):
        name = "%2E" + name[1:]
    name += suffix
    if len(name.encode()) > 255:
        raise StoreError(f"video id {vid!r} is too long for a file name ({len(name.encode())} bytes)")
    return name


def filename_to_id(name: str) -> str:
    """The id a feature file stands for: its stem with id_to_filename's four escapes undone."""
    stem = name[:-4] if name.endswith((".npy", ".npz")) else name
    if stem.startswith("%2E"):
        stem = "." + stem[3:]
    return _UNESCAPE.sub(lambda m: {"%25": "%", "%2F": "/", "%00": "\0"}[m.group()], stem)


# --- summary --------------------------------------------------------------------------------------

def summary(store: FeatureStore) -> dict:
    vocabs = {}
    for name in store.vocabulary_names():
        v = store.vocabulary(name)
        vocabs[name] = {"classes": len(v.classes), "dim": int(v.embeddings.shape[1]), "template": v.template,
                        "provenance": v.provenance}
    return {"path": str(store.path), "backend": store.backend, "videos": len(store), "rows": store.num_rows,
            "dim": store.dim, "dtype": store.dtype.name, "bytes": store.bytes_on_disk(),
            "provenance": store.provenance, "vocabularies": vocabs, "failures": store.failures()}


# --- validation -----------------------------------------------------------------------------------

def validate(store: FeatureStore, progress: bool = False, deep: bool = False) -> list[str]:
    """Check every video and vocabulary; return one line per problem (empty when the store is sound).

    Every video's rows are read (a lost or truncated chunk file is a problem naming the video and the file);
    ``deep`` also compares each video's rows with its stored checksum (stores without checksums: see
    ``store.has_checksums``)."""
    problems = []
    expected_offset = 0
    infos = {vid: store.info(vid) for vid in store.video_ids()}
    offsets = {vid: store.row_span(vid)[0] for vid in store.video_ids()}
    for vid, rows, damage in tqdm(store.scan(verify=deep), total=len(store), disable=not progress,
                                  desc="validate", unit="video"):
        info = infos[vid]
        bad = []
        if offsets[vid] != expected_offset:
            bad.append(f"offset {offsets[vid]} != {expected_offset}")
        expected_offset = offsets[vid] + info.num_rows
        if damage is not None:
            bad.append(damage)
        elif rows.ndim != 2 or rows.shape != (info.num_rows, store.dim):
            bad.append(f"shape {list(rows.shape)} != [{info.num_rows}, {store.dim}]")
        elif rows.dtype != store.dtype:
            bad.append(f"dtype {rows.dtype} != {store.dtype}")
        elif not np.isfinite(rows).all():
            bad.append("non-finite values")
        allowed = allowed_row_counts(info)
        if allowed is not None and info.num_rows not in allowed:
            bad.append(f"{info.num_rows} rows but duration {info.duration:.3f}s on grid {info.grid.to_dict()} "
                       f"gives {sorted(allowed)}")
        if not (info.grid.fps > 0 and info.grid.window >= 1 and info.grid.stride >= 1):
            bad.append(f"invalid grid {info.grid.to_dict()}")
        problems += [f"video {vid!r}: {b}" for b in bad]
    if expected_offset > store.num_rows:
        problems.append(f"rows: index covers {expected_offset} rows but only {store.num_rows} are committed")
    for name in store.vocabulary_names():
        v = store.vocabulary(name)
        if v.embeddings.shape != (len(v.classes), store.dim) or not np.isfinite(v.embeddings).all():
            problems.append(f"vocabulary {name!r}: embeddings {list(v.embeddings.shape)} do not match "
                            f"{len(v.classes)} classes x dim {store.dim} or are non-finite")
    return problems


# --- copying between stores -----------------------------------------------------------------------

def _copy_metadata(src: FeatureStore, dst: FeatureStore) -> None:
    for vid, reason in src.failures().items():
        if vid not in dst and dst.failures().get(vid) != reason:
            dst.add_failure(vid, reason)
    for name in src.vocabulary_names():
        v = src.vocabulary(name)
        if name in dst.vocabulary_names():
            _same_vocabulary(dst.vocabulary(name), v, f"{src.path} and {dst.path}")
            continue
        dst.add_vocabulary(name, v.classes, v.embeddings, v.template, v.provenance)


def _same_vocabulary(a, b, where: str) -> None:
    if a.classes != b.classes or a.template != b.template or not np.array_equal(a.embeddings, b.embeddings):
        raise StoreError(f"vocabulary {a.name!r} differs between {where}")


def convert(src_path, dst_path, progress: bool = False) -> None:
    """Copy a store to another backend (or compact it): identical ids, rows, infos, provenance,
    failures and vocabularies. Built under a temporary name and renamed into place when complete."""
    src_path, dst_path = Path(src_path), Path(dst_path)
    backend_for(dst_path)
    if dst_path.exists():
        raise StoreError(f"{dst_path}: already exists")
    _remove_abandoned(dst_path.parent.glob(f".{dst_path.stem}.converting-*{dst_path.suffix}"))
    tmp = dst_path.with_name(f".{dst_path.stem}.converting-{uuid.uuid4().hex}{dst_path.suffix}")
    try:
        with open_store(src_path) as src:
            with create_store(tmp, dim=src.dim, provenance=src.provenance, dtype=src.dtype.name) as dst:
                dst.reserve(rows=src.num_rows, videos=len(src),
                            id_bytes=sum(len(v.encode()) for v in src.video_ids()))
                # verified: a damaged source video stops the copy instead of entering dst with a fresh checksum
                copy_videos(src, dst, tqdm(src.iter_videos(verify=True), total=len(src), disable=not progress,
                                           desc="convert", unit="video"))
                _copy_metadata(src, dst)
        if dst_path.exists():
            raise StoreError(f"{dst_path}: already exists")
        os.rename(tmp, dst_path)
    finally:
        _remove(tmp)
        _remove(backend_for(tmp).lock_path(tmp))


def copy_videos(src: FeatureStore, dst: FeatureStore, videos, batch_bytes: int = 32 << 20) -> int:
    """Write (id, rows) pairs into dst in batches: one commit per ~32 MiB instead of one per video."""
    batch, size, n = [], 0, 0
    for vid, rows in videos:
        batch.append((vid, rows, src.info(vid)))
        size += rows.nbytes
        if size >= batch_bytes:
            dst.write_videos(batch)
            n, batch, size = n + len(batch), [], 0
    dst.write_videos(batch)
    return n + len(batch)


def _remove_abandoned(paths) -> None:
    """Delete half-built stores left by a killed convert: those whose writer lock nobody holds."""
    from .lock import WriterLock
    for path in paths:
        lock_path = backend_for(path).lock_path(path)
        try:
            lock = WriterLock(lock_path, path)
        except StoreError:
            continue  # another convert is still building it
        lock.release()
        log.info("removing %s, left by an interrupted convert", path)
        _remove(path)
        _remove(lock_path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def merge(dst_path, src_paths, progress: bool = False) -> dict:
    """Join per-shard stores into dst (created from the first source when missing; resumable).

    Every store must have the same provenance (except creation time), dim and dtype. A video present in
    several stores must be identical in all of them; it is stored once."""
    dst_path = Path(dst_path)
    srcs, dst = [], None
    try:
        srcs = [open_store(p) for p in src_paths]
        if not srcs:
            raise StoreError("merge needs at least one source store")
        ref = srcs[0]
        for s in srcs[1:]:
            _check_compatible(ref, s)
        dst = open_store(dst_path, "a") if dst_path.exists() else None
        if dst is not None:
            _check_compatible(ref, dst)
        # Check every duplicated id before writing anything, so a conflict changes nothing.
        seen: dict[str, FeatureStore] = {v: dst for v in dst.video_ids()} if dst is not None else {}
        todo = []
        for s in srcs:
            for vid in s.video_ids():
                if vid in seen:
                    _same_video(seen[vid], s, vid)
                else:
                    seen[vid] = s
                    todo.append((s, vid))
        if dst is None:
            dst = create_store(dst_path, dim=ref.dim, provenance=ref.provenance, dtype=ref.dtype.name)
        with dst:
            dst.reserve(rows=sum(s.info(v).num_rows for s, v in todo), videos=len(todo),
                        id_bytes=sum(len(v.encode()) for _, v in todo))
            added = 0
            for s in srcs:
                mine = {v for src, v in todo if src is s}
                videos = tqdm(s.iter_videos(mine, verify=True), total=len(mine), disable=not progress,
                              desc=f"merge {s.path.name}", unit="video")
                added += copy_videos(s, dst, videos)
            for s in srcs:
                _copy_metadata(s, dst)
            return {"added": added, "videos": len(dst), "failures": len(dst.failures())}
    finally:
        for s in srcs + ([dst] if dst is not None else []):
            s.close()


def _check_compatible(a: FeatureStore, b: FeatureStore) -> None:
    diff = differing_keys(a.provenance, b.provenance)
    if diff or a.dim != b.dim or a.dtype != b.dtype:
        raise StoreError(f"{b.path}: provenance differs from {a.path} in {', '.join(diff) or 'dim/dtype'}")


def same_video(a: FeatureStore, b: FeatureStore, vid: str) -> bool:
    """Whether ``vid`` has the same info and rows in both stores (by checksum when both keep them)."""
    if a.info(vid) != b.info(vid) or a.dtype != b.dtype:
        return False
    if a.has_checksums and b.has_checksums:
        return a.checksum(vid) == b.checksum(vid)
    return np.array_equal(a.read(vid, verify=True), b.read(vid, verify=True))


def _same_video(a: FeatureStore, b: FeatureStore, vid: str) -> None:
    if not same_video(a, b, vid):
        raise StoreError(f"video {vid!r} differs between {a.path} and {b.path}")


# --- npy import / export --------------------------------------------------------------------------

def load_feature_file(path: Path) -> np.ndarray:
    """A T x D array from `<id>.npy` or `<id>.npz` (its only array, or the one named features/feats)."""
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise StoreError(f"{path}: cannot be read as numpy data ({type(exc).__name__}: {exc})") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            keys = list(data.keys())
            key = keys[0] if len(keys) == 1 else next((k for k in ("features", "feats") if k in keys), None)
            if key is None:
                raise StoreError(f"{path}: npz holds {keys}; expected one array or one named 'features'")
            data = data[key]
    if data.ndim != 2:
        raise StoreError(f"{path}: expected a T x D array, got shape {list(data.shape)}")
    if not np.issubdtype(data.dtype, np.number):
        raise StoreError(f"{path}: expected numbers, got dtype {data.dtype}")
    return data


def import_npy(directory, store_path, *, fps: float, stride: int, window: int, frame_step: int = 1,
               dtype: str = "float16", encoder: str = "external", progress: bool = False) -> dict:
    """Import one `<id>.npy`/`.npz` per video (ids are the file stems, see filename_to_id).

    Resumable: videos already in the store are skipped. A bad file is recorded in the store's failure
    log and the others are imported. Source frame counts are unknown (num_frames=-1) and the duration is
    the span the grid covers, ((T-1)*stride + window)/fps."""
    directory, store_path = Path(directory), Path(store_path)
    if not directory.is_dir():
        raise StoreError(f"{directory}: not a directory")
    files = sorted(p for p in directory.iterdir() if p.suffix in (".npy", ".npz") and p.is_file())
    if not files:
        raise StoreError(f"{directory}: no .npy or .npz files")
    grid = Grid(fps=float(fps), window=int(window), stride=int(stride), frame_step=int(frame_step))
    if not (grid.fps > 0 and grid.window >= 1 and grid.stride >= 1 and grid.frame_step >= 1):
        raise StoreError(f"invalid grid {grid.to_dict()}")
    store = None
    failed = {}
    try:
        if store_path.exists():
            store = open_store(store_path, "a")
        for path in tqdm(files, disable=not progress, desc="import", unit="file"):
            vid = filename_to_id(path.name)
            if store is not None and vid in store:
                continue
            try:
                feats = load_feature_file(path)
                if store is None:
                    store = create_store(store_path, dim=int(feats.shape[1]), dtype=dtype,
                                         provenance=_import_provenance(encoder, grid, path.parent))
                info = VideoInfo(num_rows=len(feats), fps=math.nan,
                                 duration=((len(feats) - 1) * grid.stride + grid.window) / grid.fps
                                 if len(feats) else 0.0, num_frames=-1, grid=grid)
                store.write_video(vid, feats, info)
            except StoreError as exc:
                failed[vid] = str(exc)
                log.debug("%s", exc)
            if store is not None:  # failures seen before the store existed are recorded once it does
                for bad, reason in failed.items():
                    if store.failures().get(bad) != reason:
                        store.add_failure(bad, reason)
        return {"videos": len(store) if store is not None else 0, "failed": failed}
    finally:
        if store is not None:
            store.close()


def _import_provenance(encoder: str, grid: Grid, source: Path) -> dict:
    return {"encoder": encoder, "pretrained": "unknown", "image_size": None, "preprocess": "unknown",
            "normalise": "as imported", "fps": grid.fps, "window": grid.window, "stride": grid.stride,
            "frame_step": grid.frame_step, "stovtal_version": package_version(), "imported_from": str(source)}


def export_npy(store_path, directory, progress: bool = False) -> int:
    """Write one float32 `<id>.npy` per video (file names from id_to_filename), each written atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n = 0
    with open_store(store_path) as store:
        names = {vid: id_to_filename(vid) for vid in store.video_ids()}  # refuse before writing anything
        for vid, rows in tqdm(store.iter_videos(), total=len(store), disable=not progress, desc="export",
                              unit="video"):
            target = directory / names[vid]
            tmp = directory / f".{uuid.uuid4().hex}.tmp.npy"
            np.save(tmp, rows.astype(np.float32))
            os.replace(tmp, target)
            n += 1
    return n
