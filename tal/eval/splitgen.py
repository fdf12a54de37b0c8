"""Making base/novel splits: seeded random splits, the seed paper's Kinetics-400 overlap split, and
cross-dataset splits.

Two class names *match* when their sets of content lemmas are equal (:func:`tal.eval.lemma.lemmas`), so
word order, camelCase, plurals, gerunds and generic verbs ("playing") do not matter, or when their words
run together are equal ("Shotput" = "shot put").
"""

from __future__ import annotations

import numpy as np

from tal.eval.lemma import match_keys
from tal.eval.protocols import Split, SplitError


def kinetics400_classes() -> list[str]:
    """The 400 Kinetics class names, from torchvision's model metadata (no download needed)."""
    from torchvision.models.video import R3D_18_Weights

    return list(R3D_18_Weights.KINETICS400_V1.meta["categories"])


def random_split(classes, novel_fraction: float, seed: int, name: str | None = None) -> Split:
    """``round(novel_fraction * K)`` classes drawn as novel with ``numpy.random.default_rng(seed)``;
    both lists keep the input class order."""
    classes = list(dict.fromkeys(classes))
    if not 0 < novel_fraction < 1:
        raise SplitError(f"novel fraction {novel_fraction} must lie strictly between 0 and 1")
    n_novel = int(round(novel_fraction * len(classes)))
    if not 0 < n_novel < len(classes):
        raise SplitError(f"{len(classes)} classes cannot be split with novel fraction {novel_fraction}")
    chosen = set(np.random.default_rng(seed).permutation(len(classes))[:n_novel].tolist())
    base = [c for i, c in enumerate(classes) if i not in chosen]
    novel = [c for i, c in enumerate(classes) if i in chosen]
    return Split(name or f"random:{round(100 * (1 - novel_fraction))}:{seed}", base, novel)


def matches(classes, reference) -> dict[str, str]:
    """class -> the first reference name it matches (classes without one are absent)."""
    index: dict = {}
    for ref in reference:
        for key in match_keys(ref):
            index.setdefault(key, ref)
    out = {}
    for c in classes:
        hit = next((index[k] for k in match_keys(c) if k in index), None)
        if hit is not None:
            out[c] = hit
    return out


def overlap_split(classes, reference, name: str) -> tuple[Split, dict[str, str]]:
    """base = classes matching a reference name, novel = the rest (input order kept)."""
    classes = list(dict.fromkeys(classes))
    matched = matches(classes, reference)
    split = Split(name, [c for c in classes if c in matched], [c for c in classes if c not in matched])
    return split, matched


def kinetics_split(classes, reference=None) -> tuple[Split, dict[str, str]]:
    """The seed paper's split: base = classes whose lemmatised names overlap Kinetics-400's, novel = rest."""
    return overlap_split(classes, reference if reference is not None else kinetics400_classes(), "kinetics400")


def cross_dataset_split(train_classes, target_classes) -> tuple[Split, dict[str, str]]:
    """For a model trained on dataset A scored on dataset B: base = B's classes A's vocabulary also names."""
    return overlap_split(target_classes, train_classes, "cross-dataset")
