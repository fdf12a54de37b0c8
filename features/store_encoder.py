"""The encoder that made a store, rebuilt from its provenance exactly -- for embedding class names beside its
rows (``tal-extract text``, ``tal-infer --embed-names``). Anything else is refused, before weights are loaded."""

from __future__ import annotations

from pathlib import Path


def store_encoder_options(store_path, provenance: dict, model=None, pretrained=None,
                          checkpoint=None) -> tuple[str, str, int]:
    """(model, pretrained, seed) for ``load_encoder`` that rebuild the store's encoder.

    ``model``/``pretrained`` default to the store's; a checkpoint store needs the same ``checkpoint`` file
    (checked by sha256 when loaded), a custom architecture its config ``FILE.json``; random weights reuse the
    store's ``init_seed``. Any other encoder is an EncoderError naming the store."""
    from features.encoders import RANDOM_SEED, RANDOM_TAGS, EncoderError  # torch: only when needed

    prov = provenance
    made_by = f"{prov.get('encoder')}/{prov.get('pretrained')}"
    stored = str(prov.get("pretrained", ""))
    if prov.get("encoder") in (None, "external", "simulated"):
        raise EncoderError(f"{store_path}: its features were not made by an open_clip encoder stovtal can rebuild "
                           f"({made_by}); add class-name embeddings with tal-store add-vocab instead")
    model = model or prov.get("encoder")
    if pretrained is None and checkpoint is None:   # beside a checkpoint, load_encoder picks the file's own defaults
        pretrained = "none" if stored == "random" else stored
    if stored.startswith("sha256:") and checkpoint is None:
        raise EncoderError(f"{store_path}: features were made from a checkpoint ({stored[:19]}...); "
                           f"pass the same file with --checkpoint FILE")
    if prov.get("model_config_sha256") and not str(model).endswith(".json"):
        raise EncoderError(f"{store_path}: features were made by the custom architecture {made_by}; "
                           f"pass its config with --model FILE.json")
    if (Path(model).stem if str(model).endswith(".json") else model) != prov.get("encoder"):
        raise EncoderError(f"{store_path}: features were made by {made_by}, not {model}; "
                           f"text embeddings must come from the same encoder")
    if checkpoint is None and ("random" if pretrained.lower() in RANDOM_TAGS else pretrained) != stored:
        raise EncoderError(f"{store_path}: features were made by {made_by}, not pretrained={pretrained}; "
                           f"text embeddings must come from the same encoder")
    seed = prov.get("init_seed")
    return model, pretrained, RANDOM_SEED if seed is None else int(seed)


def is_random(provenance: dict) -> bool:
    """Whether the store's features come from randomly initialised weights (tests, benchmarks)."""
    return str(provenance.get("pretrained", "")) == "random"
