"""Classification and regression heads shared across pyramid levels (features [B, T_l, C])."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import MaskedConv1d, Scale, apply_mask
from .config import ModelConfig


class _ConvTower(nn.Module):
    """(head_layers - 1) x [masked conv -> LayerNorm -> ReLU], kept zero at padded positions."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i in range(cfg.head_layers - 1):
            in_ch = cfg.fpn_dim if i == 0 else cfg.head_dim
            self.convs.append(MaskedConv1d(in_ch, cfg.head_dim, cfg.head_kernel, bias=not cfg.head_with_ln))
            self.norms.append(nn.LayerNorm(cfg.head_dim) if cfg.head_with_ln else nn.Identity())
        self.out_dim = cfg.head_dim if cfg.head_layers > 1 else cfg.fpn_dim

    def forward(self, x, mask):
        for conv, norm in zip(self.convs, self.norms):
            x, _ = conv(x, mask)
            x = apply_mask(torch.relu(norm(x)), mask)
        return x


class ClassificationHead(nn.Module):
    """Logits [B, T_l, C] per level (the model sets the output bias to the focal-loss prior)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.tower = _ConvTower(cfg)
        self.out = MaskedConv1d(self.tower.out_dim, cfg.num_classes, cfg.head_kernel)  # bias: set by the model

    def forward(self, feats, masks):
        return [self.out(self.tower(x, m), m)[0] for x, m in zip(feats, masks)]


class RegressionHead(nn.Module):
    """Distances (left, right) [B, T_l, 2] per level in units of that level's stride: ReLU(scale_l * conv)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.tower = _ConvTower(cfg)
        self.out = MaskedConv1d(self.tower.out_dim, 2, cfg.head_kernel)
        self.scales = nn.ModuleList(Scale() for _ in range(cfg.num_levels))

    def forward(self, feats, masks):
        return [torch.relu(s(self.out(self.tower(x, m), m)[0])) for x, m, s in zip(feats, masks, self.scales)]
