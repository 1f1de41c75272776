"""Ensembles of trees (chapter "Ensembles"): bagging and random forests, AdaBoost, gradient boosting.

Every estimator grows its trees with :func:`mlbook.trees.grow`. A forest is grown in *one* call: the
bootstrap samples of all trees are stacked and each row is tagged with its tree, so the level-wise
split search handles every tree at once. Boosting is sequential by nature; its trees are stacked
after fitting (:func:`stack`) so that prediction is again one pass for all rounds.
"""

from __future__ import annotations

import math

import torch

from . import _checks
from .device import get_device
from .trees import (Gini, Newton, SquaredError, Tree, _as_float32_values, _targets, _weights, apply,
                    grow)

__all__ = ["stack", "adaboost_bound", "newton_gain", "RandomForestClassifier", "RandomForestRegressor",
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
                depth=max(t.depth for t in trees))


def _n_features(max_features, d: int) -> int | None:
    if max_features is None:
        return None
    if max_features == "sqrt":
        return max(1, int(math.sqrt(d)))
    return min(_checks.integer(max_features, "max_features", minimum=1), d)


# ------------------------------------------------------------------------ bagging, random forests

class _Forest:
    """Bootstrap aggregation of CART trees; ``max_features=None`` is plain bagging, eq. (ens-bag)."""

    forest_ = None

    def __init__(self, n_estimators: int = 100, *, max_features="sqrt", bootstrap: bool = True,
                 max_depth: int | None = None, min_samples_leaf: int = 1, splitter: str = "exact",
                 max_bins: int = 255, seed: int = 0, device=None):
        self.n_estimators = _checks.integer(n_estimators, "n_estimators", minimum=1)
        if max_features not in (None, "sqrt"):
            _checks.integer(max_features, "max_features", minimum=1)
        self.max_features = max_features
        self.bootstrap = bool(bootstrap)
        self.max_depth = None if max_depth is None else _checks.integer(max_depth, "max_depth", minimum=1)
        self.min_samples_leaf = _checks.integer(min_samples_leaf, "min_samples_leaf", minimum=1)
        self.splitter = _checks.choice(splitter, "splitter", ("exact", "hist"))
        self.max_bins = _checks.integer(max_bins, "max_bins", minimum=2)
        self.seed = _checks.integer(seed, "seed", minimum=0)
        self.device = get_device(device)

    def _fit(self, X, stats, criterion):
        n, T = len(X), self.n_estimators
        gen = torch.Generator().manual_seed(self.seed)
        if self.bootstrap:
            rows = torch.randint(n, (T, n), generator=gen).to(X.device)      # (trees, n) drawn with replacement
        else:
            rows = torch.arange(n, device=X.device).expand(T, n)
        self.in_bag_ = torch.zeros(T, n, dtype=torch.bool, device=X.device).scatter_(1, rows, True)
        groups = torch.arange(T, device=X.device).repeat_interleave(n)
        flat = rows.reshape(-1)
        self.n_features_in_ = X.shape[1]
        self.forest_ = grow(X[flat], stats[flat], criterion, groups=groups, n_groups=T,
                            max_depth=self.max_depth, min_samples_leaf=self.min_samples_leaf,
                            max_features=_n_features(self.max_features, X.shape[1]),
                            max_bins=None if self.splitter == "exact" else self.max_bins, generator=gen)

    def _check_X(self, X):
        _checks.fitted(self, "forest_")
        return _as_float32_values(_checks.features(X, n_features=self.n_features_in_, device=self.device))

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


class RandomForestClassifier(_Forest):
    """Random forest (or bagging with ``max_features=None``) of Gini trees; ``oob_score_`` after ``fit``."""

    def fit(self, X, y) -> "RandomForestClassifier":
        X = _as_float32_values(_checks.features(X, device=self.device))
        y = _targets(y, len(X), X.device, classification=True)
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


class RandomForestRegressor(_Forest):
    """Random forest (or bagging with ``max_features=None``) of least-squares trees."""

    def __init__(self, n_estimators: int = 100, *, max_features=None, **kwargs):
        super().__init__(n_estimators, max_features=max_features, **kwargs)

    def fit(self, X, y) -> "RandomForestRegressor":
        X = _as_float32_values(_checks.features(X, device=self.device))
        y = _targets(y, len(X), X.device, classification=False)
        self._fit(X, SquaredError.stats(y, _weights(None, len(X), X.device)), SquaredError())
        pred, has = self._oob(X)
        self.oob_prediction_ = torch.where(has, pred[:, 0], torch.nan)
        return self

    def predict(self, X, n_trees: int | None = None) -> torch.Tensor:
        return self.tree_values(X)[:, self._first(n_trees), 0].mean(1)


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


class AdaBoostClassifier:
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
        self.n_estimators = _checks.integer(n_estimators, "n_estimators", minimum=1)
        self.learning_rate = _checks.real(learning_rate, "learning_rate", positive=True)
        self.max_depth = _checks.integer(max_depth, "max_depth", minimum=1)
        self.device = get_device(device)

    def fit(self, X, y) -> "AdaBoostClassifier":
        X = _as_float32_values(_checks.features(X, device=self.device))
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
        _checks.fitted(self, "ensemble_")
        X = _as_float32_values(_checks.features(X, n_features=self.n_features_in_, device=self.device))
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

class _Boosting:
    ensemble_ = None

    def __init__(self, n_estimators: int = 100, *, learning_rate: float = 0.1, max_depth: int = 3,
                 min_samples_leaf: int = 1, splitter: str = "exact", max_bins: int = 255, device=None):
        self.n_estimators = _checks.integer(n_estimators, "n_estimators", minimum=1)
        self.learning_rate = _checks.real(learning_rate, "learning_rate", positive=True)
        self.max_depth = _checks.integer(max_depth, "max_depth", minimum=1)
        self.min_samples_leaf = _checks.integer(min_samples_leaf, "min_samples_leaf", minimum=1)
        self.splitter = _checks.choice(splitter, "splitter", ("exact", "hist"))
        self.max_bins = _checks.integer(max_bins, "max_bins", minimum=2)
        self.device = get_device(device)

    def _grow(self, X, stats, criterion) -> Tree:
        return grow(X, stats, criterion, max_depth=self.max_depth, min_samples_leaf=self.min_samples_leaf,
                    max_bins=None if self.splitter == "exact" else self.max_bins)

    def _prepare(self, X, y, classification: bool):
        X = _as_float32_values(_checks.features(X, device=self.device))
        y = _targets(y, len(X), X.device, classification=classification)
        self.n_features_in_ = X.shape[1]
        if classification:
            self.classes_, y_enc = torch.unique(y, return_inverse=True)
            if len(self.classes_) != 2:
                raise ValueError(f"the logistic loss here is binary: y must hold exactly 2 classes, "
                                 f"got {len(self.classes_)}")
            y = y_enc.to(torch.float64)
        return X, y

    def _boost(self, X, y, init: float, step):
        """Run the rounds; ``step(F) -> Tree`` fits one tree (leaf values already final) to the scores ``F``."""
        F = torch.full((len(X),), init, dtype=torch.float64, device=X.device)
        trees = []
        for _ in range(self.n_estimators):
            tree = step(F)
            F = F + self.learning_rate * tree.value[apply(tree, X)[:, 0], 0]     # shrinkage, eq. (ens-gb-update)
            trees.append(tree)
        self.init_ = init
        self.ensemble_ = stack(trees)

    def staged_raw(self, X) -> torch.Tensor:
        """Raw scores ``F_m(x)`` after every round, ``(rounds, n)``."""
        _checks.fitted(self, "ensemble_")
        X = _as_float32_values(_checks.features(X, n_features=self.n_features_in_, device=self.device))
        leaf = self.ensemble_.value[apply(self.ensemble_, X), 0]                  # (n, rounds)
        return (self.init_ + self.learning_rate * leaf.cumsum(1)).T

    def _proba(self, raw):
        p = torch.sigmoid(raw)
        return torch.stack([1 - p, p], -1)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class GradientBoostingRegressor(_Boosting):
    """Least-squares gradient boosting: each tree fits the residuals ``y - F``, eq. (ens-gb-residual)."""

    def fit(self, X, y) -> "GradientBoostingRegressor":
        X, y = self._prepare(X, y, classification=False)
        w = torch.ones_like(y)
        self._boost(X, y, float(y.mean()), lambda F: self._grow(X, SquaredError.stats(y - F, w), SquaredError()))
        return self

    def predict(self, X) -> torch.Tensor:
        return self.staged_raw(X)[-1]


class GradientBoostingClassifier(_Boosting):
    """Binary logistic gradient boosting (Friedman's TreeBoost).

    Each tree is a least-squares fit to the negative gradient ``y - p``; its leaves are then set to one
    Newton step, ``sum (y - p) / sum p (1 - p)`` over the leaf's rows, eq. (ens-gb-logistic-leaf), as
    scikit-learn's ``GradientBoostingClassifier`` does.
    """

    def fit(self, X, y) -> "GradientBoostingClassifier":
        X, y = self._prepare(X, y, classification=True)
        w = torch.ones_like(y)

        def step(F):
            p = torch.sigmoid(F)
            tree = self._grow(X, SquaredError.stats(y - p, w), SquaredError())
            leaf = apply(tree, X)[:, 0]
            num = torch.zeros(len(tree.feature), dtype=torch.float64, device=X.device).index_add_(0, leaf, y - p)
            den = torch.zeros_like(num).index_add_(0, leaf, p * (1 - p))
            tree.value = torch.where(den > 1e-150, num / den.clamp_min(1e-150), 0.0)[:, None]
            return tree

        self._boost(X, y, _logit(float(y.mean())), step)
        return self

    def staged_predict_proba(self, X) -> torch.Tensor:
        return self._proba(self.staged_raw(X))

    def predict_proba(self, X) -> torch.Tensor:
        return self._proba(self.staged_raw(X)[-1])

    def predict(self, X) -> torch.Tensor:
        raw = self.staged_raw(X)[-1]
        return self.classes_[(raw > 0).long()]


def newton_gain(g: torch.Tensor, h: torch.Tensor, left: torch.Tensor, lam: float, gamma: float) -> float:
    """Gain of sending the rows where ``left`` is true to the left child, written out: eq. (ens-xgb-gain)."""
    GL, HL = float(g[left].sum()), float(h[left].sum())
    GR, HR = float(g[~left].sum()), float(h[~left].sum())
    return 0.5 * (GL**2 / (HL + lam) + GR**2 / (HR + lam) - (GL + GR)**2 / (HL + HR + lam)) - gamma


class _NewtonBoosting(_Boosting):
    """Second-order boosting with L2 leaf penalty ``lam`` and split penalty ``gamma`` (XGBoost's objective)."""

    def __init__(self, n_estimators: int = 100, *, lam: float = 1.0, gamma: float = 0.0, **kwargs):
        super().__init__(n_estimators, **kwargs)
        self.criterion = Newton(lam, gamma)

    def _gradients(self, y, F):
        raise NotImplementedError

    def _fit_newton(self, X, y, init):
        def step(F):
            g, h = self._gradients(y, F)                                      # eq. (ens-xgb-taylor)
            return self._grow(X, Newton.stats(g, h), self.criterion)
        self._boost(X, y, init, step)


class NewtonBoostingRegressor(_NewtonBoosting):
    """Second-order boosting of the squared loss: ``g = F - y``, ``h = 1``."""

    def _gradients(self, y, F):
        return F - y, torch.ones_like(y)

    def fit(self, X, y) -> "NewtonBoostingRegressor":
        X, y = self._prepare(X, y, classification=False)
        self._fit_newton(X, y, float(y.mean()))
        return self

    def predict(self, X) -> torch.Tensor:
        return self.staged_raw(X)[-1]


class NewtonBoostingClassifier(_NewtonBoosting):
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
