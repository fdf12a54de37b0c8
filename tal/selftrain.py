"""Self-training (Hyun et al., WACV 2025): stage 1 on human labels → pseudo-labels on unlabelled videos →
stage 2 on labels + pseudo-labels (→ more rounds), with an evaluation of every stage when a test set is given.

The run is a fixed list of steps (``stage1.train``, ``stage1.eval``, ``round1.pseudo``, ``stage2.train``, ...).
Each step is idempotent and itself resumable (training continues from its last epoch checkpoint, pseudo-labels
skip finished videos), and ``state.json`` records finished steps atomically. So a run killed at any point and
started again with the same command finishes with the same result as an uninterrupted one.

Layout of ``OUT``::

    selftrain.json          the settings (a rerun with other settings is refused)
    state.json              finished steps
    stage1/                 tal-train run directory (last.pt, config.yaml, log.csv, loss_curve.png)
    stage1/eval.json        protocol results of that stage (when test sets are given) and how it named proposals
    thresholds/             held-out evidence of fold models (tal.crossfit) and the thresholds chosen from it
    unseen_classes/         --recurrence-weight / --rounds auto: class-held-out fold models and what they chose
    pseudo_round1.json      pseudo-labels written by stage 1 for stage 2 (+ .parts/ while being written)
    stage2/ ...
    report.json, report.txt, map_per_stage.png
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from features.errors import StovtalError
from tal.atomic import atomic_open, atomic_write_bytes, atomic_write_json
from tal.pseudo import FilterConfig, pseudo_label_quality, pseudo_label_store
from tal.thresholds import ThresholdRule

log = logging.getLogger("tal.selftrain")

STATE_NAME = "state.json"
RERANKS = ("recurrence", "score", "auto")
CANDIDATE_FLOOR = 0.01  # the lowest score of a proposal that --rerank (or an oracle selection) may keep
MISSING_TOLERANCE = 0.02  # share of annotated test videos that may be absent from the test store
UNSEEN_DIR = "unseen_classes"  # --recurrence-weight / --rounds auto: the class-held-out folds and their choice
# --rounds auto where held-out classes are found at most UNSEEN_RATIO as well as held-out videos: this many rounds,
# each from the second on stopped where its pseudo-labels outgrow the human labels (measured in docs/selftrain.md)
AUTO_ROUNDS, AUTO_STOP_DENSITY = 3, 1.0
# How a stage >= 2 spends its epoch (label_passes_plan): "mixed", every labelled and every unlabelled video once;
# "kept", the floor's passes over the labelled videos kept (as many labelled clips as labelled + unlabelled videos)
# and every unlabelled video added; "auto": kept where the class check finds held-out classes more than
# UNSEEN_RATIO as well, else mixed (measured in docs/selftrain.md)
LABEL_PASSES = ("auto", "mixed", "kept")
# why a run's label passes are what they are where it is not the class check (report.json, the table line)
PASSES_RECORDED = "recorded: the run started before --label-passes existed"
PASSES_EPOCH_GIVEN = ("chosen (--label-passes auto): the epoch is given (--pseudo-ratio or data.pseudo_ratio / "
                      "data.epoch_clips)")
NO_CHECK_HINT = (" (the class check of --rounds / --recurrence-weight / --label-passes auto; give the first two a "
                 "number and --label-passes mixed or kept to run without it)")
SETTINGS_NAME = "selftrain.json"
SIMULATED_NOTE = "SIMULATED DATA (tal.sim): figures show the method's behaviour, not real-video accuracy"
# how evaluations recorded before they recorded their naming (eval.json, study results) named proposals: top class
NAMING_BEFORE_RECORDED = {"logit_scale": 100.0, "topk": 1, "fusion": "geometric"}


class SelfTrainError(StovtalError, ValueError):
    """A one-line message naming the run directory, file or option at fault."""


@dataclass
class EvalSet:
    """A held-out store + annotations. ``in_domain``: novel-only and generalized; else: cross-domain."""

    features: str
    annotations: str
    cross_domain: bool = False
    subset: str | None = None  # annotation subset to score (default: every video of the file in the store)


@dataclass
class SelfTrainConfig:
    labeled_features: list[str]
    labeled_annotations: list[str]
    unlabeled_features: str
    # Pseudo-label/retrain rounds, or "auto": AUTO_ROUNDS (stopped by density) or 1, from the class check
    rounds: int | str = "auto"
    filter: FilterConfig = field(default_factory=FilterConfig)  # its thresholds apply when threshold_rule is None
    # Thresholds chosen from held-out labelled videos (cross-fitting, tal.thresholds); None: filter's fixed ones.
    threshold_rule: ThresholdRule | None = field(default_factory=ThresholdRule)
    split: str | None = None  # base/novel split; stage training uses its base classes (classes="base")
    classes: str = "base"
    subset: str | None = "training"  # subset of the human annotations to train on
    preset: str = "small"
    overrides: list[str] = field(default_factory=list)  # tal-train --set items, for every stage
    later_overrides: list[str] = field(default_factory=list)  # and for stages >= 2 only (e.g. fewer epochs)
    seed: int = 0
    init: str = "none"  # stage >= 2 starts: "none" (from scratch), "ema" (EMA from the previous stage), "finetune"
    pseudo_ratio: float | None = None
    pseudo_weight: str | None = None
    # Order of the unlabelled proposals before the thresholds cut them: "recurrence" (stage k's score combined
    # with how their content recurs across other unlabelled videos, tal.recurrence), "score" (stage k's alone) or
    # "auto" (the one that ranks the held-out labelled videos' proposals better; score without held-out folds)
    rerank: str = "recurrence"
    # The recurrence's weight against the score's (1 - it) in that ranking, or "auto": chosen from how well stage 1's
    # recipe finds actions of labelled classes held out of its training (class_check)
    recurrence_weight: float | str = "auto"
    # Rounds >= 2 stop before training on pseudo-labels more than this many times as dense per minute as the
    # human labels (pseudo_label_density); None: every round runs (AUTO_STOP_DENSITY where --rounds auto chose more).
    stop_density: float | None = None
    label_passes: str = "auto"  # stages >= 2: LABEL_PASSES
    tests: list[EvalSet] = field(default_factory=list)
    vocab: str | None = None  # store vocabulary holding the split's class names (test stores)
    tiou: list[float] = field(default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7])
    simulated: bool = False  # label every output as simulated
    prefer_store: str | None = None  # the store whose rows win for a video several training stores hold
    skip_missing: bool = False  # score test sets even when many annotated videos are not in their store
    unlabeled_truth: str | None = None  # analysis only: the unlabelled videos' true segments
    ceiling: bool = False  # also train stage 2 on unlabeled_truth (same recipe): what self-training could reach
    floor: bool = False  # also train stage 2's recipe on the human labels alone, at stage 2's compute

    def validate(self) -> None:
        if self.rounds != "auto" and not (type(self.rounds) is int and self.rounds >= 0):
            raise SelfTrainError(f"--rounds must be auto or an integer >= 0, got {self.rounds!r}")
        if self.rerank not in RERANKS:
            raise SelfTrainError(f"rerank must be one of {', '.join(RERANKS)}, got {self.rerank!r}")
        if self.rerank == "auto" and self.threshold_rule is None:
            raise SelfTrainError("--rerank auto chooses on the held-out videos of the threshold rule: not with a "
                                 "fixed --threshold (give --rerank recurrence or score)")
        if self.recurrence_weight != "auto" and not (isinstance(self.recurrence_weight, (int, float))
                                                     and 0.0 <= self.recurrence_weight <= 1.0):
            raise SelfTrainError(f"--recurrence-weight must be auto or lie in [0, 1], got {self.recurrence_weight!r}")
        if self.stop_density is not None and not self.stop_density > 0:
            raise SelfTrainError(f"--stop-density must be > 0, got {self.stop_density}")
        if self.stop_density is not None and self.rounds != "auto" and self.rounds < 2:
            raise SelfTrainError(f"--stop-density stops rounds from the second on: it needs --rounds 2 or more, got "
                                 f"--rounds {self.rounds}")
        if self.label_passes not in LABEL_PASSES:
            raise SelfTrainError(f"--label-passes must be one of {', '.join(LABEL_PASSES)}, got {self.label_passes!r}")
        if self.label_passes == "kept" and epoch_given(self):
            raise SelfTrainError("--label-passes kept sets stage 2's epoch itself: not with --pseudo-ratio or a "
                                 "data.pseudo_ratio / data.epoch_clips override (give --label-passes mixed)")
        if self.init not in ("ema", "finetune", "none"):
            raise SelfTrainError(f"init must be ema, finetune or none, got {self.init!r}")
        if self.tests and (self.split is None or self.vocab is None):
            raise SelfTrainError("evaluating a test set needs --split (base/novel classes) and --vocab")
        if self.classes not in ("base", "all"):
            raise SelfTrainError(f"classes must be base or all, got {self.classes!r}")
        if self.prefer_store and not _preferred(self.prefer_store, self.labeled_features + [self.unlabeled_features]):
            raise SelfTrainError(f"--prefer-store {self.prefer_store}: not one of the labelled or unlabelled stores")
        if self.ceiling and not self.unlabeled_truth:
            raise SelfTrainError("--ceiling trains on the unlabelled videos' truth: give --unlabeled-truth")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["filter"] = asdict(self.filter)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SelfTrainConfig":
        d = dict(d)
        d["filter"] = FilterConfig(**d["filter"])
        if d.get("threshold_rule") is not None:
            # runs recorded before precision_of / per_round existed: the kept set's precision, chosen once
            d["threshold_rule"] = ThresholdRule(**{"precision_of": "kept", "per_round": False, **d["threshold_rule"]})
        d["tests"] = [EvalSet(**t) for t in d.get("tests", [])]
        d.setdefault("rerank", "score")  # runs recorded before --rerank existed ranked by score
        d.setdefault("recurrence_weight", 0.5)  # and those before --recurrence-weight weighed both alike
        return cls(**d)


def _preferred(store, features) -> str | None:
    """--prefer-store for a stage that trains on ``features`` (stage 1 has no unlabelled store)."""
    if store is None or not any(Path(f).resolve() == Path(store).resolve() for f in features):
        return None
    return store


# --------------------------------------------------------------------------------------------- state
class RunState:
    """Finished steps of a run directory, persisted atomically after each step."""

    def __init__(self, out: Path, cfg: SelfTrainConfig):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        settings, wanted = self.out / SETTINGS_NAME, _comparable(cfg.to_dict())
        if settings.exists():
            # read back through from_dict: settings recorded before a field existed hold what it defaulted to
            try:
                recorded = json.loads(settings.read_text())
                found = _comparable(SelfTrainConfig.from_dict(recorded).to_dict())
                if "label_passes" not in recorded and wanted.get("label_passes") in ("auto", "mixed"):
                    found["label_passes"] = wanted["label_passes"]  # it ran mixed: either resumes it as it was
            except (TypeError, KeyError, ValueError, AttributeError) as e:
                raise SelfTrainError(f"{settings}: not the settings of a tal-selftrain run ({e}); choose another "
                                     "--out") from None
            if found != wanted:
                diff = sorted(k for k in set(found) | set(wanted)
                              if k not in found or k not in wanted or found[k] != wanted[k])
                differing = ", ".join(_differing(diff, found, wanted))
                raise SelfTrainError(f"{self.out} was started with other settings ({differing}); "
                                     "rerun with the same options or choose another --out")
            # its later stages trained each video once per epoch: a resumed run goes on as it started
            self.before_label_passes = "label_passes" not in recorded
        else:
            atomic_write_json(settings, cfg.to_dict())
            self.before_label_passes = False
        path = self.out / STATE_NAME
        self.done: list[str] = json.loads(path.read_text())["done"] if path.exists() else []

    def finished(self, step: str) -> bool:
        return step in self.done

    def mark(self, step: str) -> None:
        self.done.append(step)
        atomic_write_json(self.out / STATE_NAME, {"done": self.done})


def _differing(keys, found: dict, wanted: dict) -> list[str]:
    """Each differing setting, with both values where they are short (e.g. an option a user left at its default)."""
    def short(v):
        return v is None or isinstance(v, (str, int, float, bool))
    return [f"{k}: {found[k]!r} recorded, {wanted[k]!r} given" if k in found and k in wanted and short(found[k])
            and short(wanted[k]) else k for k in keys]


def _comparable(d: dict) -> dict:
    # JSON round trip so that tuples/lists and ints/floats compare as they are stored.
    d = json.loads(json.dumps(d))
    if d.get("rerank") == "score":  # the recurrence's weight means nothing there (runs from before it resume)
        d["recurrence_weight"] = None
    return d


# --------------------------------------------------------------------------------------------- steps
def stage_run_config(cfg: SelfTrainConfig, later: bool):
    """The tal-train config of stage 1 (``later=False``) or of a stage trained with pseudo-labels: the
    pseudo-label options (and ``later_overrides``) apply to the latter only."""
    from tal.config import load_config

    sets = ["data.mode=agnostic", f"train.seed={cfg.seed}"]
    if later and cfg.pseudo_ratio is not None:
        sets.append(f"data.pseudo_ratio={cfg.pseudo_ratio}")
    if later and cfg.pseudo_weight is not None:
        sets.append(f"data.pseudo_weight={cfg.pseudo_weight}")
    return load_config(cfg.preset, list(cfg.overrides) + (list(cfg.later_overrides) if later else []) + sets)


def stage_inputs(cfg: SelfTrainConfig, pseudo=()):
    from tal.train import TrainInputs

    features = list(cfg.labeled_features) + ([cfg.unlabeled_features] if pseudo else [])
    return TrainInputs(features, list(cfg.labeled_annotations), [str(p) for p in pseudo], cfg.subset, cfg.split,
                       cfg.classes if cfg.split else "all", _preferred(cfg.prefer_store, features))


def train_stage(cfg: SelfTrainConfig, run_dir: Path, pseudo: list[Path], init_from: Path | None,
                 progress: bool, floor: bool = False, passes: str = "mixed") -> Path:
    """One stage's training. ``floor``: the later stages' recipe on the human labels alone, at the compute
    of a stage with pseudo-labels. ``passes`` (LABEL_PASSES, resolved) of a stage with pseudo-labels: "mixed", an
    epoch of every labelled and every pseudo-labelled video once; "kept", as many labelled clips as labelled +
    unlabelled videos (the mixed floor's) plus one per unlabelled video; the floor trains as many clips."""
    from tal.train import train

    run_cfg = stage_run_config(cfg, later=bool(pseudo) or floor)
    inputs = stage_inputs(cfg, pseudo)
    if floor or (pseudo and passes == "kept"):
        from tal.crossfit import labelled_videos

        clips, ratio = later_epoch(len(labelled_videos(inputs).videos), _count_videos([cfg.unlabeled_features]), passes)
        run_cfg.data.epoch_clips = clips
        if pseudo:
            run_cfg.data.pseudo_ratio = ratio
    init = {}
    if init_from is not None and cfg.init == "ema":
        init["init_ema_from"] = init_from
    elif init_from is not None and cfg.init == "finetune":
        init["init_from"] = init_from
    return train(run_cfg, inputs, run_dir, resume=True, progress=progress, **init)


def later_epoch(labelled: int, unlabelled: int, passes: str) -> tuple[int, float]:
    """Clips per epoch of a later stage (``passes``: "mixed" or "kept", LABEL_PASSES) and its pseudo-labelled share."""
    clips = labelled + unlabelled + (unlabelled if passes == "kept" else 0)
    return clips, unlabelled / clips


def novel_classes(cfg: SelfTrainConfig):
    """The split's novel class names (None without a split): what pseudo-label recall is reported for apart."""
    from tal.eval.protocols import load_split

    return load_split(cfg.split).novel if cfg.split else None


def _group_recall(quality: dict) -> str:
    """`` (base 0.612, novel 0.180)`` when the quality holds recall per class group, else nothing."""
    parts = [f"{g} {quality[f'recall@0.5 {g}']:.3f}" for g in ("base", "novel")
             if quality.get(f"recall@0.5 {g}") is not None]
    return f" ({', '.join(parts)})" if parts else ""


def evaluate_stage(checkpoint, cfg: SelfTrainConfig, progress: bool = False) -> dict:
    """Protocol results of one checkpoint on every test set (open-vocabulary over its agnostic proposals)."""
    from tal.data.annotations import load_annotations
    from tal.eval.protocols import evaluate_protocol, load_split
    from tal.infer import Localizer, iter_open_vocabulary, store_vocabulary
    from tal.model.ov import OVConfig
    from features.store import open_store

    naming = evaluation_naming()
    split = load_split(cfg.split)
    localizer = Localizer.from_checkpoint(checkpoint)
    results: dict = {}
    for test in cfg.tests:
        gt = load_annotations(test.annotations)
        if test.subset:
            gt = gt.subset(test.subset)
        with open_store(test.features, "r") as store:
            present = [v for v in gt.videos if v in store]
        missing = len(gt.videos) - len(present)
        if not present:
            raise SelfTrainError(f"{test.annotations}: none of its videos is in {test.features}")
        if missing > MISSING_TOLERANCE * len(gt.videos) and not cfg.skip_missing:
            raise SelfTrainError(f"{test.annotations}: {missing} of {len(gt.videos)} annotated videos are not in "
                                 f"{test.features}; scoring the rest would change the benchmark "
                                 "(--skip-missing scores them anyway)")
        if missing:
            log.warning("%s: %d annotated videos are not in %s; scoring the %d present", test.annotations, missing,
                        test.features, len(present))
        gt = gt.restrict_videos(present)
        vocab = store_vocabulary(test.features, cfg.vocab)
        runs = [("cross_domain", "generalized", split.all)] if test.cross_domain else \
            [("novel_only", "novel", split.novel), ("generalized", "generalized", split.all)]
        where = f"{test.features} vocabulary {cfg.vocab}"
        vocabularies = {key: vocab.restrict(classes, where) for key, _, classes in runs}
        preds: dict = {key: {} for key, _, _ in runs}
        for vid, named in iter_open_vocabulary(test.features, localizer, present, vocabularies,
                                               ov_config=OVConfig(**naming), batch_size=8):
            for key, dets in named.items():
                preds[key][vid] = dets
        for key, mode, _ in runs:
            results[key] = evaluate_protocol(gt, preds[key], split, mode, cfg.tiou)
            results[key].update(features=str(test.features), videos_scored=len(present), videos_missing=missing)
    results["naming"] = naming
    return results


def evaluation_naming() -> dict:
    """How evaluate_stage names proposals (``tal.model.ov.OVConfig``'s defaults), recorded with each evaluation."""
    from tal.model.ov import OVConfig

    return OVConfig().to_dict()


def named_as_today(recorded: dict) -> bool:
    """Whether an evaluation (eval.json, a study result) named its proposals as evaluate_stage does today: the
    same checkpoint scores points apart under another top-k, so stages named otherwise are never compared."""
    return recorded.get("naming", NAMING_BEFORE_RECORDED) == evaluation_naming()


def summarize(results: dict) -> dict:
    """The headline numbers of one stage: average mAP per protocol (and class group)."""
    out = {}
    if "novel_only" in results:
        out["novel_only"] = results["novel_only"]["novel"]["average_mAP"]
    if "generalized" in results:
        out["generalized"] = {g: results["generalized"][g]["average_mAP"] for g in ("all", "base", "novel")}
    if "cross_domain" in results:
        out["cross_domain"] = results["cross_domain"]["all"]["average_mAP"]
        out["cross_domain_groups"] = {g: results["cross_domain"][g]["average_mAP"] for g in ("all", "base", "novel")}
    return out


# --------------------------------------------------------------------------------------------- the run
def run_selftrain(cfg: SelfTrainConfig, out, *, progress: bool = True) -> dict:
    """Run (or resume) every step; returns the report (also written to ``out/report.json``)."""
    from tal.data.annotations import read_json

    cfg.validate()
    out = Path(out)
    _check_inputs(cfg)
    for later in (False, True):  # a bad preset or --set fails here, before the run directory records settings
        stage_run_config(cfg, later)
    state = RunState(out, cfg)
    ckpt = out / "stage1" / "last.pt"
    stages: dict[str, dict] = {}
    pseudo_counts: dict[str, dict] = {}
    pseudo_files: list[Path] = []  # the pseudo-labels the last stage trained on
    stopped, stage = None, 1
    plan = {"rounds": cfg.rounds, "stop_density": cfg.stop_density,
            "label_passes": label_passes_plan(cfg, None, state.before_label_passes)}
    while True:
        name = f"stage{stage}"
        pseudo = []
        if stage > 1:
            pl = out / f"pseudo_round{stage - 1}.json"
            step = f"round{stage - 1}.pseudo"
            if not state.finished(step):
                filt, why = pseudo_filter(cfg, state, out, progress, stage - 1, pseudo_files)
                log.info("%s: pseudo-labelling %s with %s (τ = %.4g%s)", step, cfg.unlabeled_features, ckpt,
                         filt.threshold, "" if filt.ignore_threshold is None else
                         f", ignore regions from {filt.ignore_threshold:.4g}")
                write_pseudo_labels(cfg, ckpt, pl, filt, why, progress)
                state.mark(step)
            written = read_json(pl)  # parsed once for both counts: pseudo-label files can be large
            pseudo_counts[step] = {**_pseudo_counts(written), **pseudo_label_density(cfg, written)}
            _log_density(step, pseudo_counts[step])
            if cfg.unlabeled_truth:
                pseudo_counts[step]["quality"] = quality = pseudo_label_quality(pl, cfg.unlabeled_truth,
                                                                                novel=novel_classes(cfg))
                log.info("%s: pseudo-label precision %.3f, recall %.3f at tIoU 0.5 against %s%s", step,
                         quality["precision@0.5"], quality["recall@0.5"], cfg.unlabeled_truth, _group_recall(quality))
            stopped = _density_stop(plan["stop_density"], stage, step, pseudo_counts[step])
            if stopped:
                break
            pseudo = [pl]
        passes = plan["label_passes"]["passes"]
        stages[name] = _train_and_evaluate(cfg, state, out / name, pseudo, ckpt if stage > 1 else None, progress,
                                           passes=passes)
        ckpt, pseudo_files = out / name / "last.pt", pseudo
        if stage == 1 and cfg.rounds != 0 and uses_class_check(cfg, state.before_label_passes):
            check = class_check(cfg, state, out, progress)
            plan = {**round_plan(cfg, check), "label_passes": label_passes_plan(cfg, check, state.before_label_passes)}
            chosen = plan["label_passes"]
            log.info("label passes: %s; %s%s", chosen["passes"], chosen["source"],
                     "" if chosen.get("ratio") is None else f", the class check's ratio {chosen['ratio']:.2f}")
        if stage > plan["rounds"]:
            break
        stage += 1
    if cfg.ceiling and plan["rounds"] >= 1:
        truth = out / "ceiling_labels.json"
        if not truth.exists():
            oracle_pseudo_labels(cfg.unlabeled_truth, out / "pseudo_round1.json", truth)
        stages["ceiling"] = _train_and_evaluate(cfg, state, out / "ceiling", [truth], out / "stage1" / "last.pt",
                                                progress, passes=plan["label_passes"]["passes"])
    if cfg.floor and plan["rounds"] >= 1:
        stages["floor"] = _train_and_evaluate(cfg, state, out / "floor", [], out / "stage1" / "last.pt", progress,
                                              floor=True, passes=plan["label_passes"]["passes"])
    report = build_report(cfg, out, stages, pseudo_counts, plan)
    if stopped:
        report["stopped"] = stopped
    write_report(report, out)
    return report


def _density_stop(limit: float | None, stage: int, step: str, counts: dict) -> dict | None:
    """--stop-density: from round 2 on, the stage would train on pseudo-labels denser than the human labels by more
    than the limit; the previous stage stays the last (measured in docs/selftrain.md: where later rounds lost,
    their pseudo-labels grew denser than the human labels)."""
    ratio = counts.get("density_ratio")
    if limit is None or stage <= 2 or ratio is None or ratio <= limit:
        return None
    log.warning("%s: the pseudo-labels are %.2f x as dense as the human labels (limit %g): stage %d is not trained, "
                "stage %d is the last", step, ratio, limit, stage, stage - 1)
    return {"before_stage": stage, "step": step, "density_ratio": ratio, "stop_density": limit}


def _train_and_evaluate(cfg, state, run_dir: Path, pseudo, init_from, progress, floor: bool = False,
                        passes: str = "mixed") -> dict:
    """One stage's training and evaluation steps; the stage's summary (empty without test sets)."""
    name = run_dir.name
    step = f"{name}.train"
    if not state.finished(step):
        log.info("%s: training%s", step, f" on labels + {pseudo[0].name}" if pseudo else " on human labels")
        train_stage(cfg, run_dir, pseudo, init_from, progress, floor=floor, passes=passes)
        state.mark(step)
    if not cfg.tests:
        return {}
    step, path = f"{name}.eval", run_dir / "eval.json"
    results = current_evaluation(path) if state.finished(step) else None
    if results is None:  # a finished stage named otherwise is evaluated again, not retrained
        log.info("%s: evaluating %s", step, run_dir / "last.pt")
        results = evaluate_stage(run_dir / "last.pt", cfg, progress)
        atomic_write_json(path, results)
        if not state.finished(step):
            state.mark(step)
    return summarize(results)


def current_evaluation(path: Path) -> dict | None:
    """The results in ``path`` (an eval.json); None where missing or where they named the proposals otherwise than
    today's evaluation does (from before: the top class only): that stage is evaluated again rather than compared
    with stages named otherwise."""
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    if named_as_today(results):
        return results
    log.info("%s: named with other settings than today's evaluation: evaluating again", path)
    return None


def write_pseudo_labels(cfg: SelfTrainConfig, ckpt: Path, pl: Path, filt: FilterConfig, why: dict,
                        progress: bool) -> None:
    """``ckpt``'s pseudo-labels for the unlabelled store at ``pl``, cut by ``filt``. Re-ranked
    (``why["ranking"]`` is "recurrence"): its proposals down to ``CANDIDATE_FLOOR`` (``<pl>.candidates.json``) are
    re-ranked (``<pl>.reranked.json``, :mod:`tal.recurrence`) and then cut by the same thresholds."""
    if why["ranking"] == "score":  # recorded as before --rerank existed, so that such runs' parts still resume
        pseudo_label_store(cfg.unlabeled_features, ckpt, pl, filt, progress=progress,
                           provenance={k: v for k, v in why.items() if k not in ("ranking", "recurrence_weight")})
        return
    from tal.pseudo import refilter
    from tal.recurrence import rerank_candidates

    cands, ranked = pl.with_suffix(".candidates.json"), pl.with_suffix(".reranked.json")
    pseudo_label_store(cfg.unlabeled_features, ckpt, cands, candidate_filter(filt), progress=progress)
    rerank_candidates(cands, cfg.unlabeled_features, ranked, recurrence_config(cfg, pl.parent), progress=progress)
    stats = refilter(ranked, pl, filt, provenance=why)
    log.info("%s: %d pseudo-labels in %d videos after re-ranking", pl.name, stats.segments, stats.videos)


def recurrence_config(cfg: SelfTrainConfig, out):
    """How ``cfg`` re-ranks the unlabelled proposals by recurrence; with ``--recurrence-weight auto``, the weight
    chosen for the run in ``out`` (:func:`class_check`)."""
    from tal.recurrence import RecurrenceConfig

    return RecurrenceConfig(seed=cfg.seed, weight=_weight_record(cfg, out)["weight"])


def _weight_record(cfg: SelfTrainConfig, out) -> dict:
    if cfg.recurrence_weight != "auto":
        return {"weight": float(cfg.recurrence_weight), "source": "given (--recurrence-weight)"}
    return _check_record(out)


def _check_record(out) -> dict:
    path = Path(out) / UNSEEN_DIR / "choice.json"
    if not path.exists():
        raise SelfTrainError(f"{path}: the class check of this run has not run yet")
    return json.loads(path.read_text())


def uses_class_check(cfg: SelfTrainConfig, before_label_passes: bool = False) -> bool:
    """Whether something of the run is chosen by :func:`class_check`: the recurrence's weight, the rounds or the
    label passes (not in a run started before --label-passes existed: :func:`label_passes_plan`)."""
    return (cfg.rounds == "auto" or (cfg.label_passes == "auto" and not before_label_passes)
            or (cfg.recurrence_weight == "auto" and cfg.rerank != "score"))


def class_check(cfg: SelfTrainConfig, state: "RunState", out: Path, progress: bool) -> dict:
    """How well stage 1's recipe finds actions of labelled classes it never saw (``OUT/unseen_classes/``:
    class-held-out fold models, :func:`tal.crossfit.unseen_class_ap`) against how well it finds those it saw on
    held-out videos (the threshold rule's fold models, ``OUT/thresholds/``, trained here too under a fixed
    ``--threshold``), and the recurrence's weight that implies (:func:`tal.recurrence.choose_weight`, used with
    ``--recurrence-weight auto``); the rounds follow from it too (:func:`round_plan`). Step ``stage1.unseen``,
    cached in ``OUT/unseen_classes/choice.json``."""
    if state.finished("stage1.unseen"):
        return _check_record(out)
    from tal.crossfit import class_folds, heldout_evidence, heldout_sample, labelled_videos, unseen_class_ap
    from tal.pseudo import agnostic_ap
    from tal.recurrence import EQUAL_WEIGHT, choose_weight, weak_check, weak_check_text
    from tal.thresholds import ThresholdError

    rule = cfg.threshold_rule or ThresholdRule()
    run_cfg, inputs, folder = stage_run_config(cfg, later=False), stage_inputs(cfg), out / UNSEEN_DIR
    try:
        labelled = labelled_videos(inputs)
    except ThresholdError as e:
        raise SelfTrainError(f"{folder}: {e}{NO_CHECK_HINT}") from None
    try:
        folds = class_folds(labelled, rule.folds, cfg.seed)
        why_not = next((f"every labelled video holds one of the classes {', '.join(held)}" for held, train_ids, _
                        in folds if not train_ids), None)
    except ThresholdError as e:  # fewer labelled classes than folds: nothing to hold out
        why_not = str(e)
    if why_not:
        choice = {"weight": EQUAL_WEIGHT, "ratio": None, "source": "chosen (--recurrence-weight auto)",
                  "rule": f"{EQUAL_WEIGHT} where classes cannot be held out: {why_not}"}
        log.warning("class check: labelled classes cannot be held out (%s): where it chooses, the recurrence weighs "
                    "%.2f and one round runs", why_not, EQUAL_WEIGHT)
    else:
        try:
            heldout_sample(run_cfg, inputs, out / "thresholds", cfg.filter, folds=rule.folds, alpha=rule.alpha,
                           seed=cfg.seed, progress=progress, need_proposals=True)
            truth, proposals = heldout_evidence(inputs, out / "thresholds", rule.folds, CANDIDATE_FLOOR)
            seen = agnostic_ap(truth, proposals, rule.alpha)
            unseen = unseen_class_ap(run_cfg, inputs, folder, cfg.filter, folds=rule.folds, alpha=rule.alpha,
                                     seed=cfg.seed, floor=CANDIDATE_FLOOR, progress=progress)
        except ThresholdError as e:
            raise SelfTrainError(f"{folder}: {e}{NO_CHECK_HINT}") from None
        choice = {**choose_weight(unseen["ap"], seen), "source": "chosen (--recurrence-weight auto)",
                  "class_folds": unseen["folds"], "tiou": rule.alpha}
        log.info("class check: held-out classes' AP %.3f, held-out videos' AP %.3f (ratio %s): recurrence weight %.2f",
                 choice["unseen_ap"], seen, "undefined" if choice["ratio"] is None else f"{choice['ratio']:.2f}",
                 choice["weight"])
        if weak_check(seen):
            log.warning("%s", weak_check_text(seen))
    atomic_write_json(folder / "choice.json", choice)
    state.mark("stage1.unseen")
    return choice


def round_plan(cfg: SelfTrainConfig, check: dict) -> dict:
    """How many rounds run and the density past which a later one stops: ``cfg``'s, or with ``--rounds auto``
    AUTO_ROUNDS stopped at AUTO_STOP_DENSITY (or ``--stop-density``) where the class check found held-out classes at
    most UNSEEN_RATIO as well as held-out videos (stage 1 misses actions of classes it never saw: later rounds
    find more of them), else 1 (where it already finds them, later rounds lost; docs/selftrain.md)."""
    from tal.recurrence import UNSEEN_RATIO, misses_unseen

    if cfg.rounds != "auto":
        return {"rounds": cfg.rounds, "stop_density": cfg.stop_density, "source": "given (--rounds)"}
    ratio = check.get("ratio")
    many = misses_unseen(ratio)
    limit = cfg.stop_density or AUTO_STOP_DENSITY
    if cfg.stop_density is not None and not many:
        log.warning("--stop-density %g is not used: --rounds auto chose one round (the class check's ratio %s)",
                    cfg.stop_density, "undefined" if ratio is None else f"{ratio:.2f}")
    return {"rounds": AUTO_ROUNDS if many else 1, "stop_density": limit if many else None,
            "source": "chosen (--rounds auto)", "ratio": ratio,
            "rule": f"{AUTO_ROUNDS} rounds, a later one stopped where its pseudo-labels are more than {limit:g} x as "
                    f"dense as the human labels, where held-out classes' AP is at most {UNSEEN_RATIO} x the held-out "
                    "videos' AP of the trained classes, else 1"}


def label_passes_plan(cfg: SelfTrainConfig, check: dict | None, before_option: bool = False) -> dict:
    """How stages >= 2 (and the ceiling, the floor) spend an epoch (:func:`train_stage`): ``cfg``'s, or with
    ``--label-passes auto`` "kept" where the class check found held-out classes more than UNSEEN_RATIO as well as
    held-out videos — there longer training on the labels teaches the unseen classes too and pseudo-labels in a
    mixed epoch cut it short — else "mixed" (there it over-fits the trained classes; docs/selftrain.md).
    ``before_option``: the run started before the option existed; it goes on as it trained ("mixed")."""
    from tal.recurrence import UNSEEN_RATIO, misses_unseen

    if cfg.label_passes != "auto":
        return {"passes": cfg.label_passes, "source": "given (--label-passes)"}
    if before_option:
        return {"passes": "mixed", "source": PASSES_RECORDED}
    if epoch_given(cfg):
        return {"passes": "mixed", "source": PASSES_EPOCH_GIVEN}
    ratio = (check or {}).get("ratio")
    return {"passes": "mixed" if ratio is None or misses_unseen(ratio) else "kept",
            "source": "chosen (--label-passes auto)", "ratio": ratio,
            "rule": f"kept where held-out classes' AP is more than {UNSEEN_RATIO} x the held-out videos' AP of the "
                    "trained classes, else mixed"}


def epoch_given(cfg: SelfTrainConfig) -> bool:
    """Whether the user set the later stages' epoch (share of pseudo-labelled clips or clips per epoch: --pseudo-ratio,
    a --set / --stage2-set override or the preset file)."""
    data = stage_run_config(cfg, later=True).data
    return data.pseudo_ratio is not None or data.epoch_clips is not None


def candidate_filter(filt: FilterConfig) -> FilterConfig:
    """The filter writing the proposals that a re-ranking (or an oracle selection) chooses among: down to
    ``CANDIDATE_FLOOR`` (or ``filt``'s lowest threshold, if lower), no ignore regions, no top-k, so that
    :func:`tal.pseudo.refilter` by ``filt`` afterwards is exact."""
    lowest = filt.threshold if filt.ignore_threshold is None else filt.ignore_threshold  # <= threshold
    return replace(filt, threshold=min(CANDIDATE_FLOOR, lowest), ignore_threshold=None, top_k=None)


def pseudo_filter(cfg: SelfTrainConfig, state: "RunState", out: Path, progress: bool, model_stage: int = 1,
                  model_pseudo=()) -> tuple[FilterConfig, dict]:
    """The filter for the pseudo-labels stage ``model_stage`` writes (trained on ``model_pseudo``) and why its
    thresholds are what they are (recorded in the file's provenance).

    With a threshold rule, the thresholds come from models cross-fitted on the labelled videos by the recipe of
    the stage they are for: stage 1's (``OUT/thresholds/``); with ``rule.per_round``, stage k's for round k
    (``OUT/thresholds_stage<k>/``: its recipe on the other folds' labels and ``model_pseudo``), else round 1's
    reused. Without a rule, ``cfg.filter``'s fixed ones."""
    weight = {} if cfg.rerank == "score" else {"recurrence_weight": _weight_record(cfg, out)}
    if cfg.threshold_rule is None:
        return cfg.filter, {"threshold_source": "fixed (--threshold)", "ranking": cfg.rerank, **weight}
    from tal.crossfit import heldout_sample
    from tal.thresholds import ThresholdError, choose_thresholds

    rule = cfg.threshold_rule
    k = model_stage if rule.per_round else 1
    folder = out / ("thresholds" if k == 1 else f"thresholds_stage{k}")
    path, step = folder / "choice.json", f"stage{k}.thresholds"
    # fold models start from scratch whatever --init says: stage k - 1 trained on the held-out fold
    inputs = stage_inputs(cfg, model_pseudo if k > 1 else ())

    def sample():
        try:
            return heldout_sample(stage_run_config(cfg, later=k > 1), inputs, folder, cfg.filter, folds=rule.folds,
                                  alpha=rule.alpha, seed=cfg.seed, progress=progress,
                                  need_proposals=cfg.rerank == "auto")
        except ThresholdError as e:
            raise SelfTrainError(f"{folder}: {e}") from None

    if not state.finished(step):
        try:
            choice = choose_thresholds(sample(), rule)
        except ThresholdError as e:
            raise SelfTrainError(f"{folder}: {e}") from None
        if not choice["precision_reached"]:
            log.warning("no threshold reaches %s %.2f on the held-out labelled videos (best %.3f): every "
                        "unlabelled video keeps only its top-1 proposal", rule.precision_key.replace("_", " "),
                        rule.precision, choice["at_threshold"][rule.precision_key])
        choice["stage"] = k
        atomic_write_json(path, choice)
        state.mark(step)
    choice = json.loads(path.read_text())
    filt = replace(cfg.filter, threshold=choice["threshold"], ignore_threshold=choice.get("ignore_threshold"))
    why = {"threshold_source": f"chosen on held-out labelled videos for stage {k}'s recipe (tal.thresholds)",
           "threshold_choice": choice, "ranking": cfg.rerank, **weight}
    if cfg.rerank == "auto":
        sample()  # cached; redoes the held-out proposals of a run from before they were kept
        why["rerank_choice"] = rerank_choice(cfg, inputs, folder, progress)
        why["ranking"] = why["rerank_choice"]["chosen"]
    return filt, why


def rerank_choice(cfg: SelfTrainConfig, inputs, folder: Path, progress: bool) -> dict:
    """--rerank auto: score or recurrence, whichever ranks the fold models' held-out proposals better
    (``folder/rerank.json``, cached)."""
    from tal.crossfit import heldout_evidence
    from tal.recurrence import choose_rerank

    path = folder / "rerank.json"
    if not path.exists():
        # the same pool as the unlabelled candidates: proposals down to CANDIDATE_FLOOR
        truth, proposals = heldout_evidence(inputs, folder, cfg.threshold_rule.folds, CANDIDATE_FLOOR)
        choice = choose_rerank(truth, proposals, inputs.features, recurrence_config(cfg, folder.parent),
                               cfg.threshold_rule.alpha, progress, inputs.prefer_store, what=str(folder))
        atomic_write_json(path, choice)
        log.info("ranking of the unlabelled proposals: %s (held-out AP at tIoU %.2g: score %.3f, recurrence %.3f)",
                 choice["chosen"], choice["tiou"], choice["heldout_ap"]["score"], choice["heldout_ap"]["recurrence"])
    return json.loads(path.read_text())


def oracle_pseudo_labels(truth_path, like, out) -> Path:
    """The true segments of the videos of pseudo-label file ``like``, written as perfect pseudo-labels
    (class-agnostic, score 1): stage 2 trained on them is the ceiling of self-training."""
    from tal.data.annotations import AnnotationSet, Segment, VideoAnnotation, load_annotations, write_official

    truth = load_annotations(truth_path)
    videos = {}
    for vid in load_annotations(like).videos:
        if vid not in truth.videos:
            raise SelfTrainError(f"{truth_path}: holds no truth for unlabelled video {vid}")
        v = truth.videos[vid]
        videos[vid] = VideoAnnotation(vid, "training", v.duration, v.fps,
                                      [Segment(s.start, s.end, "action", 1.0, True) for s in v.segments])
    aset = AnnotationSet(videos, {"oracle": True, "source": str(truth_path), "videos": len(videos),
                                  "segments": sum(len(v.segments) for v in videos.values())})
    write_official(aset, out)
    return Path(out)


def _check_inputs(cfg: SelfTrainConfig) -> None:
    """Fail before hours of training on inputs that cannot work."""
    from features.store import open_store

    with open_store(cfg.unlabeled_features, "r") as store:
        if len(store) == 0:
            raise SelfTrainError(f"{cfg.unlabeled_features}: the unlabelled store holds no videos")
    for path in list(cfg.labeled_features) + [t.features for t in cfg.tests]:
        open_store(path, "r").close()


def _pseudo_counts(written: dict) -> dict:
    """The counts tal-pseudo recorded in a pseudo-label file's provenance (``written``: the file as JSON)."""
    prov = written.get("provenance") or {}
    return {k: prov.get(k) for k in ("videos", "segments", "fallback_videos", "empty_videos", "threshold",
                                     "ignore_threshold")}


def pseudo_label_density(cfg: SelfTrainConfig, written: dict) -> dict:
    """Pseudo-labels per minute of unlabelled video (``written``: a pseudo-label file as JSON) beside the human
    labels per minute of labelled video (the labels stage 1 trains on: the split's training classes, in the videos
    that hold one). Needs no truth: pseudo-labels r times as dense as the human labels are at least 1 − 1/r false
    unless the unlabelled videos hold more actions per minute than the human labels mark (measured in docs/selftrain.md). Videos of unknown duration are
    left out; nothing is returned where either side has no minutes (or the labelled videos cannot be read as
    training reads them: a warning says why)."""
    from tal.crossfit import labelled_videos
    from tal.thresholds import ThresholdError

    try:
        human = [v for v in labelled_videos(stage_inputs(cfg)).videos.values() if math.isfinite(v.duration)]
    except ThresholdError as e:
        log.warning("pseudo-label density not computed: %s", e)
        return {}
    database = [e for e in written["database"].values()
                if e.get("duration") is not None and math.isfinite(e["duration"])]
    human_minutes = sum(v.duration for v in human) / 60
    minutes = sum(e["duration"] for e in database) / 60
    human_labels = sum(len(v.segments) for v in human)
    if not human_minutes > 0 or not minutes > 0 or not human_labels:
        return {}
    per_minute = sum(len(e["annotations"]) for e in database) / minutes
    human_per_minute = human_labels / human_minutes
    return {"per_minute": per_minute, "labelled_per_minute": human_per_minute,
            "density_ratio": per_minute / human_per_minute}


def density_text(counts: dict) -> str:
    return (f"{counts['per_minute']:.2f} pseudo-labels per minute of unlabelled video, {counts['density_ratio']:.2f} x "
            f"the {counts['labelled_per_minute']:.2f} human labels per minute of labelled video")


def _log_density(step: str, counts: dict) -> None:
    if "density_ratio" not in counts:
        return
    text = f"{step}: {density_text(counts)}"
    if counts["density_ratio"] > 1:
        # one true instance per matched pseudo-label: precision <= (true instances per minute) / (pseudo per minute)
        log.warning("%s: if the unlabelled videos hold no more actions per minute than the human labels mark in the "
                    "labelled ones, at least %.1f %% of these pseudo-labels are false", text,
                    100 * (1 - 1 / counts["density_ratio"]))
    else:
        log.info(text)


def _count_videos(paths) -> int:
    from features.store import open_store

    total = 0
    for p in paths:
        with open_store(p, "r") as store:
            total += len(store)
    return total


def build_report(cfg: SelfTrainConfig, out: Path, stages: dict, pseudo_counts: dict, plan: dict) -> dict:
    from tal.recurrence import weak_check

    report = {
        "simulated": cfg.simulated,
        "seed": cfg.seed,
        "rounds": plan["rounds"],
        "threshold": (pseudo_counts.get("round1.pseudo") or {}).get("threshold", cfg.filter.threshold),
        "threshold_rule": None if cfg.threshold_rule is None else cfg.threshold_rule.to_dict(),
        "split": cfg.split,
        "tiou_thresholds": list(cfg.tiou),
        "counts": {"labeled_videos": _count_videos(cfg.labeled_features),
                   "unlabeled_videos": _count_videos([cfg.unlabeled_features]),
                   "pseudo_labels": {k: v["segments"] for k, v in pseudo_counts.items()},
                   "pseudo_label_details": pseudo_counts,
                   "test_videos": {str(t.features): _count_videos([t.features]) for t in cfg.tests}},
        "out": str(out),
        **stages,
    }
    if (out / "pseudo_round1.reranked.json").exists():  # re-ranked (--rerank auto may have kept the score's order)
        weight = _weight_record(cfg, out)
        report["recurrence_weight"] = {k: weight[k] for k in ("weight", "source", "ratio") if k in weight}
    seen_ap = _check_record(out).get("seen_ap") if (out / UNSEEN_DIR / "choice.json").exists() else None
    if weak_check(seen_ap):
        report["weak_class_check"] = {"seen_ap": seen_ap}
    if cfg.rounds == "auto":
        report["rounds_choice"] = {k: v for k, v in plan.items() if k != "label_passes"}
    if plan["rounds"] != 0:
        report["label_passes"] = plan["label_passes"]
    if "ceiling" in stages:
        report["recovery"] = ceiling_recovery(report)
        if "floor" in stages:
            report["recovery_over_floor"] = ceiling_recovery(report, start="floor")
    if cfg.simulated:
        report["note"] = SIMULATED_NOTE
    return report


def recovered_share(stage1: float, last: float, ceiling: float) -> float:
    """How much of the ceiling's gain over stage 1 the last stage recovers: (last − stage 1) / (ceiling −
    stage 1); nan where the ceiling does not beat stage 1."""
    return (last - stage1) / (ceiling - stage1) if ceiling > stage1 else float("nan")


def ceiling_recovery(report: dict, start: str = "stage1") -> dict:
    """:func:`recovered_share` per protocol, for the report's last stage. ``start="floor"``: measured from the
    floor instead of stage 1 — the share of what the unlabelled videos' truth adds at equal training time that
    the pseudo-labels add (stage 2 trains longer than stage 1, so the share over stage 1 includes that time)."""
    last = stage_names(report)[-1]
    out = {}
    for label, keys in PROTOCOL_ROWS:
        s1, s2, top = (_lookup(report[n], keys) for n in (start, last, "ceiling"))
        if not any(math.isnan(v) for v in (s1, s2, top)):
            out[label] = recovered_share(s1, s2, top)
    return out


# --------------------------------------------------------------------------------------------- report
PROTOCOL_ROWS = [("novel-only", ("novel_only",)), ("generalized all", ("generalized", "all")),
                 ("generalized base", ("generalized", "base")), ("generalized novel", ("generalized", "novel")),
                 ("cross-domain (web)", ("cross_domain",))]


def _lookup(stage: dict, keys) -> float:
    value = stage
    for k in keys:
        if not isinstance(value, dict) or k not in value:
            return float("nan")
        value = value[k]
    return float(value)


def stage_names(report: dict) -> list[str]:
    return sorted((k for k in report if k.startswith("stage") and k[5:].isdigit()), key=lambda k: int(k[5:]))


def format_table(report: dict) -> str:
    """Average mAP (%) per protocol (rows) and stage (columns), the last stage's change over stage 1 and, with a
    ceiling, the ceiling and the share of its gain recovered; then the pseudo-labels' quality when known."""
    stages = stage_names(report)
    last = len(stages) - 1  # the column of the last stage (--rounds N: stage N + 1)
    names = stages + [k for k in ("floor", "ceiling") if k in report]
    rows = [(label, [_lookup(report[n], keys) for n in names]) for label, keys in PROTOCOL_ROWS]
    rows = [(label, vals) for label, vals in rows if not all(math.isnan(v) for v in vals)]
    recovery, over_floor = report.get("recovery", {}), report.get("recovery_over_floor", {})
    head = f"{'average mAP (%)':<22}" + "".join(f"{n:>10}" for n in names)
    head += f"{f'Δ {last + 1}-1':>9}" if last > 0 else ""
    head += f"{'recovered':>11}" if recovery else ""
    head += f"{'over floor':>12}" if over_floor else ""
    lines = [head, "-" * len(head)] if rows else ["(no test set given: nothing evaluated)"]
    for label, vals in rows:
        line = f"{label:<22}" + "".join(f"{100 * v:>10.2f}" for v in vals)
        if last > 0:
            line += f"{100 * (vals[last] - vals[0]):>+9.2f}"
        if recovery:
            line += f"{100 * recovery.get(label, float('nan')):>10.0f}%"
        if over_floor:
            line += f"{100 * over_floor.get(label, float('nan')):>11.0f}%"
        lines.append(line)
    for step, details in report.get("counts", {}).get("pseudo_label_details", {}).items():
        tau = details.get("threshold")
        line = f"{step}: {details.get('segments')} pseudo-labels" + ("" if tau is None else f" at τ = {tau:.4g}")
        q = details.get("quality")
        if q:
            line += (f", precision {q['precision@0.5']:.3f}, recall {q['recall@0.5']:.3f}{_group_recall(q)} "
                     "(tIoU 0.5, against the unlabelled videos' truth)")
        lines.append(line)
        if details.get("density_ratio") is not None:
            lines.append(f"{step}: {density_text(details)}")
    weight = report.get("recurrence_weight")
    if weight:
        line = f"re-ranking: the recurrence weighs {weight['weight']:g}, the score {1 - weight['weight']:g}"
        if weight.get("ratio") is not None:
            line += (f" (chosen: models trained without some labelled classes find them {weight['ratio']:.2f} x as "
                     "well as the classes they trained on)")
        lines.append(line)
    plan = report.get("rounds_choice")
    if plan:
        line = f"rounds: {plan['rounds']}"
        if plan.get("stop_density") is not None:
            line += (f", each from the second on stopped where its pseudo-labels are more than "
                     f"{plan['stop_density']:g} x as dense as the human labels")
        lines.append(line + (" (chosen: the class check gave no ratio)" if plan.get("ratio") is None else
                             f" (chosen: the class check's ratio {plan['ratio']:.2f})"))
    passes = report.get("label_passes")
    if passes:
        if passes["source"] == PASSES_EPOCH_GIVEN:
            line = "label passes: as given (--pseudo-ratio or a data.pseudo_ratio / data.epoch_clips setting)"
        elif passes["passes"] == "kept":
            line = ("label passes: kept (each epoch of a later stage: labelled + unlabelled clips of labelled videos "
                    "and one clip per unlabelled video)")
        else:
            line = "label passes: mixed (each epoch of a later stage holds every labelled and unlabelled video once)"
        if passes.get("ratio") is not None:
            line += f" (chosen: the class check's ratio {passes['ratio']:.2f})"
        elif passes["source"] == PASSES_RECORDED:
            line += " (the run started before --label-passes existed)"
        lines.append(line)
    weak = report.get("weak_class_check")
    if weak:
        from tal.recurrence import weak_check_text

        lines.append(f"warning: {weak_check_text(weak['seen_ap'])}")
    stop = report.get("stopped")
    if stop:
        lines.append(f"stopped before stage {stop['before_stage']}: {stop['step']}'s pseudo-labels are "
                     f"{stop['density_ratio']:.2f} x as dense as the human labels (limit {stop['stop_density']:g})")
    if report.get("simulated"):
        lines.append(SIMULATED_NOTE)
    return "\n".join(lines)


def plot_report(report: dict, path: Path) -> Path | None:
    """Grouped bars: average mAP per protocol, one bar per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = stage_names(report)
    rows = [(label, [_lookup(report[n], keys) for n in names]) for label, keys in PROTOCOL_ROWS]
    rows = [(label, vals) for label, vals in rows if not all(math.isnan(v) for v in vals)]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(rows))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        ax.bar(x + (i - (len(names) - 1) / 2) * width, [100 * vals[i] for _, vals in rows], width, label=n)
    ax.set_xticks(x, [label for label, _ in rows], rotation=15)
    ax.set_ylabel("average mAP (%)")
    title = f"Self-training: mAP per stage and protocol (seed {report.get('seed')})"
    ax.set_title(title + ("\nSIMULATED DATA" if report.get("simulated") else ""))
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, dpi=110, format="png")
    plt.close(fig)
    return path


def write_report(report: dict, out: Path) -> None:
    atomic_write_json(out / "report.json", report)
    atomic_write_bytes(out / "report.txt", (format_table(report) + "\n").encode())
    if any(report[n] for n in stage_names(report)):
        plot_report(report, out / "map_per_stage.png")
