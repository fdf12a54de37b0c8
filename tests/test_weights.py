"""ViFi-CLIP checkpoints on open_clip's ViT-B-16: the layout ViFi-CLIP's training writes, built here from a random
ViT-B-16 (real open_clip model, real torch files), loads bit-identically to the same weights in open_clip's layout;
a missing, reshaped or unknown tensor is refused with its key named; --text-checkpoint fills the text tower's gap."""

import argparse
import hashlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import videos_named

from features.encoders import EncoderError, load_encoder
from features.extract_cli import main
from features.store import open_store
from features.store.ops import validate

GRID_ARGS = ["--num-frames", "32", "--stride", "16", "--frame-step", "16"]


def vificlip_layout(state: dict) -> dict:
    """An open_clip CLIP state dict as ViFi-CLIP's ViFiCLIP module names it (trainers/vificlip.py): CLIP's visual
    as image_encoder, its text transformer without the token embedding as text_encoder, the prompt buffer of the
    training classes, all behind DDP's module. prefix."""
    out = {}
    for key, value in state.items():
        if key.startswith("visual."):
            out["module.image_encoder." + key[len("visual."):]] = value
        elif key == "logit_scale":
            out["module.logit_scale"] = value
        elif key != "token_embedding.weight":
            out["module.text_encoder." + key] = value
    out["module.prompt_learner.complete_text_embeddings"] = torch.zeros(4, 77, state["ln_final.weight"].shape[0])
    return out


def save_training_checkpoint(path, model_state: dict) -> None:
    """As ViFi-CLIP's epoch_saving does: weights beside optimizer state and non-tensor objects (its yacs config;
    here an argparse.Namespace and a numpy scalar, which torch.load(weights_only=True) does not accept)."""
    torch.save({"model": model_state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5}]},
                "lr_scheduler": {}, "max_accuracy": np.float64(0.71), "epoch": 9,
                "config": argparse.Namespace(arch="ViT-B/16", num_frames=16)}, path)


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """One random ViT-B-16, written once in open_clip's layout and once in ViFi-CLIP's (float16 keeps files small)."""
    import open_clip

    root = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None)
    state = {k: v.half() for k, v in model.state_dict().items()}
    torch.save(state, root / "open_clip_layout.pt")
    save_training_checkpoint(root / "vifi.pth", vificlip_layout(state))
    return {"root": root, "state": state, "open_clip": root / "open_clip_layout.pt", "vifi": root / "vifi.pth"}


def test_vificlip_layout_gives_bit_identical_features(vit):
    plain = load_encoder("ViT-B-16", checkpoint=vit["open_clip"], device="cpu")
    # The ViFi-CLIP file lacks the token embedding; --text-checkpoint supplies it (and nothing else).
    vifi = load_encoder("ViT-B-16", checkpoint=vit["vifi"], text_checkpoint=vit["open_clip"], device="cpu")
    ours, theirs = vifi.model.state_dict(), plain.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], v) for k, v in theirs.items())
    pixels = torch.randn(3, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(vifi.model.encode_image(pixels), plain.model.encode_image(pixels))
    texts = ["a video of a person high jump.", "tennis swing"]
    assert np.array_equal(vifi.encode_texts(texts), plain.encode_texts(texts))

    prov = vifi.provenance()
    assert prov["pretrained"] == "sha256:" + hashlib.sha256(vit["vifi"].read_bytes()).hexdigest()
    assert (prov["weights_format"], prov["checkpoint_file"], prov["quick_gelu"]) == ("vificlip", "vifi.pth", True)
    assert prov["towers"] == {"image": "vifi.pth", "text": "vifi.pth + token_embedding.weight from open_clip_layout.pt"}
    assert prov["text_checkpoint_sha256"] == "sha256:" + hashlib.sha256(vit["open_clip"].read_bytes()).hexdigest()
    # ViFi-CLIP's own evaluation transform: short side 256, centre crop 224, ImageNet statistics.
    assert prov["preprocess"]["short_side"] == 256 and prov["preprocess"]["mean"] == [0.485, 0.456, 0.406]
    # OpenAI CLIP (what ViFi-CLIP starts from) uses QuickGELU; a plain open_clip ViT-B-16 would not.
    assert plain.provenance()["quick_gelu"] is True


@pytest.fixture(scope="module")
def image_tower(vit):
    """The image tower alone in ViFi-CLIP's layout: enough for video features, small to rewrite per case."""
    return {k: v for k, v in vificlip_layout(vit["state"]).items() if k.startswith("module.image_encoder.")}


@pytest.mark.parametrize("case", ["missing", "reshaped", "prompt-learner", "wrong-architecture"])
def test_a_missing_reshaped_or_unknown_tensor_is_refused_with_its_key(vit, image_tower, tmp_path, case):
    state = dict(image_tower)
    if case == "missing":
        key = "module.image_encoder.transformer.resblocks.5.mlp.c_fc.bias"
        del state[key]
        expect = key + r": missing .*visual\.transformer\.resblocks\.5\.mlp\.c_fc\.bias"
    elif case == "reshaped":
        key = "module.image_encoder.positional_embedding"
        state[key] = state[key][:-1]
        expect = key + r": shape \[196, 768\] but ViT-B-16 needs \[197, 768\]"
    elif case == "prompt-learner":   # a ViFi-CLIP prompt-learning variant: visual prompt tokens
        key = "module.image_encoder.VPT"
        state[key] = torch.zeros(8, 768)
        expect = key + ": this tensor has no place in ViT-B-16"
    else:                            # ViT-B-16 weights offered to ViT-B-32
        expect = r"module\.image_encoder\.positional_embedding: shape \[197, 768\] but ViT-B-32 needs \[50, 768\]"
    path = tmp_path / "bad.pth"
    save_training_checkpoint(path, state)
    with pytest.raises(EncoderError, match=expect) as err:
        load_encoder("ViT-B-32" if case == "wrong-architecture" else "ViT-B-16", checkpoint=path, device="cpu")
    assert str(path) in str(err.value) and "\n" not in str(err.value)

    if case == "missing":  # forcing the other layout names the first tensor it cannot place
        with pytest.raises(EncoderError, match=r"module\.(image|text)_encoder\.\S+: this tensor has no place"):
            load_encoder("ViT-B-16", checkpoint=vit["vifi"], weights_format="open_clip", device="cpu")


def test_cli_extracts_with_vificlip_then_embeds_text_with_a_text_checkpoint(vit, real_videos, tmp_path):
    video = videos_named(real_videos, "carphone_distorted")["carphone_distorted"]
    store = tmp_path / "vifi.zarr"
    runner = CliRunner()
    res = runner.invoke(main, ["videos", str(video), "--store", str(store), "--checkpoint", str(vit["vifi"]),
                               "--batch-size", "8", "--no-progress", *GRID_ARGS])
    assert res.exit_code == 0, res.output
    with open_store(store) as s:
        assert validate(s) == [] and s.read("carphone_distorted").shape == (6, 512)
        assert s.provenance["weights_format"] == "vificlip"
        assert s.provenance["towers"] == {"image": "vifi.pth", "text": "incomplete (no token_embedding.weight)"}
    classes = tmp_path / "classes.txt"
    classes.write_text("High Jump\nBiking\n")
    res = runner.invoke(main, ["text", "--store", str(store), "--classes", str(classes), "--name", "demo",
                               "--checkpoint", str(vit["vifi"]), "--template", "a photo of a {}.",
                               "--text-checkpoint", str(vit["open_clip"])])
    assert res.exit_code == 0, res.output
    with open_store(store) as s:
        vocab = s.vocabulary("demo")
    assert vocab.provenance["towers"]["text"].endswith("token_embedding.weight from open_clip_layout.pt")
    assert vocab.provenance["text_checkpoint_file"] == "open_clip_layout.pt"
    assert vocab.provenance["templates"] == ["a photo of a {}."]
