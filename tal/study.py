"""`make study`: the self-training study on the SIMULATED benchmark (no time limit; reports its run time).

    python -m tal.study --out study_out [--seeds 0,1,2] [--scale 0,250,1000,4000] [--taus 0.01,0.05,0.1,0.2,0.4]

1. For each seed: the demo's setting (tal.sim preset ``small``) — stage 2 against stage 1 on novel mAP
   (generalized and novel-only), base mAP and cross-domain mAP; mean ± std over the seeds.
2. Scaling (first seed): novel mAP of stage 2 trained with the first N unlabelled web videos, N over
   ``--scale`` (N = 0 is stage 1). Stage 1 and its pseudo-labels are shared; only stage 2 is retrained.
3. τ sweep (first seed, ``--sweep-videos`` web videos): stage 2 with pseudo-labels filtered at each τ; the
   model is run once at the smallest τ and the file re-filtered (exact, see ``tal.pseudo.refilter``).
4. Ceilings (every seed): what self-training could give at best on this simulation — stage 2 trained on
   *perfect* pseudo-labels (the web videos' hidden truth, same videos and compute), and a stage 1 trained with
   human labels for every class, novel ones included (a new simulated curated set of the same size).

Stage 2 trains for the same number of iterations whatever N (the preset's epochs over labelled +
``--budget-videos`` clips) and with the same labelled : pseudo mix (that of ``--budget-videos`` web videos), so
the scaling curve measures more unlabelled videos at fixed compute and mix. Everything resumes, and
each seed's part can run in its own process (``--only-seed S``) before the plain command collects them.
Writes ``study.json``, ``study.txt`` and ``study_*.png``; every figure is labelled SIMULATED.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import click
import numpy as np

from features.cli_support import Command
from tal.atomic import atomic_write_json
from tal.pseudo import pseudo_label_quality, pseudo_label_store, refilter
from tal.selftrain import SIMULATED_NOTE, evaluate_stage, run_selftrain, summarize, train_stage

log = logging.getLogger("tal.study")

HEADLINES = [("novel (generalized)", ("generalized", "novel")), ("novel-only", ("novel_only",)),
             ("base (generalized)", ("generalized", "base")), ("all (generalized)", ("generalized", "all")),
             ("cross-domain (web)", ("cross_domain",))]


def _get(summary: dict, keys) -> float:
    v = summary
    for k in keys:
        v = v[k]
    return float(v)


def stage2_variant(base_cfg, out: Path, stage1: Path, pseudo_file: Path, progress: bool,
                   fixed: tuple[float, int] | None = None) -> dict:
    """Train + evaluate one stage-2 variant (resumable: skipped when its eval.json exists). ``fixed`` =
    (pseudo-labelled fraction, clips per epoch) pins the mix and the compute to the main comparison's."""
    import json

    eval_path = out / "eval.json"
    if not eval_path.exists():
        extra = [] if fixed is None else [f"data.pseudo_ratio={fixed[0]}", f"data.epoch_clips={fixed[1]}"]
        cfg = dataclasses.replace(base_cfg, later_overrides=list(base_cfg.later_overrides) + extra)
        ckpt = train_stage(cfg, out, [pseudo_file], stage1, progress)
        atomic_write_json(eval_path, evaluate_stage(ckpt, cfg))
    return summarize(json.loads(eval_path.read_text()))


def run_study(out, seeds=(0, 1, 2), scale=(0, 250, 1000, 4000), taus=(0.01, 0.05, 0.1, 0.2, 0.4),
              sweep_videos: int = 1000, budget_videos: int = 400, progress: bool = True, overrides=(),
              counts: dict | None = None) -> dict:
    """Run (or resume) the study; ``overrides`` (tal-train --set items) and ``counts`` (other simulated
    curated_train / curated_test / web_test sizes) exist for quick smoke runs."""
    out = Path(out)
    start = time.time()
    result: dict = {"simulated": True, "note": SIMULATED_NOTE, "seeds": list(seeds), "scale": list(scale),
                    "taus": list(taus), "budget_videos": budget_videos, "per_seed": {}}
    for seed in seeds:
        part = run_seed(out, seed, seeds, scale, taus, sweep_videos, budget_videos, progress, overrides, counts)
        for key in ("scaling", "tau_sweep", "pseudo_mix", "epoch_clips"):
            if key in part:
                result[key] = part.pop(key)
        result["per_seed"][seed] = part
        atomic_write_json(out / "study.json", result)
    result["summary"] = _summary(result)
    result["elapsed_s"] = round(time.time() - start, 1)
    result["elapsed_note"] = "this command's wall time; parts finished earlier (resumed, --only-seed) not included"
    atomic_write_json(out / "study.json", result)
    (out / "study.txt").write_text(format_study(result) + "\n")
    plot_study(result, out)
    return result


def run_seed(out, seed: int, seeds, scale, taus, sweep_videos: int, budget_videos: int, progress: bool = True,
             overrides=(), counts: dict | None = None) -> dict:
    """One seed's part of the study (resumable; cached in ``out/seed<S>/part.json``). The first seed of
    ``seeds`` also runs the scaling curve and the τ sweep, over a larger web store."""
    import json

    from tal.demo import selftrain_config, simulate

    out = Path(out)
    run = out / f"seed{seed}"
    done = run / "part.json"
    if done.exists():
        return json.loads(done.read_text())
    first = seed == list(seeds)[0]
    n_web = max(max(scale), sweep_videos, budget_videos) if first else budget_videos
    paths = simulate(out / f"data_seed{seed}", seed, dict(counts or {}, web=n_web), progress)
    # 1. the demo's comparison; stage 2 sees the first budget_videos web videos.
    cfg = selftrain_config(paths, seed, overrides=overrides)
    if first:
        # The first seed's web store is larger: stage 1 + pseudo-labels run over all of it once, shared.
        report, part, main_pl = _first_seed(cfg, run, paths, scale, taus, sweep_videos, budget_videos, progress)
        stage1 = run / "stage1_only" / "stage1" / "last.pt"
    else:
        report, part = run_selftrain(cfg, run, progress=progress), {}
        stage1, main_pl = run / "stage1" / "last.pt", run / "pseudo_round1.json"
        report["stage2"]["pseudo_quality"] = pseudo_label_quality(main_pl, paths["web_annotations"])
    part.update(stage1=report["stage1"], stage2=report["stage2"], pseudo_labels=report["counts"]["pseudo_labels"],
                pseudo_quality=report["stage2"]["pseudo_quality"])
    part["ceilings"] = _ceilings(cfg, run, paths, out / f"data_seed{seed}_all_classes", seed, stage1, main_pl,
                                 counts, progress)
    atomic_write_json(done, part)
    return part


def oracle_pseudo_labels(gt_path, like, out) -> Path:
    """The hidden truth of the videos of pseudo-label file ``like``, written as perfect pseudo-labels."""
    from tal.data.annotations import AnnotationSet, Segment, VideoAnnotation, load_annotations, write_official

    gt = load_annotations(gt_path)
    videos = {}
    for vid in load_annotations(like).videos:
        v = gt.videos[vid]
        videos[vid] = VideoAnnotation(vid, v.subset, v.duration, v.fps,
                                      [Segment(s.start, s.end, "action", 1.0, True) for s in v.segments])
    aset = AnnotationSet(videos, {"simulated": True, "oracle": True, "source": str(gt_path),
                                  "videos": len(videos), "segments": sum(len(v.segments) for v in videos.values())})
    write_official(aset, out)
    return Path(out)


def _ceilings(cfg, run: Path, paths, all_dir: Path, seed: int, stage1: Path, main_pl: Path, counts,
              progress) -> dict:
    """The best self-training could do here: (a) stage 2 on perfect pseudo-labels, same videos and compute;
    (b) stage 1 with human labels for every class (a simulated curated set of the same size, all classes)."""
    import json

    from tal.demo import DEMO_PRESET
    from tal.sim import preset, write_benchmark

    oracle = run / "pseudo_oracle.json"
    if not oracle.exists():
        oracle_pseudo_labels(paths["web_annotations"], main_pl, oracle)
    result = {"stage2_oracle": stage2_variant(cfg, run / "stage2_oracle", stage1, oracle, progress)}
    sim_cfg, default = preset(DEMO_PRESET, seed)
    all_paths = write_benchmark(all_dir, sim_cfg, n_curated_train=(counts or {}).get("curated_train",
                                                                                     default.curated_train),
                                n_web_unlabeled=0, n_curated_test=0, n_web_test=0, labelled_classes="all",
                                progress=progress)
    eval_path = run / "stage1_all_classes" / "eval.json"
    if not eval_path.exists():
        all_cfg = dataclasses.replace(cfg, labeled_features=[str(all_paths["curated_train_store"])],
                                      labeled_annotations=[str(all_paths["curated_train_annotations"])], classes="all")
        ckpt = train_stage(all_cfg, run / "stage1_all_classes", [], None, progress)
        atomic_write_json(eval_path, evaluate_stage(ckpt, cfg))
    result["stage1_all_classes"] = summarize(json.loads(eval_path.read_text()))
    return result


def _first_seed(cfg, run: Path, paths, scale, taus, sweep_videos, budget_videos, progress):
    """Stage 1 once, pseudo-labels once at the smallest τ, then every stage-2 variant from re-filtered files.
    Returns (the demo-like report, {"scaling", "tau_sweep"}, the main variant's pseudo-label file)."""
    import json

    state_cfg = dataclasses.replace(cfg, rounds=0)  # stage 1 (+ its evaluation) only
    stage1_report = run_selftrain(state_cfg, run / "stage1_only", progress=progress)
    stage1 = run / "stage1_only" / "stage1" / "last.pt"
    labelled = stage1_report["counts"]["labeled_videos"]
    tau_min = min(list(taus) + [cfg.filter.threshold])
    raw = run / f"pseudo_all_tau{tau_min}.json"
    if not raw.exists():
        pseudo_label_store(cfg.unlabeled_features, stage1, raw, dataclasses.replace(cfg.filter, threshold=tau_min),
                           progress=progress)

    # Every variant keeps the main comparison's epochs, clips per epoch and labelled : pseudo mix (the natural
    # proportion of budget_videos web videos), so N changes only how many different web videos the pseudo clips
    # come from. (With the natural proportion, N = 4,000 would see each labelled video 8x less often.)
    fixed = (budget_videos / (labelled + budget_videos), labelled + budget_videos)

    def variant(tau: float, n: int) -> dict:
        name = f"stage2_n{n}_tau{tau}" + ("" if n == budget_videos else f"_mix{fixed[0]:.3f}_clips{fixed[1]}")
        pl = run / f"pseudo_n{n}_tau{tau}.json"
        if not pl.exists():
            refilter(raw, pl, dataclasses.replace(cfg.filter, threshold=tau), limit=n)
        summary = stage2_variant(cfg, run / name, stage1, pl, progress, None if n == budget_videos else fixed)
        summary["pseudo_labels"] = json.loads(pl.read_text())["provenance"]["segments"]
        summary["pseudo_quality"] = pseudo_label_quality(pl, paths["web_annotations"])
        return summary

    main = variant(cfg.filter.threshold, budget_videos)
    part = {"scaling": {0: stage1_report["stage1"]}, "pseudo_mix": fixed[0], "epoch_clips": fixed[1]}
    for n in scale:
        if n > 0:
            part["scaling"][n] = variant(cfg.filter.threshold, n)
    part["tau_sweep"] = {tau: variant(tau, sweep_videos) for tau in taus}
    report = {"stage1": stage1_report["stage1"], "stage2": main, "counts": {
        "labeled_videos": labelled, "pseudo_labels": {"round1.pseudo": main["pseudo_labels"]}}}
    return report, part, run / f"pseudo_n{budget_videos}_tau{cfg.filter.threshold}.json"


COLUMNS = [("stage1", "stage 1"), ("stage2", "stage 2"), ("delta", "Δ (2-1)"),
           ("stage2_oracle", "stage 2, perfect PL"), ("stage1_all_classes", "stage 1, all labels")]


def _summary(result: dict) -> dict:
    """Mean ± std over seeds per headline protocol, for both stages, their difference and the ceilings."""
    def stat(values) -> dict:
        v = np.array(values, np.float64)
        return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}

    out = {}
    seeds = list(result["per_seed"].values())
    for label, keys in HEADLINES:
        rows = {stage: stat([_get(r[stage], keys) for r in seeds]) for stage in ("stage1", "stage2")}
        rows["delta"] = stat([_get(r["stage2"], keys) - _get(r["stage1"], keys) for r in seeds])
        for ceiling in ("stage2_oracle", "stage1_all_classes"):
            if all("ceilings" in r for r in seeds):
                rows[ceiling] = stat([_get(r["ceilings"][ceiling], keys) for r in seeds])
        out[label] = rows
    return out


def format_study(result: dict) -> str:
    lines = [f"Self-training study — {SIMULATED_NOTE}",
             f"seeds {result['seeds']}; average mAP (%) mean ± std over seeds; ceilings: stage 2 trained on perfect "
             "pseudo-labels (the web videos' hidden truth), stage 1 trained with labels for every class", ""]
    columns = [(k, name) for k, name in COLUMNS if k in next(iter(result["summary"].values()))]
    head = f"{'protocol':<22}" + "".join(f"{name:>21}" for _, name in columns)
    lines += [head, "-" * len(head)]
    for label, row in result["summary"].items():
        cell = lambda r: f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}"  # noqa: E731
        lines.append(f"{label:<22}" + "".join(f"{cell(row[k]):>21}" for k, _ in columns))
    if "scaling" in result:
        mix = f", {100 * result['pseudo_mix']:.0f} % pseudo-labelled clips" if "pseudo_mix" in result else ""
        lines += ["", f"scaling (seed {result['seeds'][0]}; stage 2 at fixed compute{mix}): "
                      "novel (gen.) / novel-only / base / cross-domain mAP over unlabelled videos"]
        for n, s in sorted(result["scaling"].items(), key=lambda kv: int(kv[0])):
            lines.append(f"  N = {int(n):>6}: " + " / ".join(f"{100 * _get(s, keys):6.2f}" for keys in (
                ("generalized", "novel"), ("novel_only",), ("generalized", "base"), ("cross_domain",))))
    if "tau_sweep" in result:
        lines += ["", f"τ sweep (seed {result['seeds'][0]}): novel (gen.) / novel-only / base / cross-domain mAP; "
                      "pseudo-labels: count, precision@0.5, recall@0.5 against the hidden web truth"]
        for tau, s in sorted(result["tau_sweep"].items(), key=lambda kv: float(kv[0])):
            q = s.get("pseudo_quality", {})
            lines.append(f"  τ = {float(tau):<5}: " + " / ".join(f"{100 * _get(s, keys):6.2f}" for keys in (
                ("generalized", "novel"), ("novel_only",), ("generalized", "base"), ("cross_domain",)))
                + f"; {s.get('pseudo_labels')}, {q.get('precision@0.5', float('nan')):.2f}, "
                  f"{q.get('recall@0.5', float('nan')):.2f}")
    if "elapsed_s" in result:
        lines += ["", f"run time: {result['elapsed_s'] / 60:.1f} min"]
    return "\n".join(lines)


def plot_study(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4))
    labels = list(result["summary"])
    bars = [(k, name) for k, name in COLUMNS if k != "delta" and k in result["summary"][labels[0]]]
    width = 0.8 / len(bars)
    x = np.arange(len(labels))
    for i, (key, name) in enumerate(bars):
        ax.bar(x + (i - (len(bars) - 1) / 2) * width, [100 * result["summary"][k][key]["mean"] for k in labels],
               width, yerr=[100 * result["summary"][k][key]["std"] for k in labels], label=name, capsize=3)
    ax.set_xticks(x, labels, rotation=15)
    ax.set_ylabel("average mAP (%)")
    ax.set_title(f"Stage 1 vs stage 2, {len(result['seeds'])} seeds — SIMULATED DATA")
    ax.legend(fontsize=8)
    save(fig, "study_stages.png")
    for key, xlabel, name, fmt in (("scaling", "unlabelled web videos", "study_scaling.png", int),
                                   ("tau_sweep", "pseudo-label threshold τ", "study_tau.png", float)):
        if key not in result:
            continue
        items = sorted(result[key].items(), key=lambda kv: fmt(kv[0]))
        xs = [fmt(k) for k, _ in items]
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, keys in (("novel (generalized)", ("generalized", "novel")), ("novel-only", ("novel_only",)),
                            ("base (generalized)", ("generalized", "base")),
                            ("cross-domain (web)", ("cross_domain",))):
            ax.plot(xs, [100 * _get(s, keys) for _, s in items], marker="o", label=label)
        if key == "scaling":
            ax.set_xscale("symlog", linthresh=100)
        else:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("average mAP (%)")
        ax.set_title(f"{xlabel} (seed {result['seeds'][0]}) — SIMULATED DATA")
        ax.legend()
        save(fig, name)


def run_parts_in_parallel(out: Path, seeds, jobs: int, argv: list[str]) -> None:
    """Each seed's part in its own ``--only-seed`` process, ``jobs`` at a time (the first seed, the longest, first)."""
    import subprocess
    import sys

    out.mkdir(parents=True, exist_ok=True)
    pending, running = list(seeds), {}
    while pending or running:
        while pending and len(running) < jobs:
            seed = pending.pop(0)
            log_path = out / f"seed{seed}.log"
            log.info("seed %d: running in its own process, log %s", seed, log_path)
            with open(log_path, "a") as fh:
                running[seed] = subprocess.Popen([sys.executable, "-m", "tal.study", *argv, "--only-seed", str(seed)],
                                                 stdout=fh, stderr=subprocess.STDOUT)
        seed, code = _wait_any(running)
        if code != 0:
            for proc in running.values():
                proc.terminate()
            raise click.ClickException(f"seed {seed} failed (exit {code}); see {out / f'seed{seed}.log'}")


def _wait_any(running: dict) -> tuple[int, int]:
    while True:
        for seed, proc in list(running.items()):
            if proc.poll() is not None:
                del running[seed]
                return seed, proc.returncode
        time.sleep(1.0)


def _ints(text: str) -> list[int]:
    return _numbers(text, int)


def _sizes(text: str) -> dict:
    sizes = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, _, value = item.partition("=")
        if name not in ("curated_train", "curated_test", "web_test") or not value.isdigit() or int(value) < 1:
            raise click.BadParameter(f"{item!r}: expected curated_train|curated_test|web_test=N (N >= 1)",
                                     param_hint="--sizes")
        sizes[name] = int(value)
    return sizes


def _floats(text: str) -> list[float]:
    return _numbers(text, float)


def _numbers(text: str, kind) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated {'integers' if kind is int else 'numbers'}, "
                                 "e.g. 0,1,2") from None


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default="study_out", show_default=True, type=click.Path(file_okay=False))
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--scale", default="0,250,1000,4000", show_default=True, help="Unlabelled videos for the curve.")
@click.option("--taus", default="0.01,0.05,0.1,0.2,0.4", show_default=True)
@click.option("--sweep-videos", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--budget-videos", default=400, show_default=True, type=click.IntRange(min=1),
              help="Stage 2's compute: the preset's epochs over labelled + this many clips.")
@click.option("--sizes", default="", metavar="SPLIT=N,...",
              help="Other simulated sizes (curated_train, curated_test, web_test), e.g. for a quick smoke run.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="tal-train override, every stage.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1), help="torch CPU threads.")
@click.option("--only-seed", type=int, default=None,
              help="Run just this seed's part (one of --seeds), e.g. one process per seed; the plain command then "
                   "collects the finished parts.")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Seeds run in parallel, one process each (logs in OUT/seed<S>.log); 2 on a 2-core machine.")
@click.option("--no-progress", is_flag=True)
def main(out, seeds, scale, taus, sweep_videos, budget_videos, sizes, overrides, threads, only_seed, jobs,
         no_progress):
    """Three-seed self-training study on SIMULATED data; writes study.json, study.txt and plots."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if threads:
        import torch

        torch.set_num_threads(threads)
    seeds, scale, taus, counts = _ints(seeds), _ints(scale), _floats(taus), _sizes(sizes)
    if only_seed is not None and only_seed not in seeds:
        raise click.UsageError(f"--only-seed {only_seed} is not one of --seeds {seeds}")
    from tal.config import load_config
    from tal.demo import DEMO_PRESET

    load_config(DEMO_PRESET, list(overrides))  # a bad --set fails now, not after simulating the data
    if only_seed is not None:
        run_seed(out, only_seed, seeds, scale, taus, sweep_videos, budget_videos, not no_progress, overrides,
                 counts)
        click.echo(f"seed {only_seed} done: {Path(out) / f'seed{only_seed}' / 'part.json'}")
        return
    if jobs > 1:
        argv = ["--out", out, "--seeds", ",".join(map(str, seeds)), "--scale", ",".join(map(str, scale)),
                "--taus", ",".join(map(str, taus)), "--sweep-videos", str(sweep_videos),
                "--budget-videos", str(budget_videos), "--sizes", sizes, "--threads", str(threads),
                "--no-progress"]
        run_parts_in_parallel(Path(out), seeds, jobs, argv + [a for o in overrides for a in ("--set", o)])
    result = run_study(out, seeds, scale, taus, sweep_videos, budget_videos, progress=not no_progress,
                       overrides=overrides, counts=counts)
    click.echo(format_study(result))
    click.echo(str(Path(out) / "study.json"))


if __name__ == "__main__":
    main()
