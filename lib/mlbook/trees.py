"""CART decision trees (chapter "Ensembles"), grown level by level with tensor operations.

One grower serves every tree in the chapter. Each sample carries a vector of *statistics* (class
indicators for classification, ``[w, w y, w y^2]`` for least squares, ``[g, h]`` for second-order
boosting) and a *criterion* turns summed statistics into a split score. All nodes of one depth, of
one tree or of a whole forest at once, are split together:

1. every feature is cut into bins (``splitter="exact"``: one bin per distinct training value;
   ``"hist"``: at most ``max_bins`` quantile bins), once, before growing;
2. per level, every candidate left child is a running sum of statistics: the histogram splitter
   sums them into (node, feature, bin) cells and takes a cumulative sum over bins; the exact
   splitter sorts every feature's rows by value once per tree, at the root, keeps them sorted by
   partitioning them stably as nodes split (:func:`_partition`, never sorting again), and takes a
   running sum down each feature's sorted rows (:func:`_search_sorted`);
3. the gain of every candidate is evaluated at once and the best per node is an ``argmax``.

Two shortcuts give the same trees faster: a forest's bins are found once on the distinct rows, not
on the stacked bootstrap copies (``sample_rows``), and boosting on all rows bins ``X`` once per fit
(``binned``).
Missing values (NaN) are accepted by the second-order criterion only, which learns a default
direction for them at every split (:func:`grow`).

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

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, clone, is_classifier

from . import _checks
from .device import get_device

__all__ = ["Gini", "Entropy", "SquaredError", "Newton", "Tree", "bin_edges", "grow", "apply",
           "decision_path", "tree_of_nodes", "impurity_importance", "pruning_path", "prune",
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

    @staticmethod
    def weight(s: torch.Tensor) -> torch.Tensor:
        return s.sum(-1)


class Entropy(Gini):
    """Classification by entropy, ``I = -sum_k p_k log2 p_k``; statistics as for :class:`Gini`.

    ``N I = N log2 N - sum_k N_k log2 N_k``, so the score of a child is
    ``sum_k N_k log2 N_k - N log2 N`` and the gain is eq. (ens-entropy-gain), the weighted
    decrease of entropy (the information gain). Base 2, as scikit-learn's ``criterion="entropy"``.
    """

    @staticmethod
    def score(s: torch.Tensor) -> torch.Tensor:
        s = s.clamp_min(0)                                        # see Gini.score
        tot = s.sum(-1)
        return (torch.special.xlogy(s, s).sum(-1) - torch.special.xlogy(tot, tot)) / math.log(2)

    @staticmethod
    def impurity(s: torch.Tensor) -> torch.Tensor:
        p = s / s.sum(-1, keepdim=True)
        return -torch.special.xlogy(p, p).sum(-1) / math.log(2)


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

    @staticmethod
    def weight(s):
        return s[..., 0]


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

    @staticmethod
    def weight(s):
        return s[..., 1]                                          # the Hessian sum ("cover")


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
    ties: torch.Tensor        # (nodes,) long, features whose best split reaches that gain, up to rounding (0 at leaves)
    roots: torch.Tensor       # (trees,) long
    depth: int                # deepest level grown
    impurity: torch.Tensor | None = None   # (nodes,) float64 impurity I of the node's rows
    weight: torch.Tensor | None = None     # (nodes,) float64 weighted size N of the node
    missing_left: torch.Tensor | None = None   # (nodes,) bool default direction of NaN; None: right
    train_leaf: torch.Tensor | None = None     # (n,) long leaf of each training row (set by grow;
                                               # boosting reads it, fitted estimators drop it)

    @property
    def n_leaves(self) -> int:
        return int((self.feature < 0).sum())


def bin_edges(X: torch.Tensor, max_bins: int | None = None,
              weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-feature bin edges ``(d, B)``, padded with ``+inf``: bin ``b`` holds ``edges[b-1] < x <= edges[b]``.

    ``max_bins=None`` gives the exact splitter's edges, every distinct value of the feature;
    otherwise at most ``max_bins`` edges at quantiles of the feature (the histogram splitter).
    With ``weights`` (non-negative, one per row) the quantiles are *weighted*: each bin holds about
    ``1 / max_bins`` of the total weight, eq. (ens-xgb-sketch); second-order boosting passes the
    Hessians ``k_i``, XGBoost's weighted quantile sketch computed exactly. Missing values (NaN)
    are left out: the edges come from the values present.
    """
    cols = []
    for j in range(X.shape[1]):
        x, wj = X[:, j], weights
        if torch.isnan(x).any():
            present = ~torch.isnan(x)
            x, wj = x[present], None if weights is None else weights[present]
        xs = x.sort().values
        u = torch.unique_consecutive(xs)                             # sorted distinct values
        if max_bins is not None and len(u) > max_bins:
            if wj is None:      # torch.quantile(x, q, interpolation="lower"), from the one sort
                q = torch.linspace(0, 1, max_bins + 1, dtype=X.dtype, device=X.device)[1:]
                u = torch.unique_consecutive(xs[(q * (len(xs) - 1)).floor().long()])
            else:
                order = torch.argsort(x, stable=True)
                rank = torch.cumsum(wj[order], 0)                    # weight at or below each value
                q = torch.arange(1, max_bins + 1, dtype=X.dtype, device=X.device) / max_bins
                at = torch.searchsorted(rank, q * rank[-1]).clamp_max(len(order) - 1)
                u = torch.unique(x[order[at]])
        cols.append(u)
    width = max(1, max(len(u) for u in cols))
    edges = torch.full((X.shape[1], width), math.inf, dtype=X.dtype, device=X.device)
    for j, u in enumerate(cols):
        edges[j, :len(u)] = u
    return edges


def _codes(X: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Bin index of every entry, ``(n, d)``: the number of edges below the value; a missing value
    (NaN) gets the code ``B = edges.shape[1]``, one past the last bin."""
    missing = torch.isnan(X)
    if not missing.any():
        return torch.searchsorted(edges, X.T.contiguous(), right=False).T.contiguous()
    codes = torch.searchsorted(edges, torch.nan_to_num(X, nan=0.0).T.contiguous(), right=False).T
    return torch.where(missing, edges.shape[1], codes).contiguous()


def _root_order(codes, nb, idx, nid):
    """The rows ``idx`` sorted by (node, value) for every feature, ``(d, s)`` row ids: a tree's one sort.

    Stable, so rows with the same node and value stay in ascending row order; deeper levels keep
    this order by :func:`_partition` instead of sorting again.
    """
    key = nid[None, :] * nb + codes.index_select(0, idx).T                # (d, s)
    return idx[torch.sort(key, dim=1, stable=True).indices]


def _root_order_of_draws(codes, sample_rows, groups, n_groups):
    """The root order of a forest's bootstrap draws, ``(d, N)``, from one sort of the distinct rows.

    ``codes`` ``(n, d)`` are the distinct rows' codes; sample ``i`` is row ``sample_rows[i]`` in
    tree ``groups[i]``. Sorting each feature's ``n`` rows once gives every tree's order: tree ``t``
    lists, row by row in that order, its copies of each row, so a row's copies start after the
    copies, in tree ``t``, of the rows before it (a running sum of the draw counts). Rows with equal
    values may come in another order than a stable sort of the draws would give; :func:`grow` uses
    this only when every sum is exact whatever its order (whole-number statistics).
    """
    n, d = codes.shape
    N, dev = len(sample_rows), codes.device
    by_value = torch.sort(codes, dim=0, stable=True).indices                 # (n, d) rows in value order
    cell = groups * n + sample_rows                                          # (N,) (tree, row) of each draw
    count = torch.bincount(cell, minlength=n_groups * n).view(n_groups, n)   # copies of each row per tree
    by_cell = torch.sort(cell, stable=True).indices                          # draws grouped by (tree, row)
    flat = count.view(-1)
    copy = torch.arange(N, device=dev) - (flat.cumsum(0) - flat)[cell[by_cell]]   # which copy of its row
    tree_start = count.sum(1).cumsum(0) - count.sum(1)                       # (trees,)
    t, r = groups[by_cell], sample_rows[by_cell]
    order = torch.empty(d, N, dtype=torch.long, device=dev)
    for j in range(d):
        c = count[:, by_value[:, j]]                                         # (trees, n) in value order
        rank = torch.empty_like(by_value[:, j])
        rank[by_value[:, j]] = torch.arange(n, device=dev)                   # place of each row in it
        row_start = c.cumsum(1) - c                                          # copies before, in its tree
        order[j, tree_start[t] + row_start[t, rank[r]] + copy] = by_cell
    return order


def _partition(order, pos_node, start, goes_left, left_child, child_start, s_new):
    """Stable partition of the sorted rows of every feature as their nodes split, ``(d, s)`` -> ``(d, s_new)``.

    ``order`` ``(d, s)`` holds row ids node-major (position ``p`` belongs to node ``pos_node[p]``,
    whose first position is ``start[node]``), each node's rows sorted by that feature.
    ``goes_left[row]`` (int32): 1 if the row goes left. A split node ``k``'s children are
    ``left_child[k]`` and ``left_child[k] + 1`` (``-1``: ``k`` did not split), whose rows start at
    ``child_start[child]``; a child that is not searched further (a leaf) starts at ``s_new``, past
    the end, and so do the last two entries, which serve the nodes that did not split. Within each
    old node the left rows come first, then the right ones, each in their old order, so a row's new
    position is its child's start plus the number of rows before it in the old node that go the
    same way: one running count of left rows gives both. That is what a stable sort by (new node,
    value) gives, for a few passes over ``(d, s)`` instead of a sort. Rows of leaves land past
    ``s_new`` and are cut off.
    """
    # integer arithmetic rather than torch.where: several times faster on a CPU
    left = goes_left.index_select(0, order.reshape(-1)).view(order.shape)  # (d, s) int32
    n_left = left.cumsum(1, dtype=torch.int32) - left                      # lefts before each position
    first = start[pos_node]                                                # (s,) old node's first position
    n_left -= n_left.index_select(1, first)                                # ... within the old node
    p = (torch.arange(len(pos_node), device=order.device) - first).int()   # (s,) rows before, in the node
    child = left_child[pos_node]
    child = torch.where(child >= 0, child, len(child_start) - 2)
    at_left, at_right = child_start[child].int(), child_start[child + 1].int()   # (s,) children's starts
    # right: at_right + p - n_left; left: at_left + n_left, i.e. right + (at_left - at_right - p
    # + 2 n_left): one fused multiply-add, cast to int64 for the scatter inside the same pass
    dest = torch.addcmul((at_right + p) - n_left, left, torch.add(at_left - at_right - p, n_left, alpha=2),
                         out=torch.empty(order.shape, dtype=torch.long, device=order.device))
    out = torch.empty(order.shape[0], s_new + order.shape[1], dtype=order.dtype, device=order.device)
    return out.scatter_(1, dest, order)[:, :s_new]


def _search_sorted(codes, B, s1_t, criterion, order, pos_node, start, tot, can, allowed, min_leaf, miss=None,
                   whole_numbers=False):
    """Exact split search on each feature's rows sorted by (node, value): a running sum gives every
    left child.

    ``s1_t`` ``(m+1, n)``: the rows' statistics and counts, transposed. ``order`` ``(d, s)``: row
    ids, node-major (position ``p`` belongs to node ``pos_node[p]``, whose rows start at
    ``start[node]``), each node's rows in ascending order of that feature; only nodes in ``can``
    have rows. :func:`grow` sorts it once per tree and then partitions it as nodes
    split (:func:`_partition`), never sorting again. The running sum of the statistics runs down
    each feature's whole order; minus the totals of the earlier nodes, it is the left child of
    every cut.

    Only the features drawn for a node (``allowed``, ``max_features`` of them) are scored. The
    running sums are still formed for every feature, so each sum is the same number, rounding
    included, whatever was drawn: the gains are those of scoring every feature and masking.
    With ``whole_numbers`` (every statistic an integer, their total below ``2**53``: the class
    counts of unweighted rows) every sum is exact in whatever order it is taken, so only the drawn
    features' rows are summed, in one running sum per draw slot across the nodes.

    Returns per node: best gain, feature, bin (last code going left), the best gain of every feature
    ``(F, d)`` (:func:`grow` counts the tied features from it, once per tree), and the default
    direction of missing values (``None`` when ``miss`` is ``None``).

    ``miss`` ``(F, d, m+1)``: the summed statistics of the rows of each node whose feature is missing
    (code ``B``, sorted after every value). Each cut is then scored twice, with those rows sent right
    and sent left, eq. (ens-xgb-missing); the better direction is kept (right when equal).
    """
    F, d, m1 = len(tot), codes.shape[1], s1_t.shape[0]
    dev = s1_t.device
    big = torch.iinfo(torch.long).max
    best_gain = torch.full((F,), -math.inf, dtype=s1_t.dtype, device=dev)
    best_key = torch.full((F,), big, dtype=torch.long, device=dev)
    feat_best = torch.full((F, d), -math.inf, dtype=s1_t.dtype, device=dev)   # best gain per feature
    s = order.shape[1]
    if s == 0:
        z = torch.zeros(F, dtype=torch.long, device=dev)
        return best_gain, z, z.clone(), feat_best, None if miss is None else z.bool()
    feats = (torch.arange(d, device=dev).expand(F, d) if allowed is None
             else allowed.nonzero()[:, 1].view(F, -1))                    # (F, mf) drawn, ascending
    mf = feats.shape[1]
    tot_c = tot * can[:, None].to(tot.dtype)
    before = (tot_c.cumsum(0) - tot_c).T                             # (m+1, F) stats of all earlier nodes
    tot_t = tot.T                                                    # (m+1, F)
    # chunks of whole nodes, about _MAX_CELLS cells each; the running sum is carried across chunks
    cap = max(1, _MAX_CELLS // (d * m1))
    first_nodes = torch.searchsorted(start, torch.arange(0, s, cap, device=dev), right=True) - 1
    bounds = torch.unique(start[first_nodes.clamp_min(0)]).tolist() + [s]
    carry = torch.zeros(m1, mf if whole_numbers else d, dtype=s1_t.dtype, device=dev)
    for a, b in zip(bounds[:-1], bounds[1:]):
        o, node = order[:, a:b], pos_node[a:b]                       # (d, c), (c,)
        fj = feats[node].T                                           # (mf, c) the nodes' drawn features
        if allowed is not None and whole_numbers:
            o = o.gather(0, fj)                                      # (mf, c) rows of the drawn features
        S = s1_t.index_select(1, o.reshape(-1)).view(m1, *o.shape)   # (m+1, d or mf, c)
        S[:, :, 0] += carry
        C = S.cumsum(2)                                              # running sum down each feature
        carry = C[:, :, -1]
        if allowed is not None and not whole_numbers:
            C = C.gather(1, fj.expand(m1, -1, -1))                   # (m+1, mf, c)
            o = o.gather(0, fj)
        L = (C - before[:, None, node]).permute(1, 2, 0)             # (mf, c, m+1) left child of each cut
        P = tot_t[:, None, node].permute(1, 2, 0)                    # (1, c, m+1) the parent
        R = P - L
        flat = o * d + fj.to(o.dtype)                                # (mf, c) entry of codes (n, d)
        scode = codes.view(-1).index_select(0, flat.reshape(-1)).view(o.shape)   # value code at each position
        cut = torch.zeros_like(scode, dtype=torch.bool)              # a cut after position p: p + 1 is
        cut[:, :-1] = (node[1:] == node[:-1]) & (scode[:, 1:] != scode[:, :-1])   # in the node, new value
        ok = cut & (L[..., -1] >= min_leaf) & (R[..., -1] >= min_leaf)
        g = criterion.gain(L[..., :-1], R[..., :-1], P[..., :-1])
        g = torch.where(ok, g, -math.inf)
        if miss is not None:                                         # the missing rows sent left
            Lm = L + miss[node[None, :], fj]
            Rm = P - Lm
            ok_m = cut & (Lm[..., -1] >= min_leaf) & (Rm[..., -1] >= min_leaf)
            g_m = criterion.gain(Lm[..., :-1], Rm[..., :-1], P[..., :-1])
            g_m = torch.where(ok_m, g_m, -math.inf)
            to_left = g_m > g
            g, ok = torch.maximum(g, g_m), ok | ok_m
        nodes = node.expand_as(g).reshape(-1)
        best_gain.scatter_reduce_(0, nodes, g.reshape(-1), "amax")
        hit = ok & (g == best_gain[node]) & torch.isfinite(g)
        key = fj * B + scode if miss is None else 2 * (fj * B + scode) + to_left.long()
        key = torch.where(hit, key, big)                             # the lowest feature, then value
        best_key.scatter_reduce_(0, nodes, key.reshape(-1), "amin")
        feat_best.view(-1).scatter_reduce_(0, (node * d + fj).reshape(-1), g.reshape(-1), "amax")
    best_key = torch.where(best_key == big, 0, best_key)
    if miss is None:
        return best_gain, best_key // B, best_key % B, feat_best, None
    return best_gain, best_key // 2 // B, best_key // 2 % B, feat_best, best_key % 2 == 1


def _search_hist(cell, W, B, criterion, node, tot, can, allowed, min_leaf, miss=None, same=()):
    """Histogram split search: sum the rows' statistics into (node, feature, bin) cells, cumsum over bins.

    ``cell`` ``(n, d)``: each entry's cell within a node, ``feature * bins + code``; ``W``
    ``(m+1, n d)``: each row's statistics repeated once per feature, in the same row-major order.
    :func:`grow` forms both once per tree. ``node`` ``(n,)``: each row's node in this level, ``F``
    (one past the last) for rows that already sit in a leaf. Rows outside the nodes being searched
    are summed into that spare node, which is then dropped: when every searched node fits in one
    pass (the usual case), the pass runs over all ``n d`` entries with no copying of rows at all.
    Each cell adds its rows in row order, as a loop over features would.

    With ``miss`` (not ``None``: some value is missing) the histogram gets one more bin, the missing
    rows' (code ``B``), and every cut is scored with them sent right and left, eq. (ens-xgb-missing).
    ``same``: statistics equal to the counts row by row (the weights of unweighted rows), whose
    histogram is the counts' one. Returns as :func:`_search_sorted`.
    """
    F, (n, d), m1 = len(tot), cell.shape, W.shape[0]
    dev = W.device
    cand = can.nonzero().squeeze(1)
    out = None                  # the results of all nodes, filled chunk by chunk (unless one chunk)
    if len(cand) < F:
        out = (torch.full((F,), -math.inf, dtype=W.dtype, device=dev),              # best gain
               torch.zeros(F, dtype=torch.long, device=dev),                        # its feature
               torch.zeros(F, dtype=torch.long, device=dev),                        # its bin
               torch.full((F, d), -math.inf, dtype=W.dtype, device=dev),           # best per feature
               None if miss is None else torch.zeros(F, dtype=torch.bool, device=dev))   # NaN left?
    nb = B if miss is None else B + 1
    chunk = max(1, _MAX_CELLS // (d * nb * m1))
    for start in range(0, len(cand), chunk):
        nodes = cand[start:start + chunk]
        C = len(nodes)
        loc = node                                                   # (n,) node within this pass
        if C < F:
            local = torch.full((F + 1,), C, dtype=torch.long, device=dev)   # C: the spare node
            local[nodes] = torch.arange(C, device=dev)
            loc = local[node]
        cells, w = cell, W
        if C < len(cand):                                            # several passes: this one's rows
            keep = loc < C
            loc, cells, w = loc[keep], cell[keep], W.view(m1, n, d)[:, keep].reshape(m1, -1)
        key = (cells + (loc * (d * nb))[:, None]).view(-1)          # (s d) cell of every entry
        hist = torch.zeros(m1, (C + 1) * d * nb, dtype=W.dtype, device=dev)
        for j in range(m1 - 1, -1, -1):                              # one pass per statistic, counts
            if j in same:                                            # first; a statistic in ``same``
                hist[j] = hist[-1]                                   # equals the counts
            else:
                hist[j].scatter_add_(0, key, w[j])
        # one statistic per block, (m+1, C, d, bins): each statistic's running sum is contiguous, so
        # the elementwise gain below reads memory in order; its views index the statistic last
        hist = hist.view(m1, C + 1, d, nb)[:, :C]
        L = hist[..., :B].cumsum(3).permute(1, 2, 3, 0)              # (C, d, B, m+1) left children
        hist = hist.permute(1, 2, 3, 0)
        P = (tot if C == F else tot[nodes])[:, None, None, :]
        R = P - L
        g = criterion.gain(L[..., :-1], R[..., :-1], P[..., :-1])   # (C, d, B)
        ok = (L[..., -1] >= min_leaf) & (R[..., -1] >= min_leaf)
        if allowed is not None:
            ok &= allowed[nodes][:, :, None]
        g = torch.where(ok, g, -math.inf)
        if miss is not None:                                         # the missing rows sent left
            Lm = L + hist[:, :, B:]
            Rm = P - Lm
            ok_m = (Lm[..., -1] >= min_leaf) & (Rm[..., -1] >= min_leaf)
            if allowed is not None:
                ok_m &= allowed[nodes][:, :, None]
            g_m = criterion.gain(Lm[..., :-1], Rm[..., :-1], P[..., :-1])
            g_m = torch.where(ok_m, g_m, -math.inf)
            both = torch.stack([g, g_m], 3)                          # (C, d, B, 2): right, then left
            val, arg = both.reshape(C, d * B * 2).max(1)
            side, arg = arg % 2 == 1, arg // 2
            g = both.max(3).values
        else:
            val, arg = g.reshape(C, d * B).max(1)                    # first maximum: lowest feature, bin
            side = None
        found = (val, arg // B, arg % B, g.max(2).values, side)
        if out is None and C == F:                                   # every node, in one pass
            return found
        if out is None:                                              # every node, in several passes
            out = (val.new_empty(F), arg.new_empty(F), arg.new_empty(F), val.new_empty(F, d),
                   None if side is None else side.new_empty(F))
        for o, f in zip(out, found):
            if o is not None:
                o[nodes] = f
    return out


def _count_ties(feat_best, best_gain, criterion, tot):
    """Features whose best split reaches the node's best gain up to rounding, per node.

    Two mathematically equal gains computed from different prefix sums can differ in the last bits,
    and another implementation may order them the other way; so a feature counts as tied when its
    best gain is within ``1e-9`` of the parent's score (the size of the terms the gain is a
    difference of) below the best. 0 where the node has no valid split.
    """
    scale = criterion.score(tot[:, :-1]).abs()
    tol = 1e-9 * (scale + best_gain.abs())
    near = torch.isfinite(feat_best) & (feat_best >= (best_gain - tol)[:, None])
    return torch.where(torch.isfinite(best_gain), near.sum(1), 0)



@torch.inference_mode()
def grow(X: torch.Tensor, stats: torch.Tensor, criterion, *, groups: torch.Tensor | None = None,
         n_groups: int = 1, max_depth: int | None = None, min_samples_split: int = 2,
         min_samples_leaf: int = 1, max_features: int | None = None, max_bins: int | None = None,
         bin_weights: torch.Tensor | None = None, generator: torch.Generator | None = None,
         sample_rows: torch.Tensor | None = None,
         binned: tuple[torch.Tensor, torch.Tensor] | None = None) -> Tree:
    """Grow ``n_groups`` trees at once; sample ``i`` trains tree ``groups[i]``. Greedy CART, eq. (ens-cart-split).

    Args:
        X: ``(n, d)`` float64 features. stats: ``(n, m)`` per-sample statistics of ``criterion``.
        max_features: features drawn (without replacement) per node, ``None`` for all.
        max_bins: ``None`` for the exact splitter, else the histogram splitter's bin count.
        bin_weights: ``(n,)`` row weights for weighted-quantile bins (histogram splitter only).
        sample_rows: exact splitter only: sample ``i`` is row ``sample_rows[i]`` of ``X`` (a forest's
            bootstrap draws), so the bins are found once on the distinct rows; ``stats`` and ``groups``
            have one entry per sample. The same tree as growing on ``X[sample_rows]``.
        binned: ``(edges, codes)`` of ``X`` as :func:`bin_edges` (with these ``max_bins``) and
            ``_codes`` give them, found once by a caller that grows many trees on the same rows
            (boosting): the same tree, without re-binning every round.

    Missing values: with a :class:`Newton` criterion ``X`` may hold NaN. Every split then learns a
    default direction for the rows whose feature is missing (XGBoost's sparsity-aware split
    finding, eq. ens-xgb-missing), stored in ``Tree.missing_left``; other criteria raise. Without
    NaN the tree is the same as before and ``missing_left`` is ``None``.

    Growing builds index tables, never anything to differentiate, so it runs in
    ``torch.inference_mode``: every small tensor operation then skips autograd's bookkeeping
    (about a tenth of the time of a depth-3 boosting tree). The tree's arrays are inference
    tensors: read them, compute with them, but copy one (``.clone()``) before changing it in place.
    """
    if sample_rows is not None:
        if max_bins is not None:
            raise ValueError("sample_rows is for the exact splitter (max_bins=None)")
        edges = bin_edges(X)
        codes_of_rows = _codes(X, edges)
        codes = codes_of_rows[sample_rows]
        X = X[sample_rows]
    n, d = X.shape
    dev = X.device
    # a sum is NaN when some entry is (or when infinities cancel): look entry by entry only then
    nan = torch.isnan(X) if not bool(torch.isfinite(X.sum())) else None
    has_missing = nan is not None and bool(nan.any())
    if has_missing and not isinstance(criterion, Newton):
        raise ValueError("X contains missing values (NaN); only second-order boosting (the Newton "
                         "criterion) learns a direction for them: impute them first")
    max_depth = math.inf if max_depth is None else max_depth
    if binned is not None:
        edges, codes = binned
    elif sample_rows is None:
        edges = bin_edges(X, max_bins, None if max_bins is None else bin_weights)
        codes = _codes(X, edges)                                     # (n, d)
    B = edges.shape[1]
    s1 = torch.cat([stats, torch.ones(n, 1, dtype=stats.dtype, device=dev)], 1)   # last column: counts
    m = stats.shape[1]
    s1_t = whole_numbers = None
    if max_bins is None:                                             # for the exact search
        s1_t = s1.T.contiguous()                                     # (m+1, n)
        whole_numbers = bool((s1 == s1.round()).all()) and float(s1.abs().sum()) < 2.0 ** 53
    else:                                                            # for the histogram search
        nb = B + 1 if has_missing else B
        cell = codes + torch.arange(d, device=dev) * nb              # (n, d) feature * bins + code
        W = s1.T[:, :, None].expand(-1, -1, d).reshape(m + 1, n * d)   # (m+1, n d) row-major
        # unweighted rows: a weight column equal to the counts needs no histogram of its own
        same = [j for j in range(m) if bool(torch.equal(s1[:, j], s1[:, m]))]
    node_of = (torch.zeros(n, dtype=torch.long, device=dev) if groups is None else groups.clone())
    F = n_groups                                                     # nodes in the current level
    levels = []           # per level: totals, split?, feature, threshold, gain, gain per feature, NaN left?
    # Rows travel as node ids of the current level, -1 once in a leaf. Per-node sums go through
    # a spare node F that collects the rows already in leaves (then dropped), and per-row lookups
    # read node max(id, 0) and are masked, so no level copies out its active rows.
    leaf = node_of.clone()                                           # each row's node, last one kept
    depth = base = 0
    while F > 0:
        act = node_of >= 0                                           # rows not yet in a leaf
        node = torch.where(act, node_of, F)                          # (n,) F: the spare node
        leaf = torch.where(act, node_of + base, leaf)
        base += F
        tot = torch.zeros(F + 1, m + 1, dtype=s1.dtype, device=dev).index_add_(0, node, s1)[:F]
        depth += 1
        if depth > max_depth:                # the deepest level: leaves only, nothing to search
            none = torch.zeros(F, dtype=torch.long, device=dev)      # placeholders, masked below
            levels.append((tot, none.bool(), none, tot[:, 0], tot[:, 0], tot[:, :1].expand(-1, d),
                           none.bool()))
            break
        can = ((tot[:, -1] >= max(min_samples_split, 2 * min_samples_leaf, 1))    # enough rows, and
               & (criterion.impurity(tot[:, :m]) > _EPS))                        # not pure
        allowed = None                                               # (F, d) features drawn per node
        if max_features is not None and max_features < d:
            r = torch.rand(F, d, generator=generator).to(dev)
            allowed = torch.zeros(F, d, dtype=torch.bool, device=dev)
            allowed.scatter_(1, r.topk(max_features, 1, largest=False).indices, True)
        miss = None                                                  # (F, d, m+1) stats of missing rows
        if has_missing:
            r, j = (nan & act[:, None]).nonzero(as_tuple=True)
            miss = torch.zeros(F * d, m + 1, dtype=s1.dtype, device=dev).index_add_(
                0, node_of[r] * d + j, s1[r]).view(F, d, m + 1)
        if max_bins is None:                 # exact: the rows sorted per feature, kept sorted
            if depth == 1:
                idx = act.nonzero().squeeze(1)
                idx = idx[can[node_of[idx]]]
                if sample_rows is not None and whole_numbers and groups is not None:
                    order = _root_order_of_draws(codes_of_rows, sample_rows, groups, n_groups)
                    order = order[:, can[groups[order[0]]]]          # node-major: same in every row
                else:
                    order = _root_order(codes, B + 1, idx, node_of[idx])
                if n * d < 2 ** 31:          # row ids as int32: half the bytes to move every level
                    order = order.int()
                sizes = torch.bincount(node_of[idx], minlength=F)
                start = sizes.cumsum(0) - sizes
            else:
                searched = act & can[node_of.clamp_min(0)]
                sizes = torch.bincount(node_of[searched], minlength=F)
                new_start = sizes.cumsum(0) - sizes
                s_new = int(sizes.sum())
                child_start = torch.cat([torch.where(can, new_start, s_new), new_start.new_full((2,), s_new)])
                order = _partition(order, pos_node, start, (1 - (node_of & 1)).int(), left_child,
                                   child_start, s_new)
                start = new_start
            pos_node = torch.repeat_interleave(torch.arange(F, device=dev), sizes)
            best_gain, best_feat, best_bin, feat_best, to_left = _search_sorted(
                codes, B, s1_t, criterion, order, pos_node, start, tot, can, allowed, min_samples_leaf, miss,
                whole_numbers)
        else:
            best_gain, best_feat, best_bin, feat_best, to_left = _search_hist(
                cell, W, B, criterion, node, tot, can, allowed, min_samples_leaf, miss, same)
        split = can & (best_gain > criterion.min_gain) & torch.isfinite(best_gain)

        # route the rows of split nodes, and place the threshold
        at = node_of.clamp_min(0)                                    # (n,) rows in leaves: masked
        f_r = best_feat.index_select(0, at)[:, None]                 # (n, 1) each row's feature
        goes_left = codes.gather(1, f_r)[:, 0] <= best_bin.index_select(0, at)
        present = None
        if has_missing:                                              # missing rows: the learned side
            present = ~nan.gather(1, f_r)[:, 0]
            goes_left = torch.where(present, goes_left, to_left.index_select(0, at))
        if max_bins is None:    # exact: half-way between the neighbouring values inside the node
            if present is None:
                present = torch.ones_like(goes_left)
            x = X.gather(1, f_r)[:, 0]
            lo = torch.full((F + 1,), -math.inf, dtype=X.dtype, device=dev).scatter_reduce(
                0, node, torch.where(goes_left & present, x, -math.inf), "amax")[:F]
            hi = torch.full((F + 1,), math.inf, dtype=X.dtype, device=dev).scatter_reduce(
                0, node, torch.where(goes_left | ~present, math.inf, x), "amin")[:F]
            mid = lo / 2.0 + hi / 2.0
            threshold = torch.where((mid == hi) | ~torch.isfinite(mid), lo, mid)
        else:
            threshold = edges[best_feat, best_bin]
        levels.append((tot, split, best_feat, threshold, best_gain, feat_best,
                       split if to_left is None else to_left))

        rank = split.long().cumsum(0) - 1                            # index among split nodes
        moving = act & split.index_select(0, at)
        node_of = torch.where(moving, 2 * rank.index_select(0, at) + ~goes_left, -1)
        if max_bins is None:
            left_child = torch.where(split, 2 * rank, -1)
        F = 2 * (int(rank[-1]) + 1)

    # the nodes of all levels, numbered level by level; split node r (in that order) has children
    # n_groups + 2 r and n_groups + 2 r + 1
    tot, split, feature, threshold, gain, feat_best, to_left = (torch.cat(v) for v in zip(*levels))
    ties = _count_ties(feat_best, gain, criterion, tot)
    left = torch.where(split, n_groups + 2 * (split.long().cumsum(0) - 1), -1)
    return Tree(feature=torch.where(split, feature, -1),
                threshold=torch.where(split, threshold, math.nan),
                left=left, right=torch.where(split, left + 1, -1),
                value=criterion.value(tot[:, :m]), n_samples=tot[:, -1].long(),
                gain=torch.where(split, gain, math.nan), ties=torch.where(split, ties, 0),
                impurity=criterion.impurity(tot[:, :m]), weight=criterion.weight(tot[:, :m]),
                missing_left=(split & to_left) if has_missing else None, train_leaf=leaf,
                roots=torch.arange(n_groups, device=dev), depth=depth - 1)


def _goes_left(tree: Tree, node: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x <= threshold``; a missing ``x`` (NaN) follows the node's learned default direction
    (right where the tree learned none)."""
    left = x <= tree.threshold[node]
    if tree.missing_left is not None:
        left |= torch.isnan(x) & tree.missing_left[node]
    return left


def apply(tree: Tree, X: torch.Tensor) -> torch.Tensor:
    """Leaf index of every row in every tree, ``(n, trees)``: all rows descend one level per step.

    Each step reads four small per-node tables with ``index_select`` (the fastest gather on a CPU)
    on the flat ``(n trees,)`` node ids, kept as int32: the feature to test, the threshold, and the
    two children, where a leaf is its own child on both sides and has the threshold ``+inf``, so
    rows that reached a leaf stay there without a separate mask. ``NaN`` compares false, so a
    missing value goes right unless the node learned to send it left (:func:`_goes_left`).
    """
    n, T = X.shape[0], len(tree.roots)
    inner = tree.feature >= 0
    ids = torch.arange(len(inner), device=X.device)
    feature = tree.feature.clamp_min(0)
    threshold = torch.where(inner, tree.threshold, math.inf)
    child = torch.stack([torch.where(inner, tree.left, ids), torch.where(inner, tree.right, ids)],
                        1).view(-1).int()                      # (2 nodes,) left, right of each node
    node = tree.roots.int().repeat(n)                           # (n trees,) row-major
    for _ in range(tree.depth):
        x = X.gather(1, feature.index_select(0, node).view(n, T)).view(-1)
        right = (x <= threshold.index_select(0, node)).logical_not_()
        if tree.missing_left is not None:
            right &= ~(torch.isnan(x) & tree.missing_left.index_select(0, node))
        node = child.index_select(0, torch.add(right, node, alpha=2))
    return node.view(n, T).long()


def decision_path(tree: Tree, X: torch.Tensor) -> torch.Tensor:
    """``(n, nodes)`` boolean: whether row ``i`` passes through node ``j`` (in any of the trees)."""
    node = tree.roots[None, :].expand(X.shape[0], -1).clone()
    path = torch.zeros(X.shape[0], len(tree.feature), dtype=torch.bool, device=X.device)
    rows = torch.arange(X.shape[0], device=X.device)[:, None].expand_as(node)
    path[rows, node] = True
    for _ in range(tree.depth):
        f = tree.feature[node]
        x = X.gather(1, f.clamp_min(0))
        nxt = torch.where(_goes_left(tree, node, x), tree.left[node], tree.right[node])
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


# ---------------------------------------------------------------------------------- after growing

def tree_of_nodes(tree: Tree) -> torch.Tensor:
    """Which tree of a forest (or of a stack of boosting rounds) every node belongs to, ``(nodes,)``."""
    owner = torch.full_like(tree.feature, -1)
    owner[tree.roots] = torch.arange(len(tree.roots), device=owner.device)
    inner = (tree.feature >= 0).nonzero().squeeze(1)
    for _ in range(tree.depth):          # a child's id is larger than its parent's: one level per pass
        owner[tree.left[inner]] = owner[inner]
        owner[tree.right[inner]] = owner[inner]
    return owner


def impurity_importance(tree: Tree, n_features: int) -> torch.Tensor:
    """Mean decrease of impurity per feature, eq. (ens-mdi), normalised to sum 1 within each tree,
    then averaged over the trees with at least one split and normalised again (scikit-learn's rule).

    The decrease of a split is ``N_t I_t - N_L I_L - N_R I_R`` (weighted sizes and impurities).
    """
    if tree.impurity is None or tree.weight is None:
        raise ValueError("this tree has no impurities stored; grow it with mlbook.trees.grow")
    inner = (tree.feature >= 0).nonzero().squeeze(1)
    wi = tree.weight * tree.impurity
    dec = wi[inner] - wi[tree.left[inner]] - wi[tree.right[inner]]
    owner = tree_of_nodes(tree)
    per_tree = torch.zeros(len(tree.roots), n_features, dtype=torch.float64, device=dec.device)
    per_tree.index_put_((owner[inner], tree.feature[inner]), dec, accumulate=True)
    total = per_tree.sum(1, keepdim=True)
    has = total[:, 0] > 0
    if not has.any():
        return torch.zeros(n_features, dtype=torch.float64, device=dec.device)
    mean = (per_tree[has] / total[has]).mean(0)
    return mean / mean.sum()


def _ccp_steps(tree: Tree, stop_alpha: float = math.inf):
    """Weakest-link pruning of a one-root tree, eq. (ens-ccp-link); a plain loop, for reading.

    ``R(t) = N_t I_t / N_root`` is the cost of node ``t`` as a leaf and ``R(T_t)`` the summed cost of
    the leaves below it. Each step prunes the inner node with the smallest
    ``alpha_t = (R(t) - R(T_t)) / (|leaves of T_t| - 1)`` (the lowest node id among equals) while that
    alpha is at most ``stop_alpha``. Returns the alphas, the total leaf costs after each step (the
    first entry: alpha 0 and the full tree) and the set of nodes pruned to leaves.
    """
    if len(tree.roots) != 1:
        raise ValueError("cost-complexity pruning takes a single tree, not a forest")
    feature, left, right = tree.feature.tolist(), tree.left.tolist(), tree.right.tolist()
    r_node = (tree.weight * tree.impurity / tree.weight[tree.roots[0]]).tolist()
    nodes = len(feature)
    parent = [-1] * nodes
    for i in range(nodes):
        if feature[i] >= 0:
            parent[left[i]] = parent[right[i]] = i
    n_leaves, r_branch = [1] * nodes, list(r_node)
    for i in reversed(range(nodes)):                             # children have larger ids
        if feature[i] >= 0:
            n_leaves[i] = n_leaves[left[i]] + n_leaves[right[i]]
            r_branch[i] = r_branch[left[i]] + r_branch[right[i]]
    root = int(tree.roots[0])
    inner = {i for i in range(nodes) if feature[i] >= 0}
    alphas, costs, pruned = [0.0], [r_branch[root]], set()
    while root in inner:
        best, node = min(((r_node[i] - r_branch[i]) / (n_leaves[i] - 1), i) for i in inner)
        if best > stop_alpha:
            break
        stack = [node]                                           # the branch below node goes
        while stack:
            j = stack.pop()
            if j in inner:
                inner.discard(j)
                stack += [left[j], right[j]]
        pruned.add(node)
        drop, gain = n_leaves[node] - 1, r_node[node] - r_branch[node]
        n_leaves[node], r_branch[node] = 1, r_node[node]
        j = parent[node]
        while j >= 0:                                            # ancestors lose the pruned leaves
            n_leaves[j] -= drop
            r_branch[j] += gain
            j = parent[j]
        alphas.append(best)
        costs.append(r_branch[root])
    return alphas, costs, pruned


def pruning_path(tree: Tree) -> dict[str, torch.Tensor]:
    """The cost-complexity path of a fully grown tree: ``ccp_alphas`` and ``impurities`` (the total
    leaf cost of the subtree that is optimal from that alpha on), like scikit-learn's
    ``cost_complexity_pruning_path``."""
    alphas, costs, _ = _ccp_steps(tree)
    dt = torch.float64
    return {"ccp_alphas": torch.tensor(alphas, dtype=dt), "impurities": torch.tensor(costs, dtype=dt)}


def prune(tree: Tree, ccp_alpha: float) -> Tree:
    """The subtree minimising ``R(T) + alpha |leaves of T|``, eq. (ens-ccp): weakest-link pruning up
    to ``ccp_alpha``, then the kept nodes renumbered level by level."""
    _, _, pruned = _ccp_steps(tree, ccp_alpha)
    if not pruned:
        return tree
    feature, left, right = tree.feature.tolist(), tree.left.tolist(), tree.right.tolist()
    keep, level, depth = [], [int(tree.roots[0])], -1
    while level:                                                 # breadth first: ids stay level-ordered
        keep += level
        depth += 1
        level = [c for i in level if feature[i] >= 0 and i not in pruned for c in (left[i], right[i])]
    new_id = {old: k for k, old in enumerate(keep)}
    idx = torch.tensor(keep, device=tree.feature.device)
    leaf = torch.tensor([feature[i] < 0 or i in pruned for i in keep], device=idx.device)

    def child(ids):
        return torch.tensor([-1 if lf else new_id[c] for c, lf in zip(ids, leaf.tolist())],
                            dtype=torch.long, device=idx.device)

    return Tree(feature=torch.where(leaf, -1, tree.feature[idx]),
                threshold=torch.where(leaf, math.nan, tree.threshold[idx]),
                left=child([left[i] for i in keep]), right=child([right[i] for i in keep]),
                value=tree.value[idx], n_samples=tree.n_samples[idx],
                gain=torch.where(leaf, math.nan, tree.gain[idx]),
                ties=torch.where(leaf, 0, tree.ties[idx]),
                roots=torch.zeros(1, dtype=torch.long, device=idx.device), depth=depth,
                impurity=tree.impurity[idx], weight=tree.weight[idx],
                missing_left=None if tree.missing_left is None else tree.missing_left[idx] & ~leaf)


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


def _to_numpy(t) -> "np.ndarray":
    """A tensor's values as a NumPy array on the CPU (for scikit-learn's metrics)."""
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


class _TensorScoring:
    """``score`` for estimators whose ``predict`` returns a tensor, possibly on a GPU.

    scikit-learn's mixins compute accuracy (classifiers) and R^2 (regressors) with NumPy; the
    predictions and ``y`` are moved to the CPU first, so ``cross_val_score`` and ``GridSearchCV``
    work whatever the device.
    """

    def score(self, X, y, sample_weight=None) -> float:
        from sklearn.metrics import accuracy_score, r2_score
        metric = accuracy_score if is_classifier(self) else r2_score
        w = None if sample_weight is None else _to_numpy(sample_weight)
        return float(metric(_to_numpy(y), _to_numpy(self.predict(X)), sample_weight=w))


class _TreeParams(_TensorScoring, BaseEstimator):
    """Parameters shared by the two trees, stored as given (scikit-learn's rule); ``fit`` checks them.

    ``random_state`` seeds the draw of candidate features per node when ``max_features`` is set;
    ``device`` is where the tree is grown (``None``: :func:`mlbook.device.get_device`).
    """

    def __init__(self, *, max_depth: int | None = None, min_samples_split: int = 2,
                 min_samples_leaf: int = 1, max_features: int | None = None,
                 splitter: str = "exact", max_bins: int = 255, criterion: str = "gini",
                 ccp_alpha: float = 0.0, random_state: int = 0, device=None):
        self.max_depth = max_depth
        self.min_samples_split = min_samples_split
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.splitter = splitter
        self.max_bins = max_bins
        self.criterion = criterion
        self.ccp_alpha = ccp_alpha
        self.random_state = random_state
        self.device = device

    _criteria: tuple[str, ...] = ()

    def _validate(self) -> None:
        if self.max_depth is not None:
            _checks.integer(self.max_depth, "max_depth", minimum=1)
        _checks.integer(self.min_samples_split, "min_samples_split", minimum=2)
        _checks.integer(self.min_samples_leaf, "min_samples_leaf", minimum=1)
        if self.max_features is not None:
            _checks.integer(self.max_features, "max_features", minimum=1)
        _checks.choice(self.splitter, "splitter", ("exact", "hist"))
        _checks.integer(self.max_bins, "max_bins", minimum=2)
        _checks.choice(self.criterion, "criterion", self._criteria)
        _checks.real(self.ccp_alpha, "ccp_alpha", nonnegative=True)
        _checks.integer(self.random_state, "random_state", minimum=0)
        self.device_ = get_device(self.device)

    def _grow(self, X, stats, criterion, **kw) -> Tree:
        tree = grow(X, stats, criterion, max_depth=self.max_depth,
                    min_samples_split=self.min_samples_split,
                    min_samples_leaf=self.min_samples_leaf,
                    max_features=None if self.max_features is None else min(self.max_features, X.shape[1]),
                    max_bins=None if self.splitter == "exact" else self.max_bins,
                    generator=torch.Generator().manual_seed(self.random_state), **kw)
        tree.train_leaf = None                          # a by-product of growing, not kept
        if self.ccp_alpha > 0:
            tree = prune(tree, self.ccp_alpha)
        return tree

    def _X(self, X) -> torch.Tensor:
        _checks.fitted(self, "tree_")
        return _as_float32_values(_checks.features(X, n_features=self.n_features_in_, device=self.device_))

    def apply(self, X) -> torch.Tensor:
        """Leaf index of every row, ``(n,)``."""
        X = self._X(X)
        return apply(self.tree_, X)[:, 0]

    @property
    def feature_importances_(self) -> torch.Tensor:
        """Impurity-based importance of every feature, normalised to sum 1, eq. (ens-mdi)."""
        if getattr(self, "tree_", None) is None:       # an AttributeError, so hasattr() is False
            raise AttributeError("feature_importances_ exists after fit(X, y)")
        return impurity_importance(self.tree_, self.n_features_in_)


class DecisionTreeClassifier(ClassifierMixin, _TreeParams):
    """CART classification tree, Gini impurity (eq. ens-gini-gain) or entropy (eq. ens-entropy-gain).

    ``fit``, ``predict``, ``predict_proba``, ``apply``, ``cost_complexity_pruning_path``;
    ``ccp_alpha > 0`` prunes the grown tree to the subtree of eq. (ens-ccp) for that alpha.
    """

    _criteria = ("gini", "entropy")
    tree_ = None

    def _criterion(self, n_classes: int):
        return Gini(n_classes) if self.criterion == "gini" else Entropy(n_classes)

    def fit(self, X, y, sample_weight=None) -> "DecisionTreeClassifier":
        self._validate()
        X = _as_float32_values(_checks.features(X, device=self.device_))
        y = _targets(y, len(X), X.device, classification=True)
        self.classes_, y_enc = torch.unique(y, return_inverse=True)
        w = _weights(sample_weight, len(X), X.device)
        self.n_features_in_ = X.shape[1]
        crit = self._criterion(len(self.classes_))
        self.tree_ = self._grow(X, crit.stats(y_enc, w), crit)
        return self

    def cost_complexity_pruning_path(self, X, y, sample_weight=None) -> dict[str, torch.Tensor]:
        """Grow the full tree on ``(X, y)`` and return its weakest-link path, eq. (ens-ccp-link):
        ``{"ccp_alphas": ..., "impurities": ...}``, as scikit-learn's method of the same name."""
        est = clone(self).set_params(ccp_alpha=0.0).fit(X, y, sample_weight)
        return pruning_path(est.tree_)

    def predict_proba(self, X) -> torch.Tensor:
        X = self._X(X)                                            # checks fitted first
        return self.tree_.value[apply(self.tree_, X)[:, 0]]       # (n, classes)

    def predict(self, X) -> torch.Tensor:
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(1)]


class DecisionTreeRegressor(RegressorMixin, _TreeParams):
    """CART regression tree with squared error; ``fit``, ``predict``, ``apply``,
    ``cost_complexity_pruning_path``."""

    _criteria = ("squared_error",)
    tree_ = None

    def __init__(self, *, max_depth: int | None = None, min_samples_split: int = 2,
                 min_samples_leaf: int = 1, max_features: int | None = None,
                 splitter: str = "exact", max_bins: int = 255, criterion: str = "squared_error",
                 ccp_alpha: float = 0.0, random_state: int = 0, device=None):
        super().__init__(max_depth=max_depth, min_samples_split=min_samples_split,
                         min_samples_leaf=min_samples_leaf, max_features=max_features,
                         splitter=splitter, max_bins=max_bins, criterion=criterion,
                         ccp_alpha=ccp_alpha, random_state=random_state, device=device)

    def fit(self, X, y, sample_weight=None) -> "DecisionTreeRegressor":
        self._validate()
        X = _as_float32_values(_checks.features(X, device=self.device_))
        y = _targets(y, len(X), X.device, classification=False)
        w = _weights(sample_weight, len(X), X.device)
        self.n_features_in_ = X.shape[1]
        self.tree_ = self._grow(X, SquaredError.stats(y, w), SquaredError())
        return self

    def cost_complexity_pruning_path(self, X, y, sample_weight=None) -> dict[str, torch.Tensor]:
        """Weakest-link path of the full tree on ``(X, y)``, eq. (ens-ccp-link)."""
        est = clone(self).set_params(ccp_alpha=0.0).fit(X, y, sample_weight)
        return pruning_path(est.tree_)

    def predict(self, X) -> torch.Tensor:
        X = self._X(X)
        return self.tree_.value[apply(self.tree_, X)[:, 0], 0]
