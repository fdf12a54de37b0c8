"""Inference from a feature store: detections in seconds per video, streamed.

Closed-vocabulary models output their own classes. A class-agnostic model outputs label ``action``, or, given a
vocabulary (class names + text embeddings), classifies its proposals open-vocabulary with the store's CLIP rows
(``tal.model.ov``) before NMS. Models are evaluated with their EMA weights.

Library entry point (used by evaluation during training and by self-training)::

    for video_id, detections in iter_detections("test.zarr", "run/last.pt", video_ids=None):
        ...  # detections: list[tal.eval.predictions.Detection], seconds, best first
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from features.errors import StovtalError
from tal.checkpoint import CheckpointError, check_compatible, load_checkpoint
from tal.config import RunConfig
from tal.data.collate import PadCollate
from tal.data.dataset import FeatureDataset, StoreSet, inference_records
from tal.eval.predictions import Detection
from tal.model import build_model
from tal.model.ov import OVConfig, classify_proposals

log = logging.getLogger(__name__)

AGNOSTIC_LABEL = "action"
_WARNED_NO_EMA: set[str] = set()  # checkpoints already reported as lacking EMA weights


class InferenceError(StovtalError, ValueError):
    """A one-line message naming the checkpoint, store, vocabulary or class at fault."""


@dataclass
class Localizer:
    """A model ready for inference and what it needs to interpret its outputs."""

    model: torch.nn.Module
    config: RunConfig
    mode: str  # closed | agnostic
    classes: list[str]  # closed: output label names; agnostic: ["action"]
    provenance: dict  # features it was trained on (tal.checkpoint.store_provenance)
    source: str = "model"  # checkpoint path, for messages
    weights: str = "model"  # the weights in use: "ema" or "model" (raw)

    @classmethod
    def from_checkpoint(cls, path, weights: str = "ema") -> "Localizer":
        """The model of a checkpoint with its ``weights`` ("ema" or "model"). A checkpoint without EMA weights
        gives its raw weights, with one warning per checkpoint; ``.weights`` says which were loaded."""
        state = load_checkpoint(path)
        try:
            cfg = RunConfig.from_dict(state["config"], source=str(path))
            model = build_model(cfg.model)
            key = weights if state.get(weights) is not None else "model"
            model.load_state_dict(state[key])
        except (ValueError, RuntimeError, KeyError) as e:
            raise CheckpointError(f"{path}: cannot rebuild the model ({str(e).splitlines()[0]})") from None
        if key != weights and str(path) not in _WARNED_NO_EMA:
            _WARNED_NO_EMA.add(str(path))
            log.warning("%s holds no %s weights; using its raw (model) weights", path, weights.upper())
        return cls(model.eval(), cfg, state["mode"], list(state["classes"]), dict(state["provenance"]), str(path),
                   key)


@dataclass
class TextVocabulary:
    """Class names and their L2-normalised text embeddings [K, D], e.g. a store vocabulary restricted to a split."""

    classes: list[str]
    embeddings: np.ndarray

    def restrict(self, names, where: str = "vocabulary") -> "TextVocabulary":
        index = {c: i for i, c in enumerate(self.classes)}
        missing = [n for n in names if n not in index]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise InferenceError(f"{where}: class(es) not in the vocabulary: {shown}")
        rows = [index[n] for n in names]
        return TextVocabulary(list(names), self.embeddings[rows])


def _as_paths(stores) -> list[Path]:
    if isinstance(stores, (str, Path)) or hasattr(stores, "path"):
        stores = [stores]
    return [Path(s.path if hasattr(s, "path") else s) for s in stores]


def _detections(segments, scores, labels, names, grid, duration) -> list[Detection]:
    """Grid units -> seconds (clamped to the video); segments empty after clamping are dropped."""
    secs = grid.to_seconds(segments.double().cpu().numpy().reshape(-1, 2))
    scores, labels = scores.float().cpu().numpy(), labels.cpu().numpy()
    return [Detection(names[int(c)], float(s), float(a), float(b))
            for (a, b), s, c in zip(secs, scores, labels) if b > a]


def iter_detections(stores, localizer, video_ids=None, *, vocabulary: TextVocabulary | None = None,
                    ov_config: OVConfig | None = None, batch_size: int = 1, num_workers: int = 0,
                    device=None, skip_missing: bool = False, check_store: bool = True,
                    durations: dict | None = None, prefer_store=None) -> "DetectionStream":
    """Yield ``(video_id, detections)`` for each video, in order, reading rows lazily.

    ``stores``: a path or paths (or opened stores); ``localizer``: a :class:`Localizer` or a checkpoint path;
    ``video_ids``: default every video of the stores; ``vocabulary``: for agnostic models, classify
    open-vocabulary (``ov_config`` sets the fusion and how many classes name each proposal, default
    ``OVConfig()``'s 5; NMS is the model's own, ``ModelConfig.nms()``);
    ``durations``: fallback durations in seconds for videos whose store entry has none; ``prefer_store``: the
    store whose rows win for a video that several stores hold with different rows (else an error). Checkpoint,
    stores and videos are checked before this returns.
    """
    vocabularies = None if vocabulary is None else {None: vocabulary}
    stream = _prepared_stream(stores, localizer, video_ids, vocabularies, ov_config, batch_size, num_workers, device,
                              skip_missing, check_store, durations, prefer_store)
    if vocabulary is not None:
        stream.unwrap(None)
    return stream


def iter_open_vocabulary(stores, localizer, video_ids, vocabularies: dict, *, ov_config: OVConfig | None = None,
                         batch_size: int = 1, num_workers: int = 0, device=None,
                         prefer_store=None) -> "DetectionStream":
    """Yield ``(video_id, {name: detections})``: an agnostic localizer's proposals named with each of
    ``vocabularies`` (``{name: TextVocabulary}``). The localizer runs once per video whatever the number of
    vocabularies (protocols that differ only in the vocabulary share its proposals)."""
    return _prepared_stream(stores, localizer, video_ids, dict(vocabularies), ov_config, batch_size, num_workers,
                            device, False, True, None, prefer_store)


def _prepared_stream(stores, localizer, video_ids, vocabularies, ov_config, batch_size, num_workers, device,
                     skip_missing, check_store, durations, prefer_store) -> "DetectionStream":
    """Check the localizer, stores and videos now (not on the first ``next``); the lazy stream of results."""
    if not isinstance(localizer, Localizer):
        localizer = Localizer.from_checkpoint(localizer)
    if vocabularies is not None and localizer.mode != "agnostic":
        raise InferenceError(f"{localizer.source}: open-vocabulary classification needs an agnostic model "
                             f"(this one is closed over {len(localizer.classes)} classes)")
    paths = _as_paths(stores)
    store_set = StoreSet(paths, prefer_store)
    try:
        if check_store:
            for i in range(len(store_set)):
                check_compatible(localizer.provenance, store_set[i], localizer.source)
        records = inference_records(store_set, video_ids, skip_missing=skip_missing, durations=durations)
    finally:
        store_set.close()
    device = torch.device(device) if device is not None else next(localizer.model.parameters()).device
    return DetectionStream(_stream(localizer, paths, records, vocabularies, ov_config, batch_size, num_workers,
                                   device), len(records))


class DetectionStream:
    """An iterator of ``(video_id, detections)`` that knows how many videos it will yield (for progress bars)."""

    def __init__(self, generator, length: int):
        self._generator, self._length = generator, length

    def unwrap(self, name) -> None:
        """Yield one vocabulary's detections instead of the dict of all of them."""
        self._generator = ((vid, named[name]) for vid, named in self._generator)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._generator)

    def __len__(self):
        return self._length


@torch.no_grad()
def _stream(localizer, paths, records, vocabularies, ov_config, batch_size, num_workers, device):
    """``vocabularies``: None (the model's own labels) or ``{name: TextVocabulary}`` (yields a dict per video)."""
    cfg = localizer.config
    model = localizer.model.to(device).eval()
    dataset = FeatureDataset(paths, records, training=False, max_seq_len=cfg.max_seq_len,
                             resize_len=cfg.data.resize_len)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=PadCollate(cfg.model.max_stride))
    texts = None if vocabularies is None else {
        name: torch.as_tensor(v.embeddings, dtype=torch.float32, device=device) for name, v in vocabularies.items()}
    ov_cfg, nms = ov_config or OVConfig(), cfg.model.nms()
    names = localizer.classes if localizer.mode == "closed" else [AGNOSTIC_LABEL]
    try:
        for batch in loader:
            feats, masks = batch["feats"].to(device), batch["masks"].to(device)
            out = model(feats, masks)
            if texts is None:
                for b, det in enumerate(model.predict(out)):
                    yield batch["video_id"][b], _detections(det["segments"], det["scores"], det["labels"], names,
                                                            batch["grid"][b], batch["duration"][b])
                continue
            for b, prop in enumerate(model.proposals(out)):
                rows = feats[b, :, : int(batch["lengths"][b])].T
                named = {}
                for name, text in texts.items():
                    segs, scores, labels = classify_proposals(rows, prop["segments"], prop["scores"], text, ov_cfg,
                                                              nms)
                    named[name] = _detections(segs, scores, labels, vocabularies[name].classes, batch["grid"][b],
                                              batch["duration"][b])
                yield batch["video_id"][b], named
    finally:
        dataset.stores.close()


def store_vocabulary(store_path, name: str | None) -> TextVocabulary:
    """A vocabulary saved in the store (``name`` may be omitted when the store holds exactly one)."""
    from features.store import open_store

    with open_store(store_path, "r") as store:
        names = store.vocabulary_names()
        if name is None:
            if len(names) != 1:
                raise InferenceError(f"{store_path}: choose a vocabulary with --vocab "
                                     f"(store holds {', '.join(names) if names else 'none'})")
            name = names[0]
        if name not in names:
            raise InferenceError(f"{store_path}: no vocabulary {name!r} (store holds "
                                 f"{', '.join(names) if names else 'none'})")
        vocab = store.vocabulary(name)
        return TextVocabulary(list(vocab.classes), np.asarray(vocab.embeddings, dtype=np.float32))


def embed_class_names(store_path, names: list[str], template: str | None = None, *,
                      allow_random: bool = False) -> TextVocabulary:
    """Embed class names with the store's own text encoder, rebuilt from its provenance exactly (the same
    weights, architecture and random-init seed as ``tal-extract text``); a clear error when it cannot be.

    A store made with random weights is refused unless ``allow_random``: its text embeddings would be noise."""
    from features.encoders import load_encoder
    from features.store import open_store
    from features.store_encoder import is_random, store_encoder_options

    with open_store(store_path, "r") as store:
        prov, dim = dict(store.provenance or {}), store.dim
    stored = str(prov.get("pretrained", ""))
    if stored.startswith("sha256:") or prov.get("model_config_sha256"):
        raise InferenceError(f"{store_path}: its encoder ({prov.get('encoder')}, {stored[:19]}) needs its weights or "
                             "config file: embed the names with `tal-extract text --store ... --classes ...` "
                             "(--checkpoint FILE / --model FILE.json) and pass --vocab")
    model, pretrained, seed = store_encoder_options(store_path, prov)
    if is_random(prov) and not allow_random:
        raise InferenceError(f"{store_path}: its features come from a randomly initialised {model} (init_seed {seed}); "
                             "class names embedded with it mean nothing. Pass --allow-random-text to do it anyway "
                             "(tests, benchmarks)")
    enc = load_encoder(model, pretrained, device="cpu", seed=seed)
    if enc.dim != dim:
        raise InferenceError(f"{store_path}: store dim {dim} != text embedding dim {enc.dim} of {model}")
    texts = [template.format(n) if template else n for n in names]
    return TextVocabulary(list(names), enc.encode_texts(texts))


def choose_vocabulary(localizer: Localizer, store_path, *, vocab: str | None = None, names: list[str] | None = None,
                      embed_names: bool = False, allow_random_text: bool = False,
                      template: str | None = None) -> TextVocabulary | None:
    """What an agnostic model's proposals are classified into (None: label ``action``, or a closed model's own
    classes). Nothing falls back quietly:

    - ``embed_names``: ``names`` embedded with the store's own encoder (:func:`embed_class_names`);
    - else the store vocabulary ``vocab`` (or the store's only one when ``names`` are given), restricted to
      ``names``: a misspelt vocabulary or a name it lacks is an error."""
    if localizer.mode != "agnostic":
        if vocab or embed_names:
            raise InferenceError(f"{localizer.source}: open-vocabulary classification needs an agnostic model "
                                 f"(this one is closed over {len(localizer.classes)} classes)")
        return None
    if embed_names:
        if names is None:
            raise InferenceError("embedding class names needs the names (--class-names FILE or --split)")
        if vocab is not None:
            raise InferenceError("give --vocab (names from the store) or --embed-names (embed them now), not both")
        return embed_class_names(store_path, names, template, allow_random=allow_random_text)
    if vocab is None and names is None:
        return None
    vocabulary = store_vocabulary(store_path, vocab)
    if names is None:
        return vocabulary
    return vocabulary.restrict(names, where=f"{store_path} vocabulary {vocab or ''}".strip())


def run_inference(features, checkpoint, out, *, annotations=None, subset: str | None = None,
                  vocab: str | None = None, split: str | None = None, which: str = "all",
                  names: list[str] | None = None, embed_names: bool = False, allow_random_text: bool = False,
                  template: str | None = None, fusion: str = "geometric", topk: int | None = None,
                  skip_missing: bool = False, prefer_store=None, batch_size: int = 1, num_workers: int = 0, device=None,
                  progress: bool = True) -> tuple[int, int]:
    """``tal-infer``: detections of every video (of ``annotations``' ``subset``, else of the stores) written to
    ``out`` as an official results JSON. Classes: ``names`` or the ``split``'s ``which`` classes (not both);
    an agnostic model classifies into them open-vocabulary (:func:`choose_vocabulary`), a closed model keeps
    only those of its classes; ``topk``: names per proposal (default: ``OVConfig``'s). Returns (videos,
    detections)."""
    from tqdm import tqdm

    from tal.data.annotations import load_annotations
    from tal.eval.predictions import write_predictions
    from tal.eval.protocols import load_split

    features = [features] if isinstance(features, (str, Path)) else list(features)
    if subset and not annotations:
        raise InferenceError("--subset needs --annotations (the store does not know subsets)")
    if names is not None and split:
        raise InferenceError("give --class-names or --split, not both")
    localizer = Localizer.from_checkpoint(checkpoint)
    localizer.model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    video_ids = durations = None
    if annotations:
        aset = load_annotations(annotations, subset=subset)
        video_ids = list(aset.videos)
        durations = {v: a.duration for v, a in aset.videos.items()}
    if split:
        s = load_split(split)
        names = {"novel": s.novel, "base": s.base, "all": s.all}[which]
    vocabulary = choose_vocabulary(localizer, features[0], vocab=vocab, names=names, embed_names=embed_names,
                                   allow_random_text=allow_random_text, template=template)
    keep = set(names) if names is not None and vocabulary is None else None  # closed model: filter its classes
    ov_cfg = OVConfig(fusion=fusion) if topk is None else OVConfig(fusion=fusion, topk=topk)
    stream = iter_detections(features, localizer, video_ids, vocabulary=vocabulary, ov_config=ov_cfg,
                             batch_size=batch_size, num_workers=num_workers, skip_missing=skip_missing,
                             durations=durations, prefer_store=prefer_store)
    preds = {}
    for vid, dets in tqdm(stream, unit="video", desc="inference", disable=not progress):
        preds[vid] = [d for d in dets if keep is None or d.label in keep]
    write_predictions(preds, out, external_data={"used": False, "details": f"stovtal checkpoint {checkpoint}"})
    return len(preds), sum(len(d) for d in preds.values())
