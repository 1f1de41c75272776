"""mlbook.meta: sinusoid tasks, the vectorised inner loop, MAML / first-order MAML / Reptile, baseline."""

import copy
import math

import pytest
import torch

from mlbook import meta
from helpers import gen


def small_batch(n_tasks=4, k=5, q=7, seed=0, dtype=torch.float64):
    return meta.task_batch(n_tasks, k, q, generator=gen(seed), device="cpu", dtype=dtype)


def mlp64(seed=0, hidden=(8, 8)):
    torch.manual_seed(seed)
    return meta.sine_mlp(hidden).double()


# ------------------------------------------------------------------ the task family

def test_task_batch_shapes_and_ranges():
    xs, ys, xq, yq = meta.task_batch(50, 10, 30, generator=gen(1), device="cpu")
    assert xs.shape == ys.shape == (50, 10, 1) and xq.shape == yq.shape == (50, 30, 1)
    x = torch.cat([xs, xq], 1)
    assert x.min() >= -5 and x.max() <= 5
    assert ys.abs().max() <= 5 and yq.abs().max() <= 5


def test_tasks_follow_the_papers_distribution():
    tasks = meta.sample_sine_tasks(20_000, generator=gen(2), device="cpu", dtype=torch.float64)
    a, p = tasks.amplitude, tasks.phase
    assert a.min() >= 0.1 and a.max() <= 5.0 and p.min() >= 0 and p.max() <= math.pi
    assert abs(float(a.mean()) - 2.55) < 4 * 4.9 / math.sqrt(12 * 20_000)
    assert abs(float(p.mean()) - math.pi / 2) < 4 * math.pi / math.sqrt(12 * 20_000)


def test_targets_are_a_sine_with_the_tasks_amplitude_and_phase():
    tasks = meta.SineTasks(torch.tensor([2.0, 0.5]), torch.tensor([0.0, math.pi / 2]))
    x = torch.tensor([[[math.pi / 2]], [[0.0]]])
    torch.testing.assert_close(tasks(x), torch.tensor([[[2.0]], [[-0.5]]]))


def test_task_batch_is_reproducible_from_the_generator():
    a, b = small_batch(seed=3), small_batch(seed=3)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], small_batch(seed=4)[0])


def test_predict_zero_mse_closed_form_and_monte_carlo():
    exact = meta.predict_zero_mse()
    assert exact == pytest.approx((0.1 ** 2 + 0.1 * 5 + 5 ** 2) / 6, rel=1e-15)    # = 4.251666...
    _, _, _, y = meta.task_batch(20_000, 1, 20, generator=gen(5), device="cpu", dtype=torch.float64)
    per_task = y.pow(2).mean(dim=(1, 2))
    se = float(per_task.std()) / math.sqrt(len(per_task))
    assert abs(float(per_task.mean()) - exact) < 4 * se


def test_pretrained_mse_is_the_error_of_the_task_average():
    # E[y | x] = -(2/pi) E[A] cos x; its MSE is E[A^2]/2 - (4/pi^2) E[A]^2 E[cos^2 x].
    assert meta.pretrained_mse() == pytest.approx(
        25.51 / 6 - 4 / math.pi ** 2 * 2.55 ** 2 * (0.5 + math.sin(10) / 20), rel=1e-14)
    _, _, xq, yq = meta.task_batch(100_000, 1, 20, generator=gen(6), device="cpu", dtype=torch.float64)
    err = (yq + 2 / math.pi * 2.55 * torch.cos(xq)).pow(2).mean(dim=(1, 2))
    se = float(err.std()) / math.sqrt(len(err))
    assert abs(float(err.mean()) - meta.pretrained_mse()) < 4 * se
    assert meta.pretrained_mse() < meta.predict_zero_mse()


# ------------------------------------------------------------------ the network and the inner loop

def test_sine_mlp_is_1_40_40_1():
    net = meta.sine_mlp()
    assert [tuple(p.shape) for p in net.parameters()] == [(40, 1), (40,), (40, 40), (40,), (1, 40), (1,)]
    assert net(torch.zeros(7, 1)).shape == (7, 1)


def test_adapt_with_zero_steps_copies_theta_per_task():
    net = mlp64()
    xs, ys, _, _ = small_batch()
    phi = meta.adapt(net, xs, ys, inner_lr=0.1, steps=0)
    for name, p in net.named_parameters():
        assert phi[name].shape == (4, *p.shape)
        assert torch.equal(phi[name][2], p)


@pytest.mark.parametrize("steps", [1, 3])
def test_adapt_matches_torch_sgd_on_each_task(steps):
    net = mlp64()
    xs, ys, xq, _ = small_batch()
    phi = meta.adapt(net, xs, ys, inner_lr=0.05, steps=steps)
    for t in range(xs.shape[0]):
        copy_ = copy.deepcopy(net)
        opt = torch.optim.SGD(copy_.parameters(), lr=0.05)
        for _ in range(steps):
            opt.zero_grad()
            (copy_(xs[t]) - ys[t]).pow(2).mean().backward()
            opt.step()
        for name, p in copy_.named_parameters():
            torch.testing.assert_close(phi[name][t], p, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(meta.predict(net, phi, xq)[t], copy_(xq[t]), rtol=1e-12, atol=1e-12)


def unrolled_meta_gradient(net, batch, inner_lr, steps, first_order=False):
    """Plain autograd, one task at a time, through an unrolled inner loop."""
    xs, ys, xq, yq = batch
    params = list(net.parameters())
    total = 0.0
    for t in range(xs.shape[0]):
        phi = params
        for _ in range(steps):
            loss = (torch.func.functional_call(net, dict(zip(dict(net.named_parameters()), phi)), (xs[t],))
                    - ys[t]).pow(2).mean()
            g = torch.autograd.grad(loss, phi, create_graph=not first_order)
            phi = [p - inner_lr * gi for p, gi in zip(phi, g)]
        q = torch.func.functional_call(net, dict(zip(dict(net.named_parameters()), phi)), (xq[t],))
        total = total + (q - yq[t]).pow(2).mean() / xs.shape[0]
    return torch.autograd.grad(total, params)


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("first_order", [False, True])
def test_maml_gradient_matches_unrolled_autograd(steps, first_order):
    net, batch = mlp64(), small_batch()
    loss = meta.maml_loss(net, batch, inner_lr=0.1, inner_steps=steps, first_order=first_order)
    ours = torch.autograd.grad(loss, list(net.parameters()))
    ref = unrolled_meta_gradient(net, batch, 0.1, steps, first_order)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_second_and_first_order_gradients_differ():
    net, batch = mlp64(), small_batch()
    g2 = torch.autograd.grad(meta.maml_loss(net, batch, inner_lr=0.1), list(net.parameters()))
    g1 = torch.autograd.grad(meta.maml_loss(net, batch, inner_lr=0.1, first_order=True), list(net.parameters()))
    assert max(float((a - b).abs().max()) for a, b in zip(g1, g2)) > 1e-6


def test_maml_with_zero_inner_lr_is_the_plain_query_loss():
    net, (xs, ys, xq, yq) = mlp64(), small_batch()
    loss = meta.maml_loss(net, (xs, ys, xq, yq), inner_lr=0.0)
    torch.testing.assert_close(loss, (net(xq) - yq).pow(2).mean(), rtol=1e-12, atol=1e-12)


def test_reptile_gradient_is_theta_minus_mean_adapted_weights():
    net, (xs, ys, xq, yq) = mlp64(), small_batch()
    loss = meta.reptile_loss(net, (xs, ys, xq, yq), inner_lr=0.05, inner_steps=3)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    phi = meta.adapt(net, torch.cat([xs, xq], 1), torch.cat([ys, yq], 1), inner_lr=0.05, steps=3)
    for (name, p), g in zip(net.named_parameters(), grads):
        torch.testing.assert_close(g, (p - phi[name].mean(0)).detach(), rtol=1e-12, atol=1e-12)


def test_pooled_loss_is_the_mse_on_all_points():
    net, (xs, ys, xq, yq) = mlp64(), small_batch()
    x, y = torch.cat([xs, xq], 1).reshape(-1, 1), torch.cat([ys, yq], 1).reshape(-1, 1)
    torch.testing.assert_close(meta.pooled_loss(net, (xs, ys, xq, yq)), (net(x) - y).pow(2).mean())


def test_fine_tune_curve_matches_adapt_and_does_not_depend_on_chunks():
    net, (xs, ys, xq, yq) = mlp64(), small_batch(n_tasks=7)
    curve = meta.fine_tune_curve(net, (xs, ys, xq, yq), inner_lr=0.05, steps=3)
    assert curve.shape == (4,) and curve.device.type == "cpu"
    for s in range(4):
        phi = meta.adapt(net, xs, ys, inner_lr=0.05, steps=s)
        want = (meta.predict(net, phi, xq) - yq).pow(2).mean()
        torch.testing.assert_close(curve[s], want.detach(), rtol=1e-12, atol=1e-12)
    chunked = meta.fine_tune_curve(net, (xs, ys, xq, yq), inner_lr=0.05, steps=3, chunk=3)
    torch.testing.assert_close(chunked, curve, rtol=1e-12, atol=1e-12)


def test_meta_training_step_runs_through_the_books_train_loop():
    from mlbook.train import train

    net = meta.sine_mlp((8, 8))
    history = train(net, meta.maml_loss, lambda n, generator=None: meta.task_batch(n, generator=generator, device="cpu"),
                    steps=3, batch_size=5, generator=gen(0), device="cpu", show_progress=False)
    assert len(history) == 3 and all(math.isfinite(v) for v in history)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_tasks_on_cuda():
    cpu = meta.task_batch(3, generator=gen(9), device="cpu")
    cuda = meta.task_batch(3, generator=gen(9), device="cuda")
    assert all(torch.equal(a, b.cpu()) for a, b in zip(cpu, cuda))
    net = meta.sine_mlp().cuda()
    assert meta.maml_loss(net, cuda).device.type == "cuda"


# ------------------------------------------------------------------ bad input

def test_a_single_task_without_the_task_axis_is_rejected():
    xs, ys, xq, yq = small_batch()
    with pytest.raises(ValueError, match=r"batch.x_support must have shape \(tasks, points, 1\), got \(5, 1\)"):
        meta.maml_loss(mlp64(), (xs[0], ys[0], xq[0], yq[0]))


@pytest.mark.parametrize("bad, match", [
    (lambda b: (b[0], b[1], b[2][:3], b[3][:3]), "same number of tasks"),
    (lambda b: (b[0], b[1][:, :4], b[2], b[3]), "x_support .* and y_support .* differ"),
    (lambda b: (b[0].expand(-1, -1, 2), b[1], b[2], b[3]), r"shape \(tasks, points, 1\)"),
    (lambda b: (b[0][:, :, 0], b[1], b[2], b[3]), r"shape \(tasks, points, 1\)"),
])
def test_malformed_task_batches_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        meta.check_task_batch(bad(small_batch()))


def test_task_batch_type_errors():
    b = small_batch()
    with pytest.raises(TypeError, match="tuple"):
        meta.check_task_batch(b[:3])
    with pytest.raises(TypeError, match="floating-point"):
        meta.check_task_batch((b[0].long(), b[1], b[2], b[3]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        meta.check_task_batch((b[0].numpy(), b[1], b[2], b[3]))


def test_adapt_rejects_bad_arguments():
    net, (xs, ys, _, _) = mlp64(), small_batch()
    with pytest.raises(ValueError, match="inner_lr must be >= 0"):
        meta.adapt(net, xs, ys, inner_lr=-0.1)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        meta.adapt(net, xs, ys, inner_lr=0.1, steps=-1)
    with pytest.raises(ValueError, match="same shape"):
        meta.adapt(net, xs, ys[:, :2], inner_lr=0.1)
    with pytest.raises(ValueError, match="dimensions"):
        meta.adapt(net, xs[0], ys[0], inner_lr=0.1)


def test_task_sampling_rejects_bad_counts():
    with pytest.raises(ValueError, match="n_tasks must be >= 1"):
        meta.task_batch(0)
    with pytest.raises(ValueError, match="k_support must be >= 1"):
        meta.task_batch(3, 0)
    with pytest.raises(TypeError, match="n_tasks must be an integer"):
        meta.sample_sine_tasks(2.5)
    tasks = meta.sample_sine_tasks(3, device="cpu")
    with pytest.raises(ValueError, match="2 rows of tasks but there are 3"):
        tasks(torch.zeros(2, 4, 1))


# ------------------------------------------------------------------ the curvature of a task

def test_support_hessian_matches_double_autograd_and_is_symmetric():
    net = mlp64(hidden=(3, 3))
    xs, ys, _, _ = small_batch()
    H = meta.support_hessian(net, xs[0], ys[0])
    params = list(net.parameters())
    n = sum(p.numel() for p in params)
    assert H.shape == (n, n)
    torch.testing.assert_close(H, H.T, rtol=1e-12, atol=1e-12)
    loss = (net(xs[0]) - ys[0]).pow(2).mean()
    g = torch.cat([v.reshape(-1) for v in torch.autograd.grad(loss, params, create_graph=True)])
    rows = [torch.cat([v.reshape(-1) for v in torch.autograd.grad(g[i], params, retain_graph=True)])
            for i in range(n)]
    torch.testing.assert_close(H, torch.stack(rows), rtol=1e-10, atol=1e-12)


def test_first_order_error_is_alpha_times_hessian_times_first_order_gradient():
    # (meta-grad) minus (meta-fomaml): g_MAML - g_FO = -alpha H_s g_FO, one task, one step.
    net, (xs, ys, xq, yq) = mlp64(hidden=(4, 4)), small_batch(n_tasks=1)
    alpha = 0.1

    def flat_grad(first_order):
        loss = meta.maml_loss(net, (xs, ys, xq, yq), inner_lr=alpha, first_order=first_order)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(net.parameters()))])

    g2, g1 = flat_grad(False), flat_grad(True)
    H = meta.support_hessian(net, xs[0], ys[0])
    torch.testing.assert_close(g2 - g1, -alpha * H @ g1, rtol=1e-9, atol=1e-12)


def test_support_hessian_rejects_a_task_batch():
    xs, ys, _, _ = small_batch()
    with pytest.raises(ValueError, match="x must have 2 dimensions"):
        meta.support_hessian(mlp64(), xs, ys)
    with pytest.raises(ValueError, match="same shape"):
        meta.support_hessian(mlp64(), xs[0], ys[0][:3])


# ------------------------------------------------------------------ few-shot classification

def toy_classes(n_classes=6, per_class=12, dim=5, seed=0):
    g = gen(seed)
    y = torch.arange(n_classes).repeat_interleave(per_class)
    X = torch.randn(len(y), dim, generator=g, dtype=torch.float64) + 3 * torch.nn.functional.one_hot(
        y % dim, dim).double()
    return X, y


def test_episodes_shapes_labels_and_disjoint_support_and_query():
    X, y = toy_classes()
    X = torch.cat([X, torch.arange(len(X), dtype=torch.float64)[:, None]], 1)   # row id as a feature
    eps = meta.Episodes(X, y, [1, 2, 4, 5], n_way=3, k_shot=2, n_query=4)
    xs, ys, xq, yq = eps(7, generator=gen(1))
    assert xs.shape == (7, 6, 6) and ys.shape == (7, 6) and xq.shape == (7, 12, 6) and yq.shape == (7, 12)
    assert torch.equal(ys[0], torch.tensor([0, 0, 1, 1, 2, 2]))
    for e in range(7):
        s_rows, q_rows = xs[e, :, -1].long(), xq[e, :, -1].long()
        assert not set(s_rows.tolist()) & set(q_rows.tolist())
        for label in range(3):           # one original class per label, from the allowed ones
            orig = set(y[torch.cat([s_rows[ys[e] == label], q_rows[yq[e] == label]])].tolist())
            assert len(orig) == 1 and orig <= {1, 2, 4, 5}
    again = eps(7, generator=gen(1))
    assert all(torch.equal(a, b) for a, b in zip((xs, ys, xq, yq), again))


def test_prototypes_are_class_means_and_logits_are_the_linear_classifier():
    g = gen(2)
    z = torch.randn(2, 6, 3, generator=g, dtype=torch.float64)
    labels = torch.tensor([[0, 1, 0, 2, 1, 2], [2, 2, 1, 0, 0, 1]])
    c = meta.prototypes(z, labels, 3)
    torch.testing.assert_close(c[1, 2], z[1, :2].mean(0))
    zq = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    logits = meta.proto_logits(zq, c)
    linear = 2 * zq @ c.transpose(1, 2) - c.pow(2).sum(-1)[:, None, :]          # (meta-proto-linear)
    torch.testing.assert_close(logits.softmax(-1), linear.softmax(-1), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="at least one support example"):
        meta.prototypes(z, torch.zeros(2, 6, dtype=torch.long), 3)


def test_proto_loss_is_the_query_cross_entropy_and_trains():
    X, y = toy_classes()
    eps = meta.Episodes(X.float(), y, range(6), n_way=3, k_shot=2, n_query=3)
    batch = eps(4, generator=gen(3))
    torch.manual_seed(0)
    embed = torch.nn.Linear(5, 4)
    xs, ys, xq, yq = batch
    logits = meta.proto_logits(embed(xq), meta.prototypes(embed(xs), ys, 3))
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, 3), yq.reshape(-1))
    torch.testing.assert_close(meta.proto_loss(embed, batch), want)


def test_adapted_logits_with_zero_steps_are_the_networks_outputs():
    X, y = toy_classes()
    xs, ys, xq, _ = meta.Episodes(X.float(), y, range(6), n_way=3, k_shot=2, n_query=3)(
        2, generator=gen(4))
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 3)
    torch.testing.assert_close(meta.adapted_logits(net, xs, ys, xq, inner_lr=0.5, steps=0), net(xq))
    one = meta.adapted_logits(net, xs, ys, xq, inner_lr=0.5, steps=1)
    for e in range(2):                   # one SGD step on each episode's support set
        copy_ = copy.deepcopy(net)
        opt = torch.optim.SGD(copy_.parameters(), lr=0.5)
        torch.nn.functional.cross_entropy(copy_(xs[e]), ys[e]).backward()
        opt.step()
        torch.testing.assert_close(one[e], copy_(xq[e]), rtol=1e-5, atol=1e-6)


def test_linear_head_fits_separable_support_points():
    z_s = torch.tensor([[[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]]])
    y_s = torch.tensor([[0, 1, 2]])
    logits = meta.linear_head_logits(z_s, y_s, z_s + 0.1, 3, steps=300)
    assert logits.shape == (1, 3, 3)
    assert torch.equal(logits.argmax(-1), y_s)
    assert meta.episode_accuracy(logits, y_s).item() == 1.0


def test_check_proto_logits_passes_a_right_answer_and_fails_wrong_ones(capsys):
    assert meta.check_proto_logits(meta.proto_logits)
    assert not meta.check_proto_logits(lambda zq, c: -torch.cdist(zq, c))          # not squared
    assert not meta.check_proto_logits(lambda zq, c: torch.cdist(zq, c).pow(2))    # wrong sign
    assert not meta.check_proto_logits(lambda zq, c: zq @ c.transpose(1, 2))       # dot product
    assert "squared" in capsys.readouterr().out


def test_episodes_reject_bad_arguments():
    X, y = toy_classes()
    with pytest.raises(ValueError, match="at least 4 classes"):
        meta.Episodes(X, y, [0, 1, 2], n_way=4, k_shot=1, n_query=1)
    with pytest.raises(ValueError, match="class 0 has 12 examples"):
        meta.Episodes(X, y, range(6), n_way=2, k_shot=10, n_query=5)
    with pytest.raises(ValueError, match="same number of rows"):
        meta.Episodes(X, y[:-1], range(6), n_way=2, k_shot=1, n_query=1)
    with pytest.raises(ValueError, match="n_way must be >= 2"):
        meta.Episodes(X, y, range(6), n_way=1, k_shot=1, n_query=1)
    with pytest.raises(ValueError, match="do not match"):
        meta.proto_loss(torch.nn.Linear(5, 2), (X[None].float(), y[None, :5], X[None].float(), y[None]))


# ------------------------------------------------------------------ gradients through one step

def test_meta_sgd_with_constant_step_sizes_is_maml_and_its_gradient_is_eq_meta_sgd():
    torch.manual_seed(0)
    model = meta.MetaSGD(meta.sine_mlp((6, 6)).double(), init=0.05)
    batch = small_batch(n_tasks=1)
    loss = meta.meta_sgd_loss(model, batch)
    torch.testing.assert_close(loss, meta.maml_loss(model.net, batch, inner_lr=0.05))
    # (meta-sgd): d L_q(phi) / d alpha = -grad L_s(theta) * grad L_q(phi), elementwise
    xs, ys, xq, yq = batch
    d_alpha = torch.autograd.grad(loss, list(model.alpha))
    theta = dict(model.net.named_parameters())
    g_s = torch.autograd.grad(meta.task_loss(model.net, theta, xs[0], ys[0]), list(theta.values()))
    phi = {k: v - 0.05 * g for (k, v), g in zip(theta.items(), g_s)}
    g_q = torch.autograd.grad(meta.task_loss(model.net, phi, xq[0], yq[0]), list(phi.values()))
    for d, a, b in zip(d_alpha, g_s, g_q):
        torch.testing.assert_close(d, -a * b, rtol=1e-10, atol=1e-12)


def test_per_parameter_step_sizes_are_validated():
    net, (xs, ys, _, _) = mlp64(), small_batch()
    with pytest.raises(ValueError, match="one tensor per parameter"):
        meta.adapt(net, xs, ys, inner_lr={"0.weight": torch.ones(8, 1)})
    sizes = {k: torch.ones(3) for k, _ in net.named_parameters()}
    with pytest.raises(ValueError, match="has shape"):
        meta.adapt(net, xs, ys, inner_lr=sizes)
    with pytest.raises(TypeError, match="MetaSGD"):
        meta.meta_sgd_loss(net, small_batch())


def test_flip_labels_changes_exactly_the_flipped_rows_to_another_class():
    y = torch.arange(10).repeat(20)
    noisy, flipped = meta.flip_labels(y, 0.4, 10, generator=gen(0))
    assert flipped.sum().item() == 80
    assert (noisy[flipped] != y[flipped]).all() and torch.equal(noisy[~flipped], y[~flipped])
    assert noisy.min() >= 0 and noisy.max() <= 9
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\]"):
        meta.flip_labels(y, 1.5, 10)


def test_example_weights_are_the_clipped_normalised_gradient_inner_products():
    g = gen(5)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    x, x_val = torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g,
                                                                              dtype=torch.float64)
    y, y_val = torch.randint(0, 3, (8,), generator=g), torch.randint(0, 3, (6,), generator=g)
    w = meta.example_weights(net, x, y, x_val, y_val)
    params = list(net.parameters())

    def flat_grad(loss):
        return torch.cat([v.reshape(-1) for v in torch.autograd.grad(loss, params)])

    g_val = flat_grad(torch.nn.functional.cross_entropy(net(x_val), y_val))
    dots = torch.stack([flat_grad(torch.nn.functional.cross_entropy(net(x[i:i + 1]), y[i:i + 1]))
                        @ g_val for i in range(8)])
    want = dots.clamp(min=0)                                               # (meta-reweight)
    torch.testing.assert_close(w, want / want.sum(), rtol=1e-9, atol=1e-12)
    assert 0 < (w > 0).sum() < 8                      # both signs occur in this case
    loss = meta.reweighted_loss(net, (x, y), x_val=x_val, y_val=y_val)
    per = torch.nn.functional.cross_entropy(net(x), y, reduction="none")
    torch.testing.assert_close(loss, (w * per).sum())


def test_mixed_mlp_with_one_operation_is_the_plain_network():
    torch.manual_seed(0)
    mixed = meta.MixedMLP(3, 5, 4, 2).double()
    with torch.no_grad():
        mixed.arch.copy_(torch.tensor([[-1e4, -1e4, 0.0, -1e4], [-1e4, 0.0, -1e4, -1e4]]))
    a, b, c = mixed.linears
    x = torch.randn(7, 3, dtype=torch.float64)
    want = c(torch.tanh(b(torch.relu(a(x)))))
    torch.testing.assert_close(mixed(x), want)
    assert mixed.chosen() == ["relu", "tanh"]
    assert len(mixed.weights()) == 6                # the architecture weights are not among them
    with torch.no_grad():
        mixed.arch.zero_()                          # uniform mixture: the mean of the four
    h = a(x)
    mean = (h + torch.tanh(h) + torch.relu(h)) / 4
    torch.testing.assert_close(mixed.linears[1](mean), b(mean))
    with pytest.raises(ValueError, match="at least one hidden layer"):
        meta.MixedMLP(3, 2)


def test_darts_search_moves_both_levels_and_returns_the_mixture_history():
    torch.manual_seed(0)
    model = meta.MixedMLP(1, 4, 1)
    x = torch.linspace(-1, 1, 32)[:, None]
    before = [p.detach().clone() for p in model.weights()]

    def mse(m, b):
        return (m(b[0]) - b[1]).pow(2).mean()

    hist = meta.darts_search(model, mse, (x, x.abs()), (x, x.abs()), steps=3, batch_size=8,
                             generator=gen(0))
    assert hist.shape == (3, 1, 4)
    torch.testing.assert_close(hist.sum(-1), torch.ones(3, 1))
    assert not torch.equal(hist[-1], torch.full((1, 4), 0.25))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.weights()))
    with pytest.raises(TypeError, match="MixedMLP"):
        meta.darts_search(torch.nn.Linear(1, 1), mse, (x, x), (x, x), steps=1)
