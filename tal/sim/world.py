"""The simulated world: a CLIP-like embedding space, class prototypes in families, text embeddings, splits.

All random directions are drawn from one anisotropic Gaussian (eigenvalues ~ i^-alpha in a random basis):
real CLIP rows vary along few directions, so random "content" directions overlap the way real ones do and
noise projects onto class directions instead of being orthogonal to everything (which would make detection
trivially easy in 512 dimensions).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

from tal.sim.config import SimConfig, SimConfigError
from tal.sim.names import class_families

TEXT_TEMPLATE = "a video of a person {}."
# A matrix product's rounding follows how BLAS splits it among threads (two threads rendered rows ~6e-8 away
# from one thread's: enough to flip float16 store values and send training elsewhere), so everything the
# simulator computes runs on one BLAS thread and its bytes depend on the seed alone.
one_blas_thread = ThreadpoolController().wrap(limits=1, user_api="blas")


def stream(*keys) -> np.random.Generator:
    """A generator for one named random stream; strings are hashed stably (crc32), never with hash()."""
    words = [k if isinstance(k, int) else zlib.crc32(str(k).encode()) for k in keys]
    return np.random.default_rng(np.random.SeedSequence(words))


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@dataclass
class World:
    cfg: SimConfig
    class_names: list[str]
    family_names: list[str]
    family_of: np.ndarray          # [K] family index per class
    base: list[str]                # class names, catalogue order
    novel: list[str]
    mixing: np.ndarray             # [D, D] maps isotropic z (var 1/D per coordinate) to content space
    image_common: np.ndarray       # [D] the CLIP image-cone direction
    domain_centres: dict[str, np.ndarray]
    generic: np.ndarray            # [D] shared by all actions
    families: np.ndarray           # [F, D]
    venues: np.ndarray             # [F, D] the family's usual surroundings (correlated with the family)
    prototypes: np.ndarray         # [K, 2, D] class prototype per phase (build-up, main part)
    text: np.ndarray               # [K, D] L2-normalised text embeddings
    class_median_s: np.ndarray     # [K] median instance length per class (curated; web scales it)

    def __post_init__(self):
        self.mixing32 = self.mixing.astype(np.float32)  # rows are rendered in float32

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_index(self, names) -> np.ndarray:
        lookup = {n: i for i, n in enumerate(self.class_names)}
        return np.array([lookup[n] for n in names], dtype=int)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` random unit content directions [n, D]."""
        return draw_units(rng, self.mixing, n)


def latent(rng: np.random.Generator, shape: tuple[int, ...], dim: int, dtype=np.float64) -> np.ndarray:
    """Isotropic latent noise with variance 1/D per coordinate (unit expected squared norm per row)."""
    x = rng.standard_normal((*shape, dim), dtype=dtype)
    x *= 1.0 / np.sqrt(dim)
    return x


def draw_units(rng: np.random.Generator, mixing: np.ndarray, n: int) -> np.ndarray:
    return unit(latent(rng, (n,), mixing.shape[0]) @ mixing)


def mixing_matrix(rng: np.random.Generator, dim: int, alpha: float) -> np.ndarray:
    """sqrt(lambda) * U^T with lambda_i ~ i^-alpha scaled to sum to D, U a random orthonormal basis."""
    lam = np.arange(1, dim + 1, dtype=np.float64) ** -alpha
    lam *= dim / lam.sum()
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    q *= np.sign(np.diag(r))  # a Haar-uniform basis
    return np.sqrt(lam)[:, None] * q.T


def choose_novel(rng: np.random.Generator, family_of: np.ndarray, num_novel: int) -> np.ndarray:
    """Novel classes spread over families: one per family in a random family order, then a second round."""
    n_fam = int(family_of.max()) + 1
    members = [list(rng.permutation(np.flatnonzero(family_of == f))) for f in range(n_fam)]
    novel = []
    while len(novel) < num_novel:
        for f in rng.permutation(n_fam):
            if members[f] and len(novel) < num_novel:
                novel.append(int(members[f].pop()))
    return np.array(sorted(novel), dtype=int)


@one_blas_thread
def make_world(cfg: SimConfig) -> World:
    """Build the world of ``cfg`` deterministically from ``cfg.seed``."""
    cfg.validate()
    names, fam_names, family_of = class_families(cfg.num_classes, cfg.family_size)
    family_of = np.array(family_of)
    k = cfg.num_classes
    num_novel = k - int(round(cfg.base_fraction * k))
    if not 0 < num_novel < k:
        raise SimConfigError(f"base_fraction {cfg.base_fraction} leaves no base or no novel class of {k}")
    rng = stream(cfg.seed, "world")
    mixing = mixing_matrix(rng, cfg.dim, cfg.spectrum_alpha)
    proto_rng, text_rng, split_rng, len_rng = (stream(cfg.seed, "world", s) for s in
                                               ("prototypes", "text", "split", "lengths"))

    def draw(r, n):
        return draw_units(r, mixing, n)

    # The structural directions (image cone, two domain centres, text cone) are made orthonormal: drawn
    # independently from the anisotropic law they can meet at |cos| ~0.4 by chance, which would move the
    # calibrated cross-video cosines from seed to seed.
    structural = np.linalg.qr(draw(proto_rng, 4).T)[0].T
    image_common, text_only = structural[0], structural[3]
    domain_centres = {"curated": structural[1], "web": structural[2]}
    generic = draw(proto_rng, 1)[0]
    families = draw(proto_rng, len(fam_names))
    venues = unit(np.sqrt(0.5) * families + np.sqrt(0.5) * draw(proto_rng, len(fam_names)))
    class_dirs = draw(proto_rng, k)
    phase_dirs = draw(proto_rng, 2 * k).reshape(k, 2, cfg.dim)
    ps = cfg.phase_share
    prototypes = unit(np.sqrt(1 - ps) * class_dirs[:, None, :] + np.sqrt(ps) * phase_dirs)

    # Text: the image-cone direction is partly shared with the text cone (the modality gap); the class part
    # is an imperfect copy of the (phase-averaged) visual prototype.
    text_common = np.sqrt(cfg.text_visual_gap) * image_common + np.sqrt(1 - cfg.text_visual_gap) * text_only
    e = cfg.text_prototype_error
    text_class = unit(np.sqrt(1 - e) * unit(prototypes.mean(1)) + np.sqrt(e) * draw(text_rng, k))
    text = unit(np.sqrt(cfg.text_common_share) * text_common
                + np.sqrt(cfg.text_family_share) * families[family_of]
                + np.sqrt(cfg.text_class_share) * text_class
                + np.sqrt(cfg.text_noise_share) * draw(text_rng, k))

    novel_idx = choose_novel(split_rng, family_of, num_novel)
    novel = [names[i] for i in novel_idx]
    base = [n for n in names if n not in novel]
    lo, hi = np.log(cfg.class_median_range_s)
    class_median = np.exp(len_rng.uniform(lo, hi, size=k))
    return World(cfg, names, fam_names, family_of, base, novel, mixing, image_common, domain_centres, generic,
                 families, venues, prototypes, text.astype(np.float32), class_median)
