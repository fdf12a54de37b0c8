"""Readable, deterministic class names for the simulated benchmark, grouped in families.

The families play the role of THUMOS/ActivityNet super-categories: classes in one family share a visual
"family component" (same venue, same kind of motion), which is what lets actionness learned on base classes
transfer partly to novel ones. Names never depend on the seed, so a class keeps its name across seeds.
"""

from __future__ import annotations

FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ball sports", ("tennis swing", "basketball dunk", "volleyball spike", "golf swing", "soccer penalty",
                     "cricket bowling", "baseball pitch", "frisbee catch")),
    ("athletics", ("high jump", "long jump", "pole vault", "javelin throw", "hammer throw", "shot put",
                   "discus throw", "hurdling")),
    ("water sports", ("diving", "cliff diving", "surfing", "rowing", "kayaking", "water polo shot",
                      "swimming butterfly", "wakeboarding")),
    ("gymnastics", ("balance beam", "uneven bars", "pommel horse", "floor tumbling", "parallel bars",
                    "rings routine", "vault jump", "trampoline flip")),
    ("household", ("mopping floor", "washing dishes", "ironing clothes", "vacuuming carpet", "folding laundry",
                   "making the bed", "cleaning windows", "watering plants")),
    ("music", ("playing guitar", "playing drums", "playing piano", "playing violin", "playing trumpet",
               "playing cello", "playing flute", "playing saxophone")),
    ("winter sports", ("skiing slalom", "snowboarding", "ice skating spin", "curling throw", "ski jumping",
                       "ice hockey shot", "sledding", "cross-country skiing")),
    ("cooking", ("chopping vegetables", "stirring a pot", "kneading dough", "flipping a pancake",
                 "peeling potatoes", "frying an egg", "icing a cake", "grilling meat")),
    ("fitness", ("clean and jerk", "push ups", "rope climbing", "bench press", "pull ups", "kettlebell swing",
                 "jumping jacks", "battle ropes")),
    ("combat sports", ("boxing punch", "fencing lunge", "judo throw", "karate kick", "wrestling takedown",
                       "sumo push", "kickboxing combo", "taekwondo spin kick")),
)


def class_families(num_classes: int, family_size: int) -> tuple[list[str], list[str], list[int]]:
    """Return (class names, family names, family index of each class) for ``num_classes`` classes.

    Classes fill families of ``family_size`` in catalogue order; past the catalogue (or past a family's
    eight names) names fall back to "<family> action <j>" / "family <f>", still unique and deterministic.
    """
    if num_classes < 1 or family_size < 1:
        raise ValueError(f"need num_classes >= 1 and family_size >= 1, got {num_classes} and {family_size}")
    names, families, family_of = [], [], []
    for k in range(num_classes):
        f, j = divmod(k, family_size)
        if f == len(families):
            families.append(FAMILIES[f][0] if f < len(FAMILIES) else f"family {f + 1}")
        catalogue = FAMILIES[f][1] if f < len(FAMILIES) else ()
        names.append(catalogue[j] if j < len(catalogue) else f"{families[f]} action {j + 1}")
        family_of.append(f)
    return names, families, family_of
