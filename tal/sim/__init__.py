"""A seeded, documented simulation of open-vocabulary temporal action localization data (see docs/sim.md).

Everything it writes is marked simulated: store provenance ``encoder: "simulated"`` and ``simulated: true``,
annotation provenance ``simulated: true``, and the benchmark manifest.
"""

from tal.sim.config import CURATED, REGIMES, WEB, Counts, DomainConfig, SimConfig, preset, with_regime
from tal.sim.split import annotations_of, iter_plans, rows_of, simulate_split
from tal.sim.video import VideoPlan, plan_video, render_rows
from tal.sim.world import World, make_world
from tal.sim.writer import VOCABULARY, write_benchmark, write_split

__all__ = ["CURATED", "REGIMES", "WEB", "Counts", "DomainConfig", "SimConfig", "VOCABULARY", "VideoPlan", "World",
           "annotations_of", "iter_plans", "make_world", "plan_video", "preset", "render_rows", "rows_of",
           "simulate_split", "with_regime", "write_benchmark", "write_split"]
