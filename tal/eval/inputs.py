"""What tal-eval reads, checked: the ground truth of one subset, and the ids predictions must share with it."""

from __future__ import annotations

from tal.data.annotations import AnnotationError, AnnotationSet, VideoAnnotation, load_annotations

V_PREFIX = "v_"  # ActivityNet's official ids have none; BSN's and ActionFormer's files add it


def load_ground_truth(path, fmt: str = "auto", subset: str | None = None, *, strict: bool = False,
                      video_info=None, drop_v_prefix: bool = False) -> AnnotationSet:
    """Ground truth as the official evaluator reads it (segments as given, no clipping), of one subset: a file
    holding several subsets needs ``subset``; an empty subset is an error. ``drop_v_prefix``: ids ``v_<id>``
    become ``<id>`` (BSN/ActionFormer ground truth against official-id predictions)."""
    gt = load_annotations(path, fmt, subset, strict=strict, clip=False, video_info=video_info)
    subsets = sorted({v.subset for v in gt.videos.values()})
    if subset is None and len(subsets) > 1:
        raise AnnotationError(f"{path}: holds several subsets ({', '.join(subsets)}); choose one with --subset")
    if not gt.videos:
        raise AnnotationError(f"{path}: no videos in subset {subset!r}")
    return without_v_prefix(gt) if drop_v_prefix else gt


def without_v_prefix(gt: AnnotationSet) -> AnnotationSet:
    """The same ground truth with ``v_`` dropped from the ids that have it."""
    videos = {}
    for vid, video in gt.videos.items():
        new = vid.removeprefix(V_PREFIX)
        if new in videos:
            raise AnnotationError(f"video ids {vid!r} and {new!r} are the same without the {V_PREFIX!r} prefix")
        videos[new] = VideoAnnotation(new, video.subset, video.duration, video.fps, video.segments)
    return AnnotationSet(videos, dict(gt.provenance))


def id_mismatch_hint(gt_ids, pred_ids) -> str:
    """Why no predicted video is in the ground truth, when the ids differ only by the ``v_`` prefix."""
    gt_ids, pred_ids = set(gt_ids), set(pred_ids)
    if {V_PREFIX + v for v in pred_ids} & gt_ids:
        return (" (the ground-truth ids have a 'v_' prefix the predictions lack, as BSN's files do against "
                "ActivityNet's official ids: --drop-v-prefix)")
    if {v.removeprefix(V_PREFIX) for v in pred_ids} & gt_ids:
        return " (the predicted ids have a 'v_' prefix the ground truth lacks)"
    return ""
