"""The on-disk encoding shared by both backends: index rows, the id blob and the metadata log.

Every store holds four growable 1-D/2-D arrays whose committed prefix is named by one commit record:
  rows  [R, D]      the feature rows of all videos, back to back (ragged)
  index [V, 11]     float64 per video: see COLUMNS (exact for integers below 2**53); format 1 had 10 columns
                    (no crc32)
  ids   [B] uint8   the UTF-8 ids, back to back; index column id_end marks where each ends
  log   [L] uint8   append-only records: failures and vocabularies (header JSON + payload)
"""

from __future__ import annotations

import json
import math
import struct
import zlib

import numpy as np

from .model import Grid, StoreError, VideoInfo, Vocabulary

COLUMNS = ("offset", "length", "src_fps", "duration", "num_frames",
           "grid_fps", "window", "stride", "frame_step", "id_end", "crc32")
NCOL = len(COLUMNS)
C = {name: i for i, name in enumerate(COLUMNS)}
COMMIT_KEYS = ("videos", "rows", "id_bytes", "log_bytes")
# Format 2 adds the crc32 column: a checksum of each video's stored row bytes, so that lost or damaged row data is
# found (tal-store validate --deep, convert, merge). Format-1 stores still open and append, without checksums.
FORMAT_VERSION = 2
SUPPORTED_FORMATS = (1, 2)


def index_width(format_version: int) -> int:
    """Columns of the index array in a store of this format."""
    return NCOL if format_version >= 2 else C["crc32"]


def rows_checksum(rows: np.ndarray) -> int:
    """crc32 of a video's rows as stored (little-endian bytes of the store dtype)."""
    data = np.ascontiguousarray(rows, dtype=rows.dtype.newbyteorder("<"))
    return zlib.crc32(memoryview(data).cast("B")) if data.size else 0


def encode_id(vid) -> bytes:
    if not isinstance(vid, str) or vid == "":
        raise StoreError(f"video id must be a non-empty string, got {vid!r}")
    try:
        return vid.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise StoreError(f"video id {vid!r} is not valid unicode: {exc.reason}") from None


def decode_ids(blob: bytes, ends: np.ndarray) -> list[str]:
    out, start = [], 0
    for end in ends.astype(np.int64).tolist():
        out.append(blob[start:end].decode("utf-8"))
        start = end
    return out


def index_row(offset: int, info: VideoInfo, id_end: int, crc32: int) -> np.ndarray:
    g = info.grid
    return np.array([offset, info.num_rows, info.fps, info.duration, info.num_frames,
                     g.fps, g.window, g.stride, g.frame_step, id_end, crc32], dtype=np.float64)


def info_from_row(row: np.ndarray) -> VideoInfo:
    grid = Grid(fps=float(row[C["grid_fps"]]), window=int(row[C["window"]]),
                stride=int(row[C["stride"]]), frame_step=int(row[C["frame_step"]]))
    return VideoInfo(num_rows=int(row[C["length"]]), fps=float(row[C["src_fps"]]),
                     duration=float(row[C["duration"]]), num_frames=int(row[C["num_frames"]]), grid=grid)


def check_info(info: VideoInfo, rows_len: int, where: str) -> None:
    if not isinstance(info, VideoInfo):
        raise StoreError(f"{where}: info must be a VideoInfo, got {type(info).__name__}")
    if info.num_rows != rows_len:
        raise StoreError(f"{where}: info.num_rows={info.num_rows} but {rows_len} rows given")
    g = info.grid
    if not (math.isfinite(g.fps) and g.fps > 0 and g.window >= 1 and g.stride >= 1 and g.frame_step >= 1):
        raise StoreError(f"{where}: invalid grid {g.to_dict()}")


# --- the metadata log: [u32 header length][header JSON][payload] -----------------------------------

_LEN = struct.Struct("<I")


def failure_record(vid: str, reason: str) -> bytes:
    return _record({"kind": "failure", "id": vid, "reason": str(reason)}, b"")


def vocabulary_record(vocab: Vocabulary) -> bytes:
    emb = np.ascontiguousarray(vocab.embeddings, dtype="<f4")
    header = {"kind": "vocabulary", "name": vocab.name, "classes": list(vocab.classes),
              "template": vocab.template, "provenance": vocab.provenance, "shape": list(emb.shape)}
    return _record(header, emb.tobytes())


def _record(header: dict, payload: bytes) -> bytes:
    head = json.dumps({**header, "payload": len(payload)}, ensure_ascii=False).encode("utf-8")
    return _LEN.pack(len(head)) + head + payload


def parse_log(blob: bytes, where: str):
    """Yield (header, payload) for each record of a committed log."""
    pos = 0
    while pos < len(blob):
        if pos + _LEN.size > len(blob):
            raise StoreError(f"{where}: metadata log truncated at byte {pos}")
        (n,) = _LEN.unpack_from(blob, pos)
        head_end = pos + _LEN.size + n
        try:
            header = json.loads(blob[pos + _LEN.size:head_end].decode("utf-8"))
        except ValueError:
            raise StoreError(f"{where}: metadata log record at byte {pos} is corrupt") from None
        end = head_end + int(header.get("payload", 0))
        if end > len(blob):
            raise StoreError(f"{where}: metadata log record at byte {pos} is truncated")
        yield header, blob[head_end:end]
        pos = end


def vocabulary_from_record(header: dict, payload: bytes) -> Vocabulary:
    emb = np.frombuffer(payload, dtype="<f4").reshape(header["shape"]).astype(np.float32)
    return Vocabulary(name=header["name"], classes=list(header["classes"]), embeddings=emb,
                      template=header.get("template"), provenance=dict(header.get("provenance") or {}))
