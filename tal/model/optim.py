"""AdamW parameter groups: no weight decay on biases, normalisation weights and learned scales."""

from __future__ import annotations

from torch import nn

from .blocks import LayerScaleDropPath, Scale

_NO_DECAY_MODULES = (nn.LayerNorm, nn.GroupNorm, Scale, LayerScaleDropPath)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: conv/linear weights decay; biases, norms and (layer-)scales do not (ActionFormer)."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if isinstance(module, _NO_DECAY_MODULES) or name.endswith("bias"):
                no_decay.append(p)
            else:
                decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
