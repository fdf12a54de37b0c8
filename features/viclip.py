"""ViCLIP: a CLIP whose vision tower attends over all patches of a short clip at once.

Written from the public description and code of ViCLIP (Wang et al., "InternVid", ICLR 2024;
OpenGVLab/InternVideo ``Data/InternVid/viclip``), so that its checkpoints load by name:

* vision (``vision_encoder``): each frame is cut into patches by a ``Conv3d`` with a temporal kernel of 1;
  every patch token gets the spatial position embedding of CLIP plus a learned temporal embedding of its
  frame (``temporal_positional_embedding [1, T, width]``); one class token (class embedding + position 0)
  leads the ``T x patches`` tokens through a pre-LayerNorm transformer with QuickGELU MLPs and no mask; the
  class token after ``ln_post`` times ``proj`` is the clip embedding. ViCLIP-B/16 takes 8 frames at 224 px.
* text (``text_encoder``): OpenAI CLIP's text transformer with a 32-token context, read at the end-of-text
  token (open_clip's ``TextTransformer`` with QuickGELU has the same parameters and computation).
* preprocessing (its evaluation transform, ``InternVideo1/Pretrain/ViCLIP/dataset/__init__.py``): every frame
  squashed to 224 x 224 with bicubic interpolation, ImageNet mean/std.

Token order inside the transformer (frame-major or patch-major) does not change the class token's output:
attention without a mask is permutation-equivariant. Masking (``masking_prob``) and drop-path exist only in
training and are left out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

@dataclass(frozen=True)
class ViCLIPConfig:
    embed_dim: int = 512
    image_size: int = 224
    patch_size: int = 16
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    num_frames: int = 8
    context_length: int = 32
    vocab_size: int = 49408
    text_width: int = 512
    text_heads: int = 8
    text_layers: int = 12

    @classmethod
    def from_json(cls, cfg: dict) -> "ViCLIPConfig":
        """A config file's content: ``{"model_type": "viclip", "embed_dim", "vision_cfg": {image_size, patch_size,
        width, layers, heads, num_frames}, "text_cfg": {context_length, vocab_size, width, heads, layers}}``."""
        v, t = cfg["vision_cfg"], cfg["text_cfg"]
        return cls(embed_dim=int(cfg["embed_dim"]), image_size=int(v["image_size"]), patch_size=int(v["patch_size"]),
                   vision_width=int(v["width"]), vision_layers=int(v["layers"]), vision_heads=int(v["heads"]),
                   num_frames=int(v["num_frames"]), context_length=int(t.get("context_length", 32)),
                   vocab_size=int(t.get("vocab_size", 49408)), text_width=int(t["width"]),
                   text_heads=int(t["heads"]), text_layers=int(t["layers"]))


VICLIP_MODELS = {
    "ViCLIP-B-16": ViCLIPConfig(),
    "ViCLIP-L-14": ViCLIPConfig(embed_dim=768, patch_size=14, vision_width=1024, vision_layers=24, vision_heads=16,
                                text_width=768, text_heads=12),
}


class VideoVisionTower(nn.Module):
    def __init__(self, cfg: ViCLIPConfig):
        super().__init__()
        from open_clip.transformer import LayerNorm, QuickGELU, Transformer

        width, grid = cfg.vision_width, cfg.image_size // cfg.patch_size
        scale = width ** -0.5
        self.num_frames = cfg.num_frames
        self.conv1 = nn.Conv3d(3, width, (1, cfg.patch_size, cfg.patch_size), (1, cfg.patch_size, cfg.patch_size),
                               bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        # ViCLIP starts this at zero before training; random models get a small random one so that tests see
        # frame order matter.
        self.temporal_positional_embedding = nn.Parameter(0.02 * torch.randn(1, cfg.num_frames, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, cfg.vision_layers, cfg.vision_heads, act_layer=QuickGELU,
                                       norm_layer=LayerNorm)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, cfg.embed_dim))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Normalised frames [B, T, 3, H, W] -> clip embeddings [B, embed_dim] (not L2-normalised)."""
        b, t = video.shape[:2]
        if t != self.num_frames:
            raise ValueError(f"ViCLIP takes clips of {self.num_frames} frames, got {t}")
        x = self.conv1(video.transpose(1, 2))                        # [B, width, T, gh, gw]
        x = x.flatten(3).permute(0, 2, 3, 1)                         # [B, T, patches, width]
        x = x + self.positional_embedding[1:].to(x.dtype)            # the same spatial position in every frame
        x = x + self.temporal_positional_embedding.to(x.dtype)[:, :, None, :]
        x = x.transpose(1, 2).reshape(b, -1, x.shape[-1])            # [B, patches * T, width]
        cls = (self.class_embedding + self.positional_embedding[0]).to(x.dtype).expand(b, 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1))
        x = self.transformer(x)
        return self.ln_post(x[:, 0]) @ self.proj


class ViCLIP(nn.Module):
    """``vision_encoder`` + ``text_encoder`` + ``temp``: the parameter names of ViCLIP's checkpoints."""

    def __init__(self, cfg: ViCLIPConfig):
        super().__init__()
        from open_clip.transformer import LayerNorm, QuickGELU, TextTransformer

        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        self.vision_encoder = VideoVisionTower(cfg)
        self.text_encoder = TextTransformer(context_length=cfg.context_length, vocab_size=cfg.vocab_size,
                                            width=cfg.text_width, heads=cfg.text_heads, layers=cfg.text_layers,
                                            output_dim=cfg.embed_dim, act_layer=QuickGELU, norm_layer=LayerNorm)
        self.temp = nn.Parameter(torch.tensor(1 / 100.0))

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        return self.vision_encoder(video)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(tokens)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        import open_clip

        return open_clip.tokenize(texts, context_length=self.cfg.context_length)
