"""Open-vocabulary classification of proposals: pooling, planted classes, score fusion, top-k, errors."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from tal.model.config import ModelConfig
from tal.model.ov import OVConfig, class_probabilities, classify_proposals, pool_segments


def planted_video(seed=0, T=120, D=32, K=6, cls=3, span=(20, 40)):
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(K, D, generator=g), dim=1)
    feats = 0.3 * torch.randn(T, D, generator=g)
    feats[span[0] : span[1] + 1] += text[cls]  # the action's rows look like the class-name embedding
    return F.normalize(feats, dim=1), text


def test_pool_segments_matches_a_loop():
    torch.manual_seed(0)
    feats = torch.randn(50, 8)
    segs = torch.tensor([[3.2, 9.7], [0.0, 49.0], [-5.0, 2.0], [47.5, 60.0], [10.2, 10.8], [20.0, 20.0]])
    got = pool_segments(feats, segs)
    rows = [range(4, 10), range(0, 50), range(0, 3), range(48, 50), [10], [20]]  # [10.2, 10.8]: nearest row
    ref = torch.stack([feats[list(r)].mean(dim=0) for r in rows])
    torch.testing.assert_close(got, ref)


def test_picks_the_planted_class():
    feats, text = planted_video()
    segs = torch.tensor([[20.0, 40.0], [70.0, 95.0], [22.0, 39.0]])
    actionness = torch.tensor([0.9, 0.4, 0.8])
    no_voting = dataclasses.replace(ModelConfig().nms(), voting_thresh=0.0)
    top1 = OVConfig(topk=1)
    out_segs, scores, labels = classify_proposals(feats, segs, actionness, text, top1, no_voting)
    assert labels[0].item() == 3
    torch.testing.assert_close(out_segs[0], segs[0])
    # the model's own settings (one source: ModelConfig.nms(), score voting at 0.7 by default) apply here too:
    # the kept proposal is refined by its overlapping same-class neighbour [22, 39]
    voted, _, voted_labels = classify_proposals(feats, segs, actionness, text, top1)
    assert voted_labels[0].item() == 3 and 20.0 < voted[0, 0].item() < 22.0 and 39.0 < voted[0, 1].item() < 40.0
    probs = class_probabilities(feats, segs[:1], text)
    assert probs[0, 3] > 0.9
    assert scores[0].item() == pytest.approx(math.sqrt(0.9 * probs[0, 3].item()), rel=1e-5)
    # the near-duplicate of the same class is decayed by soft-NMS, not removed outright
    dup = [i for i in range(len(labels)) if torch.allclose(out_segs[i], segs[2])]
    assert dup and scores[dup[0]] < math.sqrt(0.8 * probs[0, 3].item())


@pytest.mark.parametrize("fusion", ["geometric", "arithmetic", "actionness", "class"])
def test_score_fusion_modes(fusion):
    feats, text = planted_video()
    segs, act = torch.tensor([[20.0, 40.0]]), torch.tensor([0.5])
    p = class_probabilities(feats, segs, text)[0, 3].item()
    expected = {"geometric": math.sqrt(0.5 * p), "arithmetic": 0.5 * (0.5 + p), "actionness": 0.5, "class": p}
    _, scores, labels = classify_proposals(feats, segs, act, text, OVConfig(fusion=fusion, topk=1))
    assert labels.tolist() == [3]
    assert scores[0].item() == pytest.approx(expected[fusion], rel=1e-5)


def test_topk_gives_k_candidates_per_proposal():
    feats, text = planted_video()
    segs, act = torch.tensor([[20.0, 40.0], [80.0, 100.0]]), torch.tensor([0.9, 0.6])
    no_floor = dataclasses.replace(ModelConfig().nms(), min_score=0.0, voting_thresh=0.0)  # exact segments
    out_segs, scores, labels = classify_proposals(feats, segs, act, text, OVConfig(topk=3), no_floor)
    assert len(labels) == 6  # different classes never suppress each other
    assert labels[0].item() == 3
    assert sorted(labels[(out_segs[:, 0] == 20.0)].tolist()) == sorted(
        class_probabilities(feats, segs[:1], text)[0].topk(3).indices.tolist())


def test_by_default_a_proposal_is_named_with_its_top_five_classes():
    feats, text = planted_video(K=8)
    segs, act = torch.tensor([[20.0, 40.0]]), torch.tensor([0.9])
    no_floor = dataclasses.replace(ModelConfig().nms(), min_score=0.0, voting_thresh=0.0)
    _, scores, labels = classify_proposals(feats, segs, act, text, nms=no_floor)
    probs = class_probabilities(feats, segs, text)[0]
    assert labels.tolist() == probs.topk(5).indices.tolist()  # best first, each class once
    torch.testing.assert_close(scores, (0.9 * probs.topk(5).values).sqrt())


def test_tal_infer_names_as_many_classes_as_the_evaluation_by_default():
    from click.testing import CliRunner

    from tal.cli.infer import main

    help_text = " ".join(CliRunner().invoke(main, ["--help"]).output.split())
    assert f"evaluation's, {OVConfig.topk}]" in help_text  # the help quotes OVConfig's default, which it passes on


def test_bad_inputs():
    feats, text = planted_video()
    with pytest.raises(ValueError, match="share D"):
        classify_proposals(feats, torch.tensor([[0.0, 5.0]]), torch.tensor([0.5]), text[:, :16])
    with pytest.raises(ValueError, match="fusion"):
        OVConfig(fusion="max")
    segs, scores, labels = classify_proposals(feats, torch.zeros(0, 2), torch.zeros(0), text)
    assert segs.shape == (0, 2) and scores.shape == (0,) and labels.shape == (0,)
