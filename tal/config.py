"""Run configuration: a YAML preset (`small`, `thumos`, `anet` or a file) plus `--set key=value` overrides.

A config has three sections: ``model`` (tal.model.ModelConfig fields), ``data`` (cropping, resizing, mixing of
pseudo-labels, loader) and ``train`` (optimiser, schedule, EMA, evaluation). The effective config is written as
``config.yaml`` in every run directory and stored in every checkpoint, as plain Python types.
"""

from __future__ import annotations

import copy
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path

import yaml

from features.errors import StovtalError
from tal.model.config import ModelConfig

PRESETS = ("small", "thumos", "anet")
MODES = ("closed", "agnostic")
PSEUDO_WEIGHTS = ("score", "1", "soft")
BATCHING = ("length", "max")
AMP_DTYPES = ("float16", "bfloat16")


class ConfigError(StovtalError, ValueError):
    """A one-line message naming the preset/file and the key at fault."""


@dataclass
class DataConfig:
    mode: str = "agnostic"  # closed: K classes from the labels; agnostic: every label is class 0 ("action")
    resize_len: int | None = None  # ActivityNet style: interpolate every video to this many rows
    trunc_thresh: float = 0.5  # a crop keeps an action if at least this fraction of it stays inside
    crop_ratio: list | None = None  # [lo, hi]: random crop of lo..hi of the video before the length crop
    expected_grid: dict | None = None  # e.g. {window: 16, stride: 4}: warn when a store's grid differs
    num_workers: int = 2
    skip_missing: bool = False  # annotated videos absent from every store: skip (True) or error (False)
    pseudo_ratio: float | None = None  # fraction of pseudo-labelled clips per epoch; None = natural proportion
    # pseudo-labels in the loss: positives weighted by their score, weight 1, or soft (an action with probability
    # = score); the three measured in docs/selftrain.md
    pseudo_weight: str = "score"
    epoch_clips: int | None = None  # clips per epoch (drawn at pseudo_ratio or the natural one); None = every clip
    # length: batches of clips of similar length, each padded to its longest clip (rounded up to the largest
    # pyramid stride); max: every batch padded to max_seq_len (ActionFormer). The model sees the same either way.
    batching: str = "length"
    length_window: int = 32  # batching=length: batches whose clips are sorted by length together

    def validate(self):
        if self.mode not in MODES:
            raise ConfigError(f"data.mode must be one of {MODES}, got {self.mode!r}")
        if self.resize_len is not None and self.resize_len < 1:
            raise ConfigError(f"data.resize_len must be >= 1, got {self.resize_len}")
        if not 0 <= self.trunc_thresh <= 1:
            raise ConfigError(f"data.trunc_thresh must be in [0, 1], got {self.trunc_thresh}")
        if self.crop_ratio is not None:
            if len(self.crop_ratio) != 2 or not 0 < self.crop_ratio[0] <= self.crop_ratio[1] <= 1:
                raise ConfigError(f"data.crop_ratio must be [lo, hi] with 0 < lo <= hi <= 1, got {self.crop_ratio}")
        if self.pseudo_ratio is not None and not 0 <= self.pseudo_ratio <= 1:
            raise ConfigError(f"data.pseudo_ratio must be in [0, 1], got {self.pseudo_ratio}")
        if self.epoch_clips is not None and self.epoch_clips < 1:
            raise ConfigError(f"data.epoch_clips must be >= 1, got {self.epoch_clips}")
        if self.pseudo_weight in (1, "1", "1.0"):
            self.pseudo_weight = "1"
        if self.pseudo_weight not in PSEUDO_WEIGHTS:
            raise ConfigError(f"data.pseudo_weight must be 'score', 1 or 'soft', got {self.pseudo_weight!r}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.batching not in BATCHING:
            raise ConfigError(f"data.batching must be one of {BATCHING}, got {self.batching!r}")
        if self.length_window < 1:
            raise ConfigError(f"data.length_window must be >= 1, got {self.length_window}")


@dataclass
class TrainConfig:
    epochs: int = 30  # after warm-up
    warmup_epochs: int = 5
    batch_size: int = 2
    lr: float = 1e-4
    weight_decay: float = 0.05
    ema_decay: float = 0.999
    ema_warmup: bool = False  # EMA decay min(ema_decay, (1+n)/(10+n)) at update n: for short runs
    clip_grad: float = 1.0  # max L2 norm of the gradients; <= 0 disables clipping
    seed: int = 0
    amp: bool = True  # mixed precision, used on CUDA only
    amp_dtype: str = "float16"  # float16 (with loss scaling) or bfloat16 (same range as float32: no scaling)
    eval_every: int = 0  # evaluate on data.eval_subset every N epochs (0 = never)
    eval_subset: str | None = None  # e.g. "validation"
    eval_tiou: list = field(default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7])
    log_every: int = 20  # iterations between log lines

    def validate(self):
        for name in ("epochs", "warmup_epochs", "eval_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.epochs + self.warmup_epochs < 1:
            raise ConfigError("train.epochs + train.warmup_epochs must be >= 1")
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.amp_dtype not in AMP_DTYPES:
            raise ConfigError(f"train.amp_dtype must be one of {AMP_DTYPES}, got {self.amp_dtype!r}")

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.warmup_epochs


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return {"model": self.model.to_dict(), "data": asdict(self.data), "train": asdict(self.train)}

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "RunConfig":
        d = d or {}
        unknown = sorted(set(d) - {"model", "data", "train"})
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {', '.join(unknown)} (expected model, data, train)")
        model_values = _typed(ModelConfig, d.get("model"), "model", source)
        try:
            model = ModelConfig.from_dict(model_values)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{source}: {e}") from None
        data = DataConfig(**_typed(DataConfig, d.get("data"), "data", source))
        train = TrainConfig(**_typed(TrainConfig, d.get("train"), "train", source))
        for part in (data, train):
            try:
                part.validate()
            except ConfigError as e:
                raise ConfigError(f"{source}: {e}") from None
        return cls(model, data, train)

    @property
    def max_seq_len(self) -> int:
        """Training length: the resize length when resizing, else the model's max_seq_len."""
        return self.data.resize_len or self.model.max_seq_len


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


def _field_types(cls) -> dict[str, tuple]:
    """Field name -> the plain types its annotation allows, e.g. ``float | None`` -> (float, NoneType)."""
    hints = typing.get_type_hints(cls)
    return {f.name: tuple(typing.get_origin(t) or t for t in (typing.get_args(hints[f.name])
                                                             if isinstance(hints[f.name], types.UnionType)
                                                             else (hints[f.name],)))
            for f in fields(cls)}


def _typed(cls, d, name, source) -> dict:
    """A section's values converted to what each field holds; unknown keys and impossible values are errors.

    Numbers the field expects parse from strings too (YAML 1.1 reads ``1e-3`` as a string); a text field keeps
    text (``train.eval_subset: 2014`` stays the string "2014")."""
    d = dict(d or {})
    allowed = _field_types(cls)
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(name + '.' + k for k in unknown)}")
    return {k: _coerce(v, allowed[k], f"{source}: {name}.{k}") for k, v in d.items()}


def _coerce(value, allowed: tuple, where: str):
    if isinstance(value, (list, tuple)) and (list in allowed or tuple in allowed):
        return [_number_or_string(v) for v in value]
    if isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed):
        return value  # (None too, where the field allows it)
    names = " or ".join("a number" if t is float else "an integer" if t is int else t.__name__
                        for t in allowed if t is not type(None) and not (t is int and float in allowed))
    if value is None:
        raise ConfigError(f"{where}: expected {names}, got nothing")
    if str in allowed and not isinstance(value, (list, tuple, dict)):
        return value if isinstance(value, str) else _text(value)
    if (float in allowed or int in allowed) and not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
        if number is not None and float in allowed:
            return number
        if number is not None and number.is_integer():
            return int(number)
    raise ConfigError(f"{where}: expected {names}, got {value!r}")


def _text(value) -> str:
    """YAML read a text value as a number or boolean: give back the text as written (2014, not 2014.0)."""
    return value.text if isinstance(value, _RawText) else str(value)


def preset_path(preset: str) -> Path:
    """A preset name (small, thumos, anet) or a path to a YAML file."""
    if preset in PRESETS:
        return Path(str(resources.files("tal") / "configs" / f"{preset}.yaml"))
    path = Path(preset)
    if not path.is_file():
        raise ConfigError(f"unknown preset {preset!r}: expected one of {', '.join(PRESETS)} or a YAML file")
    return path


class _RawText:
    """An override value YAML read as a number or boolean, with the text the user wrote (for text fields)."""

    def __init__(self, value, text: str):
        self.value, self.text = value, text


def parse_override(item: str) -> tuple[list[str], object]:
    """``model.embd_dim=128`` -> (["model", "embd_dim"], 128); values are parsed as YAML and converted to what
    the key holds when the config is built (a text key keeps the text as written)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. model.embd_dim=128")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML") from None
    keys = key.strip().split(".")
    section = SECTIONS.get(keys[0])
    if len(keys) == 2 and section is not None and keys[1] in _field_types(section):
        allowed = _field_types(section)[keys[1]]
        if str in allowed and parsed is not None and not isinstance(parsed, (str, list, dict)):
            parsed = _RawText(parsed, value.strip())
    return keys, parsed


def _number_or_string(value):
    # List items: YAML 1.1 reads "1e-3" (no dot) as a string; a number is what anyone writing it means.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if isinstance(value, list):
        return [_number_or_string(v) for v in value]
    return value


def apply_overrides(d: dict, overrides) -> dict:
    d = copy.deepcopy(d)
    for item in overrides or ():
        keys, value = parse_override(item)
        if len(keys) != 2:
            raise ConfigError(f"--set {item!r}: keys look like section.name (model.*, data.*, train.*)")
        section = d.setdefault(keys[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"--set {item!r}: {keys[0]} is not a section")
        section[keys[1]] = value
    return d


def load_config(preset: str = "thumos", overrides=()) -> RunConfig:
    path = preset_path(preset)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with sections model, data, train")
    return RunConfig.from_dict(apply_overrides(raw, overrides), source=str(path))


def save_config(cfg: RunConfig, path) -> None:
    """Atomic write of the effective config."""
    from tal.atomic import atomic_write_bytes

    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)
    atomic_write_bytes(Path(path), text.encode())
