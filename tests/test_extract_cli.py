"""`tal-extract` end to end: bad input, SIGKILL + resume (real subprocesses), two shards at once + merge."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import videos_named

from features.encoders import EncoderError, load_encoder
from features.extract import ExtractOptions, collect_videos, extract_videos
from features.extract_cli import main
from features.store import Grid, open_store
from features.store.ops import validate
from test_extract import write_tiny_config

BIN = Path(sys.executable).parent
GRID_ARGS = ["--num-frames", "32", "--stride", "16", "--frame-step", "16"]
GRID = Grid(fps=30.0, window=32, stride=16, frame_step=16)


@pytest.fixture(scope="module")
def setup(real_videos, tmp_path_factory):
    """All real sample videos, the tiny architecture, and an uninterrupted in-process reference run."""
    root = tmp_path_factory.mktemp("cli")
    videos = root / "videos"
    videos.mkdir()
    for path in real_videos:
        (videos / path.name).symlink_to(path)
    config = write_tiny_config(root)
    encoder = load_encoder(str(config), "none", device="cpu")
    reference = root / "reference.zarr"
    summary = extract_videos(collect_videos([videos]), reference, encoder,
                             ExtractOptions(grid=GRID, batch_size=4), progress=False)
    assert summary.exit_code == 0
    return {"root": root, "videos": videos, "config": config, "reference": reference}


def cli_args(setup, store, *extra):
    return ["videos", str(setup["videos"]), "--store", str(store), "--model", str(setup["config"]),
            "--pretrained", "none", "--batch-size", "4", "--no-progress", "--log-level", "warning",
            *GRID_ARGS, *extra]


def assert_same_as_reference(setup, store_path):
    with open_store(setup["reference"]) as ref, open_store(store_path) as got:
        assert sorted(got.video_ids()) == sorted(ref.video_ids())
        assert got.provenance["encoder"] == ref.provenance["encoder"] == "tiny-clip"
        assert validate(got) == []
        for vid in ref.video_ids():
            assert np.array_equal(got.read(vid), ref.read(vid)), vid   # bit-identical
            assert got.info(vid) == ref.info(vid)


def _count(store_path) -> int:
    try:
        with open_store(store_path) as store:
            return len(store)
    except Exception:  # not created yet
        return 0


def kill_then_finish(cmd, store, total, kills=2, pause=0.3, attempts=5):
    """Run ``cmd`` and SIGKILL it ``kills`` times, each time once one more video is in the store plus a random
    moment (anywhere in the next video: decode, encode or write); then let a last run finish the job.

    On a fast machine a kill can land after the last video was written (short videos): that attempt tests
    nothing, so it starts over from an empty store with a shorter pause."""
    for _ in range(attempts):
        seen = _kill_runs(cmd, store, total, kills, pause)
        if seen is not None:
            break
        shutil.rmtree(store)
        pause /= 2
    else:
        pytest.fail(f"no kill landed before the last of {total} videos in {attempts} attempts")
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"skipped {seen} already done" in done.stdout


def _kill_runs(cmd, store, total, kills, pause):
    """Videos in the store after ``kills`` SIGKILLed runs, or None when a run got every video in first."""
    seen = 0
    for _ in range(kills):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while _count(store) <= seen and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(random.uniform(0.0, pause))
        finished_first = proc.poll() is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen = _count(store)
        if finished_first or seen >= total:
            return None
        assert seen > 0
    return seen


def test_sigkill_then_resume_is_bit_identical(setup):
    store = setup["root"] / "killed.zarr"
    cmd = [str(BIN / "tal-extract"), *cli_args(setup, store)]
    total = len(list(setup["videos"].iterdir()))
    if total < 6:  # two kills must land between videos: too few (short) videos finish first
        pytest.skip(f"only {total} real videos (../shared/data absent?)")
    kill_then_finish(cmd, store, total)
    assert_same_as_reference(setup, store)


def test_two_shards_at_once_then_merge(setup):
    store = setup["root"] / "sharded.zarr"
    cmd = [str(BIN / "tal-extract"), *cli_args(setup, store)]
    env = dict(os.environ, RANK="1", WORLD_SIZE="2")   # as torchrun would start the second process
    procs = [subprocess.Popen(cmd + ["--shard", "0/2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
             subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    shards = [setup["root"] / f"sharded.shard-{i}-of-2.zarr" for i in range(2)]
    ids = sorted(p.stem for p in setup["videos"].iterdir())
    for i, shard in enumerate(shards):
        with open_store(shard) as s:
            assert sorted(s.video_ids()) == ids[i::2]
    merged = setup["root"] / "merged.zarr"
    res = subprocess.run([str(BIN / "tal-store"), "merge", str(merged), *map(str, shards)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert_same_as_reference(setup, merged)


@pytest.fixture
def bad_dir(setup, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    real = videos_named(list(setup["videos"].iterdir()), "tennis26", "carphone_distorted", "v_GGSY1Qvo990")
    (folder / "good.mp4").symlink_to(real["tennis26"].resolve())
    (folder / "short.mp4").symlink_to(real["carphone_distorted"].resolve())   # 4 s < one 128-frame window
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("not a video at all\n")
    data = real["v_GGSY1Qvo990"].resolve().read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (folder / "broken.mp4").symlink_to(folder / "deleted.mp4")   # unreadable: its target is gone
    (tmp_path / "unreadable.mp4").mkdir()                           # unreadable: a directory, not a file
    return folder


def test_bad_inputs_are_recorded_and_the_rest_extracted(setup, bad_dir, tmp_path):
    store = tmp_path / "bad.zarr"
    args = ["videos", str(bad_dir), str(tmp_path / "missing.mp4"), str(tmp_path / "unreadable.mp4"),
            "--store", str(store), "--model", str(setup["config"]), "--pretrained", "none", "--no-progress",
            "--num-frames", "128", "--stride", "64", "--frame-step", "32"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    reasons = {"short": "shorter than one window", "zero": "empty file", "text": "cannot open",
               "truncated": "truncated file", "broken": "broken symbolic link", "missing": "file not found",
               "unreadable": "is a directory"}
    with open_store(store) as s:
        assert s.video_ids() == ["good"] and s.read("good").shape == (4, 64)
        failures = s.failures()
    assert set(failures) == set(reasons)
    for vid, reason in reasons.items():
        assert reason in failures[vid]
        assert f"FAILED {vid}: " in result.output
    assert "failed 7 of 8" in result.output


def test_cli_text_vocabulary_and_refusals(setup, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("High Jump\nTennis Swing\n\n# comment\nBiking\n")
    store = setup["root"] / "reference.zarr"
    runner = CliRunner()
    ok = runner.invoke(main, ["text", "--store", str(store), "--classes", str(classes), "--name", "thumos14",
                              "--template", "a video of a person {}.", "--model", str(setup["config"])])
    assert ok.exit_code == 0, ok.output
    with open_store(store) as s:
        vocab = s.vocabulary("thumos14")
        assert vocab.classes == ["High Jump", "Tennis Swing", "Biking"] and vocab.embeddings.shape == (3, 64)
        assert vocab.template == "a video of a person {}."
    other = runner.invoke(main, ["text", "--store", str(store), "--classes", str(classes), "--name", "x",
                                 "--model", "ViT-B-32", "--pretrained", "openai"])
    assert other.exit_code == 1 and "custom architecture" in other.output
    tag = runner.invoke(main, ["text", "--store", str(store), "--classes", str(classes), "--name", "x",
                               "--model", str(setup["config"]), "--pretrained", "openai"])
    assert tag.exit_code == 1 and "same encoder" in tag.output
    bad_template = runner.invoke(main, ["text", "--store", str(store), "--classes", str(classes), "--name", "x",
                                        "--template", "no placeholder"])
    assert bad_template.exit_code == 2 and "--template" in bad_template.output


def test_cli_prompt_ensemble_from_flags_and_file(setup, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("High Jump\nBiking\n")
    templates = tmp_path / "templates.txt"
    templates.write_text("# CLIP-style prompts\na photo of a person {}.\n{} in a video.\n")
    store = setup["root"] / "reference.zarr"
    res = CliRunner().invoke(main, ["text", "--store", str(store), "--classes", str(classes), "--name", "ens",
                                    "--template", "a video of a person {}.", "--templates", str(templates),
                                    "--model", str(setup["config"])])
    assert res.exit_code == 0, res.output
    assert "3 templates" in res.output
    expected = ["a video of a person {}.", "a photo of a person {}.", "{} in a video."]
    encoder = load_encoder(str(setup["config"]), "none", device="cpu")
    emb = encoder.encode_texts([t.format(c) for t in expected for c in ("High Jump", "Biking")]).reshape(3, 2, -1)
    mean = emb.mean(axis=0)
    with open_store(store) as s:
        vocab = s.vocabulary("ens")
    assert vocab.provenance["templates"] == expected
    np.testing.assert_allclose(vocab.embeddings, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-6)
    twice = CliRunner().invoke(main, ["text", "--store", str(store), "--classes", str(classes), "--name", "x",
                                      "--template", "{} in a video.", "--templates", str(templates)])
    assert twice.exit_code == 2 and "twice" in twice.output


def test_unavailable_weights_stop_with_a_clear_error(setup, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    # A weights tag that cannot be had on any machine: offline, over an empty download cache (weights cached
    # elsewhere on this machine stay out of sight).
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    with pytest.raises(EncoderError, match="--checkpoint"):
        load_encoder("ViT-B-32", "openai", device="cpu")
    store = tmp_path / "never.zarr"
    result = CliRunner().invoke(main, ["videos", str(setup["videos"]), "--store", str(store),
                                       "--model", "ViT-B-32", "--pretrained", "openai"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: cannot get pretrained weights ViT-B-32/openai") and "--checkpoint FILE" in last
    # A tag that exists nowhere: the same kind of one-line refusal, and no store either.
    result = CliRunner().invoke(main, ["videos", str(setup["videos"]), "--store", str(store),
                                       "--model", "ViT-B-32", "--pretrained", "no-such-weights"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: unknown pretrained tag 'no-such-weights' for ViT-B-32") and "--checkpoint" in last
    assert not store.exists()


def test_usage_errors(setup, tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["videos", "--store", str(tmp_path / "s.zarr")]).exit_code == 2
    res = runner.invoke(main, ["videos", str(setup["videos"]), "--store", str(tmp_path / "s.zarr"), "--shard", "2/2"])
    assert res.exit_code == 1 and "shard '2/2'" in res.output
    res = runner.invoke(main, ["videos", str(setup["videos"] / "tennis26.mp4"), "--store", str(tmp_path / "s.zarr"),
                               "--shard", "1/2"])
    assert res.exit_code == 0 and "no videos" in res.output and not (tmp_path / "s.shard-1-of-2.zarr").exists()
    res = runner.invoke(main, ["videos", str(setup["videos"]), "--store", str(tmp_path / "s.zarr"), "--stride", "0"])
    assert res.exit_code == 2 and "--stride" in res.output
