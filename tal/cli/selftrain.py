"""tal-selftrain: stage 1 → pseudo-labels → stage 2 (→ more rounds), evaluated per stage; resumable.

    tal-selftrain --labeled-features curated_train.zarr --labeled-annotations curated_train.json \\
        --unlabeled-features web_unlabeled.zarr --split split.json --out st \\
        --test-features curated_test.zarr --test-annotations curated_test.json \\
        --cross-features web_test.zarr --cross-annotations web_test.json --vocab sim
"""

from __future__ import annotations

import logging

import click

from features.cli_support import Command, CountOrAuto, UnitOrAuto
from tal.config import PRESETS
from tal.selftrain import LABEL_PASSES, RERANKS, SelfTrainConfig
from tal.thresholds import PRECISION_OF, ThresholdRule


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--labeled-features", multiple=True, required=True, type=click.Path(exists=True),
              help="Store(s) of the human-labelled videos.")
@click.option("--labeled-annotations", multiple=True, required=True, type=click.Path(exists=True),
              help="Human annotation file(s) (any format tal-eval reads).")
@click.option("--unlabeled-features", required=True, type=click.Path(exists=True),
              help="Store of the unlabelled (web) videos to pseudo-label.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory (resumed if it exists).")
@click.option("--rounds", default=SelfTrainConfig.rounds, show_default=True, type=CountOrAuto(),
              help="Pseudo-label/retrain rounds: 1 = stage 1 + stage 2; 2 adds stage 3, 3 stage 4; auto: 3 with "
                   "--stop-density 1 where stage 1's recipe finds labelled classes held out of its training at most "
                   "half as well as the classes it trained on (the class check of --recurrence-weight auto), else 1 "
                   "(more rounds measured better where stage 1 misses the novel actions, worse where it finds them).")
@click.option("--stop-density", default=None, type=click.FloatRange(0, min_open=True),
              help="From round 2 on, stop before a stage whose pseudo-labels are more than this many times as dense "
                   "per minute as the human labels (1, on SIMULATED data: kept the later rounds where they raised "
                   "novel mAP, stopped most of those that lowered it; default: every round runs, or 1 where --rounds "
                   "auto chose 3).")
@click.option("--threshold", default=None, type=click.FloatRange(0, 1),
              help="A fixed pseudo-label score threshold τ (default: chosen on held-out labelled videos, see "
                   "--target-precision).")
@click.option("--ignore-threshold", default=None, type=click.FloatRange(0, 1),
              help="With --threshold: proposals scoring in [this, τ) become ignore regions.")
@click.option("--target-precision", default=ThresholdRule.precision, show_default=True,
              type=click.FloatRange(0, 1, min_open=True),
              help="τ = the lowest score whose proposals reach this precision on held-out labelled videos "
                   "(cross-fitted stage-1 models); see --precision-of.")
@click.option("--precision-of", type=click.Choice(PRECISION_OF), default=ThresholdRule.precision_of,
              show_default=True,
              help="local: the precision of the proposals at τ (the probability that a proposal scoring τ is "
                   "right, isotonic fit); kept: the precision of all proposals above τ.")
@click.option("--target-recall", default=ThresholdRule.recall or 0.0, show_default=True,
              type=click.FloatRange(0, 1),
              help="Ignore regions: proposals between τ and the score whose proposals recall this share of the "
                   "held-out instances (e.g. 0.9); 0: none, below τ is background.")
@click.option("--thresholds-per-round/--thresholds-once", default=ThresholdRule.per_round, show_default=True,
              help="Rounds >= 2: choose τ again for the stage that pseudo-labels (fold models by its recipe, on its "
                   "pseudo-labels too), or reuse round 1's.")
@click.option("--rerank", type=click.Choice(RERANKS), default=SelfTrainConfig.rerank,
              show_default=True,
              help="Order of the unlabelled proposals before the thresholds cut them: the localizer's score combined "
                   "with how their content recurs across other unlabelled videos, the score alone, or (auto) the one "
                   "that ranks the held-out labelled videos' proposals better (score with a fixed --threshold).")
@click.option("--recurrence-weight", default=SelfTrainConfig.recurrence_weight, show_default=True,
              type=UnitOrAuto(),
              help="Re-ranking: the recurrence's weight in the combined ranking (the score's: 1 minus it), or auto: "
                   "0.8 where stage 1's recipe finds labelled classes held out of its training at most half as well "
                   "as the classes it trained on (class-held-out fold models, --folds of them), else 0.5.")
@click.option("--label-passes", type=click.Choice(list(LABEL_PASSES)), default=SelfTrainConfig.label_passes,
              show_default=True,
              help="How a later stage (and the ceiling, the floor) spends an epoch of L labelled and W unlabelled "
                   "videos: mixed, every video once (L + W clips); kept, L + W clips of labelled videos and one per "
                   "unlabelled video (L + 2W; the floor trains as many); auto: kept where the class check (run for "
                   "it) finds held-out classes more than half as well as the classes it trained on, else mixed, and "
                   "mixed where --pseudo-ratio or a data.pseudo_ratio / data.epoch_clips setting gives the epoch, "
                   "which kept refuses (measured on SIMULATED data: kept raised novel and base mAP there, lowered "
                   "novel mAP where the check finds them at most half as well).")
@click.option("--folds", default=2, show_default=True, type=click.IntRange(min=2),
              help="Cross-fitting folds for choosing τ.")
@click.option("--top-k", default=None, type=click.IntRange(min=1), help="At most K pseudo-labels per video.")
@click.option("--dedup-iou", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True))
@click.option("--min-duration", default=0.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--split", default=None, help="Base/novel split (spec or file): stages train on its base classes.")
@click.option("--classes", type=click.Choice(["base", "all"]), default="base", show_default=True,
              help="With --split: human labels of the base classes only (OV setting) or all.")
@click.option("--subset", default="training", show_default=True, help="Subset of the human annotations to train on.")
@click.option("--prefer-store", type=click.Path(exists=True), default=None,
              help="A labelled or unlabelled store whose rows win for videos that several of them hold with "
                   "different rows (default: such videos are an error).")
@click.option("--preset", default="small", show_default=True, help=f"{', '.join(PRESETS)} or a YAML file.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="tal-train config override (repeatable).")
@click.option("--stage2-set", "later_overrides", multiple=True, metavar="KEY=VALUE",
              help="Override for stages >= 2 only, e.g. --stage2-set train.epochs=4 (repeatable).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--init", type=click.Choice(["none", "ema", "finetune"]), default="none", show_default=True,
              help="Stage >= 2 starts from scratch (none), with the EMA from the previous stage and a fresh student "
                   "(ema), or fine-tunes the previous stage (finetune).")
@click.option("--pseudo-ratio", type=click.FloatRange(0, 1), default=None, help="Share of pseudo-labelled clips.")
@click.option("--pseudo-weight", type=click.Choice(["score", "1", "soft"]), default=None,
              help="Pseudo-labels in stages >= 2: weighted by their score (default), weight 1, or soft (an action "
                   "with probability = score).")
@click.option("--test-features", type=click.Path(exists=True), default=None,
              help="In-domain test store: novel-only and generalized protocols.")
@click.option("--test-annotations", type=click.Path(exists=True), default=None)
@click.option("--cross-features", type=click.Path(exists=True), default=None,
              help="Other-domain test store: cross-domain protocol.")
@click.option("--cross-annotations", type=click.Path(exists=True), default=None)
@click.option("--test-subset", default=None, help="Annotation subset to score (default: every video in the store).")
@click.option("--vocab", default=None, help="Vocabulary (class-name embeddings) of the test stores.")
@click.option("--skip-missing", is_flag=True,
              help="Score test sets even when more than 2 % of their annotated videos are not in the test store.")
@click.option("--unlabeled-truth", type=click.Path(exists=True), default=None,
              help="Analysis only: the unlabelled videos' true segments; prints pseudo-label precision/recall.")
@click.option("--ceiling", is_flag=True,
              help="With --unlabeled-truth: also train stage 2 on the true segments (same recipe) and report how "
                   "much of its gain self-training recovers.")
@click.option("--floor", is_flag=True,
              help="Also train stage 2's recipe on the human labels alone, at stage 2's compute: what the unlabelled "
                   "videos add beyond more training.")
@click.option("--simulated", is_flag=True, help="Label every output as simulated data.")
@click.option("--no-progress", is_flag=True)
def main(labeled_features, labeled_annotations, unlabeled_features, out, rounds, stop_density, threshold,
         ignore_threshold, target_precision, precision_of, target_recall, thresholds_per_round, rerank, recurrence_weight,
         label_passes, folds, top_k,
         dedup_iou, min_duration, split, classes, subset, prefer_store, preset, overrides, later_overrides, seed, init,
         pseudo_ratio, pseudo_weight, test_features, test_annotations, cross_features, cross_annotations, test_subset,
         vocab, skip_missing, unlabeled_truth, ceiling, floor, simulated, no_progress):
    """Self-train a class-agnostic localizer on labelled + pseudo-labelled videos; prints the stage table."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from tal.pseudo import FilterConfig, PseudoLabelError
    from tal.selftrain import EvalSet, format_table, run_selftrain
    from tal.thresholds import ThresholdError

    tests = []
    for feats, ann, cross, flag in ((test_features, test_annotations, False, "--test"),
                                    (cross_features, cross_annotations, True, "--cross")):
        if (feats is None) != (ann is None):
            raise click.BadParameter(f"{flag}-features and {flag}-annotations go together")
        if feats:
            tests.append(EvalSet(feats, ann, cross_domain=cross, subset=test_subset))
    if ignore_threshold is not None and threshold is None:
        raise click.BadParameter("--ignore-threshold goes with a fixed --threshold")
    try:
        filt = FilterConfig(threshold=0.0 if threshold is None else threshold, top_k=top_k,
                            dedup_iou=None if dedup_iou >= 1 else dedup_iou, min_duration=min_duration,
                            ignore_threshold=ignore_threshold)
        rule = None if threshold is not None else ThresholdRule(target_precision, target_recall or None,
                                                                precision_of=precision_of, folds=folds,
                                                                per_round=thresholds_per_round)
    except (PseudoLabelError, ThresholdError) as e:
        raise click.BadParameter(str(e)) from None
    cfg = SelfTrainConfig(list(labeled_features), list(labeled_annotations), unlabeled_features, rounds=rounds,
                          filter=filt, threshold_rule=rule, split=split, classes=classes, subset=subset,
                          preset=preset, overrides=list(overrides), later_overrides=list(later_overrides), seed=seed,
                          init=init, pseudo_ratio=pseudo_ratio, pseudo_weight=pseudo_weight, tests=tests, vocab=vocab,
                          rerank=rerank, recurrence_weight=recurrence_weight, stop_density=stop_density,
                          label_passes=label_passes,
                          simulated=simulated, prefer_store=prefer_store, skip_missing=skip_missing,
                          unlabeled_truth=unlabeled_truth, ceiling=ceiling, floor=floor)
    report = run_selftrain(cfg, out, progress=not no_progress)
    click.echo(format_table(report))
    click.echo(f"{out}/report.json")


if __name__ == "__main__":
    main()
