"""Clip-level encoders (ViCLIP): real decord decoding of real mp4s, a real ViCLIP model with random weights (a tiny
config, plus the ViCLIP-B/16 layout), real stores; resume after SIGKILL, shards, bad input, weights files."""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import videos_named

from features.encoders import EncoderError, load_encoder
from features.extract import ExtractError, ExtractOptions, collect_videos, extract_videos
from features.extract_cli import main
from features.shards import shard_slice
from features.store import Grid, open_store
from features.store.ops import merge, validate
from test_extract import reference_snippet_frames
from test_extract_cli import kill_then_finish

# ViCLIP's architecture at toy sizes: 4 frames of 32 px per clip.
TINY = {"model_type": "viclip", "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 64, "layers": 2, "heads": 2, "num_frames": 4},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
GRID = Grid(fps=30.0, window=32, stride=16, frame_step=8)     # 4 frames per 32-frame window
GRID_ARGS = ["--num-frames", "32", "--stride", "16"]          # --frame-step follows from the clip length
PICK = ("carphone_distorted", "tennis26", "v_GGSY1Qvo990")
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def setup(real_videos, tmp_path_factory):
    root = tmp_path_factory.mktemp("viclip")
    config = root / "tiny-viclip.json"
    config.write_text(json.dumps(TINY))
    videos = root / "videos"
    videos.mkdir()
    for path in real_videos:
        (videos / path.name).symlink_to(path)
    encoder = load_encoder(str(config), "none", device="cpu")
    reference = root / "reference.zarr"
    summary = extract_videos(collect_videos([videos]), reference, encoder, ExtractOptions(grid=GRID, batch_size=8),
                             progress=False)
    assert summary.exit_code == 0
    return {"root": root, "config": config, "videos": videos, "encoder": encoder, "reference": reference}


def _expected_rows(path, grid, encoder):
    """Independent reference: each snippet's frames found by decord timestamp, embedded as one clip."""
    vr, snippets = reference_snippet_frames(path, grid)
    return np.stack([encoder.encode_clips(encoder.preprocess(vr.get_batch(frames).asnumpy())[None])[0]
                     for frames in snippets])


def test_clip_extraction_matches_reference_resumes_and_shards(setup, tmp_path):
    encoder = setup["encoder"]
    assert encoder.clip_frames == 4 and encoder.dim == 32
    paths = videos_named(list(setup["videos"].iterdir()), *PICK)  # skips where ../shared/data is absent
    with open_store(setup["reference"]) as store:
        prov = store.provenance
        assert (prov["encoder"], prov["pretrained"], prov["normalise"], prov["clip_frames"]) == \
            ("tiny-viclip", "random", "clip-l2", 4)
        assert prov["model_config_sha256"] == hashlib.sha256(setup["config"].read_bytes()).hexdigest()
        assert prov["preprocess"]["resize_mode"] == "squash" and prov["frame_step"] == 8
        assert validate(store) == []
        for vid in PICK:
            rows = store.read(vid).astype(np.float32)
            np.testing.assert_allclose(rows, _expected_rows(paths[vid], GRID, encoder), atol=2e-3)  # float16 store
            assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=2e-3)
        reference = {vid: store.read(vid) for vid in store.video_ids()}

    jobs = collect_videos([setup["videos"]])
    again = extract_videos(jobs, setup["reference"], encoder, ExtractOptions(grid=GRID, batch_size=8), progress=False)
    assert again.skipped == len(jobs) and again.extracted == []

    # Two shards (another batch size too: rows must not depend on it) merged into one store.
    shards = []
    for i in range(2):
        shards.append(tmp_path / f"s.shard-{i}-of-2.h5")
        part = extract_videos(shard_slice(jobs, i, 2), shards[-1], encoder, ExtractOptions(grid=GRID, batch_size=8),
                              progress=False)
        assert part.exit_code == 0
    merge(tmp_path / "merged.zarr", shards)
    with open_store(tmp_path / "merged.zarr") as store:
        assert sorted(store.video_ids()) == sorted(reference)
        assert all(np.array_equal(store.read(v), reference[v]) for v in reference)


def test_clip_rows_do_not_depend_on_the_decode_chunking(setup, tmp_path):
    jobs = collect_videos([videos_named(list(setup["videos"].iterdir()), "tennis26")["tennis26"]])
    stores = []
    for batch, workers in ((8, 1), (13, 2)):   # 13 frames per decode chunk: clips straddle chunk boundaries
        stores.append(tmp_path / f"b{batch}.zarr")
        extract_videos(jobs, stores[-1], setup["encoder"], ExtractOptions(grid=GRID, batch_size=batch,
                                                                          decode_workers=workers), progress=False)
    with open_store(stores[0]) as a, open_store(stores[1]) as b:
        np.testing.assert_allclose(a.read("tennis26"), b.read("tennis26"), atol=1e-3)


def test_a_clip_is_more_than_the_mean_of_its_frames(setup):
    encoder = setup["encoder"]
    clip = torch.randint(0, 256, (1, 4, 3, 32, 32), dtype=torch.uint8)
    forward, backward = encoder.encode_clips(clip), encoder.encode_clips(clip.flip(1))
    assert not np.allclose(forward, backward, atol=1e-4)   # the temporal position embedding sees frame order
    with pytest.raises(ValueError, match="clips of 4 frames"):
        encoder.encode_clips(clip[:, :3])


def test_sigkill_then_resume_is_bit_identical(setup):
    store = setup["root"] / "killed.zarr"
    cmd = [str(BIN / "tal-extract"), "videos", str(setup["videos"]), "--store", str(store), "--model",
           str(setup["config"]), "--pretrained", "none", "--batch-size", "8", "--no-progress", "--log-level",
           "warning", *GRID_ARGS]
    total = len(list(setup["videos"].iterdir()))
    if total < 4:
        pytest.skip(f"only {total} real videos (../shared/data absent?)")
    kill_then_finish(cmd, store, total, kills=1, pause=0.1)
    with open_store(setup["reference"]) as ref, open_store(store) as got:
        assert sorted(got.video_ids()) == sorted(ref.video_ids()) and validate(got) == []
        for vid in ref.video_ids():
            assert np.array_equal(got.read(vid), ref.read(vid)), vid
            assert got.info(vid) == ref.info(vid)


def test_bad_inputs_and_grid_mismatch(setup, tmp_path):
    (tmp_path / "zero.mp4").write_bytes(b"")
    good = videos_named(list(setup["videos"].iterdir()), "tennis26")["tennis26"]
    runner = CliRunner()
    base = ["videos", str(good), str(tmp_path / "zero.mp4"), str(tmp_path / "gone.mp4"), "--model",
            str(setup["config"]), "--pretrained", "none", "--no-progress", *GRID_ARGS]
    res = runner.invoke(main, [*base, "--store", str(tmp_path / "s.zarr")])
    assert res.exit_code == 3, res.output
    with open_store(tmp_path / "s.zarr") as s:
        assert s.video_ids() == ["tennis26"] and set(s.failures()) == {"zero", "gone"}
        assert s.provenance["frame_step"] == 8   # window 32 / 4 frames per clip
    res = runner.invoke(main, [*base, "--store", str(tmp_path / "t.zarr"), "--frame-step", "16"])
    assert res.exit_code == 2 and "embeds clips of 4 frames" in res.output and "--frame-step 8" in res.output
    assert not (tmp_path / "t.zarr").exists()
    with pytest.raises(ExtractError, match="clips of 4 frames"):
        extract_videos(collect_videos([good]), tmp_path / "u.zarr", setup["encoder"],
                       ExtractOptions(grid=Grid(30.0, 32, 16, 4)), progress=False)


def test_viclip_checkpoints_load_by_name_and_refuse_gaps(setup, tmp_path):
    model = setup["encoder"].model
    state = {"module." + k: v for k, v in model.state_dict().items()}   # as a DDP training run saves it
    torch.save({"model": state}, tmp_path / "viclip.pth")
    loaded = load_encoder(str(setup["config"]), checkpoint=tmp_path / "viclip.pth", device="cpu")
    clip = torch.randint(0, 256, (2, 4, 3, 32, 32), dtype=torch.uint8)
    assert np.array_equal(loaded.encode_clips(clip), setup["encoder"].encode_clips(clip))
    texts = ["a person high jumping", "tennis"]
    assert np.array_equal(loaded.encode_texts(texts), setup["encoder"].encode_texts(texts))
    prov = loaded.provenance()
    assert prov["weights_format"] == "viclip" and prov["towers"] == {"image": "viclip.pth", "text": "viclip.pth"}

    # No token embedding: videos extract, class names are refused naming it, --text-checkpoint fills it.
    no_tokens = {k: v for k, v in state.items() if k != "module.text_encoder.token_embedding.weight"}
    torch.save({"model": no_tokens}, tmp_path / "no_tokens.pth")
    partial = load_encoder(str(setup["config"]), checkpoint=tmp_path / "no_tokens.pth", device="cpu")
    assert np.array_equal(partial.encode_clips(clip), loaded.encode_clips(clip))
    good = videos_named(list(setup["videos"].iterdir()), "carphone_distorted")["carphone_distorted"]
    store = tmp_path / "s.zarr"
    extract_videos(collect_videos([good]), store, partial, ExtractOptions(grid=GRID), progress=False)
    (tmp_path / "classes.txt").write_text("High Jump\n")
    args = ["text", "--store", str(store), "--classes", str(tmp_path / "classes.txt"), "--name", "v",
            "--model", str(setup["config"]), "--checkpoint", str(tmp_path / "no_tokens.pth")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "has no text_encoder.token_embedding.weight" in res.output and "--text-checkpoint" in res.output
    res = CliRunner().invoke(main, args + ["--text-checkpoint", str(tmp_path / "viclip.pth")])
    assert res.exit_code == 0, res.output
    with open_store(store) as s:
        np.testing.assert_allclose(s.vocabulary("v").embeddings, loaded.encode_texts(["High Jump"]), atol=1e-6)

    missing = dict(state)
    del missing["module.vision_encoder.temporal_positional_embedding"]
    torch.save({"model": missing}, tmp_path / "missing.pth")
    with pytest.raises(EncoderError, match=r"module\.vision_encoder\.temporal_positional_embedding: missing"):
        load_encoder(str(setup["config"]), checkpoint=tmp_path / "missing.pth", device="cpu")
    reshaped = dict(state)
    reshaped["module.vision_encoder.temporal_positional_embedding"] = torch.zeros(1, 8, 64)
    torch.save({"model": reshaped}, tmp_path / "reshaped.pth")
    with pytest.raises(EncoderError, match=r"temporal_positional_embedding: shape \[1, 8, 64\] but tiny-viclip needs"):
        load_encoder(str(setup["config"]), checkpoint=tmp_path / "reshaped.pth", device="cpu")
    with pytest.raises(EncoderError, match="cannot be loaded into ViT-B-16; use --model ViCLIP-B-16"):
        load_encoder("ViT-B-16", checkpoint=tmp_path / "viclip.pth", device="cpu")


def test_viclip_b16_has_the_published_shapes():
    """ViCLIP-B/16 with random weights: the tensor shapes of the released checkpoints, 8 frames at 224 px in,
    one 512-d embedding out."""
    enc = load_encoder("ViCLIP-B-16", "none", device="cpu")
    shapes = {k: list(v.shape) for k, v in enc.model.state_dict().items()}
    assert shapes["vision_encoder.conv1.weight"] == [768, 3, 1, 16, 16]
    assert shapes["vision_encoder.temporal_positional_embedding"] == [1, 8, 768]
    assert shapes["vision_encoder.positional_embedding"] == [197, 768]
    assert shapes["vision_encoder.proj"] == [768, 512]
    assert shapes["vision_encoder.transformer.resblocks.11.attn.in_proj_weight"] == [2304, 768]
    assert shapes["text_encoder.positional_embedding"] == [32, 512]
    assert shapes["text_encoder.token_embedding.weight"] == [49408, 512]
    assert shapes["text_encoder.text_projection"] == [512, 512] and shapes["temp"] == []
    assert len(shapes) == 153 + 149 + 1, "vision, text and temp tensors of the released checkpoints"
    assert (enc.clip_frames, enc.dim, enc.preprocess.size) == (8, 512, (224, 224))
    emb = enc.encode_clips(torch.randint(0, 256, (1, 8, 3, 224, 224), dtype=torch.uint8))
    assert emb.shape == (1, 512) and abs(np.linalg.norm(emb) - 1) < 1e-5
    with pytest.raises(EncoderError, match="--checkpoint FILE"):
        load_encoder("ViCLIP-B-16", device="cpu")
