"""No path of any command ends in a traceback on user input: every CLI, with a handful of wrong inputs, exits
non-zero with an `Error:` line and no traceback. The cases run in-process (click's runner: an exception that
escapes the command is what a user would see as a traceback), and one case per command also runs as the user
runs it, a real subprocess of the installed console script or ``python -m``."""

import importlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner

from test_train_support import make_benchmark

BIN = Path(sys.executable).parent
MODULES = {"tal-store": "features.store_cli", "tal-extract": "features.extract_cli", "tal-eval": "tal.cli.eval",
           "tal-split": "tal.cli.split", "tal-sim": "tal.cli.sim", "tal-train": "tal.cli.train",
           "tal-infer": "tal.cli.infer", "tal-pseudo": "tal.cli.pseudo", "tal-selftrain": "tal.cli.selftrain",
           "tal.demo": "tal.demo", "tal.study": "tal.study"}

# (command, arguments): names resolve against the fixture folder below. Chosen to reach past click's own
# checks into the library: unreadable and wrong-kind files, impossible values, inconsistent options.
CASES = [
    ("tal-store", "info nope.zarr"),
    ("tal-store", "validate notastore.zarr"),
    ("tal-store", "convert tiny.zarr out.txt"),
    ("tal-store", "import-npy npydir new.zarr --fps -1 --stride 4 --window 16"),
    ("tal-store", "add-vocab tiny.zarr --name x --classes dup.txt --embeddings junk.npy"),
    ("tal-store", "merge merged.zarr tiny.zarr dup/tiny.h5"),
    ("tal-store", "export-npy tiny.zarr afile"),
    ("tal-extract", "videos --store x.zarr nope.mp4 --shard 3/2"),
    ("tal-extract", "videos --store x.zarr --list nope.txt"),
    ("tal-extract", "videos --store x.zarr nope.mp4 --model no-such-arch --pretrained none"),
    ("tal-extract", "text --store tiny.zarr --classes classes.txt --name v"),
    ("tal-extract", "text --store tiny.zarr --classes latin1.txt --name v"),
    ("tal-eval", "--gt bad.json --pred tiny.json"),
    ("tal-eval", "--gt tiny.json --pred tiny.json"),
    ("tal-eval", "--gt tiny.json --pred afile --tiou abc"),
    ("tal-eval", "--gt tiny.json --pred pred.json --split nope:1:2"),
    ("tal-eval", "--gt tiny.zarr --pred pred.json"),
    ("tal-eval", "--gt tiny.json --pred pred.json --json afile/r.json"),
    ("tal-split", "show nope:1:2"),
    ("tal-split", "show afile"),
    ("tal-split", "random --classes classes.txt --novel-fraction 2"),
    ("tal-split", "kinetics --gt bad.json"),
    ("tal-sim", "--out simout --num-classes 2 --curated-train 1 --web 0 --curated-test 0 --web-test 0 --quiet"),
    ("tal-sim", "--out afile/sim --curated-train 1 --web 0 --curated-test 0 --web-test 0 --quiet"),
    ("tal-train", "--features tiny.zarr --annotations bad.json --out run"),
    ("tal-train", "--features tiny.zarr --annotations tiny.json --out run --set train.lr=abc"),
    ("tal-train", "--features tiny.zarr --annotations tiny.json --out run --preset small --set model.n_head=3"),
    ("tal-train", "--features tiny.zarr --annotations tiny.json --out run --init-from afile"),
    ("tal-train", "--features tiny.zarr --annotations tiny.json --out run --subset nope"),
    ("tal-train", "--features tiny.zarr --features dup/tiny.h5 --annotations tiny.json --out run"),
    ("tal-infer", "--features tiny.zarr --checkpoint tiny.json --out p.json"),
    ("tal-infer", "--features tiny.zarr --checkpoint afile --out p.json --subset testing"),
    ("tal-infer", "--features tiny.zarr --checkpoint afile --out p.json --class-names classes.txt --split x:1:1"),
    ("tal-pseudo", ""),
    ("tal-pseudo", "--features tiny.zarr --checkpoint afile --out pl.json --threshold 2"),
    ("tal-pseudo", "--features tiny.zarr --checkpoint afile --out pl.json"),
    ("tal-pseudo", "merge pl.json"),
    ("tal-selftrain", "--labeled-features tiny.zarr --labeled-annotations tiny.json --unlabeled-features tiny.zarr "
                      "--out st1 --test-features tiny.zarr --test-annotations tiny.json"),
    ("tal-selftrain", "--labeled-features tiny.zarr --labeled-annotations tiny.json --unlabeled-features tiny.zarr "
                      "--out st2 --preset nope"),
    ("tal-selftrain", "--labeled-features tiny.zarr --labeled-annotations bad.json --unlabeled-features tiny.zarr "
                      "--out st3"),
    ("tal-selftrain", "--labeled-features tiny.zarr --labeled-annotations tiny.json --unlabeled-features empty.zarr "
                      "--out st4"),
    ("tal-selftrain", "--labeled-features tiny.zarr --labeled-annotations tiny.json --unlabeled-features tiny.zarr "
                      "--out st5 --recurrence-weight 1.5"),
    ("tal-selftrain", "--labeled-features tiny.zarr --labeled-annotations tiny.json --unlabeled-features tiny.zarr "
                      "--out st6 --rounds two"),
    ("tal.demo", "--threads 0"),
    ("tal.demo", "--set nokey --out demo"),
    ("tal.demo", "--set train.lr=abc --out demo"),
    ("tal.study", "--seeds x"),
    ("tal.study", "--taus abc"),
    ("tal.study", "--only-seed 7"),
    ("tal.study", "--set nokey --out study"),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from features.store import create_store

    root = tmp_path_factory.mktemp("bad_inputs")
    make_benchmark(root, n_videos=2, dim=16, rows=(40, 48))                       # tiny.zarr, tiny.json
    (root / "dup").mkdir()
    make_benchmark(root / "dup", n_videos=2, dim=16, rows=(40, 48), seed=5, suffix=".h5")  # same ids, other rows
    create_store(root / "empty.zarr", dim=16, provenance={"encoder": "simulated"}).close()
    (root / "bad.json").write_text('{"version": "1", "database": {"v": ')
    (root / "afile").write_text("not a directory, a store, JSON or a checkpoint")
    (root / "notastore.zarr").mkdir()
    (root / "classes.txt").write_text("jump\nrun\n")
    (root / "dup.txt").write_text("jump\njump\n")
    (root / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (root / "junk.npy").write_text("not numpy")
    (root / "npydir").mkdir()
    (root / "pred.json").write_text('{"version": "x", "external_data": {}, "results": {"tiny_000": '
                                    '[{"label": "jump", "score": 0.5, "segment": [1, 2]}]}}')
    return root


def _subprocess(folder: Path, command: str, args: str):
    cmd = [sys.executable, "-m", command] if command.startswith("tal.") else [str(BIN / command)]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run(cmd + args.split(), cwd=folder, capture_output=True, text=True, timeout=240, env=env,
                          stdin=subprocess.DEVNULL)
    return command, args, done.returncode, done.stdout + done.stderr


def _in_process(command: str, args: str):
    main = importlib.import_module(MODULES[command]).main
    result = CliRunner().invoke(main, args.split())
    escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
    return command, args, result.exit_code, result.output + (f"\nTraceback: {result.exception!r}" if escaped else "")


def _failures(results) -> list[str]:
    return [f"{command} {args}: exit {rc}\n{output[-1500:]}" for command, args, rc, output in results
            if rc == 0 or "Traceback" in output or "Error:" not in output]


def test_every_cli_refuses_wrong_input_without_a_traceback(folder, monkeypatch):
    monkeypatch.chdir(folder)
    results = [_in_process(*case) for case in CASES]
    assert not _failures(results), "\n\n".join(_failures(results))
    assert {command for command, *_ in results} == set(MODULES)
    output = {f"{command} {args}": text for command, args, _, text in results}.get
    # a few of the messages, to keep them naming what is wrong
    assert "2 video(s) are in several stores with different rows" in output(
        "tal-train --features tiny.zarr --features dup/tiny.h5 --annotations tiny.json --out run")
    assert "dup.txt:2: class 'jump' listed twice" in output(
        "tal-store add-vocab tiny.zarr --name x --classes dup.txt --embeddings junk.npy")
    assert "the unlabelled store holds no videos" in output(
        "tal-selftrain --labeled-features tiny.zarr --labeled-annotations tiny.json --unlabeled-features empty.zarr "
        "--out st4")
    assert not (folder / "demo").exists() and not (folder / "study").exists()  # bad --set: nothing simulated


def test_every_console_script_and_module_reports_errors_as_the_user_sees_them(folder):
    first = list({command: (command, args) for command, args in reversed(CASES)}.values())
    assert len(first) == len(MODULES)
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda case: _subprocess(folder, *case), first))
    assert not _failures(results), "\n\n".join(_failures(results))


def test_a_warning_reaches_the_user_as_one_line():
    # a subprocess: pytest records warnings in-process, the user's terminal gets what warnings prints
    script = ("import warnings, click\n"
              "from features.cli_support import Command\n"
              "from tal.eval.detection import EvaluationWarning\n"
              "@click.command(cls=Command)\n"
              "def warns():\n"
              "    warnings.warn('ignored 3 prediction(s) with labels outside the evaluated classes',\n"
              "                  EvaluationWarning)\n"
              "warns()\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stderr == "Warning: ignored 3 prediction(s) with labels outside the evaluated classes " \
                         "(EvaluationWarning)\n"
