"""`tal-store` commands on real stores and the real sample features in ../shared/data/real-features."""

import json
import os
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from features.store import Grid, StoreError, VideoInfo, create_store, open_store
from features.store.ops import filename_to_id, id_to_filename
from features.store_cli import main

GRID = Grid(fps=30.0, window=16, stride=4, frame_step=4)
PROV = {"encoder": "ViT-B-32", "pretrained": "random", "image_size": 224, "preprocess": "resize-center-crop",
        "normalise": "l2-mean-of-l2", "fps": 30.0, "window": 16, "stride": 4, "frame_step": 4}


@pytest.fixture(params=[".zarr", ".h5"], ids=["zarr", "hdf5"])
def suffix(request):
    return request.param


def run(*args, ok=True):
    res = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert res.exit_code == 0, res.output
    else:
        assert res.exit_code != 0, res.output
        assert "Traceback" not in res.output
    return res


def info_for(t):
    n = (t - 1) * GRID.stride + GRID.window
    return VideoInfo(num_rows=t, fps=29.97, duration=n / GRID.fps, num_frames=n, grid=GRID)


def small_store(path, ids, seed=0, provenance=PROV):
    rng = np.random.default_rng(seed)
    with create_store(path, dim=8, provenance=provenance) as s:
        for vid in ids:
            t = int(rng.integers(1, 30))
            s.write_video(vid, rng.standard_normal((t, 8)), info_for(t))
    return path


def contents(path):
    with open_store(path) as s:
        vocab = {n: (s.vocabulary(n).classes, s.vocabulary(n).embeddings.tolist(), s.vocabulary(n).template)
                 for n in s.vocabulary_names()}
        return (s.video_ids(), [s.read(v).tolist() for v in s.video_ids()], [s.info(v) for v in s.video_ids()],
                s.provenance, s.dtype, s.failures(), vocab)


@settings(max_examples=150, deadline=None)
@given(st.text(min_size=1, max_size=60))
def test_id_to_filename_is_safe_and_reversible(vid):
    try:
        name = id_to_filename(vid)
    except StoreError as exc:  # only ids whose encoding exceeds a file name's 255 bytes
        escapes = sum(vid.count(c) for c in "%/\0") + vid.startswith(".")
        assert "too long for a file name" in str(exc) and len(vid.encode()) + 2 * escapes + 4 > 255
        return
    assert "/" not in name and "\0" not in name and not name.startswith(".") and len(name.encode()) <= 255
    assert filename_to_id(name) == vid


def test_export_names_are_the_ids_as_actionformer_and_opentad_expect():
    """Only "/", NUL, a leading "." and "%" are escaped; everything else stays as the id is written."""
    for vid, name in [("video_test_0000004", "video_test_0000004.npy"), ("v_-bJ8kAVM2mE", "v_-bJ8kAVM2mE.npy"),
                      ("sports/tennis 26", "sports%2Ftennis 26.npy"), ("clip (1) é", "clip (1) é.npy"),
                      ("50%", "50%25.npy"), (".hidden.mp4", "%2Ehidden.mp4.npy"), ("..", "%2E..npy"),
                      ("a\0b", "a%00b.npy"), ("x%2Fy", "x%252Fy.npy")]:
        assert id_to_filename(vid) == name and filename_to_id(name) == vid
    # names that were never escaped by stovtal come back as they are (no general percent-decoding)
    assert filename_to_id("a%20b.npy") == "a%20b" and filename_to_id("mid%2Edot.npz") == "mid%2Edot"


def test_import_info_validate_export_round_trip(tmp_path, shared_data, suffix):
    src = tmp_path / "npy"
    src.mkdir()
    feats = shared_data / "real-features" / "sazzadadib__CSE499A--BBFormer" / "features"
    shutil.copy(feats / "highjump.npy", src / "highjump.npy")
    shutil.copy(feats / "tennis26.npy", src / f"{id_to_filename('sports/tennis 26')}")
    store = tmp_path / f"s{suffix}"
    run("import-npy", src, store, "--fps", 30, "--stride", 4, "--window", 16)
    info = json.loads(run("info", store, "--json").output)
    assert info["videos"] == 2 and info["dim"] == 2048 and info["dtype"] == "float16"
    assert info["bytes"] > 0 and info["failures"] == {} and info["vocabularies"] == {}
    assert info["provenance"]["encoder"] == "external" and info["provenance"]["stride"] == 4
    assert "videos:     2" in run("info", store).output
    assert "OK (2 videos)" in run("validate", store).output
    with open_store(store) as s:
        assert s.video_ids() == ["highjump", "sports/tennis 26"]
        assert s.info("highjump").num_rows == 164 and s.info("highjump").num_frames == -1
    out = tmp_path / "out"
    run("export-npy", store, out)
    assert sorted(os.listdir(out)) == ["highjump.npy", "sports%2Ftennis 26.npy"]
    back = np.load(out / "highjump.npy")
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, np.load(feats / "highjump.npy").astype(np.float16).astype(np.float32))
    # re-importing the export gives the same store content
    again = tmp_path / f"again{suffix}"
    run("import-npy", out, again, "--fps", 30, "--stride", 4, "--window", 16)
    a, b = contents(store), contents(again)
    assert a[0] == b[0] and a[1] == b[1] and a[2] == b[2]


def test_import_npz_and_bad_files_are_recorded(tmp_path, shared_data, suffix):
    src = tmp_path / "in"
    src.mkdir()
    npz = shared_data / "real-features" / "sommaanny__AI-final-project" / "features" / "clip_video_features"
    shutil.copy(npz / "qtyBzFV9yTs_60.0_210.0.npz", src / "qvh.npz")
    (src / "text.npy").write_text("not numpy")
    np.save(src / "cube.npy", np.zeros((2, 3, 4)))
    np.save(src / "wrongdim.npy", np.zeros((5, 7)))
    np.save(src / "nan.npy", np.full((3, 512), np.nan))
    store = tmp_path / f"s{suffix}"
    res = run("import-npy", src, store, "--fps", 0.5, "--stride", 1, "--window", 1, ok=False)
    assert "5 file(s)" not in res.output and "4 file(s) could not be imported" in res.output
    with open_store(store) as s:
        assert s.video_ids() == ["qvh"] and s.read("qvh").shape == (75, 512)
        fails = s.failures()
        assert set(fails) == {"text", "cube", "wrongdim", "nan"}
        assert "cube.npy" in fails["cube"] and "NaN" in fails["nan"] and "[T, 512]" in fails["wrongdim"]
    # resumable: a rerun imports nothing new and fails the same files again
    run("import-npy", src, store, "--fps", 0.5, "--stride", 1, "--window", 1, ok=False)
    assert len(open_store(store)) == 1


def test_convert_both_ways_is_identical(tmp_path, suffix):
    other = ".h5" if suffix == ".zarr" else ".zarr"
    src = small_store(tmp_path / f"a{suffix}", ["x", "y/../z", "ü ü"])
    with open_store(src, "a") as s:
        s.add_failure("broken", "truncated mp4")
        s.add_vocabulary("thumos14", ["a", "b"], np.eye(2, 8), template="a video of a person {}.")
    mid, back = tmp_path / f"b{other}", tmp_path / f"c{suffix}"
    run("convert", src, mid)
    run("convert", mid, back)
    assert contents(src) == contents(mid) == contents(back)
    res = run("convert", src, mid, ok=False)
    assert "already exists" in res.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_add_vocab_and_dimension_mismatch(tmp_path, suffix):
    store = small_store(tmp_path / f"s{suffix}", ["a"])
    (tmp_path / "classes.txt").write_text("High jump\nGolf swing\n")
    np.save(tmp_path / "good.npy", np.random.default_rng(0).standard_normal((2, 8)))
    np.save(tmp_path / "bad.npy", np.ones((2, 16)))
    run("add-vocab", store, "--name", "demo", "--classes", tmp_path / "classes.txt",
        "--embeddings", tmp_path / "good.npy", "--template", "a video of {}.")
    res = run("add-vocab", store, "--name", "x", "--classes", tmp_path / "classes.txt",
              "--embeddings", tmp_path / "bad.npy", ok=False)
    assert "[K, 8]" in res.output and "[2, 16]" in res.output
    info = json.loads(run("info", store, "--json").output)
    assert list(info["vocabularies"]) == ["demo"] and info["vocabularies"]["demo"]["classes"] == 2


def test_merge_shards(tmp_path, suffix):
    a = small_store(tmp_path / f"a{suffix}", ["v1", "v2"], seed=1)
    b = small_store(tmp_path / f"b{suffix}", ["v3"], seed=2)
    with open_store(b, "a") as s:
        s.add_failure("v9", "zero-byte file")
    dst = tmp_path / f"all{suffix}"
    run("merge", dst, a, b)
    run("merge", dst, a, b)  # rerun: nothing to add, no error
    with open_store(dst) as m, open_store(a) as sa, open_store(b) as sb:
        assert m.video_ids() == ["v1", "v2", "v3"] and m.failures() == {"v9": "zero-byte file"}
        np.testing.assert_array_equal(m.read("v3"), sb.read("v3"))
        assert m.provenance == sa.provenance
    # same id with different rows -> clear error, nothing written
    c = small_store(tmp_path / f"c{suffix}", ["v1"], seed=3)
    res = run("merge", tmp_path / f"x{suffix}", a, c, ok=False)
    assert "video 'v1' differs" in res.output and not (tmp_path / f"x{suffix}").exists()
    # different provenance -> clear error naming the field
    d = small_store(tmp_path / f"d{suffix}", ["v7"], provenance={**PROV, "encoder": "ViT-B-16"})
    res = run("merge", dst, d, ok=False)
    assert "provenance differs" in res.output and "encoder" in res.output


def test_validate_names_each_bad_entry(tmp_path, suffix):
    store = tmp_path / f"s{suffix}"
    with create_store(store, dim=8, provenance=PROV) as s:
        s.write_video("good", np.ones((5, 8)), info_for(5))
        # 5 rows, but 10 s at 30 fps on a 16/4 grid would give 72 snippets
        s.write_video("too short", np.ones((5, 8)), VideoInfo(5, 30.0, 10.0, 300, GRID))
        s.write_video("will be nan", np.ones((3, 8)), info_for(3))
        start = s.num_rows - 3
    # corrupt committed rows behind the store's back
    with open_store(store) as s:
        if suffix == ".h5":
            off = s._b._offset["rows"] + (start + 1) * 8 * 2
        else:
            arr = s._b._arrays["rows"]
    if suffix == ".h5":
        fd = os.open(store, os.O_RDWR)
        os.pwrite(fd, np.full(8, np.nan, "<f2").tobytes(), off)
        os.close(fd)
    else:
        import zarr
        arr = zarr.open_array(store / "rows", mode="r+")
        arr[start + 1] = np.nan
    res = run("validate", store, ok=False)
    assert "video 'too short'" in res.output and "72" in res.output
    assert "video 'will be nan': non-finite" in res.output
    assert "'good'" not in res.output and "2 problem(s) in 3 videos" in res.output


def test_missing_or_foreign_store_is_a_one_line_error(tmp_path):
    for cmd in (["info"], ["validate"], ["export-npy"]):
        args = cmd + [tmp_path / "nope.zarr"] + ([tmp_path / "o"] if cmd == ["export-npy"] else [])
        res = run(*args, ok=False)
        assert "no such store" in res.output and res.output.count("\n") == 1
    res = run("info", tmp_path / "x.txt", ok=False)
    assert "unknown store type" in res.output


def test_convert_cleans_up_after_an_interrupted_convert(tmp_path, suffix):
    other = ".h5" if suffix == ".zarr" else ".zarr"
    src = small_store(tmp_path / f"a{suffix}", ["x"])
    # what a SIGKILLed convert leaves: a half-built store under the temporary name, its lock free
    abandoned = tmp_path / f".b.converting-dead{other}"
    small_store(abandoned, ["partial"])
    run("convert", src, tmp_path / f"b{other}")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert contents(src)[:3] == contents(tmp_path / f"b{other}")[:3]


def test_class_name_files_one_rule(tmp_path):
    """Every --classes file is read by features.class_names: comments, blanks, duplicates, encoding."""
    from features.class_names import ClassNamesError, read_class_names

    good = tmp_path / "good.txt"
    good.write_text("  High jump \n\n# a comment\nGolf swing\n   # indented comment\n", encoding="utf-8")
    assert read_class_names(good) == ["High jump", "Golf swing"]
    for name, text, why in (("dup.txt", "a\nb\n a \n", "dup.txt:3: class 'a' listed twice (first on line 1)"),
                            ("empty.txt", "# only\n\n", "no class names"),
                            ("latin1.txt", "caf\xe9\n", "not UTF-8")):
        path = tmp_path / name
        path.write_bytes(text.encode("latin-1"))
        with pytest.raises(ClassNamesError, match=re.escape(why)):
            read_class_names(path)
    with pytest.raises(ClassNamesError, match="missing.txt: cannot read"):
        read_class_names(tmp_path / "missing.txt")
