"""Exponential moving average of model weights, evaluated instead of the raw weights (ActionFormer)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model  # DDP / DataParallel


class ModelEMA:
    """ema = decay * ema + (1 - decay) * weights after each optimiser step; buffers are copied as they are."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(_unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._params = list(self.module.parameters())
        names = {name for name, _ in self.module.named_parameters()}
        self._buffer_names = [name for name in self.module.state_dict() if name not in names]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        src = _unwrap(model)
        params = list(src.parameters())
        if len(params) != len(self._params):
            raise ValueError(f"EMA of a model with {len(self._params)} parameter tensors updated from one with "
                             f"{len(params)}")
        values = [p.detach() if p.dtype == e.dtype else p.detach().to(e.dtype) for p, e in zip(params, self._params)]
        # One multi-tensor pass instead of a loop over ~200 tensors: the same mul_/add_ arithmetic, bit-identical.
        torch._foreach_mul_(self._params, self.decay)
        torch._foreach_add_(self._params, values, alpha=1.0 - self.decay)
        for name in self._buffer_names:
            self.module.get_buffer(name).copy_(src.get_buffer(name))

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
