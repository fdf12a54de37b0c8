"""ActionFormer-style model: shapes, padding invariance, label assignment, losses, overfitting, EMA, optimiser."""

import math

import pytest
import torch

from tal.model import ActionFormer, ModelConfig, ModelEMA, build_model, param_groups
from tal.model.assign import assign_targets
from tal.model.blocks import dense_attention, local_attention
from tal.model.losses import diou_loss_1d, sigmoid_focal_loss


def tiny_cfg(**kw):
    base = dict(input_dim=16, embd_dim=32, fpn_dim=32, head_dim=32, n_head=4, max_seq_len=64, attn_window=5,
                num_classes=3, droppath=0.0)
    base.update(kw)
    return ModelConfig(**base)


def test_output_shapes_and_levels():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build_model(cfg).eval()
    out = model(torch.randn(2, 16, 64), torch.ones(2, 64, dtype=torch.bool))
    P = sum(64 // s for s in cfg.strides)  # 64 + 32 + ... + 2 = 126
    assert cfg.strides == [1, 2, 4, 8, 16, 32]
    assert out["cls_logits"].shape == (2, P, 3)
    assert out["offsets"].shape == (2, P, 2)
    assert out["mask"].shape == (2, P) and out["points"].shape == (P, 4)
    assert (out["offsets"] >= 0).all()
    # every regression channel starts alive (a ReLU output stuck at 0 never learns)
    assert (out["offsets"] > 0).float().mean(dim=(0, 1)).min() > 0.9
    # the untrained classifier starts at the focal prior
    assert torch.sigmoid(out["cls_logits"]).mean().item() == pytest.approx(0.01, abs=0.01)
    # points: level 1 (stride 2) starts right after level 0 at t = 0, 2, 4 ...
    assert out["points"][64:67, 0].tolist() == [0.0, 2.0, 4.0]
    assert out["points"][64, 3].item() == 2.0


def test_bad_inputs_are_refused():
    model = build_model(tiny_cfg())
    with pytest.raises(ValueError, match="multiple of the largest stride"):
        model(torch.randn(1, 16, 40), torch.ones(1, 40, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[B, 16, T\]"):
        model(torch.randn(1, 8, 64), torch.ones(1, 64, dtype=torch.bool))
    with pytest.raises(ValueError, match="multiple of the largest stride"):
        ModelConfig(max_seq_len=100)
    with pytest.raises(ValueError, match="attn_window"):
        ModelConfig(attn_window=[19, 19])


@pytest.mark.parametrize("neck,window", [("identity", 5), ("fpn", [9, 3, 3, 3, -1, -1])])
def test_padding_does_not_affect_valid_positions(neck, window):
    """Same 40 real snippets: padded to 64 with garbage, padded to 128 with other garbage -> same outputs."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(neck=neck, attn_window=window)).eval()
    real = torch.randn(1, 16, 40)
    a = torch.cat([real, 100 * torch.randn(1, 16, 24)], dim=2)
    b = torch.cat([real, -50 * torch.randn(1, 16, 88)], dim=2)
    ma = torch.arange(64)[None] < 40
    mb = torch.arange(128)[None] < 40
    with torch.no_grad():
        oa, ob = model(a, ma), model(b, mb)
    # compare level by level on the valid positions
    pa = pb = 0
    for s in model.cfg.strides:
        na, nb = 64 // s, 128 // s
        va = oa["mask"][0, pa : pa + na]
        assert va.sum() == math.ceil(40 / s)
        for key in ("cls_logits", "offsets"):
            x = oa[key][0, pa : pa + na][va]
            y = ob[key][0, pb : pb + nb][: na][va]
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
        pa, pb = pa + na, pb + nb
    # padded positions give no proposals
    props = model.proposals(oa)[0]
    assert (props["segments"].mean(dim=1) < 40).all()


def test_local_attention_matches_dense_banded():
    torch.manual_seed(0)
    B, H, T, d = 2, 3, 57, 8
    q, k, v = (torch.randn(B, H, T, d) for _ in range(3))
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 40:] = False
    drop = torch.nn.Identity()
    for radius, block in [(4, 8), (9, 16), (2, 5)]:
        ref = dense_attention(q, k, v, mask, radius, drop)
        got = local_attention(q, k, v, mask, radius, block, drop)
        torch.testing.assert_close(got[0], ref[0])
        torch.testing.assert_close(got[1, :, :40], ref[1, :, :40])
        assert torch.isfinite(got).all()


def test_windows_work_for_any_small_or_global_setting():
    torch.manual_seed(0)
    for window in (1, 2, 19, 200, -1):
        cfg = tiny_cfg(max_seq_len=96, attn_window=window)
        out = build_model(cfg).eval()(torch.randn(1, 16, 96), torch.ones(1, 96, dtype=torch.bool))
        assert torch.isfinite(out["cls_logits"]).all()


def _points(cfg, T):
    return ActionFormer(cfg).points([T // s for s in cfg.strides], "cpu")


def test_assignment_hand_cases():
    cfg = tiny_cfg()
    pts = _points(cfg, 64)
    # action [10, 13]: length 3, centre 11.5; only stride-1 points with distances < 4 and |t - 11.5| < 1.5
    t = assign_targets(pts, torch.tensor([[10.0, 13.0]]), torch.tensor([2]), 3, 1.5)
    pos = torch.nonzero(t.positive).squeeze(1).tolist()
    assert pos == [11, 12]  # t = 10 and 13 sit on the boundary: not strictly inside
    assert t.cls[11].tolist() == [0.0, 0.0, 1.0]
    assert t.offsets[11].tolist() == [1.0, 2.0] and t.offsets[12].tolist() == [2.0, 1.0]
    assert t.cls[~t.positive].sum() == 0

    # long action [0, 60]: every inside point reaches >= 30, so only ranges [16, 32) (stride 8) and [32, 64)
    # (stride 16) can hold it; stride 8 would need max(t, 60 - t) < 32 -> t in (28, 32): no stride-8 point.
    # stride 16: centre 30, radius 1.5 * 16 = 24 -> t in (6, 54): t = 16, 32, 48
    t = assign_targets(pts, torch.tensor([[0.0, 60.0]]), torch.tensor([0]), 3, 1.5)
    strides = pts[t.positive, 3].tolist()
    where = pts[t.positive, 0].tolist()
    assert strides == [16.0, 16.0, 16.0] and where == [16.0, 32.0, 48.0]
    assert t.offsets[t.positive].tolist() == [[1.0, 2.75], [2.0, 1.75], [3.0, 0.75]]

    # overlapping actions: the shorter one wins the shared point; weights follow the winner
    gts = torch.tensor([[8.0, 16.0], [10.0, 14.0]])
    t = assign_targets(pts, gts, torch.tensor([0, 1]), 3, 0.0, gt_weights=torch.tensor([0.3, 0.8]))
    assert t.cls[12].tolist() == [0.0, 1.0, 0.0]  # t=12: distances (2,2) vs (4,4) -> both stride 1 range? (4 not < 4)
    assert t.weights[12].item() == pytest.approx(0.8)
    assert t.weights[0].item() == 1.0

    # no actions: all negative
    t = assign_targets(pts, torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), 3)
    assert not t.positive.any() and t.cls.sum() == 0


def test_assignment_ties_mark_both_classes():
    pts = _points(tiny_cfg(), 64)
    t = assign_targets(pts, torch.tensor([[10.0, 13.0], [10.0, 13.0]]), torch.tensor([0, 1]), 3, 1.5)
    assert t.cls[11].tolist() == [1.0, 1.0, 0.0]


def test_focal_loss_hand_values():
    x = torch.tensor([0.0, 2.0, -1.0])
    y = torch.tensor([1.0, 0.0, 1.0])
    got = sigmoid_focal_loss(x, y, alpha=0.25, gamma=2.0)
    p = [0.5, 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(1))]
    expected = [
        0.25 * (1 - p[0]) ** 2 * -math.log(p[0]),
        0.75 * p[1] ** 2 * -math.log(1 - p[1]),
        0.25 * (1 - p[2]) ** 2 * -math.log(p[2]),
    ]
    torch.testing.assert_close(got, torch.tensor(expected))
    # gamma 0, alpha off: plain BCE
    torch.testing.assert_close(sigmoid_focal_loss(x, y, alpha=-1, gamma=0.0),
                               torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="none"))


def test_diou_hand_values():
    pred = torch.tensor([[1.0, 1.0], [2.0, 2.0], [0.0, 4.0]])
    gt = torch.tensor([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]])
    got = diou_loss_1d(pred, gt)
    # identical -> 0; nested same centre -> 1 - 2/4; pred [t, t+4] vs gt [t-2, t+2]: IoU 2/6, centre gap 2,
    # enclosing length 6 -> 1 - 1/3 + (2/6)^2
    torch.testing.assert_close(got, torch.tensor([0.0, 0.5, 1 - 1 / 3 + 1 / 9]))


def test_losses_normaliser_weights_and_empty_videos():
    torch.manual_seed(0)
    cfg = tiny_cfg(init_loss_norm=100, loss_norm_momentum=0.9)
    model = build_model(cfg)
    feats, mask = torch.randn(2, 16, 64), torch.ones(2, 64, dtype=torch.bool)
    out = model(feats, mask)
    segs = [torch.tensor([[10.0, 13.0]]), torch.zeros(0, 2)]
    labels = [torch.tensor([1]), torch.zeros(0, dtype=torch.long)]
    model.eval()
    l_eval = model.losses(out, segs, labels)
    assert model.loss_normalizer.item() == 100.0  # not updated outside training
    l_half = model.losses(out, segs, labels, gt_weights=[torch.tensor([0.5]), torch.zeros(0)])
    l_zero = model.losses(out, segs, labels, gt_weights=[torch.tensor([0.0]), torch.zeros(0)])
    # weights scale the positive points' losses only
    assert l_half["reg_loss"].item() == pytest.approx(0.5 * l_eval["reg_loss"].item(), rel=1e-5)
    assert l_zero["reg_loss"].item() == 0.0
    assert l_zero["cls_loss"] < l_half["cls_loss"] < l_eval["cls_loss"]
    # the final loss combines the two with the regression weight
    assert l_eval["final_loss"].item() == pytest.approx(l_eval["cls_loss"].item() + l_eval["reg_loss"].item())
    model.train()
    model.losses(out, segs, labels)
    assert model.loss_normalizer.item() == pytest.approx(0.9 * 100 + 0.1 * 2)  # two positives (t = 11, 12)
    assert "loss_normalizer" in model.state_dict()
    # no positives anywhere: reg loss 0 but still part of the graph
    l = model.losses(out, [torch.zeros(0, 2)] * 2, [torch.zeros(0, dtype=torch.long)] * 2)
    assert l["reg_loss"].item() == 0.0 and l["reg_loss"].requires_grad


def test_ignore_regions_leave_their_points_out_of_the_classification_loss_only():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(num_classes=1)).eval()
    feats, mask = torch.randn(1, 16, 64), torch.ones(1, 64, dtype=torch.bool)
    out = model(feats, mask)
    out["cls_logits"].retain_grad()
    segs, labels = [torch.tensor([[10.0, 13.0]])], [torch.tensor([0])]
    # one region of unknown label far from the action, one over the action itself
    ignore = [torch.tensor([[30.0, 40.0], [9.0, 14.0]])]
    losses = model.losses(out, segs, labels, gt_ignore=ignore)
    losses["cls_loss"].backward(retain_graph=True)
    grad = out["cls_logits"].grad[0, :, 0]
    t = out["points"][:, 0]
    inside_far = (t > 30) & (t < 40)
    positive = (t > 10) & (t < 13) & (out["points"][:, 3] == 1)
    assert inside_far.any() and (grad[inside_far] == 0).all()  # neither action nor background there
    assert (grad[positive] != 0).all()  # a positive stays a positive inside an ignore region
    assert (grad[(t < 5) | (t > 50)] != 0).all()  # background elsewhere is still background
    plain = model.losses(out, segs, labels)
    assert losses["reg_loss"].item() == plain["reg_loss"].item()
    assert losses["cls_loss"].item() < plain["cls_loss"].item()


def _fitted_probability(model, out, weight: float, soft: bool) -> float:
    """Fit the classification logits alone to the loss of one pseudo-label of this weight; its points' mean
    probability afterwards (every point's loss is its own, so this is what the label teaches those points)."""
    segs, labels = [torch.tensor([[10.0, 13.0]])], [torch.tensor([0])]
    logits = out["cls_logits"].detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.1)
    for _ in range(600):
        loss = model.losses(dict(out, cls_logits=logits), segs, labels, [torch.tensor([weight])], soft=soft)
        opt.zero_grad()
        loss["cls_loss"].backward()
        opt.step()
    t, level = out["points"][:, 0], out["points"][:, 3]
    positive = (t > 10) & (t < 13) & (level == 1)
    return torch.sigmoid(logits[0, positive, 0]).mean().item()


def test_soft_pseudo_labels_teach_their_score_not_certainty():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(num_classes=1)).eval()  # eval: the loss normaliser stays fixed
    out = model(torch.randn(1, 16, 64), torch.ones(1, 64, dtype=torch.bool))
    segs, labels = [torch.tensor([[10.0, 13.0]])], [torch.tensor([0])]
    plain = model.losses(out, segs, labels)
    # weight 1: a human label, whichever way weights are read
    sure = model.losses(out, segs, labels, [torch.tensor([1.0])], soft=True)
    assert sure["cls_loss"].item() == pytest.approx(plain["cls_loss"].item(), rel=1e-6)
    # soft weight 0: its points are background, as if the segment were not there (regression still weighs 0)
    none = model.losses(out, segs, labels, [torch.tensor([0.0])], soft=True)
    empty = model.losses(out, [torch.zeros(0, 2)], [torch.zeros(0, dtype=torch.long)])
    assert none["cls_loss"].item() == pytest.approx(empty["cls_loss"].item(), rel=1e-6)
    assert none["reg_loss"].item() == 0.0
    # ... with label smoothing too: its background target is every background point's
    smoothed = build_model(tiny_cfg(num_classes=1, label_smoothing=0.1)).eval()
    out_s = smoothed(torch.randn(1, 16, 64), torch.ones(1, 64, dtype=torch.bool))
    none_s = smoothed.losses(out_s, segs, labels, [torch.tensor([0.0])], soft=True)
    empty_s = smoothed.losses(out_s, [torch.zeros(0, 2)], [torch.zeros(0, dtype=torch.long)])
    assert none_s["cls_loss"].item() == pytest.approx(empty_s["cls_loss"].item(), rel=1e-6)
    # a weighted positive's loss is least at certainty whatever its weight (the weight scales the pull, not where
    # it ends); a soft one's is least at a probability that grows with the score and stays below certainty
    weighted = [_fitted_probability(model, out, w, soft=False) for w in (0.2, 0.8)]
    soft = [_fitted_probability(model, out, w, soft=True) for w in (0.2, 0.8)]
    assert min(weighted) > 0.85  # and still rising: focal loss leaves a positive nothing that holds it back
    assert soft[0] < soft[1] < 0.6  # settled (alpha-weighted focal loss: below the score, as for a human label)


def test_label_smoothing_changes_targets():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    out = model(torch.randn(1, 16, 64), torch.ones(1, 64, dtype=torch.bool))
    segs, labels = [torch.tensor([[10.0, 13.0]])], [torch.tensor([1])]
    plain = model.losses(out, segs, labels)["cls_loss"]
    model.cfg.label_smoothing = 0.1
    smooth = model.losses(out, segs, labels)["cls_loss"]
    # ActionFormer's smoothing: target * (1 - eps) + eps / (num_classes + 1)
    target = assign_targets(out["points"], segs[0], labels[0], 3, 1.5).cls * 0.9 + 0.1 / 4
    expected = sigmoid_focal_loss(out["cls_logits"][0], target).sum() / 100.0
    torch.testing.assert_close(smooth, expected)
    assert abs(smooth.item() - plain.item()) > 1e-4


def test_model_overfits_one_batch():
    torch.manual_seed(0)
    cfg = tiny_cfg(num_classes=2, nms_method="soft", pre_nms_thresh=0.01)
    model = build_model(cfg)
    T = 64
    feats = 0.1 * torch.randn(2, 16, T)
    segs = [torch.tensor([[8.0, 20.0], [40.0, 44.0]]), torch.tensor([[20.0, 50.0]])]
    labels = [torch.tensor([0, 1]), torch.tensor([1])]
    for b, (s, lab) in enumerate(zip(segs, labels)):
        for (st, en), c in zip(s.tolist(), lab.tolist()):
            feats[b, c, int(st) : int(en) + 1] += 1.0  # the action's class shows in one channel
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, 56:] = False
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=3e-3)
    first = None
    for _ in range(100):
        loss = model.losses(model(feats, mask), segs, labels)["final_loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.2 * first
    model.eval()
    with torch.no_grad():
        dets = model.predict(model(feats, mask))
    from tal.model.postprocess import segment_iou

    for b in range(2):
        for gt, lab in zip(segs[b], labels[b]):
            same = dets[b]["labels"] == lab
            best = segment_iou(gt[None], dets[b]["segments"][same][:3])
            assert best.max() > 0.7


def test_param_groups_and_ema():
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in no_decay["params"]}
    named = dict(model.named_parameters())
    assert id(named["reg_head.scales.0.scale"]) in ids
    assert id(named["cls_head.out.bias"]) in ids
    assert id(named["backbone.stem.0.ln1.weight"]) in ids
    assert id(named["backbone.stem.0.path_attn.layer_scale"]) in ids
    assert id(named["cls_head.out.weight"]) not in ids
    assert len(decay["params"]) + len(no_decay["params"]) == len(named)

    ema = ModelEMA(model, decay=0.9)
    w0 = named["cls_head.out.weight"].detach().clone()
    with torch.no_grad():
        named["cls_head.out.weight"].add_(1.0)
        model.loss_normalizer.fill_(7.0)
    ema.update(model)
    torch.testing.assert_close(ema.module.cls_head.out.weight, w0 + 0.1)
    assert ema.module.loss_normalizer.item() == 7.0
    clone = ModelEMA(build_model(tiny_cfg()))
    clone.load_state_dict(ema.state_dict())
    torch.testing.assert_close(clone.module.cls_head.out.weight, w0 + 0.1)


def test_config_round_trip():
    cfg = ModelConfig(attn_window=[7, 7, 7, 7, 7, -1], neck="fpn", embd_dim=256)
    d = cfg.to_dict()
    assert ModelConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        ModelConfig.from_dict({**d, "nonsense": 1})


def _hand_output(model, T=64):
    cfg = model.cfg
    sizes = [T // s for s in cfg.strides]
    pts = model.points(sizes, "cpu")
    P = pts.shape[0]
    logits = torch.full((1, P, cfg.num_classes), -20.0)
    offsets = torch.zeros(1, P, 2)
    mask = torch.ones(1, P, dtype=torch.bool)
    return {"cls_logits": logits, "offsets": offsets, "mask": mask, "points": pts}


def test_proposals_decode_by_hand():
    model = build_model(tiny_cfg())
    out = _hand_output(model)
    lvl1 = 64  # first stride-2 point
    out["cls_logits"][0, lvl1 + 5, 1] = 2.0  # t = 10, stride 2
    out["offsets"][0, lvl1 + 5] = torch.tensor([1.5, 2.5])  # -> [10 - 3, 10 + 5]
    out["cls_logits"][0, 30, 0] = 0.0  # t = 30, but only 0.03 long: below duration_thresh
    out["offsets"][0, 30] = torch.tensor([0.01, 0.02])
    out["cls_logits"][0, 40, 2] = 5.0  # confident, but a padded position
    out["offsets"][0, 40] = torch.tensor([1.0, 1.0])
    out["mask"][0, 40] = False
    props = model.proposals(out)[0]
    assert props["segments"].tolist() == [[7.0, 15.0]]
    assert props["labels"].tolist() == [1]
    assert props["scores"][0].item() == pytest.approx(1 / (1 + math.exp(-2.0)))


def test_predict_applies_nms_and_limits():
    model = build_model(tiny_cfg(nms_method="hard", iou_threshold=0.5, max_seg_num=2, voting_thresh=0.0))
    out = _hand_output(model)
    for i, (logit, left, right) in enumerate([(3.0, 5, 5), (2.5, 5, 4), (2.0, 2, 2), (1.0, 1, 1)]):
        out["cls_logits"][0, 20 + i, 0] = logit  # points t = 20..23 of stride 1
        out["offsets"][0, 20 + i] = torch.tensor([float(left), float(right)])
    dets = model.predict(out)[0]
    # [15, 25] wins; [16, 25] overlaps it by 0.9 -> gone; [20, 24] (IoU 0.4) stays; max_seg_num 2 drops the rest
    assert dets["segments"].tolist() == [[15.0, 25.0], [20.0, 24.0]]
    model.cfg.nms_method = "soft"
    model.cfg.max_seg_num = 10
    dets = model.predict(out)[0]
    assert len(dets["scores"]) == 4 and dets["scores"][1] < 1 / (1 + math.exp(-2.5))


def test_bfloat16_autocast_stays_finite():
    """Mixed precision (CPU bf16 here; fp16 on CUDA): masked attention rows and losses stay finite."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    feats, mask = torch.randn(2, 16, 64), torch.ones(2, 64, dtype=torch.bool)
    mask[1, 24:] = False  # whole attention windows of padding in the second video
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(feats, mask)
        losses = model.losses(out, [torch.tensor([[4.0, 12.0]])] * 2, [torch.tensor([1])] * 2)
    losses["final_loss"].backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    dets = model.eval().predict(out)
    assert all(torch.isfinite(d["scores"]).all() and d["segments"].dtype == torch.float32 for d in dets)
