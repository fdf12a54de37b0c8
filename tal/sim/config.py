"""Configuration of the simulated OV-TAL benchmark: world-level and per-domain settings, and presets.

Every default below is either calibrated on real CLIP ViT-B/32 features and real THUMOS14 annotations
(``tools/calibrate_sim.py`` prints the measurements; ``docs/sim.md`` explains them) or a stated design choice.
Variance shares are fractions of a background row's squared norm before L2 normalisation; because the
components are (nearly) independent, the cosine of two rows is close to the sum of the shares they have in
common. That is how the shares were fitted to the measured cosines.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace

from features.errors import StovtalError


class SimConfigError(StovtalError, ValueError):
    """Settings the generator cannot honour; one line naming the setting."""


@dataclass(frozen=True)
class DomainConfig:
    """How videos of one domain look: scene statistics, noise, action density and strength."""

    name: str
    duration_range_s: tuple[float, float]      # video length, log-uniform
    # Background variance shares (the scene share is 1 minus the others).  Fitted (least squares) to real
    # CLIP ViT-B/32 rows of one single-shot video emulated on the 30 fps / window 16 / stride 4 grid:
    # neighbour cosine 0.997 (0.13 s), 0.976 (0.53 s), 0.954 (2 s), 0.918 (10 s); plateau ~0.916.
    # Snippets of unrelated videos: 0.385.
    global_share: float = 0.305                # common CLIP image direction (all videos of all domains)
    domain_share: float = 0.08                 # domain centre: unrelated same-domain videos ~0.385
    white_share: float = 0.009                 # per-frame noise, averaged over the window's frames
    fast_share: float = 0.015                  # AR(1), correlation time fast_tau_s
    fast_tau_s: float = 0.76
    slow_share: float = 0.060                  # AR(1), correlation time slow_tau_s
    slow_tau_s: float = 4.1
    # Shots: the scene drifts at cuts; shot_change_share of the scene share is redrawn per shot, so rows
    # in different shots of one video meet at ~0.7 (curated) / ~0.64 (web, QVHighlights-like edited video).
    shot_mean_s: float = 40.0
    shot_change_share: float = 0.375
    # Venue: this share of the scene is the family's venue (a pool, a court, a kitchen) of the video's first
    # class, so the background of a diving video looks like diving's surroundings, as in THUMOS.
    venue_share: float = 0.3
    # Actions (THUMOS14: median coverage 0.25, IQR 0.15-0.42; 85 % of videos hold one class).
    coverage_range: tuple[float, float] = (0.15, 0.45)
    p_empty: float = 0.0                       # share of videos with no action at all
    p_two_classes: float = 0.15
    strength_range: tuple[float, float] = (0.35, 0.6)    # action amplitude relative to the background
    ramp_range_s: tuple[float, float] = (0.3, 1.5)       # 10 %-90 % rise time of onsets and offsets
    length_scale: float = 1.0                  # multiplies each class's median instance length
    length_log_std: float = 0.6                # THUMOS14: 0.62 within a class
    min_gap_s: float = 1.0                     # between instances
    boundary_jitter_s: float = 0.1             # annotator disagreement, std of the labelled boundaries
    # Background that resembles action: weak class content without the generic motion component.
    distractor_rate_per_min: float = 0.6
    distractor_strength_range: tuple[float, float] = (0.15, 0.3)
    distractor_length_range_s: tuple[float, float] = (1.0, 5.0)
    distractor_lengths_like_actions: bool = False

    @property
    def scene_share(self) -> float:
        rest = (self.global_share + self.domain_share + self.white_share + self.fast_share + self.slow_share)
        return 1.0 - rest


CURATED = DomainConfig(name="curated", duration_range_s=(30.0, 180.0))

# Web videos: other scenes (own domain centre), more editing (shorter shots), noisier frames, sparser and
# weaker actions, longer instances, more look-alike background, some videos without any action.
WEB = DomainConfig(
    name="web", duration_range_s=(20.0, 150.0),
    white_share=0.015, fast_share=0.025, slow_share=0.09, slow_tau_s=3.0,
    shot_mean_s=8.0, shot_change_share=0.5, venue_share=0.15,
    coverage_range=(0.05, 0.3), p_empty=0.1, p_two_classes=0.3,
    strength_range=(0.3, 0.55), ramp_range_s=(0.5, 2.5), length_scale=1.4, length_log_std=0.75,
    distractor_rate_per_min=1.5,
)


@dataclass(frozen=True)
class SimConfig:
    """The world (classes, prototypes, text) and both domains.  Same config + seed -> same bytes."""

    seed: int = 0
    dim: int = 512
    num_classes: int = 20
    family_size: int = 4
    base_fraction: float = 0.75
    # Snippet grid (ActionFormer THUMOS features): 30 fps, 16-frame windows every 4 frames, every 4th
    # frame of a window encoded.
    fps: float = 30.0
    window: int = 16
    stride: int = 4
    frame_step: int = 4
    # Eigen-spectrum of the content covariance, lambda_i ~ i^-alpha.  Real within-video residuals of CLIP
    # rows have a participation ratio of 11-22 and a log-log slope of -0.9 to -1.2 over the top 30 ranks.
    spectrum_alpha: float = 1.0
    # Instance lengths: each class has a median drawn log-uniformly from this range (THUMOS14 class medians
    # run from 1.1 s, CricketShot, to 8.7 s, CleanAndJerk); lengths are clipped to [min, max].
    class_median_range_s: tuple[float, float] = (1.2, 9.0)
    min_length_s: float = 1.0
    max_length_s: float = 60.0
    # Composition of an action's content (variance shares of the unit action vector).
    generic_share: float = 0.15      # "a person doing something": shared by every class
    family_share: float = 0.20       # shared inside a family
    class_share: float = 0.35        # the class prototype (two phases: build-up and main part)
    instance_share: float = 0.15     # this instance's own look
    dynamics_share: float = 0.15     # fast AR motion inside the instance
    # Look-alike background: "class" = the same content as an action of its class without the generic
    # component; "context" = the class's family, an own look and motion, but not the class prototype.
    distractor_content: str = "class"
    phase_share: float = 0.3         # how much the two phases of a class differ
    # Text embeddings: a text-cone direction (modality gap), the family, an imperfect copy of the class
    # prototype, and text-only detail.  Fitted so that pooled instances meet their class name at cosine
    # ~0.33-0.39 and other names at ~0.20-0.28 (real CLIP ViT-B/32: a QVHighlights query meets its clips
    # at 0.284 inside its windows, 0.256 outside, 0.14 for an unrelated video) and zero-shot top-1 over the
    # 20 names is ~40-50 %.
    text_common_share: float = 0.80
    text_family_share: float = 0.05
    text_class_share: float = 0.12
    text_noise_share: float = 0.03
    text_prototype_error: float = 0.2    # share of the text's "class" part that is not the visual prototype
    text_visual_gap: float = 0.2         # share of the text-cone direction along the image-cone direction
    curated: DomainConfig = field(default_factory=lambda: CURATED)
    web: DomainConfig = field(default_factory=lambda: WEB)

    def domain(self, name: str) -> DomainConfig:
        if name not in ("curated", "web"):
            raise SimConfigError(f"unknown domain {name!r} (expected 'curated' or 'web')")
        return self.curated if name == "curated" else self.web

    def validate(self) -> None:
        """One-line SimConfigError for settings the generator cannot honour."""
        if self.dim < 8 or self.num_classes < 2 or self.family_size < 1:
            raise SimConfigError(f"need dim >= 8, num_classes >= 2, family_size >= 1 (got {self.dim}, "
                             f"{self.num_classes}, {self.family_size})")
        if not 0.0 < self.base_fraction < 1.0:
            raise SimConfigError(f"base_fraction must be in (0, 1), got {self.base_fraction}")
        if self.window % self.frame_step or self.stride < 1 or self.fps <= 0:
            raise SimConfigError(f"grid needs fps > 0, stride >= 1 and window divisible by frame_step "
                             f"(got fps={self.fps}, window={self.window}, stride={self.stride}, "
                             f"frame_step={self.frame_step})")
        if not 0 < self.min_length_s <= self.max_length_s:
            raise SimConfigError(f"need 0 < min_length_s <= max_length_s, got {self.min_length_s}, {self.max_length_s}")
        if self.distractor_content not in ("class", "context"):
            raise SimConfigError(f"distractor_content must be 'class' or 'context', got {self.distractor_content!r}")
        for dom in (self.curated, self.web):
            lo, hi = dom.duration_range_s
            if dom.scene_share <= 0:
                raise SimConfigError(f"domain {dom.name}: background shares leave no scene share ({dom.scene_share:.3f})")
            if not self.window / self.fps < lo <= hi:
                raise SimConfigError(f"domain {dom.name}: duration_range_s {dom.duration_range_s} must be increasing "
                                 f"and longer than one window ({self.window / self.fps:.2f} s)")
            for name in ("coverage_range", "strength_range", "ramp_range_s", "distractor_strength_range",
                         "distractor_length_range_s"):
                a, b = getattr(dom, name)
                if not 0 <= a <= b:
                    raise SimConfigError(f"domain {dom.name}: {name} must be 0 <= low <= high, got {(a, b)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SimConfig":
        d = dict(d)
        for key in ("curated", "web"):
            if isinstance(d.get(key), dict):
                dom = {k: tuple(v) if isinstance(v, list) else v for k, v in d[key].items()}
                d[key] = DomainConfig(**dom)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass(frozen=True)
class Counts:
    """How many videos each file of the benchmark holds."""

    curated_train: int
    web: int
    curated_test: int
    web_test: int


REGIMES = ("specific", "shared")
# The class-specific regime (the default): calibrated so that a stage-1 localizer trained on the base classes
# scores generalized novel / base mAP ~0.41 (real THUMOS14: 11.36 / 27.11 = 0.42 and 9.4 / 23.4 = 0.40; see
# docs/sim.md). Actions carry no generic component (generic_share 0, measured against 0.005 and 0.01), and the
# background is busy with look-alike events as strong and as long as actions that show a class's context
# (family, an own look, motion) but not its prototype: only class-specific appearance tells an action apart.
SPECIFIC_WORLD = {"generic_share": 0.0, "class_share": 0.5, "distractor_content": "context"}
SPECIFIC_DOMAIN = {"distractor_lengths_like_actions": True, "distractor_rate_per_min": 6.0}


def with_regime(cfg: SimConfig, regime: str) -> SimConfig:
    """``shared``: the generator-1 world, where every action carries a generic component and look-alike
    background is weak (a base-trained localizer finds novel actions as well as base ones); ``specific``:
    see SPECIFIC_WORLD. Applied on top of ``cfg``."""
    if regime == "shared":
        return cfg
    if regime != "specific":
        raise ValueError(f"unknown regime {regime!r} (expected one of {', '.join(REGIMES)})")
    domains = {name: replace(dom, distractor_strength_range=dom.strength_range, **SPECIFIC_DOMAIN)
               for name, dom in (("curated", cfg.curated), ("web", cfg.web))}
    return replace(cfg, **SPECIFIC_WORLD, **domains)


def preset(name: str, seed: int = 0, regime: str = "specific") -> tuple[SimConfig, Counts]:
    """``small``: short videos, sized for the CPU demo.  ``thumos``: THUMOS14-sized curated store (413 videos
    of 30 s to 2,304 rows = 307 s) for benchmarks; its other files are empty unless counts are given."""
    if name == "small":
        cfg = SimConfig(seed=seed, curated=replace(CURATED, duration_range_s=(30.0, 120.0)),
                        web=replace(WEB, duration_range_s=(20.0, 90.0)))
        return with_regime(cfg, regime), Counts(curated_train=120, web=400, curated_test=60, web_test=60)
    if name == "thumos":
        max_s = (2304 - 1) * 4 / 30.0 + 16 / 30.0  # 2,304 rows on the default grid
        cfg = SimConfig(seed=seed, curated=replace(CURATED, duration_range_s=(30.0, max_s)))
        return with_regime(cfg, regime), Counts(curated_train=413, web=0, curated_test=0, web_test=0)
    raise SimConfigError(f"unknown preset {name!r} (expected 'small' or 'thumos')")
