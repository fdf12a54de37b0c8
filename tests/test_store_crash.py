"""A writer SIGKILLed at random moments never leaves a broken store (real subprocesses, both backends)."""

import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from features.store import Grid, VideoInfo, create_store, open_store
from features.store.ops import validate

DIM = 32
KILLS = 4

# The child appends deterministic videos forever (resuming after the last committed one), with
# failures and vocabularies in between, until it is killed.
WRITER = r"""
import sys
import numpy as np
from features.store import Grid, VideoInfo, open_store
g = Grid(fps=30.0, window=16, stride=4, frame_step=4)
s = open_store(sys.argv[1], "a")
print("ready", flush=True)
i = len(s)
while True:
    t = (i * 37) % 300 + 1
    rows = np.random.default_rng(i).standard_normal((t, DIM))
    n = (t - 1) * 4 + 16
    s.write_video(f"dir/../v{i} é", rows, VideoInfo(t, 30.0, n / 30.0, n, g))
    if i % 5 == 0:
        s.add_failure(f"bad{i}", "reason " * (i % 50))
    if i % 17 == 0:
        s.add_vocabulary(f"voc{i % 3}", ["a", "b"], np.random.default_rng(i).standard_normal((2, DIM)))
    i += 1
""".replace("DIM", str(DIM))


def expected_rows(i):
    t = (i * 37) % 300 + 1
    return np.random.default_rng(i).standard_normal((t, DIM)).astype(np.float16)


@pytest.mark.parametrize("suffix", [".zarr", ".h5"], ids=["zarr", "hdf5"])
def test_sigkill_at_random_moments_leaves_a_valid_store(tmp_path, suffix):
    path = tmp_path / f"store{suffix}"
    create_store(path, dim=DIM, provenance={"encoder": "simulated"}).close()
    rng = random.Random()
    previous = 0
    for attempt in range(KILLS):
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        # random moments; the last run lives long enough to commit something even on a busy machine
        delay = rng.uniform(0.0, 0.5) if attempt < KILLS - 1 else rng.uniform(0.8, 1.2)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:  # readers open freely while the writer appends
            with open_store(path) as live:
                n = len(live)
                if n:
                    np.testing.assert_array_equal(live.read(live.video_ids()[-1]), expected_rows(n - 1))
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL, f"writer ended by itself: {child.stderr.read()}"
        with open_store(path) as s:
            where = f"attempt {attempt}, killed after {delay:.3f}s, {len(s)} videos"
            assert validate(s) == [], where
            ids = s.video_ids()
            assert len(ids) >= previous, where
            assert ids == [f"dir/../v{i} é" for i in range(len(ids))], where
            for i in sorted({0, len(ids) // 2, len(ids) - 1}) if ids else []:
                np.testing.assert_array_equal(s.read(ids[i]), expected_rows(i), err_msg=where)
            assert set(s.failures()) <= {f"bad{i}" for i in range(0, len(ids) + 1, 5)}, where
            for name in s.vocabulary_names():
                assert s.vocabulary(name).embeddings.shape == (2, DIM)
            previous = len(ids)
    assert previous > 0, "the writer never committed a video"
    # The next writer takes over cleanly and leaves no temporary files behind.
    with open_store(path, "a") as s:
        assert len(s) == previous
    leftovers = [p for p in path.parent.rglob("*") if p.name.endswith((".partial", ".tmp"))]
    assert leftovers == []
    assert sorted(p.name for p in tmp_path.iterdir()) in ([path.name], [path.name, path.name + ".lock"])


# The child writes three videos, then dies by SIGKILL at a chosen point inside the fourth write.
KILL_AT = r"""
import os, signal, sys
import numpy as np
from features.store import Grid, VideoInfo, open_store, backend_hdf5, backend_zarr
g = Grid(fps=30.0, window=16, stride=4)
cls = {"zarr": backend_zarr.ZarrBackend, "hdf5": backend_hdf5.Hdf5Backend}[sys.argv[2]]
s = open_store(sys.argv[1], "a")
for i in range(3):
    s.write_video(f"v{i}", np.full((300, 8), i), VideoInfo(300, 30.0, 1212 / 30, 1212, g))
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
if sys.argv[3] == "rebuild":
    backend_hdf5._copy_range = die          # the HDF5 file is being rebuilt bigger
else:
    setattr(cls, sys.argv[3], die)          # e.g. rows written, index or commit not yet
s.write_video("v3", np.full((5000, 8), 3), VideoInfo(5000, 30.0, 20012 / 30, 20012, g))
"""


@pytest.mark.parametrize("suffix,point", [(".zarr", "write_commit"), (".h5", "write_index"), (".h5", "rebuild")])
def test_sigkill_at_each_step_of_a_write(tmp_path, suffix, point):
    path = tmp_path / f"store{suffix}"
    create_store(path, dim=8, provenance={"encoder": "simulated"}).close()
    kind = "zarr" if suffix == ".zarr" else "hdf5"
    child = subprocess.run([sys.executable, "-c", KILL_AT, str(path), kind, point], capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    with open_store(path) as s:
        assert s.video_ids() == ["v0", "v1", "v2"] and validate(s) == []
    if point == "rebuild":
        assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # the abandoned bigger copy
    with open_store(path, "a") as s:  # the next writer overwrites what the dead one left past the commit
        s.write_video("new", np.full((7, 8), 9), VideoInfo(7, 30.0, 40 / 30, 40, Grid(30.0, 16, 4)))
    with open_store(path) as s:
        assert s.video_ids() == ["v0", "v1", "v2", "new"] and validate(s) == []
        assert (s.read("new") == 9).all() and (s.read("v2") == 2).all()
    assert not any(p.name.endswith((".tmp", ".partial")) for p in tmp_path.rglob("*"))
