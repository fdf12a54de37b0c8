"""Whether features, a checkpoint and a text vocabulary belong together: one key set, one comparison.

A store's provenance describes its rows. Two sets of rows are the same kind of features -- a model trained on
one may run on the other, and they may be mixed in one run -- when they agree on ``FEATURE_KEYS``: the
encoder (``ENCODER_KEYS``: architecture, custom config, weights, random-init seed, QuickGELU), how frames
become a row (image size, preprocessing, normalisation), the snippet grid and the dimension. Text embeddings belong to
features when they agree on ``ENCODER_KEYS``. Adding videos to a store (resuming an extraction) also needs the
same ``ROW_KEYS`` (encoder precision, stored dtype), so that a store holds one kind of row, bit for bit.
Merging stores into one needs equal provenance apart from ``VOLATILE_KEYS``: one header describes them all.
"""

from __future__ import annotations

ENCODER_KEYS = ("encoder", "model_config_sha256", "pretrained", "init_seed", "quick_gelu")
SAMPLING_KEYS = ("image_size", "preprocess", "normalise", "fps", "window", "stride", "frame_step")
FEATURE_KEYS = ENCODER_KEYS + SAMPLING_KEYS + ("dim",)
ROW_KEYS = ("precision", "dtype")
VOLATILE_KEYS = ("created",)


def feature_identity(provenance: dict, dim: int | None = None) -> dict:
    """The ``FEATURE_KEYS`` part of a provenance as plain values (``dim`` from the store when given)."""
    out = {k: provenance.get(k) for k in FEATURE_KEYS}
    if dim is not None:
        out["dim"] = int(dim)
    if out["fps"] is not None:
        out["fps"] = float(out["fps"])
    return out


def mismatches(a: dict, b: dict, keys=FEATURE_KEYS, *, only_known: bool = False) -> list[str]:
    """``["key a!r vs b!r", ...]`` for each key where ``a`` and ``b`` differ (empty when they agree).

    ``only_known``: skip keys ``a`` does not record at all (records written before a key was added)."""
    return [f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in keys
            if not (only_known and k not in a) and a.get(k) != b.get(k)]


def differing_keys(a: dict, b: dict, keys=None) -> list[str]:
    """Names of the keys that differ; ``keys=None`` compares every key but ``VOLATILE_KEYS``."""
    if keys is None:
        keys = sorted((set(a) | set(b)) - set(VOLATILE_KEYS))
    return [k for k in keys if a.get(k) != b.get(k)]
