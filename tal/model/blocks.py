"""Masked 1-D building blocks: conv, local-window self-attention, transformer block, layer scale + drop path.

Layout: features are [B, T, C] (time-major, so LayerNorm, linear layers and masking run on contiguous
channels — several times faster on CPU than normalising over the channel axis of [B, C, T]); masks are
[B, T] bool (True = a real snippet). Every block returns zeros at padded positions, so a valid position never
sees what the padding held: to a valid snippet, padding looks exactly like the zero padding at a sequence end.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def downsample_mask(mask: torch.Tensor, stride: int) -> torch.Tensor:
    """Mask of a stride-`stride` output whose position i is centred on input position i*stride."""
    return mask[:, ::stride] if stride > 1 else mask


def apply_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x * mask[:, :, None].to(x.dtype)


class MaskedConv1d(nn.Conv1d):
    """Conv1d over [B, T, C] ('same' padding, odd kernel) whose output is zeroed at padded positions."""

    def __init__(self, in_ch, out_ch, kernel_size, stride=1, groups=1, bias=True):
        if kernel_size % 2 != 1:
            raise ValueError(f"MaskedConv1d needs an odd kernel size, got {kernel_size}")
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, channels_first: bool = False):
        """x [B, T, C] (or [B, C, T] with channels_first) -> ([B, T', C'], mask [B, T'])."""
        out_mask = downsample_mask(mask, self.stride[0])
        y = super().forward(x if channels_first else x.transpose(1, 2)).transpose(1, 2)
        return apply_mask(y, out_mask), out_mask


class Scale(nn.Module):
    """One learned scalar (ActionFormer's per-level regression scale)."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class LayerScaleDropPath(nn.Module):
    """Per-channel learned residual scale (init 1e-4) followed by per-sample stochastic depth.

    ActionFormer's residual branches start almost closed so the deep pyramid trains stably from scratch."""

    def __init__(self, channels: int, drop_prob: float, init: float = 1e-4):
        super().__init__()
        self.layer_scale = nn.Parameter(torch.full((channels,), init))
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.layer_scale
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        survive = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * survive / keep


def _attend(scores, allowed, dropout):
    # finfo.min (not -inf) keeps a fully-masked row finite; such rows belong to padded queries only.
    scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    return dropout(scores.softmax(dim=-1))


def dense_attention(q, k, v, key_mask, radius: int | None, dropout: nn.Module):
    """q, k, v [B, H, T, d]; key_mask [B, T]; radius None = global, else |i - j| <= radius."""
    scores = q @ k.transpose(-1, -2)
    allowed = key_mask[:, None, None, :]
    if radius is not None:
        idx = torch.arange(q.shape[2], device=q.device)
        allowed = allowed & ((idx[:, None] - idx[None, :]).abs() <= radius)
    return _attend(scores, allowed, dropout) @ v


def local_attention(q, k, v, key_mask, radius: int, block: int, dropout: nn.Module):
    """Banded self-attention (|i - j| <= radius) in O(T * (block + 2 * radius)) time and memory.

    Queries are cut into blocks of `block`; each block attends to its own keys plus `radius` keys on either side,
    gathered with unfold over a padded key sequence; a fixed band mask then removes keys beyond the radius."""
    B, H, T, d = q.shape
    nb = -(-T // block)
    tail = nb * block - T
    span = block + 2 * radius
    qc = F.pad(q, (0, 0, 0, tail)).view(B, H, nb, block, d)
    kc = F.pad(k, (0, 0, radius, radius + tail)).unfold(2, span, block)  # [B, H, nb, d, span]
    vc = F.pad(v, (0, 0, radius, radius + tail)).unfold(2, span, block).transpose(-1, -2)  # [B, H, nb, span, d]
    mc = F.pad(key_mask, (radius, radius + tail), value=False).unfold(1, span, block)  # [B, nb, span]
    # query i of a block sits at chunk key index i + radius; keep keys j with |j - radius - i| <= radius
    qi = torch.arange(block, device=q.device)[:, None]
    kj = torch.arange(span, device=q.device)[None, :]
    band = (kj - qi >= 0) & (kj - qi <= 2 * radius)
    allowed = band[None, None, None] & mc[:, None, :, None, :]
    out = _attend(qc @ kc, allowed, dropout) @ vc  # [B, H, nb, block, d]
    return out.reshape(B, H, nb * block, d)[:, :, :T]


class MaskedLocalAttention(nn.Module):
    """Multi-head self-attention over a local window, with optional stride-2 pooling of q/k/v.

    Like ActionFormer's MaskedMHCA: a depthwise conv (kernel 3, stride s) + LayerNorm on each of the q, k, v
    paths does the downsampling, so the attention is square at the output resolution; `window` is counted in
    output positions (-1 = global)."""

    def __init__(self, dim, n_head, window, stride=1, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        if dim % n_head:
            raise ValueError(f"attention width {dim} is not divisible by {n_head} heads")
        self.n_head, self.stride = n_head, stride
        self.radius = None if window == -1 else window // 2
        self.pools = nn.ModuleList(MaskedConv1d(dim, dim, 3, stride=stride, groups=dim, bias=False) for _ in range(3))
        self.pool_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(3))
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x, mask):
        B = x.shape[0]
        heads = []
        for pool, norm, lin in zip(self.pools, self.pool_norms, (self.q_proj, self.k_proj, self.v_proj)):
            y, out_mask = pool(x, mask)
            y = lin(norm(y))
            heads.append(y.view(B, y.shape[1], self.n_head, -1).transpose(1, 2))  # [B, H, T', d]
        q, k, v = heads
        T, d = q.shape[2], q.shape[3]
        q = q * (1.0 / math.sqrt(d))
        if self.radius is None or 2 * self.radius + 1 >= T:
            out = dense_attention(q, k, v, out_mask, self.radius, self.attn_drop)
        else:
            block = max(2 * self.radius, 16)
            out = local_attention(q, k, v, out_mask, self.radius, block, self.attn_drop)
        out = out.transpose(1, 2).reshape(B, T, -1)
        return apply_mask(self.proj_drop(self.proj(out)), out_mask), out_mask


class TransformerBlock(nn.Module):
    """Pre-LN transformer block over [B, T, C] with local attention; stride 2 halves the sequence.

    The residual path is max-pooled when downsampling (ActionFormer); the MLP is pointwise."""

    def __init__(self, dim, n_head, window, stride=1, mlp_ratio=4, dropout=0.0, droppath=0.0):
        super().__init__()
        self.stride = stride
        self.ln1 = nn.LayerNorm(dim)
        self.attn = MaskedLocalAttention(dim, n_head, window, stride, attn_drop=dropout, proj_drop=dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_ratio * dim, dim),
            nn.Dropout(dropout),
        )
        self.path_attn = LayerScaleDropPath(dim, droppath)
        self.path_mlp = LayerScaleDropPath(dim, droppath)

    def _skip(self, x):
        if self.stride == 1:
            return x
        s = self.stride
        return F.max_pool1d(x.transpose(1, 2), s + 1, stride=s, padding=(s + 1) // 2).transpose(1, 2)

    def forward(self, x, mask):
        attn_out, out_mask = self.attn(apply_mask(self.ln1(x), mask), mask)
        out = apply_mask(self._skip(x), out_mask) + self.path_attn(attn_out)
        out = out + self.path_mlp(apply_mask(self.mlp(self.ln2(out)), out_mask))
        return apply_mask(out, out_mask), out_mask
