"""Necks between the pyramid and the heads: identity (+ LayerNorm) or a 1-D FPN. Features are [B, T, C]."""

from __future__ import annotations

from torch import nn

from .blocks import MaskedConv1d, apply_mask
from .config import ModelConfig


class IdentityNeck(nn.Module):
    """LayerNorm per level (ActionFormer's FPNIdentity); a linear projection only if embd_dim != fpn_dim."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.proj = nn.Linear(cfg.embd_dim, cfg.fpn_dim) if cfg.embd_dim != cfg.fpn_dim else None
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.fpn_dim) for _ in range(cfg.num_levels))

    def forward(self, feats, masks):
        out = []
        for x, m, norm in zip(feats, masks, self.norms):
            if self.proj is not None:
                x = self.proj(x)
            out.append(apply_mask(norm(x), m))
        return out, masks


class FPNNeck(nn.Module):
    """Lateral linear maps, top-down nearest upsampling + sum, 3-tap output convs and LayerNorm per level."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n = cfg.num_levels
        self.lateral = nn.ModuleList(nn.Linear(cfg.embd_dim, cfg.fpn_dim) for _ in range(n))
        self.output = nn.ModuleList(MaskedConv1d(cfg.fpn_dim, cfg.fpn_dim, 3, bias=False) for _ in range(n))
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.fpn_dim) for _ in range(n))

    def forward(self, feats, masks):
        lat = [apply_mask(lin(x), m) for lin, x, m in zip(self.lateral, feats, masks)]
        for i in range(len(lat) - 1, 0, -1):
            # level i position j sits on level i-1 positions 2j and 2j+1 (nearest upsampling)
            up = lat[i].repeat_interleave(2, dim=1)[:, : lat[i - 1].shape[1]]
            lat[i - 1] = lat[i - 1] + apply_mask(up, masks[i - 1])
        out = []
        for x, m, conv, norm in zip(lat, masks, self.output, self.norms):
            y, _ = conv(x, m)
            out.append(apply_mask(norm(y), m))
        return out, masks


def build_neck(cfg: ModelConfig) -> nn.Module:
    return FPNNeck(cfg) if cfg.neck == "fpn" else IdentityNeck(cfg)
