"""tools/bench_gpu.py runs end to end on a CPU at small sizes (the GPU run is the same code at full size)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import videos_named

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.mark.slow
def test_bench_gpu_small_on_cpu(real_videos, tmp_path):
    picked = videos_named(real_videos, "carphone_distorted", "bigbuckbunny")
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(TOOLS / "bench_gpu.py"), "--device", "cpu", "--small",
                           "--videos", *map(str, picked.values()), "--decode-workers", "1,2", "--out", str(out),
                           "--work", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["info"]["device"] == "cpu" and report["small"] is True

    train = report["training"]
    assert train["amp"] == "off (cpu)" and train["videos"] == 8
    for batching in ("length", "max"):
        assert train[batching]["it_per_s"] > 0 and train[batching]["iterations"] == 2
        assert 0 < train[batching]["valid_rows_per_it"] <= 2 * train["max_seq_len"]  # batch 2, cropped clips

    pseudo = report["pseudo"]
    assert pseudo["videos"] == 6 and pseudo["videos_per_s"] > 0

    ext = report["extraction"]
    assert ext["model"] == "tiny-clip" and ext["precision"] == "fp32" and ext["videos"] == 2
    assert ext["jobs"] == 2 * ext["repeat"] and ext["encoder_only_snippets_per_s"] > 0
    for workers in ("1", "2"):  # every job decoded and extracted whatever the number of decode threads
        assert ext["end_to_end"][workers]["snippets"] == ext["decode_only"][workers]["snippets"] > 0
        assert ext["end_to_end"][workers]["frames"] == ext["decode_only"][workers]["frames"]
    assert "wrote" in done.stdout and "decode workers" in done.stdout
