"""ActionFormer's backbone: masked conv embedding, transformer stem, downsampling transformer branch."""

from __future__ import annotations

import torch
from torch import nn

from .blocks import MaskedConv1d, TransformerBlock, apply_mask
from .config import ModelConfig


class ConvTransformerBackbone(nn.Module):
    """arch = (embedding convs, stem blocks, branch blocks) -> 1 + arch[2] levels with strides 1, 2, 4, ...

    Takes [B, D, T] features, returns per level [B, T_l, C] features and [B, T_l] masks."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n_embd, n_stem, n_branch = cfg.arch
        windows = cfg.level_windows()
        self.embed = nn.ModuleList()
        self.embed_norms = nn.ModuleList()
        for i in range(n_embd):
            in_ch = cfg.input_dim if i == 0 else cfg.embd_dim
            self.embed.append(MaskedConv1d(in_ch, cfg.embd_dim, cfg.embd_kernel, bias=not cfg.embd_with_ln))
            self.embed_norms.append(nn.LayerNorm(cfg.embd_dim) if cfg.embd_with_ln else nn.Identity())
        block = dict(n_head=cfg.n_head, mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout, droppath=cfg.droppath)
        self.stem = nn.ModuleList(TransformerBlock(cfg.embd_dim, window=windows[0], **block) for _ in range(n_stem))
        self.branch = nn.ModuleList(
            TransformerBlock(cfg.embd_dim, window=windows[1 + i], stride=2, **block) for i in range(n_branch)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        x = x * mask[:, None].to(x.dtype)  # padding must not reach the first conv
        for i, (conv, norm) in enumerate(zip(self.embed, self.embed_norms)):
            x, _ = conv(x, mask, channels_first=(i == 0))
            x = apply_mask(torch.relu(norm(x)), mask)
        for blk in self.stem:
            x, mask = blk(x, mask)
        feats, masks = [x], [mask]
        for blk in self.branch:
            x, mask = blk(x, mask)
            feats.append(x)
            masks.append(mask)
        return feats, masks
