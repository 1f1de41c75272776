r"""Support vector machines (chapter "Support vector machines", ``book/svm.md``).

Two solvers for the same model, a linear score :math:`f(x) = \langle w, \phi(x)\rangle + b`
trained with the hinge loss, and the chapter's extensions of it:

- :class:`LinearSVM` minimises the primal objective (svm-primal) directly by full-batch
  subgradient descent (svm-subgrad); with ``loss="logistic"`` the same code is L2-regularised
  logistic regression, the model the hinge loss is compared with.
- :class:`SVC` solves the dual (svm-dual) exactly, up to the KKT tolerance (svm-kkt-gap), by
  sequential minimal optimisation (SMO) with second-order working-set selection, on any kernel
  from :data:`KERNELS`. Its fitted attributes follow scikit-learn's ``SVC``.
- :class:`NuSVC` (the nu-SVM, svm-nu-dual) and :class:`SVR` (epsilon-insensitive regression,
  svm-svr-dual) reuse the same SMO loop; :class:`OneVsRest` and :class:`OneVsOne` turn any binary
  classifier into a multiclass one; :func:`platt_fit` turns scores into probabilities.

Every estimator follows scikit-learn's conventions: ``__init__`` stores its parameters unchanged,
``fit`` checks them, and ``get_params``/``set_params``/``clone`` come from ``BaseEstimator``.
Inputs may be tensors or NumPy arrays; results are tensors for tensor input, NumPy otherwise.

Labels are two arbitrary class values; internally the second of the sorted classes is
:math:`y = +1`, as in scikit-learn, so ``decision_function > 0`` predicts ``classes_[1]``.
Equation labels refer to ``book/svm.md``. Everything runs on ``device`` (CPU, CUDA or MPS).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, OutlierMixin, RegressorMixin, clone

from . import _checks
from .device import get_device

__all__ = ["zero_one_loss", "hinge_loss", "logistic_loss", "LOSSES", "epsilon_insensitive_loss",
           "linear_kernel", "rbf_kernel", "polynomial_kernel", "KERNELS", "kernel_matrix",
           "primal_objective", "dual_objective", "svr_dual_objective", "smo", "smo_svr", "smo_nu",
           "smo_one_class", "SMOResult", "platt_fit", "platt_proba", "LinearSVM", "SVC", "NuSVC",
           "SVR", "OneClassSVM", "OneVsRest", "OneVsOne", "moons", "draw_margins",
           "check_smo_step", "poly2_features", "rvm_posterior", "rvm_log_evidence",
           "RelevanceVectorRegressor", "ranking_pairs", "pairwise_accuracy", "RankSVM",
           "hinge_network"]


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


def epsilon_insensitive_loss(r: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """max(0, |r| - epsilon) of a residual r = y - f(x), eq. (svm-eps-loss): free inside the tube."""
    r = _checks.tensor(r, "r", floating=True)
    epsilon = _checks.real(epsilon, "epsilon", nonnegative=True)
    return torch.clamp(r.abs() - epsilon, min=0)


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
                      coef0: float = 0.0) -> torch.Tensor:
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
    """What the SMO solvers return: multipliers, intercept, gradient, iteration count, final KKT gap.

    ``rho`` is the margin parameter of the nu formulation (:func:`smo_nu`), ``None`` otherwise.
    """

    def __init__(self, alpha, b, grad, n_iter, gap, converged, rho=None):
        self.alpha, self.b, self.grad = alpha, b, grad
        self.n_iter, self.gap, self.converged, self.rho = n_iter, gap, converged, rho

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


def _nu_offsets(alpha: torch.Tensor, y: torch.Tensor, grad: torch.Tensor) -> tuple[float, float]:
    """(rho, b) of the nu formulation from its KKT conditions (page, nu-SVM section).

    For a free multiplier of class +1, grad_i = rho - b; of class -1, grad_i = rho + b. Each class
    gives its value r_c (the mean over its free multipliers, else the middle of the range its bound
    multipliers allow), and rho = (r_+ + r_-) / 2, b = (r_- - r_+) / 2, as in libsvm.
    """
    r = []
    for cls in (y > 0, y < 0):
        at_top, at_zero = cls & (alpha >= 1), cls & (alpha <= 0)
        free = cls & ~at_top & ~at_zero
        if bool(free.any()):
            r.append(float(grad[free].mean()))
        else:                                                               # r >= grad on margin errors
            lo = float(grad[at_top].max()) if bool(at_top.any()) else -math.inf
            hi = float(grad[at_zero].min()) if bool(at_zero.any()) else math.inf
            r.append(0.5 * (lo + hi) if not (math.isinf(lo) or math.isinf(hi))
                     else (hi if math.isinf(lo) else lo))
    return 0.5 * (r[0] + r[1]), 0.5 * (r[1] - r[0])


def _smo_loop(K: torch.Tensor, y: torch.Tensor, C: float, alpha: torch.Tensor, grad: torch.Tensor,
              tol: float, max_iter: int, same_class: bool) -> tuple[int, float]:
    r"""The SMO iterations shared by every formulation; updates ``alpha`` and ``grad`` in place.

    Minimises (1/2) alpha^T Q alpha + p^T alpha over 0 <= alpha <= C, sum_i y_i alpha_i fixed, with
    Q = y y^T * K; ``grad`` = Q alpha + p on entry. Each step moves one pair along
    alpha_i += y_i t, alpha_j -= y_j t (svm-smo-step), the pair chosen by second-order working-set
    selection (svm-wss), and stops when the KKT gap (svm-kkt-gap) is at most ``tol``. With
    ``same_class`` both members of a pair have the same label, which also keeps sum_i alpha_i fixed
    (the nu formulation); the gap and the first index are then taken within each class.

    The loop is sequential, a few vector operations on rows of K per step, so it runs in NumPy on
    the host whatever the device of ``K`` (one copy of K, no synchronisation per step). It keeps
    g = -y * grad (svm-g) up to date directly: the step changes it by -t (K_i - K_j), since y_k^2 = 1.
    Returns (steps taken, final gap).
    """
    Kn = K.detach().cpu().numpy()                                           # (n, n), no copy on the CPU
    yn = y.detach().cpu().numpy()
    a_ = alpha.detach().cpu().numpy().copy()
    g = -yn * grad.detach().cpu().numpy()                                   # (n,) eq. (svm-g)
    diag = Kn.diagonal().copy()
    pos = yn > 0
    up = np.where(pos, a_ < C, a_ > 0)                                      # alpha_k may move by +y_k
    low = np.where(pos, a_ > 0, a_ < C)                                     # alpha_k may move by -y_k
    classes = [pos, ~pos] if same_class else [np.ones_like(pos)]
    tau = 1e-12                                                             # curvature floor, as libsvm
    n_iter, gap = 0, math.inf
    while True:
        # first index: the most violating "up" index (per class for the nu formulation)
        best = (-math.inf, -1, -1)                                          # (score, i, j)
        gap = -math.inf
        for cls in classes:
            g_up = np.where(up & cls, g, -np.inf)
            i = int(g_up.argmax())
            m = g_up[i]
            gap_cls = m - np.where(low & cls, g, np.inf).min()              # eq. (svm-kkt-gap)
            gap = max(gap, gap_cls)
            if not gap_cls > 0:
                continue
            cand = low & cls & (g < m)
            # second-order choice of j, eq. (svm-wss): the largest guaranteed decrease b^2 / a
            b = m - g
            a = np.maximum(diag[i] + diag - 2 * Kn[i], tau)                 # K symmetric: row = column
            score = np.where(cand, b * b / a, -np.inf)
            j = int(score.argmax())
            if score[j] > best[0]:
                best = (score[j], i, j)
        if gap <= tol:
            break
        if n_iter >= max_iter:
            warnings.warn(f"SMO stopped after max_iter={max_iter} iterations with KKT gap {gap:.3g} > tol={tol:g}",
                          RuntimeWarning, stacklevel=3)
            break
        _, i, j = best
        # exact minimiser along the pair, clipped so both multipliers stay in [0, C]
        t = (g[i] - g[j]) / max(diag[i] + diag[j] - 2 * Kn[i, j], tau)
        room_i = C - a_[i] if pos[i] else a_[i]
        room_j = a_[j] if pos[j] else C - a_[j]
        t = min(t, room_i, room_j)
        # land exactly on a bound when the clip is active, so "alpha == C" tests are exact
        a_[i] = (C if pos[i] else 0.0) if t == room_i else a_[i] + yn[i] * t
        a_[j] = (0.0 if pos[j] else C) if t == room_j else a_[j] - yn[j] * t
        for k in (i, j):
            up[k] = a_[k] < C if pos[k] else a_[k] > 0
            low[k] = a_[k] > 0 if pos[k] else a_[k] < C
        g -= t * (Kn[i] - Kn[j])                                            # Q times the change in alpha
        n_iter += 1
    alpha.copy_(torch.from_numpy(a_))
    grad.copy_(torch.from_numpy(-yn * g))
    return n_iter, float(gap)


def _check_smo_inputs(K, y, tol, max_iter) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    K = _checks.tensor(K, "K", ndim=2, floating=True)
    n = len(y)
    if K.shape != (n, n):
        raise ValueError(f"K must be ({n}, {n}) to match y, got {tuple(K.shape)}")
    tol = _checks.real(tol, "tol", positive=True)
    max_iter = _checks.integer(max_iter, "max_iter", minimum=1)
    return K, y, tol, max_iter


def smo(K: torch.Tensor, y: torch.Tensor, C: float = 1.0, *, tol: float = 1e-3,
        max_iter: int = 1_000_000) -> SMOResult:
    r"""Maximise the dual (svm-dual) over 0 <= alpha <= C, sum_i alpha_i y_i = 0, by SMO.

    Implements (svm-smo-step) with the second-order choice of the pair (svm-wss) and stops when
    the KKT gap (svm-kkt-gap) ``max_{I_up} g - min_{I_low} g`` is at most ``tol``, the rule (and
    default 1e-3) of libsvm. ``K`` is the full (n, n) Gram matrix, ``y`` is in {-1, +1}.
    Iterating past ``max_iter`` warns (the result is then not the optimum).
    """
    y = _labels_pm1(y)
    K, y, tol, max_iter = _check_smo_inputs(K, y, tol, max_iter)
    if not (bool((y > 0).any()) and bool((y < 0).any())):
        raise ValueError("y must contain both classes, -1 and +1")
    C = _checks.real(C, "C", positive=True)
    y = y.to(K.dtype)
    alpha = torch.zeros(len(y), dtype=K.dtype, device=K.device)
    grad = -torch.ones(len(y), dtype=K.dtype, device=K.device)             # gradient of -D at alpha = 0
    n_iter, gap = _smo_loop(K, y, C, alpha, grad, tol, max_iter, same_class=False)
    return SMOResult(alpha, _intercept(alpha, y, grad, C), grad, n_iter, gap, gap <= tol)


def smo_svr(K: torch.Tensor, z: torch.Tensor, C: float = 1.0, epsilon: float = 0.1, *,
            tol: float = 1e-3, max_iter: int = 1_000_000) -> SMOResult:
    r"""Solve the dual of epsilon-insensitive regression (svm-svr-dual) by the same SMO loop.

    The 2n multipliers (alpha, alpha*) become one vector with labels (+1,...,+1, -1,...,-1),
    Gram matrix [[K, K], [K, K]] and linear term (epsilon - z, epsilon + z) (svm-svr-stacked), so
    the C-SVC machinery applies unchanged. ``result.alpha`` has 2n entries; the coefficients of
    the regression function (svm-svr-f) are ``alpha[:n] - alpha[n:]``.
    """
    z = _checks.tensor(z, "z", ndim=1, floating=True)
    K, z, tol, max_iter = _check_smo_inputs(K, z, tol, max_iter)
    C = _checks.real(C, "C", positive=True)
    epsilon = _checks.real(epsilon, "epsilon", nonnegative=True)
    n = len(z)
    z = z.to(K.dtype)
    y2 = torch.cat([torch.ones(n, dtype=K.dtype, device=K.device), -torch.ones(n, dtype=K.dtype, device=K.device)])
    K2 = K.repeat(2, 2)                                                     # (2n, 2n)
    alpha = torch.zeros(2 * n, dtype=K.dtype, device=K.device)
    grad = torch.cat([epsilon - z, epsilon + z])                            # p, the gradient at alpha = 0
    n_iter, gap = _smo_loop(K2, y2, C, alpha, grad, tol, max_iter, same_class=False)
    return SMOResult(alpha, _intercept(alpha, y2, grad, C), grad, n_iter, gap, gap <= tol)


def smo_nu(K: torch.Tensor, y: torch.Tensor, nu: float = 0.5, *, tol: float = 1e-3,
           max_iter: int = 1_000_000) -> SMOResult:
    r"""Solve the nu-SVM dual (svm-nu-dual) by SMO with pairs inside one class.

    Works with a = n alpha, so the box is [0, 1] and sum_i a_i = nu n; the start puts nu n / 2 of
    weight on each class, in order, as libsvm does. Returns ``alpha`` = a and the ``rho`` and ``b``
    of this scaling (n times those of the page); the classifier is
    f(x) = (sum_i a_i y_i k(x_i, x) + b) / rho, which puts the margins at f = +-1, as for the
    C-SVM with C = 1 / rho (svm-nu-c).
    """
    y = _labels_pm1(y)
    K, y, tol, max_iter = _check_smo_inputs(K, y, tol, max_iter)
    nu = _checks.real(nu, "nu", positive=True)
    n_pos, n_neg = int((y > 0).sum()), int((y < 0).sum())
    if nu > 1 or nu * len(y) / 2 > min(n_pos, n_neg):
        raise ValueError(f"nu = {nu:g} is infeasible: it must be at most 2 min(n_+, n_-) / n = "
                         f"{2 * min(n_pos, n_neg) / len(y):g}")
    y = y.to(K.dtype)
    alpha = torch.zeros(len(y), dtype=K.dtype, device=K.device)
    for cls in (y > 0, y < 0):                                              # nu n / 2 on each class
        idx = torch.nonzero(cls).flatten()
        share = torch.full((len(idx),), 1.0, dtype=K.dtype, device=K.device)
        left = nu * len(y) / 2 - torch.arange(len(idx), dtype=K.dtype, device=K.device)
        alpha[idx] = torch.minimum(share, left.clamp(min=0))
    grad = y * (K @ (alpha * y))                                            # Q a, no linear term
    n_iter, gap = _smo_loop(K, y, 1.0, alpha, grad, tol, max_iter, same_class=True)
    rho, b = _nu_offsets(alpha, y, grad)
    return SMOResult(alpha, b, grad, n_iter, gap, gap <= tol, rho=rho)


def smo_one_class(K: torch.Tensor, nu: float = 0.5, *, tol: float = 1e-3,
                  max_iter: int = 1_000_000) -> SMOResult:
    r"""Solve the one-class SVM dual (svm-oc-dual) by the SMO loop with every label +1.

    Works with a = nu n alpha, so the box is [0, 1] and sum_i a_i = nu n; the start puts weight 1
    on the first floor(nu n) points and the remainder on the next, as libsvm does. With all labels
    equal every pair move keeps sum_i a_i fixed. Returns ``alpha`` = a and ``b`` = -rho of this
    scaling: the score is f(x) = sum_i a_i k(x_i, x) + b, negative on the outliers.
    """
    K = _checks.tensor(K, "K", ndim=2, floating=True)
    n = K.shape[0]
    if K.shape != (n, n):
        raise ValueError(f"K must be square, got {tuple(K.shape)}")
    nu = _checks.real(nu, "nu", positive=True)
    if nu > 1:
        raise ValueError(f"nu must be in (0, 1], got {nu:g}")
    tol = _checks.real(tol, "tol", positive=True)
    max_iter = _checks.integer(max_iter, "max_iter", minimum=1)
    y = torch.ones(n, dtype=K.dtype, device=K.device)
    left = nu * n - torch.arange(n, dtype=K.dtype, device=K.device)
    alpha = left.clamp(min=0, max=1)                                        # 1, ..., 1, remainder, 0, ...
    grad = K @ alpha                                                        # Q a, no linear term
    n_iter, gap = _smo_loop(K, y, 1.0, alpha, grad, tol, max_iter, same_class=False)
    return SMOResult(alpha, _intercept(alpha, y, grad, 1.0), grad, n_iter, gap, gap <= tol)


# ------------------------------------------------------------------------------- Platt scaling

def platt_fit(scores, y, *, max_iter: int = 100, tol: float = 1e-12) -> tuple[float, float]:
    r"""Fit P(y = +1 | f) = 1 / (1 + exp(A f + B)) to scores f by Platt's method (svm-platt).

    Minimises the cross-entropy against Platt's smoothed targets (N_+ + 1) / (N_+ + 2) for the
    positives and 1 / (N_- + 2) for the negatives, by Newton's method with a backtracking line
    search (the objective is convex in (A, B)). ``y`` holds -1/+1 (or 0/1) labels. Returns (A, B).
    """
    f = torch.as_tensor(scores, dtype=torch.float64).detach().flatten().cpu()
    labels = torch.as_tensor(y).detach().flatten().cpu()
    if len(labels) != len(f):
        raise ValueError(f"scores has {len(f)} entries but y has {len(labels)}")
    if not bool(torch.isfinite(f).all()):
        raise ValueError("scores contains NaN or infinite values")
    positive = labels > 0
    n_pos = int(positive.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("y must contain both classes to fit a sigmoid")
    t = torch.where(positive, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0)).double()

    def loss(A, B):      # sum_i -t_i log p_i - (1 - t_i) log(1 - p_i), with log p_i = -softplus(A f + B)
        u = A * f + B
        return float((t * torch.nn.functional.softplus(u) + (1 - t) * torch.nn.functional.softplus(-u)).sum())

    A, B = 0.0, math.log((n_neg + 1.0) / (n_pos + 1.0))                   # Platt's start
    value = loss(A, B)
    for _ in range(max_iter):
        p = torch.sigmoid(-(A * f + B))                                    # P(y = +1 | f)
        d1 = t - p                                                          # dL/du_i
        d2 = p * (1 - p)
        grad = torch.stack([(d1 * f).sum(), d1.sum()])
        H = torch.stack([torch.stack([(d2 * f * f).sum(), (d2 * f).sum()]),
                         torch.stack([(d2 * f).sum(), d2.sum()])]) + 1e-12 * torch.eye(2, dtype=f.dtype)
        dA, dB = torch.linalg.solve(H, -grad).tolist()
        step = 1.0
        while step > 1e-10:
            new = loss(A + step * dA, B + step * dB)
            if new < value + 1e-4 * step * float(grad @ torch.tensor([dA, dB], dtype=f.dtype)):
                break
            step /= 2
        A, B, old, value = A + step * dA, B + step * dB, value, new
        if abs(old - value) <= tol * max(1.0, abs(value)):
            break
    return A, B


def platt_proba(scores, A: float, B: float):
    """P(y = +1 | f) = 1 / (1 + exp(A f + B)) for every score (svm-platt); numpy in, numpy out."""
    numpy_in = not isinstance(scores, torch.Tensor)
    f = torch.as_tensor(scores, dtype=torch.float64)
    p = torch.sigmoid(-(A * f + B))
    return p.numpy() if numpy_in else p


# ------------------------------------------------------------------------------------ estimators

def _as_input(X, device) -> tuple[torch.Tensor, bool]:
    """X as a float64 tensor on ``device``; and whether results go back as NumPy (X was not a tensor)."""
    return _checks.features(X, device=device), not isinstance(X, torch.Tensor)


def _output(values: torch.Tensor, numpy_out: bool):
    return values.detach().cpu().numpy() if numpy_out else values


def _binary_labels(y, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Map two class values to (classes, y in {-1, +1}); the larger class is +1, as in scikit-learn."""
    classes, y = _class_labels(y, n, device)
    if len(classes) != 2:
        raise ValueError(f"y must contain exactly two classes for a binary SVM, got {len(classes)}: "
                         f"{classes.tolist()[:10]} (use OneVsRest or OneVsOne for more)")
    return classes, torch.where(y == classes[1], 1.0, -1.0).to(torch.float64)


def _class_labels(y, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted distinct labels, y as a tensor on ``device``), checking shape and type."""
    try:
        y = torch.as_tensor(y, device=device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"y must be a 1-D array of numeric class labels: {err}") from None
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (n_samples,), got shape {tuple(y.shape)}")
    if len(y) != n:
        raise ValueError(f"X has {n} rows but y has {len(y)} labels")
    return torch.unique(y), y


def _targets(y, n: int, device) -> torch.Tensor:
    """Real-valued regression targets as a float64 tensor, checked."""
    try:
        z = torch.as_tensor(y, dtype=torch.float64, device=device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"y must be a 1-D array of numbers: {err}") from None
    if z.ndim != 1:
        raise ValueError(f"y must be 1-D (n_samples,), got shape {tuple(z.shape)}")
    if len(z) != n:
        raise ValueError(f"X has {n} rows but y has {len(z)} targets")
    if not bool(torch.isfinite(z).all()):
        raise ValueError("y contains NaN or infinite values")
    return z


class _BinaryClassifier:
    """predict from decision_function, shared by the binary estimators."""

    def predict(self, X):
        """Class of each row: ``classes_[1]`` where the score is positive, else ``classes_[0]``."""
        scores = self.decision_function(X)
        numpy_out = not isinstance(scores, torch.Tensor)
        scores = torch.as_tensor(scores, device=self.classes_.device)
        return _output(self.classes_[(scores > 0).long()], numpy_out)


class LinearSVM(ClassifierMixin, _BinaryClassifier, BaseEstimator):
    """Linear SVM trained in the primal (svm-primal) by full-batch subgradient descent (svm-subgrad).

    The step size is ``lr / sqrt(t)`` and the iterate with the lowest objective is kept, since a
    subgradient step need not decrease the objective. The loop is written out here rather than
    run through ``mlbook.train`` because the plain subgradient step *is* the algorithm the chapter
    derives. ``loss="logistic"`` gives L2-regularised logistic regression with the same code.
    Parameters are stored as given and checked by ``fit`` (scikit-learn's convention).

    Fitted attributes: ``coef_`` (w), ``intercept_`` (b), ``classes_``, ``objective_`` (per step).
    """

    def __init__(self, C: float = 1.0, *, loss: str = "hinge", lr: float = 0.1, steps: int = 2000,
                 device=None):
        self.C = C
        self.loss = loss
        self.lr = lr
        self.steps = steps
        self.device = device

    def fit(self, X, y) -> "LinearSVM":
        C = _checks.real(self.C, "C", positive=True)
        loss = _checks.choice(self.loss, "loss", list(LOSSES))
        lr = _checks.real(self.lr, "lr", positive=True)
        steps = _checks.integer(self.steps, "steps", minimum=1)
        X, _ = _as_input(X, get_device(self.device))
        self.classes_, ypm = _binary_labels(y, len(X), X.device)
        ypm = ypm.to(X.device)
        w = torch.zeros(X.shape[1], dtype=X.dtype, device=X.device)
        b = torch.zeros((), dtype=X.dtype, device=X.device)
        best = (math.inf, w, b)
        history = []
        for t in range(1, steps + 1):
            w = w.detach().requires_grad_(True)
            b = b.detach().requires_grad_(True)
            obj = primal_objective(w, b, X, ypm, C, loss)
            # autograd returns a valid subgradient of the hinge: -y_i x_i inside the margin and at the kink
            # z_i = 1 (torch.clamp passes the gradient at its bound), 0 outside
            gw, gb = torch.autograd.grad(obj, (w, b))
            value = float(obj.detach())
            history.append(value)
            if value < best[0]:
                best = (value, w.detach(), b.detach())
            step = lr / math.sqrt(t)
            w, b = w.detach() - step * gw, b.detach() - step * gb
        final = float(primal_objective(w, b, X, ypm, C, loss))
        if final < best[0]:
            best = (final, w, b)
        history.append(final)
        self.objective_ = history
        self.coef_, self.intercept_ = best[1], float(best[2])
        self.n_features_in_ = X.shape[1]
        return self

    def decision_function(self, X):
        """f(x) = <w, x> + b for every row of X (a tensor for a tensor, else a NumPy array)."""
        _checks.fitted(self, "coef_")
        numpy_out = not isinstance(X, torch.Tensor)
        X = _checks.features(X, n_features=len(self.coef_), device=self.coef_.device)
        return _output(X @ self.coef_ + self.intercept_, numpy_out)


class _KernelMachine:
    """Kernel parameters, their checks, gamma="scale", and the decision function of a kernel expansion.

    Subclasses set ``support_vectors_``, ``dual_coef_`` (one coefficient per support vector) and
    ``intercept_`` in ``fit``; the score is sum_i dual_coef_i k(x_i, x) + intercept_ (svm-decision).
    """

    def _check_kernel_params(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown kernel {self.kernel!r}: choose one of {', '.join(map(repr, KERNELS))}")
        if not (isinstance(self.gamma, str) and self.gamma == "scale"):
            if isinstance(self.gamma, str):
                raise ValueError(f"gamma must be 'scale' or a positive number, got {self.gamma!r}")
            _checks.real(self.gamma, "gamma", positive=True)
        _checks.integer(self.degree, "degree", minimum=1)
        _checks.real(self.coef0, "coef0", nonnegative=True)
        self._tol = _checks.real(self.tol, "tol", positive=True)
        self._max_iter = _checks.integer(self.max_iter, "max_iter", minimum=1)

    def _resolve_gamma(self, X: torch.Tensor) -> None:
        if isinstance(self.gamma, str):                                     # "scale", as scikit-learn
            var = float(X.var(unbiased=False))
            self.gamma_ = 1.0 / (X.shape[1] * var) if var > 0 else 1.0
        else:
            self.gamma_ = float(self.gamma)

    def _params(self) -> dict:
        if self.kernel == "rbf":
            return {"gamma": self.gamma_}
        if self.kernel == "poly":
            return {"gamma": self.gamma_, "degree": int(self.degree), "coef0": float(self.coef0)}
        return {}

    def gram(self, X, Z) -> torch.Tensor:
        """Gram matrix ``k(X[i], Z[j])`` of the fitted kernel (gamma resolved by ``fit``)."""
        _checks.fitted(self, "support_vectors_")
        d, dev = self.support_vectors_.shape[1], self.support_vectors_.device
        X = _checks.features(X, n_features=d, device=dev)
        Z = _checks.features(Z, "Z", n_features=d, device=dev)
        return kernel_matrix(self.kernel, X, Z, **self._params())

    def decision_function(self, X):
        """f(x) = sum_{i in SV} coef_i k(x_i, x) + b, eq. (svm-decision); a tensor for a tensor, else NumPy."""
        _checks.fitted(self, "support_vectors_")
        numpy_out = not isinstance(X, torch.Tensor)
        f = self.gram(X, self.support_vectors_) @ self.dual_coef_ + self.intercept_
        return _output(f, numpy_out)

    def _store(self, X: torch.Tensor, coef: torch.Tensor, b: float) -> None:
        self.support_ = torch.nonzero(coef != 0).flatten()
        self.support_vectors_ = X[self.support_]
        self.dual_coef_ = coef[self.support_]
        self.intercept_ = b
        self.coef_ = self.dual_coef_ @ self.support_vectors_ if self.kernel == "linear" else None
        self.n_features_in_ = X.shape[1]


class SVC(ClassifierMixin, _BinaryClassifier, _KernelMachine, BaseEstimator):
    """Binary kernel SVM solved exactly in the dual by :func:`smo`; the API follows scikit-learn's ``SVC``.

    Args:
        C: box constraint, the weight of the hinge loss in (svm-primal).
        kernel: ``"linear"``, ``"rbf"`` or ``"poly"``.
        gamma: kernel width for rbf/poly, or ``"scale"`` = 1 / (n_features * X.var()) as in scikit-learn.
        degree, coef0: of the polynomial kernel (svm-poly).
        tol: KKT gap at which SMO stops (svm-kkt-gap).

    Parameters are stored as given and checked by ``fit``, so ``get_params``, ``set_params``,
    ``clone``, ``GridSearchCV`` and ``cross_val_score`` work. ``fit`` and ``predict`` take tensors
    or NumPy arrays; results come back as tensors for a tensor and as NumPy arrays otherwise.
    More than two classes: wrap it in :class:`OneVsOne` or :class:`OneVsRest`.

    Fitted attributes: ``alpha_`` (all n multipliers), ``support_`` (indices with alpha > 0),
    ``support_vectors_``, ``dual_coef_`` (alpha_i y_i of the support vectors), ``intercept_`` (b),
    ``dual_objective_`` (svm-dual at the solution), ``n_iter_``, ``classes_``, and for the linear
    kernel ``coef_`` = w = sum_i alpha_i y_i x_i (svm-w).
    """

    def __init__(self, C: float = 1.0, *, kernel: str = "rbf", gamma: float | str = "scale", degree: int = 3,
                 coef0: float = 0.0, tol: float = 1e-3, max_iter: int = 1_000_000, device=None):
        self.C = C
        self.kernel = kernel
        self.gamma = gamma
        self.degree = degree
        self.coef0 = coef0
        self.tol = tol
        self.max_iter = max_iter
        self.device = device

    def fit(self, X, y) -> "SVC":
        C = _checks.real(self.C, "C", positive=True)
        self._check_kernel_params()
        X, _ = _as_input(X, get_device(self.device))
        self.classes_, ypm = _binary_labels(y, len(X), X.device)
        ypm = ypm.to(X.device)
        self._resolve_gamma(X)
        K = kernel_matrix(self.kernel, X, X, **self._params())             # (n, n)
        res = smo(K, ypm, C, tol=self._tol, max_iter=self._max_iter)
        self.alpha_, self.n_iter_, self.converged_ = res.alpha, res.n_iter, res.converged
        self._store(X, res.alpha * ypm, res.b)
        self.dual_objective_ = float(dual_objective(res.alpha, ypm, K))
        return self


class NuSVC(ClassifierMixin, _BinaryClassifier, _KernelMachine, BaseEstimator):
    """Binary nu-SVM (svm-nu-primal) solved by :func:`smo_nu`; the API follows scikit-learn's ``NuSVC``.

    ``nu`` in (0, 1] bounds the fraction of margin errors from above and the fraction of support
    vectors from below ({prf:ref}`svm-nu-property` on the page). The decision function is scaled
    as libsvm's, f = (sum_i a_i y_i k(x_i, x) + b) / rho, so the margins sit at f = +-1.

    Fitted attributes as :class:`SVC`, with ``alpha_`` the multipliers of (svm-nu-dual), in
    [0, 1/n] and summing to nu, and ``rho_`` the margin parameter rho; the same classifier is the
    C-SVM with C = 1 / (n rho) (svm-nu-c).
    """

    def __init__(self, nu: float = 0.5, *, kernel: str = "rbf", gamma: float | str = "scale", degree: int = 3,
                 coef0: float = 0.0, tol: float = 1e-3, max_iter: int = 1_000_000, device=None):
        self.nu = nu
        self.kernel = kernel
        self.gamma = gamma
        self.degree = degree
        self.coef0 = coef0
        self.tol = tol
        self.max_iter = max_iter
        self.device = device

    def fit(self, X, y) -> "NuSVC":
        nu = _checks.real(self.nu, "nu", positive=True)
        self._check_kernel_params()
        X, _ = _as_input(X, get_device(self.device))
        self.classes_, ypm = _binary_labels(y, len(X), X.device)
        ypm = ypm.to(X.device)
        self._resolve_gamma(X)
        K = kernel_matrix(self.kernel, X, X, **self._params())             # (n, n)
        res = smo_nu(K, ypm, nu, tol=self._tol, max_iter=self._max_iter)
        if res.rho <= 0:
            raise ValueError(f"nu = {nu:g} gives a non-positive margin rho = {res.rho:.3g}; choose a smaller nu")
        n = len(X)
        self.alpha_, self.rho_ = res.alpha / n, res.rho / n                 # back to alpha in [0, 1/n]
        self.n_iter_, self.converged_ = res.n_iter, res.converged
        self._store(X, res.alpha * ypm / res.rho, res.b / res.rho)
        return self


class SVR(RegressorMixin, _KernelMachine, BaseEstimator):
    """Epsilon-insensitive support vector regression (svm-svr-primal) solved by :func:`smo_svr`.

    The API follows scikit-learn's ``SVR``: ``C``, ``epsilon`` (half-width of the tube in which
    errors cost nothing) and the kernel parameters of :class:`SVC`. Fitted attributes:
    ``alpha_`` and ``alpha_star_`` (the two multipliers of every point), ``support_``,
    ``support_vectors_``, ``dual_coef_`` (alpha_i - alpha*_i of the support vectors),
    ``intercept_``, ``dual_objective_`` (svm-svr-dual), ``n_iter_``.
    """

    def __init__(self, C: float = 1.0, *, epsilon: float = 0.1, kernel: str = "rbf",
                 gamma: float | str = "scale", degree: int = 3, coef0: float = 0.0, tol: float = 1e-3,
                 max_iter: int = 1_000_000, device=None):
        self.C = C
        self.epsilon = epsilon
        self.kernel = kernel
        self.gamma = gamma
        self.degree = degree
        self.coef0 = coef0
        self.tol = tol
        self.max_iter = max_iter
        self.device = device

    def fit(self, X, y) -> "SVR":
        C = _checks.real(self.C, "C", positive=True)
        epsilon = _checks.real(self.epsilon, "epsilon", nonnegative=True)
        self._check_kernel_params()
        X, _ = _as_input(X, get_device(self.device))
        z = _targets(y, len(X), X.device)
        self._resolve_gamma(X)
        K = kernel_matrix(self.kernel, X, X, **self._params())             # (n, n)
        res = smo_svr(K, z, C, epsilon, tol=self._tol, max_iter=self._max_iter)
        n = len(z)
        self.alpha_, self.alpha_star_ = res.alpha[:n], res.alpha[n:]
        self.n_iter_, self.converged_ = res.n_iter, res.converged
        beta = self.alpha_ - self.alpha_star_
        self._store(X, beta, res.b)
        self.dual_objective_ = float(svr_dual_objective(beta, z, K, epsilon))
        return self

    def predict(self, X):
        """f(x) = sum_i (alpha_i - alpha*_i) k(x_i, x) + b, eq. (svm-svr-f)."""
        return self.decision_function(X)


def svr_dual_objective(beta: torch.Tensor, z: torch.Tensor, K: torch.Tensor, epsilon: float) -> torch.Tensor:
    """The SVR dual (svm-svr-dual) at beta = alpha - alpha*, for a solution with alpha_i alpha*_i = 0.

    sum_i z_i beta_i - epsilon sum_i |beta_i| - (1/2) beta^T K beta (then alpha_i + alpha*_i = |beta_i|).
    """
    beta = _checks.tensor(beta, "beta", ndim=1, floating=True)
    return z @ beta - epsilon * beta.abs().sum() - 0.5 * beta @ K @ beta


class OneClassSVM(OutlierMixin, _KernelMachine, BaseEstimator):
    """One-class SVM (svm-oc-primal) solved by :func:`smo_one_class`; the API follows scikit-learn's.

    Fits a region holding most of the data: ``predict`` is +1 inside it and -1 outside. ``nu`` bounds
    the fraction of training points outside from above and the fraction of support vectors from
    below, as for the nu-SVM. Fitted attributes: ``alpha_`` (a = nu n alpha, in [0, 1]),
    ``support_``, ``support_vectors_``, ``dual_coef_``, ``intercept_`` (= -rho), ``n_iter_``.
    """

    def __init__(self, nu: float = 0.5, *, kernel: str = "rbf", gamma: float | str = "scale", degree: int = 3,
                 coef0: float = 0.0, tol: float = 1e-3, max_iter: int = 1_000_000, device=None):
        self.nu = nu
        self.kernel = kernel
        self.gamma = gamma
        self.degree = degree
        self.coef0 = coef0
        self.tol = tol
        self.max_iter = max_iter
        self.device = device

    def fit(self, X, y=None) -> "OneClassSVM":
        nu = _checks.real(self.nu, "nu", positive=True)
        self._check_kernel_params()
        X, _ = _as_input(X, get_device(self.device))
        self._resolve_gamma(X)
        K = kernel_matrix(self.kernel, X, X, **self._params())             # (n, n)
        res = smo_one_class(K, nu, tol=self._tol, max_iter=self._max_iter)
        self.alpha_, self.n_iter_, self.converged_ = res.alpha, res.n_iter, res.converged
        self._store(X, res.alpha, res.b)
        return self

    def predict(self, X):
        """+1 where the score is positive (inside the region), -1 elsewhere, as libsvm."""
        f = self.decision_function(X)
        numpy_out = not isinstance(f, torch.Tensor)
        f = torch.as_tensor(f)
        return _output(torch.where(f > 0, 1, -1), numpy_out)


# ---------------------------------------------------------------------------------- multiclass

def _meta_fit_input(X, y, device):
    X, _ = _as_input(X, get_device(device))
    classes, y = _class_labels(y, len(X), X.device)
    if len(classes) < 2:
        raise ValueError(f"y must contain at least two classes, got {classes.tolist()}")
    return X, classes, y


def _binary_estimator(estimator):
    if not (hasattr(estimator, "fit") and hasattr(estimator, "decision_function")):
        raise TypeError(f"estimator must have fit and decision_function, got {type(estimator).__name__}")
    return estimator


class OneVsRest(ClassifierMixin, BaseEstimator):
    """One binary classifier per class, that class against all others; predict the largest score.

    ``estimator`` is any binary classifier with ``decision_function`` (here :class:`SVC`); it is
    cloned for each class. ``decision_function`` returns the (n, K) scores (svm-ovr).
    """

    def __init__(self, estimator=None):
        self.estimator = estimator

    def fit(self, X, y) -> "OneVsRest":
        base = _binary_estimator(self.estimator if self.estimator is not None else SVC())
        X, self.classes_, y = _meta_fit_input(X, y, getattr(base, "device", None))
        self.estimators_ = [clone(base).fit(X, torch.where(y == c, 1, -1)) for c in self.classes_]
        self.n_features_in_ = X.shape[1]
        return self

    def decision_function(self, X):
        _checks.fitted(self, "estimators_")
        numpy_out = not isinstance(X, torch.Tensor)
        scores = torch.stack([torch.as_tensor(e.decision_function(X)) for e in self.estimators_], 1)
        return _output(scores, numpy_out)                                   # (n, K)

    def predict(self, X):
        _checks.fitted(self, "estimators_")
        numpy_out = not isinstance(X, torch.Tensor)
        scores = torch.as_tensor(self.decision_function(X))
        return _output(self.classes_.to(scores.device)[scores.argmax(1)], numpy_out)


class OneVsOne(ClassifierMixin, BaseEstimator):
    """One binary classifier per pair of classes, trained on those two classes; predict by votes.

    Pairs (a, b), a < b, come in scikit-learn's order (0, 1), (0, 2), ..., (1, 2), ...; the score of
    a pair is positive for the second class b (the binary estimator's ``classes_[1]``), so it is the
    negative of scikit-learn's ``SVC(decision_function_shape="ovo")``. Each pair votes for its
    winner; ties between classes go to the first class, as in libsvm (svm-ovo).
    """

    def __init__(self, estimator=None):
        self.estimator = estimator

    def fit(self, X, y) -> "OneVsOne":
        base = _binary_estimator(self.estimator if self.estimator is not None else SVC())
        X, self.classes_, y = _meta_fit_input(X, y, getattr(base, "device", None))
        self.pairs_, self.estimators_ = [], []
        K = len(self.classes_)
        for a in range(K):
            for b in range(a + 1, K):
                rows = (y == self.classes_[a]) | (y == self.classes_[b])
                self.pairs_.append((a, b))
                self.estimators_.append(clone(base).fit(X[rows], y[rows]))
        self.n_features_in_ = X.shape[1]
        return self

    def decision_function(self, X):
        _checks.fitted(self, "estimators_")
        numpy_out = not isinstance(X, torch.Tensor)
        scores = torch.stack([torch.as_tensor(e.decision_function(X)) for e in self.estimators_], 1)
        return _output(scores, numpy_out)                                   # (n, K (K - 1) / 2)

    def votes(self, X) -> torch.Tensor:
        """(n, K) number of pairwise wins of each class."""
        _checks.fitted(self, "estimators_")
        scores = torch.as_tensor(self.decision_function(X))
        votes = torch.zeros(len(scores), len(self.classes_), dtype=torch.long, device=scores.device)
        for col, (a, b) in enumerate(self.pairs_):
            second = scores[:, col] > 0
            votes[:, b] += second
            votes[:, a] += ~second
        return votes

    def predict(self, X):
        numpy_out = not isinstance(X, torch.Tensor)
        votes = self.votes(X)
        return _output(self.classes_.to(votes.device)[votes.argmax(1)], numpy_out)


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


# ----------------------------------------------------------------------------- coding exercise

def _pair_step(alpha_i: float, alpha_j: float, y_i: float, y_j: float, g_i: float, g_j: float,
               a_ij: float, C: float) -> tuple[float, float]:
    """One clipped SMO step (svm-smo-step) on the pair (i, j): the reference for the exercise."""
    room_i = C - alpha_i if y_i > 0 else alpha_i
    room_j = alpha_j if y_j > 0 else C - alpha_j
    t = min((g_i - g_j) / a_ij, room_i, room_j)
    return alpha_i + y_i * t, alpha_j - y_j * t


def check_smo_step(fn: Callable):
    """Checker for the notebook's exercise: one SMO step on a pair, eq. (svm-smo-step).

    ``fn(alpha_i, alpha_j, y_i, y_j, g_i, g_j, a_ij, C)`` returns the new pair (alpha_i, alpha_j)
    after the exact step along alpha_i += y_i t, alpha_j -= y_j t, clipped to the box [0, C].
    """
    from .exercises import Case, check

    def close(expected):
        return lambda out: (len(out) == 2 and all(abs(float(o) - e) < 1e-12 for o, e in zip(out, expected)))

    cases = [
        Case("an unclipped step, both labels +1", (0.2, 0.3, 1.0, 1.0, 1.0, 0.5, 2.0, 1.0), close((0.45, 0.05)),
             "the unclipped step length is (g_i - g_j) / a_ij; alpha_i moves by +y_i t, alpha_j by -y_j t."),
        Case("a step that alpha_j = 0 stops", (0.2, 0.1, 1.0, 1.0, 1.0, 0.5, 2.0, 1.0), close((0.3, 0.0)),
             "clip t to the room of each multiplier: alpha_j with y_j = +1 can only fall by alpha_j."),
        Case("labels -1 and +1", (0.5, 0.5, -1.0, 1.0, 0.7, 0.3, 1.0, 1.0), close((0.1, 0.1)),
             "with y_i = -1, alpha_i moves by -t; its room is alpha_i itself."),
        Case("a step that the bound C stops", (0.9, 0.95, 1.0, -1.0, 1.5, 0.5, 1.0, 1.0), close((0.95, 1.0)),
             "alpha_j with y_j = -1 rises by t and can rise only to C."),
    ]
    gen = torch.Generator().manual_seed(0)
    for k in range(4):                                                      # random pairs: the equality holds
        C = 1.0 + k
        a_i, a_j = (C * torch.rand(2, generator=gen, dtype=torch.float64)).tolist()
        y_i, y_j = (torch.randint(0, 2, (2,), generator=gen) * 2 - 1).double().tolist()
        g_j = float(torch.randn((), generator=gen, dtype=torch.float64))
        g_i = g_j + float(torch.rand((), generator=gen, dtype=torch.float64))
        a = 0.1 + float(torch.rand((), generator=gen, dtype=torch.float64))
        args = (a_i, a_j, y_i, y_j, g_i, g_j, a, C)
        cases.append(Case(f"random pair {k + 1} (C = {C:g})", args, close(_pair_step(*args)),
                          "the step keeps y_i alpha_i + y_j alpha_j fixed and both multipliers in [0, C]."))
    return check(fn, cases, name=getattr(fn, "__name__", "your step"))


def poly2_features(X: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """The explicit features of the degree-2 polynomial kernel in two dimensions (page, kernel trick).

    phi(u) = (u_1^2, u_2^2, sqrt2 u_1 u_2, sqrt(2c) u_1, sqrt(2c) u_2, c), so that
    <phi(x), phi(z)> = (<x, z> + c)^2, eq. (svm-poly) with gamma = 1 and p = 2.
    """
    X = _checks.tensor(X, "X", ndim=2, floating=True, last_dim=2)
    c = _checks.real(c, "c", nonnegative=True)
    u1, u2 = X[:, 0], X[:, 1]
    r2, rc = math.sqrt(2.0), math.sqrt(2.0 * c)
    return torch.stack([u1**2, u2**2, r2 * u1 * u2, rc * u1, rc * u2, torch.full_like(u1, c)], 1)


# ----------------------------------------------------------------- relevance vector machine (RVM)
# Page ``svm_extensions``, section "The relevance vector machine": a Bayesian linear model on the
# kernel features phi(x) = (k(x, x_1), ..., k(x, x_n), 1) with one prior precision alpha_i per weight.

def _rvm_posterior(Phi, t, alpha, beta) -> tuple[torch.Tensor, torch.Tensor, float]:
    precision = torch.diag(alpha) + beta * Phi.T @ Phi                      # Sigma^{-1}, (M, M)
    chol, info = torch.linalg.cholesky_ex(precision)
    if int(info) != 0:
        raise ValueError("the posterior precision is not positive definite (rescale the kernel)")
    Sigma = torch.cholesky_inverse(chol)                                    # (M, M)
    m = beta * Sigma @ (Phi.T @ t)                                          # (M,)
    return m, Sigma, 2 * float(torch.diagonal(chol).log().sum())           # log |Sigma^{-1}|


def _log_evidence(Phi, t, alpha, beta, m, logdet_precision) -> float:
    n = len(t)
    energy = beta / 2 * float(((t - Phi @ m) ** 2).sum()) + 0.5 * float((alpha * m * m).sum())
    return 0.5 * (n * math.log(beta) - n * math.log(2 * math.pi) + float(alpha.log().sum())
                  - logdet_precision) - energy


def _check_rvm(Phi, t, alpha, beta):
    Phi = _checks.tensor(Phi, "Phi", ndim=2, floating=True)
    t = _checks.tensor(t, "t", ndim=1, floating=True)
    alpha = _checks.tensor(alpha, "alpha", ndim=1, floating=True)
    if len(t) != Phi.shape[0] or len(alpha) != Phi.shape[1]:
        raise ValueError(f"Phi {tuple(Phi.shape)} needs t of length {Phi.shape[0]} and alpha of "
                         f"length {Phi.shape[1]}, got {len(t)} and {len(alpha)}")
    if not bool((alpha > 0).all()):
        raise ValueError("alpha must be positive")
    return Phi, t, alpha, _checks.real(beta, "beta", positive=True)


def rvm_posterior(Phi: torch.Tensor, t: torch.Tensor, alpha: torch.Tensor,
                  beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean m and covariance Sigma of the weights, eq. (svm-rvm-posterior).

    Sigma = (diag(alpha) + beta Phi^T Phi)^{-1} and m = beta Sigma Phi^T t, for Phi (n, M),
    t (n,), alpha (M,) positive and a noise precision beta > 0.
    """
    m, Sigma, _ = _rvm_posterior(*_check_rvm(Phi, t, alpha, beta))
    return m, Sigma


def rvm_log_evidence(Phi: torch.Tensor, t: torch.Tensor, alpha: torch.Tensor, beta: float) -> float:
    """log p(t | alpha, beta), eq. (svm-rvm-evidence), through the posterior (no n x n matrix).

    = (n log beta - n log 2 pi + sum_i log alpha_i - log |Sigma^{-1}|) / 2 - E(m), with
    E(m) = beta/2 ||t - Phi m||^2 + 1/2 m^T diag(alpha) m.
    """
    Phi, t, alpha, beta = _check_rvm(Phi, t, alpha, beta)
    m, _, logdet = _rvm_posterior(Phi, t, alpha, beta)
    return _log_evidence(Phi, t, alpha, beta, m, logdet)


class RelevanceVectorRegressor(RegressorMixin, _KernelMachine, BaseEstimator):
    """Tipping's relevance vector machine for regression (svm-rvm-model), by type-II maximum likelihood.

    Each basis function k(., x_i), and a constant one when ``bias=True``, gets a weight with prior
    N(0, 1/alpha_i); the targets get Gaussian noise of precision beta. ``fit`` iterates the
    re-estimation updates of the page (svm-rvm-updates): the posterior (svm-rvm-posterior), then
    eta_i = 1 - alpha_i Sigma_ii, alpha_i = eta_i / m_i^2 and beta = (n - sum_i eta_i) / ||t - Phi m||^2
    (the page's eta_i is Tipping's gamma_i). A basis function leaves the model as soon as its alpha
    exceeds ``alpha_max`` (its weight is then zero to working precision). The loop stops when an
    iteration removes nothing and moves no log alpha_i, nor log beta, by more than ``tol``.

    Fitted attributes, named as for :class:`SVR` so the two compare directly: ``support_`` (indices
    of the relevance vectors), ``support_vectors_``, ``dual_coef_`` (their posterior mean weights),
    ``intercept_`` (the bias weight, 0 when pruned or absent); and ``alpha_``, ``beta_``,
    ``sigma_`` (posterior covariance of the kept weights, bias last), ``log_evidence_`` (one value
    per iteration, at the hyperparameters the iteration started from, and the final one),
    ``n_basis_`` (the number of basis functions still in the model, at the same points),
    ``n_iter_``, ``converged_``.
    """

    def __init__(self, *, kernel: str = "rbf", gamma: float | str = "scale", degree: int = 3,
                 coef0: float = 0.0, bias: bool = True, tol: float = 1e-3, max_iter: int = 2000,
                 alpha_max: float = 1e6, device=None):
        self.kernel = kernel
        self.gamma = gamma
        self.degree = degree
        self.coef0 = coef0
        self.bias = bias
        self.tol = tol
        self.max_iter = max_iter
        self.alpha_max = alpha_max
        self.device = device

    def _design(self, X: torch.Tensor, Z: torch.Tensor, with_bias: bool) -> torch.Tensor:
        Phi = kernel_matrix(self.kernel, X, Z, **self._params())            # (n, M)
        if with_bias:
            Phi = torch.cat([Phi, torch.ones(len(X), 1, dtype=Phi.dtype, device=Phi.device)], 1)
        return Phi

    def fit(self, X, y) -> "RelevanceVectorRegressor":
        self._check_kernel_params()
        if not isinstance(self.bias, bool):
            raise TypeError(f"bias must be True or False, got {self.bias!r}")
        alpha_max = _checks.real(self.alpha_max, "alpha_max", positive=True)
        X, _ = _as_input(X, get_device(self.device))
        t = _targets(y, len(X), X.device)
        n = len(X)
        if n < 2:
            raise ValueError(f"the RVM needs at least 2 samples, got {n}")
        self._resolve_gamma(X)
        Phi = self._design(X, X, self.bias)                                 # (n, M), M = n (+ 1)
        keep = torch.arange(Phi.shape[1], device=X.device)                  # indices of kept columns
        var = float(t.var())
        alpha = torch.ones(Phi.shape[1], dtype=torch.float64, device=X.device)
        beta = 1.0 / (0.1 * var) if var > 0 else 1.0                        # start: noise 10% of var(t)
        history, sizes, converged = [], [], False
        for it in range(1, self._max_iter + 1):
            P = Phi[:, keep]
            sizes.append(len(keep))
            m, Sigma, logdet = _rvm_posterior(P, t, alpha, beta)
            history.append(_log_evidence(P, t, alpha, beta, m, logdet))
            g = (1 - alpha * torch.diagonal(Sigma)).clamp(min=0)            # eta_i in [0, 1]
            new_alpha = g / (m * m).clamp(min=torch.finfo(m.dtype).tiny)
            resid = float(((t - P @ m) ** 2).sum())
            new_beta = max(n - float(g.sum()), 1e-12) / max(resid, 1e-300)
            # (svm-rvm-updates) moved only the kept alphas; a diverging one leaves the model
            stay = new_alpha < alpha_max
            moved = torch.log(new_alpha[stay] / alpha[stay]).abs()
            shift = max(float(moved.max()) if len(moved) else 0.0, abs(math.log(new_beta / beta)))
            alpha, beta, keep = new_alpha[stay], new_beta, keep[stay]
            if len(keep) == 0:
                raise ValueError("every basis function was pruned: the targets look like pure noise "
                                 "for this kernel (try another gamma)")
            if shift < self._tol and bool(stay.all()):
                converged = True
                break
        P = Phi[:, keep]
        m, Sigma, logdet = _rvm_posterior(P, t, alpha, beta)
        history.append(_log_evidence(P, t, alpha, beta, m, logdet))
        is_bias = keep == n if self.bias else torch.zeros_like(keep, dtype=torch.bool)
        self.alpha_, self.beta_, self.sigma_ = alpha, beta, Sigma
        self.support_ = keep[~is_bias]
        self.support_vectors_ = X[self.support_]
        self.dual_coef_ = m[~is_bias]
        self.intercept_ = float(m[is_bias].sum())
        self._keep_bias = bool(is_bias.any())
        self.log_evidence_, self.n_basis_ = history, sizes + [len(keep)]
        self.n_iter_, self.converged_ = it, converged
        self.n_features_in_ = X.shape[1]
        if not converged:
            warnings.warn(f"the RVM did not converge in {self._max_iter} iterations", RuntimeWarning)
        return self

    def predict(self, X, return_std: bool = False):
        """Predictive mean m^T phi(x) and, with ``return_std``, the standard deviation
        sqrt(1/beta + phi(x)^T Sigma phi(x)) of eq. (svm-rvm-predictive)."""
        mean = self.decision_function(X)
        if not return_std:
            return mean
        numpy_out = not isinstance(X, torch.Tensor)
        Xt = _checks.features(X, n_features=self.n_features_in_, device=self.support_vectors_.device)
        phi = self._design(Xt, self.support_vectors_, self._keep_bias)     # (n, M) in Sigma's order
        var = 1.0 / self.beta_ + ((phi @ self.sigma_) * phi).sum(1)
        return mean, _output(var.sqrt(), numpy_out)


# ------------------------------------------------------------------------------------ ranking SVM

def ranking_pairs(y, groups=None) -> torch.Tensor:
    """All pairs (i, j) with y_i > y_j (and, with ``groups``, the same group): a (P, 2) long tensor.

    These are the preferences of the ranking SVM (svm-rank-primal); pairs with equal y say nothing.
    """
    y = _targets(y, len(torch.as_tensor(y)), None)
    i, j = torch.meshgrid(torch.arange(len(y)), torch.arange(len(y)), indexing="ij")
    keep = y[:, None] > y[None, :]
    if groups is not None:
        g = torch.as_tensor(groups)
        if g.shape != y.shape:
            raise ValueError(f"groups must have one entry per sample ({len(y)}), got shape {tuple(g.shape)}")
        keep &= g[:, None] == g[None, :]
    return torch.stack([i[keep], j[keep]], 1)


def pairwise_accuracy(scores, y, groups=None) -> float:
    """Fraction of the pairs with y_i > y_j that the scores order correctly (ties count one half)."""
    s = _targets(scores, len(torch.as_tensor(scores)), None)
    pairs = ranking_pairs(y, groups)
    if len(s) != len(torch.as_tensor(y)):
        raise ValueError(f"scores has {len(s)} entries but y has {len(torch.as_tensor(y))}")
    if len(pairs) == 0:
        raise ValueError("no pair has different targets: the accuracy is undefined")
    d = s[pairs[:, 0]] - s[pairs[:, 1]]
    return float(((d > 0).double() + 0.5 * (d == 0).double()).mean())


class RankSVM(BaseEstimator):
    """Joachims' ranking SVM (svm-rank-primal): a linear score w^T x trained on preference pairs.

    For every pair with y_i > y_j it asks for w^T (x_i - x_j) >= 1 - xi_ij and minimises
    (1/2) ||w||^2 + C sum xi_ij. That is a binary SVM *without intercept* on the differences. ``fit``
    solves it with the chapter's dual solver: :class:`SVC` (linear kernel, SMO) on the differences
    labelled +1 together with their mirror images labelled -1, with C/2 (svm-rank-mirror); by the
    symmetry of that set its intercept is zero at the optimum and its w is the ranking SVM's.

    ``groups`` (query ids) restrict the pairs to items of the same query. Fitted attributes:
    ``coef_`` (w), ``n_pairs_``, ``support_`` (indices of the pairs that are support vectors),
    ``svc_`` (the fitted binary machine).
    """

    def __init__(self, C: float = 1.0, *, tol: float = 1e-6, max_iter: int = 1_000_000, device=None):
        self.C = C
        self.tol = tol
        self.max_iter = max_iter
        self.device = device

    def fit(self, X, y, groups=None) -> "RankSVM":
        C = _checks.real(self.C, "C", positive=True)
        X, _ = _as_input(X, get_device(self.device))
        y = _targets(y, len(X), None)
        pairs = ranking_pairs(y, groups).to(X.device)
        if len(pairs) == 0:
            raise ValueError("no pair has different targets: nothing to rank")
        D = X[pairs[:, 0]] - X[pairs[:, 1]]                                # (P, d) differences
        Dm = torch.cat([D, -D])                                             # (2P, d) with mirrors
        labels = torch.cat([torch.ones(len(D)), -torch.ones(len(D))]).to(X)
        self.svc_ = SVC(C / 2, kernel="linear", tol=self.tol, max_iter=self.max_iter,
                        device=X.device).fit(Dm, labels)
        self.coef_ = self.svc_.coef_
        self.n_pairs_ = len(D)
        self.support_ = torch.unique(self.svc_.support_ % len(D))
        self.n_features_in_ = X.shape[1]
        return self

    def decision_function(self, X):
        """The ranking score w^T x of every row (higher ranks first)."""
        _checks.fitted(self, "coef_")
        numpy_out = not isinstance(X, torch.Tensor)
        X = _checks.features(X, n_features=self.n_features_in_, device=self.coef_.device)
        return _output(X @ self.coef_, numpy_out)

    def score(self, X, y, groups=None) -> float:
        """Pairwise accuracy of the scores on (X, y): the fraction of ordered pairs ranked right."""
        s = self.decision_function(X)
        return pairwise_accuracy(torch.as_tensor(s).cpu(), torch.as_tensor(y).cpu(), groups)


# ------------------------------------------------------------- kernel machine versus network

def hinge_network(X, y, *, hidden: tuple[int, ...] = (32, 32), steps: int = 1000, lr: float = 1e-2,
                  weight_decay: float = 1e-3, batch_size: int = 256,
                  generator: torch.Generator | None = None, device=None) -> torch.nn.Module:
    """An MLP score f(x) trained on the SVM's data term, the mean hinge loss of y f(x) (svm-deep-objective).

    The network learns its own features; ``weight_decay`` (AdamW's) stands in for ||w||^2.
    ``y`` holds two class values (mapped to -1/+1 as in :class:`SVC`). Built from
    ``mlbook.nets.mlp`` and trained by ``mlbook.train.train``; returns the model in eval mode,
    on ``device``, in float32. Parameters are initialised from torch's global generator
    (seed it with ``mlbook.seed_all``); ``generator`` shuffles the batches.
    """
    from .nets import mlp
    from .train import train

    hidden = tuple(_checks.integer(h, "hidden", minimum=1) for h in hidden)
    dev = get_device(device)
    X, _ = _as_input(X, dev)
    _, ypm = _binary_labels(y, len(X), X.device)
    model = mlp(X.shape[1], *hidden, 1).to(dev)

    def loss_fn(net, batch):
        x, t = batch
        return hinge_loss(t * net(x)[:, 0]).mean()                         # mean of max(0, 1 - y f(x))

    train(model, loss_fn, (X.float(), ypm.float().to(dev)), steps=steps, lr=lr,
          batch_size=min(batch_size, len(X)), weight_decay=weight_decay, generator=generator,
          device=dev, desc="hinge network", show_progress=False)
    return model
