"""Length-aware batching: the model sees a video the same whatever its batch is padded to (losses and
gradients per video), and the bucketing sampler keeps epochs random, the pseudo-label mix and DDP's split."""

from collections import Counter

import numpy as np
import pytest
import torch

from tal.config import ConfigError, load_config
from tal.data.collate import PadCollate
from tal.data.sampling import LengthBatchSampler, MixingSampler, training_batches
from tal.model import ModelConfig, build_model

# ---------------------------------------------------------------------------------------------- the model
LENGTHS = (200, 96, 37)  # padded to max_seq_len: 256 rows each; length-aware: 224; alone: 224, 96, 64


def _model(neck, window):
    torch.manual_seed(0)
    cfg = ModelConfig(input_dim=16, embd_dim=32, fpn_dim=32, head_dim=32, n_head=4, max_seq_len=256,
                      attn_window=window, neck=neck, num_classes=2, droppath=0.2, label_smoothing=0.1)
    return build_model(cfg).train()


def _items():
    g = torch.Generator().manual_seed(1)
    items = []
    for n in LENGTHS:
        segs = torch.tensor([[0.1 * n, 0.3 * n], [0.5 * n, 0.9 * n], [0.85 * n, n + 0.5]])  # the last runs past the end
        items.append({"feats": torch.randn(16, n, generator=g), "segments": segs, "labels": torch.tensor([0, 1, 1]),
                      "weights": torch.tensor([1.0, 0.5, 0.8]), "ignore": torch.zeros(0, 2)})
    return items


def _collate(items, min_len):
    t = -(-max(max(it["feats"].shape[1] for it in items), min_len) // 32) * 32
    feats = torch.full((len(items), 16, t), 7.0)  # garbage in the padding: masks must hide it
    masks = torch.zeros(len(items), t, dtype=torch.bool)
    for b, it in enumerate(items):
        n = it["feats"].shape[1]
        feats[b, :, :n] = it["feats"]
        masks[b, :n] = True
    return feats, masks


def _per_video(model, items, min_len, rng_seed):
    """(losses, gradients) of each video of one batch padded to ``min_len`` at least, forward in training mode."""
    feats, masks = _collate(items, min_len)
    torch.manual_seed(rng_seed)  # the same stochastic-depth draws whatever the padding
    before = model.loss_normalizer.clone()
    out = model(feats, masks)
    total = model.losses(out, [it["segments"] for it in items], [it["labels"] for it in items],
                         [it["weights"] for it in items])
    normaliser = model.loss_normalizer.clone()
    model.loss_normalizer.copy_(before)
    params = [p for p in model.parameters() if p.requires_grad]
    losses, grads = [], []
    model.eval()  # per-video losses under the batch's normaliser, which eval mode leaves as it is
    model.loss_normalizer.copy_(normaliser)
    try:
        for b, it in enumerate(items):
            one = {k: (v[b:b + 1] if k != "points" else v) for k, v in out.items()}
            loss = model.losses(one, [it["segments"]], [it["labels"]], [it["weights"]])["final_loss"]
            losses.append(loss.detach())
            grads.append(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))
    finally:
        model.train()
    model.loss_normalizer.copy_(before)
    return total, normaliser, losses, grads


@pytest.mark.parametrize("neck,window", [("identity", 9), ("fpn", [9, 5, 5, 3, -1, -1])])
def test_losses_and_gradients_per_video_do_not_depend_on_padding(neck, window):
    model = _model(neck, window)
    items = _items()
    max_total, max_norm, max_losses, max_grads = _per_video(model, items, 256, rng_seed=5)  # ActionFormer's
    len_total, len_norm, len_losses, len_grads = _per_video(model, items, 0, rng_seed=5)  # length-aware
    torch.testing.assert_close(len_norm, max_norm, rtol=0, atol=0)  # positives are counted alike
    for key in ("cls_loss", "reg_loss", "final_loss"):
        torch.testing.assert_close(len_total[key], max_total[key], rtol=1e-5, atol=1e-7)
    assert torch.stack(max_losses).sum().item() == pytest.approx(max_total["final_loss"].item(), rel=1e-5)
    for b in range(len(items)):
        torch.testing.assert_close(len_losses[b], max_losses[b], rtol=1e-5, atol=1e-7)
        used = 0
        for ga, gb in zip(len_grads[b], max_grads[b]):
            assert (ga is None) == (gb is None)
            if ga is not None:
                used += 1
                torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-7)
        assert used > 50  # the whole network took part
    # each video alone, padded to its own length only (batch of one; droppath draws one per batch row,
    # so the unbatched runs use eval-mode stochastic depth on both sides)
    model.eval()
    for b, it in enumerate(items):
        alone = _per_video_eval(model, [it], 0)
        in_batch = _per_video_eval(model, items, 256)[b]
        torch.testing.assert_close(alone[0], in_batch, rtol=1e-5, atol=1e-7)


def _per_video_eval(model, items, min_len):
    feats, masks = _collate(items, min_len)
    out = model(feats, masks)
    return [model.losses({k: (v[b:b + 1] if k != "points" else v) for k, v in out.items()},
                         [it["segments"]], [it["labels"]], [it["weights"]])["final_loss"].detach()
            for b, it in enumerate(items)]


def test_length_aware_batches_are_shorter():
    items = [dict(it, video_id=str(i), grid=None, duration=1.0, pseudo=False) for i, it in enumerate(_items())]
    assert PadCollate(32, min_len=256)(items)["feats"].shape[2] == 256
    batch = PadCollate(32)(items)
    assert batch["feats"].shape[2] == 224 and batch["masks"].sum(1).tolist() == list(LENGTHS)


# ---------------------------------------------------------------------------------------------- the sampler
def _lengths(n, seed=0):
    return np.random.default_rng(seed).integers(20, 2305, size=n).tolist()


def _epoch(flags, lengths, bs, world, epoch, **kw):
    """Every rank's batches of one epoch."""
    ranks = []
    for rank in range(world):
        s = training_batches(flags, lengths, bs, seed=3, num_replicas=world, rank=rank, **kw)
        s.set_epoch(epoch)
        ranks.append(list(s))
        assert len(ranks[-1]) == len(s)
    return ranks


def test_length_batches_cover_the_epoch_with_little_padding():
    n, bs = 413, 2
    lengths = _lengths(n)
    [batches] = _epoch([False] * n, lengths, bs, 1, 0, ratio=None, epoch_clips=None)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(n))  # every clip once, as a plain shuffle
    assert len(batches) == 207 and all(len(b) == bs for b in batches[:-1] if len(b) != 1)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.05 * sum(lengths)  # little padding (padding to 2,304 rows: 2.2x the rows)
    # ActionFormer's batching over the same epoch: the same clips
    [plain] = _epoch([False] * n, lengths, bs, 1, 0, ratio=None, epoch_clips=None, by_length=False)
    assert sorted(i for b in plain for i in b) == list(range(n))


def test_length_batches_are_random_per_epoch_and_replayable():
    lengths = _lengths(300)
    e0 = _epoch([False] * 300, lengths, 4, 1, 0, ratio=None, epoch_clips=None)
    e1 = _epoch([False] * 300, lengths, 4, 1, 1, ratio=None, epoch_clips=None)
    again = _epoch([False] * 300, lengths, 4, 1, 0, ratio=None, epoch_clips=None)
    assert e0 == again  # a resumed run replays the epoch
    pairs = lambda ep: {frozenset(b) for b in ep[0]}  # noqa: E731
    assert len(pairs(e0) & pairs(e1)) < 0.2 * len(e0[0])  # other batch mates next epoch
    firsts = [ep[0][0][0] for ep in (_epoch([False] * 300, lengths, 4, 1, e, ratio=None, epoch_clips=None)
                                     for e in range(6))]
    assert len(set(firsts)) > 1  # step order is shuffled, not short-to-long
    # steps are not sorted by length across the epoch: short and long batches are interleaved
    means = [np.mean([lengths[i] for i in b]) for b in e0[0]]
    assert abs(np.corrcoef(np.arange(len(means)), means)[0, 1]) < 0.3


def test_length_batches_keep_the_pseudo_mix_and_epoch_size():
    flags = [i % 10 == 0 for i in range(1000)]  # 100 pseudo-labelled, 900 human
    lengths = [2304 if f else 300 + i % 700 for i, f in enumerate(flags)]
    for epoch in range(3):
        [batches] = _epoch(flags, lengths, 8, 1, epoch, ratio=0.5, epoch_clips=400)
        flat = [i for b in batches for i in b]
        assert len(flat) == 400 and sum(flags[i] for i in flat) == 200
        mixing = MixingSampler(flags, 0.5, seed=3, size=400)
        mixing.set_epoch(epoch)
        assert Counter(flat) == Counter(mixing)  # the very clips the mixing sampler draws, regrouped


def test_length_batches_split_disjointly_and_evenly_over_ranks():
    n, world, bs = 103, 4, 3
    lengths = _lengths(n, seed=1)
    ranks = _epoch([False] * n, lengths, bs, world, 2, ratio=None, epoch_clips=None)
    assert len({len(r) for r in ranks}) == 1  # every rank takes the same number of steps
    per_rank = [[i for b in r for i in b] for r in ranks]
    assert len({len(p) for p in per_rank}) == 1 and len(per_rank[0]) == 26  # ceil(103 / 4)
    seen = Counter(i for p in per_rank for i in p)
    assert set(seen) == set(range(n)) and sum(seen.values()) - n == 1  # one clip wraps round to even it out
    def spread(ranks):  # mean over steps of how far apart the ranks' padded lengths are
        return np.mean([np.ptp([max(lengths[i] for i in r[step]) for r in ranks]) for step in range(len(ranks[0]))])

    plain = _epoch([False] * n, lengths, bs, world, 2, ratio=None, epoch_clips=None, by_length=False)
    assert spread(ranks) < 0.2 * spread(plain)  # ranks pad to about the same length at the same step
    # one process per rank draws the same epoch on its own: nothing is shared but the seed
    alone = LengthBatchSampler(MixingSampler([False] * n, 0.0, seed=3), lengths, bs, num_replicas=world, rank=1,
                               seed=3)
    alone.set_epoch(2)
    assert len(list(alone)) == len(ranks[1])


def test_batching_config_keys():
    cfg = load_config("small")
    assert cfg.data.batching == "length" and cfg.data.length_window == 32
    assert load_config("small", ["data.batching=max"]).data.batching == "max"
    with pytest.raises(ConfigError, match="data.batching must be one of"):
        load_config("small", ["data.batching=sorted"])
    with pytest.raises(ConfigError, match="data.length_window must be >= 1"):
        load_config("small", ["data.length_window=0"])


# ---------------------------------------------------------------------------------------------- in training
def test_training_loader_pads_each_batch_to_its_longest_clip(tmp_path):
    from torch.utils.data import DataLoader

    from tal.train import Distributed, TrainInputs, build_training_set, epoch_batches, training_collate
    from test_train_support import make_benchmark

    store, ann, _ = make_benchmark(tmp_path, n_videos=12, dim=16, rows=(20, 70))
    for batching in ("length", "max"):
        cfg = load_config("small", ["model.max_seq_len=128", "train.batch_size=3", "data.mode=agnostic",
                                    f"data.batching={batching}", "data.crop_ratio=null"])
        dataset, _, _ = build_training_set(cfg, TrainInputs([store], [ann]))
        batches = epoch_batches(cfg, dataset, Distributed())
        batches.set_epoch(0)
        seen, widths = [], []
        for batch in DataLoader(dataset, batch_sampler=batches, collate_fn=training_collate(cfg)):
            longest = int(batch["lengths"].max())
            assert batch["feats"].shape[2] == (-(-longest // 32) * 32 if batching == "length" else 128)
            seen += batch["video_id"]
            widths.append(batch["feats"].shape[2])
        assert sorted(seen) == sorted(r.video_id for r in dataset.records)
        assert len(widths) == len(batches) == -(-len(dataset) // 3)
        assert max(widths) <= 96 if batching == "length" else set(widths) == {128}  # clips hold 20-70 rows


def test_runs_started_before_length_batching_resume_with_their_batches(tmp_path):
    from tal.checkpoint import save_checkpoint
    from tal.train import CHECKPOINT_NAME, _start_state

    old = load_config("small").to_dict()
    del old["data"]["batching"], old["data"]["length_window"]
    fields = {"model": {}, "provenance": {}, "classes": ["action"], "mode": "agnostic", "epoch": 1}
    save_checkpoint(tmp_path / CHECKPOINT_NAME, {"config": old, **fields})
    cfg, state = _start_state(tmp_path, True, load_config("small"))
    assert cfg.data.batching == "max" and state["epoch"] == 1
    new = load_config("small").to_dict()
    save_checkpoint(tmp_path / CHECKPOINT_NAME, {"config": new, **fields})
    assert _start_state(tmp_path, True, load_config("small", ["data.batching=max"]))[0].data.batching == "length"


def test_batch_mates_change_even_when_one_window_holds_the_epoch():
    lengths = _lengths(120, seed=4)  # 120 clips, batch 8, window 32 batches: the whole epoch is one window
    mates = [{frozenset(b) for b in _epoch([False] * 120, lengths, 8, 1, e, ratio=None, epoch_clips=None)[0]}
             for e in range(3)]
    assert len(mates[0] & mates[1]) <= 3 and len(mates[1] & mates[2]) <= 3  # of 15 batches
