"""open_clip image/text encoders: weight resolution, batched preprocessing, L2-normalised embeddings.

The architecture is any built-in open_clip name (``ViT-B-16``) or a custom open_clip config file
(``--model my-arch.json``, named by its stem and recorded by its sha256).

Weights come from exactly one of: a pretrained tag (``--pretrained openai``), a local checkpoint file
(``--checkpoint FILE``, recorded by sha256), or ``--pretrained none`` (random weights, seeded so that
every process builds the same model, recorded as "random"). Weights that cannot be had are an
``EncoderError``, never a silent random model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from features.errors import StovtalError
from features.hashing import sha256_file

log = logging.getLogger(__name__)

RANDOM_TAGS = ("none", "random")
RANDOM_SEED = 0


class EncoderError(StovtalError):
    """The encoder cannot be built as asked; a one-line message that says what to do."""


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise EncoderError(f"unknown device {device!r}: {_first_line(exc)}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EncoderError(f"device {device!r} asked for but CUDA is not available")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in ("fp32", "fp16", "bf16"):
        raise EncoderError(f"unknown precision {precision!r} (auto, fp32, fp16, bf16)")
    if precision == "fp16" and device.type == "cpu":
        raise EncoderError("fp16 needs a CUDA device; use --precision fp32 or bf16 on CPU")
    return precision


def set_deterministic(device: torch.device) -> None:
    """Same frames in, same bits out on CUDA: no autotuned kernels, deterministic cuBLAS workspaces.

    CPU inference kernels are already run-to-run deterministic for a fixed batch shape and thread
    count, so nothing global is changed there (callers in the same process keep their settings)."""
    if device.type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass(frozen=True)
class Preprocess:
    """open_clip's inference transform, re-done on uint8 tensor batches (no PIL round trip per frame)."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0

    @classmethod
    def from_open_clip(cls, cfg: dict) -> "Preprocess":
        size = cfg["size"]
        size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        mean = tuple(float(v) for v in (cfg["mean"] if isinstance(cfg["mean"], (list, tuple)) else [cfg["mean"]] * 3))
        std = tuple(float(v) for v in (cfg["std"] if isinstance(cfg["std"], (list, tuple)) else [cfg["std"]] * 3))
        interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
        return cls(size, mean, std, interpolation, cfg.get("resize_mode", "shortest") or "shortest",
                   int(cfg.get("fill_color", 0) or 0))

    def describe(self) -> dict:
        return {"resize_mode": self.resize_mode, "interpolation": self.interpolation, "size": list(self.size),
                "mean": list(self.mean), "std": list(self.std), "fill_color": self.fill_color,
                "antialias": True, "impl": "torchvision.v2 uint8 tensors"}

    def __call__(self, frames: np.ndarray) -> torch.Tensor:
        """RGB uint8 [K, H, W, 3] -> resized/cropped uint8 [K, 3, h, w] (normalisation happens on the device)."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        mode = InterpolationMode.BILINEAR if self.interpolation == "bilinear" else InterpolationMode.BICUBIC
        th, tw = self.size
        h, w = x.shape[-2:]
        if self.resize_mode == "squash":
            return F.resize(x, [th, tw], interpolation=mode, antialias=True).contiguous()
        if self.resize_mode == "longest":
            scale = min(th / h, tw / w)
            x = F.resize(x, [max(1, round(h * scale)), max(1, round(w * scale))], interpolation=mode, antialias=True)
            ph, pw = th - x.shape[-2], tw - x.shape[-1]
            if ph > 0 or pw > 0:
                x = F.pad(x, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=self.fill_color)
            return F.center_crop(x, [th, tw]).contiguous()
        if th == tw:  # torchvision's shortest-edge resize, as open_clip's own transform does
            x = F.resize(x, th, interpolation=mode, antialias=True)
        else:
            scale = max(th / h, tw / w)
            x = F.resize(x, [max(th, round(h * scale)), max(tw, round(w * scale))], interpolation=mode,
                         antialias=True)
        return F.center_crop(x, [th, tw]).contiguous()


class Encoder:
    """An open_clip model on one device; embeddings come back as float32 rows with unit L2 norm."""

    def __init__(self, model, model_name: str, pretrained: str, preprocess: Preprocess,
                 device: torch.device, precision: str, extra_provenance: dict | None = None):
        self.model = model.eval()
        self.model_name = model_name
        self.pretrained = pretrained
        self.preprocess = preprocess
        self.device = device
        self.precision = precision
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self._extra = dict(extra_provenance or {})
        self._mean = torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1)
        with torch.inference_mode():
            probe = torch.zeros(1, 3, *preprocess.size, dtype=torch.uint8)
            self.dim = int(self._image_features(probe).shape[1])

    def provenance(self) -> dict:
        """The encoder's part of a store's provenance."""
        return {"encoder": self.model_name, "pretrained": self.pretrained,
                "image_size": list(self.preprocess.size), "preprocess": self.preprocess.describe(),
                "precision": self.precision, **self._extra}

    def _image_features(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        x = ((x - self._mean) / self._std).to(self.dtype)
        return self.model.encode_image(x).float()

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> np.ndarray:
        """uint8 [K, 3, h, w] from ``self.preprocess`` -> float32 [K, D], each row L2-normalised."""
        feats = torch.nn.functional.normalize(self._image_features(images), dim=-1)
        return feats.cpu().numpy()

    @torch.inference_mode()
    def encode_texts(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """Strings -> float32 [K, D], each row L2-normalised."""
        import open_clip

        try:
            tokenizer = open_clip.get_tokenizer(self.model_name)
        except Exception as exc:
            raise EncoderError(f"cannot load the tokenizer of {self.model_name}: {_first_line(exc)}") from None
        rows = []
        for start in range(0, len(texts), batch_size):
            tokens = tokenizer(texts[start:start + batch_size]).to(self.device)
            rows.append(torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
        return torch.cat(rows).numpy()


def _register_config(open_clip, path: Path) -> tuple[str, str]:
    """``--model FILE.json``: a custom open_clip architecture, named by the file stem, recorded by sha256."""
    import json

    if not path.is_file():
        raise EncoderError(f"--model {path}: architecture config file not found")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EncoderError(f"--model {path}: not a JSON file ({_first_line(exc)})") from None
    if not (isinstance(cfg, dict) and all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg"))):
        raise EncoderError(f"--model {path}: not an open_clip config (needs embed_dim, vision_cfg, text_cfg)")
    if path.stem in _builtin_models(open_clip):
        raise EncoderError(f"--model {path}: name {path.stem!r} clashes with a built-in open_clip model; rename it")
    open_clip.add_model_config(path)
    return path.stem, sha256_file(path)


_BUILTIN: list[str] = []


def _builtin_models(open_clip) -> list[str]:
    if not _BUILTIN:
        _BUILTIN.extend(m for m in open_clip.list_models())
    return _BUILTIN


def _random_model(open_clip, model_name: str, device, precision: str, seed: int):
    log.warning("RANDOM WEIGHTS: --pretrained none builds %s with random weights (seed %d); its features "
                "carry no meaning beyond tests and benchmarks", model_name, seed)
    # Every process (shards, resumed runs, `tal-extract text`) must build the very same random model;
    # fork_rng leaves the caller's global RNG state as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.create_model(model_name, pretrained=None, pretrained_text=False,
                                      pretrained_image=False, precision=precision, device="cpu").to(device)


def load_encoder(model_name: str = "ViT-B-16", pretrained: str | None = "openai", checkpoint=None,
                 device: str = "auto", precision: str = "auto", seed: int = RANDOM_SEED) -> Encoder:
    """Build the encoder; raise EncoderError (one line naming --checkpoint) when weights cannot be had."""
    import open_clip

    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    set_deterministic(dev)
    extra: dict = {}
    _builtin_models(open_clip)
    if str(model_name).endswith(".json"):
        model_name, extra["model_config_sha256"] = _register_config(open_clip, Path(model_name))
    if model_name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if model_name.lower().split("-")[0] in m.lower()][:8]
        raise EncoderError(f"unknown open_clip architecture {model_name!r}"
                           + (f" (similar: {', '.join(close)})" if close else "; see open_clip.list_models()"))
    tag = (pretrained or "none").strip()
    known_tags = open_clip.list_pretrained_tags_by_model(model_name)

    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise EncoderError(f"--checkpoint {path}: file not found")
        digest = sha256_file(path)
        # A known tag alongside the checkpoint supplies the matching preprocessing (mean/std/resize).
        tag_cfg = open_clip.get_pretrained_cfg(model_name, tag) if tag in known_tags else {}
        force = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
        try:
            model = open_clip.create_model(model_name, pretrained=None, pretrained_text=False,
                                           pretrained_image=False, precision=prec, device=dev,
                                           force_preprocess_cfg=force or None)
            open_clip.load_checkpoint(model, str(path), device="cpu")
        except Exception as exc:
            raise EncoderError(f"--checkpoint {path}: cannot load it into {model_name}: {_first_line(exc)}") from None
        model.to(dev)
        label = f"sha256:{digest}"
        extra["checkpoint_file"] = path.name
    elif tag.lower() in RANDOM_TAGS:
        model = _random_model(open_clip, model_name, dev, prec, seed)
        label = "random"
        extra["init_seed"] = seed
    elif tag in known_tags:
        try:
            model = open_clip.create_model(model_name, pretrained=tag, precision=prec, device=dev)
        except Exception as exc:
            raise EncoderError(
                f"cannot get pretrained weights {model_name}/{tag} ({_first_line(exc)[:160]}); "
                f"if this machine is offline, copy the weights here and pass --checkpoint FILE") from None
        label = tag
    else:
        known = "known: " + ", ".join(known_tags) if known_tags else "it has no pretrained tags"
        raise EncoderError(
            f"unknown pretrained tag {tag!r} for {model_name} ({known}); "
            f"pass --checkpoint FILE for local weights or --pretrained none for random weights")

    preprocess = Preprocess.from_open_clip(open_clip.get_model_preprocess_cfg(model))
    return Encoder(model, model_name, label, preprocess, dev, prec, extra)
