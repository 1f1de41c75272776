r"""Score matching without the score: the exact (Hyvarinen), sliced and denoising objectives.

Page ``book/score_matching.md``; equation labels ``sm-*`` refer to it, ``score-*`` to
``book/diffusion_score.md``. A score model is any callable ``score(x)`` mapping points ``x`` of
shape ``(n, d)`` to vectors ``(n, d)``, row by row (no batch statistics), so that the gradient of
a sum over rows gives each row's own derivatives. Losses return scalars (means over the batch);
``per_sample=True`` returns the ``(n,)`` values whose mean the loss is.

- :func:`ism_loss`: Hyvarinen's objective with the exact trace of the Jacobian, eq. (sm-ism);
  ``d`` backward passes.
- :func:`sliced_loss`: sliced score matching with random projections u, eq. (sm-ssm), and its
  variance-reduced form for Gaussian u, eq. (sm-ssm-vr); one backward pass for any number of
  projections (the batch is tiled).
- :func:`dsm_loss`: denoising score matching at one noise level sigma, eq. (sm-dsm).
- :func:`score_error`: E ||s(x) - grad log p(x)||^2, the quantity all three minimise
  (explicit score matching, eq. score-esm, is half of it).
- :func:`exact_score`, :func:`blur`: the exact score of a Gaussian mixture and of the mixture
  blurred by N(0, sigma^2 I), the density whose score DSM learns.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from . import _checks
from .data import GaussianMixture
from .exercises import Case, Verdict, check

__all__ = ["jacobian_trace", "ism_loss", "projections", "sliced_loss", "dsm_loss", "dsm_floor",
           "score_error", "blur", "exact_score", "draw_field", "check_sliced_loss"]

Score = Callable[[torch.Tensor], torch.Tensor]


def _points(x, name: str = "x") -> torch.Tensor:
    x = _checks.tensor(x, name, ndim=2, floating=True, min_rows=1)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite")
    return x


def _call(score: Score, x: torch.Tensor) -> torch.Tensor:
    """score(x), checked to be an (n, d) tensor like x."""
    if not callable(score):
        raise TypeError(f"score must be callable as score(x), got {type(score).__name__}")
    s = score(x)
    if not isinstance(s, torch.Tensor) or s.shape != x.shape:
        got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise ValueError(f"score(x) must return a tensor of the shape of x {tuple(x.shape)}, "
                         f"got {got}")
    return s


def _reduce(values: torch.Tensor, per_sample: bool) -> torch.Tensor:
    return values if per_sample else values.mean()


# ---------------------------------------------------------------- Hyvarinen's objective

def jacobian_trace(score: Score, x: torch.Tensor, *, create_graph: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """s(x) and the exact trace of its Jacobian, tr grad_x s(x) = sum_i ds_i/dx_i: (n, d), (n,).

    One backward pass per coordinate: d passes. ``create_graph`` keeps the graph so that a loss
    built on the trace can be differentiated again in the model's parameters.
    """
    x = _points(x).detach().requires_grad_(True)
    s = _call(score, x)
    trace = torch.zeros(len(x), dtype=s.dtype, device=s.device)
    for i in range(x.shape[1]):                     # d backward passes
        (g,) = torch.autograd.grad(s[:, i].sum(), x, create_graph=create_graph)
        trace = trace + g[:, i]
    return s, trace


def ism_loss(score: Score, x: torch.Tensor, *, per_sample: bool = False) -> torch.Tensor:
    """Hyvarinen's objective E[1/2 ||s(x)||^2 + tr grad_x s(x)] on data x, eq. (sm-ism).

    It equals the explicit objective 1/2 E||s - grad log p||^2 minus a constant of the data
    (eq. sm-ism-esm), so it can be minimised from samples alone. Exact trace: d backward passes.
    """
    s, trace = jacobian_trace(score, x)
    return _reduce(0.5 * s.square().sum(1) + trace, per_sample)


# ---------------------------------------------------------------- sliced score matching

def projections(n_projections: int, n: int, d: int, *, kind: str = "gaussian",
                generator: torch.Generator | None = None, dtype=torch.float32,
                device=None) -> torch.Tensor:
    """Random directions u with E[u u^T] = I: shape (n_projections, n, d).

    ``kind="gaussian"``: u ~ N(0, I); ``kind="rademacher"``: independent signs +-1. Drawn on the
    CPU (the same numbers on every device) and moved to ``device``.
    """
    m = _checks.integer(n_projections, "n_projections", minimum=1)
    n = _checks.integer(n, "n", minimum=1)
    d = _checks.integer(d, "d", minimum=1)
    _checks.choice(kind, "kind", ["gaussian", "rademacher"])
    if kind == "gaussian":
        u = torch.randn(m, n, d, generator=generator, dtype=dtype)
    else:
        u = 2 * torch.randint(0, 2, (m, n, d), generator=generator).to(dtype) - 1
    return u if device is None else u.to(device)


def sliced_loss(score: Score, x: torch.Tensor, *, n_projections: int = 1, kind: str = "gaussian",
                variance_reduced: bool = False, u: torch.Tensor | None = None,
                generator: torch.Generator | None = None,
                per_sample: bool = False) -> torch.Tensor:
    r"""Sliced score matching, eq. (sm-ssm): E_x E_u[u^T grad_x(u^T s(x)) + 1/2 (u^T s(x))^2].

    Its expectation over u equals Hyvarinen's objective (:func:`ism_loss`) whenever
    E[u u^T] = I (proposition sm-ssm-unbiased). ``variance_reduced=True`` replaces
    1/2 (u^T s)^2 by its exact expectation 1/2 ||s||^2, eq. (sm-ssm-vr) (exact for any u with
    E[u u^T] = I; Song et al. state it for Gaussian u).

    Args:
        u: fixed directions, shape (M, n, d); otherwise ``n_projections`` of ``kind`` are drawn.

    The M copies of the batch are stacked, so a single backward pass gives all M
    vector-Jacobian products u^T grad_x s.
    """
    x = _points(x)
    n, d = x.shape
    if u is None:
        u = projections(n_projections, n, d, kind=kind, generator=generator, dtype=x.dtype,
                        device=x.device)
    else:
        _checks.tensor(u, "u", ndim=3, floating=True)
        if u.shape[1:] != x.shape:
            raise ValueError(f"u must have shape (M, {n}, {d}), got {tuple(u.shape)}")
        u = u.to(x.device, x.dtype)
    m = u.shape[0]
    xr = x.detach().repeat(m, 1).requires_grad_(True)             # (M n, d)
    ur = u.reshape(m * n, d)
    s = _call(score, xr)                                          # (M n, d)
    us = (ur * s).sum(1)                                          # u^T s, (M n,)
    (g,) = torch.autograd.grad(us.sum(), xr, create_graph=True)   # grad_x (u^T s), (M n, d)
    quad = (ur * g).sum(1)                                        # u^T (grad s) u
    half = 0.5 * s.square().sum(1) if variance_reduced else 0.5 * us.square()
    values = (quad + half).reshape(m, n).mean(0)                  # average over projections
    return _reduce(values, per_sample)


# ---------------------------------------------------------------- denoising score matching

def dsm_loss(score: Score, x: torch.Tensor, sigma: float, *,
             generator: torch.Generator | None = None, per_sample: bool = False) -> torch.Tensor:
    r"""Denoising score matching at one noise level, eq. (sm-dsm).

    x_sigma = x + sigma eps, and the loss is 1/2 E||s(x_sigma) + eps / sigma||^2: the score of
    the kernel N(x_sigma; x, sigma^2 I) as the target (eq. score-dsm-target with alpha = 1).
    Its minimiser is the score of the blurred density p_sigma (:func:`blur`), not of p.
    """
    x = _points(x)
    sigma = _checks.real(sigma, "sigma", positive=True)
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    s = _call(score, x + sigma * eps)
    return _reduce(0.5 * (s + eps / sigma).square().sum(1), per_sample)


def dsm_floor(mixture: GaussianMixture, sigma: float, n: int, *,
              generator: torch.Generator | None = None) -> tuple[float, float]:
    """Monte Carlo estimate of the smallest DSM loss, reached by the exact blurred score: (mean, se).

    1/2 E||grad log p_sigma(x_sigma) + eps / sigma||^2 (exercise score-ex-dsm-floor). For one
    Gaussian N(m, l^2 I) it is d l^2 / (2 sigma^2 (l^2 + sigma^2)) in closed form; for a mixture
    the responsibilities enter and it is estimated from n draws.
    """
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
    n = _checks.integer(n, "n", minimum=2)
    sigma = _checks.real(sigma, "sigma", positive=True)
    x = mixture.sample(n, generator=generator, device="cpu").double()
    values = dsm_loss(exact_score(mixture, sigma), x, sigma, generator=generator,
                      per_sample=True)
    return float(values.mean()), float(values.std() / math.sqrt(n))


# ---------------------------------------------------------------- exact scores and the error

def blur(mixture: GaussianMixture, sigma: float) -> GaussianMixture:
    """p_sigma = p * N(0, sigma^2 I): each component's variance grows by sigma^2, eq. (score-smoothing-mixture)."""
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
    sigma = _checks.real(sigma, "sigma", nonnegative=True)
    return GaussianMixture(mixture.means, (mixture.stds**2 + sigma**2).sqrt(), mixture.weights)


def exact_score(mixture: GaussianMixture, sigma: float = 0.0) -> Score:
    """The exact score of the mixture blurred by N(0, sigma^2 I), eq. (score-mixture): a callable.

    grad log p_sigma(x) = sum_k w_k(x) (mu_k - x) / (l_k^2 + sigma^2), with responsibilities w_k.
    """
    p = blur(mixture, sigma)

    def score(x: torch.Tensor) -> torch.Tensor:
        x = _checks.tensor(x, "x", ndim=2, last_dim=p.dim, floating=True)
        w = torch.softmax(p.component_log_probs(x), dim=1)                 # (n, K)
        c = w / p.stds.to(x).square()                                      # w_k / v_k
        return c @ p.means.to(x) - c.sum(1, keepdim=True) * x

    return score


def score_error(score: Score, target: Score, x: torch.Tensor, *,
                relative: bool = False) -> float:
    """E ||s(x) - target(x)||^2 over the rows of x (twice the explicit objective, eq. score-esm).

    Use data samples and the data's exact score for the error against p; noised samples and
    the blurred score (:func:`exact_score` with sigma) for the error against p_sigma.
    ``relative=True`` divides by E||target(x)||^2.
    """
    x = _points(x)
    with torch.no_grad():
        s, t = _call(score, x), _call(target, x)
        err = float((s - t).square().sum(1).mean())
        return err / float(t.square().sum(1).mean()) if relative else err


# ---------------------------------------------------------------- drawing

def draw_field(ax, score: Score, *, extent=(-3.0, 3.0, -3.0, 3.0), n: int = 15,
               log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
               reference: Score | None = None, vmax: float | None = None,
               max_length: float = 6.0, resolution: int = 120, **kwargs):
    """Arrows of a score field on an n x n grid, over an image of a density or of an error.

    With ``log_prob`` alone the background is that density; with ``reference`` (an exact score)
    it is the squared error ||score - reference||^2, and with both the error weighted by the
    density, p ||score - reference||^2, whose integral is the error :func:`score_error`
    measures; from white (0) to dark red (``vmax``). Arrows
    longer than ``max_length`` are shortened to it (near a narrow mode the score is steep), so
    directions stay readable everywhere. Returns the quiver artist.
    """
    n = _checks.integer(n, "n", minimum=2)
    max_length = _checks.real(max_length, "max_length", positive=True)
    x0, x1, y0, y1 = (float(e) for e in extent)
    try:
        dev = next(score.parameters()).device            # a module: evaluate where it lives
    except (AttributeError, StopIteration):
        dev = torch.device("cpu")

    def field(pts: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return _call(score, pts.to(dev)).detach().cpu().double()

    def grid(k: int) -> torch.Tensor:
        gx, gy = torch.meshgrid(torch.linspace(x0, x1, k), torch.linspace(y0, y1, k),
                                indexing="xy")
        return torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)

    if reference is not None:
        pts = grid(resolution)
        with torch.no_grad():
            err = (field(pts) - _call(reference, pts).double()).square().sum(1)
            if log_prob is not None:
                err = err * log_prob(pts).double().exp()
        ax.imshow(err.reshape(resolution, resolution).numpy(), extent=(x0, x1, y0, y1),
                  origin="lower", cmap="Reds", vmin=0.0, vmax=vmax, aspect="equal")
    elif log_prob is not None:
        from . import plot

        plot.density_image(ax, log_prob, extent=(x0, x1, y0, y1), resolution=resolution,
                           cmap="Blues")
    pts = grid(n)
    s = field(pts)
    s = s * (max_length / s.norm(dim=1, keepdim=True).clamp_min(max_length))  # shorten
    kwargs.setdefault("color", "k")
    kwargs.setdefault("width", 0.004)
    q = ax.quiver(pts[:, 0].numpy(), pts[:, 1].numpy(), s[:, 0].numpy(), s[:, 1].numpy(),
                  angles="xy", scale_units="xy", scale=max_length / (0.9 * (x1 - x0) / (n - 1)),
                  **kwargs)
    ax.set(xlim=(x0, x1), ylim=(y0, y1), xticks=[], yticks=[], aspect="equal")
    return q


# ---------------------------------------------------------------- the coding exercise

def check_sliced_loss(fn: Callable) -> Verdict:
    """Checker for the reader's sliced score matching loss ``fn(score, x, u) -> scalar``.

    ``u`` has shape (n, d), one direction per point; the loss is the batch mean of
    u^T grad_x(u^T s(x)) + 1/2 (u^T s(x))^2, eq. (sm-ssm). Cases: a linear score s(x) = A x + b,
    where u^T grad(u^T s) = u^T A u exactly; gradients reaching the model's parameters (the
    Jacobian term must stay in the graph); a small tanh network against :func:`sliced_loss`.
    """
    g = torch.Generator().manual_seed(3)
    n, d = 64, 3
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    u = torch.randn(n, d, generator=g, dtype=torch.float64)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    b = torch.randn(d, generator=g, dtype=torch.float64)
    s_lin = x @ A.T + b
    truth = float((torch.einsum("ni,ij,nj->n", u, A, u)
                   + 0.5 * (u * s_lin).sum(1).square()).mean())

    def close(value, want) -> bool:
        return (isinstance(value, torch.Tensor) and value.ndim == 0
                and abs(float(value.detach()) - want) <= 1e-6 * max(1.0, abs(want)))

    A_par = torch.nn.Parameter(A.clone())

    def grads_flow(_):
        A_par.grad = None
        fn(lambda y: y @ A_par.T + b, x, u).backward()
        want = torch.einsum("ni,nj->ij", u, u) / n + torch.einsum(
            "n,ni,nj->ij", (u * s_lin).sum(1), u, x) / n      # d/dA of the mean loss
        return A_par.grad is not None and bool(torch.allclose(A_par.grad, want, atol=1e-8))

    net = torch.nn.Sequential(torch.nn.Linear(d, 16), torch.nn.Tanh(), torch.nn.Linear(16, d))
    net = net.double()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.7)
    want_net = float(sliced_loss(net, x, u=u[None]).detach())
    cases = [
        Case("a linear score A x + b (answer known exactly)", (lambda y: y @ A.T + b, x, u),
             lambda v: close(v, truth),
             "return the batch mean (a 0-dim tensor) of u^T grad_x(u^T s) + 1/2 (u^T s)^2; "
             "for s = A x + b the first term is u^T A u."),
        Case("gradients with respect to the model's parameters", (None, None, None), grads_flow,
             "call torch.autograd.grad with create_graph=True, and let x require grad before "
             "calling the model, so that the Jacobian term stays differentiable."),
        Case("a small tanh network", (net, x, u), lambda v: close(v, want_net),
             "the Jacobian term is the derivative of the scalar sum over the batch of u^T s "
             "with respect to x, dotted with u row by row."),
    ]
    checked = check(lambda score, x_, u_: fn(score, x_, u_) if score is not None else None,
                    cases, name=getattr(fn, "__name__", "your function"))
    return checked
