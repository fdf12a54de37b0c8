"""The extraction library in-process: real decord decoding, a real (random-weight) open_clip model, real stores."""

import hashlib
import json
import time
import warnings

import numpy as np
import pytest
import torch

from features.decode import VideoSource
from features.encoders import EncoderError, load_encoder
from features.extract import (ExtractError, ExtractOptions, _DecodeWorker, collect_videos, extract_videos,
                              extract_vocabulary, shard_store_path, stop_decoders)
from features.shards import ShardError, parse_shard, shard_from_env, shard_slice
from tal.infer import store_vocabulary
from features.store import Grid, open_store
from features.store.ops import validate
from conftest import videos_named

# A tiny custom open_clip architecture (real open_clip VisionTransformer/TextTransformer code, few weights)
# keeps the suite fast on a shared 2-core machine; one test also runs a built-in architecture.
TINY = {"embed_dim": 64,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
GRID = Grid(fps=30.0, window=32, stride=16, frame_step=16)   # few frames per video keeps the test fast
PICK = ("carphone_distorted", "tennis26", "v_GGSY1Qvo990")


def write_tiny_config(folder):
    path = folder / "tiny-clip.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    return write_tiny_config(tmp_path_factory.mktemp("arch"))


@pytest.fixture(scope="module")
def encoder(tiny_config):
    return load_encoder(str(tiny_config), "none", device="cpu")


@pytest.fixture(scope="module")
def videos(real_videos, tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    for path in real_videos:
        if path.stem in PICK:
            (folder / path.name).symlink_to(path)
    videos_named(real_videos, *PICK)  # skips where the shared videos are absent
    return folder


def reference_snippet_frames(path, grid):
    """Independent of features.decode: (decord reader, each snippet's source frames looked up by timestamp)."""
    import decord

    vr = decord.VideoReader(str(path), ctx=decord.cpu(0))
    stamps = np.asarray(vr.get_frame_timestamp(np.arange(len(vr))), dtype=np.float64)
    n_target = int(np.floor(stamps[-1, 1] * grid.fps - 1e-6)) + 1
    snippets = []
    for i in range((n_target - grid.window) // grid.stride + 1):
        targets = np.arange(i * grid.stride, i * grid.stride + grid.window, grid.frame_step)
        snippets.append([int(np.argmin(np.abs(stamps[:, 0] - t / grid.fps))) for t in targets])
    return vr, snippets


def _expected_rows(path, grid, encoder):
    """Independent reference: for each snippet, look up its frames by decord timestamp and average them."""
    vr, snippets = reference_snippet_frames(path, grid)
    needed = sorted({k for frames in snippets for k in frames})
    pixels = dict(zip(needed, vr.get_batch(needed).asnumpy()))   # one decode pass, as decord gives it
    emb = {k: encoder.encode_images(encoder.preprocess(pixels[k][None]))[0] for k in needed}
    return np.stack([np.mean([emb[k] for k in frames], axis=0) for frames in snippets])


def test_extract_matches_reference_and_resumes(videos, encoder, tmp_path):
    store_path = tmp_path / "feats.zarr"
    jobs = collect_videos([videos])
    assert [j.video_id for j in jobs] == sorted(PICK)
    options = ExtractOptions(grid=GRID, batch_size=8, dtype="float32")
    summary = extract_videos(jobs, store_path, encoder, options, progress=False)
    assert summary.exit_code == 0 and summary.failed == {}
    assert sorted(summary.extracted) == sorted(PICK)

    with open_store(store_path) as store:
        assert sorted(store.video_ids()) == sorted(PICK)
        prov = store.provenance
        for key in ("encoder", "pretrained", "image_size", "preprocess", "normalise", "fps", "window", "stride",
                    "frame_step", "dtype", "dim", "stovtal_version", "created"):
            assert key in prov, key
        assert (prov["encoder"], prov["pretrained"], prov["dim"]) == ("tiny-clip", "random", encoder.dim)
        assert prov["model_config_sha256"] == hashlib.sha256(json.dumps(TINY).encode()).hexdigest()
        assert (prov["window"], prov["stride"], prov["frame_step"]) == (32, 16, 16)
        assert validate(store) == []
        for job in jobs:
            rows = store.read(job.video_id)
            info = store.info(job.video_id)
            source = VideoSource(job.path)
            assert info.grid == GRID and info.num_rows == len(rows)
            assert info.num_frames == source.num_frames and info.duration == pytest.approx(source.duration)
            np.testing.assert_allclose(rows, _expected_rows(job.path, GRID, encoder), atol=2e-5)
        before = {v: store.read(v) for v in store.video_ids()}

    again = extract_videos(jobs, store_path, encoder, options, progress=False)
    assert again.skipped == len(PICK) and again.extracted == [] and again.exit_code == 0
    with open_store(store_path) as store:
        assert all(np.array_equal(store.read(v), before[v]) for v in before)

    # The HDF5 backend gets the very same rows (per-video encoding does not depend on the run).
    h5 = tmp_path / "feats.h5"
    assert extract_videos(jobs, h5, encoder, options, progress=False).exit_code == 0
    with open_store(h5) as store:
        assert validate(store) == [] and store.backend == "hdf5"
        assert all(np.array_equal(store.read(v), before[v]) for v in before)


def test_failures_are_recorded_and_others_extracted(videos, encoder, tmp_path):
    (tmp_path / "zero.mp4").write_bytes(b"")
    jobs = collect_videos([videos / "tennis26.mp4", tmp_path / "zero.mp4", tmp_path / "gone.mp4"])
    store_path = tmp_path / "s.zarr"
    summary = extract_videos(jobs, store_path, encoder, ExtractOptions(grid=GRID, batch_size=8), progress=False)
    assert summary.extracted == ["tennis26"] and summary.exit_code == 3
    assert set(summary.failed) == {"zero", "gone"}
    with open_store(store_path) as store:
        assert store.failures() == summary.failed
        assert "empty file" in store.failures()["zero"] and "not found" in store.failures()["gone"]


def test_stopped_decode_threads_have_ended(real_videos, encoder):
    """A decode thread blocked on its full queue ends before stop_decoders returns: one left inside the decoder
    when the interpreter exits can abort the process after a run that succeeded."""
    jobs = collect_videos(list(videos_named(real_videos, "bigbuckbunny", "carphone_distorted").values()))
    worker = _DecodeWorker(jobs, ExtractOptions(grid=GRID, batch_size=2, prefetch=2), encoder.preprocess, pin=False)
    worker.start()
    while not worker.out.full():  # it is now waiting to put more
        time.sleep(0.01)
    stop_decoders([worker])
    assert not worker.is_alive()


def test_resume_refuses_another_encoder_or_grid(videos, encoder, tmp_path):
    store_path = tmp_path / "s.zarr"
    jobs = collect_videos([videos / "carphone_distorted.mp4"])
    extract_videos(jobs, store_path, encoder, ExtractOptions(grid=GRID), progress=False)
    other_grid = Grid(fps=25.0, window=32, stride=16, frame_step=16)
    with pytest.raises(ExtractError, match="fps"):
        extract_videos(jobs, store_path, encoder, ExtractOptions(grid=other_grid), progress=False)
    with pytest.raises(ExtractError, match="dtype"):
        extract_videos(jobs, store_path, encoder, ExtractOptions(grid=GRID, dtype="float32"), progress=False)


def test_vocabulary_uses_the_store_encoder(videos, encoder, tmp_path):
    store_path = tmp_path / "s.zarr"
    extract_videos(collect_videos([videos / "carphone_distorted.mp4"]), store_path, encoder,
                   ExtractOptions(grid=GRID), progress=False)
    classes = ["High Jump", "Tennis Swing", "Biking"]
    template = "a video of a person {}."
    extract_vocabulary(store_path, encoder, "demo", classes, template)
    with open_store(store_path) as store:
        vocab = store.vocabulary("demo")
    assert vocab.classes == classes and vocab.template == template
    expected = encoder.encode_texts([template.format(c) for c in classes])
    np.testing.assert_allclose(vocab.embeddings, expected, atol=1e-6)
    assert np.allclose(np.linalg.norm(vocab.embeddings, axis=1), 1.0, atol=1e-5)
    # A differently initialised model is another encoder, even with the same architecture and tag.
    other = load_encoder("tiny-clip", "none", device="cpu", seed=1)
    with pytest.raises(ExtractError, match="same encoder"):
        extract_vocabulary(store_path, other, "demo2", classes, template)


def test_prompt_ensemble_is_the_normalised_mean_of_normalised_prompts(videos, encoder, tmp_path):
    store_path = tmp_path / "s.zarr"
    extract_videos(collect_videos([videos / "carphone_distorted.mp4"]), store_path, encoder,
                   ExtractOptions(grid=GRID), progress=False)
    classes = ["High Jump", "Tennis Swing", "Biking"]
    templates = ["a video of a person {}.", "a photo of {}.", "{}, an action."]
    extract_vocabulary(store_path, encoder, "ensemble", classes, templates)
    by_hand = []
    for c in classes:
        prompts = [encoder.encode_texts([t.format(c)])[0] for t in templates]   # each L2-normalised
        mean = np.mean(prompts, axis=0)
        by_hand.append(mean / np.linalg.norm(mean))
    with open_store(store_path) as store:
        vocab = store.vocabulary("ensemble")
    np.testing.assert_allclose(vocab.embeddings, np.stack(by_hand), atol=1e-6)
    single = encoder.encode_texts([templates[0].format(c) for c in classes])
    assert not np.allclose(vocab.embeddings, single, atol=1e-3)   # the ensemble is not just its first prompt
    assert vocab.template is None and vocab.provenance["templates"] == templates
    assert vocab.provenance["ensemble"].startswith("mean of L2-normalised")
    # tal-infer reads it as any other vocabulary.
    text = store_vocabulary(store_path, "ensemble")
    assert text.classes == classes and np.array_equal(text.embeddings, vocab.embeddings)


def test_random_weights_are_reproducible_and_checkpoints_are_hashed(encoder, tiny_config, tmp_path):
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip", pretrained=None)
    ckpt = tmp_path / "weights.pt"
    torch.save(model.state_dict(), ckpt)
    from_file = load_encoder(str(tiny_config), "none", checkpoint=ckpt, device="cpu")
    assert from_file.pretrained == "sha256:" + hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert from_file.provenance()["checkpoint_file"] == "weights.pt"
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    assert np.array_equal(from_file.encode_images(images), encoder.encode_images(images))
    # A TorchScript archive, as OpenAI ships CLIP (ViT-B-16.pt), reads the same.
    with warnings.catch_warnings():   # torch calls torch.jit deprecated; OpenAI's files are TorchScript still
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(model.eval()).save(str(tmp_path / "weights.jit.pt"))
    scripted = load_encoder(str(tiny_config), "none", checkpoint=tmp_path / "weights.jit.pt", device="cpu")
    assert np.array_equal(scripted.encode_images(images), encoder.encode_images(images))
    with pytest.raises(EncoderError, match="--text-checkpoint.*not needed"):   # the file's text tower is whole
        load_encoder(str(tiny_config), "none", checkpoint=ckpt, text_checkpoint=ckpt, device="cpu")
    assert np.array_equal(load_encoder(str(tiny_config), "none").encode_images(images), encoder.encode_images(images))
    assert not np.array_equal(load_encoder(str(tiny_config), "none", seed=1).encode_images(images),
                              encoder.encode_images(images))

    bad = tmp_path / "bad.pt"
    bad.write_text("not weights")
    with pytest.raises(EncoderError, match="--checkpoint"):
        load_encoder(str(tiny_config), "none", checkpoint=bad, device="cpu")
    with pytest.raises(EncoderError, match="--checkpoint"):
        load_encoder(str(tiny_config), "none", checkpoint=tmp_path / "missing.pt", device="cpu")
    with pytest.raises(EncoderError, match="unknown pretrained tag.*--checkpoint"):
        load_encoder("ViT-S-32", "no-such-tag", device="cpu")
    with pytest.raises(EncoderError, match="unknown open_clip architecture"):
        load_encoder("ViT-Nope-99", "none", device="cpu")
    (tmp_path / "ViT-B-16.json").write_text(json.dumps(TINY))
    with pytest.raises(EncoderError, match="clashes with a built-in"):
        load_encoder(str(tmp_path / "ViT-B-16.json"), "none")


def test_builtin_architecture_end_to_end(videos, tmp_path):
    vit = load_encoder("ViT-S-32", "none", device="cpu")
    assert vit.preprocess.size == (224, 224) and vit.dim == 384
    jobs = collect_videos([videos / "carphone_distorted.mp4"])
    summary = extract_videos(jobs, tmp_path / "s.h5", vit, ExtractOptions(grid=GRID, batch_size=4), progress=False)
    assert summary.exit_code == 0
    with open_store(tmp_path / "s.h5") as store:
        rows = store.read("carphone_distorted")
        assert store.provenance["encoder"] == "ViT-S-32" and rows.shape == (6, 384) and rows.dtype == np.float16


def test_collect_and_shard(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/x.mp4", "b.MP4", "c.mkv", "notes.txt"):
        (tmp_path / name).write_bytes(b"\0")
    (tmp_path / "link.mp4").symlink_to(tmp_path / "nowhere.mp4")
    listing = tmp_path / "list.txt"
    listing.write_text("# comment\nelsewhere/d.mp4\n")
    jobs = collect_videos([tmp_path], list_file=listing)
    assert [j.video_id for j in jobs] == ["a/x", "b", "c", "d", "link"]
    assert jobs[3].path == tmp_path / "elsewhere" / "d.mp4"
    parts = [shard_slice(jobs, i, 2) for i in range(2)]
    assert [j.video_id for j in parts[0]] == ["a/x", "c", "link"] and [j.video_id for j in parts[1]] == ["b", "d"]
    assert parse_shard("1/4") == (1, 4)
    assert shard_from_env({"RANK": "3", "WORLD_SIZE": "8"}) == (3, 8)
    assert shard_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None and shard_from_env({}) is None
    with pytest.raises(ShardError, match="RANK"):
        shard_from_env({"RANK": "8", "WORLD_SIZE": "8"})
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(ShardError):
            parse_shard(bad)
    assert shard_store_path(tmp_path / "f.zarr", 1, 4).name == "f.shard-1-of-4.zarr"
    (tmp_path / "dup").mkdir()
    (tmp_path / "dup" / "b.mp4").write_bytes(b"\0")
    with pytest.raises(ExtractError, match="given twice"):
        collect_videos([tmp_path / "b.MP4", tmp_path / "dup" / "b.mp4"])
