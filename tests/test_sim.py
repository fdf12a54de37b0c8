"""The simulated OV-TAL benchmark: determinism, calibrated statistics, structure, files, CLI (all SIMULATED)."""

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from features.store import StoreError, open_store
from tal.data.annotations import load_annotations
from tal.sim import CURATED, WEB, SimConfig, make_world, plan_video, preset, render_rows, simulate_split
from tal.sim import stats
from tal.sim.video import Event, VideoPlan, num_rows_for, row_centres, soft_box
from tal.sim.world import stream
from tal.sim.writer import write_benchmark

# Short videos keep the suite fast; statistics do not depend on video length.
SHORT = SimConfig(curated=replace(CURATED, duration_range_s=(30.0, 60.0)),
                  web=replace(WEB, duration_range_s=(20.0, 50.0)))


@pytest.fixture(scope="module")
def world():
    return make_world(SHORT)


@pytest.fixture(scope="module")
def curated(world):
    return simulate_split(world, "curated", 16, "testing", "all")


@pytest.fixture(scope="module")
def web(world):
    return simulate_split(world, "web", 16, "testing", "all")


def centres(world):
    return lambda n: row_centres(world, n)


def test_world_is_deterministic_and_seed_dependent(world):
    again = make_world(SHORT)
    other = make_world(replace(SHORT, seed=1))
    np.testing.assert_array_equal(world.text, again.text)
    np.testing.assert_array_equal(world.prototypes, again.prototypes)
    assert world.class_names == other.class_names  # names never depend on the seed
    assert not np.allclose(world.prototypes, other.prototypes)
    assert world.novel == again.novel


def test_base_novel_split_spreads_novel_classes_over_families(world):
    assert len(world.novel) == 5 and len(world.base) == 15
    assert set(world.base).isdisjoint(world.novel)
    assert set(world.base) | set(world.novel) == set(world.class_names)
    novel_families = world.family_of[world.class_index(world.novel)]
    assert len(set(novel_families.tolist())) == 5  # one per family of four
    assert len(set(world.class_names)) == 20 and "tennis swing" in world.class_names


def test_splits_are_deterministic_nested_and_distinct(world):
    rows_a, ann_a = simulate_split(world, "curated", 3, "training", "base")
    rows_b, ann_b = simulate_split(world, "curated", 5, "training", "base")
    for vid in rows_a:
        np.testing.assert_array_equal(rows_a[vid], rows_b[vid])
        assert ann_a.videos[vid].segments == ann_b.videos[vid].segments
    rows_c, _ = simulate_split(world, "curated", 3, "testing", "base")
    first_train, first_test = next(iter(rows_a.values())), next(iter(rows_c.values()))
    assert first_train.shape != first_test.shape or not np.allclose(first_train, first_test)


def test_rows_do_not_depend_on_the_blas_thread_count(world):
    # With two BLAS threads the rows once differed from one thread's by ~6e-8, which flips float16 store values.
    from threadpoolctl import threadpool_limits

    rendered = {}
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="blas"):
            rendered[threads], _ = simulate_split(world, "web", 4, "testing", "all")
    for vid, rows in rendered[1].items():
        assert rows.tobytes() == rendered[2][vid].tobytes(), vid


def test_rows_are_unit_norm_on_the_grid(world, curated):
    rows, aset = curated
    for vid, r in rows.items():
        assert r.dtype == np.float32 and r.shape[1] == 512
        np.testing.assert_allclose(np.linalg.norm(r, axis=1), 1.0, atol=1e-5)
        video = aset.videos[vid]
        assert len(r) == num_rows_for(int(round(video.duration * 30)), 16, 4)
        assert aset.provenance["simulated"] is True


def test_background_statistics_match_the_calibration(world):
    # Background only, one shot: the regime fitted to the real single-shot CLIP video (docs/sim.md).
    quiet = replace(CURATED, p_empty=1.0, distractor_rate_per_min=0.0, shot_mean_s=1e9,
                    duration_range_s=(30.0, 30.0))
    w = make_world(replace(SHORT, curated=quiet))
    rows, _ = simulate_split(w, "curated", 8, "testing", "all")
    v = list(rows.values())
    real = {1: 0.997, 4: 0.976, 15: 0.954, 75: 0.918}  # real CLIP ViT-B/32, same grid
    for lag, target in real.items():
        assert abs(stats.lag_cosine(v, lag) - target) < 0.03, lag
    assert stats.lag_cosine(v, 1) > stats.lag_cosine(v, 15) > stats.lag_cosine(v, 75)
    unrelated = stats.unrelated_cosine(v, v, np.random.default_rng(0))
    assert 0.28 < unrelated < 0.50  # real: 0.385


def test_full_videos_stay_temporally_correlated(world, curated):
    v = list(curated[0].values())
    rng = np.random.default_rng(0)
    assert stats.lag_cosine(v, 1) > 0.97
    far = stats.far_cosine(v, 150, rng)  # > 20 s apart, across shots and actions
    unrelated = stats.unrelated_cosine(v, v, rng)
    assert unrelated + 0.15 < far < stats.lag_cosine(v, 75)


def test_instances_have_soft_boundaries(world):
    """Rows move gradually towards the action: several rows lie between 10 % and 90 % of the rise."""
    plan = VideoPlan("v", "curated", 30.0, 900, num_rows_for(900, 16, 4), [0],
                     instances=[Event(10.0, 20.0, 0, 0.8, 2.0)])
    r = render_rows(world, plan, np.random.default_rng(0))
    t = row_centres(world, len(r))
    proto = world.prototypes[0].mean(0)
    proj = r @ (proto / np.linalg.norm(proto))
    smooth = np.convolve(proj, np.ones(5) / 5, mode="same")
    lo, hi = np.median(smooth[(t > 2) & (t < 6)]), np.median(smooth[(t > 13) & (t < 17)])
    assert hi - lo > 0.05
    rising = (t > 7) & (t < 13)
    frac = (smooth[rising] - lo) / (hi - lo)
    assert ((frac > 0.2) & (frac < 0.8)).sum() >= 4  # not a step
    assert soft_box(np.array([10.0, 20.0]), plan.instances[0]) == pytest.approx([0.5, 0.5], abs=1e-3)


def test_instance_layout_is_thumos_like(world):
    rng_allowed = world.class_index(world.class_names)
    lengths, counts = [], []
    for i in range(150):
        plan = plan_video(world, "curated", rng_allowed, f"v{i}", stream(0, "layout-test", i))
        assert 30.0 <= plan.duration <= 60.0 + 1 / 30
        ends = [(s, e) for s, e, _ in plan.labels]
        assert all(0 <= s < e <= plan.duration for s, e in ends)
        true = sorted((ev.start, ev.end) for ev in plan.instances)
        assert all(a[1] <= b[0] for a, b in zip(true, true[1:]))  # no overlap
        assert len({ev.cls for ev in plan.instances}) <= 2
        lengths += [ev.end - ev.start for ev in plan.instances]
        counts.append(len(plan.instances))
    lengths = np.array(lengths)
    assert lengths.min() >= 1.0 - 1e-9 and lengths.max() <= 60.0
    assert 1.5 < np.median(lengths) < 8.0  # THUMOS14 median 3.0 s
    assert np.mean(counts) >= 2.0 and min(counts) >= 1


def test_base_only_splits_hold_no_novel_content(world):
    base = world.class_index(world.base)
    for i in range(60):
        plan = plan_video(world, "curated", base, f"v{i}", stream(0, "base-only", i))
        assert {ev.cls for ev in plan.instances + plan.distractors} <= set(base.tolist())


def test_domains_differ(world, curated, web):
    rng = np.random.default_rng(1)
    c_rows, c_ann = curated
    w_rows, w_ann = web
    cov = lambda rows, ann: sum(s.length for v in ann.videos.values() for s in v.segments) / sum(
        v.duration for v in ann.videos.values())
    assert cov(w_rows, w_ann) < cov(c_rows, c_ann)  # more background on the web
    cv, wv = list(c_rows.values()), list(w_rows.values())
    within_c, within_w = stats.unrelated_cosine(cv, cv, rng), stats.unrelated_cosine(wv, wv, rng)
    across = stats.unrelated_cosine(cv, wv, rng)
    assert across < min(within_c, within_w) - 0.02
    assert stats.lag_cosine(wv, 75) < stats.lag_cosine(cv, 75)  # edited, noisier video
    web_plans = [plan_video(world, "web", world.class_index(world.class_names), f"w{i}", stream(0, "w", i))
                 for i in range(100)]
    assert any(not p.instances for p in web_plans)  # some web videos hold no action at all


def test_text_matches_visual_imperfectly_but_above_chance(world, curated):
    rows, aset = curated
    pooled, labels = stats.pooled_segments(rows, aset, centres(world))
    m = stats.text_match(pooled, labels, world.class_names, world.text)
    assert m["n"] >= 40
    assert 0.25 <= m["top1"] <= 0.8 and m["top1"] > 4 * m["chance"]
    assert m["match_cos"] > m["other_cos"] + 0.03
    # Text-visual cosines are much lower than visual-visual ones of the same class.
    same = [pooled[i] @ pooled[j] for i in range(len(labels)) for j in range(i + 1, len(labels))
            if labels[i] == labels[j]]
    assert np.mean(same) > m["match_cos"] + 0.3
    assert 0.15 < m["match_cos"] < 0.5


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="base_fraction"):
        make_world(replace(SHORT, base_fraction=1.0))
    with pytest.raises(ValueError, match="domain web: duration_range_s"):
        make_world(replace(SHORT, web=replace(WEB, duration_range_s=(60.0, 20.0))))
    with pytest.raises(ValueError, match="unknown domain"):
        simulate_split(make_world(SHORT), "youtube", 1)


def test_families_share_content(world, curated):
    rows, aset = curated
    pooled, labels = stats.pooled_segments(rows, aset, centres(world))
    fam = world.family_of[world.class_index(labels)]
    cls = np.array(labels)
    sims = pooled @ pooled.T
    sibling = (fam[:, None] == fam[None, :]) & (cls[:, None] != cls[None, :])
    stranger = fam[:, None] != fam[None, :]
    assert sibling.any()
    assert sims[sibling].mean() > sims[stranger].mean() + 0.02  # family (and venue) components
    same = world.family_of[:, None] == world.family_of[None, :]
    text = world.text @ world.text.T
    assert text[same & ~np.eye(len(text), dtype=bool)].mean() > text[~same].mean() + 0.02


def test_write_benchmark_through_public_apis(tmp_path):
    cfg, _ = preset("small")
    cfg = replace(cfg, curated=SHORT.curated, web=SHORT.web)
    paths = write_benchmark(tmp_path / "b", cfg, n_curated_train=2, n_web_unlabeled=2, n_curated_test=1,
                            n_web_test=1, progress=False)
    world = make_world(cfg)
    for name in ("curated_train", "web", "curated_test", "web_test"):
        with open_store(paths[f"{name}_store"]) as store:
            aset = load_annotations(paths[f"{name}_annotations"])
            assert store.provenance["encoder"] == "simulated" and store.provenance["simulated"] is True
            assert aset.provenance["simulated"] is True
            assert sorted(store.video_ids()) == sorted(aset.videos)
            vocab = store.vocabulary("sim")
            assert vocab.classes == world.class_names
            np.testing.assert_allclose(vocab.embeddings, world.text, atol=1e-6)
            vid = store.video_ids()[0]
            rows, info = store.read(vid).astype(np.float32), store.info(vid)
            assert rows.shape == (info.num_rows, 512) and info.grid.stride == 4 and info.grid.window == 16
            np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=2e-3)
            assert abs(info.duration - aset.videos[vid].duration) < 1e-3
    train = load_annotations(paths["curated_train_annotations"])
    assert set(train.classes) <= set(world.base) and train.num_segments > 0
    assert {v.subset for v in train.videos.values()} == {"training"}
    assert {v.subset for v in load_annotations(paths["curated_test_annotations"]).videos.values()} == {"testing"}
    split = json.loads(paths["split"].read_text())
    assert split["base"] == world.base and split["novel"] == world.novel
    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["simulated"] is True and manifest["counts"]["web"] == 2


def test_rerun_resumes_and_refuses_other_configs(tmp_path):
    out = tmp_path / "b"
    kw = dict(n_web_unlabeled=0, n_curated_test=0, n_web_test=0, progress=False)
    write_benchmark(out, SHORT, n_curated_train=2, **kw)
    with open_store(out / "curated_train.zarr") as s:
        first = {v: s.read(v) for v in s.video_ids()}
    write_benchmark(out, SHORT, n_curated_train=4, **kw)  # adds two videos, keeps the first two
    with open_store(out / "curated_train.zarr") as s:
        assert len(s) == 4
        for v, r in first.items():
            np.testing.assert_array_equal(s.read(v), r)
    assert len(load_annotations(out / "curated_train.json").videos) == 4
    with open_store(out / "curated_train.zarr", "a"):  # a finished benchmark is reused without a writer
        write_benchmark(out, SHORT, n_curated_train=4, **kw)
    with pytest.raises(StoreError, match="curated_train.zarr"):
        write_benchmark(out, replace(SHORT, seed=5), n_curated_train=4, **kw)
    with pytest.raises(StoreError, match="beyond"):
        write_benchmark(out, SHORT, n_curated_train=3, **kw)


def test_cli_writes_a_closed_vocabulary_benchmark(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "tal.cli.sim", "--out", str(out), "--seed", "3", "--curated-train", "2",
           "--web", "0", "--curated-test", "1", "--web-test", "0", "--labelled-classes", "all", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "SIMULATED" in done.stdout
    assert (out / "curated_train.zarr").is_dir() and (out / "curated_test.json").is_file()
    assert not (out / "web.zarr").exists()
    manifest = json.loads((out / "benchmark.json").read_text())
    assert manifest["seed"] == 3 and manifest["labelled_classes"] == "all"
    again = subprocess.run(cmd[:6] + ["4"] + cmd[7:], capture_output=True, text=True, timeout=120)
    assert again.returncode != 0
    assert "Error:" in again.stderr and "Traceback" not in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_blockwise_ar1_equals_the_recursion():
    from tal.sim.video import ar1
    from tal.sim.world import latent

    rho, n = 0.93, 150
    x = ar1(np.random.default_rng(7), n, 16, rho, block=8)
    e = latent(np.random.default_rng(7), (n,), 16, np.float32)
    e[1:] *= np.sqrt(1 - rho * rho)
    y = np.zeros_like(e)
    y[0] = e[0]
    for t in range(1, n):
        y[t] = rho * y[t - 1] + e[t]
    np.testing.assert_allclose(x, y, atol=1e-5)
