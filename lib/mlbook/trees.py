"""CART decision trees (chapter "Ensembles"), grown level by level with tensor operations.

One grower serves every tree in the chapter. Each sample carries a vector of *statistics* (class
indicators for classification, ``[w, w y, w y^2]`` for least squares, ``[g, h]`` for second-order
boosting) and a *criterion* turns summed statistics into a split score. All nodes of one depth, of
one tree or of a whole forest at once, are split together:

1. every feature is cut into bins (``splitter="exact"``: one bin per distinct training value;
   ``"hist"``: at most ``max_bins`` quantile bins), once, before growing;
2. per level, the statistics of all (node, feature, bin) triples are summed with one ``index_add_``
   and a cumulative sum over bins gives every candidate left child;
3. the gain of every candidate is evaluated at once and the best per node is an ``argmax``.

Ties are broken like scikit-learn's ``BestSplitter`` where that is possible: the smallest threshold
of a feature wins, and the exact splitter puts the threshold half-way between the largest value that
goes left and the smallest value that goes right *within the node* (``a/2 + b/2`` in float64 on
inputs rounded to float32, as scikit-learn stores them). Among features with exactly equal gain we
take the first; scikit-learn takes the first in a random permutation of the features, the one
source of disagreement left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import _checks
from .device import get_device

__all__ = ["Gini", "SquaredError", "Newton", "Tree", "bin_edges", "grow", "apply", "decision_path",
           "split_segments", "draw_splits", "DecisionTreeClassifier", "DecisionTreeRegressor"]

_EPS = torch.finfo(torch.float64).eps
_MAX_CELLS = 1 << 24          # (node, feature, bin, stat) cells summed per chunk of nodes
_H_MIN = 1e-12                # Newton: a node with H + lam below this has no usable curvature


# ---------------------------------------------------------------------------------- criteria

class Gini:
    """Classification: statistics are the weighted class indicators ``w 1[y = k]``, shape ``(n, K)``.

    The split score of a child with class weights ``c`` is ``sum_k c_k^2 / sum_k c_k``, so the gain
    ``score(L) + score(R) - score(P)`` is the weighted decrease of Gini impurity, eq. (ens-gini-gain).
    """

    min_gain = -math.inf      # like scikit-learn: take the best valid split even if it gains nothing

    def __init__(self, n_classes: int):
        self.n_classes = n_classes

    def stats(self, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(y, self.n_classes).to(w.dtype) * w[:, None]

    @staticmethod
    def score(s: torch.Tensor) -> torch.Tensor:
        # A right child is parent - left: when its true weights are ~0 (AdaBoost weights of 1e-17) the
        # subtraction leaves rounding noise of either sign, and sq / tot of noise like [+a, -a] would be
        # huge. Clamping at 0 keeps sq <= tot^2, so the score of such a child is at most its ~0 weight.
        s = s.clamp_min(0)
        tot, sq = s[..., 0].clone(), s[..., 0] * s[..., 0]
        for k in range(1, s.shape[-1]):        # K is small: columns beat a reduction over a short last axis
            tot += s[..., k]
            sq += s[..., k] * s[..., k]
        return sq / tot.clamp_min(1e-300)

    def gain(self, left, right, parent):
        return self.score(left) + self.score(right) - self.score(parent)

    @staticmethod
    def impurity(s: torch.Tensor) -> torch.Tensor:
        p = s / s.sum(-1, keepdim=True)
        return 1 - (p * p).sum(-1)

    @staticmethod
    def value(s: torch.Tensor) -> torch.Tensor:
        return s / s.sum(-1, keepdim=True)                        # class proportions in the leaf


class SquaredError:
    """Regression: statistics ``[w, w y, w y^2]``; score ``(sum w y)^2 / sum w``, so the gain is
    eq. (ens-sse-gain); leaf value: the weighted mean."""

    min_gain = -math.inf

    @staticmethod
    def stats(y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.stack([w, w * y, w * y * y], 1)

    @staticmethod
    def score(s):
        q = s[..., 1] ** 2 / s[..., 0].clamp_min(1e-300)
        # Cauchy-Schwarz: q <= sum w y^2. Only a child whose weights are ~0 and whose sums are the
        # rounding noise of parent - left breaks it (its q can be ~1e300); its score is then ~0.
        sq = s[..., 2].clamp_min(0)
        return torch.where(q > sq * (1 + 1e-6), sq, q)

    def gain(self, left, right, parent):
        return self.score(left) + self.score(right) - self.score(parent)

    @staticmethod
    def impurity(s):
        mean = s[..., 1] / s[..., 0]
        return s[..., 2] / s[..., 0] - mean * mean

    @staticmethod
    def value(s):
        return (s[..., 1] / s[..., 0])[..., None]


class Newton:
    """Second-order boosting: statistics ``[g, h]`` (gradient and Hessian of the loss per sample).

    Leaf weight ``-G / (H + lam)``, eq. (ens-xgb-leaf); split gain
    ``(G_L^2/(H_L+lam) + G_R^2/(H_R+lam) - G^2/(H+lam)) / 2 - gamma``, eq. (ens-xgb-gain); a node is
    split only when that gain is positive. Where ``H + lam < 1e-12`` (possible only with ``lam = 0``)
    the leaf weight and the term ``G^2/(H+lam)`` are taken as 0 instead of dividing by ~0.
    """

    min_gain = 0.0

    def __init__(self, lam: float = 1.0, gamma: float = 0.0):
        self.lam = _checks.real(lam, "lam", nonnegative=True)
        self.gamma = _checks.real(gamma, "gamma", nonnegative=True)

    @staticmethod
    def stats(g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return torch.stack([g, h], 1)

    def score(self, s):
        # H is a sum of h >= 0. A child with H + lam ~ 0 (lam = 0 and saturated p, or a right child
        # whose H = parent - left is rounding noise) would give G^2 / 0 ~ 1e300: score it 0 instead.
        d = s[..., 1].clamp_min(0) + self.lam
        return torch.where(d > _H_MIN, s[..., 0] ** 2 / d.clamp_min(_H_MIN), 0.0)

    def gain(self, left, right, parent):
        return 0.5 * (self.score(left) + self.score(right) - self.score(parent)) - self.gamma

    @staticmethod
    def impurity(s):
        return torch.full(s.shape[:-1], math.inf, dtype=s.dtype, device=s.device)   # never "pure"

    def value(self, s):
        d = s[..., 1] + self.lam
        return torch.where(d > _H_MIN, -s[..., 0] / d.clamp_min(_H_MIN), 0.0)[..., None]   # not 0/0 = nan


# ---------------------------------------------------------------------------------- the tree

@dataclass
class Tree:
    """Flat arrays of one tree or of a forest (one root per tree); node ``i`` is a leaf iff ``feature[i] < 0``."""

    feature: torch.Tensor     # (nodes,) long, -1 at leaves
    threshold: torch.Tensor   # (nodes,) float64: go left iff x[feature] <= threshold
    left: torch.Tensor        # (nodes,) long child ids, -1 at leaves
    right: torch.Tensor       # (nodes,) long
    value: torch.Tensor       # (nodes, outputs) leaf prediction (also stored at inner nodes)
    n_samples: torch.Tensor   # (nodes,) long, training rows that reached the node
    gain: torch.Tensor        # (nodes,) float64 criterion gain of the node's split (nan at leaves)
    ties: torch.Tensor        # (nodes,) long, features whose best split reaches that gain (0 at leaves)
    roots: torch.Tensor       # (trees,) long
    depth: int                # deepest level grown

    @property
    def n_leaves(self) -> int:
        return int((self.feature < 0).sum())


def bin_edges(X: torch.Tensor, max_bins: int | None = None) -> torch.Tensor:
    """Per-feature bin edges ``(d, B)``, padded with ``+inf``: bin ``b`` holds ``edges[b-1] < x <= edges[b]``.

    ``max_bins=None`` gives the exact splitter's edges, every distinct value of the feature;
    otherwise at most ``max_bins`` edges at quantiles of the feature (the histogram splitter).
    """
    cols = []
    for j in range(X.shape[1]):
        u = torch.unique(X[:, j])                                    # sorted distinct values
        if max_bins is not None and len(u) > max_bins:
            q = torch.linspace(0, 1, max_bins + 1, dtype=X.dtype, device=X.device)[1:]
            u = torch.unique(torch.quantile(X[:, j], q, interpolation="lower"))
        cols.append(u)
    width = max(len(u) for u in cols)
    edges = torch.full((X.shape[1], width), math.inf, dtype=X.dtype, device=X.device)
    for j, u in enumerate(cols):
        edges[j, :len(u)] = u
    return edges


def _codes(X: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Bin index of every entry, ``(n, d)``: the number of edges below the value."""
    return torch.searchsorted(edges, X.T.contiguous(), right=False).T.contiguous()


def _search_sorted(codes, B, s1, criterion, idx, nid, tot, can, allowed, min_leaf):
    """Exact split search: sort each feature's rows by (node, value); a cumulative sum gives every left child.

    Cost per level is that of sorting the active rows, whatever the number of distinct values.
    Returns per node: best gain, feature, bin (last code going left), number of tied features.
    """
    F, d, m1 = len(tot), codes.shape[1], s1.shape[1]
    dev = s1.device
    best_gain = torch.full((F,), -math.inf, dtype=s1.dtype, device=dev)
    best_key = torch.zeros(F, dtype=torch.long, device=dev)
    n_ties = torch.zeros(F, dtype=torch.long, device=dev)
    keep = can[nid]
    rows, node = idx[keep], nid[keep]
    if len(rows) == 0:
        return best_gain, best_key, best_key.clone(), n_ties
    tot_c = tot * can[:, None].to(tot.dtype)
    before = tot_c.cumsum(0) - tot_c                                 # stats of all earlier nodes, (F, m+1)
    step = max(1, _MAX_CELLS // (len(rows) * m1))
    for j0 in range(0, d, step):
        J = torch.arange(j0, min(d, j0 + step), device=dev)
        c = codes[rows][:, J]                                        # (s, dj)
        order = torch.sort(node[:, None] * B + c, dim=0, stable=True).indices
        snode, scode = node[order], c.gather(0, order)               # (s, dj), node-major then value
        L = s1[rows][order].cumsum(0) - before[snode]                # (s, dj, m+1) left child at each cut
        P = tot[snode]
        R = P - L
        cut = torch.zeros_like(snode, dtype=torch.bool)              # a cut after row p: next row is in
        cut[:-1] = (snode[1:] == snode[:-1]) & (scode[1:] != scode[:-1])   # the same node, with a new value
        ok = cut & (L[..., -1] >= min_leaf) & (R[..., -1] >= min_leaf)
        if allowed is not None:
            ok &= allowed[snode, J]
        g = criterion.gain(L[..., :-1], R[..., :-1], P[..., :-1])
        g = torch.where(ok, g, torch.full_like(g, -math.inf))
        chunk_best = torch.full((F,), -math.inf, dtype=g.dtype, device=dev).scatter_reduce(
            0, snode.reshape(-1), g.reshape(-1), "amax")
        hit = ok & (g == chunk_best[snode]) & torch.isfinite(g)
        key = torch.where(hit, J * B + scode, torch.iinfo(torch.long).max)
        chunk_key = torch.full((F,), torch.iinfo(torch.long).max, dtype=torch.long, device=dev).scatter_reduce(
            0, snode.reshape(-1), key.reshape(-1), "amin")
        tied = torch.zeros(F, len(J), dtype=torch.bool, device=dev)
        tied[snode[hit], J.expand_as(snode)[hit]] = True
        better = chunk_best > best_gain
        same = (chunk_best == best_gain) & torch.isfinite(chunk_best)
        n_ties = torch.where(better, tied.sum(1), n_ties + torch.where(same, tied.sum(1), 0))
        best_key = torch.where(better, chunk_key, best_key)
        best_gain = torch.maximum(best_gain, chunk_best)
    return best_gain, best_key // B, best_key % B, n_ties


def _search_hist(codes, B, s1, criterion, idx, nid, tot, can, allowed, min_leaf):
    """Histogram split search: sum the rows' statistics into (node, feature, bin) cells, cumsum over bins."""
    F, d, m1 = len(tot), codes.shape[1], s1.shape[1]
    dev = s1.device
    best_gain = torch.full((F,), -math.inf, dtype=s1.dtype, device=dev)
    best_feat = torch.zeros(F, dtype=torch.long, device=dev)
    best_bin = torch.zeros(F, dtype=torch.long, device=dev)
    n_ties = torch.zeros(F, dtype=torch.long, device=dev)
    cand = can.nonzero().squeeze(1)
    chunk = max(1, _MAX_CELLS // (d * B * m1))
    for start in range(0, len(cand), chunk):
        nodes = cand[start:start + chunk]
        C = len(nodes)
        local = torch.full((F,), -1, dtype=torch.long, device=dev)
        local[nodes] = torch.arange(C, device=dev)
        loc = local[nid]
        keep = loc >= 0
        rows, loc = idx[keep], loc[keep]
        key = ((loc[:, None] * d + torch.arange(d, device=dev)) * B + codes[rows]).reshape(-1)
        hist = torch.zeros(C * d * B, m1, dtype=s1.dtype, device=dev)
        hist.index_add_(0, key, s1[rows].repeat_interleave(d, 0))
        L = hist.view(C, d, B, m1).cumsum(2)                         # left child after each bin
        P = tot[nodes][:, None, None, :]
        R = P - L
        g = criterion.gain(L[..., :-1], R[..., :-1], P[..., :-1])   # (C, d, B)
        ok = (L[..., -1] >= min_leaf) & (R[..., -1] >= min_leaf)
        if allowed is not None:
            ok &= allowed[nodes][:, :, None]
        g = torch.where(ok, g, torch.full_like(g, -math.inf))
        val, arg = g.reshape(C, d * B).max(1)                        # first maximum: lowest feature, bin
        best_gain[nodes], best_feat[nodes], best_bin[nodes] = val, arg // B, arg % B
        n_ties[nodes] = (g == val[:, None, None]).any(2).sum(1)
    return best_gain, best_feat, best_bin, n_ties



def grow(X: torch.Tensor, stats: torch.Tensor, criterion, *, groups: torch.Tensor | None = None,
         n_groups: int = 1, max_depth: int | None = None, min_samples_split: int = 2,
         min_samples_leaf: int = 1, max_features: int | None = None, max_bins: int | None = None,
         generator: torch.Generator | None = None) -> Tree:
    """Grow ``n_groups`` trees at once; sample ``i`` trains tree ``groups[i]``. Greedy CART, eq. (ens-cart-split).

    Args:
        X: ``(n, d)`` float64 features. stats: ``(n, m)`` per-sample statistics of ``criterion``.
        max_features: features drawn (without replacement) per node, ``None`` for all.
        max_bins: ``None`` for the exact splitter, else the histogram splitter's bin count.
    """
    n, d = X.shape
    dev = X.device
    max_depth = math.inf if max_depth is None else max_depth
    edges = bin_edges(X, max_bins)
    codes = _codes(X, edges)                                         # (n, d)
    B = edges.shape[1]
    s1 = torch.cat([stats, torch.ones(n, 1, dtype=stats.dtype, device=dev)], 1)   # last column: counts
    m = stats.shape[1]
    node_of = (torch.zeros(n, dtype=torch.long, device=dev) if groups is None else groups.clone())
    F = n_groups                                                     # nodes in the current level
    out = {k: [] for k in ("feature", "threshold", "left", "right", "value", "n_samples", "gain", "ties")}
    base, depth = 0, 0
    while F > 0:
        act = node_of >= 0
        idx, nid = act.nonzero().squeeze(1), node_of[act]
        tot = torch.zeros(F, m + 1, dtype=s1.dtype, device=dev).index_add_(0, nid, s1[idx])
        count = tot[:, -1]
        can = ((depth < max_depth) & (count >= min_samples_split) & (count >= 2 * min_samples_leaf)
               & (criterion.impurity(tot[:, :m]) > _EPS) & (count > 0))
        allowed = None                                               # (F, d) features drawn per node
        if max_features is not None and max_features < d:
            r = torch.rand(F, d, generator=generator).to(dev)
            allowed = torch.zeros(F, d, dtype=torch.bool, device=dev)
            allowed.scatter_(1, r.topk(max_features, 1, largest=False).indices, True)
        search = _search_sorted if max_bins is None else _search_hist
        best_gain, best_feat, best_bin, n_ties = search(codes, B, s1, criterion, idx, nid, tot, can,
                                                        allowed, min_samples_leaf)
        split = can & (best_gain > criterion.min_gain) & torch.isfinite(best_gain)

        # route the samples of split nodes, and place the threshold
        f_i = best_feat[nid]
        goes_left = codes[idx, f_i] <= best_bin[nid]
        in_split = split[nid]
        threshold = torch.full((F,), math.nan, dtype=X.dtype, device=dev)
        if max_bins is None:    # exact: half-way between the neighbouring values inside the node
            x_i = X[idx, f_i]
            lo = torch.full((F,), -math.inf, dtype=X.dtype, device=dev).scatter_reduce(
                0, nid, torch.where(goes_left, x_i, -math.inf), "amax")
            hi = torch.full((F,), math.inf, dtype=X.dtype, device=dev).scatter_reduce(
                0, nid, torch.where(goes_left, math.inf, x_i), "amin")
            mid = lo / 2.0 + hi / 2.0
            threshold = torch.where((mid == hi) | ~torch.isfinite(mid), lo, mid)
        else:
            threshold = edges[best_feat, best_bin]
        threshold = torch.where(split, threshold, torch.full_like(threshold, math.nan))

        rank = split.long().cumsum(0) - 1                            # index among split nodes
        n_split = int(split.sum())
        child_base = base + F
        out["feature"].append(torch.where(split, best_feat, -1))
        out["threshold"].append(threshold)
        out["left"].append(torch.where(split, child_base + 2 * rank, -1))
        out["right"].append(torch.where(split, child_base + 2 * rank + 1, -1))
        out["value"].append(criterion.value(tot[:, :m]))
        out["n_samples"].append(count.long())
        out["gain"].append(torch.where(split, best_gain, torch.full_like(best_gain, math.nan)))
        out["ties"].append(torch.where(split, n_ties, 0))

        new = torch.full((n,), -1, dtype=torch.long, device=dev)
        new[idx] = torch.where(in_split, 2 * rank[nid] + (~goes_left).long(), -1)
        node_of, base, F = new, base + F, 2 * n_split
        depth += 1
    cat = {k: torch.cat(v) for k, v in out.items()}
    return Tree(**cat, roots=torch.arange(n_groups, device=dev), depth=depth - 1)


def apply(tree: Tree, X: torch.Tensor) -> torch.Tensor:
    """Leaf index of every row in every tree, ``(n, trees)``: all rows descend one level per step."""
    node = tree.roots[None, :].expand(X.shape[0], -1).clone()
    for _ in range(tree.depth):
        f = tree.feature[node]
        inner = f >= 0
        x = X.gather(1, f.clamp_min(0))
        nxt = torch.where(x <= tree.threshold[node], tree.left[node], tree.right[node])
        node = torch.where(inner, nxt, node)
    return node


def decision_path(tree: Tree, X: torch.Tensor) -> torch.Tensor:
    """``(n, nodes)`` boolean: whether row ``i`` passes through node ``j`` (in any of the trees)."""
    node = tree.roots[None, :].expand(X.shape[0], -1).clone()
    path = torch.zeros(X.shape[0], len(tree.feature), dtype=torch.bool, device=X.device)
    rows = torch.arange(X.shape[0], device=X.device)[:, None].expand_as(node)
    path[rows, node] = True
    for _ in range(tree.depth):
        f = tree.feature[node]
        x = X.gather(1, f.clamp_min(0))
        nxt = torch.where(x <= tree.threshold[node], tree.left[node], tree.right[node])
        node = torch.where(f >= 0, nxt, node)
        path[rows, node] = True
    return path


def split_segments(tree: Tree, bounds, *, root: int = 0) -> list[tuple[int, float, float, float, float]]:
    """The splits of a tree on two features as line segments: ``(depth, x0, x1, y0, y1)`` per inner node.

    Every inner node cuts the box its ancestors left it, so its segment runs across that box only:
    a split on feature 0 at ``t`` is the vertical segment ``x = t`` from ``y0`` to ``y1`` of the box,
    a split on feature 1 the horizontal one. ``bounds = (x0, x1, y0, y1)`` is the box of the root
    (the plotted area; thresholds outside it are clipped to it). Nodes are listed in pre-order,
    starting from ``root`` (a forest's ``tree.roots[k]`` picks its ``k``-th tree).
    """
    feature, threshold = tree.feature.tolist(), tree.threshold.tolist()
    left, right = tree.left.tolist(), tree.right.tolist()
    segments, stack = [], [(int(root), 0, tuple(float(b) for b in bounds))]
    while stack:
        node, depth, (x0, x1, y0, y1) = stack.pop()
        f = feature[node]
        if f < 0:
            continue
        if f > 1:
            raise ValueError(f"node {node} splits on feature {f}; only two-feature trees can be drawn")
        if f == 0:
            t = min(max(threshold[node], x0), x1)
            segments.append((depth, t, t, y0, y1))
            boxes = (x0, t, y0, y1), (t, x1, y0, y1)
        else:
            t = min(max(threshold[node], y0), y1)
            segments.append((depth, x0, x1, t, t))
            boxes = (x0, x1, y0, t), (x0, x1, t, y1)
        stack.append((right[node], depth + 1, boxes[1]))             # popped after the left subtree
        stack.append((left[node], depth + 1, boxes[0]))
    return segments


def draw_splits(ax, tree: Tree, bounds, *, root: int = 0, color="k", width: float = 2.4,
                thinning: float = 0.6, **line_kwargs) -> list[tuple[int, float, float, float, float]]:
    """Draw :func:`split_segments` on a matplotlib ``ax``: the root's cut thickest, each level thinner.

    A line at depth ``k`` is ``max(width * thinning**k, 0.5)`` points wide. Returns the segments.
    """
    segments = split_segments(tree, bounds, root=root)
    for depth, x0, x1, y0, y1 in segments:
        ax.plot([x0, x1], [y0, y1], color=color, lw=max(width * thinning**depth, 0.5),
                solid_capstyle="butt", **line_kwargs)
    ax.set(xlim=bounds[:2], ylim=bounds[2:])
    return segments


# ---------------------------------------------------------------------------------- estimators

def _as_float32_values(X: torch.Tensor) -> torch.Tensor:
    """Round to float32 and back, as scikit-learn's trees store X, so both see the same thresholds."""
    return X.to(torch.float32).to(torch.float64)


def _weights(sample_weight, n: int, device) -> torch.Tensor:
    if sample_weight is None:
        return torch.ones(n, dtype=torch.float64, device=device)
    w = torch.as_tensor(sample_weight, dtype=torch.float64).to(device)
    if w.shape != (n,):
        raise ValueError(f"sample_weight must have shape ({n},), got {tuple(w.shape)}")
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError("sample_weight must be finite, non-negative and not all zero")
    return w


def _targets(y, n: int, device, *, classification: bool) -> torch.Tensor:
    y = torch.as_tensor(y).to(device)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"y must be 1-D with one entry per row of X ({n}), got shape {tuple(y.shape)}")
    if classification:
        if y.is_floating_point() and (not torch.isfinite(y).all() or (y != y.round()).any()):
            raise ValueError("y must hold integer class labels")
        return y.long()
    y = y.to(torch.float64)
    if not torch.isfinite(y).all():
        raise ValueError("y contains NaN or infinite values")
    return y


class _TreeParams:
    def __init__(self, *, max_depth: int | None = None, min_samples_split: int = 2,
                 min_samples_leaf: int = 1, max_features: int | None = None,
                 splitter: str = "exact", max_bins: int = 255, seed: int = 0, device=None):
        self.max_depth = None if max_depth is None else _checks.integer(max_depth, "max_depth", minimum=1)
        self.min_samples_split = _checks.integer(min_samples_split, "min_samples_split", minimum=2)
        self.min_samples_leaf = _checks.integer(min_samples_leaf, "min_samples_leaf", minimum=1)
        self.max_features = None if max_features is None else _checks.integer(max_features, "max_features", minimum=1)
        self.splitter = _checks.choice(splitter, "splitter", ("exact", "hist"))
        self.max_bins = _checks.integer(max_bins, "max_bins", minimum=2)
        self.seed = _checks.integer(seed, "seed", minimum=0)
        self.device = get_device(device)

    def _grow(self, X, stats, criterion, **kw) -> Tree:
        return grow(X, stats, criterion, max_depth=self.max_depth, min_samples_split=self.min_samples_split,
                    min_samples_leaf=self.min_samples_leaf,
                    max_features=None if self.max_features is None else min(self.max_features, X.shape[1]),
                    max_bins=None if self.splitter == "exact" else self.max_bins,
                    generator=torch.Generator().manual_seed(self.seed), **kw)


class DecisionTreeClassifier(_TreeParams):
    """CART classification tree with Gini impurity; ``fit``, ``predict``, ``predict_proba``, ``apply``."""

    tree_ = None

    def fit(self, X, y, sample_weight=None) -> "DecisionTreeClassifier":
        X = _as_float32_values(_checks.features(X, device=self.device))
        y = _targets(y, len(X), X.device, classification=True)
        self.classes_, y_enc = torch.unique(y, return_inverse=True)
        w = _weights(sample_weight, len(X), X.device)
        self.n_features_in_ = X.shape[1]
        crit = Gini(len(self.classes_))
        self.tree_ = self._grow(X, crit.stats(y_enc, w), crit)
        return self

    def predict_proba(self, X) -> torch.Tensor:
        _checks.fitted(self, "tree_")
        X = _as_float32_values(_checks.features(X, n_features=self.n_features_in_, device=self.device))
        return self.tree_.value[apply(self.tree_, X)[:, 0]]          # (n, classes)

    def predict(self, X) -> torch.Tensor:
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(1)]


class DecisionTreeRegressor(_TreeParams):
    """CART regression tree with squared error; ``fit``, ``predict``, ``apply``."""

    tree_ = None

    def fit(self, X, y, sample_weight=None) -> "DecisionTreeRegressor":
        X = _as_float32_values(_checks.features(X, device=self.device))
        y = _targets(y, len(X), X.device, classification=False)
        w = _weights(sample_weight, len(X), X.device)
        self.n_features_in_ = X.shape[1]
        self.tree_ = self._grow(X, SquaredError.stats(y, w), SquaredError())
        return self

    def predict(self, X) -> torch.Tensor:
        _checks.fitted(self, "tree_")
        X = _as_float32_values(_checks.features(X, n_features=self.n_features_in_, device=self.device))
        return self.tree_.value[apply(self.tree_, X)[:, 0], 0]
