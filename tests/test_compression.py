"""mlbook.compression: pruning masks, iterative magnitude pruning, distillation loss, int8 quantization."""

import pytest
import torch
from torch.nn.utils import prune

from mlbook import compression as C
from helpers import gen


def _net(seed=0):
    torch.manual_seed(seed)
    return C.mlp(8, 16, 12, 3)


# ------------------------------------------------------------------ pruning masks

@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.93, 0.999])
def test_unstructured_mask_keeps_exactly_the_requested_count(sparsity):
    w = torch.randn(40, 25, generator=gen(1))
    mask = C.magnitude_mask(w, sparsity)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert int(mask.sum()) == w.numel() - round(sparsity * w.numel())
    if 0 < mask.sum() < w.numel():  # every survivor is at least as large as every pruned weight
        assert w.abs()[mask].min() >= w.abs()[~mask].max()


def test_structured_mask_removes_whole_rows_of_smallest_norm():
    w = torch.randn(10, 6, generator=gen(2))
    w[3] *= 0.01
    w[7] *= 0.02
    mask = C.magnitude_mask(w, 0.2, structured=True)
    rows_kept = mask.all(dim=1)
    assert torch.equal(rows_kept, mask.any(dim=1))            # rows are all-or-nothing
    assert sorted(torch.nonzero(~rows_kept).flatten().tolist()) == [3, 7]
    cols = C.magnitude_mask(w, 0.5, structured=True, dim=1)
    assert int(cols.all(dim=0).sum()) == 3 and torch.equal(cols.all(dim=0), cols.any(dim=0))


def test_global_masks_keep_the_requested_count_and_share_one_threshold():
    net = _net()
    weights = C.prunable_weights(net)
    assert list(weights) == ["0.weight", "2.weight", "4.weight"]
    masks = C.global_magnitude_masks(weights, 0.7)
    total = sum(w.numel() for w in weights.values())
    assert sum(int(m.sum()) for m in masks.values()) == total - round(0.7 * total)
    assert C.sparsity(masks) == pytest.approx(round(0.7 * total) / total)
    kept = torch.cat([w.detach().abs()[masks[n]] for n, w in weights.items()])
    gone = torch.cat([w.detach().abs()[~masks[n]] for n, w in weights.items()])
    assert kept.min() >= gone.max()


def test_masks_match_torch_nn_utils_prune():
    ours, theirs = _net(3), _net(3)
    masks = C.global_magnitude_masks(C.prunable_weights(ours), 0.8)
    prune.global_unstructured([(theirs[i], "weight") for i in (0, 2, 4)],
                              pruning_method=prune.L1Unstructured, amount=0.8)
    for i in (0, 2, 4):
        assert torch.equal(masks[f"{i}.weight"], theirs[i].weight_mask.bool())
    w = ours[2].weight
    for amount in (0.25, 0.5):
        layer = _net(3)[2]
        prune.ln_structured(layer, "weight", amount=amount, n=2, dim=0)
        assert torch.equal(C.magnitude_mask(w, amount, structured=True), layer.weight_mask.bool())
        layer = _net(3)[2]
        prune.l1_unstructured(layer, "weight", amount=amount)
        assert torch.equal(C.magnitude_mask(w, amount), layer.weight_mask.bool())


def test_global_masks_never_revive_pruned_weights():
    net = _net()
    weights = C.prunable_weights(net)
    first = C.global_magnitude_masks(weights, 0.5)
    with torch.no_grad():               # make the pruned weights the largest ones
        for n, w in weights.items():
            w[~first[n]] = 100.0
    second = C.global_magnitude_masks(weights, 0.6, masks=first)
    for n in weights:
        assert not (second[n] & ~first[n]).any()
    with pytest.raises(ValueError, match="below the sparsity"):
        C.global_magnitude_masks(weights, 0.3, masks=first)


def test_apply_masks_zeroes_exactly_the_pruned_weights():
    net = _net()
    masks = C.global_magnitude_masks(C.prunable_weights(net), 0.5)
    C.apply_masks(net, masks)
    for n, w in C.prunable_weights(net).items():
        assert (w[~masks[n]] == 0).all() and (w[masks[n]] != 0).all()


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_sparsity_outside_unit_interval_is_rejected(bad):
    w = torch.randn(4, 4)
    with pytest.raises(ValueError, match="sparsity"):
        C.magnitude_mask(w, bad)
    with pytest.raises(ValueError, match="sparsity"):
        C.global_magnitude_masks({"w": w}, bad)


def test_pruning_bad_input_is_rejected():
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        C.magnitude_mask([[1.0, 2.0]], 0.5)
    with pytest.raises(ValueError, match="dim=2"):
        C.magnitude_mask(torch.randn(3, 4), 0.5, structured=True, dim=2)
    with pytest.raises(ValueError, match="non-empty mapping"):
        C.global_magnitude_masks({}, 0.5)
    with pytest.raises(ValueError, match="no nn.Linear"):
        C.prunable_weights(torch.nn.ReLU())
    net = _net()
    with pytest.raises(KeyError, match="no parameter"):
        C.apply_masks(net, {"9.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="shape"):
        C.apply_masks(net, {"0.weight": torch.ones(2, 2, dtype=torch.bool)})


# ------------------------------------------------------------------ iterative magnitude pruning

def test_imp_rewinds_to_initial_weights_and_follows_the_sparsity_schedule():
    net = _net()
    init = {k: v.clone() for k, v in net.state_dict().items()}
    seen = []

    def fit(model, masks):              # record the weights each round starts from, then "train"
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen(len(seen))))
        C.apply_masks(model, masks)
        return len(seen)

    hist = C.iterative_magnitude_pruning(net, fit, rounds=3, rate=0.5)
    assert [h.score for h in hist] == [1, 2, 3, 4]
    total = sum(w.numel() for w in C.prunable_weights(net).values())
    for r, h in enumerate(hist):
        assert h.sparsity == pytest.approx(round((1 - 0.5 ** r) * total) / total)
    for r in range(1, 4):               # every round restarts from the initial weights, masked
        for k, v in seen[r].items():
            mask = hist[r].masks.get(k)
            want = init[k] * mask if mask is not None else init[k]
            assert torch.equal(v, want)
        for n in hist[r].masks:         # masks only shrink
            assert not (hist[r].masks[n] & ~hist[r - 1].masks[n]).any()


def test_imp_bad_arguments():
    net = _net()
    with pytest.raises(ValueError, match="rate"):
        C.iterative_magnitude_pruning(net, lambda m, k: 0.0, rounds=2, rate=1.0)
    with pytest.raises(TypeError, match="fit must be callable"):
        C.iterative_magnitude_pruning(net, None, rounds=2, rate=0.5)


def test_fit_classifier_keeps_pruned_weights_at_zero_while_training():
    X = torch.randn(64, 8, generator=gen(4))
    y = (X[:, 0] > 0).long()
    net = _net()
    masks = C.global_magnitude_masks(C.prunable_weights(net), 0.6)
    losses = C.fit_classifier(net, X, y, masks=masks, steps=30, batch_size=16, generator=gen(5))
    assert len(losses) == 30
    for n, w in C.prunable_weights(net).items():
        assert (w[~masks[n]] == 0).all()
    assert 0.0 <= C.accuracy(net, X, y) <= 1.0


# ------------------------------------------------------------------ distillation

def test_distillation_loss_is_t_squared_times_kl():
    s, t = torch.randn(5, 4, generator=gen(6)), torch.randn(5, 4, generator=gen(7))
    for T in (1.0, 3.0):
        p = torch.softmax(t / T, -1)
        kl = (p * (p.log() - torch.log_softmax(s / T, -1))).sum(-1).mean()
        assert C.distillation_loss(s, t, temperature=T) == pytest.approx(float(T * T * kl), rel=1e-5)
    assert float(C.distillation_loss(t, t, temperature=2.0)) == pytest.approx(0.0, abs=1e-6)


def test_distillation_gradient_matches_logit_difference_at_high_temperature():
    # Zero-mean logits: T^2 KL has gradient T (q - p) -> (z - v) / C as T grows (comp-kd-limit).
    s = torch.randn(3, 10, generator=gen(8), dtype=torch.float64)
    t = torch.randn(3, 10, generator=gen(9), dtype=torch.float64)
    s, t = s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    s.requires_grad_(True)
    C.distillation_loss(s, t, temperature=1000.0).backward()
    limit = (s.detach() - t) / 10 / 3    # batchmean divides by the 3 rows
    torch.testing.assert_close(s.grad, limit, rtol=1e-2, atol=1e-6)


def test_distillation_mixes_in_the_hard_labels():
    s, t = torch.randn(6, 3, generator=gen(10)), torch.randn(6, 3, generator=gen(11))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    soft = C.distillation_loss(s, t, temperature=2.0)
    hard = torch.nn.functional.cross_entropy(s, y)
    mixed = C.distillation_loss(s, t, temperature=2.0, labels=y, alpha=0.3)
    assert float(mixed) == pytest.approx(float(0.3 * soft + 0.7 * hard), rel=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf")])
def test_temperature_must_be_positive(bad):
    s = torch.randn(2, 3)
    with pytest.raises(ValueError, match="temperature"):
        C.distillation_loss(s, s, temperature=bad)
    with pytest.raises(ValueError, match="temperature"):
        C.soft_targets(s, bad)


def test_distillation_bad_input():
    s = torch.randn(2, 3)
    with pytest.raises(ValueError, match="same shape"):
        C.distillation_loss(s, torch.randn(2, 4), temperature=2.0)
    with pytest.raises(ValueError, match="labels are required"):
        C.distillation_loss(s, s, temperature=2.0, alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        C.distillation_loss(s, s, temperature=2.0, alpha=1.5)
    with pytest.raises(ValueError, match="2 dimensions"):
        C.distillation_loss(torch.randn(3), torch.randn(3), temperature=2.0)


def test_soft_targets_flatten_as_temperature_grows():
    z = torch.tensor([[4.0, 1.0, 0.0]])
    p1, p10 = C.soft_targets(z, 1.0), C.soft_targets(z, 10.0)
    assert torch.allclose(p1.sum(), torch.tensor(1.0)) and p10.max() < p1.max() and p10.min() > p1.min()


# ------------------------------------------------------------------ quantization

@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_round_trip_is_within_half_a_step(symmetric, seed):
    g = gen(seed)
    w = torch.randn(300, generator=g) * 3 * torch.rand(1, generator=g) + torch.rand(1, generator=g) - 0.5
    qt = C.quantize(w, symmetric=symmetric)
    assert qt.q.dtype == torch.int8 and qt.q.shape == w.shape
    err = (w - C.dequantize(qt)).abs().max()
    assert err <= qt.scale / 2 * (1 + 1e-5)   # float32 arithmetic: a hair of slack, no more
    if symmetric:
        assert qt.zero_point == 0 and int(qt.q.min()) >= -127


@pytest.mark.parametrize("symmetric", [False, True])
def test_quantization_matches_torch_fake_quantize(symmetric):
    w = torch.randn(50, 20, generator=gen(12)) * 0.3 + 0.05
    qt = C.quantize(w, symmetric=symmetric)
    theirs = torch.fake_quantize_per_tensor_affine(w, qt.scale, qt.zero_point, -128, 127)
    assert torch.equal(qt.dequantize(), theirs)
    assert torch.equal(qt.q, (torch.round(theirs / qt.scale) + qt.zero_point).to(torch.int8))


def test_zero_is_exact_and_the_grid_covers_the_range():
    w = torch.tensor([0.0, 0.5, 2.0, 3.0])          # all >= 0: the range is stretched to include 0
    qt = C.quantize(w)
    assert qt.dequantize()[0] == 0.0
    assert int(qt.q.min()) == -128 and int(qt.q.max()) == 127
    zeros = C.quantize(torch.zeros(5))
    assert torch.equal(zeros.dequantize(), torch.zeros(5))


def test_fewer_bits_give_a_coarser_grid():
    w = torch.randn(1000, generator=gen(13))
    e8 = (w - C.quantize(w).dequantize()).abs().max()
    e4 = (w - C.quantize(w, bits=4).dequantize()).abs().max()
    q4 = C.quantize(w, bits=4)
    assert int(q4.q.min()) >= -8 and int(q4.q.max()) <= 7 and e4 > 10 * e8


def test_quantize_model_replaces_weights_and_is_four_times_smaller():
    net = _net()
    qnet, qts = C.quantize_model(net)
    for n, w in C.prunable_weights(qnet).items():
        assert torch.equal(w.detach(), qts[n].dequantize())
        assert not torch.equal(w.detach(), C.prunable_weights(net)[n].detach())
    floats = sum(w.numel() * 4 for w in C.prunable_weights(net).values())
    ints = sum(q.nbytes for q in qts.values())
    assert ints == floats / 4 + 8 * len(qts)


def test_quantize_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        C.quantize(torch.tensor([1.0, float("nan")]))
    with pytest.raises(TypeError, match="floating-point"):
        C.quantize(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="bits"):
        C.quantize(torch.randn(3), bits=16)
    with pytest.raises(ValueError, match="empty"):
        C.quantize(torch.zeros(0))
    with pytest.raises(TypeError, match="QTensor"):
        C.dequantize(torch.zeros(3))


def test_mlp_and_accuracy_checks():
    assert [type(m).__name__ for m in C.mlp(4, 5, 2)] == ["Linear", "ReLU", "Linear"]
    with pytest.raises(ValueError, match="at least"):
        C.mlp(4)
    net = C.mlp(4, 2)
    with pytest.raises(ValueError, match="same number of rows"):
        C.accuracy(net, torch.randn(3, 4), torch.zeros(2, dtype=torch.long))


def test_distilling_an_ensemble_average_equals_averaging_the_losses():
    # Proposition comp-ensemble: mean_m KL(p_m || q) - KL(mean_m p_m || q) does not depend on the student.
    T = 3.0
    members = torch.randn(4, 5, 6, generator=gen(14), dtype=torch.float64)       # (M, n, C) logits
    p_bar = torch.softmax(members / T, -1).mean(0)                                # (n, C)
    as_logits = T * p_bar.log()                     # softmax(as_logits / T) = p_bar exactly
    gaps, grads = [], []
    for seed in (15, 16):
        s = torch.randn(5, 6, generator=gen(seed), dtype=torch.float64, requires_grad=True)
        each = torch.stack([C.distillation_loss(s, v, temperature=T) for v in members]).mean()
        gap = each - C.distillation_loss(s, as_logits, temperature=T)
        (g,) = torch.autograd.grad(gap, s)
        gaps.append(float(gap.detach()))
        grads.append(g)
    assert gaps[0] == pytest.approx(gaps[1], abs=1e-12) and gaps[0] >= 0
    assert float(grads[0].abs().max()) < 1e-12
