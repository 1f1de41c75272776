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
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

from . import _checks
from .device import get_device
from .exercises import Case, Verdict, check
from .trees import (Gini, Newton, SquaredError, Tree, _as_float32_values, _targets, _TensorScoring, _to_numpy,
                    _codes, _weights, apply, bin_edges, grow, impurity_importance, tree_of_nodes)

__all__ = ["stack", "tree_of_nodes", "tree_correlation", "averaged_variance", "forest_variance",
           "adaboost_bound", "newton_gain", "StackingClassifier", "check_gini_gain", "RandomForestClassifier", "RandomForestRegressor",
           "AdaBoostClassifier", "GradientBoostingRegressor", "GradientBoostingClassifier",
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


class AdaBoostClassifier(ClassifierMixin, _TensorScoring, BaseEstimator):
    """AdaBoost with the multi-class SAMME learner weight; for two classes it is discrete AdaBoost.

    Round ``t`` fits a depth-``max_depth`` Gini tree to the weighted sample, computes its weighted
    error ``eps_t``, the learner weight ``alpha_t = lr (log((1 - eps_t)/eps_t) + log(K - 1))``,
    eq. (ens-ada-alpha), and multiplies the weights of misclassified rows by ``exp(alpha_t)``,
    eq. (ens-ada-reweight). After ``fit``: ``errors_``, ``alphas_``, ``sample_weights_`` (the weights
    each round saw, ``(rounds, n)``).
    """

    ensemble_ = None

    def __init__(self, n_estimators: int = 50, *, learning_rate: float = 1.0, max_depth: int = 1,
                 device=None):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.device = device

    def fit(self, X, y) -> "AdaBoostClassifier":
        _checks.integer(self.n_estimators, "n_estimators", minimum=1)
        _checks.real(self.learning_rate, "learning_rate", positive=True)
        _checks.integer(self.max_depth, "max_depth", minimum=1)
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
            tree = grow(X, crit.stats(y_enc, w), crit, max_depth=self.max_depth)
            miss = tree.value[apply(tree, X)[:, 0]].argmax(1) != y_enc
            eps = float((w * miss).sum() / w.sum())
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

    def _rows(self, n: int, gen: torch.Generator, device) -> torch.Tensor:
        """Rows of this round: all, or ``floor(subsample n)`` drawn without replacement, sorted."""
        if self.subsample >= 1:
            return torch.arange(n, device=device)
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
            new = step(F, self._rows(len(X), gen, X.device))
            for k, tree in enumerate(new):              # shrinkage, eq. (ens-gb-update)
                F[:, k] += self.learning_rate * tree.value[apply(tree, X)[:, 0], 0]
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
        p = torch.sigmoid(raw)
        return torch.stack([1 - p, p], -1)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class GradientBoostingRegressor(RegressorMixin, _Boosting):
    """Least-squares gradient boosting: each tree fits the residuals ``y - F``, eq. (ens-gb-residual)."""

    def fit(self, X, y) -> "GradientBoostingRegressor":
        X, y = self._prepare(X, y, classification=False)
        w = torch.ones_like(y)

        def step(F, rows):
            return [self._grow(X[rows], SquaredError.stats(y[rows] - F[rows, 0], w[rows]), SquaredError())]

        self._boost(X, torch.tensor([float(y.mean())], dtype=torch.float64, device=X.device), step)
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
    """

    def fit(self, X, y) -> "GradientBoostingClassifier":
        X, y = self._prepare(X, y, classification=True, binary=False)
        K = len(self.classes_)
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
    """

    _missing = True

    def __init__(self, n_estimators: int = 100, *, learning_rate: float = 0.1, max_depth: int = 3,
                 min_samples_leaf: int = 1, subsample: float = 1.0, splitter: str = "exact",
                 max_bins: int = 255, sketch: str = "uniform", reg_lambda: float = 1.0,
                 gamma: float = 0.0, random_state: int = 0, device=None):
        super().__init__(n_estimators, learning_rate=learning_rate, max_depth=max_depth,
                         min_samples_leaf=min_samples_leaf, subsample=subsample, splitter=splitter,
                         max_bins=max_bins, random_state=random_state, device=device)
        self.sketch = sketch
        self.reg_lambda = reg_lambda
        self.gamma = gamma

    def _gradients(self, y, F):
        raise NotImplementedError

    def _fit_newton(self, X, y, init):
        self.criterion_ = Newton(_checks.real(self.reg_lambda, "reg_lambda", nonnegative=True),
                                 _checks.real(self.gamma, "gamma", nonnegative=True))
        weighted = _checks.choice(self.sketch, "sketch", ("uniform", "hessian")) == "hessian"

        def step(F, rows):
            g, h = self._gradients(y[rows], F[rows, 0])                       # eq. (ens-xgb-taylor)
            return [self._grow(X[rows], Newton.stats(g, h), self.criterion_,
                               bin_weights=h if weighted else None)]

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
