"""ModelConfig: every hyper-parameter of the ActionFormer-style localizer, with ActionFormer's THUMOS defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

NMS_METHODS = ("soft", "hard", "none")
NECKS = ("identity", "fpn")


@dataclass(frozen=True)
class NmsSettings:
    """How proposals are de-duplicated (``tal.model.postprocess.postprocess`` keywords). One source: a model's
    config (``ModelConfig.nms()``), for its own predictions and the open-vocabulary path alike."""

    method: str
    iou_threshold: float
    sigma: float
    min_score: float
    max_seg_num: int
    voting_thresh: float

    def kwargs(self) -> dict:
        return asdict(self)


@dataclass
class ModelConfig:
    # input / classes
    input_dim: int = 512
    num_classes: int = 1  # 1 = class-agnostic actionness
    # widths
    embd_dim: int = 512
    fpn_dim: int = 512
    head_dim: int = 512
    # backbone: (embedding convs, stem transformer blocks, downsampling blocks) -> 1 + arch[2] pyramid levels
    arch: tuple = (2, 2, 5)
    n_head: int = 4
    attn_window: int | list = 19  # per level (list of 1 + arch[2]) or one for all; -1 = global attention
    embd_kernel: int = 3
    embd_with_ln: bool = True
    mlp_ratio: int = 4
    max_seq_len: int = 2304
    max_buffer_len_factor: float = 6.0  # point buffer covers max_seq_len * factor (longer inputs are computed)
    neck: str = "identity"
    # heads
    head_layers: int = 3  # (head_layers - 1) conv+LN+ReLU blocks, then the output conv
    head_kernel: int = 3
    head_with_ln: bool = True
    cls_prior_prob: float = 0.01
    # label assignment (ranges in grid units of the input sequence)
    regression_range: tuple = ((0, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 10000))
    center_sample_radius: float = 1.5
    # losses
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0
    reg_loss_weight: float = 1.0
    dropout: float = 0.0
    droppath: float = 0.1
    init_loss_norm: float = 100.0
    loss_norm_momentum: float = 0.9
    # inference
    pre_nms_thresh: float = 0.001
    pre_nms_topk: int = 5000
    nms_method: str = "soft"
    iou_threshold: float = 0.1
    min_score: float = 0.001
    max_seg_num: int = 200
    nms_sigma: float = 0.5
    voting_thresh: float = 0.7  # score voting refines kept segments; <= 0 disables it
    duration_thresh: float = 0.05  # grid units

    def __post_init__(self):
        self.arch = tuple(int(a) for a in self.arch)
        self.regression_range = tuple(tuple(float(v) for v in r) for r in self.regression_range)
        if isinstance(self.attn_window, (list, tuple)):
            self.attn_window = [int(w) for w in self.attn_window]
        self.validate()

    # --- derived -------------------------------------------------------------------------------------------
    @property
    def num_levels(self) -> int:
        return 1 + self.arch[2]

    @property
    def strides(self) -> list[int]:
        return [2**i for i in range(self.num_levels)]

    @property
    def max_stride(self) -> int:
        return self.strides[-1]

    def nms(self) -> NmsSettings:
        """The NMS / score-voting settings of this model (also used to classify its proposals open-vocabulary)."""
        return NmsSettings(method=self.nms_method, iou_threshold=self.iou_threshold, sigma=self.nms_sigma,
                           min_score=self.min_score, max_seg_num=self.max_seg_num, voting_thresh=self.voting_thresh)

    def level_windows(self) -> list[int]:
        if isinstance(self.attn_window, list):
            return list(self.attn_window)
        return [int(self.attn_window)] * self.num_levels

    # --- checks ---------------------------------------------------------------------------------------------
    def validate(self) -> None:
        def bad(field, why):
            raise ValueError(f"ModelConfig.{field}: {why}")

        if len(self.arch) != 3 or min(self.arch) < 0:
            bad("arch", f"expected three non-negative ints, got {self.arch}")
        if self.arch[0] < 1:
            bad("arch", "needs at least one embedding conv (arch[0] >= 1)")
        if self.num_classes < 1:
            bad("num_classes", f"must be >= 1, got {self.num_classes}")
        for name in ("input_dim", "embd_dim", "fpn_dim", "head_dim", "n_head", "max_seq_len"):
            if getattr(self, name) < 1:
                bad(name, f"must be >= 1, got {getattr(self, name)}")
        if self.embd_dim % self.n_head:
            bad("n_head", f"embd_dim {self.embd_dim} is not divisible by n_head {self.n_head}")
        if self.max_seq_len % self.max_stride:
            bad("max_seq_len", f"{self.max_seq_len} is not a multiple of the largest stride {self.max_stride}")
        windows = self.level_windows()
        if len(windows) != self.num_levels:
            bad("attn_window", f"needs {self.num_levels} entries (one per level), got {len(windows)}")
        for w in windows:
            if w != -1 and w < 1:
                bad("attn_window", f"window sizes must be >= 1 or -1 (global), got {w}")
        if len(self.regression_range) != self.num_levels:
            bad("regression_range", f"needs {self.num_levels} (lo, hi) pairs, got {len(self.regression_range)}")
        if self.neck not in NECKS:
            bad("neck", f"must be one of {NECKS}, got {self.neck!r}")
        if self.nms_method not in NMS_METHODS:
            bad("nms_method", f"must be one of {NMS_METHODS}, got {self.nms_method!r}")
        if self.head_layers < 1:
            bad("head_layers", "must be >= 1")
        if not 0 <= self.label_smoothing < 1:
            bad("label_smoothing", "must be in [0, 1)")
        if not 0 <= self.loss_norm_momentum < 1:
            bad("loss_norm_momentum", "must be in [0, 1)")

    # --- (de)serialisation: plain types so configs go into YAML and weights_only checkpoints -------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["arch"] = list(self.arch)
        d["regression_range"] = [list(r) for r in self.regression_range]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ModelConfig: unknown field(s) {', '.join(unknown)}")
        return cls(**d)
