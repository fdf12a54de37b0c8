"""GPU check of the ViFi-CLIP and ViCLIP paths at full size (random weights, written to temporary files in each
layout): extract the real sample videos on the paper's grid (30 fps, 16-frame windows, stride 4) with CUDA fp16,
validate the stores, compare one video's rows with an fp32 CPU run (cosine), and print snippets/s.

    .venv/bin/python tools/check_encoders_gpu.py            # needs a CUDA device; about 2-4 minutes
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_extract import sample_videos  # noqa: E402
from features.encoders import load_encoder  # noqa: E402
from features.extract import ExtractOptions, collect_videos, extract_videos  # noqa: E402
from features.store import Grid, open_store  # noqa: E402
from features.store.ops import validate  # noqa: E402


def write_checkpoints(folder: Path) -> dict:
    """A random ViT-B-16 in ViFi-CLIP's training-checkpoint layout and a random ViCLIP-B-16 in ViCLIP's."""
    import open_clip

    torch.manual_seed(0)
    state = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True).state_dict()
    vifi = {("module.image_encoder." + k[7:] if k.startswith("visual.") else
             "module.logit_scale" if k == "logit_scale" else "module.text_encoder." + k): v
            for k, v in state.items() if k != "token_embedding.weight"}
    torch.save({"model": vifi, "epoch": 0}, folder / "vifi.pth")
    viclip = load_encoder("ViCLIP-B-16", "none", device="cpu").model.state_dict()
    torch.save({"model": viclip}, folder / "viclip.pth")
    return {"ViT-B-16": (folder / "vifi.pth", 4), "ViCLIP-B-16": (folder / "viclip.pth", 2)}


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    if not torch.cuda.is_available():
        print("no CUDA device: this check is for a GPU machine")
        return 2
    videos = sample_videos()
    jobs = collect_videos(videos)
    smallest = min(videos, key=lambda p: p.stat().st_size).stem
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for model, (checkpoint, frame_step) in write_checkpoints(tmp).items():
            grid = Grid(fps=30.0, window=16, stride=4, frame_step=frame_step)
            rows = {}
            for device in ("cuda", "cpu"):
                enc = load_encoder(model, checkpoint=checkpoint, device=device)
                store = tmp / f"{model}-{device}.h5"
                todo = jobs if device == "cuda" else [j for j in jobs if j.video_id == smallest]
                if device == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                summary = extract_videos(todo, store, enc, ExtractOptions(grid=grid, batch_size=64), progress=False)
                seconds = time.perf_counter() - started
                with open_store(store) as s:
                    problems = validate(s)
                    rows[device] = s.read(smallest).astype(np.float32)
                print(f"{model} {device} {enc.precision}: {summary.snippets} snippets in {seconds:.1f} s "
                      f"({summary.snippets / seconds:.1f} snippets/s), exit {summary.exit_code}, "
                      f"validate: {'OK' if not problems else problems[:3]}")
                failed |= bool(problems) or summary.exit_code != 0
            a, b = rows["cuda"], rows["cpu"]
            cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            print(f"{model}: {smallest} fp16 CUDA vs fp32 CPU cosine min {cos.min():.5f} (want >= 0.99)")
            failed |= bool(cos.min() < 0.99)
    print("FAIL" if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
