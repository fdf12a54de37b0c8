"""Checkpoints: atomic writes, `weights_only` loading, RNG states, and the store-compatibility check.

A checkpoint holds only tensors and plain Python types so that ``torch.load(weights_only=True)`` opens it (no
arbitrary unpickling of files someone sent you). It records the features it was trained on — encoder, weights,
dimension and snippet grid — so using it on a store from another encoder or grid fails with a clear message
instead of producing quiet nonsense.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch

from features.compat import feature_identity, mismatches
from features.errors import StovtalError
from tal.atomic import atomic_write_bytes

FORMAT = "stovtal-checkpoint-1"


class CheckpointError(StovtalError, ValueError):
    """A one-line message naming the checkpoint (and store) at fault."""


def save_checkpoint(path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or holding objects that weights_only refuses
        raise CheckpointError(f"{path}: not a readable stovtal checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a stovtal checkpoint (format {state.get('format')!r})"
                              if isinstance(state, dict) else f"{path}: not a stovtal checkpoint")
    for key in ("config", "model", "provenance", "classes", "mode"):
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint lacks the field {key!r}")
    return state


# --------------------------------------------------------------------------------------------- provenance
def store_provenance(store) -> dict:
    """The part of a store's provenance that a model depends on (features.compat.FEATURE_KEYS), as plain types."""
    return feature_identity(store.provenance or {}, store.dim)


def check_compatible(trained_on: dict, store, checkpoint_path="checkpoint") -> None:
    """Refuse a store whose features differ from the checkpoint's (encoder, weights, sampling, grid, dimension).

    Keys a checkpoint does not record at all (written before they were added) are not compared."""
    diffs = mismatches(trained_on, store_provenance(store), only_known=True)
    if diffs:
        raise CheckpointError(f"{checkpoint_path} was trained on other features than {store.path}: "
                              + "; ".join(diffs) + " (checkpoint vs store)")


def check_same_features(stores) -> dict:
    """Stores mixed in one run must hold the same kind of features; returns their shared provenance."""
    first = store_provenance(stores[0])
    for store in stores[1:]:
        check_compatible(first, store, checkpoint_path=f"features of {stores[0].path}")
    return first


# --------------------------------------------------------------------------------------------- RNG states
def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
