"""Open-vocabulary TAL protocols: base/novel class splits and the evaluation modes over them.

Split specs (``load_split`` / ``load_splits``):
- ``DATASET:RATIO:INDEX`` -- the standard Efficient-Prompt splits shipped with stovtal: DATASET is
  ``thumos14`` or ``anet`` (aliases: thumos, th14, activitynet, anet1.3), RATIO is the base share ``75`` (75:25)
  or ``50`` (50:50), INDEX is 0-9.  ``load_splits`` also takes a range (``0-4``) or ``all`` for INDEX;
- a file: JSON ``{"name": ..., "base": [...], "novel": [...]}`` or text with ``[base]`` and ``[novel]``
  section headers followed by one class name per line (``#`` starts a comment).  ``tal-split`` writes both.

Modes (``evaluate_protocol``):
- ``novel``: the usual zero-shot protocol -- the novel vocabulary only, scored on the novel classes;
  detections with base labels are ignored (and counted);
- ``generalized``: the full vocabulary on all videos; mAP for all, base and novel classes (per-class AP does
  not depend on the other classes, so one matching serves all three);
- ``cross``: a model trained on dataset A scored on dataset B's vocabulary and videos; base = B's classes
  that A's training vocabulary also names (see ``cross_dataset_split``), novel = the rest.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from features.errors import StovtalError
from tal.atomic import atomic_write_bytes, atomic_write_json
from tal.data.annotations import AnnotationSet
from tal.eval.detection import DetectionReport, evaluate_detection

MODES = ("novel", "generalized", "cross")
DATASETS = {
    "thumos14": "THUMOS14", "thumos": "THUMOS14", "th14": "THUMOS14",
    "anet": "ActivityNet1.3", "activitynet": "ActivityNet1.3", "anet1.3": "ActivityNet1.3",
    "activitynet1.3": "ActivityNet1.3",
}
RATIOS = {"75": "train75_test25", "50": "train50_test50"}
NUM_STANDARD_SPLITS = 10


class SplitError(StovtalError, ValueError):
    """A bad split spec or split file; one line naming it."""


@dataclass
class Split:
    name: str
    base: list[str]
    novel: list[str]

    @property
    def all(self) -> list[str]:
        return list(self.base) + list(self.novel)

    def to_dict(self) -> dict:
        return {"name": self.name, "base": list(self.base), "novel": list(self.novel)}


def _checked(split: Split, where: str) -> Split:
    overlap = sorted(set(split.base) & set(split.novel))
    if overlap:
        raise SplitError(f"{where}: classes in both base and novel: {', '.join(overlap[:5])}")
    if not split.novel and not split.base:
        raise SplitError(f"{where}: no classes")
    for group in (split.base, split.novel):
        if len(set(group)) != len(group):
            raise SplitError(f"{where}: a class is listed twice")
    return split


def _standard_list(setting: str, dataset: str, part: str, index: int) -> list[str]:
    ref = resources.files("tal") / "data" / "splits" / "open_set_action_localisation" / setting / dataset / part
    text = (ref / f"split_{index}.list").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def standard_split(dataset: str, ratio: str | int, index: int) -> Split:
    key = DATASETS.get(str(dataset).lower())
    if key is None:
        raise SplitError(f"unknown dataset {dataset!r} (expected thumos14 or anet)")
    setting = RATIOS.get(str(ratio))
    if setting is None:
        raise SplitError(f"unknown split ratio {ratio!r} (expected 75 or 50)")
    if not 0 <= int(index) < NUM_STANDARD_SPLITS:
        raise SplitError(f"split index {index} out of range 0-{NUM_STANDARD_SPLITS - 1}")
    name = f"{'thumos14' if key == 'THUMOS14' else 'anet'}:{ratio}:{int(index)}"
    return _checked(Split(name, _standard_list(setting, key, "train", int(index)),
                          _standard_list(setting, key, "test", int(index))), name)


def read_split_file(path) -> Split:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SplitError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SplitError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        for key in ("base", "novel"):
            if not isinstance(data.get(key), list) or not all(isinstance(c, str) for c in data[key]):
                raise SplitError(f"{path}: field {key!r} must be a list of class names")
        return _checked(Split(str(data.get("name", path.stem)), data["base"], data["novel"]), str(path))
    sections: dict[str, list[str]] = {}
    current = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            current = header[1].lower()
            if current not in ("base", "novel"):
                raise SplitError(f"{path}: line {lineno}: unknown section [{header[1]}] (expected [base] or [novel])")
            sections.setdefault(current, [])
        elif current is None:
            raise SplitError(f"{path}: line {lineno}: class name before a [base] or [novel] header")
        else:
            sections[current].append(line)
    if "novel" not in sections and "base" not in sections:
        raise SplitError(f"{path}: no [base] or [novel] section")
    return _checked(Split(path.stem, sections.get("base", []), sections.get("novel", [])), str(path))


def write_split_file(split: Split, path) -> None:
    """JSON for a ``.json`` suffix, else the two-section text format; written atomically."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        atomic_write_json(path, split.to_dict())
        return
    text = f"# split {split.name}\n[base]\n" + "".join(f"{c}\n" for c in split.base)
    text += "[novel]\n" + "".join(f"{c}\n" for c in split.novel)
    atomic_write_bytes(path, text.encode("utf-8"))


_SPEC_RE = re.compile(r"^(?P<dataset>[A-Za-z0-9.]+):(?P<ratio>\d+):(?P<index>\d+|\d+-\d+|all)$")


def load_splits(spec: str) -> list[Split]:
    """One or more splits: a file, ``DATASET:RATIO:INDEX``, ``DATASET:RATIO:A-B`` or ``DATASET:RATIO:all``."""
    match = _SPEC_RE.match(str(spec))
    if match is None:
        if Path(spec).exists():
            return [read_split_file(spec)]
        raise SplitError(f"split {spec!r}: not a file and not DATASET:RATIO:INDEX (e.g. thumos14:75:0)")
    index = match["index"]
    if index == "all":
        indices = range(NUM_STANDARD_SPLITS)
    elif "-" in index:
        a, b = (int(x) for x in index.split("-"))
        if b < a:
            raise SplitError(f"split {spec!r}: empty index range")
        indices = range(a, b + 1)
    else:
        indices = [int(index)]
    return [standard_split(match["dataset"], match["ratio"], i) for i in indices]


def load_split(spec: str) -> Split:
    """Exactly one split (``thumos14:75:0``, ``anet:50:3`` or a file)."""
    splits = load_splits(spec)
    if len(splits) != 1:
        raise SplitError(f"split {spec!r} names {len(splits)} splits; give one index")
    return splits[0]


def check_split_classes(split: Split, gt: AnnotationSet, where: str = "ground truth") -> None:
    """Error when none of the split's classes occurs in the ground truth (wrong dataset or spelling)."""
    if not set(split.all) & set(gt.classes):
        raise SplitError(f"split {split.name}: none of its classes occurs in the {where}")


def group_summary(report: DetectionReport, classes) -> dict:
    """mAP of a class group, taken from one report's per-class AP (classes without ground truth skipped)."""
    names = [c for c in classes if c in report.per_class]
    thresholds = [float(t) for t in report.tiou_thresholds]
    if not names:
        nan = [float("nan")] * len(thresholds)
        return {"tiou_thresholds": thresholds, "mAP": nan, "average_mAP": float("nan"), "per_class": {},
                "num_classes": 0}
    ap = np.stack([report.per_class[c] for c in names], axis=1)
    m_ap = ap.mean(axis=1)
    return {"tiou_thresholds": thresholds, "mAP": [float(m) for m in m_ap], "average_mAP": float(m_ap.mean()),
            "per_class": {c: [float(a) for a in report.per_class[c]] for c in names}, "num_classes": len(names)}


def evaluate_protocol(gt: AnnotationSet, preds, split: Split, mode: str, tiou_thresholds,
                      dedup_gt: bool = False, breakdown_bins: str | None = None, ties: str = "official") -> dict:
    """Score ``preds`` under an OV-TAL protocol; returns a JSON-ready dict.

    Keys: ``mode``, ``split`` (name), ``tiou_thresholds``, and per class group (``novel`` for mode novel;
    ``all``, ``base``, ``novel`` for generalized/cross) a dict with ``mAP`` (list), ``average_mAP``,
    ``per_class``, ``num_classes``.  The top-level ``mAP``/``average_mAP``/``per_class`` repeat the headline
    group (``novel`` for mode novel, ``all`` otherwise).  With ``breakdown_bins`` ("thumos"/"anet") a
    ``breakdown`` by action length and instances per video is added, over the evaluated vocabulary."""
    if mode not in MODES:
        raise SplitError(f"unknown mode {mode!r} (expected one of {', '.join(MODES)})")
    check_split_classes(split, gt)
    vocabulary = split.novel if mode == "novel" else split.all
    report = evaluate_detection(gt, preds, tiou_thresholds, dedup_gt=dedup_gt, classes=vocabulary,
                                breakdown_bins=breakdown_bins, ties=ties)
    groups = {"novel": split.novel} if mode == "novel" else {"all": split.all, "base": split.base,
                                                              "novel": split.novel}
    out = {"mode": mode, "split": split.name, "tiou_thresholds": [float(t) for t in report.tiou_thresholds]}
    for name, classes in groups.items():
        out[name] = group_summary(report, classes)
    headline = out["novel" if mode == "novel" else "all"]
    out.update(mAP=headline["mAP"], average_mAP=headline["average_mAP"], per_class=headline["per_class"],
               ignored_predictions=report.ignored_predictions, missing_classes=report.missing_classes)
    if report.breakdown:
        out["breakdown"] = report.breakdown
    return out


def summarize_splits(results: list[dict]) -> dict:
    """Mean and sample standard deviation (ddof=1; 0 for one split) over several ``evaluate_protocol``
    results, per class group: ``{group: {"average_mAP": {"mean", "std"}, "mAP": {"mean": [...], "std": [...]}}}``."""
    if not results:
        raise ValueError("no results to summarise")
    out = {"splits": [r["split"] for r in results], "tiou_thresholds": results[0]["tiou_thresholds"]}
    for group in ("all", "base", "novel"):
        if group not in results[0]:
            continue
        avg = np.array([r[group]["average_mAP"] for r in results], np.float64)
        per_t = np.array([r[group]["mAP"] for r in results], np.float64)
        ddof = 1 if len(results) > 1 else 0
        out[group] = {"average_mAP": {"mean": float(avg.mean()), "std": float(avg.std(ddof=ddof))},
                      "mAP": {"mean": per_t.mean(axis=0).tolist(), "std": per_t.std(axis=0, ddof=ddof).tolist()}}
    return out
