"""`make study`: the self-training study on the SIMULATED benchmark — ceiling recovery, ablations, scaling, τ.

    python -m tal.study --out study_out --jobs 2 [--seeds 0,1,2] [--regime specific]

Per seed (``tal.sim`` preset ``small``, regime ``--regime``: 120 labelled curated videos with base classes,
400 unlabelled web videos, curated and web test videos):

1. ``main``: ``tal-selftrain`` with its defaults, plus its ceiling — stage 2 by the same recipe on the web
   videos' true segments. The headline: per protocol, the share of the ceiling's gain over stage 1 that the
   self-trained model (the last stage of the rounds the run chose) recovers, ``(self-trained − stage 1) /
   (ceiling − stage 1)``, mean ± std over seeds; the pseudo-labels'
   precision and recall against the truth; and stage 1's generalized novel / base mAP ratio, the figure the
   regime is calibrated to (real THUMOS14 ≈ 0.4).
2. ``ablations``: the defaults with one thing changed each (:data:`ABLATIONS`), from the same stage 1.

On the first seed only:

3. ``scaling``: stage 2 with the first N unlabelled videos of a larger web store (N over ``--scale``), at the
   main run's compute and labelled : pseudo mix, so that only the number of distinct web videos changes;
4. ``τ sweep``: stage 2 on pseudo-labels at fixed thresholds (``--taus``) beside the chosen one.

Every part is a resumable task writing ``result.json`` in its folder: per seed a ``base`` task (the data, stage 1
and its thresholds, which every other run of the seed copies), then ``main``, the ablations and, on the first seed,
the shared pseudo-label files and the scaling and τ variants. ``--jobs N`` runs N tasks at a time, one process
each (logs in ``OUT/logs/``), each as soon as what it depends on is done. The plain command collects what is
finished into ``study.json``, ``study.txt`` and ``study_*.png``; every figure is labelled SIMULATED.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from pathlib import Path

import click
import numpy as np

from features.cli_support import Command
from features.errors import StovtalError
from tal.atomic import atomic_open, atomic_write_bytes, atomic_write_json
from tal.crossfit import HELDOUT_PROPOSALS
from tal.selftrain import (SIMULATED_NOTE, PROTOCOL_ROWS, UNSEEN_DIR, SelfTrainConfig, _lookup, epoch_given,
                           evaluation_naming, later_epoch, named_as_today, recovered_share, recurrence_config,
                           stage_names)

log = logging.getLogger("tal.study")

# One setting changed from tal-selftrain's defaults each; "rule.*" changes the threshold rule.
ABLATIONS = {
    "init-ema": ({"init": "ema"}, "stage 2: EMA from stage 1 and a fresh student (the former default)"),
    "init-finetune": ({"init": "finetune", "later_overrides": ["train.lr=1e-4"]},
                      "stage 2 fine-tunes stage 1's EMA weights at lr 1e-4 (the seed paper's)"),
    "tau-0.05": ({"threshold_rule": None, "filter.threshold": 0.05, "rerank": "score"},
                 "fixed τ = 0.05, no ignore regions, ranked by score (the former default)"),
    "precision-0.7": ({"rule.precision": 0.7}, "τ for held-out precision 0.7 (the former default)"),
    "precision-0.85": ({"rule.precision": 0.85}, "τ for held-out precision 0.85"),
    "precision-local": ({"rule.precision_of": "local"}, "τ where a held-out proposal is right with probability 0.5 "
                                                         "(local precision), not where all kept ones are"),
    "precision-local-w1": ({"rule.precision_of": "local", "pseudo_weight": "1"},
                           "the local-precision τ, each pseudo-label weighing 1 instead of its score"),
    "ignore": ({"rule.recall": 0.9}, "ignore regions: proposals between τ and held-out recall 0.9 are left out of "
                                    "the loss, not background (the former default)"),
    "weight-1": ({"pseudo_weight": "1"}, "pseudo-labels weigh 1 in the loss, not their score"),
    "soft": ({"pseudo_weight": "soft"}, "soft pseudo-labels: an action with probability = score (score × action "
                                        "loss + (1 − score) × background loss), not a positive weighing its score"),
    "noisy": ({"later_overrides": ["model.dropout=0.1", "model.droppath=0.3"]},
              "a noisier student (Noisy Student): stages >= 2 with dropout 0.1 and drop-path 0.3 (0 and 0.1)"),
    "rerank-score": ({"rerank": "score"}, "web proposals ranked by stage 1's score alone (the former default)"),
    "rerank-auto": ({"rerank": "auto"}, "web proposals re-ranked only where that ranks the held-out labelled "
                                        "videos' proposals better"),
    "recurrence-0.5": ({"recurrence_weight": 0.5}, "re-ranking with the recurrence and the score weighing the same "
                                                   "(the former default; auto chooses 0.5 or 0.8)"),
    "recurrence-0.8": ({"recurrence_weight": 0.8}, "re-ranking with the recurrence weighing 0.8 and the score 0.2"),
    "rounds-1": ({"rounds": 1}, "one round: stage 1 pseudo-labels, stage 2 trains (the former default; auto "
                                "chooses 3 or 1)"),
    "ratio-0.5": ({"pseudo_ratio": 0.5}, "half the clips pseudo-labelled, every video once per epoch (natural share: 77 %)"),
    "rounds-2": ({"rounds": 2}, "a second round: stage 2 pseudo-labels, stage 3 trains"),
    "rounds-3": ({"rounds": 3}, "three rounds: stage 2 pseudo-labels, stage 3 trains, stage 3 pseudo-labels, stage 4 "
                                "trains"),
    "rounds-3-stop": ({"rounds": 3, "stop_density": 1.0}, "three rounds, each from round 2 on only where its "
                                                           "pseudo-labels are no denser than the human labels"),
    "rounds-2-per-round": ({"rounds": 2, "rule.per_round": True},
                           "a second round, its τ chosen again for stage 2 (fold models by stage 2's recipe)"),
    "in-domain": ({"unlabeled": "curated"}, "unlabelled videos from the labelled (curated) domain, not the web"),
    "oracle-selection": ({}, "analysis only: stage 1's own proposals (score >= 0.01) that match a true instance "
                             "and no others: a perfect selection rule (one round: its stage 2)"),
    "oracle-selection-w1": ({"pseudo_weight": "1"}, "analysis only: the perfect selection, each pseudo-label "
                                                     "weighing 1 instead of its score"),
}
CEILING_ABLATIONS = ("init-ema", "init-finetune", "in-domain")  # another recipe or data: its own ceiling
HEADLINES = [("novel (generalized)", ("generalized", "novel")), ("novel-only", ("novel_only",)),
             ("base (generalized)", ("generalized", "base")), ("all (generalized)", ("generalized", "all")),
             ("cross-domain (web)", ("cross_domain",))]
SHARED_STEPS = ("stage1.train", "stage1.eval")
SELF_TRAINED = "self_trained"  # a main run's last stage: stage 2, or stage 4 where three rounds ran


class StudyError(StovtalError):
    """A study that cannot run or continue (other settings in --out, a failed task); one line."""


# --------------------------------------------------------------------------------------------- settings
@dataclasses.dataclass
class StudySettings:
    seeds: list
    regime: str = "specific"
    ablations: list = dataclasses.field(default_factory=lambda: list(ABLATIONS))
    scale: list = dataclasses.field(default_factory=lambda: [0, 400, 1600])
    taus: list = dataclasses.field(default_factory=lambda: [0.2, 0.4])  # 0.05 is the tau-0.05 ablation
    overrides: list = dataclasses.field(default_factory=list)  # tal-train --set items, every stage
    counts: dict = dataclasses.field(default_factory=dict)  # other simulated sizes (smoke runs)

    def check(self) -> None:
        unknown = sorted(set(self.ablations) - set(ABLATIONS))
        if unknown:
            raise click.BadParameter(f"unknown ablation(s) {', '.join(unknown)} (one of {', '.join(ABLATIONS)})",
                                     param_hint="--ablations")
        if not self.seeds:
            raise click.BadParameter("give at least one seed", param_hint="--seeds")


def data_paths(out: Path, seed: int, settings: StudySettings, progress: bool) -> dict:
    from tal.demo import simulate

    return simulate(out / f"data_seed{seed}", seed, settings.counts, progress, regime=settings.regime)


def main_config(paths: dict, seed: int, settings: StudySettings) -> SelfTrainConfig:
    from tal.demo import selftrain_config

    cfg = selftrain_config(paths, seed, overrides=settings.overrides)
    return dataclasses.replace(cfg, ceiling=True, floor=True)


def ablation_config(cfg: SelfTrainConfig, name: str) -> SelfTrainConfig:
    changes, _ = ABLATIONS[name]
    cfg = dataclasses.replace(cfg, ceiling=name in CEILING_ABLATIONS, floor=False)
    for key, value in changes.items():
        if key.startswith("rule."):
            cfg.threshold_rule = dataclasses.replace(cfg.threshold_rule, **{key[5:]: value})
        elif key.startswith("filter."):
            cfg.filter = dataclasses.replace(cfg.filter, **{key[7:]: value})
        elif key == "later_overrides":
            cfg.later_overrides = list(cfg.later_overrides) + list(value)
        elif key == "unlabeled":
            continue  # the store is chosen in run_task (it has to be simulated first)
        else:
            setattr(cfg, key, value)
    return cfg


# --------------------------------------------------------------------------------------------- tasks
def run_task(out: Path, task: str, settings: StudySettings, progress: bool = False) -> dict:
    """Run (or reuse) one task — ``base:S``, ``main:S``, ``ablation:S:NAME``, ``scale-pl:S``, ``scale:S:N``,
    ``tau-pl:S``, ``tau:S:T`` — and return its summary (cached in its folder's ``result.json``)."""
    kind, seed, arg = _parse_task(task)
    folder = task_dir(out, task)
    done = folder / "result.json"
    cached = current_result(folder, evaluates(task))
    if cached is not None:
        return cached
    if done.exists():
        log.info("%s: evaluated with another naming than today's evaluation: the task runs again (its finished "
                 "steps are kept, its stages evaluated again)", done)
    paths = data_paths(out, seed, settings, progress)
    cfg = main_config(paths, seed, settings)
    base_dir = task_dir(out, f"base:{seed}")
    if kind == "base":
        result = _base(cfg, folder, paths, progress)
    elif kind == "main":
        share_stage1(base_dir, folder, same_rule=True)
        result = _selftrain(cfg, folder, paths, progress)
        last = stage_names(result)[-1]  # stage 2, or a later one where more rounds ran
        profiles = false_positive_profiles(folder, cfg, ("stage1", last, "ceiling"))
        result["false_positives"] = {SELF_TRAINED if k == last else k: v for k, v in profiles.items()}
    elif kind == "ablation" and arg.startswith("oracle-selection"):
        result = _oracle_selection(ablation_config(cfg, arg), base_dir, folder, paths, progress)
    elif kind == "ablation":
        variant = ablation_config(cfg, arg)
        share_stage1(base_dir, folder, same_rule=variant.threshold_rule == cfg.threshold_rule)
        if arg.startswith("rounds-"):  # later rounds start from the main run's first
            _share(task_dir(out, f"main:{seed}"), folder, ["round1.pseudo", "stage2.train", "stage2.eval"],
                   ["pseudo_round1.json", "stage2"])
        if arg == "in-domain":
            store, truth = _extra_split(out, seed, settings, "curated_unlabelled", "curated",
                                        (settings.counts or {}).get("web", 400), progress)
            variant.unlabeled_features = str(store)
            paths = dict(paths, web_annotations=truth)
        result = _selftrain(variant, folder, paths, progress)
    elif kind in ("scale-pl", "tau-pl"):
        result = _shared_pseudo_labels(out, kind, seed, cfg, paths, base_dir, progress)
    else:  # scale:S:N, tau:S:T
        result = _stage2_variant(out, kind, seed, arg, cfg, base_dir, paths, progress)
    result["naming"] = evaluation_naming()  # what current_result compares
    atomic_write_json(done, result)
    return result


def evaluates(task: str) -> bool:
    """Whether a task's result holds evaluations (the pseudo-label files of scale-pl / tau-pl hold none)."""
    return not _parse_task(task)[0].endswith("-pl")


def current_result(folder: Path, evaluated: bool = True) -> dict | None:
    """A task's cached result; None where missing, or where it holds evaluations named otherwise than today's
    evaluation names (then its task runs again: its finished steps are kept, its stages evaluated again)."""
    path = Path(folder) / "result.json"
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    return result if not evaluated or named_as_today(result) else None


def _dependency(folder: Path, evaluated: bool = True) -> dict:
    """The result of a task this one depends on (the study runs those first)."""
    result = current_result(folder, evaluated)
    if result is None:
        raise StudyError(f"{folder}: its task has not finished with today's evaluation; run the study (or that "
                         "task) first")
    return result


def _base(cfg: SelfTrainConfig, folder: Path, paths: dict, progress: bool) -> dict:
    """What every run of a seed shares: stage 1, its evaluation, the pseudo-label thresholds it implies and what
    the class check chooses (the recurrence's weight in the ranking, the rounds, the later stages' label passes)."""
    from tal.selftrain import RunState, class_check, label_passes_plan, pseudo_filter, run_selftrain, uses_class_check

    first = dataclasses.replace(cfg, rounds=0, ceiling=False, floor=False)
    report = run_selftrain(first, folder, progress=progress)
    state = RunState(folder, first)
    check = class_check(first, state, folder, progress) if uses_class_check(cfg, state.before_label_passes) else None
    filt, why = pseudo_filter(first, state, folder, progress)
    return {"stage1": report["stage1"], "counts": report["counts"], "threshold": filt.threshold,
            "ignore_threshold": filt.ignore_threshold, "ranking": why["ranking"],
            "recurrence_weight": why.get("recurrence_weight"),
            "label_passes": label_passes_plan(cfg, check, state.before_label_passes)}


def task_dependencies(task: str) -> list[str]:
    kind, seed, arg = _parse_task(task)
    if kind == "base":
        return []
    if kind in ("scale", "tau"):
        return [f"{kind}-pl:{seed}"]
    if kind == "ablation" and arg.startswith("rounds-"):
        return [f"main:{seed}"]
    return [f"base:{seed}"]


def _parse_task(task: str):
    parts = task.split(":")
    kinds = {"base": 2, "main": 2, "ablation": 3, "scale-pl": 2, "scale": 3, "tau-pl": 2, "tau": 3}
    if parts[0] not in kinds or len(parts) != kinds[parts[0]] or not parts[1].lstrip("-").isdigit():
        raise click.BadParameter(f"{task!r}: expected base:S, main:S, ablation:S:NAME, scale-pl:S, scale:S:N, "
                                 "tau-pl:S or tau:S:T", param_hint="--task")
    return parts[0], int(parts[1]), parts[2] if len(parts) == 3 else None


def task_dir(out: Path, task: str) -> Path:
    kind, seed, arg = _parse_task(task)
    name = kind if arg is None else f"{kind}-{arg}"
    return Path(out) / f"seed{seed}" / name


def _selftrain(cfg: SelfTrainConfig, folder: Path, paths: dict, progress: bool) -> dict:
    from tal.selftrain import run_selftrain

    cfg = dataclasses.replace(cfg, unlabeled_truth=str(paths["web_annotations"]))
    report = run_selftrain(cfg, folder, progress=progress)
    keep = ("floor", "ceiling", "recovery", "counts", "threshold", "stopped", "rounds", "rounds_choice",
            "label_passes", *stage_names(report))
    return {k: report[k] for k in keep if k in report}


def false_positive_profiles(folder: Path, cfg: SelfTrainConfig, stages) -> dict:
    """Where each stage's high-scoring false positives come from (tal.eval.fp_profile) on the in-domain test
    set: its detections named with the full vocabulary, for novel and for base classes, and the localizer's
    own class-agnostic ranking against class-agnostic truth."""
    from tal.data.annotations import AnnotationSet, Segment, VideoAnnotation, load_annotations
    from tal.eval.fp_profile import false_positive_profile
    from tal.eval.protocols import load_split
    from tal.infer import iter_detections, store_vocabulary

    split = load_split(cfg.split)
    test = next(t for t in cfg.tests if not t.cross_domain)
    gt = load_annotations(test.annotations)
    vocabulary = store_vocabulary(test.features, cfg.vocab).restrict(split.all)
    agnostic_gt = AnnotationSet({v: VideoAnnotation(v, a.subset, a.duration, a.fps,
                                                    [Segment(s.start, s.end, "action") for s in a.segments])
                                 for v, a in gt.videos.items()})
    out = {}
    for stage in stages:
        ckpt = folder / stage / "last.pt"
        named = dict(iter_detections(test.features, ckpt, list(gt.videos), vocabulary=vocabulary, batch_size=8))
        agnostic = dict(iter_detections(test.features, ckpt, list(gt.videos), batch_size=8))
        out[stage] = {"novel": false_positive_profile(gt, named, split.novel)["fractions"],
                      "base": false_positive_profile(gt, named, split.base)["fractions"],
                      "agnostic": false_positive_profile(agnostic_gt, agnostic)["fractions"]}
    return out


def share_stage1(src: Path, dst: Path, same_rule: bool) -> None:
    """Start ``dst`` from ``src``'s stage 1 (and its held-out samples; its threshold choice too when the rule is
    the same): an independent run would compute exactly these files again."""
    steps, files = list(SHARED_STEPS), ["stage1"]
    folds = sorted((src / "thresholds").glob("fold*/heldout.json"))
    folds += sorted((src / "thresholds").glob(f"fold*/{HELDOUT_PROPOSALS}"))  # what --rerank auto chooses on
    files += [str(p.relative_to(src)) for p in folds]
    if same_rule:
        steps.append("stage1.thresholds")
        files.append("thresholds/choice.json")
    if (src / UNSEEN_DIR / "choice.json").exists():  # the recurrence's weight: stage 1's recipe and folds decide it
        steps.append("stage1.unseen")
        files += [str(p.relative_to(src)) for p in sorted((src / UNSEEN_DIR).glob("**/*.json"))]
    _share(src, dst, steps, files)
    _refresh_stage1_evaluation(src, dst)


def _refresh_stage1_evaluation(src: Path, dst: Path) -> None:
    """A study resumed under another naming evaluates the base task's stage 1 again (that task runs first); a
    copy of that stage 1 evaluated with the old naming takes the fresh evaluation of the same checkpoint instead
    of evaluating it once more (~10 s a task)."""
    fresh, copy = src / "stage1" / "eval.json", dst / "stage1" / "eval.json"
    if not (fresh.exists() and copy.exists()) or named_as_today(json.loads(copy.read_text())):
        return
    text = fresh.read_text()
    if named_as_today(json.loads(text)):
        atomic_write_bytes(copy, text.encode())


def _share(src: Path, dst: Path, steps: list, files: list) -> None:
    from tal.selftrain import STATE_NAME

    state_path = dst / STATE_NAME
    done = json.loads(state_path.read_text())["done"] if state_path.exists() else []
    if all(s in done for s in steps):
        return
    for rel in files:
        a, b = src / rel, dst / rel
        b.parent.mkdir(parents=True, exist_ok=True)
        if a.is_dir():
            shutil.copytree(a, b, dirs_exist_ok=True)
        else:
            shutil.copy2(a, b)
    atomic_write_json(state_path, {"done": done + [s for s in steps if s not in done]})


def _shared_pseudo_labels(out, kind, seed, cfg, paths, base_dir: Path, progress) -> dict:
    """``scale-pl``: the chosen filter over a web store of max(--scale) videos (its first 400 are the main
    run's); ``tau-pl``: the main web store at the smallest τ, no ignore regions (re-filtered per τ). Where the
    main run re-ranks (its ``ranking``), the file holds the candidates of that ranking instead: stage 1's
    proposals down to the candidate floor, re-ranked per number of videos (``scale``) or here, once (``tau``)."""
    from tal.pseudo import pseudo_label_store
    from tal.selftrain import candidate_filter

    settings = _settings_of(out)
    stage1 = base_dir / "stage1" / "last.pt"
    folder = task_dir(out, f"{kind}:{seed}")
    base = _dependency(base_dir)
    ranking = _ranking(cfg, base)
    if kind == "scale-pl":
        store, _ = _extra_split(out, seed, settings, "web_scale", "web", max(settings.scale), progress, "web")
        filt = _chosen_filter(cfg, base)
    else:
        store = paths["web_store"]
        filt = dataclasses.replace(cfg.filter, threshold=min(settings.taus), ignore_threshold=None)
    pl = folder / "pseudo.json"
    if ranking == "score":
        pseudo_label_store(store, stage1, pl, filt, progress=progress)
    else:
        pseudo_label_store(store, stage1, folder / "candidates.json", candidate_filter(filt), progress=progress)
        if kind == "tau-pl":
            _rerank(folder / "candidates.json", store, pl, cfg, base_dir, progress)
        else:
            pl = folder / "candidates.json"
    return {"file": str(pl), "store": str(store), "threshold": filt.threshold, "ranking": ranking}


def _ranking(cfg: SelfTrainConfig, base: dict) -> str:
    """The order the seed's web proposals are cut in: the one its base task chose (or, for a base task recorded
    before the choice was, the configured one)."""
    return base.get("ranking", cfg.rerank)


def _rerank(candidates: Path, store, out: Path, cfg: SelfTrainConfig, base_dir: Path, progress: bool,
            limit=None) -> None:
    """Re-rank as the main run does (with ``--recurrence-weight auto``, the weight the seed's base task chose)."""
    from tal.recurrence import rerank_candidates

    rerank_candidates(candidates, store, out, recurrence_config(cfg, base_dir), progress=progress, limit=limit)


def _chosen_filter(cfg: SelfTrainConfig, base: dict):
    """The pseudo-label filter with the thresholds the seed's ``base`` task chose."""
    return dataclasses.replace(cfg.filter, threshold=base["threshold"], ignore_threshold=base["ignore_threshold"])


def _extra_split(out: Path, seed: int, settings: StudySettings, name: str, domain: str, n: int,
                 progress: bool, stream: str | None = None) -> tuple[Path, Path]:
    """Another unlabelled split of the seed's world (store and truth); ``stream`` names its random stream
    (the web store's, "web", makes its first videos those of the main run)."""
    from tal.demo import DEMO_PRESET
    from tal.sim import make_world, preset
    from tal.sim.writer import SplitSpec, write_split

    sim_cfg, _ = preset(DEMO_PRESET, seed, settings.regime)
    folder = out / f"data_seed{seed}"
    store, truth = folder / f"{name}.zarr", folder / f"{name}.json"
    if not truth.exists():
        write_split(make_world(sim_cfg), SplitSpec(stream or name, domain, "training", "all"), n, store, truth,
                    progress)
    return store, truth


def _stage2_variant(out, kind, seed, arg, cfg, base_dir: Path, paths, progress) -> dict:
    """Stage 2 from the main run's stage 1 on re-filtered pseudo-labels: the first N videos of the scale store
    (``scale``, at the main run's compute and mix), or a fixed τ without ignore regions (``tau``)."""
    from tal.pseudo import FilterConfig, refilter

    folder = task_dir(out, f"{kind}:{seed}:{arg}")
    stage1 = base_dir / "stage1" / "last.pt"
    base = _dependency(base_dir)
    if kind == "scale" and int(arg) == 0:
        return base["stage1"]
    source = _dependency(task_dir(out, f"{kind}-pl:{seed}"), evaluated=False)
    pl = folder / "pseudo.json"
    if kind == "scale":
        n = int(arg)
        labelled, web = base["counts"]["labeled_videos"], base["counts"]["unlabeled_videos"]
        clips, ratio = later_epoch(labelled, web, _passes(cfg, base))  # the main run's stage-2 epoch
        filt = _chosen_filter(cfg, base)
        cfg = dataclasses.replace(cfg, unlabeled_features=source["store"], later_overrides=list(
            cfg.later_overrides) + [f"data.pseudo_ratio={ratio}", f"data.epoch_clips={clips}"])
        truth = Path(source["store"]).with_suffix(".json")
    else:
        n, filt, truth = None, FilterConfig(threshold=float(arg), dedup_iou=cfg.filter.dedup_iou), paths["web_annotations"]
    ranking = source.get("ranking", "score")
    ranked = ranking != "score" and kind == "scale"  # tau-pl's file is re-ranked already
    if ranked and not (folder / "reranked.json").exists():  # among the first N videos only, as a store of N would
        _rerank(Path(source["file"]), source["store"], folder / "reranked.json", cfg, base_dir, progress, limit=n)
    if not pl.exists():
        refilter(folder / "reranked.json" if ranked else source["file"], pl, filt, limit=n)
    summary = _stage2_on(cfg, folder, pl, stage1, truth, progress, _passes(cfg, base))
    summary["ranking"] = ranking
    return summary


def _oracle_selection(cfg: SelfTrainConfig, base_dir: Path, folder: Path, paths: dict, progress: bool) -> dict:
    """Stage 2 by the main recipe on stage 1's proposals (down to the candidate floor) that match a true instance:
    the bound of every rule that selects among those proposals (:func:`tal.pseudo.select_true_positives`)."""
    from tal.pseudo import pseudo_label_store, select_true_positives
    from tal.selftrain import candidate_filter

    base = _dependency(base_dir)
    stage1 = base_dir / "stage1" / "last.pt"
    candidates, pl = folder / "candidates.json", folder / "pseudo.json"
    if not candidates.exists():
        pseudo_label_store(paths["web_store"], stage1, candidates, candidate_filter(cfg.filter), progress=progress)
    if not pl.exists():
        select_true_positives(candidates, paths["web_annotations"], pl)
    summary = _stage2_on(cfg, folder, pl, stage1, paths["web_annotations"], progress, _passes(cfg, base))
    return {"stage1": base["stage1"], "stage2": summary,
            "counts": {"pseudo_label_details": {"round1.pseudo": {"quality": summary["pseudo_quality"]}}}}


def _passes(cfg: SelfTrainConfig, base: dict) -> str:
    """How a stage 2 of this task spends its epoch: the main runs' choice (the base task's record; "mixed" in
    results from before it existed), or "mixed" where the task sets the epoch itself (``scale``'s fixed compute)."""
    return "mixed" if epoch_given(cfg) else (base.get("label_passes") or {}).get("passes", "mixed")


def _stage2_on(cfg: SelfTrainConfig, folder: Path, pl: Path, stage1: Path, truth, progress: bool,
               passes: str) -> dict:
    """Stage 2 from ``stage1`` on labels + the pseudo-label file ``pl``, evaluated; with its quality vs truth."""
    from tal.pseudo import pseudo_label_quality
    from tal.selftrain import current_evaluation, evaluate_stage, novel_classes, summarize, train_stage

    eval_path, ckpt = folder / "eval.json", folder / "stage2" / "last.pt"
    if not eval_path.exists():  # evaluated before: trained, and (named otherwise) only evaluated again
        ckpt = train_stage(cfg, folder / "stage2", [pl], stage1, progress, passes=passes)
    results = current_evaluation(eval_path)
    if results is None:
        results = evaluate_stage(ckpt, cfg, progress)
        atomic_write_json(eval_path, results)
    summary = summarize(results)
    summary["pseudo_quality"] = pseudo_label_quality(pl, truth, novel=novel_classes(cfg))
    summary["pseudo_labels"] = summary["pseudo_quality"]["pseudo_labels"]
    return summary


def _settings_of(out: Path) -> StudySettings:
    return StudySettings(**json.loads((Path(out) / "settings.json").read_text()))


# --------------------------------------------------------------------------------------------- the run
def study_tasks(settings: StudySettings) -> list[str]:
    """Every task of the study, each after the tasks it depends on (:func:`task_dependencies`)."""
    first = settings.seeds[0]
    tasks = [f"base:{s}" for s in settings.seeds] + [f"main:{s}" for s in settings.seeds]
    tasks += [f"ablation:{s}:{a}" for a in settings.ablations for s in settings.seeds]
    if [n for n in settings.scale if n > 0]:
        tasks += [f"scale-pl:{first}"] + [f"scale:{first}:{n}" for n in settings.scale]
    if settings.taus:
        tasks += [f"tau-pl:{first}"] + [f"tau:{first}:{t}" for t in settings.taus]
    return tasks


def run_study(out, settings: StudySettings, jobs: int = 1, progress: bool = True) -> dict:
    """Run (or resume) every task and collect the study; ``jobs > 1`` runs tasks in that many processes, each
    as soon as the tasks it depends on are done."""
    out = Path(out)
    settings.check()
    start = time.time()
    _record_settings(out, settings)
    if jobs > 1:
        run_in_processes(out, study_tasks(settings), jobs)
    else:
        for task in study_tasks(settings):
            log.info("study task %s", task)
            run_task(out, task, settings, progress)
    result = collect(out, settings)
    result["elapsed_s"] = round(time.time() - start, 1)
    result["elapsed_note"] = "this command's wall time; tasks finished by an earlier call are not included"
    atomic_write_json(out / "study.json", result)
    atomic_write_bytes(out / "study.txt", (format_study(result) + "\n").encode())
    plot_study(result, out)
    return result


def _record_settings(out: Path, settings: StudySettings) -> None:
    path = out / "settings.json"
    wanted = json.loads(json.dumps(dataclasses.asdict(settings)))
    if path.exists():
        found = json.loads(path.read_text())
        if found != wanted:
            diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
            raise StudyError(f"{out} holds a study with other settings ({', '.join(diff)}); use another --out")
    else:
        atomic_write_json(path, wanted)


def run_in_processes(out: Path, tasks: list[str], jobs: int) -> None:
    """Each task in its own ``python -m tal.study --task`` process, ``jobs`` at a time, started once the tasks
    it depends on have finished; stops at the first failure."""
    import subprocess
    import sys

    (out / "logs").mkdir(parents=True, exist_ok=True)
    finished = lambda t: current_result(task_dir(out, t), evaluates(t)) is not None  # noqa: E731
    pending = [t for t in tasks if not finished(t)]
    running: dict = {}
    while pending or running:
        ready = [t for t in pending if all(finished(d) for d in task_dependencies(t) if d in tasks)]
        for task in ready[: jobs - len(running)]:
            pending.remove(task)
            log_path = out / "logs" / f"{task.replace(':', '_')}.log"
            log.info("study task %s: own process, log %s", task, log_path)
            with open(log_path, "a") as fh:
                running[task] = subprocess.Popen([sys.executable, "-m", "tal.study", "--out", str(out), "--task",
                                                  task, "--no-progress"], stdout=fh, stderr=subprocess.STDOUT)
        if not running:
            raise StudyError(f"study tasks {', '.join(pending)} wait on tasks that are not part of this study")
        task, code = _wait_any(running)
        if code != 0:
            for proc in running.values():
                proc.terminate()
            raise StudyError(f"study task {task} failed (exit {code}); see "
                             f"{out / 'logs' / (task.replace(':', '_') + '.log')}")


def _wait_any(running: dict) -> tuple[str, int]:
    while True:
        for task, proc in list(running.items()):
            if proc.poll() is not None:
                del running[task]
                return task, proc.returncode
        time.sleep(1.0)


# --------------------------------------------------------------------------------------------- collecting
def _stat(values) -> dict:
    v = np.array([x for x in values if not math.isnan(x)], np.float64)
    if not len(v):
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}


def _last_stage(run: dict) -> dict:
    return run[stage_names(run)[-1]]


def _quality_stats(qualities: list) -> dict:
    """Mean ± std of pseudo-label precision and recall (overall, and base / novel where every run has them)."""
    keys = ["precision@0.5", "recall@0.5"] + [k for k in ("recall@0.5 base", "recall@0.5 novel")
                                              if all(q.get(k) is not None for q in qualities)]
    return {k: _stat([q[k] for q in qualities]) for k in keys}


def collect(out: Path, settings: StudySettings) -> dict:
    """study.json's content from the finished tasks (missing ones are skipped, so a partial study collects)."""
    def load(task):  # every result collected is named as today's evaluation names: said once, in study.json
        found = current_result(task_dir(out, task))
        return None if found is None else {k: v for k, v in found.items() if k != "naming"}

    mains = {s: load(f"main:{s}") for s in settings.seeds}
    mains = {s: r for s, r in mains.items() if r}
    result = {"simulated": True, "note": SIMULATED_NOTE, "settings": dataclasses.asdict(settings),
              "naming": evaluation_naming(), "seeds_done": sorted(mains), "main": {}, "ablations": {}}
    for label, keys in HEADLINES:
        row = {k: _stat([_lookup(r[k], keys) for r in mains.values()]) for k in ("stage1", "floor", "ceiling")}
        last = [_lookup(_last_stage(r), keys) for r in mains.values()]  # the self-trained model of each seed
        row[SELF_TRAINED] = _stat(last)
        deltas = [x - _lookup(r["stage1"], keys) for x, r in zip(last, mains.values())]
        row["delta"] = _stat(deltas)
        # a mean of a few seeds hides a sign that flips; the count says how often self-training beats stage 1
        row["seeds_up"] = {"up": int(sum(d > 0 for d in deltas)), "n": len(deltas)}
        row["delta_floor"] = _stat([x - _lookup(r["floor"], keys) for x, r in zip(last, mains.values())])
        for key, start in (("recovery", "stage1"), ("recovery_floor", "floor")):
            row[key] = _stat([recovered_share(_lookup(r[start], keys), x, _lookup(r["ceiling"], keys))
                              for x, r in zip(last, mains.values())])
        result["main"][label] = row
    ratios = [_lookup(r["stage1"], ("generalized", "novel")) / _lookup(r["stage1"], ("generalized", "base"))
              for r in mains.values()]
    result["stage1_novel_base_ratio"] = {"per_seed": dict(zip(sorted(mains), ratios)), **_stat(ratios)}
    quality = [r["counts"]["pseudo_label_details"]["round1.pseudo"]["quality"] for r in mains.values()]
    result["pseudo_quality"] = _quality_stats(quality)
    result["thresholds"] = {s: r.get("threshold") for s, r in mains.items()}
    result["pseudo_density"] = {s: r["counts"]["pseudo_label_details"]["round1.pseudo"].get("density_ratio")
                                for s, r in mains.items()}
    bases = {s: load(f"base:{s}") for s in mains}
    result["recurrence_weight"] = {s: b.get("recurrence_weight") for s, b in bases.items() if b}
    result["rounds"] = {s: {"rounds": r.get("rounds", 1), "trained": len(stage_names(r)) - 1,
                            "ratio": (r.get("rounds_choice") or {}).get("ratio")} for s, r in mains.items()}
    # a main run collected before --rounds auto keyed its (one-round) self-trained model "stage2"
    profiles = [{SELF_TRAINED if k == "stage2" else k: v for k, v in r["false_positives"].items()}
                for r in mains.values() if "false_positives" in r]
    if profiles:
        result["false_positives"] = {
            stage: {group: {cat: _stat([p[stage][group][cat] for p in profiles]) for cat in profiles[0][stage][group]}
                    for group in profiles[0][stage]} for stage in profiles[0]}
    for name in settings.ablations:
        runs = {s: load(f"ablation:{s}:{name}") for s in mains}
        runs = {s: r for s, r in runs.items() if r}
        if not runs:
            continue
        entry = {"description": ABLATIONS[name][1], "seeds": sorted(runs)}
        for label, keys in HEADLINES:
            entry[label] = _stat([_lookup(_last_stage(r), keys) for r in runs.values()])
            entry[label + " recovery"] = _stat([recovered_share(_lookup(mains[s]["stage1"], keys),
                                                          _lookup(_last_stage(r), keys),
                                                          _lookup(mains[s]["ceiling"], keys)) for s, r in runs.items()])
            if "ceiling" in next(iter(runs.values())):
                entry[label + " own ceiling"] = _stat([_lookup(r["ceiling"], keys) for r in runs.values()])
        details = [r["counts"]["pseudo_label_details"] for r in runs.values()]
        for step in sorted({k for d in details for k in d}):
            entry[f"{step} quality"] = _quality_stats([d[step]["quality"] for d in details if step in d])
        result["ablations"][name] = entry
    first = settings.seeds[0]
    for key, kind, cast in (("scaling", "scale", int), ("tau_sweep", "tau", float)):
        values = getattr(settings, "scale" if kind == "scale" else "taus")
        found = {str(cast(v)): load(f"{kind}:{first}:{v}") for v in values}
        found = {k: v for k, v in found.items() if v}
        if found:
            result[key] = found
    return result


# --------------------------------------------------------------------------------------------- report
def format_percent(stat: dict, seeds: int) -> str:
    """A mean ± std over seeds in % (mAP or a share); where it rests on fewer seeds than the run has (a recovery
    is undefined on a seed whose ceiling does not beat its start), the count instead of a std that one seed would
    show as 0."""
    if stat["n"] == 0:
        return "undefined"
    if stat["n"] < seeds:
        return f"{100 * stat['mean']:6.2f} ({stat['n']} of {seeds})"
    return f"{100 * stat['mean']:6.2f} ± {100 * stat['std']:5.2f}"


def format_study(result: dict) -> str:
    seeds = result["seeds_done"]
    pct = lambda s: format_percent(s, len(seeds))  # noqa: E731
    lines = [f"Self-training study — {SIMULATED_NOTE}",
             f"regime {result['settings']['regime']}; seeds {seeds}; average mAP (%), mean ± std over seeds; "
             "self-trained: the last stage of the run's rounds (stage 2 after one round); ceiling: stage 2 by the "
             "same recipe on the unlabelled videos' true segments; floor: stage 2's recipe and compute on the human "
             "labels alone; recovered = (self-trained − stage 1) / (ceiling − stage 1); over floor = (self-trained − "
             "floor) / (ceiling − floor): the unlabelled videos' share at one round's training time",
             ""]
    columns = (("stage1", "stage 1"), (SELF_TRAINED, "self-trained"), ("floor", "floor"), ("ceiling", "ceiling"),
               ("delta", "Δ (self − 1)"), ("delta_floor", "Δ (self − floor)"), ("recovery", "recovered (%)"),
               ("recovery_floor", "over floor (%)"))
    head = f"{'protocol':<21}" + "".join(f"{h:>17}" for _, h in columns) + f"{'seeds up':>13}"
    lines += [head, "-" * len(head)]
    for label, row in result["main"].items():
        up = row["seeds_up"]
        lines.append(f"{label:<21}" + "".join(f"{pct(row[k]):>17}" for k, _ in columns)
                     + f"{str(up['up']) + ' / ' + str(up['n']):>13}")
    r = result["stage1_novel_base_ratio"]
    lines += ["", f"stage 1 generalized novel / base mAP: {r['mean']:.3f} ± {r['std']:.3f} (per seed: "
              + ", ".join(f"{s}: {v:.3f}" for s, v in r["per_seed"].items()) + "; real THUMOS14 ≈ 0.40–0.42)"]
    weights = {s: w for s, w in result.get("recurrence_weight", {}).items() if w}
    if weights:
        lines.append("recurrence weight in the ranking: " + ", ".join(
            f"{s}: {w['weight']:g}" + ("" if w.get("ratio") is None else
                                       f" (held-out classes' AP ÷ held-out videos' AP {w['ratio']:.2f})")
            for s, w in weights.items()))
    rounds = result.get("rounds", {})
    if rounds:
        lines.append("rounds per seed (chosen / trained): " + ", ".join(
            f"{s}: {r['rounds']} / {r['trained']}" for s, r in rounds.items()))
    q = result["pseudo_quality"]
    lines.append(f"pseudo-labels (round 1, tIoU 0.5): precision {q['precision@0.5']['mean']:.3f} ± "
                 f"{q['precision@0.5']['std']:.3f}, recall {q['recall@0.5']['mean']:.3f} ± {q['recall@0.5']['std']:.3f}"
                 + "".join(f", {k[11:]} instances {q[k]['mean']:.3f} ± {q[k]['std']:.3f}"
                           for k in ("recall@0.5 base", "recall@0.5 novel") if k in q)
                 + "; τ per seed: " + ", ".join(f"{s}: {t:.3g}" for s, t in result["thresholds"].items() if t is not None))
    density = {s: d for s, d in result.get("pseudo_density", {}).items() if d is not None}
    if density:
        lines.append("pseudo-labels per minute of unlabelled video ÷ human labels per minute of labelled video, "
                     "per seed: "
                     + ", ".join(f"{s}: {d:.2f}" for s, d in density.items()))
    if "false_positives" in result:
        fp = result["false_positives"]
        cats = list(next(iter(next(iter(fp.values())).values())))
        lines += ["", "where the top-ranked detections come from (in-domain test; per class its top G detections, G = "
                  "its instances; % of them, mean over seeds; tIoU 0.5):"]
        head = f"{'':<30}" + "".join(f"{c.replace('_', ' '):>14}" for c in cats)
        lines += [head, "-" * len(head)]
        for group, title in (("novel", "novel, named"), ("base", "base, named"), ("agnostic", "agnostic ranking")):
            for stage in fp:
                lines.append(f"{title + ', ' + stage:<30}" + "".join(f"{100 * fp[stage][group][c]['mean']:>14.1f}"
                                                                     for c in cats))
    if result["ablations"]:
        lines += ["", "ablations (one change from the defaults each, through the rounds each run chooses, its last "
                  "stage; the oracle selections one round; recovered % of the default recipe's ceiling):"]
        head = f"{'variant':<16}" + "".join(f"{h:>17}" for h in ("novel (gen.)", "novel-only", "base (gen.)",
                                                                  "cross-domain", "rec. novel gen.", "rec. novel-only"))
        lines += [head, "-" * len(head)]
        main = result["main"]
        lines.append(f"{'default':<16}" + "".join(f"{pct(main[k][SELF_TRAINED]):>17}" for k in (
            "novel (generalized)", "novel-only", "base (generalized)", "cross-domain (web)"))
            + "".join(f"{pct(main[k]['recovery']):>17}" for k in ("novel (generalized)", "novel-only")))
        for name, e in result["ablations"].items():
            lines.append(f"{name:<16}" + "".join(f"{pct(e[k]):>17}" for k in (
                "novel (generalized)", "novel-only", "base (generalized)", "cross-domain (web)"))
                + "".join(f"{pct(e[k + ' recovery']):>17}" for k in ("novel (generalized)", "novel-only")))
        lines.append("")
        lines += [f"  {name}: {e['description']}" + _quality_note(e) for name, e in result["ablations"].items()]
    for key, title in (("scaling", "scaling (first seed; stage 2 at the main run's compute and mix) over N "
                                    "unlabelled videos"),
                       ("tau_sweep", "τ sweep (first seed; fixed τ, no ignore regions)")):
        if key not in result:
            continue
        rankings = sorted({s["ranking"] for s in result[key].values() if "ranking" in s})
        lines += ["", title + (f"; web proposals ranked by {' / '.join(rankings)}" if rankings else "")
                  + ": novel (gen.) / novel-only / base / cross-domain mAP; pseudo-labels, precision, recall"]
        for k, s in sorted(result[key].items(), key=lambda kv: float(kv[0])):
            q = s.get("pseudo_quality", {})
            lines.append(f"  {k:>6}: " + " / ".join(f"{100 * _lookup(s, keys):6.2f}" for keys in (
                ("generalized", "novel"), ("novel_only",), ("generalized", "base"), ("cross_domain",)))
                + (f"; {q['pseudo_labels']}, {q['precision@0.5']:.2f}, {q['recall@0.5']:.2f}" if q else " (stage 1)")
                + (f" (novel {q['recall@0.5 novel']:.2f})" if q.get("recall@0.5 novel") is not None else ""))
    if "elapsed_s" in result:
        lines += ["", f"run time of this command: {result['elapsed_s'] / 60:.1f} min"]
    return "\n".join(lines)


def _quality_note(entry: dict) -> str:
    """``; pseudo-labels round 1: precision 0.47, recall 0.47 (novel 0.15)`` per round, for runs with truth."""
    notes = []
    for key in sorted(k for k in entry if k.endswith(".pseudo quality")):
        q = entry[key]
        novel = f" (novel {q['recall@0.5 novel']['mean']:.2f})" if "recall@0.5 novel" in q else ""
        notes.append(f"{key[:-len('.pseudo quality')].replace('round', 'round ')}: precision "
                     f"{q['precision@0.5']['mean']:.2f}, recall {q['recall@0.5']['mean']:.2f}{novel}")
    return "; pseudo-labels " + ", ".join(notes) if notes else ""


def plot_study(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name):
        fig.tight_layout()
        with atomic_open(out / name, "wb") as f:
            fig.savefig(f, dpi=110, format="png")
        plt.close(fig)

    labels = list(result["main"])
    fig, ax = plt.subplots(figsize=(9, 4))
    x = np.arange(len(labels))
    for i, (key, name) in enumerate((("stage1", "stage 1"), (SELF_TRAINED, "self-trained"), ("ceiling", "ceiling"))):
        ax.bar(x + (i - 1) * 0.27, [100 * result["main"][k][key]["mean"] for k in labels], 0.27,
               yerr=[100 * result["main"][k][key]["std"] for k in labels], label=name, capsize=3)
    ax.set_xticks(x, labels, rotation=15)
    ax.set_ylabel("average mAP (%)")
    ax.set_title(f"Stage 1, self-trained and the ceiling, seeds {result['seeds_done']} — SIMULATED DATA")
    ax.legend(fontsize=8)
    save(fig, "study_stages.png")
    for key, xlabel, name in (("scaling", "unlabelled web videos", "study_scaling.png"),
                              ("tau_sweep", "pseudo-label threshold τ", "study_tau.png")):
        if key not in result:
            continue
        items = sorted(result[key].items(), key=lambda kv: float(kv[0]))
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, keys in HEADLINES:
            ax.plot([float(k) for k, _ in items], [100 * _lookup(s, keys) for _, s in items], marker="o", label=label)
        ax.set_xscale("symlog", linthresh=100) if key == "scaling" else ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("average mAP (%)")
        ax.set_title(f"{xlabel} — SIMULATED DATA")
        ax.legend(fontsize=8)
        save(fig, name)


# --------------------------------------------------------------------------------------------- CLI
def _numbers(text: str, kind, what: str) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated {what}, e.g. 0,1,2") from None


def _sizes(text: str) -> dict:
    sizes = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, _, value = item.partition("=")
        if name not in ("curated_train", "web", "curated_test", "web_test") or not value.isdigit() or int(value) < 1:
            raise click.BadParameter(f"{item!r}: expected curated_train|web|curated_test|web_test=N (N >= 1)",
                                     param_hint="--sizes")
        sizes[name] = int(value)
    return sizes


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default="study_out", show_default=True, type=click.Path(file_okay=False))
@click.option("--seeds", default="0,1,2", show_default=True)
@click.option("--regime", default="specific", show_default=True, type=click.Choice(["specific", "shared"]),
              help="tal.sim regime of the simulated data.")
@click.option("--ablations", default=",".join(ABLATIONS), show_default=True,
              help="Comma-separated ablations to run (empty: none).")
@click.option("--scale", default="0,400,1600", show_default=True,
              help="Unlabelled videos for the scaling curve (first seed; empty: none).")
@click.option("--taus", default="0.2,0.4", show_default=True,
              help="Fixed τ values to sweep, no ignore regions (empty: none; 0.05 is the tau-0.05 ablation).")
@click.option("--sizes", default="", metavar="SPLIT=N,...",
              help="Other simulated sizes (curated_train, web, curated_test, web_test), e.g. for a smoke run.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="tal-train override, every stage.")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Tasks at a time, one process each (logs in OUT/logs/); 2 on a 2-core machine.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1), help="torch CPU threads.")
@click.option("--task", default=None, help="Run one task of a study started with the same --out (internal).")
@click.option("--no-progress", is_flag=True)
def main(out, seeds, regime, ablations, scale, taus, sizes, overrides, jobs, threads, task, no_progress):
    """Self-training study on SIMULATED data: ceiling recovery over seeds, ablations, scaling, τ sweep."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(threads)
    out = Path(out)
    if task is not None:
        if not (out / "settings.json").exists():
            raise click.UsageError(f"--task needs a study started in {out}")
        run_task(out, task, _settings_of(out), progress=not no_progress)
        click.echo(f"{task} done: {task_dir(out, task) / 'result.json'}")
        return
    settings = StudySettings(seeds=_numbers(seeds, int, "integers"), regime=regime,
                             ablations=[a.strip() for a in ablations.split(",") if a.strip()],
                             scale=_numbers(scale, int, "integers"), taus=_numbers(taus, float, "numbers"),
                             overrides=list(overrides), counts=_sizes(sizes))
    from tal.config import load_config
    from tal.demo import DEMO_PRESET

    load_config(DEMO_PRESET, list(overrides))  # a bad --set fails now, not after simulating the data
    result = run_study(out, settings, jobs=jobs, progress=not no_progress)
    click.echo(format_study(result))
    click.echo(str(out / "study.json"))


if __name__ == "__main__":
    main()
