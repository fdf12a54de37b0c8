"""Image and video encoders: weight resolution, batched preprocessing, L2-normalised embeddings.

Two kinds behind one interface (``Encoder``):

* per-frame encoders (``FrameEncoder``): any open_clip architecture -- a built-in name (``ViT-B-16``) or a
  custom open_clip config file (``--model my-arch.json``, named by its stem and recorded by its sha256). A
  snippet's row is the mean of its frames' L2-normalised embeddings (``normalise: mean-of-l2``).
* clip encoders (``ClipEncoder``): ViCLIP (``ViCLIP-B-16``, ``ViCLIP-L-14`` or a config file with
  ``"model_type": "viclip"``, see ``features.viclip``), which embeds a snippet's frames together as one clip
  (``normalise: clip-l2``).

Weights come from exactly one of: a pretrained open_clip tag (``--pretrained openai``), a local checkpoint file
(``--checkpoint FILE``, recorded by sha256; open_clip/OpenAI, ViFi-CLIP and ViCLIP layouts, see
``features.weights``), or ``--pretrained none`` (random weights, seeded so that every process builds the same
model, recorded as "random"). Weights that cannot be had are an ``EncoderError``, never a silent random model.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from features.errors import StovtalError
from features.hashing import sha256_file

log = logging.getLogger(__name__)

RANDOM_TAGS = ("none", "random")
RANDOM_SEED = 0
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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
    short_side: int = 0   # "shortest" mode: resize the short side to this before the centre crop (0: crop size)

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
        out = {"resize_mode": self.resize_mode, "interpolation": self.interpolation, "size": list(self.size),
               "mean": list(self.mean), "std": list(self.std), "fill_color": self.fill_color,
               "antialias": True, "impl": "torchvision.v2 uint8 tensors"}
        if self.short_side:   # only when set, so that earlier stores' provenance stays comparable
            out["short_side"] = self.short_side
        return out

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
            x = F.resize(x, self.short_side or th, interpolation=mode, antialias=True)
        else:
            scale = max(th / h, tw / w)
            x = F.resize(x, [max(th, round(h * scale)), max(tw, round(w * scale))], interpolation=mode,
                         antialias=True)
        return F.center_crop(x, [th, tw]).contiguous()


# ViFi-CLIP's evaluation transform (muzairkhattak/ViFi-CLIP datasets/build.py, val_pipeline): short side to
# 256 (bilinear), centre crop 224, ImageNet mean/std -- not OpenAI CLIP's.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VIFICLIP_PREPROCESS = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear",
                       "resize_mode": "shortest"}
VIFICLIP_SHORT_SIDE = 256


class Encoder:
    """A model on one device: uint8 frames in, float32 embeddings with unit L2 norm out, and class-name text.

    ``clip_frames`` says how it embeds a snippet: 0 for per-frame encoders (``encode_images``, one row per
    frame, averaged over the window by the pipeline), N for clip encoders (``encode_clips``, one row per
    N-frame clip). ``normalise`` names that rule in the store's provenance."""

    clip_frames = 0
    normalise = "mean-of-l2"

    def __init__(self, model, model_name: str, pretrained: str, preprocess: Preprocess,
                 device: torch.device, precision: str, extra_provenance: dict | None = None,
                 text_missing: str | None = None):
        self.model = model.eval()
        self.model_name = model_name
        self.pretrained = pretrained
        self.preprocess = preprocess
        self.device = device
        self.precision = precision
        self.dtype = TORCH_DTYPES[precision]
        self.text_missing = text_missing   # why the text tower cannot be used, or None
        self._extra = dict(extra_provenance or {})
        self._mean = torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1)
        self.dim = self._probe_dim()

    def _probe_dim(self) -> int:
        raise NotImplementedError

    def provenance(self) -> dict:
        """The encoder's part of a store's provenance."""
        return {"encoder": self.model_name, "pretrained": self.pretrained,
                "image_size": list(self.preprocess.size), "preprocess": self.preprocess.describe(),
                "precision": self.precision, **self._extra}

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [K, 3, h, w] -> normalised [K, 3, h, w] on the device, in the model's dtype."""
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        return ((x - self._mean) / self._std).to(self.dtype)

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    @torch.inference_mode()
    def encode_texts(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """Strings -> float32 [K, D], each row L2-normalised."""
        if self.text_missing:
            raise EncoderError(self.text_missing)
        rows = []
        for start in range(0, len(texts), batch_size):
            tokens = self._tokenize(texts[start:start + batch_size]).to(self.device)
            rows.append(torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu())
        return torch.cat(rows).numpy()


class FrameEncoder(Encoder):
    """An open_clip model: one embedding per frame."""

    def _probe_dim(self) -> int:
        with torch.inference_mode():
            probe = torch.zeros(1, 3, *self.preprocess.size, dtype=torch.uint8)
            return int(self._image_features(probe).shape[1])

    def _image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(self._pixels(images)).float()

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> np.ndarray:
        """uint8 [K, 3, h, w] from ``self.preprocess`` -> float32 [K, D], each row L2-normalised."""
        feats = torch.nn.functional.normalize(self._image_features(images), dim=-1)
        return feats.cpu().numpy()

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        import open_clip

        try:
            tokenizer = open_clip.get_tokenizer(self.model_name)
        except Exception as exc:
            raise EncoderError(f"cannot load the tokenizer of {self.model_name}: {_first_line(exc)}") from None
        return tokenizer(texts)


class ClipEncoder(Encoder):
    """A video model (ViCLIP): one embedding per clip of ``clip_frames`` frames."""

    normalise = "clip-l2"

    def __init__(self, model, *args, **kwargs):
        self.clip_frames = int(model.cfg.num_frames)
        super().__init__(model, *args, **kwargs)

    def _probe_dim(self) -> int:
        return int(self.model.embed_dim)

    @torch.inference_mode()
    def encode_clips(self, clips: torch.Tensor) -> np.ndarray:
        """uint8 [B, clip_frames, 3, h, w] from ``self.preprocess`` -> float32 [B, D], each row L2-normalised."""
        b, f = clips.shape[:2]
        if f != self.clip_frames:
            raise ValueError(f"{self.model_name} embeds clips of {self.clip_frames} frames, got {f}")
        x = self._pixels(clips.reshape(b * f, *clips.shape[2:])).reshape(b, f, *clips.shape[2:])
        feats = torch.nn.functional.normalize(self.model.encode_video(x).float(), dim=-1)
        return feats.cpu().numpy()

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.model.tokenize(texts)


def _read_config(path: Path) -> dict:
    """``--model FILE.json``: a custom architecture (open_clip's config layout, or ViCLIP's with "model_type")."""
    import json

    if not path.is_file():
        raise EncoderError(f"--model {path}: architecture config file not found")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EncoderError(f"--model {path}: not a JSON file ({_first_line(exc)})") from None
    if not (isinstance(cfg, dict) and all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg"))):
        raise EncoderError(f"--model {path}: not an open_clip or ViCLIP config (needs embed_dim, vision_cfg, text_cfg)")
    return cfg


def _custom_name(open_clip, path: Path) -> tuple[str, str]:
    """A custom architecture is named by its file stem and recorded by the file's sha256."""
    from features.viclip import VICLIP_MODELS

    if path.stem in _builtin_models(open_clip) or path.stem in VICLIP_MODELS:
        raise EncoderError(f"--model {path}: name {path.stem!r} clashes with a built-in model; rename it")
    return path.stem, sha256_file(path)


_BUILTIN: list[str] = []


def _builtin_models(open_clip) -> list[str]:
    if not _BUILTIN:
        _BUILTIN.extend(m for m in open_clip.list_models())
    return _BUILTIN


def _seeded(seed: int, build):
    """Every process (shards, resumed runs, `tal-extract text`) must build the very same random model;
    fork_rng leaves the caller's global RNG state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


@contextlib.contextmanager
def _weights_follow():
    """open_clip warns "Model initialized randomly" whenever it builds a model without a tag -- also just
    before a checkpoint is loaded into it, where the warning would be false."""
    def keep(record):
        return "initialized randomly" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _warn_random(model_name: str, seed: int) -> None:
    log.warning("RANDOM WEIGHTS: --pretrained none builds %s with random weights (seed %d); its features "
                "carry no meaning beyond tests and benchmarks", model_name, seed)


def _weights_call(function, *args):
    """A features.weights function, its WeightsError reported as an EncoderError (same one-line message)."""
    from features.weights import WeightsError

    try:
        return function(*args)
    except WeightsError as exc:
        raise EncoderError(str(exc)) from None


def _from_checkpoint(model, model_name: str, family: str, state, fmt: str, checkpoint, text_checkpoint):
    """Load a file's weights into ``model``; (pretrained label, provenance, why text is unusable or None)."""
    import open_clip

    from features.weights import LoadReport, load_weights

    path = Path(checkpoint)
    if fmt == "big_vision":
        if text_checkpoint is not None:
            raise EncoderError(f"--text-checkpoint {text_checkpoint}: not needed beside a big_vision .npz")
        try:
            open_clip.load_checkpoint(model, str(path))
        except Exception as exc:
            raise EncoderError(f"--checkpoint {path}: cannot load it into {model_name}: {_first_line(exc)}") from None
        report = LoadReport(fmt, {"image": path.name, "text": path.name}, [])
    else:
        report = _weights_call(load_weights, model, model_name, family, state, fmt, text_checkpoint)
    extra = {"checkpoint_file": path.name, "weights_format": report.format, "towers": report.towers}
    if text_checkpoint is not None:
        extra["text_checkpoint_file"] = Path(text_checkpoint).name
        extra["text_checkpoint_sha256"] = "sha256:" + sha256_file(text_checkpoint)
    text_missing = None
    if report.text_missing:
        more = len(report.text_missing) - 1
        text_missing = (f"--checkpoint {path}: the {report.format} file has no {report.text_missing[0]}"
                        + (f" (and {more} more text-tower tensors)" if more else "")
                        + ", so it cannot embed class names; pass --text-checkpoint FILE with the CLIP weights "
                          "it was fine-tuned from (for ViFi-CLIP: OpenAI's ViT-B-16)")
    return "sha256:" + sha256_file(path), extra, text_missing


def load_encoder(model_name: str = "ViT-B-16", pretrained: str | None = None, checkpoint=None,
                 device: str = "auto", precision: str = "auto", seed: int = RANDOM_SEED,
                 weights_format: str = "auto", text_checkpoint=None) -> Encoder:
    """Build the encoder; raise EncoderError (one line naming the option at fault) when weights cannot be had.

    ``pretrained=None`` means open_clip's ``openai`` weights for open_clip models (and, beside a checkpoint,
    OpenAI's preprocessing); ViCLIP has no pretrained tags and takes weights only from ``checkpoint``."""
    import open_clip

    from features.viclip import VICLIP_MODELS, ViCLIPConfig
    from features.weights import FORMATS

    if weights_format not in FORMATS:
        raise EncoderError(f"--weights-format {weights_format!r}: unknown (one of {', '.join(FORMATS)})")
    if text_checkpoint is not None and checkpoint is None:
        raise EncoderError("--text-checkpoint completes the text tower of a --checkpoint file; give --checkpoint too")
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    set_deterministic(dev)
    _builtin_models(open_clip)
    extra: dict = {}
    name = str(model_name)
    args = (pretrained, checkpoint, dev, prec, seed, weights_format, text_checkpoint)
    if name.endswith(".json"):
        path = Path(name)
        cfg = _read_config(path)
        name, extra["model_config_sha256"] = _custom_name(open_clip, path)
        if cfg.get("model_type") == "viclip":
            try:
                viclip_cfg = ViCLIPConfig.from_json(cfg)
            except (KeyError, TypeError, ValueError) as exc:
                raise EncoderError(f"--model {path}: not a complete ViCLIP config ({_first_line(exc)})") from None
            return _load_viclip(name, viclip_cfg, extra, *args)
        open_clip.add_model_config(path)
    elif name in VICLIP_MODELS:
        return _load_viclip(name, VICLIP_MODELS[name], extra, *args)
    return _load_open_clip(open_clip, name, extra, *args)


def _load_open_clip(open_clip, model_name, extra, pretrained, checkpoint, dev, prec, seed, weights_format,
                    text_checkpoint) -> FrameEncoder:
    from features.weights import detect_format, read_state_dict

    if model_name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if model_name.lower().split("-")[0] in m.lower()][:8]
        raise EncoderError(f"unknown open_clip architecture {model_name!r}"
                           + (f" (similar: {', '.join(close)})" if close else "; see open_clip.list_models()")
                           + "; clip encoders: ViCLIP-B-16, ViCLIP-L-14")
    tag = (pretrained or "openai").strip()
    known_tags = open_clip.list_pretrained_tags_by_model(model_name)
    text_missing = None
    short_side = 0

    if checkpoint is not None:
        if Path(checkpoint).suffix in (".npz", ".npy"):   # big_vision (SigLIP) weights: open_clip maps them
            state, fmt = None, "big_vision"
        else:
            state = _weights_call(read_state_dict, checkpoint, "--checkpoint")
            fmt = detect_format(state.tensors) if weights_format == "auto" else weights_format
        if fmt == "vificlip":
            if pretrained is not None and pretrained in known_tags:
                raise EncoderError(f"--pretrained {pretrained}: a ViFi-CLIP checkpoint brings its own preprocessing "
                                   f"and OpenAI CLIP's QuickGELU; leave --pretrained out")
            force, quick_gelu = dict(VIFICLIP_PREPROCESS), True
        else:
            # A known tag alongside the checkpoint supplies the matching preprocessing and activation.
            tag_cfg = open_clip.get_pretrained_cfg(model_name, tag) if tag in known_tags else {}
            force = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
            quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        try:
            with _weights_follow():
                model = open_clip.create_model(model_name, pretrained=None, pretrained_text=False,
                                               pretrained_image=False, precision=prec, device="cpu",
                                               force_preprocess_cfg=force or None, force_quick_gelu=quick_gelu)
        except Exception as exc:
            raise EncoderError(f"--checkpoint {checkpoint}: cannot build {model_name}: {_first_line(exc)}") from None
        label, more, text_missing = _from_checkpoint(model, model_name, "open_clip", state, fmt, checkpoint,
                                                     text_checkpoint)
        extra.update(more)
        model.to(dev)
        if fmt == "vificlip":
            short_side = round(VIFICLIP_SHORT_SIDE * model.visual.image_size[0] / 224)
    elif tag.lower() in RANDOM_TAGS:
        _warn_random(model_name, seed)
        quick_gelu = False
        model = _seeded(seed, lambda: open_clip.create_model(
            model_name, pretrained=None, pretrained_text=False, pretrained_image=False, precision=prec,
            device="cpu")).to(dev)
        label = "random"
        extra["init_seed"] = seed
    elif tag in known_tags:
        # OpenAI's weights were trained with QuickGELU; open_clip only warns when the built model lacks it.
        quick_gelu = bool(open_clip.get_pretrained_cfg(model_name, tag).get("quick_gelu", False))
        try:
            model = open_clip.create_model(model_name, pretrained=tag, precision=prec, device=dev,
                                           force_quick_gelu=quick_gelu)
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
    if quick_gelu:
        extra["quick_gelu"] = True
    preprocess = Preprocess.from_open_clip(open_clip.get_model_preprocess_cfg(model))
    if short_side:
        preprocess = replace(preprocess, short_side=short_side)
    return FrameEncoder(model, model_name, label, preprocess, dev, prec, extra, text_missing)


def _load_viclip(model_name, cfg, extra, pretrained, checkpoint, dev, prec, seed, weights_format,
                 text_checkpoint) -> ClipEncoder:
    from features.viclip import ViCLIP
    from features.weights import detect_format, read_state_dict

    if pretrained is not None and pretrained.lower() not in RANDOM_TAGS:
        raise EncoderError(f"--pretrained {pretrained}: {model_name} has no pretrained tags; its weights come from "
                           f"--checkpoint FILE (a ViCLIP .pth of the InternVid release), or --pretrained none")
    text_missing = None
    if checkpoint is not None:
        state = _weights_call(read_state_dict, checkpoint, "--checkpoint")
        fmt = detect_format(state.tensors) if weights_format == "auto" else weights_format
        model = _seeded(seed, lambda: ViCLIP(cfg))
        label, more, text_missing = _from_checkpoint(model, model_name, "viclip", state, fmt, checkpoint,
                                                     text_checkpoint)
        extra.update(more)
    elif pretrained is not None:
        _warn_random(model_name, seed)
        model = _seeded(seed, lambda: ViCLIP(cfg))
        label = "random"
        extra["init_seed"] = seed
    else:
        raise EncoderError(f"{model_name}: its weights come from a file; pass --checkpoint FILE "
                           f"(a ViCLIP .pth of the InternVid release), or --pretrained none for random weights")
    model = model.to(device=dev, dtype=TORCH_DTYPES[prec])
    extra["clip_frames"] = cfg.num_frames
    preprocess = Preprocess(size=(cfg.image_size, cfg.image_size), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                            interpolation="bicubic", resize_mode="squash")
    return ClipEncoder(model, model_name, label, preprocess, dev, prec, extra, text_missing)
