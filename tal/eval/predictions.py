"""Detections and the official ActivityNet results JSON.

File layout: ``{"version": ..., "results": {video_id: [{"label", "score", "segment": [start, end]}]},
"external_data": {...}}``.  Reading keeps each video's detections in file order, which matters because
score ties are broken by input order in :mod:`tal.eval.detection`.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter

import numpy as np

from tal.atomic import atomic_write_json
from tal.data.annotations import AnnotationError, read_json, to_float


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


def _fast_items(items) -> list[Detection]:
    """The common well-formed case without per-field checks; any problem is caught by the caller."""
    dets = [Detection(str(it["label"]), float(it["score"]), float(it["segment"][0]), float(it["segment"][1]))
            for it in items]
    if any(len(it["segment"]) != 2 or isinstance(it["score"], bool) for it in items):
        raise ValueError("malformed")
    start = np.fromiter(map(attrgetter("start"), dets), np.float64, count=len(dets))
    end = np.fromiter(map(attrgetter("end"), dets), np.float64, count=len(dets))
    score = np.fromiter(map(attrgetter("score"), dets), np.float64, count=len(dets))
    if not (np.isfinite(start).all() and np.isfinite(end).all() and np.isfinite(score).all()) or (end < start).any():
        raise ValueError("bad values")
    return dets


def load_predictions(path) -> dict[str, list[Detection]]:
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise PredictionError(f"{path}: field 'results' missing or not an object")
    preds: dict[str, list[Detection]] = {}
    for vid, items in data["results"].items():
        if not isinstance(items, list):
            raise PredictionError(f"{path}: video {vid!r}: expected a list of detections")
        try:
            dets = _fast_items(items)
        except (KeyError, TypeError, ValueError, IndexError):
            # Slow path only to name the offending item and field.
            dets = [_check_item(item, f"{path}: video {vid!r} field 'results[{i}]'") for i, item in enumerate(items)]
        preds[str(vid)] = dets
    return preds


def write_predictions(preds: dict[str, list[Detection]], path, external_data=None, version="stovtal") -> None:
    results = {
        vid: [{"label": d.label, "score": float(d.score), "segment": [float(d.start), float(d.end)]} for d in dets]
        for vid, dets in preds.items()
    }
    external = external_data if external_data is not None else {"used": False, "details": ""}
    atomic_write_json(path, {"version": version, "results": results, "external_data": external}, indent=None)
