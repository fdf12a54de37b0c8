"""Self-training where there is room to gain: tal-selftrain's defaults, end to end on a small seeded simulation.

The case: tal.sim's `shared` regime (stage 1 proposes the novel actions too, as on the issue's testbed), seed 0,
60 labelled curated videos and 80 unlabelled web videos. The ceiling (stage 2 by the same recipe on the web
videos' true segments) shows the room; stage 2 on stage 1's pseudo-labels must take part of it. Measured when
written (tal.sim generator 2): novel-only 27.40 -> 28.98 (ceiling 38.77), generalized novel 49.12 -> 53.31 (61.80),
generalized all 44.90 -> 47.56 (56.65), base 42.79 -> 44.68, cross-domain 35.76 -> 38.22; on generator 3 (today's
rows): 27.74 -> 37.87 (38.69), 42.93 -> 53.03 (61.00), 44.29 -> 48.41 (55.86), 44.96 -> 46.10, 38.02 -> 42.59.
Soft pseudo-labels (`--pseudo-weight soft`) fail it on base: 41.70 (docs/selftrain.md). With the web proposals
re-ranked by recurrence (the default since): novel-only 27.74 -> 29.55, generalized all 44.29 -> 45.93, base
44.96 -> 43.40, cross-domain 38.02 -> 43.94 — less novel-only gain than by score alone on this small shared case.
Without ignore regions (the default since; measured on another machine, whose stage 1 differs): novel-only
28.05 -> 29.58 (ceiling 34.95), generalized novel 43.35 -> 50.27 (60.36), all 43.22 -> 46.84, base 43.15 -> 45.13,
cross-domain 35.65 -> 41.78. With the floor's passes over the labels kept (`--label-passes auto`: the class check
finds held-out classes 0.78 x as well here) and top-5 naming: novel-only 30.35 -> 44.52 (ceiling 43.81), generalized
novel 46.43 -> 66.72 (68.72), all 50.39 -> 62.44 (68.52), base 52.38 -> 60.30 (68.42), cross-domain 43.08 -> 46.27
(63.45). Not asserted, because it
does not hold: stage 2 beats its floor (the same compute on the labels alone, generator 2: 37.64 / 60.18 / 53.62 /
50.34 / 39.97) — at this size the room over stage 1 is mostly training time, and the pseudo-labels cost against it
(docs/selftrain.md).
"""

import dataclasses
import json

import pytest
import torch

from tal.demo import selftrain_config, simulate
from tal.selftrain import _lookup, run_selftrain, stage_names

COUNTS = {"curated_train": 60, "web": 80, "curated_test": 30, "web_test": 20}
GAINING = {"novel-only": ("novel_only",), "generalized novel": ("generalized", "novel"),
           "generalized all": ("generalized", "all")}


@pytest.fixture()
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_stage2_by_the_defaults_beats_stage1_where_the_ceiling_leaves_room(tmp_path, one_torch_thread):
    paths = simulate(tmp_path / "data", 0, COUNTS, progress=False, regime="shared")
    report = run_selftrain(dataclasses.replace(selftrain_config(paths, 0), ceiling=True), tmp_path / "run",
                           progress=False)
    last = stage_names(report)[-1]  # the self-trained model: stage 2, or the last of the rounds the run chose
    for label, keys in GAINING.items():
        stage1, stage2, ceiling = (_lookup(report[s], keys) for s in ("stage1", last, "ceiling"))
        assert ceiling > stage1 + 0.05, f"{label}: no room ({stage1:.4f} -> ceiling {ceiling:.4f})"
        assert stage2 > stage1, f"{label}: stage 2 {stage2:.4f} does not beat stage 1 {stage1:.4f}"
        assert report["recovery"][label] == pytest.approx((stage2 - stage1) / (ceiling - stage1))
    # the class check finds held-out classes 0.78 x as well here: the floor's passes over the labels are kept
    assert report["label_passes"]["passes"] == "kept"
    novel = ("generalized", "novel")
    # measured: +20.3 points (each video once per epoch, the former default: +4.2 when written, +6.9 on another machine)
    assert _lookup(report[last], novel) - _lookup(report["stage1"], novel) > 0.10
    base = ("generalized", "base")
    # the rule is base >= stage 1 - 1 point; measured +7.9 (the former epoch: +2.0 on another machine,
    # with ignore regions 44.96 -> 43.40)
    assert _lookup(report[last], base) >= _lookup(report["stage1"], base) - 0.01
    # the pseudo-labels were chosen from held-out labelled videos, not a fixed τ
    provenance = json.loads((tmp_path / "run" / "pseudo_round1.json").read_text())["provenance"]
    assert "held-out" in provenance["threshold_source"]
