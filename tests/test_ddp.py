"""Two-process DDP on CPU (gloo) through a real torchrun: shards, one writer, a usable checkpoint."""

import os
import subprocess
import sys

import torch

from test_train_support import make_benchmark


def test_torchrun_two_processes(tmp_path):
    store, ann, _ = make_benchmark(tmp_path, n_videos=8, dim=16, rows=(48, 96))
    out = tmp_path / "ddp"
    sets = ["model.embd_dim=16", "model.fpn_dim=16", "model.head_dim=16", "model.max_seq_len=64",
            "data.num_workers=0", "train.batch_size=2", "train.warmup_epochs=0"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "tal.cli.train", "--features", str(store), "--annotations", str(ann), "--preset", "small",
           "--mode", "agnostic", "--epochs", "2", "--out", str(out), "--no-progress",
           *[a for s in sets for a in ("--set", s)]]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("2 process(es)") == 1  # rank 1 logs warnings only
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 2
    # 8 videos split over 2 ranks at batch 2: 2 iterations per rank per epoch (one process would need 4)
    assert state["scheduler"]["steps_per_epoch"] == 2 and state["scheduler"]["step"] == 4
    assert [row["epoch"] for row in state["history"]] == [1, 2]
    # only rank 0 writes: one checkpoint, one log line per epoch
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".pt") == ["last.pt"]
    assert (out / "log.csv").read_text().count("\n") == 3
    assert (out / "train.log").read_text().count("epoch 2/2") == 1
