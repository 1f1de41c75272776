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
