"""Detections and the official ActivityNet results JSON.

File layout: ``{"version": ..., "results": {video_id: [{"label", "score", "segment": [start, end]}]},
"external_data": {...}}``.  Reading keeps each video's detections in file order, which matters because
score ties are broken by input order in :mod:`tal.eval.detection`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tal.atomic import atomic_write_json
from tal.data.annotations import AnnotationError, paused_gc, read_json, to_float


class PredictionError(AnnotationError):
    """A bad predictions file; one line naming the file and the video/field."""


@dataclass(slots=True)  # slots: hundreds of thousands of these per results file
class Detection:
    label: str
    score: float
    start: float
    end: float


def _check_item(item, where: str) -> Detection:
    """Validate one detection; raises the one-line error naming the field at fault."""
    if not isinstance(item, dict) or not all(k in item for k in ("label", "score", "segment")):
        raise PredictionError(f"{where}: needs 'label', 'score' and 'segment'")
    segment = item["segment"]
    if not isinstance(segment, (list, tuple)) or len(segment) != 2:
        raise PredictionError(f"{where}: 'segment' must be [start, end], got {segment!r}")
    start, end = to_float(segment[0], where + " segment"), to_float(segment[1], where + " segment")
    if end < start:
        raise PredictionError(f"{where}: segment end {end} < start {start}")
    return Detection(str(item["label"]), to_float(item["score"], where + " score"), start, end)


def _fast_results(results: dict) -> dict[str, list[Detection]]:
    """Every video at once for the common well-formed file: numbers that are JSON numbers, two-number segments.

    Raises (TypeError, ValueError, ...) on anything else; the caller then checks video by video to name it."""
    counts, labels, scores, segments = [], [], [], []
    for items in results.values():
        if type(items) is not list:
            raise TypeError("not a list")
        counts.append(len(items))
        labels += [it["label"] for it in items]
        scores += [it["score"] for it in items]
        segments += [it["segment"] for it in items]
    if not set(map(type, scores)) <= {float, int} or not set(map(type, segments)) <= {list}:
        raise TypeError("unusual types")
    score = np.array(scores, np.float64)
    seg = np.array(segments, np.float64).reshape(len(segments), 2)  # ragged or non-numeric: ValueError
    if not (np.isfinite(seg).all() and np.isfinite(score).all()) or (seg[:, 1] < seg[:, 0]).any():
        raise ValueError("bad values")
    dets = list(map(Detection, map(str, labels), score.tolist(), seg[:, 0].tolist(), seg[:, 1].tolist()))
    ends = np.cumsum(counts).tolist()
    return {str(vid): dets[end - n:end] for vid, n, end in zip(results, counts, ends)}


def load_predictions(path) -> dict[str, list[Detection]]:
    """Read an official results JSON (plain or gzip-compressed)."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise PredictionError(f"{path}: field 'results' missing or not an object")
    with paused_gc():  # hundreds of thousands of Detections hold no cycles
        try:
            return _fast_results(data["results"])
        except (KeyError, TypeError, ValueError, IndexError):
            pass
        # Slow path only to name the offending video, item and field.
        preds: dict[str, list[Detection]] = {}
        for vid, items in data["results"].items():
            if not isinstance(items, list):
                raise PredictionError(f"{path}: video {vid!r}: expected a list of detections")
            preds[str(vid)] = [_check_item(item, f"{path}: video {vid!r} field 'results[{i}]'")
                               for i, item in enumerate(items)]
        return preds


def write_predictions(preds: dict[str, list[Detection]], path, external_data=None, version="stovtal") -> None:
    results = {
        vid: [{"label": d.label, "score": float(d.score), "segment": [float(d.start), float(d.end)]} for d in dets]
        for vid, dets in preds.items()
    }
    external = external_data if external_data is not None else {"used": False, "details": ""}
    atomic_write_json(path, {"version": version, "results": results, "external_data": external}, indent=None)
