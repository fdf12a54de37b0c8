"""PNG figures for evaluation results (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tal.data.annotations import AnnotationSet  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_map_vs_tiou(result: dict, path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    groups = [g for g in ("all", "base", "novel") if g in result] or [None]
    for g in groups:
        r = result if g is None else result[g]
        ax.plot(result["tiou_thresholds"], 100 * np.asarray(r["mAP"], float), marker="o",
                label=f"{g or 'all'} (avg {100 * r['average_mAP']:.2f})")
    ax.set_xlabel("tIoU threshold")
    ax.set_ylabel("mAP (%)")
    ax.set_title("mAP vs tIoU")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, Path(path))


def plot_per_class(result: dict, path) -> Path:
    items = sorted(result["per_class"].items(), key=lambda kv: -float(np.mean(kv[1])))
    novel = set(result["novel"]["per_class"]) if "novel" in result and "base" in result else set()
    names = [c for c, _ in items]
    values = [100 * float(np.mean(ap)) for _, ap in items]
    height = max(3.0, 0.22 * len(names) + 1)
    fig, ax = plt.subplots(figsize=(7, height))
    colors = ["tab:orange" if c in novel else "tab:blue" for c in names]
    ax.barh(range(len(names)), values, color=colors)
    ax.set_yticks(range(len(names)), names, fontsize=7 if len(names) > 40 else 9)
    ax.invert_yaxis()
    ax.set_xlabel("AP (%) averaged over tIoU thresholds")
    ax.set_title("per-class AP" + (" (orange: novel)" if novel else ""))
    return _save(fig, Path(path))


def plot_timeline(gt: AnnotationSet, preds, video_id: str, path, top_k: int = 10) -> Path:
    """Ground truth (one row per class) against the video's top-scoring detections (one row each)."""
    video = gt.videos.get(video_id)
    segments = video.segments if video else []
    gt_labels = sorted({s.label for s in segments})
    dets = sorted(preds.get(video_id, []), key=lambda d: -d.score)[:top_k]
    rows = len(gt_labels) + len(dets)
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.3 * max(rows, 1)))
    for s in segments:
        ax.barh(gt_labels.index(s.label), s.end - s.start, left=s.start, color="tab:green", alpha=0.8)
    for i, d in enumerate(dets):
        row = len(gt_labels) + i
        color = "tab:blue" if d.label in gt_labels else "tab:red"
        ax.barh(row, d.end - d.start, left=d.start, color=color, alpha=0.3 + 0.7 * min(max(d.score, 0.0), 1.0))
        ax.text(d.start, row, f" {d.label} {d.score:.2f}", fontsize=6, va="center")
    ax.set_yticks(range(rows), [f"GT {c}" for c in gt_labels] + [f"#{i}" for i in range(1, len(dets) + 1)],
                  fontsize=7)
    ax.invert_yaxis()
    if video is not None and np.isfinite(video.duration):
        ax.set_xlim(0, video.duration)
    ax.set_xlabel("time (s)")
    ax.set_title(f"{video_id}: ground truth (green) vs top-{len(dets)} detections (red: label not in GT)")
    return _save(fig, Path(path))


def write_plots(result: dict, out_dir, gt: AnnotationSet | None = None, preds=None, videos=()) -> list[Path]:
    out_dir = Path(out_dir)
    paths = [plot_map_vs_tiou(result, out_dir / "map_vs_tiou.png"), plot_per_class(result, out_dir / "per_class_ap.png")]
    for vid in videos:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in vid)
        paths.append(plot_timeline(gt, preds or {}, vid, out_dir / f"timeline_{safe}.png"))
    return paths
