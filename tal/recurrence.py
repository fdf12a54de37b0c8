"""A second ranking of the unlabelled videos' proposals: how often their content recurs in *other* videos.

Stage 1's score ranks the proposals by what base classes taught it, so an action of a novel class scores low
and a look-alike of a base one high. Another, independent sign that a segment is an action: actions of one
class look alike across videos, while what merely resembles an action is more varied. Per proposal
(:func:`segment_contents`): the mean of its rows minus the mean of as many rows on either side (what the
segment adds to its surroundings); over all proposals, PCA-whitened (:func:`whiten`: without it the directions
that every segment shares dominate the cosine and recurrence ranks worse than chance) and L2-normalised; its
**recurrence** is the mean cosine of its ``k`` nearest neighbours among the proposals of other videos
(:func:`recurrence`). The two rankings are combined as a weighted geometric mean of their percentiles
(:func:`combined_order`; the weight: :func:`choose_weight`), and the proposals keep stage 1's scores, handed out in
the new order (:func:`transplant`): the count above any threshold, the weights' distribution and the held-out
thresholds' meaning stay those of stage 1's scores; only which proposal holds which score changes.

Whether to re-rank is chosen from held-out labelled videos (:func:`choose_rerank`, ``tal-selftrain --rerank
auto``): where look-alike background recurs as much as actions, recurrence ranks worse than the score.
Measured on the simulation (docs/selftrain.md).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tal.pseudo import PseudoLabelError, agnostic_ap, video_candidates

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecurrenceConfig:
    k: int = 20                 # neighbours from other videos whose mean cosine is a proposal's recurrence
    dims: int = 128             # whitened dimensions kept (at most D and the number of proposals - 1)
    reference: int = 50_000     # proposals (a seeded sample when there are more) that neighbours come from
    seed: int = 0
    chunk: int = 2048           # proposals per similarity block (memory: chunk x reference floats)
    fit: int = 20_000           # proposals (a seeded sample when there are more) the whitening is fitted on
    weight: float = 0.5         # the recurrence's exponent in the combined ranking (the score's: 1 - weight)

    def __post_init__(self):
        if self.k < 1 or self.dims < 1 or self.reference < 2 or self.chunk < 1 or self.fit < 2:
            raise PseudoLabelError(f"recurrence needs k, dims, chunk >= 1 and reference, fit >= 2, got {self}")
        if not 0.0 <= self.weight <= 1.0:
            raise PseudoLabelError(f"the recurrence's weight in the ranking must lie in [0, 1], got {self.weight}")


def segment_contents(rows: np.ndarray, grid_segments: np.ndarray) -> np.ndarray:
    """[N, D] what each segment ([N, 2] fractional row indices) adds to its surroundings: the mean of the rows
    it touches (its ends rounded outwards, so a short segment keeps its boundary rows) minus the mean of as many
    rows on either side (the video's mean where it has no surroundings)."""
    t = len(rows)
    out = np.empty((len(grid_segments), rows.shape[1]), dtype=np.float32)  # all proposals of a store are held
    cum = np.concatenate([np.zeros((1, rows.shape[1])), np.cumsum(rows, axis=0, dtype=np.float64)])
    whole = cum[-1] / max(t, 1)

    def mean(a, b):
        return (cum[b] - cum[a]) / (b - a)

    for i, (a, b) in enumerate(grid_segments):
        a = min(max(0, math.floor(a)), t - 1)
        b = max(min(t, math.ceil(b) + 1), a + 1)
        n = b - a
        lo, hi = max(0, a - n), min(t, b + n)
        around = (a - lo) + (hi - b)
        ctx = ((cum[a] - cum[lo]) + (cum[hi] - cum[b])) / around if around else whole
        out[i] = mean(a, b) - ctx
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Whitening:
    """Centre, PCA basis and per-direction scale fitted on L2-normalised contents (:func:`fit_whitening`)."""
    mean: np.ndarray   # [D]
    basis: np.ndarray  # [d, D]
    scale: np.ndarray  # [d]

    def apply(self, contents: np.ndarray) -> np.ndarray:
        """Each row L2-normalised (a segment's direction, not its strength), centred, projected and scaled to
        unit variance per direction, L2-normalised again; float32."""
        y = ((_unit(contents) - self.mean) @ self.basis.T) / self.scale
        return _unit(y).astype(np.float32)


def fit_whitening(sample: np.ndarray, mean: np.ndarray, dims: int) -> Whitening:
    """PCA whitening to ``dims`` fitted on ``sample`` (L2-normalised contents) around ``mean`` (that of all of
    them, which the sample need not hold)."""
    _, sv, vt = np.linalg.svd(sample - mean, full_matrices=False)
    dims = min(dims, len(sv))
    scale = sv[:dims] / math.sqrt(len(sample))
    keep = scale > scale[0] * 1e-6  # directions with (numerically) no variance would only amplify rounding
    return Whitening(mean, vt[:dims][keep], scale[keep])


def fit_sample(n: int, cfg: "RecurrenceConfig") -> np.ndarray:
    """Indices (sorted) of the proposals the whitening is fitted on: all, or a seeded sample of ``cfg.fit``."""
    if n <= cfg.fit:
        return np.arange(n)
    return np.sort(np.random.default_rng(cfg.seed).choice(n, cfg.fit, replace=False))


def whiten(contents: np.ndarray, cfg: "RecurrenceConfig") -> np.ndarray:
    """All of ``contents`` ([N, D], in memory) whitened by :func:`fit_whitening` on :func:`fit_sample`."""
    x = _unit(contents)
    return fit_whitening(x[fit_sample(len(x), cfg)], x.mean(axis=0), cfg.dims).apply(contents)


def recurrence(z: np.ndarray, owner: np.ndarray, cfg: RecurrenceConfig, progress: bool = False) -> np.ndarray:
    """[N] mean cosine of each row's ``cfg.k`` nearest rows of *other* videos (``owner``: [N] video index),
    neighbours drawn from a seeded sample of ``cfg.reference`` rows when there are more."""
    from tqdm import tqdm

    n = len(z)
    ref = np.arange(n) if n <= cfg.reference else np.sort(
        np.random.default_rng(cfg.seed).choice(n, cfg.reference, replace=False))
    zr, owner_r = z[ref], owner[ref]
    out = np.full(n, -1.0)
    for lo in tqdm(range(0, n, cfg.chunk), desc="recurrence", unit="block", disable=not progress):
        sim = z[lo:lo + cfg.chunk] @ zr.T
        sim[owner[lo:lo + cfg.chunk, None] == owner_r[None, :]] = -np.inf
        k = min(cfg.k, sim.shape[1])
        sim.partition(sim.shape[1] - k, axis=1)  # in place: a copy would double the block's memory
        top = sim[:, -k:]
        found = np.isfinite(top)  # fewer than k rows of other videos: the mean of those there are
        count = found.sum(axis=1)
        total = np.where(found, top, 0.0).sum(axis=1)
        out[lo:lo + cfg.chunk] = np.where(count > 0, total / np.maximum(count, 1), -1.0)
    return out


# --recurrence-weight auto (measured in docs/selftrain.md): where the recipe finds actions of classes it never saw
# (class-held-out folds, tal.crossfit.unseen_class_ap) about as well as those of classes it saw, the score ranks novel
# actions as it ranks base ones and the two weigh the same; where it finds them at most UNSEEN_RATIO as well, the
# score says little about novel actions and the recurrence weighs RECURRENCE_HEAVY.
EQUAL_WEIGHT, RECURRENCE_HEAVY, UNSEEN_RATIO = 0.5, 0.8, 0.5
# Below this held-out videos' AP the check's fold models find few actions even of the classes they trained on, and
# its ratio compares two weak models: measured 0.055-0.156 on three runs with 30 labelled videos of 12 classes (one
# chose wrongly), 0.29-0.97 on the 17 other runs measured (docs/selftrain.md). A warning, not a rule (three runs are
# too few to change a default on): the run does what the ratio says.
WEAK_CHECK_AP = 0.2


def misses_unseen(ratio: float | None) -> bool:
    """Whether the class check's ratio (held-out classes' AP ÷ held-out videos' AP; None: no evidence) says the
    recipe finds classes it never saw at most UNSEEN_RATIO as well: what the weight and ``--rounds auto`` act on."""
    return ratio is not None and ratio <= UNSEEN_RATIO


def weak_check(seen_ap: float | None) -> bool:
    """Whether the class check's fold models find too few actions of their own classes (held-out videos' AP
    ``seen_ap`` below WEAK_CHECK_AP) for its ratio to say much."""
    return seen_ap is not None and seen_ap < WEAK_CHECK_AP


def weak_check_text(seen_ap: float) -> str:
    """Why the choices of a weak class check (:func:`weak_check`) rest on little, and what to do about it."""
    return (f"the class check's fold models find few actions even of the classes they trained on (held-out videos' AP "
            f"{seen_ap:.3f}, below {WEAK_CHECK_AP:g}): what it chose (recurrence weight, rounds, label passes) rests "
            "on little; give --recurrence-weight, --rounds and --label-passes to choose them yourself (on the three "
            "such runs measured, 0.8, 3 and mixed raised every protocol: docs/selftrain.md)")


def choose_weight(unseen_ap: float, seen_ap: float) -> dict:
    """The recurrence's weight from the class-agnostic AP on held-out classes' instances (``unseen_ap``) and on
    held-out videos of the classes trained on (``seen_ap``), and why."""
    ratio = unseen_ap / seen_ap if seen_ap > 0 else None
    weight = RECURRENCE_HEAVY if misses_unseen(ratio) else EQUAL_WEIGHT
    return {"weight": weight, "unseen_ap": unseen_ap, "seen_ap": seen_ap, "ratio": ratio,
            "rule": f"{RECURRENCE_HEAVY} where held-out classes' AP is at most {UNSEEN_RATIO} x the held-out videos' "
                    f"AP of the trained classes, else {EQUAL_WEIGHT}"}


def percentile(values: np.ndarray) -> np.ndarray:
    """(rank + 1) / N, ties sharing their mean rank (0-based ranks: the lowest value has 1 / N)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=np.float64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse] / len(values) + 1.0 / len(values)


def combined_order(scores: np.ndarray, recur: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """Proposal indices, best first, by the weighted geometric mean of the score's and the recurrence's
    percentiles, ``score^(1 - weight) * recurrence^weight`` (ties: the higher score first)."""
    a, b = percentile(scores), percentile(recur)
    # weight 0.5 as first released (sqrt), so that runs recorded before the weight existed reorder bit for bit
    combined = np.sqrt(a * b) if weight == 0.5 else a ** (1.0 - weight) * b ** weight
    return np.lexsort((-scores, -combined))


def transplant(scores: np.ndarray, order: np.ndarray) -> np.ndarray:
    """The same multiset of scores, the highest to ``order[0]``, the next to ``order[1]``, ..."""
    out = np.empty_like(scores)
    out[order] = np.sort(scores)[::-1]
    return out


def _row_sources(stores, prefer=None) -> list[str]:
    """The stores in the order a video's rows are looked up: ``prefer`` first, then as given."""
    stores = [str(p) for p in ([stores] if isinstance(stores, (str, Path)) else stores)]
    return sorted(stores, key=lambda p: prefer is None or Path(p).resolve() != Path(prefer).resolve())


def rerank_set(aset, stores, cfg: RecurrenceConfig = RecurrenceConfig(), progress: bool = True,
               prefer_store=None, what: str = "proposals"):
    """``aset``'s candidates (segments and ignore regions, :func:`tal.pseudo.video_candidates`) as segments
    holding the same scores handed out by the combined ranking; the rows of each video come from the first of
    ``stores`` holding it (``prefer_store`` first). Returns (AnnotationSet, what was done)."""
    from contextlib import ExitStack

    from tqdm import tqdm

    from features.store import open_store
    from tal.data.annotations import AnnotationSet, VideoAnnotation
    from tal.data.grid import seconds_to_grid
    from tal.pseudo import pseudo_segments

    cands = {vid: video_candidates(v) for vid, v in aset.videos.items()}
    if sum(len(c) > 0 for c in cands.values()) < 2:
        raise PseudoLabelError(f"{what}: recurrence needs proposals in at least two videos")
    owner = np.concatenate([np.full(len(c), i) for i, c in enumerate(cands.values())])
    scores = np.concatenate([c[:, 2] for c in cands.values()])
    n, start = len(owner), np.cumsum([0] + [len(c) for c in cands.values()])
    with ExitStack() as stack:
        sources = _row_sources(stores, prefer_store)
        opened = [stack.enter_context(open_store(p, "r")) for p in sources]

        def contents(desc):  # (first proposal index, [n_v, D] contents) per video with proposals
            for i, (vid, c) in enumerate(tqdm(cands.items(), desc=desc, unit="video", disable=not progress)):
                if not len(c):
                    continue
                st = next((st for st in opened if vid in st), None)
                if st is None:
                    raise PseudoLabelError(f"{what}: video {vid} is in none of the stores {', '.join(sources)}")
                yield start[i], segment_contents(st.read(vid).astype(np.float32),
                                                 seconds_to_grid(c[:, :2], st.info(vid).grid))

        # two passes over the rows, so that only the whitened [N, dims] contents are held, not [N, D]
        pick, total, sample = fit_sample(n, cfg), 0.0, []
        for at, c in contents("segment contents (1/2)"):
            x = _unit(c)
            total = total + x.sum(axis=0, dtype=np.float64)
            mine = pick[(pick >= at) & (pick < at + len(c))]
            sample.append(x[mine - at])
        whitening = fit_whitening(np.concatenate(sample), (total / n).astype(np.float32), cfg.dims)
        z = np.empty((n, len(whitening.scale)), dtype=np.float32)
        for at, c in contents("segment contents (2/2)"):
            z[at:at + len(c)] = whitening.apply(c)
    recur = recurrence(z, owner, cfg, progress)
    new = transplant(scores, combined_order(scores, recur, cfg.weight))
    videos, at = {}, 0
    for vid, video in aset.videos.items():
        c = cands[vid]
        videos[vid] = VideoAnnotation(vid, video.subset, video.duration, video.fps,
                                      pseudo_segments(c[:, :2], new[at:at + len(c)]))
        at += len(c)
    moved = float(np.mean(np.abs(percentile(new) - percentile(scores))))
    done = {"method": "recurrence", "k": cfg.k, "dims": int(z.shape[1]), "reference": min(cfg.reference, len(z)),
            "seed": cfg.seed, "weight": cfg.weight, "candidates": int(len(z)), "videos": len(videos),
            "mean_rank_shift": round(moved, 4)}
    log.info("re-ranked %s: %d proposals of %d videos by score and recurrence (k %d, %d whitened dims), mean "
             "percentile shift %.3f", what, len(z), len(videos), cfg.k, z.shape[1], moved)
    return AnnotationSet(videos, dict(aset.provenance)), done


def rerank_candidates(src, stores, out, cfg: RecurrenceConfig = RecurrenceConfig(), progress: bool = True,
                      provenance: dict | None = None, prefer_store=None, limit: int | None = None) -> dict:
    """Write ``src``'s proposals (a pseudo-label file written at a low threshold: its segments and ignore
    regions are the candidates) to ``out``, re-ranked by :func:`rerank_set`; filter them with
    :func:`tal.pseudo.refilter`. ``limit`` re-ranks the first videos of ``src`` only, among themselves (as if
    the store held no others: a scaling curve). Returns what it did (also in ``out``'s provenance, ``rerank``)."""
    from tal.data.annotations import AnnotationSet, load_annotations, write_official

    src, out = Path(src), Path(out)
    aset = load_annotations(src)
    if limit is not None:
        aset = AnnotationSet(dict(list(aset.videos.items())[:limit]), dict(aset.provenance))
    ranked, done = rerank_set(aset, stores, cfg, progress, prefer_store, what=str(src))
    ranked.provenance.update(rerank={**done, "from": str(src)}, **(provenance or {}))
    write_official(ranked, out)
    return ranked.provenance["rerank"]


def choose_rerank(truth, proposals, stores, cfg: RecurrenceConfig = RecurrenceConfig(), alpha: float = 0.5,
                  progress: bool = True, prefer_store=None, what: str = "held-out proposals") -> dict:
    """Does re-ranking help where it can be checked? Class-agnostic AP at tIoU ``alpha`` of the held-out
    labelled videos' proposals (``proposals``: the cross-fitted fold models', :func:`tal.crossfit.heldout_evidence`)
    against their human segments (``truth``), ranked by score and re-ranked; re-ranking is chosen only when
    it scores higher. Where look-alikes of actions recur as much as actions (or the score already ranks well)
    it scores lower, and the unlabelled proposals keep their score's order."""
    ranked, done = rerank_set(proposals, stores, cfg, progress, prefer_store, what=what)
    ap = {name: agnostic_ap(truth, p, alpha)
          for name, p in (("score", proposals), ("recurrence", ranked))}
    chosen = "recurrence" if ap["recurrence"] > ap["score"] else "score"
    return {"chosen": chosen, "heldout_ap": ap, "tiou": alpha, "heldout_videos": len(proposals.videos),
            "heldout_proposals": done["candidates"],
            "rule": "recurrence where it ranks the held-out labelled videos' proposals better than their score"}
