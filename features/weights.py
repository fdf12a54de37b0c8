"""Weight files: read them safely, recognise their layout, map it onto our models, refuse anything partial.

Layouts (``--weights-format``; ``auto`` recognises them from the key names):

* ``open_clip`` -- open_clip's own state dict (``visual.*``, ``transformer.*``, ``token_embedding.weight``, ...).
  OpenAI CLIP's files share it (the TorchScript ``ViT-B-16.pt`` archives included), as does anything saved
  from an open_clip model.
* ``vificlip`` -- a ViFi-CLIP training checkpoint (muzairkhattak/ViFi-CLIP, ``utils/tools.py`` ``epoch_saving``):
  ``{"model": state_dict, "optimizer": ..., "config": ..., ...}``, the keys usually behind DDP's ``module.``.
  ``image_encoder.*`` is OpenAI CLIP's ``visual`` module, ``text_encoder.*`` its text transformer, positional
  embedding, final LayerNorm and projection (``trainers/vificlip.py`` ``TextEncoder``), ``logit_scale`` the
  temperature. The token embedding is *not* in the file: ViFi-CLIP embeds the class prompts once, before
  training, into the buffers ``prompt_learner.complete_text_embeddings`` (or ``token_prefix``/``token_suffix``),
  which hold only the training classes' prompts and are dropped here as ViFi-CLIP's own loader drops them.
  Prompt-learning variants (``prompt_learner.ctx``, ``*.VPT*``) add prompt tokens that a plain CLIP has no
  place for and are refused.
* ``viclip`` -- an InternVid ViCLIP checkpoint (OpenGVLab/InternVideo, ``Data/InternVid/viclip``):
  ``{"model": state_dict}`` with ``vision_encoder.*``, ``text_encoder.*`` and ``temp``, the names
  ``features.viclip.ViCLIP`` uses.

Every tensor of the image tower must come from the checkpoint with exactly the model's shape, and nothing
in the file may be left unused (bar the derived buffers above): a missing, reshaped or unknown tensor
stops the load with its key named. The text tower may be incomplete (ViFi-CLIP lacks its token
embedding); its missing tensors can come from a second file (``--text-checkpoint``), and an encoder whose
text tower is still incomplete refuses to embed text rather than use random weights.
"""

from __future__ import annotations

import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

FORMATS = ("auto", "open_clip", "vificlip", "viclip")
# ViFi-CLIP buffers computed from the training classes' prompts; its own loader deletes them too.
VIFICLIP_DERIVED = ("prompt_learner.complete_text_embeddings", "prompt_learner.token_prefix",
                    "prompt_learner.token_suffix")
# Entries of OpenAI's TorchScript state dicts that are architecture numbers, not weights.
OPENAI_SCALARS = ("input_resolution", "context_length", "vocab_size")
# The contrastive temperature (and SigLIP's bias) never touch an embedding: optional in every file.
SCALE_KEYS = ("logit_scale", "logit_bias", "temp")


class WeightsError(ValueError):
    """A weights file that cannot be loaded as asked; one line naming the file and key (features.encoders turns it
    into an EncoderError, so this module stays below the encoders)."""


def tower_of(key: str) -> str:
    """'image', 'text' or 'scale' for a model parameter name (open_clip CLIP or ViCLIP)."""
    if key.startswith(("visual.", "vision_encoder.")):
        return "image"
    return "scale" if key in SCALE_KEYS else "text"


# ---- reading --------------------------------------------------------------------------------------

class _Inert(dict):
    """Stands in for any non-tensor object pickled beside the weights (a yacs config, argparse.Namespace,
    numpy scalars...). It absorbs whatever the unpickler hands it and runs no code, so such files load
    under ``weights_only=True`` without trusting the classes they name."""

    def __new__(cls, *args, **kwargs):
        return dict.__new__(cls)

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __setstate__(self, state):
        self["__state__"] = state


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first:  # usually pickle.UnpicklingError: "Unsupported global ..."
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:
            names = []
        if not names:
            raise first from None
        with torch.serialization.safe_globals([(_Inert, name) for name in names]):
            return torch.load(path, map_location="cpu", weights_only=True)


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(name.endswith("/constants.pkl") for name in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _tensor_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


@dataclass
class StateDict:
    """Tensors read from one file, keys without a DDP ``module.`` prefix (``prefix`` keeps it for messages)."""

    path: Path
    option: str                       # the command-line option that named the file, for messages
    tensors: dict[str, torch.Tensor]
    prefix: str = ""

    def where(self, key: str) -> str:
        return f"{self.option} {self.path}: {self.prefix}{key}"


def read_state_dict(path, option: str = "--checkpoint") -> StateDict:
    """The state dict in a weights file: a torch pickle (loaded without running pickled code), a TorchScript
    archive or a .safetensors file, unwrapped from ``{"state_dict": ...}`` / ``{"model": ...}`` containers."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{option} {path}: file not found")
    with open(path, "rb") as f:
        head = f.read(8)
    # torch.save writes a zip (b"PK"), older torch a protocol-2 pickle (0x80); TorchScript is a zip too.
    if path.suffix != ".safetensors" and not head.startswith((b"PK", b"\x80")):
        raise WeightsError(f"{option} {path}: not a PyTorch, TorchScript or .safetensors weights file "
                           f"(it starts with {head!r})")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            obj = load_file(str(path), device="cpu")
        elif _is_torchscript(path):   # OpenAI's own CLIP files
            with warnings.catch_warnings():   # torch >= 2.10 calls torch.jit deprecated; it still reads them
                warnings.simplefilter("ignore", FutureWarning)
                obj = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            obj = _torch_load(path)
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{option} {path}: not a readable weights file ({text[:200]})") from None
    for container in ("state_dict", "model", "module"):
        if not _tensor_dict(obj) and isinstance(obj, dict) and _tensor_dict(obj.get(container)):
            obj = obj[container]
    if not _tensor_dict(obj):
        keys = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, dict) else type(obj).__name__
        raise WeightsError(f"{option} {path}: holds no state dict of tensors (found: {keys})")
    prefix = "module." if all(k.startswith("module.") for k in obj) else ""
    return StateDict(path, option, {k[len(prefix):]: v for k, v in obj.items()}, prefix)


# ---- layouts --------------------------------------------------------------------------------------

def detect_format(keys) -> str:
    keys = list(keys)
    if any(k.startswith("vision_encoder.") for k in keys):
        return "viclip"
    # MobileCLIP (which open_clip converts itself) also says image_encoder., but always image_encoder.model.
    if any(k.startswith(("image_encoder.", "text_encoder.", "prompt_learner.")) for k in keys) and \
            not any(k.startswith("image_encoder.model.") for k in keys):
        return "vificlip"
    return "open_clip"


def _vificlip_to_model(key: str) -> str | None:
    if key.startswith("image_encoder."):
        return "visual." + key[len("image_encoder."):]
    if key.startswith("text_encoder."):
        return key[len("text_encoder."):]
    if key in VIFICLIP_DERIVED:
        return None
    return key   # logit_scale; anything else is reported as having no place in the model


def _model_to_vificlip(key: str) -> str:
    if key.startswith("visual."):
        return "image_encoder." + key[len("visual."):]
    if key in SCALE_KEYS or key == "token_embedding.weight":
        return key
    return "text_encoder." + key


def _open_clip_names(model, tensors: dict) -> dict:
    """open_clip's own key fix-ups (third-party layouts it converts, its old text layout, a 0-d vs 1-d
    logit_scale), so that any file open_clip itself loads is read the same way here."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict

    tensors = {k: v for k, v in tensors.items() if k not in OPENAI_SCALARS}
    tensors = convert_state_dict(model, tensors)
    if "positional_embedding" in tensors and not hasattr(model, "positional_embedding"):
        tensors = convert_to_custom_text_state_dict(tensors)
    scale = getattr(model, "logit_scale", None)
    if "logit_scale" in tensors and isinstance(scale, torch.Tensor) and tensors["logit_scale"].ndim != scale.ndim:
        tensors["logit_scale"] = tensors["logit_scale"].reshape(scale.shape)
    return tensors


@dataclass
class Mapped:
    """A file's tensors under the model's parameter names, with the file's own name for each (for messages)."""

    source: StateDict
    format: str
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    file_key: dict[str, str] = field(default_factory=dict)

    def file_name_of(self, model_key: str) -> str:
        """The key this layout would have used for a model parameter (to name what is missing)."""
        if model_key in self.file_key:
            return self.file_key[model_key]
        return _model_to_vificlip(model_key) if self.format == "vificlip" else model_key


def map_to_model(sd: StateDict, fmt: str, model, family: str, model_name: str) -> Mapped:
    """Rename a file's tensors to the model's parameter names; refuse a layout that belongs to another model."""
    fmt = detect_format(sd.tensors) if fmt == "auto" else fmt
    if fmt not in FORMATS[1:]:
        raise WeightsError(f"--weights-format {fmt!r}: unknown (one of {', '.join(FORMATS)})")
    wanted = ("viclip",) if family == "viclip" else ("open_clip", "vificlip")
    if fmt not in wanted:
        hint = ("use --model ViCLIP-B-16 (or ViCLIP-L-14)" if fmt == "viclip"
                else f"{model_name} reads {' or '.join(wanted)} files")
        raise WeightsError(f"{sd.option} {sd.path}: a {fmt} checkpoint cannot be loaded into {model_name}; {hint}")
    out = Mapped(sd, fmt)
    # Copies of buffers the model computes itself (a TorchScript archive saves open_clip's causal attn_mask).
    derived = {name for name, _ in model.named_buffers()} - set(model.state_dict())
    if fmt == "vificlip":
        for key, value in sd.tensors.items():
            name = _vificlip_to_model(key)
            if name is not None:
                out.tensors[name], out.file_key[name] = value, key
    else:
        tensors = _open_clip_names(model, sd.tensors) if fmt == "open_clip" else dict(sd.tensors)
        out.tensors = tensors
        out.file_key = {k: k for k in tensors}
    for name in derived & set(out.tensors):
        del out.tensors[name], out.file_key[name]
    return out


# ---- loading --------------------------------------------------------------------------------------

def _shape(t) -> list[int]:
    return [int(s) for s in t.shape]


def _check_fits(mapped: Mapped, expected: dict, model_name: str, keys=None) -> None:
    """Every tensor (or those in ``keys``) has a place in the model, with the model's exact shape."""
    for name in (mapped.tensors if keys is None else keys):
        where = mapped.source.where(mapped.file_key[name])
        if name not in expected:
            raise WeightsError(f"{where}: this tensor has no place in {model_name} (another architecture, or a "
                               f"prompt-learning variant?); nothing was loaded")
        if _shape(mapped.tensors[name]) != _shape(expected[name]):
            raise WeightsError(f"{where}: shape {_shape(mapped.tensors[name])} but {model_name} needs "
                               f"{_shape(expected[name])} ({name}); nothing was loaded")


@dataclass
class LoadReport:
    format: str
    towers: dict[str, str]            # tower -> which file(s) it came from, in words
    text_missing: list[str]           # text-tower tensors no file provided, as the checkpoint's layout names them


def load_weights(model, model_name: str, family: str, state: StateDict, weights_format: str = "auto",
                 text_checkpoint=None) -> LoadReport:
    """Load ``state`` (and text-tower gaps from ``text_checkpoint``) into ``model``, all or nothing."""
    expected = model.state_dict()
    primary = map_to_model(state, weights_format, model, family, model_name)
    _check_fits(primary, expected, model_name)
    image = [k for k in expected if tower_of(k) == "image"]
    missing_image = [k for k in image if k not in primary.tensors]
    if missing_image:
        first = missing_image[0]
        raise WeightsError(
            f"{primary.source.where(primary.file_name_of(first))}: missing ({primary.format} layout; {model_name} "
            f"needs it for {first}; {len(missing_image)} of {len(image)} image-tower tensors missing); "
            f"nothing was loaded")
    merged = dict(primary.tensors)
    text_keys = [k for k in expected if tower_of(k) == "text"]
    text_missing = [k for k in text_keys if k not in merged]
    name = state.path.name
    if text_checkpoint is not None:
        if not text_missing:
            raise WeightsError(f"--text-checkpoint {text_checkpoint}: not needed, --checkpoint {state.path} holds "
                               f"the whole text tower; leave it out")
        second = map_to_model(read_state_dict(text_checkpoint, "--text-checkpoint"), "auto", model, family,
                              model_name)
        still = [k for k in text_missing if k not in second.tensors]
        if still:
            raise WeightsError(f"--text-checkpoint {second.source.path}: has no {second.file_name_of(still[0])} "
                               f"({len(still)} text-tower tensors still missing); nothing was loaded")
        _check_fits(second, expected, model_name, keys=text_missing)
        merged.update({k: second.tensors[k] for k in text_missing})
        other = Path(text_checkpoint).name
        text = other if len(text_missing) == len(text_keys) else f"{name} + {', '.join(text_missing)} from {other}"
        text_missing = []
    elif text_missing:
        text = "incomplete (no " + ", ".join(primary.file_name_of(k) for k in text_missing[:2]) + \
               (f" and {len(text_missing) - 2} more" if len(text_missing) > 2 else "") + ")"
    else:
        text = name
    result = model.load_state_dict(merged, strict=False)
    if result.unexpected_keys:   # _check_fits makes this impossible; kept as a guard against a silent load
        raise WeightsError(f"--checkpoint {state.path}: unexpected {result.unexpected_keys[0]}")
    return LoadReport(primary.format, {"image": name, "text": text},
                      [primary.file_name_of(k) for k in text_missing])
