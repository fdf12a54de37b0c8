"""ActionFormer-style temporal action localizer in pure PyTorch (no store access, no compiled extensions)."""

from .actionformer import ActionFormer, build_model
from .config import ModelConfig
from .ema import ModelEMA
from .optim import param_groups

__all__ = ["ActionFormer", "ModelConfig", "ModelEMA", "build_model", "param_groups"]
