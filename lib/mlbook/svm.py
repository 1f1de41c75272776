r"""Support vector machines (chapter "Support vector machines", ``book/svm.md``).

Two solvers for the same model, a linear score :math:`f(x) = \langle w, \phi(x)\rangle + b`
trained with the hinge loss:

- :class:`LinearSVM` minimises the primal objective (svm-primal) directly by full-batch
  subgradient descent (svm-subgrad); with ``loss="logistic"`` the same code is L2-regularised
  logistic regression, the model the hinge loss is compared with.
- :class:`SVC` solves the dual (svm-dual) exactly, up to the KKT tolerance (svm-kkt-gap), by
  sequential minimal optimisation (SMO) with second-order working-set selection, on any kernel
  from :data:`KERNELS`. Its fitted attributes follow scikit-learn's ``SVC``.

Labels are two arbitrary class values; internally the second of the sorted classes is
:math:`y = +1`, as in scikit-learn, so ``decision_function > 0`` predicts ``classes_[1]``.
Equation labels refer to ``book/svm.md``. Everything runs on ``device`` (CPU, CUDA or MPS).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

from . import _checks
from .device import get_device

__all__ = ["zero_one_loss", "hinge_loss", "logistic_loss", "LOSSES",
           "linear_kernel", "rbf_kernel", "polynomial_kernel", "KERNELS", "kernel_matrix",
           "primal_objective", "dual_objective", "smo", "SMOResult", "LinearSVM", "SVC", "moons",
           "draw_margins"]


# ---------------------------------------------------------------------------------------- losses
# Each loss is a function of the margin z = y f(x): positive when x is on the right side.

def zero_one_loss(z: torch.Tensor) -> torch.Tensor:
    """The classification error 1[z <= 0] that every surrogate bounds, eq. (svm-01)."""
    z = _checks.tensor(z, "z", floating=True)
    return (z <= 0).to(z.dtype)


def hinge_loss(z: torch.Tensor) -> torch.Tensor:
    """max(0, 1 - z), eq. (svm-hinge): zero once the margin reaches 1, linear below."""
    z = _checks.tensor(z, "z", floating=True)
    return torch.clamp(1 - z, min=0)


def logistic_loss(z: torch.Tensor) -> torch.Tensor:
    """log2(1 + exp(-z)), eq. (svm-logistic): the cross-entropy of a sigmoid, in bits so it bounds 1[z <= 0].

    Computed as ``softplus(-z) / log 2``, which neither overflows for very negative z nor
    rounds to zero too early for large z.
    """
    z = _checks.tensor(z, "z", floating=True)
    return torch.nn.functional.softplus(-z) / math.log(2.0)


LOSSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"hinge": hinge_loss, "logistic": logistic_loss}


# --------------------------------------------------------------------------------------- kernels
# One signature: kernel(X, Z, **params) -> (len(X), len(Z)) Gram matrix.

def linear_kernel(X: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """k(x, z) = <x, z>."""
    return X @ Z.T                                                          # (n, m)


def rbf_kernel(X: torch.Tensor, Z: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """k(x, z) = exp(-gamma ||x - z||^2), eq. (svm-rbf)."""
    gamma = _checks.real(gamma, "gamma", positive=True)
    # ||x - z||^2 = ||x||^2 + ||z||^2 - 2 <x, z>, clamped: rounding can make it slightly negative
    sq = (X * X).sum(1)[:, None] + (Z * Z).sum(1)[None, :] - 2 * X @ Z.T   # (n, m)
    return torch.exp(-gamma * sq.clamp(min=0))


def polynomial_kernel(X: torch.Tensor, Z: torch.Tensor, degree: int = 3, gamma: float = 1.0,
                      coef0: float = 1.0) -> torch.Tensor:
    """k(x, z) = (gamma <x, z> + coef0)^degree, eq. (svm-poly)."""
    degree = _checks.integer(degree, "degree", minimum=1)
    gamma = _checks.real(gamma, "gamma", positive=True)
    coef0 = _checks.real(coef0, "coef0", nonnegative=True)
    return (gamma * (X @ Z.T) + coef0) ** degree


KERNELS: dict[str, Callable[..., torch.Tensor]] = {
    "linear": linear_kernel, "rbf": rbf_kernel, "poly": polynomial_kernel}


def kernel_matrix(kernel: str, X: torch.Tensor, Z: torch.Tensor, **params) -> torch.Tensor:
    """Gram matrix ``K[i, j] = k(X[i], Z[j])`` of the kernel named ``kernel`` (one of :data:`KERNELS`)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}: choose one of {', '.join(map(repr, KERNELS))}")
    X = _checks.tensor(X, "X", ndim=2, floating=True)
    Z = _checks.tensor(Z, "Z", ndim=2, floating=True, last_dim=X.shape[1])
    return KERNELS[kernel](X, Z, **params)


# ------------------------------------------------------------------------------------ objectives

def _labels_pm1(y: torch.Tensor) -> torch.Tensor:
    y = _checks.tensor(y, "y", ndim=1)
    if not bool(((y == 1) | (y == -1)).all()):
        raise ValueError("y must contain only the labels -1 and +1")
    return y


def primal_objective(w: torch.Tensor, b: float | torch.Tensor, X: torch.Tensor, y: torch.Tensor,
                     C: float = 1.0, loss: str = "hinge") -> torch.Tensor:
    """(1/2) ||w||^2 + C sum_i loss(y_i (<w, x_i> + b)), eq. (svm-primal); y in {-1, +1}."""
    _checks.choice(loss, "loss", list(LOSSES))
    C = _checks.real(C, "C", positive=True)
    X = _checks.tensor(X, "X", ndim=2, floating=True)
    y = _labels_pm1(y)
    return 0.5 * (w * w).sum() + C * LOSSES[loss](y.to(X.dtype) * (X @ w + b)).sum()


def dual_objective(alpha: torch.Tensor, y: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """D(alpha) = sum_i alpha_i - (1/2) sum_ij alpha_i alpha_j y_i y_j K_ij, eq. (svm-dual).

    The quantity the dual maximises; libsvm reports its negative as ``obj``.
    """
    alpha = _checks.tensor(alpha, "alpha", ndim=1, floating=True)
    y = _labels_pm1(y).to(alpha.dtype)
    K = _checks.tensor(K, "K", ndim=2, floating=True)
    if K.shape != (len(alpha), len(alpha)) or len(y) != len(alpha):
        raise ValueError(f"alpha {tuple(alpha.shape)}, y {tuple(y.shape)} and K {tuple(K.shape)} do not match")
    beta = alpha * y                                                        # alpha_i y_i
    return alpha.sum() - 0.5 * beta @ K @ beta


# -------------------------------------------------------------------------------------------- SMO

class SMOResult:
    """What :func:`smo` returns: multipliers, intercept, gradient, iteration count, final KKT gap."""

    def __init__(self, alpha, b, grad, n_iter, gap, converged):
        self.alpha, self.b, self.grad = alpha, b, grad
        self.n_iter, self.gap, self.converged = n_iter, gap, converged

    def __repr__(self) -> str:
        return (f"SMOResult(n_iter={self.n_iter}, gap={self.gap:.2e}, converged={self.converged}, "
                f"support={int((self.alpha > 0).sum())})")


def _intercept(alpha: torch.Tensor, y: torch.Tensor, grad: torch.Tensor, C: float) -> float:
    """b from the KKT conditions, eq. (svm-bias): the average over free vectors, else the middle of the range.

    With g = -y * grad, a free multiplier (0 < alpha_i < C) has y_i f(x_i) = 1, i.e. b = g_i.
    Without free ones, every bound multiplier gives a one-sided limit on b.
    """
    g = -y * grad                                                           # (n,)
    free = (alpha > 0) & (alpha < C)
    if bool(free.any()):
        return float(g[free].mean())
    up = ((y > 0) & (alpha < C)) | ((y < 0) & (alpha > 0))               # b >= g_i on these
    low = ((y > 0) & (alpha > 0)) | ((y < 0) & (alpha < C))              # b <= g_i on these
    lo = float(g[up].max()) if bool(up.any()) else -math.inf
    hi = float(g[low].min()) if bool(low.any()) else math.inf
    if math.isinf(lo) or math.isinf(hi):
        return hi if math.isinf(lo) else lo
    return 0.5 * (lo + hi)


def smo(K: torch.Tensor, y: torch.Tensor, C: float = 1.0, *, tol: float = 1e-3,
        max_iter: int = 1_000_000) -> SMOResult:
    r"""Maximise the dual (svm-dual) over 0 <= alpha <= C, sum_i alpha_i y_i = 0, by SMO.

    Implements (svm-smo-step) with the second-order choice of the pair (svm-wss) and stops when
    the KKT gap (svm-kkt-gap) ``max_{I_up} g - min_{I_low} g`` is at most ``tol``, the rule (and
    default 1e-3) of libsvm. ``K`` is the full (n, n) Gram matrix, ``y`` is in {-1, +1}.
    Iterating past ``max_iter`` warns (the result is then not the optimum).
    """
    K = _checks.tensor(K, "K", ndim=2, floating=True)
    y = _labels_pm1(y)
    n = len(y)
    if K.shape != (n, n):
        raise ValueError(f"K must be ({n}, {n}) to match y, got {tuple(K.shape)}")
    if not (bool((y > 0).any()) and bool((y < 0).any())):
        raise ValueError("y must contain both classes, -1 and +1")
    C = _checks.real(C, "C", positive=True)
    tol = _checks.real(tol, "tol", positive=True)
    max_iter = _checks.integer(max_iter, "max_iter", minimum=1)

    y = y.to(K.dtype)
    alpha = torch.zeros(n, dtype=K.dtype, device=K.device)
    grad = -torch.ones(n, dtype=K.dtype, device=K.device)                  # gradient of -D at alpha = 0
    diag = K.diagonal()
    pos = y > 0
    tau = 1e-12                                                             # curvature floor, as libsvm
    n_iter, gap = 0, math.inf
    while True:
        g = -y * grad                                                       # (n,) eq. (svm-kkt-gap)
        up = torch.where(pos, alpha < C, alpha > 0)                         # alpha_i may move by +y_i
        low = torch.where(pos, alpha > 0, alpha < C)                        # alpha_j may move by -y_j
        g_up = torch.where(up, g, -math.inf)
        i = int(g_up.argmax())
        m = g_up[i]
        gap = float(m - torch.where(low, g, math.inf).min())
        if gap <= tol:
            break
        if n_iter >= max_iter:
            warnings.warn(f"SMO stopped after max_iter={max_iter} iterations with KKT gap {gap:.3g} > tol={tol:g}",
                          RuntimeWarning, stacklevel=2)
            break
        # second-order choice of j, eq. (svm-wss): the largest guaranteed decrease b^2 / a
        b = m - g                                                           # (n,) > 0 on candidates
        a = (diag[i] + diag - 2 * K[i]).clamp(min=tau)                      # (n,) curvature along the pair
        score = torch.where(low & (b > 0), b * b / a, -math.inf)
        j = int(score.argmax())
        # exact minimiser along alpha_i += y_i t, alpha_j -= y_j t, clipped to the box
        t = float(b[j] / a[j])
        room_i = float(C - alpha[i] if y[i] > 0 else alpha[i])
        room_j = float(alpha[j] if y[j] > 0 else C - alpha[j])
        t = min(t, room_i, room_j)
        alpha[i] = C if t == room_i and y[i] > 0 else (0.0 if t == room_i else alpha[i] + y[i] * t)
        alpha[j] = 0.0 if t == room_j and y[j] > 0 else (C if t == room_j else alpha[j] - y[j] * t)
        grad += t * y * (K[:, i] - K[:, j])                                 # Q = yy^T * K, rank-2 update
        n_iter += 1
    return SMOResult(alpha, _intercept(alpha, y, grad, C), grad, n_iter, gap, gap <= tol)


# ------------------------------------------------------------------------------------ estimators

def _binary_labels(y, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Map two class values to (classes, y in {-1, +1}); the larger class is +1, as in scikit-learn."""
    try:
        y = torch.as_tensor(y, device=device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"y must be a 1-D array of numeric class labels: {err}") from None
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (n_samples,), got shape {tuple(y.shape)}")
    if len(y) != n:
        raise ValueError(f"X has {n} rows but y has {len(y)} labels")
    classes = torch.unique(y)
    if len(classes) != 2:
        raise ValueError(f"y must contain exactly two classes for a binary SVM, got {len(classes)}: "
                         f"{classes.tolist()[:10]}")
    return classes, torch.where(y == classes[1], 1.0, -1.0).to(torch.float64)


class _BinaryClassifier:
    """predict from decision_function, shared by both estimators."""

    def predict(self, X) -> torch.Tensor:
        """Class of each row: ``classes_[1]`` where the score is positive, else ``classes_[0]``."""
        scores = self.decision_function(X)
        return self.classes_[(scores > 0).long()]


class LinearSVM(_BinaryClassifier):
    """Linear SVM trained in the primal (svm-primal) by full-batch subgradient descent (svm-subgrad).

    The step size is ``lr / sqrt(t)`` and the iterate with the lowest objective is kept, since a
    subgradient step need not decrease the objective. The loop is written out here rather than
    run through ``mlbook.train`` because the plain subgradient step *is* the algorithm the chapter
    derives. ``loss="logistic"`` gives L2-regularised logistic regression with the same code.

    Fitted attributes: ``coef_`` (w), ``intercept_`` (b), ``classes_``, ``objective_`` (per step).
    """

    def __init__(self, C: float = 1.0, *, loss: str = "hinge", lr: float = 0.1, steps: int = 2000,
                 device=None):
        self.C = _checks.real(C, "C", positive=True)
        self.loss = _checks.choice(loss, "loss", list(LOSSES))
        self.lr = _checks.real(lr, "lr", positive=True)
        self.steps = _checks.integer(steps, "steps", minimum=1)
        self.device = device
        self.coef_ = self.intercept_ = self.classes_ = None

    def fit(self, X, y) -> "LinearSVM":
        X = _checks.features(X, device=get_device(self.device))
        self.classes_, ypm = _binary_labels(y, len(X), X.device)
        ypm = ypm.to(X.device)
        w = torch.zeros(X.shape[1], dtype=X.dtype, device=X.device)
        b = torch.zeros((), dtype=X.dtype, device=X.device)
        best = (math.inf, w, b)
        history = []
        for t in range(1, self.steps + 1):
            w = w.detach().requires_grad_(True)
            b = b.detach().requires_grad_(True)
            obj = primal_objective(w, b, X, ypm, self.C, self.loss)
            # autograd returns a valid subgradient of the hinge: -y_i x_i inside the margin and at the kink
            # z_i = 1 (torch.clamp passes the gradient at its bound), 0 outside
            gw, gb = torch.autograd.grad(obj, (w, b))
            value = float(obj.detach())
            history.append(value)
            if value < best[0]:
                best = (value, w.detach(), b.detach())
            step = self.lr / math.sqrt(t)
            w, b = w.detach() - step * gw, b.detach() - step * gb
        final = float(primal_objective(w, b, X, ypm, self.C, self.loss))
        if final < best[0]:
            best = (final, w, b)
        history.append(final)
        self.objective_ = history
        self.coef_, self.intercept_ = best[1], float(best[2])
        return self

    def decision_function(self, X) -> torch.Tensor:
        """f(x) = <w, x> + b for every row of X."""
        _checks.fitted(self, "coef_")
        X = _checks.features(X, n_features=len(self.coef_), device=self.coef_.device)
        return X @ self.coef_ + self.intercept_


class SVC(_BinaryClassifier):
    """Kernel SVM solved exactly in the dual by :func:`smo`; the API follows scikit-learn's ``SVC``.

    Args:
        C: box constraint, the weight of the hinge loss in (svm-primal).
        kernel: ``"linear"``, ``"rbf"`` or ``"poly"``.
        gamma: kernel width for rbf/poly, or ``"scale"`` = 1 / (n_features * X.var()) as in scikit-learn.
        degree, coef0: of the polynomial kernel (svm-poly).
        tol: KKT gap at which SMO stops (svm-kkt-gap).

    Fitted attributes: ``alpha_`` (all n multipliers), ``support_`` (indices with alpha > 0),
    ``support_vectors_``, ``dual_coef_`` (alpha_i y_i of the support vectors), ``intercept_`` (b),
    ``dual_objective_`` (svm-dual at the solution), ``n_iter_``, ``classes_``, and for the linear
    kernel ``coef_`` = w = sum_i alpha_i y_i x_i (svm-w).
    """

    def __init__(self, C: float = 1.0, *, kernel: str = "rbf", gamma: float | str = "scale", degree: int = 3,
                 coef0: float = 0.0, tol: float = 1e-3, max_iter: int = 1_000_000, device=None):
        self.C = _checks.real(C, "C", positive=True)
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}: choose one of {', '.join(map(repr, KERNELS))}")
        self.kernel = kernel
        if gamma != "scale":
            _checks.real(gamma, "gamma", positive=True)
        self.gamma = gamma
        self.degree = _checks.integer(degree, "degree", minimum=1)
        self.coef0 = _checks.real(coef0, "coef0", nonnegative=True)
        self.tol = _checks.real(tol, "tol", positive=True)
        self.max_iter = _checks.integer(max_iter, "max_iter", minimum=1)
        self.device = device
        self.support_vectors_ = self.classes_ = None

    def _params(self) -> dict:
        if self.kernel == "rbf":
            return {"gamma": self.gamma_}
        if self.kernel == "poly":
            return {"gamma": self.gamma_, "degree": self.degree, "coef0": self.coef0}
        return {}

    def fit(self, X, y) -> "SVC":
        X = _checks.features(X, device=get_device(self.device))
        self.classes_, ypm = _binary_labels(y, len(X), X.device)
        ypm = ypm.to(X.device)
        if self.gamma == "scale":
            var = float(X.var(unbiased=False))
            self.gamma_ = 1.0 / (X.shape[1] * var) if var > 0 else 1.0
        else:
            self.gamma_ = float(self.gamma)
        K = kernel_matrix(self.kernel, X, X, **self._params())             # (n, n)
        res = smo(K, ypm, self.C, tol=self.tol, max_iter=self.max_iter)
        self.alpha_, self.n_iter_, self.converged_ = res.alpha, res.n_iter, res.converged
        self.support_ = torch.nonzero(res.alpha > 0).flatten()
        self.support_vectors_ = X[self.support_]
        self.dual_coef_ = (res.alpha * ypm)[self.support_]
        self.intercept_ = res.b
        self.dual_objective_ = float(dual_objective(res.alpha, ypm, K))
        self.coef_ = self.dual_coef_ @ self.support_vectors_ if self.kernel == "linear" else None
        return self

    def gram(self, X, Z) -> torch.Tensor:
        """Gram matrix ``k(X[i], Z[j])`` of the fitted kernel (gamma resolved by ``fit``)."""
        _checks.fitted(self, "support_vectors_")
        d, dev = self.support_vectors_.shape[1], self.support_vectors_.device
        X = _checks.features(X, n_features=d, device=dev)
        Z = _checks.features(Z, "Z", n_features=d, device=dev)
        return kernel_matrix(self.kernel, X, Z, **self._params())

    def decision_function(self, X) -> torch.Tensor:
        """f(x) = sum_{i in SV} alpha_i y_i k(x_i, x) + b, eq. (svm-decision)."""
        return self.gram(X, self.support_vectors_) @ self.dual_coef_ + self.intercept_


# ------------------------------------------------------------------------------------------- data

def moons(n: int, *, noise: float = 0.15, generator: torch.Generator | None = None, device=None,
          dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Labelled two-moons data: ``X`` (n, 2) and ``y`` in {-1, +1}, half of each, drawn on the CPU."""
    n = _checks.integer(n, "n", minimum=2)
    noise = _checks.real(noise, "noise", nonnegative=True)
    n_pos = n // 2
    t = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    upper = torch.arange(n) >= n_pos                                        # the upper moon is class -1
    x = torch.where(upper, t.cos(), 1 - t.cos())
    y = torch.where(upper, t.sin(), 0.5 - t.sin())
    X = torch.stack([x, y], 1) + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    X = X - torch.tensor([0.5, 0.25], dtype=torch.float64)
    labels = torch.where(upper, -1.0, 1.0)
    dev = get_device(device)
    return X.to(device=dev, dtype=dtype), labels.to(device=dev, dtype=dtype)


# ---------------------------------------------------------------------------------------- drawing

def draw_margins(ax, model, X, y, bounds, *, resolution: int = 200, colors=None,
                 point_size: float = 14, circle_size: float = 70) -> torch.Tensor:
    """Draw a fitted two-feature classifier the way the chapter pictures an SVM.

    The two sides of the boundary are shaded, the boundary ``f(x) = 0`` is a solid line and the
    margins ``f(x) = -1`` and ``f(x) = +1`` are dashed; the points ``X`` are coloured by their label
    ``y`` and, when ``model`` has ``support_`` (:class:`SVC`), the support vectors are circled.
    ``bounds = (x0, x1, y0, y1)`` is the plotted area, ``colors`` the pair (class -1, class +1)
    (default: the book's first two colours, blue for +1). Returns ``f`` on the
    ``resolution x resolution`` grid (rows along the second feature), on the CPU.
    """
    from .plot import COLORS

    neg, pos = colors or (COLORS[1], COLORS[0])
    x0, x1, y0, y1 = (float(b) for b in bounds)
    xs = torch.linspace(x0, x1, resolution, dtype=torch.float64)
    ys = torch.linspace(y0, y1, resolution, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    F = model.decision_function(grid).reshape(resolution, resolution).cpu()
    ax.contourf(xs, ys, F, levels=[-math.inf, 0, math.inf], colors=[neg, pos], alpha=0.12)
    ax.contour(xs, ys, F, levels=[-1, 0, 1], colors="k", linestyles=["--", "-", "--"],
               linewidths=1)
    X = torch.as_tensor(X).detach().cpu()
    labels = torch.as_tensor(y).detach().cpu()
    positive = labels == model.classes_[1].cpu()
    ax.scatter(X[:, 0], X[:, 1], c=[pos if p else neg for p in positive.tolist()], s=point_size,
               zorder=3)
    support = getattr(model, "support_", None)
    if support is not None:
        sv = X[support.cpu()]
        ax.scatter(sv[:, 0], sv[:, 1], s=circle_size, facecolors="none", edgecolors="k",
                   linewidths=0.8, zorder=4)
    ax.set(xlim=(x0, x1), ylim=(y0, y1))
    return F
