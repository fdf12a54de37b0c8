"""Annotation readers, the official writer and bad-file errors, on the real files in ../shared/data."""

import json
import warnings
from collections import Counter

import pytest

from tal.data.annotations import (AnnotationError, AnnotationSet, AnnotationWarning, Segment, VideoAnnotation,
                                  load_annotations, write_official)


def _quiet_load(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnnotationWarning)
        return load_annotations(*args, **kwargs)


def _counts(aset, subset):
    part = aset.subset(subset)
    return len(part.videos), part.num_segments


def _instances(aset, subset):
    """Multiset of (video, label, start, end) rounded to THUMOS's 0.1 s precision."""
    return Counter((vid, s.label, round(s.start, 1), round(s.end, 1))
                   for vid, v in aset.subset(subset).videos.items() for s in v.segments)


@pytest.fixture(scope="module")
def thumos_files(shared_data):
    return {
        "actionformer": shared_data / "CSE499A--BBFormer" / "thumos14.json",
        "compact": shared_data / "download_thumos14_tad" / "thumos14.json",
        "txt_val": shared_data / "mmtad" / "original" / "annotations_val",
        "txt_test": shared_data / "mmtad" / "original" / "annotations_test",
        "detad_test": shared_data / "DETAD" / "thumos14_test_extra_characteristics.json",
    }


def test_thumos_readers_agree(thumos_files):
    # clip=False: the compact file's durations are shorter than some instances, and clipping would differ.
    af = _quiet_load(thumos_files["actionformer"], clip=False)
    compact = _quiet_load(thumos_files["compact"], clip=False)
    txt_val = _quiet_load(thumos_files["txt_val"])
    txt_test = _quiet_load(thumos_files["txt_test"])
    detad = _quiet_load(thumos_files["detad_test"])
    assert af.provenance["format"] == "actionformer" and compact.provenance["format"] == "compact"
    assert txt_val.provenance["format"] == "thumos-txt" and detad.provenance["format"] == "official"
    for aset in (af, compact):
        assert _counts(aset, "validation") == (200, 3007)
        assert _counts(aset, "testing") == (212, 3358)
        assert len(aset.classes) == 20
    assert _counts(txt_val, "validation") == (200, 3007)
    assert _counts(txt_test, "testing") == (212, 3358)
    assert _counts(detad, "testing") == (212, 3358)
    # Not just the counts: the same instances, label for label.
    assert _instances(af, "validation") == _instances(compact, "validation") == _instances(txt_val, "validation")
    assert _instances(af, "testing") == _instances(txt_test, "testing") == _instances(detad, "testing")
    assert af.classes == txt_test.classes == detad.classes
    assert af.videos["video_test_0000004"].fps == 30.0
    assert "video_test_0001292" not in txt_test.videos  # Ambiguous-only video


def test_thumos_txt_keeps_ambiguous_on_request(thumos_files):
    aset = _quiet_load(thumos_files["txt_test"], keep_ambiguous=True)
    assert aset.num_segments == 3358 + 99
    assert "Ambiguous" in aset.classes and "video_test_0001292" in aset.videos


def test_bsn_activitynet_counts_and_subset_filter(shared_data):
    path = shared_data / "BSN-boundary-sensitive-network" / "anet_anno_action.json"
    full = _quiet_load(path)
    assert _counts(full, "validation") == (4728, 7293)
    assert _counts(full, "training") == (9649, 14859)
    assert len(full.classes) == 200
    val = _quiet_load(path, subset="validation")
    assert (len(val.videos), val.num_segments) == (4728, 7293)
    assert full.videos["v_QOlSCBRmfWY"].duration == pytest.approx(82.73)


def test_bsn_warns_with_counts_and_clips(shared_data):
    path = shared_data / "BSN-boundary-sensitive-network" / "anet_anno_action.json"
    with pytest.warns(AnnotationWarning) as record:
        clipped = load_annotations(path, subset="validation")
    messages = " ".join(str(w.message) for w in record)
    assert "clipped 71 segment(s)" in messages and "3 zero-length" in messages
    assert all(s.end <= v.duration for v in clipped.videos.values() for s in v.segments)
    with pytest.warns(AnnotationWarning) as record:
        raw = load_annotations(path, subset="validation", clip=False)
    assert any("71 segment(s) run past the video's end (kept as given)" in str(w.message) for w in record)
    assert any(s.end > v.duration for v in raw.videos.values() for s in v.segments)
    with pytest.raises(AnnotationError, match="end .* <= start"):
        load_annotations(path, subset="validation", strict=True)


def test_bsn_thumos_without_csv_takes_subset_from_id(shared_data):
    aset = _quiet_load(shared_data / "T3AL" / "thumos_anno_action.json")
    assert _counts(aset, "validation")[0] == 200 and _counts(aset, "testing")[0] == 213
    assert aset.num_segments == 6335


def test_official_roundtrip(tmp_path, thumos_files):
    aset = _quiet_load(thumos_files["actionformer"], subset="testing")
    aset.videos["video_test_0000004"].segments[0] = Segment(0.2, 1.1, "CricketBowling", score=0.7, pseudo=True)
    aset.provenance["threshold"] = 0.5
    out = tmp_path / "gt.json"
    write_official(aset, out)
    data = json.loads(out.read_text())
    assert set(data) >= {"version", "taxonomy", "database", "provenance"}
    assert data["provenance"]["threshold"] == 0.5
    back = _quiet_load(out)
    assert back.provenance["format"] == "official"
    assert _instances(back, "testing") == _instances(aset, "testing")
    seg = back.videos["video_test_0000004"].segments[0]
    assert seg.score == 0.7 and seg.pseudo is True
    assert back.videos["video_test_0000004"].duration == pytest.approx(aset.videos["video_test_0000004"].duration)
    assert not list(tmp_path.glob(".*.tmp"))


def test_classes_and_restrict():
    aset = AnnotationSet({"a": VideoAnnotation("a", "testing", 10.0, None,
                                               [Segment(0, 1, "y"), Segment(2, 3, "x")])})
    assert aset.classes == ["x", "y"]
    assert aset.restrict_classes(["x"]).num_segments == 1
    with pytest.raises(AnnotationError, match="unknown subset"):
        aset.subset("dev")


def _official(tmp_path, entry, name="bad.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"version": "x", "taxonomy": [], "database": {"vid1": entry}}))
    return path


GOOD = {"subset": "validation", "duration": 10.0, "annotations": [{"segment": [1.0, 2.0], "label": "Jump"}]}


@pytest.mark.parametrize("entry, pattern", [
    ({**GOOD, "subset": "dev"}, r"video 'vid1' field 'subset'.*unknown subset"),
    ({k: v for k, v in GOOD.items() if k != "subset"}, r"video 'vid1' field 'subset'.*missing"),
    ({**GOOD, "annotations": [{"segment": [3.0, 2.0], "label": "Jump"}]}, r"vid1.*end 2.0 <= start 3.0"),
    ({**GOOD, "annotations": [{"segment": [-1.0, 2.0], "label": "Jump"}]}, r"vid1.*negative time"),
    ({**GOOD, "annotations": [{"segment": [1.0, 2.0]}]}, r"vid1.*'annotations\[0\]'.*'label'"),
    ({**GOOD, "annotations": [{"segment": [1.0], "label": "Jump"}]}, r"vid1.*\[start, end\]"),
    ({**GOOD, "annotations": [{"segment": ["a", 2], "label": "Jump"}]}, r"vid1.*expected a number"),
    ({**GOOD, "duration": "long"}, r"vid1.*'duration'.*expected a number"),
])
def test_bad_official_files(tmp_path, entry, pattern):
    path = _official(tmp_path, entry)
    with pytest.raises(AnnotationError, match=pattern) as info:
        load_annotations(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_invalid_json_reports_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"database": {\n  "v": {"subset": "validation",, }\n}}')
    with pytest.raises(AnnotationError, match=r"broken.json: invalid JSON at line 2 column 32"):
        load_annotations(path)


def test_zero_length_kept_with_warning_or_error_when_strict(tmp_path):
    path = _official(tmp_path, {**GOOD, "annotations": [{"segment": [2.0, 2.0], "label": "Jump"}]})
    with pytest.warns(AnnotationWarning, match="1 zero-length"):
        assert load_annotations(path).num_segments == 1
    with pytest.raises(AnnotationError, match="<= start"):
        load_annotations(path, strict=True)


def test_segment_past_end_is_clipped_and_counted(tmp_path):
    path = _official(tmp_path, {**GOOD, "annotations": [{"segment": [8.0, 12.0], "label": "Jump"},
                                                        {"segment": [9.0, 11.0], "label": "Jump"}]})
    with pytest.warns(AnnotationWarning, match="clipped 2 segment"):
        aset = load_annotations(path)
    assert [s.end for s in aset.videos["vid1"].segments] == [10.0, 10.0]


def test_other_bad_inputs(tmp_path, shared_data):
    preds = shared_data / "ActivityNet" / "sample_detection_prediction.json"
    with pytest.raises(AnnotationError, match="predictions file"):
        load_annotations(preds)
    with pytest.raises(AnnotationError, match="no such file"):
        load_annotations(tmp_path / "missing.json")
    bsn = tmp_path / "bsn.json"
    bsn.write_text(json.dumps({"v_x": {"duration_second": 5.0, "annotations": []}}))
    with pytest.raises(AnnotationError, match=r"video 'v_x' field 'subset': unknown subset"):
        load_annotations(bsn)
    txt = tmp_path / "txt"
    txt.mkdir()
    (txt / "Jump_val.txt").write_text("video_validation_1 1.0 2.0\nvideo_validation_1 oops\n")
    with pytest.raises(AnnotationError, match=r"Jump_val.txt: line 2"):
        load_annotations(txt)
