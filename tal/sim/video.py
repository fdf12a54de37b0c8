"""One simulated video: its plan (length, shots, action instances, look-alike background) and its rows.

A row is the L2-normalised sum of
  background  = global image direction + domain centre + video scene (partly redrawn at each shot cut)
                + correlated noise (white per frame, averaged over the window's frames; fast and slow AR(1))
  actions     = sum over instances of strength * w(t) * content(t)
  distractors = the same for look-alike background, without the generic component (and, of the "context" kind,
                without the class prototype)
where w(t) is a soft box (product of two logistic ramps, 0.5 at the true boundary) and content(t) mixes the
generic action direction, the family, the class prototype (moving from its build-up to its main phase), the
instance's own look and fast motion noise.  The plan is drawn from its own random stream, so annotations can
be produced without rendering rows, and a video's bytes depend only on (seed, split, index) (rows are rendered
on one BLAS thread: ``tal.sim.world.one_blas_thread``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tal.sim.config import DomainConfig
from tal.sim.world import World, latent, one_blas_thread

LN81 = 2.0 * np.log(9.0)  # a logistic of scale a rises from 10 % to 90 % in a * ln(81)
MOTION_TAU_S = 0.5        # correlation time of the motion noise inside actions


@dataclass
class Event:
    """An action instance or a distractor: true extent in seconds and how it is mixed in."""

    start: float
    end: float
    cls: int
    strength: float
    ramp_s: float


@dataclass
class VideoPlan:
    video_id: str
    domain: str
    duration: float
    num_frames: int
    num_rows: int
    classes: list[int]
    instances: list[Event] = field(default_factory=list)
    distractors: list[Event] = field(default_factory=list)
    labels: list[tuple[float, float, int]] = field(default_factory=list)  # annotated (start, end, class)
    shot_cuts: list[float] = field(default_factory=list)


def num_rows_for(num_frames: int, window: int, stride: int) -> int:
    return max(0, (num_frames - window) // stride + 1)


def row_centres(world: World, num_rows: int) -> np.ndarray:
    c = world.cfg
    return (np.arange(num_rows) * c.stride + 0.5 * c.window) / c.fps


def plan_video(world: World, domain: str, allowed: np.ndarray, video_id: str, rng: np.random.Generator) -> VideoPlan:
    """Draw a video's layout: duration, classes, non-overlapping instances, distractors in the gaps, labels."""
    cfg, dom = world.cfg, world.cfg.domain(domain)
    lo, hi = np.log(dom.duration_range_s)
    num_frames = int(round(np.exp(rng.uniform(lo, hi)) * cfg.fps))
    duration = num_frames / cfg.fps  # a whole number of frames, so the row count matches the store's checks
    plan = VideoPlan(video_id, domain, duration, num_frames, num_rows_for(num_frames, cfg.window, cfg.stride), [])
    plan.shot_cuts = shot_cuts(rng, duration, dom.shot_mean_s)
    if len(allowed) and rng.random() >= dom.p_empty:
        n_cls = 2 if (len(allowed) > 1 and rng.random() < dom.p_two_classes) else 1
        plan.classes = [int(c) for c in rng.choice(allowed, size=n_cls, replace=False)]
        plan.instances = place_instances(world, dom, plan.classes, duration, rng)
    plan.distractors = place_distractors(world, dom, plan, allowed, rng)
    plan.labels = [jitter_label(ev, dom.boundary_jitter_s, duration, rng) for ev in plan.instances]
    return plan


def shot_cuts(rng: np.random.Generator, duration: float, mean_s: float) -> list[float]:
    cuts, t = [], float(rng.exponential(mean_s))
    while t < duration:
        cuts.append(t)
        t += float(rng.exponential(mean_s))
    return cuts


def place_instances(world: World, dom: DomainConfig, classes: list[int], duration: float,
                    rng: np.random.Generator) -> list[Event]:
    cfg = world.cfg
    target = rng.uniform(*dom.coverage_range) * duration
    labels, lengths = [], []
    while not lengths or sum(lengths) < target:
        k = int(rng.choice(classes))
        length = instance_length(world, dom, k, rng)
        labels.append(k)
        lengths.append(length)
    # Drop instances that cannot fit with the minimum gaps; shrink a lone instance that is too long.
    while len(lengths) > 1 and sum(lengths) + (len(lengths) + 1) * dom.min_gap_s > duration:
        labels.pop()
        lengths.pop()
    lengths[0] = min(lengths[0], max(cfg.min_length_s, duration - 2 * dom.min_gap_s))
    free = max(0.0, duration - sum(lengths) - (len(lengths) - 1) * dom.min_gap_s)
    gaps = rng.dirichlet(np.ones(len(lengths) + 1)) * free
    events, t = [], 0.0
    for i, (k, length) in enumerate(zip(labels, lengths)):
        t += gaps[i] + (dom.min_gap_s if i else 0.0)
        events.append(Event(float(t), float(min(t + length, duration)), k, float(rng.uniform(*dom.strength_range)),
                            float(rng.uniform(*dom.ramp_range_s))))
        t += length
    return events


def instance_length(world: World, dom: DomainConfig, k: int, rng: np.random.Generator) -> float:
    """Log-normal around class k's median (scaled for the domain), clipped to the world's length range."""
    cfg = world.cfg
    med = world.class_median_s[k] * dom.length_scale
    return float(np.clip(med * np.exp(rng.normal(0.0, dom.length_log_std)), cfg.min_length_s, cfg.max_length_s))


def place_distractors(world: World, dom: DomainConfig, plan: VideoPlan, allowed: np.ndarray,
                      rng: np.random.Generator) -> list[Event]:
    """Look-alike background in the gaps between instances (1 s margin): mostly the video's own classes,
    otherwise any class of the split (so a base-only split holds no novel content at all). Lengths are
    uniform in ``distractor_length_range_s``, or drawn like the class's instances."""
    n = int(rng.poisson(dom.distractor_rate_per_min * plan.duration / 60.0))
    if not len(allowed):
        return []
    busy = [(e.start - 1.0, e.end + 1.0) for e in plan.instances]
    out = []
    for _ in range(n):
        if dom.distractor_lengths_like_actions:  # the class first: the length follows it
            k = _distractor_class(plan, allowed, rng)
            length = instance_length(world, dom, k, rng)
        else:
            length = float(rng.uniform(*dom.distractor_length_range_s))
        free = free_intervals(busy, plan.duration, length)
        if not free:
            if dom.distractor_lengths_like_actions:
                continue  # a shorter one may still fit
            break
        a, b = free[int(rng.integers(len(free)))]
        start = float(rng.uniform(a, b - length))
        if not dom.distractor_lengths_like_actions:
            k = _distractor_class(plan, allowed, rng)
        out.append(Event(start, start + length, k, float(rng.uniform(*dom.distractor_strength_range)),
                         float(rng.uniform(*dom.ramp_range_s))))
        busy.append((start - 1.0, start + length + 1.0))
    return out


def _distractor_class(plan: VideoPlan, allowed: np.ndarray, rng: np.random.Generator) -> int:
    own = plan.classes and rng.random() < 0.7
    return int(rng.choice(plan.classes)) if own else int(rng.choice(allowed))


def free_intervals(busy: list[tuple[float, float]], duration: float, length: float) -> list[tuple[float, float]]:
    out, t = [], 0.0
    for a, b in sorted(busy) + [(duration, duration)]:
        if a - t >= length:
            out.append((t, a))
        t = max(t, b)
    return out


def jitter_label(ev: Event, std: float, duration: float, rng: np.random.Generator) -> tuple[float, float, int]:
    """The annotator's boundaries: the true ones (half-weight points) plus Gaussian disagreement."""
    s, e = ev.start + rng.normal(0.0, std), ev.end + rng.normal(0.0, std)
    s, e = max(0.0, s), min(duration, e)
    if e - s < 0.5 * (ev.end - ev.start):
        s, e = ev.start, ev.end
    return round(float(s), 3), round(float(e), 3), ev.cls


def ar1(rng: np.random.Generator, n: int, dim: int, rho: float, block: int = 16) -> np.ndarray:
    """Stationary AR(1) rows with unit expected squared norm: x_t = rho x_{t-1} + sqrt(1 - rho^2) e_t.

    Solved in blocks: inside a block the recursion is one product with a small lower-triangular matrix of
    powers of rho, and only the block ends are carried sequentially (n/block Python steps instead of n).
    """
    e = latent(rng, (n,), dim, np.float32)
    e[1:] *= math.sqrt(1.0 - rho * rho)
    nb = -(-n // block)
    e = np.concatenate([e, np.zeros((nb * block - n, dim), np.float32)]).reshape(nb, block, dim)
    k = np.arange(block)
    powers = np.tril(float(rho) ** (k[:, None] - k[None, :]).clip(min=0)).astype(np.float32)
    # Each block as if it started from zero: one GEMM over all blocks (a batched matmul is far slower).
    x = (powers @ e.transpose(1, 0, 2).reshape(block, nb * dim)).reshape(block, nb, dim).transpose(1, 0, 2)
    carry = (float(rho) ** (k + 1)).astype(np.float32)[:, None]
    for b in range(1, nb):
        x[b] += carry * x[b - 1, -1]
    return x.reshape(nb * block, dim)[:n]


def window_noise(rng: np.random.Generator, world: World, n: int) -> np.ndarray:
    """Per-frame white noise averaged over the frames each row encodes (rows whose windows overlap share
    frames, so their noise is correlated exactly as much as the windows overlap)."""
    c = world.cfg
    step = np.gcd(c.stride, c.frame_step)
    offsets = np.arange(0, c.window, c.frame_step) // step
    frames = latent(rng, ((n - 1) * c.stride // step + offsets[-1] + 1,), c.dim, np.float32)
    idx = np.arange(n)[:, None] * (c.stride // step) + offsets[None, :]
    return frames[idx].sum(1) / math.sqrt(len(offsets))


def soft_box(t: np.ndarray, ev: Event) -> np.ndarray:
    a = ev.ramp_s / LN81
    return 1.0 / ((1.0 + np.exp(-(t - ev.start) / a)) * (1.0 + np.exp(-(ev.end - t) / a)))


@one_blas_thread
def render_rows(world: World, plan: VideoPlan, rng: np.random.Generator) -> np.ndarray:
    """The [T, D] float32 L2-normalised rows of a planned video."""
    cfg, dom = world.cfg, world.cfg.domain(plan.domain)
    n, dim = plan.num_rows, cfg.dim
    t = row_centres(world, n)
    dt = cfg.stride / cfg.fps
    n_events = len(plan.instances) + len(plan.distractors)

    # Every correlated process and every random direction of the video goes through one product with the
    # mixing matrix (one BLAS call instead of several).
    noise = (math.sqrt(dom.white_share) * window_noise(rng, world, n)
             + math.sqrt(dom.fast_share) * ar1(rng, n, dim, np.exp(-dt / dom.fast_tau_s))
             + math.sqrt(dom.slow_share) * ar1(rng, n, dim, np.exp(-dt / dom.slow_tau_s)))
    motion = ar1(rng, n, dim, np.exp(-dt / MOTION_TAU_S))
    directions = latent(rng, (1 + len(plan.shot_cuts) + 1 + n_events,), dim, np.float32)
    mixed = np.concatenate([noise, motion, directions]) @ world.mixing32
    x, motion = mixed[:n], mixed[n:2 * n]
    directions = mixed[2 * n:] / np.linalg.norm(mixed[2 * n:], axis=1, keepdims=True)
    video_scene, shot_scenes, looks = directions[0], directions[1:len(plan.shot_cuts) + 2], directions[-n_events:]

    scene = dom.scene_share
    if plan.classes:
        v = dom.venue_share
        video_scene = math.sqrt(1 - v) * video_scene + math.sqrt(v) * world.venues[world.family_of[plan.classes[0]]]
    shot_of_row = np.searchsorted(np.asarray(plan.shot_cuts), t, side="right")
    x += (math.sqrt(dom.global_share) * world.image_common
          + math.sqrt(dom.domain_share) * world.domain_centres[plan.domain]
          + math.sqrt(scene * (1 - dom.shot_change_share)) * video_scene).astype(np.float32)
    x += math.sqrt(scene * dom.shot_change_share) * shot_scenes[shot_of_row]

    for ev, look in zip(plan.instances, looks):
        add_event(world, x, t, ev, look, motion, generic=True)
    for ev, look in zip(plan.distractors, looks[len(plan.instances):]):
        add_event(world, x, t, ev, look, motion, generic=False, with_class=cfg.distractor_content == "class")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def add_event(world: World, x: np.ndarray, t: np.ndarray, ev: Event, look: np.ndarray, motion: np.ndarray,
              generic: bool, with_class: bool = True) -> None:
    """Mix one event's content into the rows it touches (its soft box is < 1e-4 beyond 4 ramps).

    ``generic``: with the generic action component (instances); ``with_class``: with the class prototype
    (instances, and look-alike background of the "class" kind)."""
    cfg = world.cfg
    rows = np.flatnonzero((t > ev.start - 4 * ev.ramp_s) & (t < ev.end + 4 * ev.ramp_s))
    if not len(rows):
        return
    tt = t[rows]
    w = soft_box(tt, ev)
    # Phase: build-up prototype at the onset, main-part prototype from mid-instance on (smoothstep).
    phi = np.clip((tt - ev.start) / max(ev.end - ev.start, 1e-6) * 2.0, 0.0, 1.0)
    phi = phi * phi * (3 - 2 * phi)
    proto = world.prototypes[ev.cls]
    cls_part = (1 - phi)[:, None] * proto[0] + phi[:, None] * proto[1]
    cls_part /= np.linalg.norm(cls_part, axis=1, keepdims=True)
    shares = np.array([cfg.generic_share if generic else 0.0, cfg.family_share,
                       cfg.class_share if with_class else 0.0,
                       cfg.instance_share, cfg.dynamics_share])
    a = np.sqrt(shares / shares.sum())
    content = (a[0] * world.generic + a[1] * world.families[world.family_of[ev.cls]] + a[2] * cls_part
               + a[3] * look + a[4] * motion[rows])
    x[rows] += (ev.strength * w)[:, None] * content
