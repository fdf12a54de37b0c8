"""Open-vocabulary classification of class-agnostic proposals with CLIP features and text embeddings.

Each proposal's feature rows are mean-pooled, matched by cosine similarity to the class-name text embeddings,
turned into class probabilities by a softmax at CLIP's logit scale; each of its top ``topk`` classes (5 by
default) becomes a detection scored by fusing that probability with the proposal's actionness, and those are
de-duplicated class-wise with the model's own NMS settings (``ModelConfig.nms()``: one source for both paths).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .config import ModelConfig, NmsSettings
from .postprocess import postprocess

FUSIONS = ("geometric", "arithmetic", "actionness", "class")


@dataclass
class OVConfig:
    """How proposals are named; how they are then de-duplicated is the model's (``NmsSettings``)."""

    logit_scale: float = 100.0
    topk: int = 5  # candidate classes per proposal (5, not 1: measured in docs/selftrain.md, "Naming")
    fusion: str = "geometric"  # sqrt(actionness * p) | (actionness + p) / 2 | actionness | p

    def __post_init__(self):
        if self.fusion not in FUSIONS:
            raise ValueError(f"OVConfig.fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.topk < 1:
            raise ValueError(f"OVConfig.topk must be >= 1, got {self.topk}")

    def to_dict(self) -> dict:
        return asdict(self)


def pool_segments(features: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Mean of the rows i with start <= i <= end for each segment [M, 2] (grid units) -> [M, D].

    Segments are clipped to the video; one that covers no row centre uses the row nearest its middle.
    A cumulative sum makes this O(T + M) whatever the segment lengths."""
    T = features.shape[0]
    csum = F.pad(features.double().cumsum(dim=0), (0, 0, 1, 0))  # csum[i] = sum of rows < i
    start = torch.ceil(segments[:, 0]).clamp(0, T - 1).long()
    end = torch.floor(segments[:, 1]).clamp(0, T - 1).long()
    middle = torch.round(segments.mean(dim=1)).clamp(0, T - 1).long()
    empty = end < start
    start = torch.where(empty, middle, start)
    end = torch.where(empty, middle, end)
    pooled = (csum[end + 1] - csum[start]) / (end - start + 1)[:, None]
    return pooled.to(features.dtype)


def fuse_scores(actionness: torch.Tensor, class_prob: torch.Tensor, fusion: str) -> torch.Tensor:
    if fusion == "geometric":
        return torch.sqrt(actionness.clamp(min=0) * class_prob)
    if fusion == "arithmetic":
        return 0.5 * (actionness + class_prob)
    if fusion == "actionness":
        return actionness.clone()
    if fusion == "class":
        return class_prob.clone()
    raise ValueError(f"unknown score fusion {fusion!r} (one of {FUSIONS})")


def class_probabilities(features, segments, text_emb, logit_scale: float = 100.0) -> torch.Tensor:
    """Softmax over classes of logit_scale * cosine(pooled proposal feature, text embedding): [M, K]."""
    pooled = F.normalize(pool_segments(features.float(), segments.float()), dim=1)
    text = F.normalize(text_emb.float(), dim=1)
    return (logit_scale * pooled @ text.T).softmax(dim=1)


def classify_proposals(features, segments, actionness, text_emb, cfg: OVConfig | None = None,
                       nms: NmsSettings | None = None):
    """features [T, D]; segments [M, 2] grid units; actionness [M]; text_emb [K, D]; ``nms``: the model's
    settings (``ModelConfig.nms()``; default: ModelConfig's defaults).

    Returns (segments [N, 2], scores [N], labels [N] indices into text_emb rows), best first, after NMS."""
    cfg = cfg or OVConfig()
    nms = nms or ModelConfig().nms()
    features, text_emb = torch.as_tensor(features), torch.as_tensor(text_emb)
    segments, actionness = torch.as_tensor(segments), torch.as_tensor(actionness)
    if features.dim() != 2 or text_emb.dim() != 2 or features.shape[1] != text_emb.shape[1]:
        raise ValueError(
            f"feature rows [T, D] and text embeddings [K, D] must share D; got {list(features.shape)} "
            f"and {list(text_emb.shape)}"
        )
    if features.shape[0] == 0:
        raise ValueError("cannot classify proposals of a video with no feature rows")
    if segments.dim() != 2 or segments.shape[1] != 2 or actionness.shape != (segments.shape[0],):
        raise ValueError(f"segments must be [M, 2] with actionness [M]; got {list(segments.shape)}, "
                         f"{list(actionness.shape)}")
    device = segments.device
    if segments.shape[0] == 0:
        return segments.float(), actionness.float(), torch.zeros(0, dtype=torch.long, device=device)
    probs = class_probabilities(features.to(device), segments, text_emb.to(device), cfg.logit_scale)
    k = min(cfg.topk, probs.shape[1])
    top_p, top_c = probs.topk(k, dim=1)  # [M, k]
    cand_segments = segments.float().repeat_interleave(k, dim=0)
    cand_scores = fuse_scores(actionness.float().repeat_interleave(k), top_p.flatten(), cfg.fusion)
    cand_labels = top_c.flatten()
    kept = postprocess(cand_segments, cand_scores, cand_labels, **nms.kwargs())
    return kept["segments"], kept["scores"], kept["labels"]
