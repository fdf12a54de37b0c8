"""Pseudo-label thresholds chosen from the data: what stage 1's scores are worth, measured on labelled videos.

A τ copied from another dataset (the seed paper used 0.05, 0.4 and 0.5 on three benchmarks) means something
different for every model: scores drift with the data, the recipe and the number of classes. Here the scores
are read against truth. Cross-fitting: each of K fold models, trained by the stage-1 recipe on the labelled
videos outside its fold, proposes actions on its own held-out fold; every held-out proposal (after the same
clipping, minimum duration and duplicate removal as pseudo-labels) is a hit when it takes a free labelled
instance at tIoU >= ``alpha``, greedily by score. From those (score, hit) pairs:

- ``threshold`` (pseudo-labels): the lowest score whose proposals still reach ``precision`` — with
  ``precision_of="local"``, the precision of the proposals *at* that score (an isotonic fit of hit on score:
  the probability that a proposal scoring so is right), with ``"kept"`` the precision of all the proposals
  above it. Where stage 1 already recalls nearly every instance well above the threshold, the proposals it
  adds at the bottom are mostly wrong while the kept set's precision stays high: "kept" goes on lowering τ
  through them, "local" stops where a proposal becomes more likely wrong than right;
- ``ignore_threshold``: the highest score at which the proposals above it already recall ``recall`` of
  the instances. Proposals between the two are ignore regions — stage 1 is unsure there, so stage 2 learns
  them neither as actions nor as background; below it stage 1 rarely finds an action, and the rest of the
  video is background.

The held-out videos are labelled with base classes only: a proposal on an unlabelled (novel) instance counts
as a false positive, so precision here is a lower bound and the thresholds lean conservative.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from features.errors import StovtalError
from tal.eval.detection import tiou_matrix


class ThresholdError(StovtalError, ValueError):
    """Held-out evidence that cannot set a threshold (no instances, no proposals); one line."""


@dataclass
class ScoreSample:
    """Held-out proposals' scores and whether each took a labelled instance, and how many instances there were."""

    scores: np.ndarray  # [N] float
    hits: np.ndarray  # [N] bool
    num_instances: int

    def ranked(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(-self.scores, kind="stable")
        return self.scores[order], self.hits[order]

    def to_dict(self) -> dict:
        return {"scores": [float(s) for s in self.scores], "hits": [bool(h) for h in self.hits],
                "num_instances": int(self.num_instances)}

    @classmethod
    def from_dict(cls, d: dict) -> "ScoreSample":
        return cls(np.asarray(d["scores"], np.float64), np.asarray(d["hits"], bool), int(d["num_instances"]))

    @classmethod
    def concat(cls, samples) -> "ScoreSample":
        samples = list(samples)
        return cls(np.concatenate([s.scores for s in samples]), np.concatenate([s.hits for s in samples]),
                   sum(s.num_instances for s in samples))


def match_proposals(instances: dict, proposals: dict, alpha: float = 0.5) -> ScoreSample:
    """``instances``: {video: [N, 2] seconds}; ``proposals``: {video: ([M, 2] seconds, [M] scores)} for the same
    videos. Each proposal, best first within its video, takes the free instance it overlaps most if that
    tIoU reaches ``alpha``."""
    scores, hits, total = [], [], 0
    for vid, gt in instances.items():
        gt = np.asarray(gt, np.float64).reshape(-1, 2)
        total += len(gt)
        segs, sc = proposals.get(vid, (np.zeros((0, 2)), np.zeros(0)))
        segs, sc = np.asarray(segs, np.float64).reshape(-1, 2), np.asarray(sc, np.float64).reshape(-1)
        order = np.argsort(-sc, kind="stable")
        tiou = tiou_matrix(segs[order], gt)
        free = np.ones(len(gt), bool)
        for i, row in enumerate(tiou):
            hit = False
            if free.any():
                j = int(np.argmax(np.where(free, row, -1.0)))
                if free[j] and row[j] >= alpha:
                    free[j], hit = False, True
            scores.append(float(sc[order[i]]))
            hits.append(hit)
    return ScoreSample(np.asarray(scores, np.float64), np.asarray(hits, bool), total)


def threshold_for_precision(sample: ScoreSample, target: float) -> float:
    """The lowest score τ such that the proposals scoring >= τ reach precision >= ``target``; the best
    score when no threshold does (only each video's top-1 fallback survives then)."""
    scores, hits = sample.ranked()
    if not len(scores):
        raise ThresholdError("no held-out proposals to set a threshold from")
    last = _last_of_ties(scores)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    ok = np.flatnonzero(last & (precision >= target))
    return float(scores[ok[-1]]) if len(ok) else float(scores[0])


def local_precision(sample: ScoreSample) -> tuple[np.ndarray, np.ndarray]:
    """The held-out probability that a proposal is right, as a non-decreasing function of its score: the
    distinct scores (ascending) and the isotonic (pool-adjacent-violators) fit of hit on score at each."""
    if not len(sample.scores):
        raise ThresholdError("no held-out proposals to set a threshold from")
    values, inverse = np.unique(sample.scores, return_inverse=True)
    hits = np.bincount(inverse, weights=sample.hits.astype(np.float64), minlength=len(values))
    counts = np.bincount(inverse, minlength=len(values)).astype(np.float64)
    blocks: list[list[float]] = []  # [hits, count, number of distinct scores] per pooled block
    for h, n in zip(hits, counts):
        blocks.append([h, n, 1])
        while len(blocks) > 1 and blocks[-2][0] * blocks[-1][1] > blocks[-1][0] * blocks[-2][1]:
            h2, n2, k2 = blocks.pop()
            blocks[-1][0] += h2
            blocks[-1][1] += n2
            blocks[-1][2] += k2
    fit = np.concatenate([np.full(int(k), h / n) for h, n, k in blocks])
    return values, fit


def threshold_for_local_precision(sample: ScoreSample, target: float) -> float:
    """The lowest score τ at which a held-out proposal is right with probability >= ``target`` (isotonic fit):
    every proposal kept is at least that likely right. The best score when none is (top-1 fallback)."""
    values, fit = local_precision(sample)
    ok = np.flatnonzero(fit >= target)
    return float(values[ok[0]]) if len(ok) else float(values[-1])


def threshold_for_recall(sample: ScoreSample, target: float) -> float:
    """The highest score τ such that the proposals scoring >= τ recall >= ``target`` of the held-out
    instances; the lowest proposal score when they never do."""
    scores, hits = sample.ranked()
    if not len(scores):
        raise ThresholdError("no held-out proposals to set a threshold from")
    if sample.num_instances < 1:
        raise ThresholdError("no held-out labelled instances to measure recall on")
    last = _last_of_ties(scores)
    recall = np.cumsum(hits) / sample.num_instances
    ok = np.flatnonzero(last & (recall >= target))
    return float(scores[ok[0]]) if len(ok) else float(scores[-1])


def _last_of_ties(scores: np.ndarray) -> np.ndarray:
    """True at the last of each run of equal scores: a threshold keeps all of a tie or none of it."""
    return np.append(scores[1:] != scores[:-1], True)


def operating_point(sample: ScoreSample, threshold: float) -> dict:
    """Held-out precision and recall of the proposals scoring >= ``threshold``, and the local precision there
    (the isotonic probability that a proposal scoring ``threshold`` is right)."""
    kept = sample.scores >= threshold
    n, tp = int(kept.sum()), int(sample.hits[kept].sum())
    values, fit = local_precision(sample)
    at = min(int(np.searchsorted(values, threshold)), len(values) - 1)
    return {"threshold": float(threshold), "proposals": n, "precision": tp / n if n else float("nan"),
            "recall": tp / sample.num_instances if sample.num_instances else float("nan"),
            "local_precision": float(fit[at])}


PRECISION_OF = ("local", "kept")


@dataclass(frozen=True)
class ThresholdRule:
    """Targets the thresholds are chosen for; ``recall=None``: no ignore regions."""

    precision: float = 0.5  # docs/selftrain.md: the study's 0.5 / 0.7 / 0.85 ablation (3 seeds)
    # None: no ignore regions (docs/selftrain.md: under re-ranking, ignoring the unsure band cost cross-domain mAP
    # on every calibrated seed and on an unseen configuration); 0.9 was the default under the score's order
    recall: float | None = None
    precision_of: str = "kept"  # "local" or "kept": see threshold_for_local_precision
    alpha: float = 0.5
    folds: int = 2
    # Rounds >= 2: cross-fit the recipe of the stage that pseudo-labels (its own scores) or reuse round 1's τ.
    per_round: bool = False

    def __post_init__(self):
        if not 0 < self.precision <= 1:
            raise ThresholdError(f"target precision must lie in (0, 1], got {self.precision}")
        if self.recall is not None and not 0 < self.recall <= 1:
            raise ThresholdError(f"target recall must lie in (0, 1], got {self.recall}")
        if not 0 < self.alpha < 1:
            raise ThresholdError(f"tIoU alpha must lie in (0, 1), got {self.alpha}")
        if self.folds < 2:
            raise ThresholdError(f"cross-fitting needs >= 2 folds, got {self.folds}")
        if self.precision_of not in PRECISION_OF:
            raise ThresholdError(f"precision_of must be one of {', '.join(PRECISION_OF)}, got {self.precision_of!r}")

    @property
    def precision_key(self) -> str:
        """The operating-point field (``operating_point``) the target precision applies to."""
        return "local_precision" if self.precision_of == "local" else "precision"

    def to_dict(self) -> dict:
        return asdict(self)


def choose_thresholds(sample: ScoreSample, rule: ThresholdRule) -> dict:
    """The thresholds and why: the rule, the held-out evidence and each threshold's held-out operating point."""
    if sample.num_instances < 1:
        raise ThresholdError("the held-out labelled videos hold no instances: cannot measure precision or recall")
    find = threshold_for_local_precision if rule.precision_of == "local" else threshold_for_precision
    tau = find(sample, rule.precision)
    at_tau = operating_point(sample, tau)
    reached = at_tau[rule.precision_key] >= rule.precision
    out = {"rule": rule.to_dict(), "threshold": tau, "at_threshold": at_tau,
           "heldout_proposals": int(len(sample.scores)), "heldout_instances": int(sample.num_instances),
           "precision_reached": bool(reached)}
    if rule.recall is not None:
        low = min(threshold_for_recall(sample, rule.recall), tau)
        out["ignore_threshold"] = low
        out["at_ignore_threshold"] = operating_point(sample, low)
    return out
