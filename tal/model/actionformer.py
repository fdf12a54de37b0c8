"""The ActionFormer-style localizer: forward pass, training losses, proposals and final detections."""

from __future__ import annotations

import math

import torch
from torch import nn

from .assign import assign_targets
from .backbone import ConvTransformerBackbone
from .config import ModelConfig
from .heads import ClassificationHead, RegressionHead
from .losses import diou_loss_1d, sigmoid_focal_loss
from .neck import build_neck
from .points import PointGenerator
from .postprocess import postprocess


class ActionFormer(nn.Module):
    """forward(feats [B, D, T], masks [B, T] bool) -> dict of tensors, pyramid levels concatenated:

    cls_logits [B, P, C], offsets [B, P, 2] (stride units), mask [B, P] bool, points [P, 4] (t, lo, hi, stride).
    Segments everywhere are in grid units (input feature index)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = ConvTransformerBackbone(cfg)
        self.neck = build_neck(cfg)
        self.cls_head = ClassificationHead(cfg)
        self.reg_head = RegressionHead(cfg)
        self.points = PointGenerator(cfg)
        self._init_biases()
        # EMA of the positive count: a buffer so that it is checkpointed and restored with the weights
        self.register_buffer("loss_normalizer", torch.tensor(float(cfg.init_loss_norm)))

    def _init_biases(self):
        # ActionFormer starts every linear/conv bias at zero, except the classifier (focal prior)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d)) and module.bias is not None:
                nn.init.zeros_(module.bias)
        prior = self.cfg.cls_prior_prob
        nn.init.constant_(self.cls_head.out.bias, -math.log((1 - prior) / prior))
        # distances start near one stride on either side: a zero bias lets ReLU(scale * x) start dead for a whole
        # channel (its input is non-negative and alike across positions), and a dead channel never recovers
        nn.init.constant_(self.reg_head.out.bias, 1.0)

    # --- forward -------------------------------------------------------------------------------------------
    def _check_inputs(self, feats, masks):
        if feats.dim() != 3 or feats.shape[1] != self.cfg.input_dim:
            raise ValueError(f"feats must be [B, {self.cfg.input_dim}, T], got {list(feats.shape)}")
        B, _, T = feats.shape
        if T % self.cfg.max_stride:
            raise ValueError(f"sequence length {T} is not a multiple of the largest stride {self.cfg.max_stride}")
        if masks.shape != (B, T) or masks.dtype != torch.bool:
            raise ValueError(f"masks must be bool [{B}, {T}], got {masks.dtype} {list(masks.shape)}")

    def forward(self, feats: torch.Tensor, masks: torch.Tensor) -> dict:
        self._check_inputs(feats, masks)
        pyramid, level_masks = self.backbone(feats, masks)
        pyramid, level_masks = self.neck(pyramid, level_masks)
        logits = self.cls_head(pyramid, level_masks)
        offsets = self.reg_head(pyramid, level_masks)
        return {
            "cls_logits": torch.cat(logits, dim=1),
            "offsets": torch.cat(offsets, dim=1),
            "mask": torch.cat(level_masks, dim=1),
            "points": self.points([m.shape[1] for m in level_masks], feats.device),
        }

    # --- training ------------------------------------------------------------------------------------------
    def losses(self, out: dict, gt_segments, gt_labels, gt_weights=None, gt_ignore=None, soft: bool = False) -> dict:
        """Focal + DIoU losses, normalised by an EMA of the number of positive points (updated in training).

        gt_segments / gt_labels / gt_weights: one tensor per video ([N, 2] grid units, [N] long, [N] float).
        A weight w scales its points' losses; with ``soft`` it is instead the probability that the segment is an
        action: its points' classification loss is w × the action's loss + (1 − w) × the background loss (the
        expected loss of a label that is right with probability w, w in [0, 1]; regression still weighs w; the
        loss normaliser counts its points as positives all the same).
        gt_ignore: per video [M, 2] regions of unknown label (grid units): points of any level inside one are
        left out of the classification loss unless they are positives (as detectors treat "don't care"
        regions: neither action nor background)."""
        cfg = self.cfg
        B = out["cls_logits"].shape[0]
        if len(gt_segments) != B or len(gt_labels) != B or (gt_weights is not None and len(gt_weights) != B) \
                or (gt_ignore is not None and len(gt_ignore) != B):
            raise ValueError(f"losses() needs one ground-truth entry per video ({B})")
        targets = [
            assign_targets(out["points"], gt_segments[b], gt_labels[b], cfg.num_classes,
                           cfg.center_sample_radius, None if gt_weights is None else gt_weights[b])
            for b in range(B)
        ]
        gt_cls = torch.stack([t.cls for t in targets])
        gt_off = torch.stack([t.offsets for t in targets])
        pos = torch.stack([t.positive for t in targets]) & out["mask"]
        weights = torch.stack([t.weights for t in targets])
        valid = out["mask"]
        if gt_ignore is not None:
            t = out["points"][:, 0]
            unknown = torch.stack([((t[:, None] > r[None, :, 0]) & (t[:, None] < r[None, :, 1])).any(1)
                                   for r in gt_ignore])
            valid = valid & ~(unknown & ~pos)

        num_pos = pos.sum().item()
        if self.training:
            m = cfg.loss_norm_momentum
            self.loss_normalizer.mul_(m).add_((1 - m) * max(num_pos, 1))
        norm = self.loss_normalizer.item()

        def smoothed(t):
            s = cfg.label_smoothing
            return t * (1 - s) + s / (cfg.num_classes + 1) if s > 0 else t

        target = smoothed(gt_cls[valid])
        logits = out["cls_logits"][valid].float()
        w = weights[valid][:, None]
        cls = sigmoid_focal_loss(logits, target, cfg.focal_alpha, cfg.focal_gamma) * w
        if soft:  # the rest of the expected loss: background, with the target every background point gets
            cls = cls + sigmoid_focal_loss(logits, smoothed(torch.zeros_like(target)), cfg.focal_alpha,
                                           cfg.focal_gamma) * (1 - w)
        cls_loss = cls.sum() / norm

        if num_pos > 0:
            diou = diou_loss_1d(out["offsets"][pos].float(), gt_off[pos])
            reg_loss = (diou * weights[pos]).sum() / norm
        else:
            reg_loss = out["offsets"].sum() * 0.0  # keeps the graph connected (DDP needs every parameter used)
        return {"cls_loss": cls_loss, "reg_loss": reg_loss, "final_loss": cls_loss + cfg.reg_loss_weight * reg_loss}

    # --- inference -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def proposals(self, out: dict) -> list[dict]:
        """Per video: dict(segments [M, 2] grid units, scores [M], labels [M]) before NMS, best first."""
        cfg = self.cfg
        pts = out["points"]
        C = out["cls_logits"].shape[-1]
        result = []
        for b in range(out["cls_logits"].shape[0]):
            probs = torch.sigmoid(out["cls_logits"][b].float()) * out["mask"][b][:, None]
            flat = probs.flatten()
            cand = torch.nonzero(flat > cfg.pre_nms_thresh).squeeze(1)
            if cand.numel() > cfg.pre_nms_topk:
                cand = cand[flat[cand].topk(cfg.pre_nms_topk).indices]
            scores, order = flat[cand].sort(descending=True, stable=True)
            cand = cand[order]
            point, label = cand // C, cand % C
            t, stride = pts[point, 0], pts[point, 3]
            off = out["offsets"][b][point].float()
            segments = torch.stack([t - off[:, 0] * stride, t + off[:, 1] * stride], dim=1)
            long_enough = (segments[:, 1] - segments[:, 0]) > cfg.duration_thresh
            result.append({"segments": segments[long_enough], "scores": scores[long_enough],
                           "labels": label[long_enough]})
        return result

    @torch.no_grad()
    def predict(self, out: dict) -> list[dict]:
        """Per video: proposals after class-wise NMS / soft-NMS / score voting, at most max_seg_num, best first."""
        cfg = self.cfg
        return [
            postprocess(p["segments"], p["scores"], p["labels"], **cfg.nms().kwargs())
            for p in self.proposals(out)
        ]


def build_model(cfg: ModelConfig | dict | None = None) -> ActionFormer:
    if cfg is None:
        cfg = ModelConfig()
    elif isinstance(cfg, dict):
        cfg = ModelConfig.from_dict(cfg)
    return ActionFormer(cfg)
