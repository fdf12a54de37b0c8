"""Plain-text tables for evaluation results (what ``tal-eval`` prints)."""

from __future__ import annotations

import math


def strict_json(obj):
    """Replace nan/inf floats by None (strict JSON has no NaN; empty breakdown bins have no mAP)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def _pct(x) -> str:
    return "   -  " if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:6.2f}"


def _header(thresholds, first: str, width: int) -> str:
    cols = "".join(f"  {t:>6.2f}" for t in thresholds)
    return f"{first:<{width}}{cols}     Avg"


def _row(name: str, m_ap, avg, width: int) -> str:
    return f"{name:<{width}}" + "".join(f"  {_pct(m)}" for m in m_ap) + f"  {_pct(avg)}"


def format_result(result: dict, title: str | None = None) -> str:
    """Table of mAP (%) per tIoU threshold; rows per class group and breakdown bin when present."""
    thresholds = result["tiou_thresholds"]
    width = 22
    lines = [title] if title else []
    lines.append(_header(thresholds, "mAP (%) @ tIoU", width))
    groups = [g for g in ("all", "base", "novel") if g in result]
    if groups:
        for g in groups:
            r = result[g]
            lines.append(_row(f"{g} ({r['num_classes']} classes)", r["mAP"], r["average_mAP"], width))
    else:
        lines.append(_row(f"all ({len(result['per_class'])} classes)", result["mAP"], result["average_mAP"], width))
    breakdown = result.get("breakdown")
    if breakdown:
        lines.append(f"-- normalised mAP_N (DETAD, N={breakdown['normalized_to']:.1f}), {breakdown['bins']} bins --")
        overall = breakdown["overall"]
        lines.append(_row("all instances", overall["mAP"], overall["average_mAP"], width))
        for name, title_ in (("length", "action length"), ("instances", "instances/video")):
            lines.append(f"-- by {title_} --")
            for label, cell in breakdown[name].items():
                lo, hi = cell["range"]
                span = f"({lo:g},{hi:g}]" if hi is not None else f">{lo:g}"
                lines.append(_row(f"{label:<3}{span} n={cell['num_gt']}", cell["mAP"], cell["average_mAP"], width))
    notes = []
    if result.get("ignored_predictions"):
        notes.append(f"{result['ignored_predictions']} prediction(s) with labels outside the vocabulary ignored")
    if result.get("unmatched_video_predictions"):
        notes.append(f"{result['unmatched_video_predictions']} prediction(s) on videos without ground truth (FP)")
    if result.get("missing_classes"):
        notes.append(f"no ground truth for: {', '.join(result['missing_classes'])}")
    lines.extend(f"note: {n}" for n in notes)
    return "\n".join(lines)


def format_per_class(result: dict, limit: int | None = None) -> str:
    """Per-class average AP over thresholds, best first."""
    items = sorted(result["per_class"].items(), key=lambda kv: -sum(kv[1]) / len(kv[1]))
    if limit:
        items = items[:limit]
    width = max((len(c) for c, _ in items), default=5) + 2
    return "\n".join(f"{c:<{width}}{_pct(sum(ap) / len(ap))}" for c, ap in items)


def format_summary(summary: dict) -> str:
    """mean ± std (sample) over splits."""
    thresholds = summary["tiou_thresholds"]
    width = 10
    lines = [f"over {len(summary['splits'])} splits: {', '.join(summary['splits'])}",
             f"{'mAP (%)':<{width}}" + "".join(f"  {t:>13.2f}" for t in thresholds) + "            Avg"]
    for g in ("all", "base", "novel"):
        if g not in summary:
            continue
        s = summary[g]
        cells = "".join(f"  {100 * m:6.2f}±{100 * d:5.2f}" for m, d in zip(s["mAP"]["mean"], s["mAP"]["std"]))
        avg = s["average_mAP"]
        lines.append(f"{g:<{width}}{cells}  {100 * avg['mean']:6.2f}±{100 * avg['std']:5.2f}")
    return "\n".join(lines)
