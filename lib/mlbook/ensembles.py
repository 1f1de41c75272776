"""Ensembles of trees (chapter "Ensembles"): bagging and random forests, AdaBoost, gradient boosting.

Every estimator grows its trees with :func:`mlbook.trees.grow`. A forest is grown in *one* call: the
bootstrap samples of all trees are stacked and each row is tagged with its tree, so the level-wise
split search handles every tree at once. Boosting is sequential by nature; its trees are stacked
after fitting (:func:`stack`) so that prediction is again one pass for all rounds.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier

from . import _checks
from .device import get_device
from .exercises import Case, Verdict, check
from .trees import (Gini, Newton, SquaredError, Tree, _as_float32_values, _targets, _TensorScoring, _to_numpy,
                    _codes, _weights, apply, bin_edges, grow, impurity_importance, tree_of_nodes)

__all__ = ["stack", "tree_of_nodes", "tree_correlation", "averaged_variance", "forest_variance",
           "adaboost_bound", "newton_gain", "StackingClassifier", "check_gini_gain", "check_huber_leaf", "check_weighted_median",
           "weighted_quantile", "huber_leaf", "exponential_minimiser", "margin_weight", "flip_labels", "sphere_data", "mean_tree_correlation", "partial_dependence",
           "RandomForestClassifier", "RandomForestRegressor",
           "AdaBoostClassifier", "AdaBoostRegressor", "weighted_median", "GradientBoostingRegressor", "GradientBoostingClassifier",
           "NewtonBoostingRegressor", "NewtonBoostingClassifier"]


def stack(trees: list[Tree]) -> Tree:
    """Concatenate trees into one :class:`Tree` with one root each (node ids shifted)."""
    offsets, total = [], 0
    for t in trees:
        offsets.append(total)
        total += len(t.feature)

    def shift(ids, off):
        return torch.where(ids >= 0, ids + off, ids)

    return Tree(feature=torch.cat([t.feature for t in trees]),
                threshold=torch.cat([t.threshold for t in trees]),
                left=torch.cat([shift(t.left, o) for t, o in zip(trees, offsets)]),
                right=torch.cat([shift(t.right, o) for t, o in zip(trees, offsets)]),
                value=torch.cat([t.value for t in trees]),
                n_samples=torch.cat([t.n_samples for t in trees]),
                gain=torch.cat([t.gain for t in trees]),
                ties=torch.cat([t.ties for t in trees]),
                roots=torch.cat([t.roots + o for t, o in zip(trees, offsets)]),
                depth=max(t.depth for t in trees),
                impurity=None if any(t.impurity is None for t in trees) else torch.cat([t.impurity for t in trees]),
                weight=None if any(t.weight is None for t in trees) else torch.cat([t.weight for t in trees]),
                missing_left=None if all(t.missing_left is None for t in trees) else torch.cat(
                    [torch.zeros_like(t.feature, dtype=torch.bool) if t.missing_left is None
                     else t.missing_left for t in trees]))


def _n_features(max_features, d: int) -> int | None:
    """Features drawn per split: ``None`` (all), ``"sqrt"``, an integer, or a fraction in (0, 1]."""
    if max_features is None:
        return None
    if max_features == "sqrt":
        return max(1, int(math.sqrt(d)))
    if isinstance(max_features, float):
        if not 0 < max_features <= 1:
            raise ValueError(f"max_features as a fraction must lie in (0, 1], got {max_features}")
        return max(1, int(max_features * d))
    return min(_checks.integer(max_features, "max_features", minimum=1), d)


def _fraction(value, name: str) -> float:
    value = _checks.real(value, name, positive=True)
    if value > 1:
        raise ValueError(f"{name} must lie in (0, 1], got {value}")
    return value


def _features(est, X, n_features: int | None = None) -> torch.Tensor:
    """``X`` checked by :func:`mlbook._checks.features`, rounded to float32 values; NaN (a missing
    value) passes only for estimators with ``_missing = True`` (second-order boosting)."""
    if getattr(est, "_missing", False):
        try:
            X = torch.as_tensor(X, dtype=torch.float64) if not isinstance(X, torch.Tensor) else X
        except (TypeError, ValueError, RuntimeError):
            return _as_float32_values(_checks.features(X, device=est.device_))   # raises its error
        nan = torch.isnan(X.to(torch.float64))
        X = _checks.features(torch.where(nan, 0.0, X.to(torch.float64)), n_features=n_features,
                             device=est.device_)
        X = torch.where(nan.to(X.device), math.nan, X)
    else:
        X = _checks.features(X, n_features=n_features, device=est.device_)
    return _as_float32_values(X)


def _check_X(est, X, attribute: str) -> torch.Tensor:
    _checks.fitted(est, attribute)
    return _features(est, X, est.n_features_in_)


# ------------------------------------------------------------------------ bagging, random forests

class _Forest(_TensorScoring, BaseEstimator):
    """Bootstrap aggregation of CART trees; ``max_features=None`` is plain bagging, eq. (ens-bag).

    Parameters are stored as given and checked by ``fit`` (scikit-learn's convention), so ``clone``,
    ``get_params``/``set_params``, ``GridSearchCV`` and ``cross_val_score`` work. ``random_state``
    seeds the bootstrap draws and the candidate features of every split.
    """

    forest_ = None

    def __init__(self, n_estimators: int = 100, *, max_features="sqrt", bootstrap: bool = True,
                 max_depth: int | None = None, min_samples_leaf: int = 1, splitter: str = "exact",
                 max_bins: int = 255, random_state: int = 0, device=None):
        self.n_estimators = n_estimators
        self.max_features = max_features
        self.bootstrap = bootstrap
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.splitter = splitter
        self.max_bins = max_bins
        self.random_state = random_state
        self.device = device

    def _validate(self, d: int) -> int | None:
        _checks.integer(self.n_estimators, "n_estimators", minimum=1)
        if not isinstance(self.bootstrap, bool):
            raise TypeError(f"bootstrap must be True or False, got {self.bootstrap!r}")
        if self.max_depth is not None:
            _checks.integer(self.max_depth, "max_depth", minimum=1)
        _checks.integer(self.min_samples_leaf, "min_samples_leaf", minimum=1)
        _checks.choice(self.splitter, "splitter", ("exact", "hist"))
        _checks.integer(self.max_bins, "max_bins", minimum=2)
        _checks.integer(self.random_state, "random_state", minimum=0)
        if self.max_features not in (None, "sqrt") and not isinstance(self.max_features, (int, float)):
            raise TypeError(f"max_features must be None, 'sqrt', an integer or a fraction, "
                            f"got {self.max_features!r}")
        return _n_features(self.max_features, d)

    def _prepare(self, X, y, classification: bool):
        self.device_ = get_device(self.device)
        X = _as_float32_values(_checks.features(X, device=self.device_))
        self.max_features_ = self._validate(X.shape[1])
        return X, _targets(y, len(X), X.device, classification=classification)

    def _fit(self, X, stats, criterion):
        n, T = len(X), self.n_estimators
        gen = torch.Generator().manual_seed(self.random_state)
        if self.bootstrap:
            rows = torch.randint(n, (T, n), generator=gen).to(X.device)      # (trees, n) drawn with replacement
        else:
            rows = torch.arange(n, device=X.device).expand(T, n)
        self.in_bag_ = torch.zeros(T, n, dtype=torch.bool, device=X.device).scatter_(1, rows, True)
        groups = torch.arange(T, device=X.device).repeat_interleave(n)
        flat = rows.reshape(-1)
        self.n_features_in_ = X.shape[1]
        exact = self.splitter == "exact"                  # exact: bins found once on the distinct rows
        self.forest_ = grow(X if exact else X[flat], stats[flat], criterion, groups=groups, n_groups=T,
                            max_depth=self.max_depth, min_samples_leaf=self.min_samples_leaf,
                            max_features=self.max_features_, max_bins=None if exact else self.max_bins,
                            generator=gen, sample_rows=flat if exact else None)
        self.forest_.train_leaf = None                  # a by-product of growing, not kept

    def _check_X(self, X):
        return _check_X(self, X, "forest_")

    @property
    def feature_importances_(self) -> torch.Tensor:
        """Impurity-based importances, eq. (ens-mdi), averaged over the trees."""
        if getattr(self, "forest_", None) is None:     # an AttributeError, so hasattr() is False
            raise AttributeError("feature_importances_ exists after fit(X, y)")
        return impurity_importance(self.forest_, self.n_features_in_)

    def tree_values(self, X) -> torch.Tensor:
        """Every tree's leaf value for every row, ``(n, trees, outputs)``."""
        X = self._check_X(X)
        return self.forest_.value[apply(self.forest_, X)]

    def _first(self, n_trees):
        """Slice of the first ``n_trees`` trees; ``None`` for all (0 trees would average to nan)."""
        if n_trees is None:
            return slice(None)
        n_trees = _checks.integer(n_trees, "n_trees", minimum=1)
        if n_trees > self.n_estimators:
            raise ValueError(f"n_trees must be <= n_estimators = {self.n_estimators}, got {n_trees}")
        return slice(n_trees)

    def _oob(self, X) -> tuple[torch.Tensor, torch.Tensor]:
        """Average over the trees whose bootstrap sample missed each row, eq. (ens-oob)."""
        vals = self.forest_.value[apply(self.forest_, X)]                 # (n, T, out)
        out_of_bag = (~self.in_bag_).T.to(vals.dtype)                     # (n, T)
        count = out_of_bag.sum(1)
        mean = (vals * out_of_bag[..., None]).sum(1) / count.clamp_min(1)[:, None]
        return mean, count > 0


class RandomForestClassifier(ClassifierMixin, _Forest):
    """Random forest (or bagging with ``max_features=None``) of Gini trees; ``oob_score_`` after ``fit``."""

    def fit(self, X, y) -> "RandomForestClassifier":
        X, y = self._prepare(X, y, classification=True)
        self.classes_, y_enc = torch.unique(y, return_inverse=True)
        crit = Gini(len(self.classes_))
        self._fit(X, crit.stats(y_enc, _weights(None, len(X), X.device)), crit)
        proba, has = self._oob(X)
        self.oob_decision_function_ = torch.where(has[:, None], proba, torch.nan)
        self.oob_score_ = float((proba.argmax(1) == y_enc)[has].double().mean()) if has.any() else math.nan
        return self

    def predict_proba(self, X, n_trees: int | None = None) -> torch.Tensor:
        """Mean of the trees' class proportions (the first ``n_trees`` trees if given)."""
        return self.tree_values(X)[:, self._first(n_trees)].mean(1)

    def predict(self, X, n_trees: int | None = None) -> torch.Tensor:
        proba = self.predict_proba(X, n_trees)
        return self.classes_[proba.argmax(1)]


class RandomForestRegressor(RegressorMixin, _Forest):
    """Random forest (or bagging with ``max_features=None``, the default) of least-squares trees."""

    def __init__(self, n_estimators: int = 100, *, max_features=None, bootstrap: bool = True,
                 max_depth: int | None = None, min_samples_leaf: int = 1, splitter: str = "exact",
                 max_bins: int = 255, random_state: int = 0, device=None):
        super().__init__(n_estimators, max_features=max_features, bootstrap=bootstrap,
                         max_depth=max_depth, min_samples_leaf=min_samples_leaf, splitter=splitter,
                         max_bins=max_bins, random_state=random_state, device=device)

    def fit(self, X, y) -> "RandomForestRegressor":
        X, y = self._prepare(X, y, classification=False)
        self._fit(X, SquaredError.stats(y, _weights(None, len(X), X.device)), SquaredError())
        pred, has = self._oob(X)
        self.oob_prediction_ = torch.where(has, pred[:, 0], torch.nan)
        return self

    def predict(self, X, n_trees: int | None = None) -> torch.Tensor:
        return self.tree_values(X)[:, self._first(n_trees), 0].mean(1)


def tree_correlation(pred: torch.Tensor) -> dict[str, float]:
    """Variance of one tree and correlation of two, from ``pred`` ``(R, B, n)``: the predictions of
    ``B`` randomised trees grown on each of ``R`` independent training sets, at ``n`` points.

    Given the training set ``D``, the trees differ only by their random choices ``Theta``. Per point,
    ``within = E_D Var_Theta(T | D)`` is the mean of the per-set sample variances, and
    ``cov = Var_D E_Theta(T | D)``, the covariance of two trees grown on the same set, is the
    sample variance of the per-set means minus ``within / B`` (the noise of a mean of ``B``). Then
    ``s^2 = within + cov`` and ``rho = cov / s^2`` are the two numbers of eq. (ens-bag-var),
    in which ``within = (1 - rho) s^2``. All are averaged over the points (``rho`` as the ratio
    of the averages, so that eq. (ens-bag-var) holds for the averaged variance).
    """
    pred = _checks.tensor(pred, "pred", ndim=3, floating=True)
    R, B, _ = pred.shape
    if R < 2 or B < 2:
        raise ValueError(f"pred needs at least 2 training sets and 2 trees each, got shape {tuple(pred.shape)}")
    within = pred.var(1).mean(0)                                  # (n,)
    cov = pred.mean(1).var(0) - within / B                        # (n,)
    s2 = float((within + cov).mean())
    return {"s2": s2, "rho": float(cov.mean()) / s2, "within": float(within.mean()),
            "cov": float(cov.mean())}


def mean_tree_correlation(contrib: torch.Tensor) -> float:
    """Mean Pearson correlation over all pairs of trees of their outputs ``contrib`` ``(n, T)`` at
    ``n`` points (one column per tree); trees constant on the points are left out."""
    contrib = _checks.tensor(contrib, "contrib", ndim=2, floating=True)
    keep = contrib.std(0) > 0
    if int(keep.sum()) < 2:
        raise ValueError("need at least two trees that are not constant on the points")
    C = torch.corrcoef(contrib[:, keep].T)
    T = C.shape[0]
    return float((C.sum() - C.diagonal().sum()) / (T * (T - 1)))


def averaged_variance(s2: float, rho: float, n_trees: int) -> float:
    """Variance of the mean of ``n_trees`` predictors of variance ``s2`` and correlation ``rho``,
    ``rho s^2 + (1 - rho) s^2 / B``, eq. (ens-bag-var)."""
    n_trees = _checks.integer(n_trees, "n_trees", minimum=1)
    return rho * s2 + (1 - rho) * s2 / n_trees


def forest_variance(pred: torch.Tensor, n_trees: int) -> float:
    """Measured variance, over the ``R`` training sets, of the mean of ``n_trees`` trees.

    ``pred`` is ``(R, T, n)`` as in :func:`tree_correlation`. Its ``T`` trees per set are cut into
    ``T // n_trees`` disjoint blocks, each a forest of ``n_trees`` trees; the sample variance over the
    sets of each block's prediction is averaged over the blocks and the ``n`` points.
    """
    pred = _checks.tensor(pred, "pred", ndim=3, floating=True)
    R, T, n = pred.shape
    n_trees = _checks.integer(n_trees, "n_trees", minimum=1)
    if n_trees > T or R < 2:
        raise ValueError(f"need n_trees <= {T} trees per set and at least 2 sets, got {n_trees}, {R}")
    k = T // n_trees
    blocks = pred[:, :k * n_trees].reshape(R, k, n_trees, n).mean(2)   # (R, blocks, n)
    return float(blocks.var(0).mean())


# ------------------------------------------------------------------------ AdaBoost

def adaboost_bound(errors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Training-error bounds after each round: ``prod 2 sqrt(eps (1 - eps))`` and ``exp(-2 sum gamma^2)``.

    Implements (ens-ada-bound) with the weighted errors ``eps_t`` of the rounds, ``gamma_t = 1/2 - eps_t``.
    The theorem behind it is for two classes and ``learning_rate=1`` (the loss-minimising alpha).
    """
    errors = torch.as_tensor(errors, dtype=torch.float64)
    product = torch.cumprod(2 * torch.sqrt(errors * (1 - errors)), 0)
    gamma = 0.5 - errors
    return product, torch.exp(-2 * torch.cumsum(gamma * gamma, 0))


def exponential_minimiser(p) -> torch.Tensor:
    """The score that minimises the expected exponential loss ``E[exp(-y F) | x]`` when
    ``P(y = 1 | x) = p``: half the log-odds, eq. (ensb-exp-min). ``p`` must lie in (0, 1)."""
    p = torch.as_tensor(p, dtype=torch.float64)
    if not bool(((p > 0) & (p < 1)).all()):
        raise ValueError("p must lie strictly between 0 and 1")
    return 0.5 * torch.log(p / (1 - p))


def margin_weight(margin, loss: str) -> torch.Tensor:
    """The weight ``-d loss / d z`` that a row with margin ``z = y F(x)`` gets in the next round:
    ``exp(-z)`` for the exponential loss, eq. (ensb-exp-weight), and ``2 / (1 + exp(2 z))`` for the
    binomial deviance ``log(1 + exp(-2 z))``, eq. (ensb-dev-weight)."""
    _checks.choice(loss, "loss", ("exponential", "deviance"))
    z = torch.as_tensor(margin, dtype=torch.float64)
    return torch.exp(-z) if loss == "exponential" else 2 * torch.sigmoid(-2 * z)


def flip_labels(y: torch.Tensor, fraction: float, generator: torch.Generator | None = None):
    """Flip a random ``fraction`` of binary labels (``0 <-> 1``, exactly ``round(fraction n)`` rows).

    Returns ``(noisy labels, mask of the flipped rows)``; draws on the CPU with ``generator``."""
    y = _checks.tensor(y, "y", ndim=1)
    fraction = _checks.real(fraction, "fraction", nonnegative=True)
    if fraction > 1:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("flip_labels needs labels in {0, 1}")
    k = round(fraction * len(y))
    flipped = torch.zeros(len(y), dtype=torch.bool)
    flipped[torch.randperm(len(y), generator=generator)[:k]] = True
    flipped = flipped.to(y.device)
    return torch.where(flipped, 1 - y, y), flipped


def sphere_data(n: int, d: int = 10, generator: torch.Generator | None = None):
    """ESL's nested-spheres problem (their eq. 10.2): ``x ~ N(0, I_d)``, ``y = 1`` iff ``sum_j x_j^2``
    exceeds the median of the chi-squared distribution with ``d`` degrees of freedom. CPU float64."""
    from scipy.stats import chi2
    n = _checks.integer(n, "n", minimum=1)
    d = _checks.integer(d, "d", minimum=1)
    X = torch.randn(n, d, generator=generator, dtype=torch.float64)
    return X, ((X * X).sum(1) > chi2.median(d)).long()


class AdaBoostClassifier(ClassifierMixin, _TensorScoring, BaseEstimator):
    """AdaBoost with the multi-class SAMME learner weight; for two classes it is discrete AdaBoost.

    Round ``t`` fits a depth-``max_depth`` Gini tree to the weighted sample, computes its weighted
    error ``eps_t``, the learner weight ``alpha_t = lr (log((1 - eps_t)/eps_t) + log(K - 1))``,
    eq. (ens-ada-alpha), and multiplies the weights of misclassified rows by ``exp(alpha_t)``,
    eq. (ens-ada-reweight). After ``fit``: ``errors_``, ``alphas_``, ``sample_weights_`` (the weights
    each round saw, ``(rounds, n)``).

    ``resample=True`` is AdaBoost by resampling, for weak learners that take no weights: each round
    grows its tree, unweighted, on ``n`` rows drawn with replacement with probabilities ``w``,
    eq. (ensb-resample), and computes the weighted error on all rows; a tree no better than chance
    on the weighted rows is discarded and the sample drawn again (up to 10 draws before boosting
    stops). ``random_state`` seeds the draws.
    """

    ensemble_ = None
    _DRAWS = 10

    def __init__(self, n_estimators: int = 50, *, learning_rate: float = 1.0, max_depth: int = 1,
                 resample: bool = False, random_state: int = 0, device=None):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.resample = resample
        self.random_state = random_state
        self.device = device

    def fit(self, X, y) -> "AdaBoostClassifier":
        _checks.integer(self.n_estimators, "n_estimators", minimum=1)
        _checks.real(self.learning_rate, "learning_rate", positive=True)
        _checks.integer(self.max_depth, "max_depth", minimum=1)
        _checks.integer(self.random_state, "random_state", minimum=0)
        if not isinstance(self.resample, bool):
            raise TypeError(f"resample must be True or False, got {self.resample!r}")
        gen = torch.Generator().manual_seed(self.random_state)
        self.device_ = get_device(self.device)
        X = _as_float32_values(_checks.features(X, device=self.device_))
        y = _targets(y, len(X), X.device, classification=True)
        self.classes_, y_enc = torch.unique(y, return_inverse=True)
        K = len(self.classes_)
        if K < 2:
            raise ValueError("AdaBoost needs at least two classes in y")
        self.n_features_in_ = X.shape[1]
        crit = Gini(K)
        w = torch.full((len(X),), 1.0 / len(X), dtype=torch.float64, device=X.device)
        trees, errors, alphas, weights = [], [], [], []
        for _ in range(self.n_estimators):
            for _draw in range(self._DRAWS if self.resample else 1):
                if self.resample:            # a sample drawn by the weights, eq. (ensb-resample)
                    rows = _draw_by_weight(w, gen)
                    tree = grow(X[rows], crit.stats(y_enc[rows], torch.ones_like(w)), crit,
                                max_depth=self.max_depth)
                else:
                    tree = grow(X, crit.stats(y_enc, w), crit, max_depth=self.max_depth)
                miss = tree.value[apply(tree, X)[:, 0]].argmax(1) != y_enc
                eps = float((w * miss).sum() / w.sum())
                if eps < 1 - 1 / K:          # useful on the weighted sample; else draw again
                    break
            if eps >= 1 - 1 / K:            # no better than chance: the weights cannot move
                if not trees:
                    raise RuntimeError("the first weak learner is no better than chance; boosting cannot start")
                break
            weights.append(w.clone())
            trees.append(tree)
            errors.append(eps)
            if eps <= 0:                     # a perfect learner: weight 1 and stop, as scikit-learn does
                alphas.append(1.0)           # (the theory's alpha is infinite; this one need not decide alone)
                break
            alpha = self.learning_rate * (math.log((1 - eps) / eps) + math.log(K - 1))
            alphas.append(alpha)
            w = w * torch.exp(alpha * miss.to(w.dtype))
            w = w / w.sum()
        self.ensemble_ = stack(trees)
        self.errors_ = torch.tensor(errors, dtype=torch.float64)
        self.alphas_ = torch.tensor(alphas, dtype=torch.float64)
        self.sample_weights_ = torch.stack(weights)
        return self

    def staged_decision_function(self, X) -> torch.Tensor:
        """Weighted class votes after every round, ``(rounds, n, K)``, eq. (ens-ada-final)."""
        X = _check_X(self, X, "ensemble_")
        votes = self.ensemble_.value[apply(self.ensemble_, X)].argmax(-1)     # (n, rounds)
        onehot = torch.nn.functional.one_hot(votes, len(self.classes_)).to(torch.float64)
        return (onehot * self.alphas_.to(X.device)[None, :, None]).cumsum(1).transpose(0, 1)

    def staged_predict(self, X) -> torch.Tensor:
        """Predicted labels after every round, ``(rounds, n)``."""
        votes = self.staged_decision_function(X)
        return self.classes_[votes.argmax(-1)]

    def predict(self, X) -> torch.Tensor:
        return self.staged_predict(X)[-1]                   # staged_predict checks fitted first


def _draw_by_weight(w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``len(w)`` row indices drawn with replacement, row ``i`` with probability ``w_i / sum w``."""
    return torch.multinomial(w.cpu(), len(w), replacement=True, generator=gen).to(w.device)


def weighted_median(pred: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per row of ``pred`` ``(n, T)``, the weighted median of its ``T`` values with learner weights
    ``weights`` ``(T,)``: the smallest value whose cumulative weight reaches half the total,
    eq. (ensb-r2-median); AdaBoost.R2's prediction."""
    order = pred.argsort(1)                                                  # (n, T)
    cum = weights[order].cumsum(1)
    first = (cum >= 0.5 * cum[:, -1:]).long().argmax(1)                      # first index reaching half
    return pred.gather(1, order.gather(1, first[:, None]))[:, 0]


class AdaBoostRegressor(RegressorMixin, _TensorScoring, BaseEstimator):
    """AdaBoost.R2 (Drucker 1997), the algorithm of scikit-learn's ``AdaBoostRegressor``.

    Round ``t`` grows a depth-``max_depth`` regression tree on ``n`` rows drawn with replacement by the
    weights ``w``, eq. (ensb-resample); scores every row's error ``e_i = |h_t(x_i) - y_i| / max_i``,
    passed through ``loss`` (``"linear"``: ``e``, ``"square"``: ``e^2``, ``"exponential"``:
    ``1 - exp(-e)``), eq. (ensb-r2-loss); with the weighted mean ``L_t`` of these and
    ``beta_t = L_t / (1 - L_t)`` gives the tree the weight ``lr log(1 / beta_t)`` and multiplies
    ``w_i`` by ``beta_t^(lr (1 - e_i))``, eq. (ensb-r2-update). It stops early when ``L_t >= 1/2``
    (dropping that tree unless it is the first) or ``L_t = 0``. The prediction is the weighted median
    of the trees', eq. (ensb-r2-median). After ``fit``: ``alphas_``, ``losses_``.
    """

    ensemble_ = None

    def __init__(self, n_estimators: int = 50, *, learning_rate: float = 1.0, loss: str = "linear",
                 max_depth: int = 3, random_state: int = 0, device=None):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.loss = loss
        self.max_depth = max_depth
        self.random_state = random_state
        self.device = device

    def fit(self, X, y) -> "AdaBoostRegressor":
        _checks.integer(self.n_estimators, "n_estimators", minimum=1)
        lr = _checks.real(self.learning_rate, "learning_rate", positive=True)
        loss = _checks.choice(self.loss, "loss", ("linear", "square", "exponential"))
        _checks.integer(self.max_depth, "max_depth", minimum=1)
        _checks.integer(self.random_state, "random_state", minimum=0)
        self.device_ = get_device(self.device)
        X = _features(self, X)
        y = _targets(y, len(X), X.device, classification=False)
        self.n_features_in_ = X.shape[1]
        gen = torch.Generator().manual_seed(self.random_state)
        w = torch.full((len(X),), 1.0 / len(X), dtype=torch.float64, device=X.device)
        ones = torch.ones_like(w)
        trees, alphas, losses = [], [], []
        for t in range(self.n_estimators):
            rows = _draw_by_weight(w, gen)
            tree = grow(X[rows], SquaredError.stats(y[rows], ones), SquaredError(), max_depth=self.max_depth)
            err = (tree.value[apply(tree, X)[:, 0], 0] - y).abs()
            if err.max() > 0:
                err = err / err.max()
            if loss == "square":
                err = err * err
            elif loss == "exponential":
                err = 1 - torch.exp(-err)
            L = float((w * err).sum())                                     # eq. (ensb-r2-loss)
            if L <= 0:                                 # a perfect tree: weight 1 and stop
                trees.append(tree), alphas.append(1.0), losses.append(L)
                break
            if L >= 0.5:                               # no better than the threshold: stop
                if not trees:                          # kept alone: its weight does not matter
                    trees.append(tree), alphas.append(1.0), losses.append(L)
                break
            beta = L / (1 - L)
            trees.append(tree), alphas.append(lr * math.log(1 / beta)), losses.append(L)
            if t < self.n_estimators - 1:              # eq. (ensb-r2-update)
                w = w * beta ** ((1 - err) * lr)
                w = w / w.sum()
        self.ensemble_ = stack(trees)
        self.alphas_ = torch.tensor(alphas, dtype=torch.float64)
        self.losses_ = torch.tensor(losses, dtype=torch.float64)
        return self

    def staged_predict(self, X) -> torch.Tensor:
        """The weighted median of the first ``t`` trees, for every ``t``: ``(rounds, n)``."""
        X = _check_X(self, X, "ensemble_")
        pred = self.ensemble_.value[apply(self.ensemble_, X), 0]             # (n, rounds)
        a = self.alphas_.to(X.device)
        return torch.stack([weighted_median(pred[:, :t], a[:t]) for t in range(1, len(a) + 1)])

    def predict(self, X) -> torch.Tensor:
        X = _check_X(self, X, "ensemble_")
        pred = self.ensemble_.value[apply(self.ensemble_, X), 0]
        return weighted_median(pred, self.alphas_.to(X.device))


# ------------------------------------------------------------------------ gradient boosting

class _Boosting(_TensorScoring, BaseEstimator):
    """Shared parameters and the round loop of gradient and second-order boosting.

    ``subsample < 1`` is stochastic gradient boosting: each round's tree (and its leaf values) is
    fitted on a fraction of the rows drawn without replacement, eq. (ens-sgb); the scores of all rows
    are updated. ``random_state`` seeds those draws. Parameters are stored as given; ``fit`` checks.
    """

    ensemble_ = None
    _binned = None            # (edges, codes) of X while fitting, when every round uses all rows

    def __init__(self, n_estimators: int = 100, *, learning_rate: float = 0.1, max_depth: int = 3,
                 min_samples_leaf: int = 1, subsample: float = 1.0, splitter: str = "exact",
                 max_bins: int = 255, random_state: int = 0, device=None):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.subsample = subsample
        self.splitter = splitter
        self.max_bins = max_bins
        self.random_state = random_state
        self.device = device

    def _validate(self) -> None:
        _checks.integer(self.n_estimators, "n_estimators", minimum=1)
        _checks.real(self.learning_rate, "learning_rate", positive=True)
        _checks.integer(self.max_depth, "max_depth", minimum=1)
        _checks.integer(self.min_samples_leaf, "min_samples_leaf", minimum=1)
        _fraction(self.subsample, "subsample")
        _checks.choice(self.splitter, "splitter", ("exact", "hist"))
        _checks.integer(self.max_bins, "max_bins", minimum=2)
        _checks.integer(self.random_state, "random_state", minimum=0)

    def _grow(self, X, stats, criterion, bin_weights=None) -> Tree:
        return grow(X, stats, criterion, max_depth=self.max_depth, min_samples_leaf=self.min_samples_leaf,
                    max_bins=None if self.splitter == "exact" else self.max_bins,
                    bin_weights=bin_weights, binned=None if bin_weights is not None else self._binned)

    def _prepare(self, X, y, classification: bool, binary: bool = True):
        self._validate()
        self.device_ = get_device(self.device)
        X = _features(self, X)
        y = _targets(y, len(X), X.device, classification=classification)
        self.n_features_in_ = X.shape[1]
        if classification:
            self.classes_, y_enc = torch.unique(y, return_inverse=True)
            if binary and len(self.classes_) != 2:
                raise ValueError(f"the logistic loss here is binary: y must hold exactly 2 classes, "
                                 f"got {len(self.classes_)}")
            if len(self.classes_) < 2:
                raise ValueError("y must hold at least 2 classes")
            y = y_enc.to(torch.float64) if binary else y_enc
        return X, y

    def _rows(self, n: int, gen: torch.Generator, device) -> torch.Tensor | slice:
        """Rows of this round: all (a slice, so that indexing with it copies nothing), or
        ``floor(subsample n)`` drawn without replacement, sorted."""
        if self.subsample >= 1:
            return slice(None)
        k = max(1, int(self.subsample * n))
        return torch.randperm(n, generator=gen)[:k].sort().values.to(device)

    def _boost(self, X, init, step):
        """Run the rounds; ``step(F, rows) -> [Tree]`` fits one tree per output column of the scores
        ``F`` ``(n, K)`` on the rows ``rows``, leaf values final. Trees are stacked round by round."""
        F = init.expand(len(X), -1).clone()
        gen = torch.Generator().manual_seed(self.random_state)
        self._binned = None                           # every round on all rows: bin X once
        if self.subsample >= 1:
            edges = bin_edges(X, None if self.splitter == "exact" else self.max_bins)
            self._binned = edges, _codes(X, edges)
        trees = []
        for _ in range(self.n_estimators):
            rows = self._rows(len(X), gen, X.device)
            new = step(F, rows)
            for k, tree in enumerate(new):              # shrinkage, eq. (ens-gb-update)
                # a tree grown on all rows knows each row's leaf
                leaf = tree.train_leaf if isinstance(rows, slice) else apply(tree, X)[:, 0]
                F[:, k] += self.learning_rate * tree.value[leaf, 0]
                tree.train_leaf = None
            trees += new
        self._binned = None
        self.init_ = init
        self.n_outputs_ = F.shape[1]
        self.ensemble_ = stack(trees)

    def staged_raw(self, X) -> torch.Tensor:
        """Raw scores ``F_m(x)`` after every round: ``(rounds, n)``, or ``(rounds, n, K)`` for K > 2 classes."""
        X = _check_X(self, X, "ensemble_")
        leaf = self.ensemble_.value[apply(self.ensemble_, X), 0]                  # (n, rounds * K)
        K = self.n_outputs_
        raw = self.init_ + self.learning_rate * leaf.view(len(X), -1, K).cumsum(1)   # (n, rounds, K)
        raw = raw.transpose(0, 1)
        return raw[..., 0] if K == 1 else raw

    def _proba(self, raw):
        if self.n_outputs_ > 1:                                # K > 2 classes: softmax of K scores
            return torch.softmax(raw, -1)
        p = torch.sigmoid(2 * raw if getattr(self, "loss_", None) == "exponential" else raw)
        return torch.stack([1 - p, p], -1)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def weighted_quantile(values: torch.Tensor, q: float, groups: torch.Tensor | None = None,
                      n_groups: int = 1) -> torch.Tensor:
    """The ``q``-quantile of ``values`` within each group (unit weights): the smallest value whose
    share of its group's rows at or below it reaches ``q`` (the inverted CDF, scikit-learn's
    ``_weighted_percentile``; for ``q = 1/2`` and an even count, the lower of the two middle values).

    Returns ``(n_groups,)``, 0 for an empty group. The leaf rule of the absolute and Huber losses,
    eqs. (ensb-l1-leaf) and (ensb-huber-leaf), and the Huber threshold, eq. (ensb-huber-delta).
    """
    q = _checks.real(q, "q")
    if not 0 < q <= 1:
        raise ValueError(f"q must lie in (0, 1], got {q}")
    if groups is None:
        groups = torch.zeros(len(values), dtype=torch.long, device=values.device)
    order = torch.argsort(values, stable=True)
    order = order[torch.argsort(groups[order], stable=True)]              # by group, then value
    counts = torch.bincount(groups, minlength=n_groups)
    start = torch.cumsum(counts, 0) - counts
    k = torch.ceil((100.0 * q) / 100.0 * counts.to(torch.float64)).long().clamp_min(1) - 1
    at = (start + k).clamp_max(max(len(values) - 1, 0))
    out = values[order][at] if len(values) else torch.zeros(n_groups, dtype=values.dtype)
    return torch.where(counts > 0, out, torch.zeros_like(out))


def _leaf_values(tree: Tree, X, rule) -> Tree:
    """Set every leaf to ``rule(leaf_ids, n_nodes)`` (a value per node) computed on its rows."""
    leaf = apply(tree, X)[:, 0]
    tree.value = rule(leaf, len(tree.feature))[:, None].to(torch.float64)
    return tree


def huber_leaf(r: torch.Tensor, delta: float, groups: torch.Tensor | None = None,
               n_groups: int = 1) -> torch.Tensor:
    """Friedman's one-step Huber leaf value, eq. (ensb-huber-leaf): the leaf median ``m`` of the
    residuals ``r`` plus the mean of ``sign(r - m) min(delta, |r - m|)`` over the leaf's rows."""
    if groups is None:
        groups = torch.zeros(len(r), dtype=torch.long, device=r.device)
    med = weighted_quantile(r, 0.5, groups, n_groups)
    d = r - med[groups]
    clipped = torch.sign(d) * torch.clamp(d.abs(), max=delta)
    total = torch.zeros(n_groups, dtype=r.dtype, device=r.device).index_add_(0, groups, clipped)
    counts = torch.bincount(groups, minlength=n_groups).clamp_min(1)
    return med + total / counts


class GradientBoostingRegressor(RegressorMixin, _Boosting):
    """Gradient boosting for regression (Friedman's TreeBoost) with three losses.

    ``loss="squared_error"``: each tree fits the residuals ``y - F``, eq. (ens-gb-residual).
    ``loss="absolute_error"``: the tree fits their signs; each leaf is then set to the median of the
    residuals of its rows, eq. (ensb-l1-leaf). ``loss="huber"``: each round the threshold ``delta`` is
    the ``alpha``-quantile of ``|y - F|``, eq. (ensb-huber-delta); the tree fits the clipped residuals
    and each leaf gets Friedman's one-step value, eq. (ensb-huber-leaf). The robust losses start from
    the median of ``y``, squared error from the mean. scikit-learn's names and its default ``alpha``.
    """

    def __init__(self, n_estimators: int = 100, *, loss: str = "squared_error", alpha: float = 0.9,
                 learning_rate: float = 0.1, max_depth: int = 3, min_samples_leaf: int = 1,
                 subsample: float = 1.0, splitter: str = "exact", max_bins: int = 255,
                 random_state: int = 0, device=None):
        super().__init__(n_estimators, learning_rate=learning_rate, max_depth=max_depth,
                         min_samples_leaf=min_samples_leaf, subsample=subsample, splitter=splitter,
                         max_bins=max_bins, random_state=random_state, device=device)
        self.loss = loss
        self.alpha = alpha

    def fit(self, X, y) -> "GradientBoostingRegressor":
        loss = _checks.choice(self.loss, "loss", ("squared_error", "absolute_error", "huber"))
        alpha = _checks.real(self.alpha, "alpha")
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
        X, y = self._prepare(X, y, classification=False)
        w = torch.ones_like(y)
        self.deltas_ = []

        def step(F, rows):
            r = y[rows] - F[rows, 0]
            if loss == "squared_error":
                return [self._grow(X[rows], SquaredError.stats(r, w[rows]), SquaredError())]
            if loss == "absolute_error":
                tree = self._grow(X[rows], SquaredError.stats(torch.sign(r), w[rows]), SquaredError())
                return [_leaf_values(tree, X[rows], lambda g, m: weighted_quantile(r, 0.5, g, m))]
            delta = float(weighted_quantile(r.abs(), alpha)[0])               # eq. (ensb-huber-delta)
            self.deltas_.append(delta)
            target = torch.where(r.abs() <= delta, r, delta * torch.sign(r))
            tree = self._grow(X[rows], SquaredError.stats(target, w[rows]), SquaredError())
            return [_leaf_values(tree, X[rows], lambda g, m: huber_leaf(r, delta, g, m))]

        start = float(y.mean()) if loss == "squared_error" else float(torch.quantile(y, 0.5))
        self._boost(X, torch.tensor([start], dtype=torch.float64, device=X.device), step)
        return self

    def predict(self, X) -> torch.Tensor:
        return self.staged_raw(X)[-1]


def _newton_leaves(tree: Tree, X, num, den, scale: float = 1.0) -> Tree:
    """Set every leaf to ``scale * sum num / sum den`` over its rows (0 where the sum of den is ~0)."""
    leaf = apply(tree, X)[:, 0]
    top = torch.zeros(len(tree.feature), dtype=torch.float64, device=X.device).index_add_(0, leaf, num)
    bottom = torch.zeros_like(top).index_add_(0, leaf, den)
    tree.value = scale * torch.where(bottom > 1e-150, top / bottom.clamp_min(1e-150), 0.0)[:, None]
    return tree


class GradientBoostingClassifier(ClassifierMixin, _Boosting):
    """Logistic gradient boosting (Friedman's TreeBoost), binary or multiclass.

    Two classes: each tree is a least-squares fit to the negative gradient ``y - p``; its leaves are
    then set to one Newton step, ``sum (y - p) / sum p (1 - p)`` over the leaf's rows,
    eq. (ens-gb-logistic-leaf), as scikit-learn's ``GradientBoostingClassifier`` does.
    ``K > 2`` classes: the softmax (multinomial) loss with one score per class; each round fits one
    tree per class to ``y_k - p_k`` and sets its leaves to ``(K-1)/K sum (y_k - p_k) / sum p_k (1-p_k)``,
    eq. (ens-gb-softmax-leaf).
    ``loss="exponential"`` (two classes): AdaBoost's loss ``exp(-y F)`` with ``y`` in {-1, +1}, fitted
    by gradient boosting; it starts from half the log-odds, eq. (ensb-exp-min), each tree fits
    ``y exp(-y F)`` and its leaves take one Newton step, ``sum y e^{-yF} / sum e^{-yF}``; the class
    probability is ``sigmoid(2F)``. scikit-learn's loss of the same name.
    """

    def __init__(self, n_estimators: int = 100, *, loss: str = "log_loss", learning_rate: float = 0.1,
                 max_depth: int = 3, min_samples_leaf: int = 1, subsample: float = 1.0,
                 splitter: str = "exact", max_bins: int = 255, random_state: int = 0, device=None):
        super().__init__(n_estimators, learning_rate=learning_rate, max_depth=max_depth,
                         min_samples_leaf=min_samples_leaf, subsample=subsample, splitter=splitter,
                         max_bins=max_bins, random_state=random_state, device=device)
        self.loss = loss

    def fit(self, X, y) -> "GradientBoostingClassifier":
        loss = self.loss_ = _checks.choice(self.loss, "loss", ("log_loss", "exponential"))
        X, y = self._prepare(X, y, classification=True, binary=False)
        K = len(self.classes_)
        if loss == "exponential":
            if K != 2:
                raise ValueError(f"the exponential loss is binary: y must hold exactly 2 classes, got {K}")
            s = 2 * y.to(torch.float64) - 1                                     # labels in {-1, +1}
            w = torch.ones_like(s)

            def step(F, rows):
                e = torch.exp(-s[rows] * F[rows, 0])          # AdaBoost's weights, eq. (ensb-exp-weight)
                tree = self._grow(X[rows], SquaredError.stats(s[rows] * e, w[rows]), SquaredError())
                return [_newton_leaves(tree, X[rows], s[rows] * e, e)]

            p = float(y.to(torch.float64).mean())            # the population minimiser, eq. (ensb-exp-min)
            self._boost(X, torch.tensor([0.5 * _logit(p)], dtype=torch.float64, device=X.device), step)
            return self
        if K == 2:
            yf = y.to(torch.float64)
            w = torch.ones_like(yf)

            def step(F, rows):
                p = torch.sigmoid(F[rows, 0])
                r = yf[rows] - p
                tree = self._grow(X[rows], SquaredError.stats(r, w[rows]), SquaredError())
                return [_newton_leaves(tree, X[rows], r, p * (1 - p))]

            self._boost(X, torch.tensor([_logit(float(yf.mean()))], dtype=torch.float64, device=X.device), step)
            return self
        Y = torch.nn.functional.one_hot(y, K).to(torch.float64)                   # (n, K)
        w = torch.ones(len(X), dtype=torch.float64, device=X.device)

        def step(F, rows):
            P = torch.softmax(F[rows], 1)
            out = []
            for k in range(K):                        # all K trees see the same scores F
                r = Y[rows, k] - P[:, k]
                tree = self._grow(X[rows], SquaredError.stats(r, w[rows]), SquaredError())
                out.append(_newton_leaves(tree, X[rows], r, P[:, k] * (1 - P[:, k]), (K - 1) / K))
            return out

        prior = Y.mean(0).clamp_min(1e-300).log()
        self._boost(X, prior - prior.mean(), step)
        return self

    def staged_predict_proba(self, X) -> torch.Tensor:
        return self._proba(self.staged_raw(X))

    def predict_proba(self, X) -> torch.Tensor:
        return self._proba(self.staged_raw(X)[-1])

    def predict(self, X) -> torch.Tensor:
        proba = self.predict_proba(X)                            # checks fitted first
        return self.classes_[proba.argmax(-1)]


def newton_gain(g: torch.Tensor, h: torch.Tensor, left: torch.Tensor, lam: float, gamma: float) -> float:
    """Gain of sending the rows where ``left`` is true to the left child, written out: eq. (ens-xgb-gain)."""
    GL, HL = float(g[left].sum()), float(h[left].sum())
    GR, HR = float(g[~left].sum()), float(h[~left].sum())
    return 0.5 * (GL**2 / (HL + lam) + GR**2 / (HR + lam) - (GL + GR)**2 / (HL + HR + lam)) - gamma


class _NewtonBoosting(_Boosting):
    """Second-order boosting with L2 leaf penalty ``reg_lambda`` and split penalty ``gamma``
    (XGBoost's objective, eq. ens-xgb-gain).

    With ``splitter="hist"``, ``sketch="uniform"`` cuts every feature once, at plain quantiles;
    ``sketch="hessian"`` cuts it anew for every tree at quantiles weighted by the current Hessians
    ``k_i``, eq. (ens-xgb-sketch), XGBoost's weighted quantile sketch (computed exactly).

    ``X`` may hold missing values (NaN), in ``fit`` and ``predict``: every split learns a default
    direction for them, eq. (ens-xgb-missing) (see :func:`mlbook.trees.grow`).

    Column subsampling, XGBoost's: ``colsample_bytree`` draws for every tree a fraction of the
    features (without replacement) that its splits may use; ``colsample_bynode`` then draws, at every
    node, a fraction of the tree's features to search, eq. (ensb-colsample). Both default to 1 (all).
    ``random_state`` seeds the draws; ``columns_`` keeps each tree's features.
    """

    _missing = True

    def __init__(self, n_estimators: int = 100, *, learning_rate: float = 0.1, max_depth: int = 3,
                 min_samples_leaf: int = 1, subsample: float = 1.0, splitter: str = "exact",
                 max_bins: int = 255, sketch: str = "uniform", reg_lambda: float = 1.0,
                 gamma: float = 0.0, colsample_bytree: float = 1.0, colsample_bynode: float = 1.0,
                 random_state: int = 0, device=None):
        super().__init__(n_estimators, learning_rate=learning_rate, max_depth=max_depth,
                         min_samples_leaf=min_samples_leaf, subsample=subsample, splitter=splitter,
                         max_bins=max_bins, random_state=random_state, device=device)
        self.sketch = sketch
        self.reg_lambda = reg_lambda
        self.gamma = gamma
        self.colsample_bytree = colsample_bytree
        self.colsample_bynode = colsample_bynode

    def _gradients(self, y, F):
        raise NotImplementedError

    def _fit_newton(self, X, y, init):
        self.criterion_ = Newton(_checks.real(self.reg_lambda, "reg_lambda", nonnegative=True),
                                 _checks.real(self.gamma, "gamma", nonnegative=True))
        weighted = _checks.choice(self.sketch, "sketch", ("uniform", "hessian")) == "hessian"
        by_tree = _fraction(self.colsample_bytree, "colsample_bytree")
        by_node = _fraction(self.colsample_bynode, "colsample_bynode")
        d = X.shape[1]
        gen = torch.Generator().manual_seed(self.random_state + 1)        # the column draws
        self.columns_ = []

        def step(F, rows):
            g, h = self._gradients(y[rows], F[rows, 0])                       # eq. (ens-xgb-taylor)
            if by_tree >= 1 and by_node >= 1:
                return [self._grow(X[rows], Newton.stats(g, h), self.criterion_,
                                   bin_weights=h if weighted else None)]
            cols = torch.arange(d)                    # colsample_bytree: this tree's columns
            if by_tree < 1:
                cols = torch.randperm(d, generator=gen)[:max(1, int(by_tree * d))].sort().values
            per_node = max(1, int(by_node * len(cols))) if by_node < 1 else None
            cols = cols.to(X.device)
            self.columns_.append(cols)
            binned = None if self._binned is None or weighted else (self._binned[0][cols],
                                                        self._binned[1][:, cols].contiguous())
            tree = grow(X[rows][:, cols], Newton.stats(g, h), self.criterion_, max_depth=self.max_depth,
                        min_samples_leaf=self.min_samples_leaf, max_features=per_node, generator=gen,
                        max_bins=None if self.splitter == "exact" else self.max_bins,
                        bin_weights=h if weighted else None, binned=binned)
            tree.feature = torch.where(tree.feature >= 0, cols[tree.feature.clamp_min(0)], tree.feature)
            return [tree]

        self._boost(X, torch.tensor([init], dtype=torch.float64, device=X.device), step)


class NewtonBoostingRegressor(RegressorMixin, _NewtonBoosting):
    """Second-order boosting of the squared loss: ``g = F - y``, ``h = 1``."""

    def _gradients(self, y, F):
        return F - y, torch.ones_like(y)

    def fit(self, X, y) -> "NewtonBoostingRegressor":
        X, y = self._prepare(X, y, classification=False)
        self._fit_newton(X, y, float(y.mean()))
        return self

    def predict(self, X) -> torch.Tensor:
        return self.staged_raw(X)[-1]


class NewtonBoostingClassifier(ClassifierMixin, _NewtonBoosting):
    """Second-order boosting of the binary logistic loss: ``g = p - y``, ``h = p (1 - p)``."""

    def _gradients(self, y, F):
        p = torch.sigmoid(F)
        return p - y, p * (1 - p)

    def fit(self, X, y) -> "NewtonBoostingClassifier":
        X, y = self._prepare(X, y, classification=True)
        self._fit_newton(X, y, _logit(float(y.mean())))
        return self

    def predict_proba(self, X) -> torch.Tensor:
        return self._proba(self.staged_raw(X)[-1])

    def predict(self, X) -> torch.Tensor:
        raw = self.staged_raw(X)[-1]
        return self.classes_[(raw > 0).long()]


# ------------------------------------------------------------------------ partial dependence

def partial_dependence(est, X, feature: int, grid) -> torch.Tensor:
    """Partial dependence of a fitted model on one feature, eq. (ensb-pd): for each value ``v`` of
    ``grid``, the mean over the rows of ``X`` of the model's response with feature ``feature`` set to
    ``v`` (the "brute" method of ``sklearn.inspection.partial_dependence``).

    The response is ``predict_proba(X)[:, 1]`` for a binary classifier and ``predict(X)`` otherwise.
    ``X`` is passed to the model as given (a tensor or an array). Returns ``(len(grid),)`` float64.
    """
    is_tensor = isinstance(X, torch.Tensor)
    if not is_tensor:
        X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or len(X) == 0:
        raise ValueError(f"X must be a non-empty 2-D table, got shape {tuple(X.shape)}")
    feature = _checks.integer(feature, "feature", minimum=0)
    if feature >= X.shape[1]:
        raise ValueError(f"feature must be below the number of columns {X.shape[1]}, got {feature}")
    grid = torch.as_tensor(np.asarray(_to_numpy(grid), dtype=np.float64))
    if grid.ndim != 1 or len(grid) == 0:
        raise ValueError("grid must be a non-empty 1-D sequence of values")
    classifier = is_classifier(est) and hasattr(est, "predict_proba")
    out = []
    for v in grid.tolist():
        Xv = X.clone() if is_tensor else X.copy()
        Xv[:, feature] = v
        resp = est.predict_proba(Xv)[:, 1] if classifier else est.predict(Xv)
        out.append(float(np.mean(_to_numpy(resp), dtype=np.float64)))
    return torch.tensor(out, dtype=torch.float64)


# ------------------------------------------------------------------------ stacking

def _folds(cv, n: int, y):
    """``(fit rows, held-out rows)`` pairs: ``cv`` an integer (contiguous folds, like scikit-learn's
    ``KFold`` without shuffling: the first ``n % k`` folds one row longer) or a scikit-learn splitter."""
    if hasattr(cv, "split"):
        return [(np.asarray(a), np.asarray(b)) for a, b in cv.split(np.zeros((n, 1)), y)]
    k = _checks.integer(cv, "cv", minimum=2)
    if k > n:
        raise ValueError(f"cv = {k} folds needs at least {k} rows, got {n}")
    sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
    bounds = np.cumsum([0] + sizes)
    rows = np.arange(n)
    return [(np.concatenate([rows[:lo], rows[hi:]]), rows[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]


class StackingClassifier(ClassifierMixin, _TensorScoring, BaseEstimator):
    """Stacked generalisation, eq. (ens-stack): a final classifier trained on the base classifiers'
    out-of-fold class probabilities.

    For every fold of ``cv``, each base estimator (a clone) is fitted on the other folds and predicts
    class probabilities for the held-out rows; those out-of-fold columns (the first class dropped for
    two classes, as scikit-learn does) are the final estimator's features. The base estimators are
    then refitted on all rows for prediction. ``final_estimator=None`` is scikit-learn's
    ``LogisticRegression()``. Works with any estimators that have ``predict_proba``.
    """

    def __init__(self, estimators, final_estimator=None, cv=5):
        self.estimators = estimators
        self.final_estimator = final_estimator
        self.cv = cv

    def _features(self, probas: list) -> np.ndarray:
        cols = [p[:, 1:] if p.shape[1] == 2 else p for p in probas]
        return np.concatenate(cols, 1)

    def fit(self, X, y) -> "StackingClassifier":
        from sklearn.base import clone
        from sklearn.linear_model import LogisticRegression
        if not self.estimators or not all(isinstance(e, tuple) and len(e) == 2 for e in self.estimators):
            raise ValueError("estimators must be a non-empty list of (name, estimator) pairs")
        for name, est in self.estimators:
            if not hasattr(est, "predict_proba"):
                raise TypeError(f"estimator {name!r} has no predict_proba")
        X = _to_numpy(X)
        y = _to_numpy(y)
        if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
            raise ValueError(f"X must be 2-D and y 1-D with one entry per row, got {X.shape}, {y.shape}")
        self.classes_ = np.unique(y)
        folds = _folds(self.cv, len(X), y)
        oof = []
        for _, est in self.estimators:                              # out-of-fold probabilities
            p = np.zeros((len(X), len(self.classes_)))
            for fit_rows, held in folds:
                model = clone(est).fit(X[fit_rows], y[fit_rows])
                p[held] = _to_numpy(model.predict_proba(X[held]))
            oof.append(p)
        self.stack_features_ = self._features(oof)                  # (n, columns)
        self.estimators_ = [clone(est).fit(X, y) for _, est in self.estimators]
        final = LogisticRegression() if self.final_estimator is None else self.final_estimator
        self.final_estimator_ = clone(final).fit(self.stack_features_, y)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X) -> np.ndarray:
        """The final estimator's features for new rows: the refitted base estimators' probabilities."""
        _checks.fitted(self, "final_estimator_")
        X = _to_numpy(X)
        return self._features([_to_numpy(est.predict_proba(X)) for est in self.estimators_])

    def predict_proba(self, X) -> np.ndarray:
        return self.final_estimator_.predict_proba(self.transform(X))

    def predict(self, X) -> np.ndarray:
        return self.final_estimator_.predict(self.transform(X))


# ------------------------------------------------------------------------ coding exercise

def check_gini_gain(fn) -> Verdict:
    """Check a reader's ``fn(y_left, y_right, n_classes) -> float``: the Gini gain of a split,
    eq. (ens-gini-gain), ``sum_k N_Lk^2 / N_L + sum_k N_Rk^2 / N_R - sum_k N_k^2 / N``, from the
    integer class labels of the two children."""
    def gain(left, right, K):
        counts = [torch.bincount(torch.tensor(v), minlength=K).double() for v in (left, right)]
        parent = counts[0] + counts[1]
        return float(sum((c * c).sum() / c.sum() for c in counts) - (parent * parent).sum() / parent.sum())

    def case(what, left, right, K, hint):
        want = gain(left, right, K)
        return Case(what, (torch.tensor(left), torch.tensor(right), K),
                    lambda got: isinstance(float(got), float) and math.isclose(float(got), want,
                                                                             rel_tol=1e-9, abs_tol=1e-12),
                    hint)

    cases = [
        case("a clean split of 0 0 | 1 1 (gain 2)", [0, 0], [1, 1], 2,
             "the score of a child is sum_k N_k^2 / N; the gain is score(L) + score(R) - score(parent)."),
        case("a split that changes no proportions (gain 0)", [0, 1], [0, 1, 0, 1], 2,
             "the parent's counts are the sums of the children's counts."),
        case("three classes, unequal children", [0, 0, 1, 2], [2, 2, 2, 1, 0], 3,
             "sum the squares over all n_classes classes, including classes absent from a child."),
        case("a single row on the left", [1], [0, 0, 0, 1, 1, 2], 3,
             "weight by the counts: the formula uses N_k^2 / N, not the impurity 1 - sum p_k^2."),
    ]
    return check(fn, cases, name=getattr(fn, "__name__", "gini_gain"))


def check_huber_leaf(fn) -> Verdict:
    """Check a reader's ``fn(r, delta) -> float``: Friedman's one-step Huber value of one leaf,
    eq. (ensb-huber-leaf), from the residuals ``r`` of its rows: the median ``m`` (for an even count
    the lower middle value) plus the mean of ``sign(r - m) min(delta, |r - m|)``."""
    def case(what, r, delta, hint):
        r = torch.tensor(r, dtype=torch.float64)
        want = float(huber_leaf(r, delta)[0])
        return Case(what, (r, delta),
                    lambda got: math.isclose(float(got), want, rel_tol=1e-9, abs_tol=1e-12), hint)

    cases = [
        case("no residual is far from the median: the mean", [1.0, 2.0, 4.0], 10.0,
             "with every |r - m| <= delta nothing is clipped, and m + mean(r - m) is the mean of r."),
        case("one outlier, clipped to delta", [0.0, 1.0, 2.0, 100.0, 3.0], 1.5,
             "the median is the middle residual; clip each r - m to [-delta, delta] before averaging."),
        case("an even count: the lower middle value", [4.0, 1.0, 3.0, 2.0], 0.5,
             "for an even count take the lower of the two middle residuals as the median."),
        case("a single row: its own residual", [-7.0], 2.0,
             "one row: its median is itself and r - m = 0."),
    ]
    return check(fn, cases, name=getattr(fn, "__name__", "huber_leaf"))


def check_weighted_median(fn) -> Verdict:
    """Check a reader's ``fn(values, weights) -> float``: AdaBoost.R2's prediction at one point,
    eq. (ensb-r2-median), the smallest of the trees' ``values`` whose cumulative weight (values
    sorted ascending) reaches half the total of ``weights``."""
    def case(what, values, weights, hint):
        v = torch.tensor(values, dtype=torch.float64)
        w = torch.tensor(weights, dtype=torch.float64)
        want = float(weighted_median(v[None, :], w)[0])
        return Case(what, (v, w), lambda got: math.isclose(float(got), want, rel_tol=1e-12, abs_tol=1e-12),
                    hint)

    cases = [
        case("equal weights, odd count: the median", [3.0, 1.0, 2.0], [1.0, 1.0, 1.0],
             "sort the values first; the weights travel with their values."),
        case("one heavy tree decides", [5.0, 1.0, 2.0, 3.0], [10.0, 1.0, 1.0, 1.0],
             "take the first value whose cumulative weight reaches half the total, not the plain median."),
        case("exactly half: the lower value", [1.0, 2.0], [1.0, 1.0],
             "cumulative weight >= half the total (not >): with two equal weights, the smaller value."),
        case("unsorted values with unequal weights", [0.5, -2.0, 4.0, 1.5, 0.0], [0.3, 0.1, 0.2, 0.25, 0.15],
             "carry each weight with its value when sorting (argsort the values, index the weights)."),
    ]
    return check(fn, cases, name=getattr(fn, "__name__", "weighted_median"))
