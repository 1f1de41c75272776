"""Chapter "Meta-learning": the sinusoid task family, a functional MLP adapted to many tasks at
once, MAML (second order), first-order MAML, Reptile, and the pre-train-then-fine-tune baseline.

A *task batch* is four tensors ``(x_support, y_support, x_query, y_query)``, each of shape
``(T, K, 1)``: ``T`` tasks, ``K`` points per task (support and query may have different ``K``).
Adapted parameters are a dict ``name -> (T, *shape)``, one copy of the network per task, and every
inner loop runs over the ``T`` tasks at once with ``torch.func.vmap`` of ``torch.func.grad``.

All meta-learners are written as a loss ``loss_fn(model, batch)`` so that the book's one training
loop :func:`mlbook.train.train` (Adam) does the outer optimisation; ``task_batch`` has the
``data(batch_size, generator=...)`` signature that loop expects, with ``batch_size`` tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from . import _checks, nets
from .device import get_device

__all__ = ["AMPLITUDE", "PHASE", "X_RANGE", "SineTasks", "sample_sine_tasks", "task_batch",
           "predict_zero_mse", "pretrained_mse", "sine_mlp", "check_task_batch", "task_loss",
           "adapt", "predict", "maml_loss", "reptile_loss", "pooled_loss", "fine_tune_curve"]

AMPLITUDE = (0.1, 5.0)      # A ~ U[0.1, 5]       (Finn et al. 2017, section 5.1)
PHASE = (0.0, math.pi)      # phase ~ U[0, pi]
X_RANGE = (-5.0, 5.0)       # x ~ U[-5, 5]

Params = dict[str, torch.Tensor]


# ------------------------------------------------------------------ the task family

@dataclass
class SineTasks:
    """``T`` regression tasks ``y = A sin(x - phase)``; ``amplitude`` and ``phase`` have shape ``(T,)``."""

    amplitude: torch.Tensor
    phase: torch.Tensor

    def __len__(self) -> int:
        return len(self.amplitude)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Targets at ``x`` of shape ``(T, N, 1)`` (row ``t`` evaluated by task ``t``)."""
        _checks.tensor(x, "x", ndim=3, last_dim=1)
        if x.shape[0] != len(self):
            raise ValueError(f"x has {x.shape[0]} rows of tasks but there are {len(self)} tasks")
        return self.amplitude[:, None, None] * torch.sin(x - self.phase[:, None, None])

    def sample_x(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` inputs per task, uniform on ``X_RANGE``: shape ``(T, n, 1)``, on the tasks' device."""
        n = _checks.integer(n, "n", minimum=1)
        lo, hi = X_RANGE
        u = torch.rand(len(self), n, 1, generator=generator, dtype=self.amplitude.dtype)
        return (lo + (hi - lo) * u).to(self.amplitude.device)


def sample_sine_tasks(n_tasks: int, *, generator: torch.Generator | None = None, device=None,
                      dtype: torch.dtype = torch.float32) -> SineTasks:
    """Draw ``n_tasks`` tasks: amplitude ~ U[0.1, 5], phase ~ U[0, pi] (drawn on the CPU)."""
    n_tasks = _checks.integer(n_tasks, "n_tasks", minimum=1)
    u = torch.rand(2, n_tasks, generator=generator, dtype=dtype)
    amplitude = AMPLITUDE[0] + (AMPLITUDE[1] - AMPLITUDE[0]) * u[0]
    phase = PHASE[0] + (PHASE[1] - PHASE[0]) * u[1]
    dev = get_device(device)
    return SineTasks(amplitude.to(dev), phase.to(dev))


def task_batch(n_tasks: int, k_support: int = 10, k_query: int = 10, *,
               generator: torch.Generator | None = None, device=None, dtype: torch.dtype = torch.float32):
    """A fresh task batch ``(x_s, y_s, x_q, y_q)``, shapes ``(T, K_s, 1)`` and ``(T, K_q, 1)``.

    ``k_support = 10`` is the paper's K = 10 shots; the query points are fresh draws from the same
    tasks, on which the adapted network is scored.
    """
    k_support = _checks.integer(k_support, "k_support", minimum=1)
    k_query = _checks.integer(k_query, "k_query", minimum=1)
    tasks = sample_sine_tasks(n_tasks, generator=generator, device=device, dtype=dtype)
    x = tasks.sample_x(k_support + k_query, generator=generator)
    y = tasks(x)
    return x[:, :k_support], y[:, :k_support], x[:, k_support:], y[:, k_support:]


def predict_zero_mse() -> float:
    """Exact MSE of the model that always predicts 0: E[A^2] / 2 = (a^2 + a b + b^2) / 6. Implements (meta-zero)."""
    a, b = AMPLITUDE
    return (a * a + a * b + b * b) / 6


def pretrained_mse() -> float:
    """Exact MSE of the best single function, the task average E[y | x] = -(2/pi) E[A] cos x.

    Implements (meta-pretrain-mse): E[A^2]/2 - (2/pi^2) E[A]^2 (1 + sin(2c)/(2c)) for x ~ U[-c, c],
    the floor that pre-training on pooled tasks can reach before any fine-tuning.
    """
    mean_a = sum(AMPLITUDE) / 2
    c = X_RANGE[1]
    mean_cos_sq = (1 + math.sin(2 * c) / (2 * c)) / 2          # E[cos^2 x], x ~ U[-c, c]
    return predict_zero_mse() - 4 / math.pi ** 2 * mean_a ** 2 * mean_cos_sq


# ------------------------------------------------------------------ the functional network

def sine_mlp(hidden: tuple[int, ...] = (40, 40)) -> nn.Sequential:
    """The paper's regressor: 1 -> 40 -> 40 -> 1 with ReLU (``hidden`` changes the widths)."""
    return nets.mlp(1, *(_checks.integer(h, "hidden width", minimum=1) for h in hidden), 1)


def check_task_batch(batch, name: str = "batch") -> tuple[torch.Tensor, ...]:
    """Validate a task batch: four floating tensors ``(T, K, 1)``, same ``T``, x and y paired.

    Raises ``ValueError``/``TypeError`` naming the offending tensor, e.g. for a single task of
    shape ``(K, 1)`` where ``(1, K, 1)`` was meant.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) != 4:
        raise TypeError(f"{name} must be a tuple (x_support, y_support, x_query, y_query)")
    names = ("x_support", "y_support", "x_query", "y_query")
    for t, n in zip(batch, names):
        _checks.tensor(t, f"{name}.{n}", floating=True)
        if t.ndim != 3 or t.shape[-1] != 1:
            raise ValueError(f"{name}.{n} must have shape (tasks, points, 1), got {tuple(t.shape)}")
    n_tasks = {t.shape[0] for t in batch}
    if len(n_tasks) != 1:
        raise ValueError(f"{name}: every tensor needs the same number of tasks, got {[t.shape[0] for t in batch]}")
    for x, y, n in ((batch[0], batch[1], "support"), (batch[2], batch[3], "query")):
        if x.shape != y.shape:
            raise ValueError(f"{name}: x_{n} {tuple(x.shape)} and y_{n} {tuple(y.shape)} differ")
    return tuple(batch)


def _shared(model: nn.Module) -> Params:
    return dict(model.named_parameters())


def task_loss(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MSE of one task: ``x``, ``y`` of shape ``(K, 1)``, ``params`` one copy of the network."""
    return (functional_call(model, params, (x,)) - y).pow(2).mean()


def adapt(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, inner_lr: float, steps: int = 1,
          params: Params | None = None, first_order: bool = False) -> Params:
    """Inner loop: ``steps`` steps of gradient descent on each task's support loss, all tasks at once.

    Implements (meta-inner): phi_t <- phi_t - alpha grad L_t(phi_t), starting from phi_t = theta.
    ``x``, ``y``: ``(T, K, 1)``. ``params`` defaults to the model's own parameters (theta, shared
    by the tasks); returns a dict ``name -> (T, *shape)``. The result stays differentiable in theta
    (second order, (meta-grad)) unless ``first_order`` drops the inner gradients from the graph
    (meta-fomaml). With ``steps = 0`` each task gets a copy of theta.
    """
    _checks.tensor(x, "x", ndim=3, last_dim=1, floating=True)
    _checks.tensor(y, "y", ndim=3, last_dim=1, floating=True)
    if x.shape != y.shape:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must have the same shape (tasks, points, 1)")
    inner_lr = _checks.real(inner_lr, "inner_lr", nonnegative=True)
    steps = _checks.integer(steps, "steps", minimum=0)
    theta = _shared(model) if params is None else params
    if steps == 0:
        return {k: v.expand(x.shape[0], *v.shape) for k, v in theta.items()}  # (T, *shape), no copy
    # First step from the shared theta (in_dims=None: theta is not copied per task), then per task.
    phi = _descend(model, theta, x, y, inner_lr, 1, first_order, shared=True)
    return _descend(model, phi, x, y, inner_lr, steps - 1, first_order)


def _descend(model: nn.Module, phi: Params, x: torch.Tensor, y: torch.Tensor, inner_lr: float,
             steps: int, first_order: bool = False, shared: bool = False) -> Params:
    """``steps`` gradient steps on per-task parameters ``phi`` (T, *shape), vectorised over tasks.

    ``shared=True``: ``phi`` is one copy for all tasks; the result is per task all the same.
    """
    per_task_grad = vmap(grad(lambda p, xb, yb: task_loss(model, p, xb, yb)),
                         in_dims=(None if shared else 0, 0, 0))
    for _ in range(steps):
        g = per_task_grad(phi, x, y)                                          # (T, *shape) each
        if first_order:
            g = {k: v.detach() for k, v in g.items()}
        phi = {k: phi[k] - inner_lr * g[k] for k in phi}
    return phi


def predict(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Each task's network on its own inputs: ``params`` ``(T, *shape)``, ``x`` ``(T, N, 1)`` -> ``(T, N, 1)``."""
    _checks.tensor(x, "x", ndim=3, last_dim=1)
    return vmap(lambda p, xb: functional_call(model, p, (xb,)))(params, x)


def _query_mse(model: nn.Module, phi: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (predict(model, phi, x) - y).pow(2).mean()


# ------------------------------------------------------------------ meta-learners as losses

def maml_loss(model: nn.Module, batch, *, inner_lr: float = 0.01, inner_steps: int = 1,
              first_order: bool = False) -> torch.Tensor:
    """MAML's meta-objective on a task batch: query MSE after adapting on the support set.

    Implements (meta-maml); its gradient with respect to the model's parameters is the
    second-order meta-gradient (meta-grad), or with ``first_order=True`` the first-order
    approximation (meta-fomaml).
    """
    xs, ys, xq, yq = check_task_batch(batch)
    phi = adapt(model, xs, ys, inner_lr=inner_lr, steps=inner_steps, first_order=first_order)
    return _query_mse(model, phi, xq, yq)


def reptile_loss(model: nn.Module, batch, *, inner_lr: float = 0.01, inner_steps: int = 5) -> torch.Tensor:
    """A surrogate whose gradient is Reptile's update direction theta - mean_t phi_t.

    Implements (meta-reptile): adapt each task with ``inner_steps`` plain gradient steps on all its
    points (support and query together; Reptile has no split), then return
    ``0.5 * sum ||theta - stopgrad(mean phi)||^2``. An optimiser step on it moves theta towards
    the tasks' adapted weights.
    """
    xs, ys, xq, yq = check_task_batch(batch)
    x, y = torch.cat([xs, xq], 1), torch.cat([ys, yq], 1)
    with torch.no_grad():
        phi = adapt(model, x, y, inner_lr=inner_lr, steps=inner_steps)
    theta = _shared(model)
    return sum(0.5 * (theta[k] - phi[k].mean(0)).pow(2).sum() for k in theta)


def pooled_loss(model: nn.Module, batch) -> torch.Tensor:
    """Pre-training: one network fitted to every task's points pooled together (plain MSE).

    Its minimiser is the task-average regression function, eq. (meta-pretrain).
    """
    xs, ys, xq, yq = check_task_batch(batch)
    x, y = torch.cat([xs, xq], 1), torch.cat([ys, yq], 1)
    return (model(x) - y).pow(2).mean()


def fine_tune_curve(model: nn.Module, batch, *, inner_lr: float = 0.01, steps: int = 10,
                    chunk: int = 1000) -> torch.Tensor:
    """Test-time evaluation: query MSE after 0, 1, ..., ``steps`` inner steps on the support set.

    Every model is fine-tuned the same way, plain gradient descent with step ``inner_lr`` on
    its K support points (eq. (meta-inner)); returns a CPU tensor of ``steps + 1`` MSEs averaged over the
    tasks (processed ``chunk`` tasks at a time to bound memory).
    """
    xs, ys, xq, yq = check_task_batch(batch)
    steps = _checks.integer(steps, "steps", minimum=0)
    chunk = _checks.integer(chunk, "chunk", minimum=1)
    inner_lr = _checks.real(inner_lr, "inner_lr", nonnegative=True)
    theta = {k: v.detach() for k, v in _shared(model).items()}
    total = torch.zeros(steps + 1, dtype=torch.float64)
    for i in range(0, xs.shape[0], chunk):
        s_x, s_y, q_x, q_y = xs[i:i + chunk], ys[i:i + chunk], xq[i:i + chunk], yq[i:i + chunk]
        phi = adapt(model, s_x, s_y, inner_lr=inner_lr, steps=0, params=theta)
        for s in range(steps + 1):
            if s:
                phi = {k: v.detach() for k, v in _descend(model, phi, s_x, s_y, inner_lr, 1).items()}
            err = (predict(model, phi, q_x) - q_y).pow(2).mean(dim=(1, 2))  # (T,) per-task MSE
            total[s] += err.sum().detach().double().cpu()
    return total / xs.shape[0]
