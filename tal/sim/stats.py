"""Statistics of feature rows, computed the same way on real CLIP rows and on simulated ones.

Used by ``tools/calibrate_sim.py`` (to fit and report the simulation's constants) and by the tests (to keep
the simulation inside the calibrated ranges).
"""

from __future__ import annotations

import numpy as np


def lag_cosine(videos: list[np.ndarray], lag: int) -> float:
    """Mean cosine of rows ``lag`` apart within a video (rows L2-normalised)."""
    vals = [np.sum(r[lag:] * r[:-lag], axis=1) for r in videos if len(r) > lag]
    return float(np.mean(np.concatenate(vals))) if vals else float("nan")


def far_cosine(videos: list[np.ndarray], min_lag: int, rng: np.random.Generator, pairs: int = 200) -> float:
    """Mean cosine of random row pairs at least ``min_lag`` rows apart within a video."""
    vals = []
    for r in videos:
        if len(r) <= min_lag:
            continue
        i = rng.integers(0, len(r) - min_lag, size=pairs)
        j = rng.integers(i + min_lag, len(r))
        vals.append(np.sum(r[i] * r[j], axis=1))
    return float(np.mean(np.concatenate(vals))) if vals else float("nan")


def unrelated_cosine(videos_a: list[np.ndarray], videos_b: list[np.ndarray], rng: np.random.Generator,
                     pairs: int = 2000) -> float:
    """Mean cosine of random rows of two different videos (``a[i]`` against ``b[j]``, i != j when the lists
    are the same)."""
    same = videos_a is videos_b
    vals = []
    for _ in range(pairs):
        i = int(rng.integers(len(videos_a)))
        j = int(rng.integers(len(videos_b)))
        if same and i == j:
            continue
        a, b = videos_a[i], videos_b[j]
        vals.append(float(a[rng.integers(len(a))] @ b[rng.integers(len(b))]))
    return float(np.mean(vals))


def pooled_segments(rows: dict[str, np.ndarray], aset, centres_fn) -> tuple[np.ndarray, list[str]]:
    """L2-normalised mean of the rows whose centres fall inside each annotated segment, and its label."""
    feats, labels = [], []
    for vid, video in aset.videos.items():
        r = rows[vid]
        t = centres_fn(len(r))
        for seg in video.segments:
            inside = (t >= seg.start) & (t <= seg.end)
            if not inside.any():
                inside[np.argmin(np.abs(t - 0.5 * (seg.start + seg.end)))] = True
            m = r[inside].astype(np.float64).mean(0)
            feats.append(m / np.linalg.norm(m))
            labels.append(seg.label)
    return np.array(feats).reshape(-1, rows[next(iter(rows))].shape[1] if rows else 0), labels


def text_match(pooled: np.ndarray, labels: list[str], class_names: list[str], text: np.ndarray,
               restrict: list[str] | None = None) -> dict:
    """Zero-shot top-1 of pooled instance features over the text embeddings, and the mean cosine to the
    matching and to the other class names.  ``restrict``: rank only these classes (e.g. the novel ones)."""
    names = list(restrict) if restrict is not None else list(class_names)
    idx = [class_names.index(n) for n in names]
    keep = [i for i, lab in enumerate(labels) if lab in names]
    if not keep:
        return {"top1": float("nan"), "match_cos": float("nan"), "other_cos": float("nan"), "n": 0}
    sims = pooled[keep] @ text[idx].T
    truth = np.array([names.index(labels[i]) for i in keep])
    match = sims[np.arange(len(keep)), truth]
    other = (sims.sum(1) - match) / max(len(names) - 1, 1)
    return {"top1": float(np.mean(sims.argmax(1) == truth)), "match_cos": float(match.mean()),
            "other_cos": float(other.mean()), "chance": 1.0 / len(names), "n": len(keep)}
