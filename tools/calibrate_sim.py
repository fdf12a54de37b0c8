"""Measure the statistics the simulation (tal.sim) is calibrated on, on real data and on the simulation.

Real data (read from ../shared/data; the library never reads it):
- CLIP ViT-B/32 rows of a real ActivityNet video (v-iashin/video_features, every frame at 19.6 fps),
  resampled to the 30 fps / window 16 / stride 4 / frame_step 4 grid the way tal-extract samples it
  (mean of the window's 4 L2-normalised frame embeddings, L2-normalised): cosine of rows at lags 1..90,
  fitted by least squares to the background model 1 - w*min(L,4)/4 - f(1-e^-L/tf) - s(1-e^-L/ts);
- the same video at 5 fps, and a QVHighlights clip (CLIP ViT-B/32, 2 s rows, an edited video);
- snippets of the two unrelated videos; a real CLIP text query against its video's rows;
- the eigen-spectrum of within-video residuals (participation ratio, log-log slope);
- THUMOS14 annotations (ActionFormer json): instance lengths, per-class medians, coverage, classes/video.
Simulation (labelled SIMULATED): the same statistics, plus a linear actionness probe with temporal
context trained on base classes (row-level AP on base and on novel instances, curated and web test).

    .venv/bin/python tools/calibrate_sim.py [--data ../shared/data] [--seed 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from tal.sim import CURATED, SimConfig, make_world, simulate_split
from tal.sim import stats
from tal.sim.video import row_centres

LAGS = (1, 2, 3, 4, 6, 8, 11, 15, 20, 30, 38, 50, 60, 75, 90)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def emulate_grid(frames: np.ndarray, times_s: np.ndarray, fps=30.0, window=16, stride=4, step=4) -> np.ndarray:
    """Rows as tal-extract would make them from per-frame embeddings (nearest source frame per target frame)."""
    target = np.arange(0.0, times_s[-1], 1.0 / fps)
    nearest = np.abs(times_s[None, :] - target[:, None]).argmin(1)
    n = (len(target) - window) // stride + 1
    return unit(np.stack([frames[nearest[i * stride:i * stride + window:step]].mean(0) for i in range(n)]))


def fit_background(lags, cos):
    from scipy.optimize import least_squares  # tool-only dependency (scipy comes with scikit-learn)

    def model(p, L):
        w, f, tf, s, ts = p
        return 1 - w * np.minimum(L, 4) / 4 - f * (1 - np.exp(-L / tf)) - s * (1 - np.exp(-L / ts))

    L = np.asarray(lags, float)
    r = least_squares(lambda p: model(p, L) - cos, [0.01, 0.02, 4, 0.08, 75],
                      bounds=([0, 0, 0.5, 0, 10], [0.2, 0.3, 30, 0.5, 1000]))
    w, f, tf, s, ts = r.x
    return {"white_share": w, "fast_share": f, "fast_tau_s": tf * 4 / 30, "slow_share": s, "slow_tau_s": ts * 4 / 30,
            "plateau": 1 - w - f - s}


def spectrum(x):
    r = x - x.mean(0)
    ev = np.linalg.eigvalsh(r.T @ r)[::-1]
    ev = ev[ev > 1e-12]
    k = np.arange(1, 31)
    return {"participation_ratio": float(ev.sum() ** 2 / (ev ** 2).sum()),
            "loglog_slope_top30": float(np.polyfit(np.log(k), np.log(ev[:30]), 1)[0])}


def real_clip(data: Path) -> dict:
    feats = data / "real-features/v-iashin__video_features/features"
    allf = unit(np.load(feats / "v_GGSY1Qvo990_clip_ViT-B-32_allframes.npy"))
    allt = np.load(feats / "v_GGSY1Qvo990_clip_ViT-B-32_allframes_timestamps_ms.npy") / 1000.0
    five = unit(np.load(feats / "v_GGSY1Qvo990_clip_ViT-B-32_5fps.npy"))
    qv_dir = data / "real-features/sommaanny__AI-final-project/features"
    qv = unit(np.load(qv_dir / "clip_video_features/qtyBzFV9yTs_60.0_210.0.npz")["features"].astype(np.float64))
    text = unit(np.load(qv_dir / "clip_text_features/qid5263.npz")["pooler_output"].astype(np.float64))
    rows = emulate_grid(allf, allt)
    grid_lags = [stats.lag_cosine([rows], L) for L in LAGS]
    inside = np.zeros(len(qv), bool)
    inside[0:15] = inside[39:55] = True  # relevant windows [0, 30] and [78, 110] s, 2 s clips
    q_text = qv @ text
    return {
        "grid_lag_cosine": dict(zip(LAGS, grid_lags)),
        "background_fit": fit_background(LAGS, np.array(grid_lags)),
        "5fps_lag_cosine": {f"{L / 5:.1f}s": stats.lag_cosine([five], L) for L in (1, 5, 10, 25, 50)},
        "qvhighlights_lag_cosine": {f"{2 * L}s": stats.lag_cosine([qv], L) for L in (1, 5, 10, 20)},
        "qvhighlights_all_pairs": float((qv @ qv.T)[np.triu_indices(len(qv), 1)].mean()),
        "unrelated_videos": float((allf @ qv.T).mean()),
        "text_visual": {"inside_query_windows": float(q_text[inside].mean()),
                        "outside": float(q_text[~inside].mean()),
                        "unrelated_video": float((allf @ text).mean())},
        "residual_spectrum": {"ggsy_allframes": spectrum(allf), "qvhighlights": spectrum(qv)},
    }


def real_thumos(data: Path) -> dict:
    db = json.loads((data / "CSE499A--BBFormer/thumos14.json").read_text())["database"]
    lengths, per_class, coverage, n_classes, counts = [], {}, [], [], []
    for v in db.values():
        segs = [(a["segment"][0], a["segment"][1], a["label"]) for a in v["annotations"]]
        lengths += [e - s for s, e, _ in segs]
        for s, e, lab in segs:
            per_class.setdefault(lab, []).append(e - s)
        coverage.append(min(1.0, sum(e - s for s, e, _ in segs) / v["duration"]))
        n_classes.append(len({lab for _, _, lab in segs}))
        counts.append(len(segs))
    medians = [float(np.median(x)) for x in per_class.values()]
    return {"instance_length_pct_5_25_50_75_95": np.percentile(lengths, [5, 25, 50, 75, 95]).round(2).tolist(),
            "class_median_range": [min(medians), max(medians)],
            "within_class_log_std": float(np.mean([np.std(np.log(np.maximum(x, 0.1))) for x in per_class.values()])),
            "coverage_pct_25_50_75": np.percentile(coverage, [25, 50, 75]).round(3).tolist(),
            "share_one_class_videos": float(np.mean(np.array(n_classes) == 1)),
            "instances_per_video_median": float(np.median(counts))}


def context_features(r):
    c = np.cumsum(np.vstack([np.zeros((1, r.shape[1])), r]), 0)
    i = np.arange(len(r))

    def box(h):
        lo, hi = np.clip(i - h, 0, len(r)), np.clip(i + h + 1, 0, len(r))
        return (c[hi] - c[lo]) / (hi - lo)[:, None]
    m = r.mean(0)
    return np.hstack([box(2) - m, box(8) - box(32), box(32) - m])


def probe_data(world, rows, aset):
    X, y, novel = [], [], []
    for vid, r in rows.items():
        t = row_centres(world, len(r))
        lab, nov = np.zeros(len(r)), np.zeros(len(r), bool)
        for s in aset.videos[vid].segments:
            inside = (t >= s.start) & (t <= s.end)
            lab[inside], nov[inside] = 1, s.label in world.novel
        X.append(context_features(r))
        y.append(lab)
        novel.append(nov)
    return np.vstack(X), np.concatenate(y), np.concatenate(novel)


def simulated(seed: int) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(seed)
    quiet = replace(CURATED, p_empty=1.0, distractor_rate_per_min=0.0, shot_mean_s=1e9, duration_range_s=(40, 40))
    bg_world = make_world(SimConfig(seed=seed, curated=quiet))
    bg = list(simulate_split(bg_world, "curated", 12, "testing", "all")[0].values())
    world = make_world(SimConfig(seed=seed))
    train = simulate_split(world, "curated", 40, "training", "base")
    out = {"background_only_lag_cosine": {L: stats.lag_cosine(bg, L) for L in (1, 4, 15, 75)},
           "background_only_unrelated": stats.unrelated_cosine(bg, bg, rng)}
    tests = {d: simulate_split(world, d, 30, "testing", "all") for d in ("curated", "web")}
    X, y, _ = probe_data(world, *train)
    clf = LogisticRegression(C=0.1, max_iter=300).fit(X, y)
    for dom, (rows, aset) in tests.items():
        v = list(rows.values())
        pooled, labels = stats.pooled_segments(rows, aset, lambda n: row_centres(world, n))
        lengths = [s.length for vv in aset.videos.values() for s in vv.segments]
        Xt, yt, nv = probe_data(world, rows, aset)
        p = clf.predict_proba(Xt)[:, 1]
        probe = {}
        for part, m in (("base", (yt == 1) & ~nv), ("novel", (yt == 1) & nv)):
            sel = (yt == 0) | m
            probe[part] = float(average_precision_score(yt[sel], p[sel])) if m.any() else float("nan")
        out[dom] = {
            "lag_cosine": {L: stats.lag_cosine(v, L) for L in (1, 4, 15, 75)},
            "far_30s": stats.far_cosine(v, 225, rng),
            "unrelated": stats.unrelated_cosine(v, v, rng),
            "zero_shot_all": stats.text_match(pooled, labels, world.class_names, world.text),
            "zero_shot_novel": stats.text_match(pooled, labels, world.class_names, world.text, world.novel),
            "instance_length_pct_5_50_95": np.percentile(lengths, [5, 50, 95]).round(2).tolist(),
            "coverage": sum(lengths) / sum(vv.duration for vv in aset.videos.values()),
            "linear_probe_row_AP_trained_on_base": probe,
        }
    out["cross_domain_unrelated"] = stats.unrelated_cosine(list(tests["curated"][0].values()),
                                                           list(tests["web"][0].values()), rng)
    return out


def show(title, d, indent=2):
    print(" " * (indent - 2) + title)
    for k, v in d.items():
        if isinstance(v, dict):
            show(f"{k}:", v, indent + 2)
        else:
            print(" " * indent + f"{k}: {np.round(v, 4).tolist() if isinstance(v, (list, float)) else v}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    report = {}
    if (args.data / "real-features").is_dir():
        report["real_clip"] = real_clip(args.data)
        report["real_thumos14"] = real_thumos(args.data)
        show("REAL CLIP ViT-B/32 features:", report["real_clip"])
        show("REAL THUMOS14 annotations:", report["real_thumos14"])
    else:
        print(f"real data not found under {args.data}; printing the simulation only")
    report["simulated"] = simulated(args.seed)
    show(f"SIMULATED (tal.sim, seed {args.seed}):", report["simulated"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
