"""Writing the simulated benchmark to disk through the public store and annotation APIs.

Each split goes to its own store (rows appended in batches, each batch committed atomically by the store)
and its annotation file (written atomically once the store is complete).  A rerun after a kill reopens the
stores, checks they were made by the same configuration and adds only the missing videos: a video's rows
depend only on (seed, split, index), so the result is the same as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from features.store import Grid, StoreError, VideoInfo, create_store, open_store
from tal.atomic import atomic_write_json
from tal.data.annotations import write_official
from tal.sim.config import Counts, SimConfig
from tal.sim.split import annotations_of, iter_plans, rows_of
from tal.sim.world import TEXT_TEMPLATE, World, make_world

log = logging.getLogger(__name__)

VOCABULARY = "sim"
GENERATOR_VERSION = 3  # bump whenever the generative code changes what a (config, seed) produces
BATCH = 16  # videos per store commit


@dataclass(frozen=True)
class SplitSpec:
    name: str      # file stem and random-stream key
    domain: str
    subset: str
    classes: str   # which classes its actions are drawn from


def benchmark_splits(counts: Counts, labelled_classes: str = "base") -> list[tuple[SplitSpec, int]]:
    return [(SplitSpec("curated_train", "curated", "training", labelled_classes), counts.curated_train),
            (SplitSpec("web", "web", "training", "all"), counts.web),
            (SplitSpec("curated_test", "curated", "testing", "all"), counts.curated_test),
            (SplitSpec("web_test", "web", "testing", "all"), counts.web_test)]


def fingerprint(cfg: SimConfig) -> str:
    """Identifies the data: the config and the generator version (a resume never mixes two versions)."""
    text = json.dumps({"config": cfg.to_dict(), "generator_version": GENERATOR_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def store_provenance(world: World, spec: SplitSpec) -> dict:
    c = world.cfg
    return {"encoder": "simulated", "pretrained": "simulated", "image_size": None, "preprocess": "simulated",
            "normalise": "l2", "fps": c.fps, "window": c.window, "stride": c.stride, "frame_step": c.frame_step,
            "simulated": True,
            "simulation": {"seed": c.seed, "config_sha": fingerprint(c), "split": spec.name, "domain": spec.domain,
                           "classes": spec.classes, "generator": "tal.sim"}}


def write_split(world: World, spec: SplitSpec, n_videos: int, store_path: Path, ann_path: Path,
                progress: bool = True) -> None:
    """Write (or finish) one split's store and its annotation file."""
    c = world.cfg
    grid = Grid(fps=c.fps, window=c.window, stride=c.stride, frame_step=c.frame_step)
    plans = list(iter_plans(world, spec.domain, n_videos, spec.classes, spec.name))
    store = open_existing(store_path, world, spec) if store_path.exists() else \
        create_store(store_path, dim=c.dim, provenance=store_provenance(world, spec))
    with store:
        if VOCABULARY not in store.vocabulary_names():
            store.add_vocabulary(VOCABULARY, world.class_names, world.text, template=TEXT_TEMPLATE,
                                 provenance={"encoder": "simulated", "simulated": True, "seed": c.seed,
                                             "base": world.base, "novel": world.novel})
        wanted = {p.video_id for p in plans}
        extra = [v for v in store.video_ids() if v not in wanted]
        if extra:
            raise StoreError(f"{store_path}: holds {len(extra)} video(s) beyond the {n_videos} requested "
                             f"(e.g. {extra[0]!r}); remove it or ask for at least {len(store)} videos")
        todo = [(i, p) for i, p in enumerate(plans) if p.video_id not in store]
        if len(todo) < len(plans):
            log.info("%s: %d of %d videos already written, resuming", store_path, len(plans) - len(todo), len(plans))
        batch = []
        for i, plan in tqdm(todo, desc=f"simulating {spec.name}", unit="video", disable=not progress):
            rows = rows_of(world, plan, spec.name, i)
            batch.append((plan.video_id, rows, VideoInfo(num_rows=len(rows), fps=c.fps, duration=plan.duration,
                                                         num_frames=plan.num_frames, grid=grid)))
            if len(batch) == BATCH:
                store.write_videos(batch)
                batch = []
        store.write_videos(batch)
    prov = {"generator": "tal.sim", "seed": c.seed, "config_sha": fingerprint(c), "split": spec.name,
            "domain": spec.domain, "classes": spec.classes}
    write_official(annotations_of(world, plans, spec.subset, prov), ann_path)
    log.info("%s: %d videos, %s", store_path, len(plans), ann_path)


def open_existing(path: Path, world: World, spec: SplitSpec):
    """Reopen a store left by an earlier run, refusing one made by another configuration or split."""
    store = open_store(path, "a")
    sim = store.provenance.get("simulation") or {}
    want = store_provenance(world, spec)["simulation"]
    if not store.provenance.get("simulated") or {k: sim.get(k) for k in want} != want:
        store.close()
        raise StoreError(f"{path}: exists but was not simulated with this configuration/seed/split; "
                         "remove it or choose another --out")
    return store


def write_benchmark(out_dir, cfg: SimConfig, *, n_curated_train: int, n_web_unlabeled: int, n_curated_test: int,
                    n_web_test: int, labelled_classes: str = "base", progress: bool = True) -> dict[str, Path]:
    """Write every store, annotation file, the split file and a manifest; return their paths by role.

    Roles: ``<split>_store`` / ``<split>_annotations`` for each split with videos (curated_train, web,
    curated_test, web_test), ``split`` and ``manifest``.  The manifest is written last: its presence means
    the benchmark is complete.
    """
    world = make_world(cfg)  # validates the config before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = Counts(n_curated_train, n_web_unlabeled, n_curated_test, n_web_test)
    splits = [(spec, n) for spec, n in benchmark_splits(counts, labelled_classes) if n > 0]
    paths: dict[str, Path] = {}
    for spec, _ in splits:
        paths[f"{spec.name}_store"] = out / f"{spec.name}.zarr"
        paths[f"{spec.name}_annotations"] = out / f"{spec.name}.json"
    paths["split"] = out / "split.json"
    paths["manifest"] = out / "benchmark.json"
    if _complete(paths["manifest"], cfg, counts, labelled_classes):
        # finished earlier: nothing is opened for writing, so any number of readers may share the benchmark
        return paths
    for spec, n in splits:
        write_split(world, spec, n, paths[f"{spec.name}_store"], paths[f"{spec.name}_annotations"], progress)
    atomic_write_json(paths["split"], {"name": f"sim-seed{cfg.seed}", "simulated": True, "base": world.base,
                                       "novel": world.novel})
    manifest = {"simulated": True, "generator": "tal.sim", "generator_version": GENERATOR_VERSION, "seed": cfg.seed,
                "config_sha": fingerprint(cfg),
                "vocabulary": VOCABULARY, "labelled_classes": labelled_classes,
                "counts": {"curated_train": n_curated_train, "web": n_web_unlabeled, "curated_test": n_curated_test,
                           "web_test": n_web_test},
                "classes": world.class_names, "families": {f: [n for n, g in zip(world.class_names, world.family_of)
                                                              if g == i] for i, f in enumerate(world.family_names)},
                "base": world.base, "novel": world.novel,
                "files": {k: str(v) for k, v in paths.items() if k != "manifest"}, "config": cfg.to_dict()}
    atomic_write_json(paths["manifest"], manifest)
    return paths


def _complete(manifest: Path, cfg: SimConfig, counts: Counts, labelled_classes: str) -> bool:
    """Whether ``manifest`` (written last) records exactly this benchmark: same config, generator and sizes."""
    if not manifest.exists():
        return False
    found = json.loads(manifest.read_text())
    return (found.get("config_sha") == fingerprint(cfg) and found.get("generator_version") == GENERATOR_VERSION
            and found.get("labelled_classes") == labelled_classes
            and found.get("counts") == {"curated_train": counts.curated_train, "web": counts.web,
                                        "curated_test": counts.curated_test, "web_test": counts.web_test})
