"""A real tal-train process killed with SIGKILL after a checkpoint resumes from that epoch."""

import csv
import os
import signal
import subprocess
import sys
import time

import torch

from test_train_support import make_benchmark

TINY = ["model.embd_dim=16", "model.fpn_dim=16", "model.head_dim=16", "model.max_seq_len=64",
        "data.num_workers=0", "train.batch_size=4", "train.warmup_epochs=1"]


def _cmd(store, ann, out, epochs, *extra):
    sets = [a for s in TINY for a in ("--set", s)]
    return [sys.executable, "-m", "tal.cli.train", "--features", str(store), "--annotations", str(ann),
            "--preset", "small", "--mode", "agnostic", "--epochs", str(epochs), "--out", str(out),
            "--no-progress", *sets, *extra]


def _epoch(ckpt):
    try:
        return torch.load(ckpt, weights_only=True)["epoch"]
    except Exception:  # not there yet
        return 0


def test_resume_after_sigkill(tmp_path):
    store, ann, _ = make_benchmark(tmp_path, n_videos=4, dim=16, rows=(48, 96))
    run, ckpt = tmp_path / "run", tmp_path / "run" / "last.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    total = 1 + 7
    proc = subprocess.Popen(_cmd(store, ann, run, 7), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while _epoch(ckpt) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _epoch(ckpt)
    assert proc.returncode == -signal.SIGKILL and 1 <= killed_at < total, proc.stderr.read().decode()[-2000:]

    done = subprocess.run(_cmd(store, ann, run, 7, "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed_from = int(done.stderr.split("after epoch ")[1].split()[0])
    assert killed_at <= resumed_from < total
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == total
    assert [row["epoch"] for row in state["history"]] == list(range(1, total + 1))
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, total + 1))
    assert not list(run.glob(".*.tmp"))

    again = subprocess.run(_cmd(store, ann, run, 7), env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "--resume" in again.stderr and "Traceback" not in again.stderr
