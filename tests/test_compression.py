"""mlbook.compression: pruning masks, iterative magnitude pruning, distillation loss, int8 quantization."""

import math

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


# ------------------------------------------------------------------ integer inference

def test_int8_matmul_wraps_but_integer_matmul_is_exact():
    a = torch.full((2, 4), -128, dtype=torch.int8)          # products 2^14, sums 2^16
    assert int((a @ a.T)[0, 0]) == 0                         # torch's int8 product wraps
    assert int((a.to(torch.int16) @ a.T.to(torch.int16))[0, 0]) == 0   # and so does int16
    acc = C.integer_matmul(a, a.T.contiguous())
    assert acc.dtype == torch.int64 and torch.equal(acc, torch.full((2, 2), 65536))


def test_zero_point_matmul_equals_python_integers():
    g = gen(11)
    a = torch.randint(-128, 128, (6, 300), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (300, 5), generator=g, dtype=torch.int8)
    acc = C.zero_point_matmul(a, 127, b, -128)             # differences up to 255
    A, B = a.tolist(), b.tolist()
    exact = [[sum((A[i][j] - 127) * (B[j][k] + 128) for j in range(300)) for k in range(5)]
             for i in range(6)]
    assert acc.tolist() == exact
    assert max(abs(v) for row in exact for v in row) > 2**15  # beyond int16


def test_integer_products_refuse_what_an_int32_accumulator_would_wrap():
    a = torch.full((1, 140_000), -128, dtype=torch.int8)  # 140000 * 2^14 > 2^31
    with pytest.raises(OverflowError):
        C.integer_matmul(a, a.T.contiguous())
    with pytest.raises(TypeError, match="int8"):
        C.integer_matmul(torch.ones(2, 2), torch.ones(2, 2))
    with pytest.raises(ValueError, match="inner"):
        C.integer_matmul(torch.ones(2, 3, dtype=torch.int8), torch.ones(2, 3, dtype=torch.int8))


@pytest.mark.parametrize("m", [0.75, 0.5, 0.999999999999, 1e-4, 0.0012360989871886133, 2**-20])
def test_fixed_point_multiplier_is_normalised_and_accurate(m):
    fp = C.fixed_point(m)
    assert 2**30 <= fp.multiplier < 2**31
    assert abs(fp.value - m) <= m * 2**-31


def test_fixed_point_rescale_rounds_like_exact_arithmetic():
    fp = C.fixed_point(0.0123)
    acc = torch.randint(-2**31 + 1, 2**31, (2000,), generator=gen(12), dtype=torch.int64)
    got = C.fixed_point_rescale(acc, fp).tolist()
    from fractions import Fraction
    for a, r in zip(acc.tolist()[:200], got[:200]):
        exact = Fraction(a * fp.multiplier, 2 ** (31 + fp.shift))
        assert r == math.floor(exact + Fraction(1, 2))
    with pytest.raises(ValueError, match="\\(0, 1\\)"):
        C.fixed_point(1.5)
    with pytest.raises(TypeError, match="FixedPoint"):
        C.fixed_point_rescale(acc, 0.5)
    with pytest.raises(TypeError, match="int32 or int64"):
        C.fixed_point_rescale(acc.float(), fp)


@pytest.mark.parametrize("relu", [False, True])
def test_integer_linear_is_within_its_error_bound(relu):
    torch.manual_seed(4)
    layer = torch.nn.Linear(50, 20)
    x = torch.rand(64, 50, generator=gen(13)) * 3 - 1
    qx = C.quantize(x)
    x_hat = qx.dequantize().double()
    y = x_hat @ C.quantize(layer.weight.detach()).dequantize().double().T + layer.bias.double()
    qy = C.quantize((y.clamp(min=0) if relu else y).float())
    il = C.IntegerLinear(layer, x_scale=qx.scale, x_zero=qx.zero_point, y_scale=qy.scale,
                         y_zero=qy.zero_point, relu=relu)
    out = il(qx.q)
    assert out.dtype == torch.int8
    err = (il.y_scale * (out.double() - il.y_zero) - il.reference(qx.q)).abs()
    bound = il.error_bound()
    assert (err <= bound * (1 + 1e-9)).all()
    assert float((err / bound).max()) > 0.5                # the bound is not vacuous
    # an output grid four times coarser breaks the finer bound somewhere
    coarse = C.IntegerLinear(layer, x_scale=qx.scale, x_zero=qx.zero_point,
                             y_scale=4 * qy.scale, y_zero=qy.zero_point // 4, relu=relu)
    err_c = (coarse.y_scale * (coarse(qx.q).double() - coarse.y_zero)
             - coarse.reference(qx.q)).abs()
    assert (err_c > bound).any()


def test_integer_linear_rejects_bad_input():
    layer = torch.nn.Linear(3, 2)
    with pytest.raises(TypeError, match="nn.Linear"):
        C.IntegerLinear(torch.nn.ReLU(), x_scale=0.1, x_zero=0, y_scale=0.1, y_zero=0)
    with pytest.raises(ValueError):
        C.IntegerLinear(layer, x_scale=-0.1, x_zero=0, y_scale=0.1, y_zero=0)
    il = C.IntegerLinear(layer, x_scale=0.1, x_zero=0, y_scale=0.1, y_zero=0)
    with pytest.raises(RuntimeError, match="call the layer"):
        il.error_bound()
    with pytest.raises(TypeError, match="int8"):
        il(torch.zeros(4, 3))


# ------------------------------------------------------------------ quantization-aware training

def test_fake_quantize_passes_the_gradient_straight_through():
    w = torch.randn(5, 7, generator=gen(14), requires_grad=True)
    out = C.fake_quantize(w, bits=3)
    assert torch.equal(out.detach(), C.quantize(w.detach(), bits=3).dequantize())
    (out * torch.arange(35.0).reshape(5, 7)).sum().backward()
    assert torch.equal(w.grad, torch.arange(35.0).reshape(5, 7))   # identity Jacobian


def test_quantization_aware_training_ends_on_the_grid():
    net = _net()
    X = torch.randn(64, 8, generator=gen(15))
    y = torch.randint(0, 3, (64,), generator=gen(16))
    qat = C.quantization_aware(net, bits=2)
    C.fit_classifier(qat, X, y, steps=5, generator=gen(17))
    C.freeze_quantized(qat)
    for name, w in C.prunable_weights(qat).items():
        assert len(torch.unique(w)) <= 4, name
        assert not torch.equal(w, C.prunable_weights(net)[name])  # the copy, not the original
    with pytest.raises(ValueError, match="bits"):
        C.FakeQuantize(9)
    with pytest.raises(ValueError, match="no nn.Linear"):
        C.quantization_aware(torch.nn.ReLU(), bits=4)


def test_packed_size_counts_bits():
    qt = C.quantize(torch.randn(100), bits=4)
    assert qt.nbytes == 50 + 8
    assert C.quantize(torch.randn(100)).nbytes == 108


def test_zero_point_matmul_checker_passes_a_right_answer_and_fails_a_wrong_one():
    def right(a, za, b, zb):
        return (a.long() - za) @ (b.long() - zb)

    def wrapped(a, za, b, zb):
        return (a - za) @ (b - zb)                              # int8 arithmetic wraps

    def floats(a, za, b, zb):
        return (a.double() - za) @ (b.double() - zb)

    assert C.check_zero_point_matmul(right)
    assert not C.check_zero_point_matmul(wrapped)
    assert not C.check_zero_point_matmul(floats)


# ------------------------------------------------------------------ second-order pruning

def _quadratic(P=12, seed=20):
    A = torch.randn(P, P, generator=gen(seed), dtype=torch.float64)
    H = A @ A.T + 0.5 * torch.eye(P, dtype=torch.float64)
    w = torch.randn(P, generator=gen(seed + 1), dtype=torch.float64)
    return w, H


def test_obs_is_exact_on_a_quadratic_and_never_worse_than_obd():
    w, H = _quadratic()
    H_inv = torch.linalg.inv(H)
    loss = lambda v: 0.5 * (v - w) @ H @ (v - w)          # minimum at w, increase = loss
    obs, obd = C.obs_saliency(w, H_inv), C.obd_saliency(w, H)
    assert (obs <= obd + 1e-12).all()
    for q in range(len(w)):
        new = w + C.obs_update(w, H_inv, q)
        assert new[q] == 0
        assert math.isclose(float(loss(new)), float(obs[q]), rel_tol=1e-9)
        zeroed = w.clone()
        zeroed[q] = 0
        assert math.isclose(float(loss(zeroed)), float(obd[q]), rel_tol=1e-9)
        # no other change that removes q does better: compare with random compensations
        for _ in range(3):
            other = new + 0.1 * torch.randn(len(w), generator=gen(q), dtype=torch.float64)
            other[q] = 0
            assert loss(other) >= loss(new)


def test_obs_prune_restricts_the_inverse_and_predicts_the_quadratic_exactly():
    w, H = _quadratic()
    loss = lambda v: 0.5 * (v - w) @ H @ (v - w)
    res = C.obs_prune(w, H, 5)
    assert int((~res.mask).sum()) == 5 and (res.weights[~res.mask] == 0).all()
    assert len(set(res.removed)) == 5 and res.path.shape == (6, len(w))
    # after several removals the survivors are the exact minimiser with the removed fixed at 0
    keep = res.mask
    best = torch.zeros_like(w)
    best[keep] = w[keep] + torch.linalg.solve(H[keep][:, keep], H[keep][:, ~keep] @ w[~keep])
    assert torch.allclose(res.weights, best, atol=1e-9)
    assert math.isclose(res.predicted[-1], float(loss(res.weights)), rel_tol=1e-9)


def test_second_order_pruning_rejects_bad_input():
    w, H = _quadratic(4)
    with pytest.raises(ValueError, match="must be"):
        C.obd_saliency(w, H[:3])
    with pytest.raises(ValueError, match="positive diagonal"):
        C.obs_saliency(w, -H)
    with pytest.raises(ValueError, match="not an index"):
        C.obs_update(w, H, 4)
    with pytest.raises(ValueError, match="cannot remove"):
        C.obs_prune(w, H, 5)


# ------------------------------------------------------------------ smaller networks

def test_shrink_hidden_equals_the_masked_network():
    net = _net(3)
    with torch.no_grad():
        for m in net:
            if isinstance(m, torch.nn.Linear):
                m.bias.add_(0.5)                           # some positive biases to fold
    w0 = C.prunable_weights(net)
    keep = {0: C.magnitude_mask(w0["0.weight"], 0.5, structured=True)[:, 0],
            2: C.magnitude_mask(w0["2.weight"], 0.25, structured=True)[:, 0]}
    masks = {"0.weight": C.magnitude_mask(w0["0.weight"], 0.5, structured=True),
             "2.weight": C.magnitude_mask(w0["2.weight"], 0.25, structured=True)}
    small = C.shrink_hidden(net, keep)
    masked = C.apply_masks(__import__("copy").deepcopy(net), masks)
    X = torch.randn(50, 8, generator=gen(21))
    assert torch.allclose(small(X), masked(X), atol=1e-6)
    assert [m.out_features for m in small if isinstance(m, torch.nn.Linear)] == [8, 9, 3]
    assert C.n_parameters(small) == 8 * 8 + 8 + 8 * 9 + 9 + 9 * 3 + 3
    # without the folded bias the outputs differ
    unfolded = C.shrink_hidden(net, keep)
    with torch.no_grad():
        unfolded[2].bias.copy_(net[2].bias[keep[2]])
    assert not torch.allclose(unfolded(X), masked(X), atol=1e-4)


def test_shrink_hidden_rejects_bad_input():
    net = _net()
    with pytest.raises(ValueError, match="hidden Linear"):
        C.shrink_hidden(net, {4: torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="boolean vector"):
        C.shrink_hidden(net, {0: torch.ones(5, dtype=torch.bool)})
    with pytest.raises(ValueError, match="every unit"):
        C.shrink_hidden(net, {0: torch.zeros(16, dtype=torch.bool)})
    with pytest.raises(TypeError, match="Sequential"):
        C.shrink_hidden(torch.nn.Linear(2, 2), {})


# ------------------------------------------------------------------ deep compression

def test_huffman_round_trip_and_length_within_one_bit_of_the_entropy():
    g = gen(30)
    p = torch.tensor([0.5, 0.2, 0.1, 0.1, 0.05, 0.03, 0.02])
    x = torch.multinomial(p, 3000, replacement=True, generator=g)
    code = C.huffman_code(x)
    bits = C.huffman_encode(x, code)
    assert C.huffman_decode(bits, code) == x.tolist()
    H = C.entropy_bits(x)
    assert H <= len(bits) / len(x) < H + 1
    words = list(code.values())                                  # prefix-free
    assert not any(a != b and b.startswith(a) for a in words for b in words)


def test_huffman_is_optimal_on_a_dyadic_source():
    x = [0] * 8 + [1] * 4 + [2] * 2 + [3] * 2                      # probabilities 1/2, 1/4, 1/8, 1/8
    code = C.huffman_code(x)
    assert sorted(len(c) for c in code.values()) == [1, 2, 3, 3]
    assert len(C.huffman_encode(x, code)) == pytest.approx(C.entropy_bits(x) * len(x))
    assert C.huffman_code([7, 7, 7]) == {7: "0"}


def test_huffman_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        C.huffman_code([])
    with pytest.raises(ValueError, match="no code word"):
        C.huffman_encode([1, 2], {1: "0"})
    with pytest.raises(ValueError, match="middle"):
        C.huffman_decode("1", {0: "0", 1: "10", 2: "11"})
    with pytest.raises(ValueError, match="only"):
        C.huffman_decode("012", {0: "0", 1: "1"})


def test_share_weights_uses_k_values_and_beats_a_uniform_grid():
    w = torch.randn(30, 20, generator=gen(31)) ** 3                 # heavy-tailed weights
    shared = C.share_weights(w, 8)
    assert shared.indices.shape == w.shape and shared.codebook.shape == (8,)
    assert len(torch.unique(shared.dequantize())) <= 8
    err_share = (w - shared.dequantize()).square().sum()
    err_grid = (w - C.quantize(w, bits=3).dequantize()).square().sum()   # 8 uniform levels
    assert err_share < err_grid
    with pytest.raises(ValueError, match="larger than"):
        C.share_weights(torch.randn(3), 4)


def test_the_float64_route_for_devices_without_integer_products_is_exact():
    g = gen(40)
    a = torch.randint(-128, 128, (7, 5000), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (5000, 3), generator=g, dtype=torch.int8)
    exact = a.to(torch.int64) @ b.to(torch.int64)
    assert torch.equal(C._float64_matmul(a, b), exact)
    # float32, with a 24-bit significand, is not: odd partial sums pass 2^24
    big = torch.full((1, 3001), 127, dtype=torch.int8)
    exact_big = 3001 * 127 * 127                                   # odd, above 2^24
    assert int(C._float64_matmul(big, big.T.contiguous())) == exact_big
    assert int((big.float() @ big.T.float()).to(torch.int64)) != exact_big
