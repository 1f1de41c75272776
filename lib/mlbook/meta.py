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
           "support_hessian", "adapt", "predict", "maml_loss", "reptile_loss", "pooled_loss", "fine_tune_curve",
           "Episodes", "prototypes", "proto_logits", "proto_loss", "adapt_classifier",
           "maml_classifier_loss", "adapted_logits", "MetaSGD", "meta_sgd_loss", "linear_head_logits", "episode_accuracy",
           "check_proto_logits"]

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


def support_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The Hessian of one task's support loss in all the network's weights, shape ``(P, P)``.

    ``x``, ``y``: ``(K, 1)``, one task. The weights are flattened in ``named_parameters`` order.
    This is the matrix H_s of the MAML meta-gradient (meta-grad); alpha times its eigenvalues
    measure how far the first-order gradient (meta-fomaml) is from the second-order one.
    Dense: meant for the small networks of the chapter (P = 1761 for the sine network).
    """
    _checks.tensor(x, "x", ndim=2, last_dim=1, floating=True)
    _checks.tensor(y, "y", ndim=2, last_dim=1, floating=True)
    if x.shape != y.shape:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must have the same shape (points, 1)")
    named = [(k, v.detach()) for k, v in model.named_parameters()]
    sizes = [v.numel() for _, v in named]
    flat = torch.cat([v.reshape(-1) for _, v in named])

    def loss(w: torch.Tensor) -> torch.Tensor:
        parts = torch.split(w, sizes)
        params = {k: p.reshape(v.shape) for (k, v), p in zip(named, parts)}
        return task_loss(model, params, x, y)

    return torch.func.hessian(loss)(flat)                                      # (P, P)


def _step_sizes(inner_lr, theta: Params):
    """A non-negative float, or a dict of per-parameter step sizes shaped like ``theta``."""
    if not isinstance(inner_lr, dict):
        return _checks.real(inner_lr, "inner_lr", nonnegative=True)
    if set(inner_lr) != set(theta):
        raise ValueError(f"per-parameter step sizes need one tensor per parameter "
                         f"{sorted(theta)}, got {sorted(inner_lr)}")
    for k, v in inner_lr.items():
        _checks.tensor(v, f"inner_lr[{k!r}]", floating=True)
        if v.ndim and tuple(v.shape) != tuple(theta[k].shape[-v.ndim:]):
            raise ValueError(f"inner_lr[{k!r}] has shape {tuple(v.shape)}, the parameter "
                             f"{tuple(theta[k].shape)}")
    return inner_lr


def adapt(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, inner_lr, steps: int = 1,
          params: Params | None = None, first_order: bool = False) -> Params:
    """Inner loop: ``steps`` steps of gradient descent on each task's support loss, all tasks at once.

    Implements (meta-inner): phi_t <- phi_t - alpha grad L_t(phi_t), starting from phi_t = theta.
    ``inner_lr`` is the step size alpha, or a dict ``name -> tensor`` of one step size per weight
    (Meta-SGD, (meta-sgd)), multiplied elementwise with the gradient.
    ``x``, ``y``: ``(T, K, 1)``. ``params`` defaults to the model's own parameters (theta, shared
    by the tasks); returns a dict ``name -> (T, *shape)``. The result stays differentiable in theta
    (second order, (meta-grad)) unless ``first_order`` drops the inner gradients from the graph
    (meta-fomaml). With ``steps = 0`` each task gets a copy of theta.
    """
    _checks.tensor(x, "x", ndim=3, last_dim=1, floating=True)
    _checks.tensor(y, "y", ndim=3, last_dim=1, floating=True)
    if x.shape != y.shape:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must have the same shape (tasks, points, 1)")
    steps = _checks.integer(steps, "steps", minimum=0)
    theta = _shared(model) if params is None else params
    inner_lr = _step_sizes(inner_lr, theta)
    if steps == 0:
        return {k: v.expand(x.shape[0], *v.shape) for k, v in theta.items()}  # (T, *shape), no copy
    # First step from the shared theta (in_dims=None: theta is not copied per task), then per task.
    phi = _descend(model, theta, x, y, inner_lr, 1, first_order, shared=True)
    return _descend(model, phi, x, y, inner_lr, steps - 1, first_order)


def _descend(model: nn.Module, phi: Params, x: torch.Tensor, y: torch.Tensor, inner_lr,
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
        phi = {k: phi[k] - (inner_lr[k] if isinstance(inner_lr, dict) else inner_lr) * g[k]
               for k in phi}
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


class MetaSGD(nn.Module):
    """A network and one learned inner step size per weight (Li et al. 2017), eq. (meta-sgd).

    ``step_sizes()`` returns the dict ``name -> alpha`` that :func:`adapt` accepts; every alpha
    starts at ``init`` and is trained together with the network's weights by the outer optimiser.
    """

    def __init__(self, net: nn.Module, init: float = 0.01):
        super().__init__()
        init = _checks.real(init, "init", nonnegative=True)
        self.net = net
        self.names = [k for k, _ in net.named_parameters()]
        self.alpha = nn.ParameterList([nn.Parameter(torch.full_like(p.detach(), init))
                                       for p in net.parameters()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def step_sizes(self) -> Params:
        return dict(zip(self.names, self.alpha))


def meta_sgd_loss(model: MetaSGD, batch, *, inner_steps: int = 1) -> torch.Tensor:
    """Meta-SGD's meta-objective: the MAML query loss (meta-maml) after inner steps whose step
    sizes are the learned ``model.step_sizes()`` (meta-sgd); differentiable in the weights and in
    the step sizes, whose gradient is (meta-sgd-grad)."""
    if not isinstance(model, MetaSGD):
        raise TypeError(f"meta_sgd_loss needs a MetaSGD model, got {type(model).__name__}")
    xs, ys, xq, yq = check_task_batch(batch)
    phi = adapt(model.net, xs, ys, inner_lr=model.step_sizes(), steps=inner_steps)
    return _query_mse(model.net, phi, xq, yq)


def fine_tune_curve(model: nn.Module, batch, *, inner_lr=0.01, steps: int = 10,
                    chunk: int = 1000) -> torch.Tensor:
    """Test-time evaluation: query MSE after 0, 1, ..., ``steps`` inner steps on the support set.

    Every model is fine-tuned the same way, plain gradient descent with step ``inner_lr`` on
    its K support points (eq. (meta-inner)); returns a CPU tensor of ``steps + 1`` MSEs averaged over the
    tasks (processed ``chunk`` tasks at a time to bound memory).
    """
    xs, ys, xq, yq = check_task_batch(batch)
    steps = _checks.integer(steps, "steps", minimum=0)
    chunk = _checks.integer(chunk, "chunk", minimum=1)
    theta = {k: v.detach() for k, v in _shared(model).items()}
    inner_lr = _step_sizes(inner_lr, theta)
    if isinstance(inner_lr, dict):
        inner_lr = {k: v.detach() for k, v in inner_lr.items()}
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


# ------------------------------------------------------------------ few-shot classification

class Episodes:
    """N-way K-shot classification episodes drawn from the classes ``classes`` of ``(X, y)``.

    An episode picks ``n_way`` of the classes at random, relabels them ``0, ..., n_way - 1`` in a
    random order, and draws ``k_shot`` support and ``n_query`` query examples of each, without
    overlap. Calling ``episodes(batch_size, generator=g)`` returns ``batch_size`` episodes as
    ``(x_s, y_s, x_q, y_q)`` with shapes ``(B, N*K, p)``, ``(B, N*K)``, ``(B, N*Q, p)``,
    ``(B, N*Q)``, the signature :func:`mlbook.train.train` expects of its data.
    """

    def __init__(self, X: torch.Tensor, y: torch.Tensor, classes, *, n_way: int, k_shot: int,
                 n_query: int):
        _checks.tensor(X, "X", ndim=2, floating=True)
        _checks.tensor(y, "y", ndim=1)
        if len(X) != len(y):
            raise ValueError(f"X and y must have the same number of rows, got {len(X)} and {len(y)}")
        self.n_way = _checks.integer(n_way, "n_way", minimum=2)
        self.k_shot = _checks.integer(k_shot, "k_shot", minimum=1)
        self.n_query = _checks.integer(n_query, "n_query", minimum=1)
        self.classes = [int(c) for c in classes]
        if len(self.classes) < self.n_way:
            raise ValueError(f"{self.n_way}-way episodes need at least {self.n_way} classes, "
                             f"got {len(self.classes)}")
        self.X = X
        self.rows = []                                    # per class: its row indices (CPU)
        for c in self.classes:
            rows = torch.nonzero(y.cpu() == c).flatten()
            if len(rows) < self.k_shot + self.n_query:
                raise ValueError(f"class {c} has {len(rows)} examples, fewer than "
                                 f"k_shot + n_query = {self.k_shot + self.n_query}")
            self.rows.append(rows)

    def __call__(self, batch_size: int, *, generator: torch.Generator | None = None):
        batch_size = _checks.integer(batch_size, "batch_size", minimum=1)
        n, k, q = self.n_way, self.k_shot, self.n_query
        support, query = [], []
        for _ in range(batch_size):
            chosen = torch.randperm(len(self.classes), generator=generator)[:n]   # label order
            s, r = [], []
            for c in chosen.tolist():
                rows = self.rows[c][torch.randperm(len(self.rows[c]), generator=generator)]
                s.append(rows[:k])
                r.append(rows[k:k + q])
            support.append(torch.cat(s))
            query.append(torch.cat(r))
        support, query = torch.stack(support), torch.stack(query)       # (B, N*K), (B, N*Q)
        dev = self.X.device
        y_s = torch.arange(n).repeat_interleave(k).expand(batch_size, -1).to(dev)
        y_q = torch.arange(n).repeat_interleave(q).expand(batch_size, -1).to(dev)
        return self.X[support.to(dev)], y_s, self.X[query.to(dev)], y_q


def _check_episodes(batch, name: str = "batch"):
    if not isinstance(batch, (tuple, list)) or len(batch) != 4:
        raise TypeError(f"{name} must be a tuple (x_support, y_support, x_query, y_query)")
    xs, ys, xq, yq = batch
    _checks.tensor(xs, f"{name}.x_support", ndim=3, floating=True)
    _checks.tensor(xq, f"{name}.x_query", ndim=3, floating=True)
    _checks.tensor(ys, f"{name}.y_support", ndim=2)
    _checks.tensor(yq, f"{name}.y_query", ndim=2)
    if ys.shape != xs.shape[:2] or yq.shape != xq.shape[:2]:
        raise ValueError(f"{name}: labels {tuple(ys.shape)}, {tuple(yq.shape)} do not match the "
                         f"examples {tuple(xs.shape)}, {tuple(xq.shape)} (episodes, points)")
    return xs, ys, xq, yq


def prototypes(z: torch.Tensor, y: torch.Tensor, n_way: int) -> torch.Tensor:
    """Class means of embedded support points: ``z`` (B, M, d), ``y`` (B, M) -> (B, N, d).

    The prototype c_k of the page's prototypical-network classifier (meta-proto).
    """
    onehot = nn.functional.one_hot(y, n_way).to(z.dtype)                # (B, M, N)
    counts = onehot.sum(1)                                               # (B, N)
    if (counts == 0).any():
        raise ValueError("every class needs at least one support example")
    return onehot.transpose(1, 2) @ z / counts[..., None]               # (B, N, d)


def proto_logits(z_query: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Negative squared distances to the prototypes, (B, Q, d) and (B, N, d) -> (B, Q, N).

    The logits of (meta-proto); equal, up to a constant per query point, to the linear
    classifier 2 c_k . z - ||c_k||^2 of (meta-proto-linear).
    """
    return -torch.cdist(z_query, protos).pow(2)


def proto_loss(embed: nn.Module, batch) -> torch.Tensor:
    """Prototypical networks' episode loss: cross-entropy of the query labels under (meta-proto)."""
    xs, ys, xq, yq = _check_episodes(batch)
    n_way = int(ys.max()) + 1
    logits = proto_logits(embed(xq), prototypes(embed(xs), ys, n_way))  # (B, N*Q, N)
    return nn.functional.cross_entropy(logits.flatten(0, 1), yq.flatten())


def _ce(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)


def adapt_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, inner_lr: float,
                     steps: int = 1, first_order: bool = True) -> Params:
    """The inner loop (meta-inner) for classification: ``steps`` steps on each episode's
    support cross-entropy, all episodes at once. ``x`` (B, M, p), ``y`` (B, M) -> per-episode
    parameters ``name -> (B, *shape)``."""
    inner_lr = _checks.real(inner_lr, "inner_lr", nonnegative=True)
    steps = _checks.integer(steps, "steps", minimum=0)
    phi = {k: v.expand(x.shape[0], *v.shape) for k, v in _shared(model).items()}
    per_task_grad = vmap(grad(lambda p, xb, yb: _ce(model, p, xb, yb)))
    for _ in range(steps):
        g = per_task_grad(phi, x, y)
        if first_order:
            g = {k: v.detach() for k, v in g.items()}
        phi = {k: phi[k] - inner_lr * g[k] for k in phi}
    return phi


def maml_classifier_loss(model: nn.Module, batch, *, inner_lr: float = 0.5, inner_steps: int = 5,
                         first_order: bool = True) -> torch.Tensor:
    """MAML's objective (meta-maml) on classification episodes: query cross-entropy after
    ``inner_steps`` steps on the support set (first-order (meta-fomaml) by default)."""
    xs, ys, xq, yq = _check_episodes(batch)
    logits = adapted_logits(model, xs, ys, xq, inner_lr=inner_lr, steps=inner_steps,
                            first_order=first_order)                        # (B, N*Q, N)
    return nn.functional.cross_entropy(logits.flatten(0, 1), yq.flatten())


def adapted_logits(model: nn.Module, x_s: torch.Tensor, y_s: torch.Tensor, x_q: torch.Tensor, *,
                   inner_lr: float, steps: int, first_order: bool = True) -> torch.Tensor:
    """Query logits (B, Q, N) of the network after ``steps`` inner steps on each episode's
    support set ``x_s`` (B, M, p), ``y_s`` (B, M); ``x_q`` is (B, Q, p)."""
    phi = adapt_classifier(model, x_s, y_s, inner_lr=inner_lr, steps=steps,
                           first_order=first_order)
    return vmap(lambda p, xb: functional_call(model, p, (xb,)))(phi, x_q)


def linear_head_logits(z_s: torch.Tensor, y_s: torch.Tensor, z_q: torch.Tensor, n_way: int, *,
                       steps: int = 100, lr: float = 0.5, weight_decay: float = 1e-3) -> torch.Tensor:
    """Fit a new linear head per episode on frozen support features; return the query logits.

    Multinomial logistic regression, full-batch gradient descent from zero with an L2 penalty,
    all episodes at once: ``z_s`` (B, M, d), ``y_s`` (B, M), ``z_q`` (B, Q, d) -> (B, Q, N).
    """
    steps = _checks.integer(steps, "steps", minimum=1)
    z_s, z_q = z_s.detach(), z_q.detach()
    B, _, d = z_s.shape
    W = torch.zeros(B, d, n_way, dtype=z_s.dtype, device=z_s.device, requires_grad=True)
    b = torch.zeros(B, 1, n_way, dtype=z_s.dtype, device=z_s.device, requires_grad=True)
    target = nn.functional.one_hot(y_s, n_way).to(z_s.dtype)
    for _ in range(steps):
        with torch.enable_grad():
            logits = z_s @ W + b
            loss = -(target * logits.log_softmax(-1)).sum(-1).mean(-1).sum()   # sum over episodes
            loss = loss + weight_decay / 2 * W.pow(2).sum()
            gW, gb = torch.autograd.grad(loss, (W, b))
        with torch.no_grad():
            W -= lr * gW
            b -= lr * gb
    return (z_q @ W + b).detach()


def episode_accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Accuracy of each episode, ``logits`` (B, Q, N) and ``y`` (B, Q) -> (B,)."""
    return (logits.argmax(-1) == y).to(torch.float64).mean(-1)


def check_proto_logits(fn) -> "exercises.Verdict":
    """Checker for the exercise that writes ``proto_logits(z_query, protos)`` (meta-proto).

    ``fn`` maps query embeddings (B, Q, d) and prototypes (B, N, d) to logits (B, Q, N) equal to
    minus the squared Euclidean distances; a plain (unsquared) distance, a positive sign or a
    dot product fails.
    """
    from . import exercises

    g = torch.Generator().manual_seed(0)
    z, c = torch.randn(3, 7, 5, generator=g, dtype=torch.float64), torch.randn(3, 4, 5, generator=g,
                                                                                dtype=torch.float64)
    want = -((z[:, :, None, :] - c[:, None, :, :]) ** 2).sum(-1)            # (3, 7, 4)
    near = (torch.tensor([[[0.0, 0.0]]], dtype=torch.float64),
            torch.tensor([[[3.0, 4.0], [0.0, 1.0]]], dtype=torch.float64))  # distances 5 and 1
    cases = [
        exercises.Case("3 episodes, 7 queries, 4 prototypes in 5 dimensions", (z, c),
                       lambda r: isinstance(r, torch.Tensor) and tuple(r.shape) == (3, 7, 4),
                       "return one logit per query point and class: shape (B, Q, N)."),
        exercises.Case("a query at the origin, prototypes at distance 5 and 1", near,
                       lambda r: torch.allclose(r, torch.tensor([[[-25.0, -1.0]]],
                                                                dtype=torch.float64)),
                       "the logit is minus the *squared* distance: -25 and -1 here."),
        exercises.Case("random queries and prototypes", (z, c),
                       lambda r: torch.allclose(r, want, rtol=1e-9, atol=1e-9),
                       "subtract each prototype from each query (broadcast over a new axis), "
                       "square, sum over the last axis, negate."),
    ]
    return exercises.check(fn, cases, name=getattr(fn, "__name__", "your proto_logits"))


# ------------------------------------------------------------------ learning to reweight examples

def flip_labels(y: torch.Tensor, fraction: float, n_classes: int, *,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the labels of a random ``fraction`` of the rows by a different class, uniformly.

    Returns ``(noisy labels, mask of the flipped rows)``; the flipped rows never keep their label.
    """
    _checks.tensor(y, "y", ndim=1)
    fraction = _checks.real(fraction, "fraction")
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    n_classes = _checks.integer(n_classes, "n_classes", minimum=2)
    flipped = torch.zeros(len(y), dtype=torch.bool)
    flipped[torch.randperm(len(y), generator=generator)[:round(fraction * len(y))]] = True
    shift = torch.randint(1, n_classes, (len(y),), generator=generator)   # never 0: a new class
    noisy = torch.where(flipped, (y.cpu() + shift) % n_classes, y.cpu())
    return noisy.to(y.device), flipped.to(y.device)


def example_weights(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor,
                    y_val: torch.Tensor) -> torch.Tensor:
    """Ren et al.'s one-step look-ahead weights of a training minibatch, eq. (meta-reweight).

    Perturb every example's loss by a weight eps_i, take one gradient step
    theta' = theta - sum_i eps_i grad l_i, and differentiate the clean validation loss at theta'
    in eps at eps = 0: -grad l_i . grad L_val. Keep the positive part of minus that derivative
    and normalise to sum 1 (all zero when no example helps). Returns detached weights (B,).
    """
    _checks.tensor(x, "x", ndim=2, floating=True)
    _checks.tensor(x_val, "x_val", ndim=2, floating=True)
    if len(x) != len(y) or len(x_val) != len(y_val):
        raise ValueError("x and y (and x_val and y_val) must have the same number of rows")
    theta = _shared(model)
    eps = torch.zeros(len(x), dtype=x.dtype, device=x.device, requires_grad=True)
    with torch.enable_grad():
        losses = nn.functional.cross_entropy(functional_call(model, theta, (x,)), y,
                                             reduction="none")                       # (B,)
        g = torch.autograd.grad((eps * losses).sum(), list(theta.values()), create_graph=True)
        ahead = {k: v - gi for (k, v), gi in zip(theta.items(), g)}                  # step 1
        val = nn.functional.cross_entropy(functional_call(model, ahead, (x_val,)), y_val)
        (d_eps,) = torch.autograd.grad(val, eps)
    w = torch.clamp(-d_eps, min=0)
    total = w.sum()
    return (w / total if total > 0 else w).detach()


def reweighted_loss(model: nn.Module, batch, *, x_val: torch.Tensor, y_val: torch.Tensor) -> torch.Tensor:
    """The training loss with each example weighted by :func:`example_weights` (Ren et al. 2018)."""
    x, y = batch
    w = example_weights(model, x, y, x_val, y_val)                                     # (B,)
    return (w * nn.functional.cross_entropy(model(x), y, reduction="none")).sum()


# ------------------------------------------------------------------ a differentiable architecture choice

OPERATIONS = {"identity": lambda h: h, "tanh": torch.tanh, "relu": torch.relu,
              "zero": torch.zeros_like}


class MixedMLP(nn.Module):
    """An MLP whose every hidden activation is a DARTS mixed operation, eq. (meta-darts).

    ``sizes`` as for :func:`mlbook.nets.mlp`; after each hidden linear layer the output is
    ``sum_o softmax(gamma)_o o(h)`` over :data:`OPERATIONS`, with one row of architecture
    weights ``gamma`` per hidden layer (``self.arch``, shape ``(layers, 4)``, starting at zero:
    the uniform mixture).
    """

    def __init__(self, *sizes: int):
        super().__init__()
        if len(sizes) < 3:
            raise ValueError(f"MixedMLP needs at least one hidden layer, got sizes {sizes}")
        sizes = [_checks.integer(s, "sizes", minimum=1) for s in sizes]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.arch = nn.Parameter(torch.zeros(len(sizes) - 2, len(OPERATIONS)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mix = self.arch.softmax(-1)                                   # (layers, 4)
        for layer, linear in enumerate(self.linears[:-1]):
            h = linear(x)
            x = sum(m * op(h) for m, op in zip(mix[layer], OPERATIONS.values()))
        return self.linears[-1](x)

    def weights(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name != "arch"]

    def chosen(self) -> list[str]:
        """The operation each hidden layer keeps after the search: the largest gamma."""
        names = list(OPERATIONS)
        return [names[i] for i in self.arch.argmax(-1).tolist()]


def darts_search(model: MixedMLP, loss_fn, train_data: tuple, val_data: tuple, *, steps: int,
                 lr: float = 1e-2, arch_lr: float = 3e-2, batch_size: int = 64,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """First-order DARTS: alternate an Adam step on the weights with the training loss and an
    Adam step on the architecture weights with the validation loss, at the current weights
    (the first-order approximation of (meta-hypergrad)). Returns the softmax of the
    architecture weights after every step, ``(steps, layers, 4)``.

    A loop of its own because the two levels take turns; ``loss_fn(model, (x, y))``.
    """
    if not isinstance(model, MixedMLP):
        raise TypeError(f"darts_search needs a MixedMLP, got {type(model).__name__}")
    steps = _checks.integer(steps, "steps", minimum=1)
    w_opt = torch.optim.Adam(model.weights(), lr=_checks.real(lr, "lr", positive=True))
    a_opt = torch.optim.Adam([model.arch], lr=_checks.real(arch_lr, "arch_lr", positive=True))
    history = []
    for _ in range(steps):
        for data, opt in ((train_data, w_opt), (val_data, a_opt)):
            idx = torch.randint(len(data[0]), (batch_size,), generator=generator).to(data[0].device)
            model.zero_grad(set_to_none=True)
            loss_fn(model, (data[0][idx], data[1][idx])).backward()
            opt.step()
        history.append(model.arch.detach().softmax(-1).cpu())
    return torch.stack(history)
