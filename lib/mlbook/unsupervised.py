"""Chapter "Unsupervised learning": k-means, agglomerative clustering and PCA, as fit/predict estimators.

Every estimator takes ``X`` as a tensor, NumPy array or nested list of shape ``(n_samples, n_features)``
and computes in float64 on ``device`` (``None``: the tensor's own device, or :func:`mlbook.get_device`
for arrays). Random draws (k-means++) are made on the CPU from the ``generator`` passed in, so a seeded
run gives the same clustering on every device. Equation labels refer to ``book/unsupervised.md``.

- :class:`KMeans`: Lloyd's algorithm (km-assign, km-update) on a batch of restarts at once, seeded by
  k-means++ (km-pp) or by centres you pass; scikit-learn's ``KMeans`` is the reference.
- :func:`linkage` and :class:`AgglomerativeClustering`: greedy merging with the Lance-Williams
  updates (hc-lw-minmax, hc-lw-average, hc-ward), returning SciPy's linkage matrix; :func:`cut` reads flat clusters off it.
- :class:`PCA`: principal components by the SVD of the centred data (pca-svd), the eigenvectors of its
  covariance (pca-eig) or of its Gram matrix (pca-gram), optionally whitened, with the probabilistic
  PCA likelihood; scikit-learn's ``PCA`` is the reference. :func:`ppca_em` fits probabilistic PCA
  by EM; :class:`KernelPCA` is PCA in a kernel's feature space (scikit-learn's ``KernelPCA``).
- :func:`silhouette_score` and :func:`gap_statistic`: two ways of choosing the number of clusters.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from . import _checks
from .device import get_device

__all__ = ["squared_distances", "kmeans_plusplus", "lloyd", "KMeans", "LINKAGES", "linkage", "cut",
           "AgglomerativeClustering", "PCA", "ppca_em", "KernelPCA", "silhouette_samples",
           "silhouette_score", "gap_statistic"]


def _as_data(X, name: str = "X", *, n_features: int | None = None, device=None) -> torch.Tensor:
    """Validate ``X`` with the shared check and place it on the computing device, in float64."""
    if device is None and not isinstance(X, torch.Tensor):
        device = get_device()
    return _checks.features(X, name, n_features=n_features, device=None if device is None else get_device(device))


def squared_distances(X: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """``D[..., i, j] = ||X[..., i, :] - C[..., j, :]||^2`` for ``X (..., n, d)`` and ``C (..., k, d)``.

    Expands the square, ``|x|^2 - 2 x.c + |c|^2``, so the work is one matrix product (as in
    scikit-learn); rounding can make a tiny distance negative, hence the clamp at zero.
    """
    cross = X @ C.transpose(-1, -2)                                           # (..., n, k)
    return (X.square().sum(-1, keepdim=True) - 2 * cross
            + C.square().sum(-1).unsqueeze(-2)).clamp_min_(0.0)


# --------------------------------------------------------------------------- k-means

def kmeans_plusplus(X: torch.Tensor, n_clusters: int, *, n_init: int = 1,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """k-means++ seeding for ``n_init`` independent restarts at once. Implements (km-pp).

    The first centre of each restart is a uniformly random row of ``X``; every next one is a row drawn
    with probability proportional to its squared distance to the nearest centre chosen so far. The
    uniform numbers are drawn on the CPU from ``generator`` and the draw is an inverse-CDF lookup on
    ``X``'s device. Returns ``(n_init, n_clusters, n_features)``.
    """
    X = _checks.tensor(X, "X", ndim=2, floating=True)
    n, _ = X.shape
    k = _checks.integer(n_clusters, "n_clusters", minimum=1)
    b = _checks.integer(n_init, "n_init", minimum=1)
    if k > n:
        raise ValueError(f"n_clusters={k} is larger than the number of points ({n})")
    u = torch.rand(b, k, generator=generator, dtype=torch.float64).to(X.device)   # (b, k) uniforms
    first = (u[:, 0] * n).long().clamp_(max=n - 1)                               # (b,)
    centres = [X[first]]                                                         # list of (b, d)
    nearest = squared_distances(X, centres[0]).T                                 # (b, n)
    for j in range(1, k):
        cdf = nearest.cumsum(1)                                                  # (b, n)
        total = cdf[:, -1:]
        target = torch.minimum(u[:, j:j + 1].to(X.dtype) * total, total)         # (b, 1)
        pick = torch.searchsorted(cdf, target, right=True).squeeze(1).clamp_(max=n - 1)
        # Chosen points have weight 0; if every weight is 0 (all points duplicates), draw uniformly.
        pick = torch.where(total.squeeze(1) > 0, pick, (u[:, j] * n).long().clamp_(max=n - 1))
        c = X[pick]                                                              # (b, d)
        centres.append(c)
        nearest = torch.minimum(nearest, squared_distances(X, c).T)
    return torch.stack(centres, 1)                                               # (b, k, d)


def _assign(Xt1: torch.Tensor, centres: torch.Tensor,
            out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of every point for every restart. Implements (km-assign).

    ``Xt1`` is the data transposed with a row of ones appended, ``(d + 1, n)`` (the transposed
    layout makes the product about twice as fast on the CPU). Minimises ``|c|^2 - 2 c.x`` (the
    ``|x|^2`` term is the same for every centre) as one matrix product for all restarts together:
    the rows ``(-2 c, |c|^2)`` times the columns ``(x, 1)``.

    Returns ``(labels (b, n), onehot (b, k, n))``. The one-hot matrix (in ``Xt1``'s dtype) is what
    the update (km-update) multiplies by; it is made in place from the scores, ``score == min over
    centres``, which is cheaper than an ``argmin`` along the short ``k`` axis. A point exactly as
    near to two centres would get two ones; then (and only then) the matrix is rebuilt from the
    first nearest centre, as ``argmin`` breaks ties. ``out``: a ``(b k, n)`` buffer for the scores,
    then the one-hot matrix (:func:`lloyd` passes the same one every iteration: a fresh table of
    that size each time costs more than the product).
    """
    b, k, d = centres.shape
    flat = centres.reshape(b * k, d)
    flat1 = torch.cat([-2 * flat, flat.square().sum(1, keepdim=True)], 1)         # (b k, d + 1)

    def scores():                                                                # (b, k, n)
        return torch.mm(flat1, Xt1, out=out).view(b, k, -1)

    s = scores()
    onehot = s.eq_(s.amin(1, keepdim=True))                                      # in place
    index_and_one = torch.stack([torch.arange(k, dtype=Xt1.dtype, device=Xt1.device),
                                 torch.ones(k, dtype=Xt1.dtype, device=Xt1.device)])   # (2, k)
    label, count = (index_and_one @ onehot).unbind(1)                            # (b, n) each
    if bool((count != 1).any()):                         # a tie: the first nearest centre wins
        labels = scores().min(1).indices
        centre = torch.arange(k, device=Xt1.device).view(1, k, 1)
        return labels, (labels.unsqueeze(1) == centre).to(Xt1.dtype)
    return label.long(), onehot


def _means(X1: torch.Tensor, onehot: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Mean of the points of each cluster; an empty cluster keeps its centre. Implements (km-update).

    ``X1`` is ``(n, d + 1)``, the points with a column of ones appended (:func:`lloyd` appends it
    once), and ``onehot`` ``(b, k, n)`` the assignments: one dense product sums the points of every
    cluster of every restart and counts them (the last column). A product, unlike a scatter-add, is
    deterministic on a GPU.
    """
    b, k, d = centres.shape
    sums = (onehot.reshape(b * k, -1) @ X1).view(b, k, d + 1)
    counts = sums[..., d:]                                                       # (b, k, 1)
    return torch.where(counts > 0, sums[..., :d] / counts.clamp_min(1), centres)


def lloyd(X: torch.Tensor, centres: torch.Tensor, *, max_iter: int = 300, tol: float = 0.0, history: bool = False):
    """Run Lloyd's iterations for a batch of restarts. ``X (n, d)``, ``centres (b, k, d)``, same device and dtype.

    Each iteration is the update step (km-update) followed by the assignment step (km-assign); a
    restart stops when its labels no longer change or its centres move by at most ``tol`` (squared
    Frobenius norm). Finished restarts are carried along unchanged while others still move.

    Returns ``(centres (b, k, d), labels (b, n), inertia (b,), n_iter (b,), trace)``, where ``trace``
    is the list of every iteration's ``(centres, labels)`` if ``history`` else ``None``.
    """
    X = _checks.tensor(X, "X", ndim=2, floating=True)
    centres = _checks.tensor(centres, "centres", ndim=3, last_dim=X.shape[1], floating=True)
    b = centres.shape[0]
    X1 = torch.cat([X, torch.ones_like(X[:, :1])], 1)                            # (n, d + 1)
    Xt1 = X1.new_empty(X1.shape[1], len(X))                                      # (d + 1, n)
    Xt1[:-1], Xt1[-1] = X.T, 1.0
    table = X.new_empty(b * centres.shape[1], X.shape[0])                        # scores, one-hot
    labels, onehot = _assign(Xt1, centres, table)                                # (b, n), (b, k, n)
    # a finished restart's update is discarded below, so its one-hot matrix may go stale
    active = torch.ones(b, dtype=torch.bool, device=X.device)
    n_iter = torch.zeros(b, dtype=torch.long, device=X.device)
    trace = [(centres, labels)] if history else None
    for _ in range(max_iter):
        new = _means(X1, onehot, centres)
        new = torch.where(active.view(b, 1, 1), new, centres)
        shift = (new - centres).square().sum((1, 2))                             # (b,)
        new_labels, onehot = _assign(Xt1, new, table)
        n_iter += active.long()
        changed = (new_labels != labels).any(1)
        labels = torch.where(active.unsqueeze(1), new_labels, labels)
        centres, active = new, active & changed & (shift > tol)
        if history:
            trace.append((centres, labels))
        if not bool(active.any()):
            break
    # each point against its own centre only: n d work, not the n k d of all the distances
    b, k, d = centres.shape
    row = labels + k * torch.arange(b, device=X.device)[:, None]                # (b, n) into (b k)
    own = centres.reshape(b * k, d).index_select(0, row.view(-1)).view(b, -1, d)   # (b, n, d)
    # summed squared differences in one pass (mse_loss with reduction="sum" is exactly that)
    inertia = torch.stack([torch.nn.functional.mse_loss(own[r], X, reduction="sum") for r in range(b)])
    return centres, labels, inertia, n_iter, trace


class KMeans:
    """k-means clustering: Lloyd's coordinate descent on the inertia (km-inertia). Implements (km-assign), (km-update).

    Args:
        n_clusters: number of clusters ``k``.
        init: ``"k-means++"`` (eq. km-pp) or an array of starting centres, ``(k, d)`` for one run or
            ``(n_init, k, d)`` for a batch; passing scikit-learn the same ``(k, d)`` array gives the same run.
        n_init: restarts run together as one batch (ignored when ``init`` is an array); the one with the
            lowest inertia is kept.
        max_iter: iteration limit per restart.
        tol: stop a restart once its centres move by at most ``tol`` in squared norm (``0``: only when
            the labels stop changing).
        generator: CPU ``torch.Generator`` for k-means++ (e.g. from :func:`mlbook.seed_all`).
        device: where to compute (default: ``X``'s device for tensors, :func:`mlbook.get_device` otherwise).
        keep_history: store every iteration's centres and labels of the kept restart in ``history_``.

    Attributes after ``fit``: ``cluster_centers_ (k, d)``, ``labels_ (n,)``, ``inertia_``, ``n_iter_``,
    ``n_features_in_``, ``history_`` (list of ``(centres, labels)``, or ``None``).
    """

    def __init__(self, n_clusters: int = 8, *, init="k-means++", n_init: int = 1, max_iter: int = 300,
                 tol: float = 0.0, generator: torch.Generator | None = None, device=None,
                 keep_history: bool = False):
        self.n_clusters = _checks.integer(n_clusters, "n_clusters", minimum=1)
        if isinstance(init, str):
            _checks.choice(init, "init", ["k-means++"])
        self.init = init
        self.n_init = _checks.integer(n_init, "n_init", minimum=1)
        self.max_iter = _checks.integer(max_iter, "max_iter", minimum=1)
        self.tol = _checks.real(tol, "tol", nonnegative=True)
        self.generator, self.device, self.keep_history = generator, device, bool(keep_history)
        self.cluster_centers_ = self.labels_ = self.inertia_ = self.n_iter_ = None
        self.n_features_in_ = self.history_ = None

    def _initial_centres(self, X: torch.Tensor) -> torch.Tensor:
        n, d = X.shape
        if self.n_clusters > n:
            raise ValueError(f"n_clusters={self.n_clusters} is larger than the number of points ({n})")
        if isinstance(self.init, str):
            return kmeans_plusplus(X, self.n_clusters, n_init=self.n_init, generator=self.generator)
        C = torch.as_tensor(self.init, dtype=X.dtype).to(X.device)
        C = C.unsqueeze(0) if C.ndim == 2 else C
        if C.ndim != 3 or C.shape[1:] != (self.n_clusters, d):
            raise ValueError(f"init must have shape ({self.n_clusters}, {d}) or (n_init, {self.n_clusters}, {d}) "
                             f"for n_clusters={self.n_clusters} and {d} features, got {tuple(C.shape)}")
        if not bool(torch.isfinite(C).all()):
            raise ValueError("init contains NaN or infinite values")
        return C

    def fit(self, X, y=None) -> "KMeans":
        X = _as_data(X, device=self.device)
        C0 = self._initial_centres(X)                                            # (b, k, d)
        mean = X.mean(0)              # work on centred data: |c|^2 - 2 c.x then loses fewer digits
        centres, labels, inertia, n_iter, trace = lloyd(X - mean, C0 - mean, max_iter=self.max_iter,
                                                        tol=self.tol, history=self.keep_history)
        best = int(inertia.argmin())
        self.cluster_centers_, self.labels_ = centres[best] + mean, labels[best]
        self.inertia_, self.n_iter_ = float(inertia[best]), int(n_iter[best])
        self.n_features_in_ = X.shape[1]
        self.history_ = [(c[best] + mean, l[best]) for c, l in trace] if trace is not None else None
        return self

    def predict(self, X) -> torch.Tensor:
        """Index of the nearest centre for each row. Implements (km-assign)."""
        _checks.fitted(self, "cluster_centers_")
        X = _as_data(X, n_features=self.n_features_in_, device=self.cluster_centers_.device)
        return squared_distances(X, self.cluster_centers_).argmin(-1)

    def fit_predict(self, X, y=None) -> torch.Tensor:
        return self.fit(X).labels_

    def transform(self, X) -> torch.Tensor:
        """Euclidean distance from each row to each centre, ``(n, k)``."""
        _checks.fitted(self, "cluster_centers_")
        X = _as_data(X, n_features=self.n_features_in_, device=self.cluster_centers_.device)
        return squared_distances(X, self.cluster_centers_).sqrt()

    def score(self, X, y=None) -> float:
        """Minus the inertia of ``X`` under the fitted centres (higher is better, as in scikit-learn)."""
        return -float(self.transform(X).min(-1).values.square().sum())


# --------------------------------------------------------------------------- hierarchical clustering

LINKAGES = ("single", "complete", "average", "ward")


def _lance_williams(method: str, d_ki, d_kj, d_ij, n_i, n_j, n_k):
    """Distance from cluster k to the union of i and j. Implements (hc-lw-minmax), (hc-lw-average), (hc-ward).

    ``d_ki``, ``d_kj`` and ``n_k`` are NumPy arrays (``k`` runs along them).
    """
    if method == "single":
        return np.minimum(d_ki, d_kj)
    if method == "complete":
        return np.maximum(d_ki, d_kj)
    if method == "average":
        return (n_i * d_ki + n_j * d_kj) / (n_i + n_j)
    total = n_i + n_j + n_k                                                      # ward
    sq = ((n_i + n_k) * d_ki * d_ki + (n_j + n_k) * d_kj * d_kj - n_k * d_ij * d_ij) / total
    return np.sqrt(sq.clip(min=0))


def _greedy(D: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Merge the globally closest pair, n - 1 times: the definition, O(n^3). Returns (pairs, heights).

    ``D`` is the ``(n, n)`` distance matrix with an infinite diagonal; it is overwritten.
    """
    n = len(D)
    size = np.ones(n)
    pairs, heights = np.empty((n - 1, 2), dtype=np.int64), np.empty(n - 1)
    for t in range(n - 1):
        i, j = sorted(divmod(int(D.argmin()), n))
        pairs[t], heights[t] = (i, j), D[i, j]
        _merge(D, size, method, i, j)
    return pairs, heights


def _nn_chain(D: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """The nearest-neighbour chain, O(n^2): the same merges as :func:`_greedy` for reducible linkages.

    Grow a chain in which each cluster is the nearest neighbour of the one before it; when the top's
    nearest neighbour is the cluster just below it (a reciprocal pair), merge the two and carry on
    from what is left of the chain. Ties prefer the cluster below the top, so the chain never cycles.
    Merges come out of height order; :func:`_scipy_layout` sorts them. ``D`` is overwritten.
    """
    n = len(D)
    size = np.ones(n)
    pairs, heights = np.empty((n - 1, 2), dtype=np.int64), np.empty(n - 1)
    chain: list[int] = []
    for t in range(n - 1):
        if not chain:
            chain.append(int(np.flatnonzero(size)[0]))
        while True:
            x = chain[-1]
            row = D[x]
            y = int(row.argmin())
            if len(chain) > 1 and row[chain[-2]] <= row[y]:
                break                                        # reciprocal nearest neighbours
            chain.append(y)
        y = chain.pop()
        x = chain.pop()
        i, j = min(x, y), max(x, y)
        pairs[t], heights[t] = (i, j), D[i, j]
        _merge(D, size, method, i, j)
    return pairs, heights


def _merge(D: np.ndarray, size: np.ndarray, method: str, i: int, j: int) -> None:
    """Merge cluster ``i`` into ``j`` in place: row and column ``j`` get the Lance-Williams distances."""
    new = _lance_williams(method, D[i], D[j], D[i, j], size[i], size[j], size)   # (n,) to every k
    D[j, :] = new
    D[:, j] = new
    D[j, j] = math.inf
    D[i, :] = math.inf                                       # cluster i is gone
    D[:, i] = math.inf
    size[j] += size[i]
    size[i] = 0


def _prim(D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Single linkage as a minimum spanning tree, grown by Prim's algorithm in O(n^2).

    Returns the tree's ``n - 1`` edges ``(parent, child)`` and their lengths; sorted by length they
    are single linkage's merges (the exercise on the page proves it).
    """
    n = len(D)
    reach = D[0].copy()                                      # distance from the tree to each point
    parent = np.zeros(n, dtype=np.int64)
    in_tree = np.zeros(n, dtype=bool)
    in_tree[0] = True
    reach[0] = math.inf
    pairs, heights = np.empty((n - 1, 2), dtype=np.int64), np.empty(n - 1)
    for t in range(n - 1):
        y = int(reach.argmin())
        pairs[t], heights[t] = (parent[y], y), reach[y]
        in_tree[y] = True
        reach[y] = math.inf
        closer = (D[y] < reach) & ~in_tree
        reach[closer] = D[y][closer]
        parent[closer] = y
    return pairs, heights


def _scipy_layout(pairs: np.ndarray, heights: np.ndarray, n: int) -> torch.Tensor:
    """Sort merges by height (stably) and name clusters as SciPy does: merge ``t`` makes id ``n + t``.

    ``pairs`` holds any point of each merged cluster; a union-find maps it to its cluster's id.
    """
    parent = list(range(2 * n - 1))
    size = [1.0] * n + [0.0] * (n - 1)

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    Z = np.empty((n - 1, 4))
    for t, m in enumerate(np.argsort(heights, kind="stable")):
        a, b = sorted((root(int(pairs[m, 0])), root(int(pairs[m, 1]))))
        parent[a] = parent[b] = n + t
        size[n + t] = size[a] + size[b]
        Z[t] = a, b, heights[m], size[n + t]
    return torch.from_numpy(Z)


def linkage(X, method: str = "ward", *, algorithm: str = "fast", device=None) -> torch.Tensor:
    """Agglomerative clustering of the rows of ``X``; returns SciPy's ``(n - 1, 4)`` linkage matrix.

    The definition: start from the Euclidean distances between points and repeatedly merge the
    closest pair of clusters, updating distances to the merged cluster by the Lance-Williams
    formula of ``method`` (``"single"``, ``"complete"``, ``"average"`` or ``"ward"``). Implements
    (hc-lw-minmax), (hc-lw-average) and (hc-ward), the updates of the linkages (hc-single) to
    (hc-average) and of Ward's criterion (hc-ward-delta).

    ``algorithm="greedy"`` follows the definition literally: search the whole distance matrix at
    each of the ``n - 1`` merges, ``O(n^3)`` time. ``"fast"`` (the default) gives the same tree in
    ``O(n^2)``: a minimum spanning tree (Prim's algorithm) for single linkage, and for the other
    three the nearest-neighbour chain, which is exact because these linkages are reducible
    (proposition hc-chain). Both need ``O(n^2)`` memory. The distances are computed on ``device``;
    the merging loop, sequential by nature, runs in NumPy on the CPU.

    Row ``t`` of the result is ``[a, b, height, size]``: clusters ``a < b`` merged at ``height``
    into a cluster of ``size`` points that gets id ``n + t`` (points are ids ``0 .. n-1``), the
    layout of ``scipy.cluster.hierarchy.linkage``.
    """
    method = _checks.choice(method, "method", LINKAGES)
    algorithm = _checks.choice(algorithm, "algorithm", ("fast", "greedy"))
    X = _as_data(X, device=device)
    n = X.shape[0]
    if n < 2:
        raise ValueError(f"linkage needs at least 2 points, got {n}")
    D = squared_distances(X, X).sqrt_().cpu().numpy()                             # (n, n)
    np.fill_diagonal(D, math.inf)
    if algorithm == "greedy":
        pairs, heights = _greedy(D, method)
    elif method == "single":
        pairs, heights = _prim(D)
    else:
        pairs, heights = _nn_chain(D, method)
    return _scipy_layout(pairs, heights, n)


def cut(Z, n_clusters: int) -> torch.Tensor:
    """Flat cluster labels ``0 .. n_clusters-1`` from a linkage matrix: undo its last ``n_clusters - 1`` merges.

    This is cutting the dendrogram at a height between the ``(n - n_clusters)``-th and the next merge.
    Labels are numbered in order of each cluster's first point, so the result does not depend on ids.
    """
    Z = torch.as_tensor(Z, dtype=torch.float64).cpu()
    if Z.ndim != 2 or Z.shape[1] != 4:
        raise ValueError(f"Z must be a linkage matrix of shape (n - 1, 4), got {tuple(Z.shape)}")
    n = Z.shape[0] + 1
    k = _checks.integer(n_clusters, "n_clusters", minimum=1)
    if k > n:
        raise ValueError(f"n_clusters={k} is larger than the number of points ({n})")
    parent = list(range(2 * n - 1))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for t in range(n - k):
        a, b = int(Z[t, 0]), int(Z[t, 1])
        parent[root(a)] = parent[root(b)] = n + t
    roots = [root(p) for p in range(n)]
    number: dict[int, int] = {}
    return torch.tensor([number.setdefault(r, len(number)) for r in roots], dtype=torch.long)


class AgglomerativeClustering:
    """Hierarchical agglomerative clustering, cut into ``n_clusters`` flat clusters.

    Args:
        n_clusters: clusters to return in ``labels_`` (the full tree is kept in ``linkage_matrix_``).
        linkage: ``"single"``, ``"complete"``, ``"average"`` or ``"ward"``.
        device: where to compute (see :class:`KMeans`).

    Attributes after ``fit``: ``labels_ (n,)``, ``linkage_matrix_ (n - 1, 4)`` in SciPy's layout,
    ``n_features_in_``.
    """

    def __init__(self, n_clusters: int = 2, *, linkage: str = "ward", device=None):
        self.n_clusters = _checks.integer(n_clusters, "n_clusters", minimum=1)
        self.linkage = _checks.choice(linkage, "linkage", LINKAGES)
        self.device = device
        self.labels_ = self.linkage_matrix_ = self.n_features_in_ = None

    def fit(self, X, y=None) -> "AgglomerativeClustering":
        X = _as_data(X, device=self.device)
        if self.n_clusters > X.shape[0]:
            raise ValueError(f"n_clusters={self.n_clusters} is larger than the number of points ({X.shape[0]})")
        self.linkage_matrix_ = linkage(X, self.linkage)
        self.labels_ = cut(self.linkage_matrix_, self.n_clusters).to(X.device)
        self.n_features_in_ = X.shape[1]
        return self

    def fit_predict(self, X, y=None) -> torch.Tensor:
        return self.fit(X).labels_


# --------------------------------------------------------------------------- PCA

class PCA:
    """Principal component analysis, the solution of (pca-maxvar). Implements (pca-svd), (pca-eig), (pca-ratio).

    Args:
        n_components: an integer ``1 .. min(n_samples, n_features)``; a float in ``(0, 1)``, the smallest
            number of components whose explained-variance ratios sum to at least it; or ``None`` for all.
        solver: ``"svd"`` (SVD of the centred data, eq. pca-svd), ``"eigh"`` (eigenvectors of the
            ``d x d`` covariance matrix, eq. pca-eig: faster when there are many more rows than
            columns) or ``"gram"`` (eigenvectors of the ``n x n`` Gram matrix, eq. pca-gram: faster
            when there are many more columns than rows).
        whiten: divide the coordinates by their standard deviations, so that the transformed data
            has identity covariance (eq. pca-whiten).
        device: where to compute (see :class:`KMeans`).

    Signs follow scikit-learn's convention: in each component the entry of largest magnitude is positive.
    Attributes after ``fit``: ``components_ (m, d)``, ``explained_variance_ (m,)``,
    ``explained_variance_ratio_ (m,)``, ``singular_values_ (m,)``, ``mean_ (d,)``, ``n_components_``,
    ``n_features_in_``, and ``noise_variance_``, the mean of the discarded eigenvalues: the
    maximum-likelihood noise variance of probabilistic PCA (eq. ppca-sigma), which
    :meth:`score_samples` uses. Variances use the ``n - 1`` denominator, as scikit-learn does.
    """

    def __init__(self, n_components=None, *, solver: str = "svd", whiten: bool = False, device=None):
        if n_components is not None:
            if isinstance(n_components, bool) or not isinstance(n_components, numbers.Real):
                raise TypeError(f"n_components must be an integer, a float in (0, 1) or None, got {n_components!r}")
            if isinstance(n_components, numbers.Integral):
                n_components = _checks.integer(n_components, "n_components", minimum=1)
            elif not 0.0 < float(n_components) < 1.0:
                raise ValueError(f"a fractional n_components must lie in (0, 1), got {n_components}")
        self.n_components = n_components
        self.solver = _checks.choice(solver, "solver", ["svd", "eigh", "gram"])
        self.whiten = bool(whiten)
        self.device = device
        self.components_ = self.explained_variance_ = self.explained_variance_ratio_ = None
        self.singular_values_ = self.mean_ = self.n_components_ = self.n_features_in_ = None
        self.noise_variance_ = None

    def fit(self, X, y=None) -> "PCA":
        X = _as_data(X, device=self.device)
        n, d = X.shape
        if n < 2:
            raise ValueError(f"PCA needs at least 2 samples to estimate a variance, got {n}")
        limit = min(n, d)
        if isinstance(self.n_components, int) and self.n_components > limit:
            raise ValueError(f"n_components={self.n_components} is larger than min(n_samples, n_features) = {limit}")
        mean = X.mean(0)
        Xc = X - mean                                                            # (n, d)
        if self.solver == "svd":
            _, S, Vt = torch.linalg.svd(Xc, full_matrices=False)                 # S (r,), Vt (r, d)
            variance = S.square() / (n - 1)
        elif self.solver == "gram":
            # eq. pca-gram: if (Xc Xc^T) u = s^2 u, then v = Xc^T u / s is a unit eigenvector of
            # Xc^T Xc with the same eigenvalue s^2
            evals, U = torch.linalg.eigh(Xc @ Xc.T)                              # (n,), (n, n)
            evals, U = evals.flip(0)[:limit].clamp_min(0), U.flip(1)[:, :limit]
            S = evals.sqrt()
            keep = S > S[0] * 1e-12                                    # directions with variance
            Vt = torch.zeros(limit, d, dtype=X.dtype, device=X.device)
            Vt[keep] = (Xc.T @ U[:, keep] / S[keep]).T
            variance = evals / (n - 1)
        else:
            evals, evecs = torch.linalg.eigh(Xc.T @ Xc / (n - 1))                # ascending
            variance = evals.flip(0)[:limit].clamp_min(0)
            Vt = evecs.flip(1).T[:limit]
            S = (variance * (n - 1)).sqrt()
        # Sign convention: largest-magnitude entry of each component positive.
        rows = torch.arange(Vt.shape[0], device=Vt.device)
        signs = torch.sign(Vt[rows, Vt.abs().argmax(1)])
        Vt = Vt * torch.where(signs == 0, 1.0, signs).unsqueeze(1)
        if not float(variance.sum()) > 0:
            raise ValueError("X has zero variance (every row is the same): explained-variance ratios are undefined")
        ratio = variance / variance.sum()
        m = self._count(ratio, limit)
        self.components_, self.explained_variance_ = Vt[:m], variance[:m]
        self.explained_variance_ratio_, self.singular_values_ = ratio[:m], S[:m]
        self.mean_, self.n_components_, self.n_features_in_ = mean, m, d
        # eq. ppca-sigma: the mean of the d - m discarded eigenvalues (those beyond min(n, d) are 0)
        self.noise_variance_ = float(variance[m:].sum()) / (d - m) if m < d else 0.0
        return self

    def _count(self, ratio: torch.Tensor, limit: int) -> int:
        if self.n_components is None:
            return limit
        if isinstance(self.n_components, int):
            return self.n_components
        cumulative = ratio.cumsum(0)
        return min(int((cumulative < self.n_components).sum()) + 1, limit)

    def transform(self, X) -> torch.Tensor:
        """Coordinates ``z = V^T (x - mean)`` of each row on the components, ``(n, m)``. Implements (pca-project)."""
        _checks.fitted(self, "components_")
        X = _as_data(X, n_features=self.n_features_in_, device=self.mean_.device)
        Z = (X - self.mean_) @ self.components_.T
        return Z / self.explained_variance_.sqrt() if self.whiten else Z

    def fit_transform(self, X, y=None) -> torch.Tensor:
        return self.fit(X).transform(X)

    def get_covariance(self) -> torch.Tensor:
        """Covariance of probabilistic PCA, ``W W^T + sigma^2 I`` (eq. ppca-cov), ``(d, d)``.

        With ``W = V (Lambda - sigma^2 I)^{1/2}`` (eq. ppca-W) this is ``V (Lambda - sigma^2) V^T + sigma^2 I``.
        """
        _checks.fitted(self, "components_")
        V, lam = self.components_, self.explained_variance_
        eye = torch.eye(self.n_features_in_, dtype=V.dtype, device=V.device)
        return (V.T * (lam - self.noise_variance_)) @ V + self.noise_variance_ * eye

    def score_samples(self, X) -> torch.Tensor:
        """Log-density of each row under probabilistic PCA, ``N(mean, W W^T + sigma^2 I)``, ``(n,)``."""
        _checks.fitted(self, "components_")
        X = _as_data(X, n_features=self.n_features_in_, device=self.mean_.device)
        C = self.get_covariance()
        L = torch.linalg.cholesky(C)
        r = torch.linalg.solve_triangular(L, (X - self.mean_).T, upper=False)   # (d, n)
        logdet = 2 * L.diagonal().log().sum()
        return -0.5 * (r.square().sum(0) + logdet + self.n_features_in_ * math.log(2 * math.pi))

    def score(self, X, y=None) -> float:
        """Mean log-likelihood of the rows under probabilistic PCA (as scikit-learn's ``PCA.score``)."""
        return float(self.score_samples(X).mean())

    def inverse_transform(self, Z) -> torch.Tensor:
        """Reconstruction ``mean + V z`` from ``(n, m)`` coordinates. Implements (pca-reconstruct)."""
        _checks.fitted(self, "components_")
        Z = _as_data(Z, "Z", n_features=self.n_components_, device=self.mean_.device)
        if self.whiten:
            Z = Z * self.explained_variance_.sqrt()
        return Z @ self.components_ + self.mean_


# --------------------------------------------------------------------------- probabilistic PCA

def ppca_em(X, n_components: int, *, n_iter: int = 200, generator: torch.Generator | None = None,
            device=None) -> tuple[torch.Tensor, float, list[float]]:
    """Fit probabilistic PCA ``x = W z + mean + noise`` by EM, without eigendecomposing anything.

    The E step takes the posterior of each code, ``z | x ~ N(M^{-1} W^T (x - mean), sigma^2 M^{-1})``
    with ``M = W^T W + sigma^2 I``; the M step maximises the expected complete-data log-likelihood
    (eqs. ppca-em-W and ppca-em-sigma), written with the covariance ``S`` of the data
    (denominator ``n``). Each iteration cannot lower the likelihood; its fixed point is the closed
    form of eqs. ppca-W and ppca-sigma, which the notebook checks.

    Returns ``(W (d, m), sigma2, log_likelihoods)``: the mean log-likelihood per row after each
    iteration (as a list of floats).
    """
    X = _as_data(X, device=device)
    n, d = X.shape
    m = _checks.integer(n_components, "n_components", minimum=1)
    if m >= d:
        raise ValueError(f"n_components must be smaller than the number of features ({d}), got {m}")
    n_iter = _checks.integer(n_iter, "n_iter", minimum=1)
    Xc = X - X.mean(0)
    S = Xc.T @ Xc / n                                                            # (d, d)
    W = torch.randn(d, m, generator=generator, dtype=torch.float64).to(X)
    sigma2 = float(S.diagonal().mean())
    eye_m, eye_d = torch.eye(m, dtype=X.dtype, device=X.device), torch.eye(d, dtype=X.dtype, device=X.device)
    history = []
    for _ in range(n_iter):
        Minv = torch.linalg.inv(W.T @ W + sigma2 * eye_m)                        # (m, m)
        SW = S @ W                                                               # (d, m)
        W_new = SW @ torch.linalg.inv(sigma2 * eye_m + Minv @ W.T @ SW)          # eq. ppca-em-W
        sigma2 = float(torch.trace(S - SW @ Minv @ W_new.T)) / d                 # eq. ppca-em-sigma
        W = W_new
        C = W @ W.T + sigma2 * eye_d
        _, logdet = torch.linalg.slogdet(C)
        history.append(float(-0.5 * (d * math.log(2 * math.pi) + logdet
                                     + torch.trace(torch.linalg.solve(C, S)))))
    return W, sigma2, history


# --------------------------------------------------------------------------- kernel PCA

def _kernel(A: torch.Tensor, B: torch.Tensor, kernel: str, gamma: float) -> torch.Tensor:
    if kernel == "linear":
        return A @ B.T
    return torch.exp(-gamma * squared_distances(A, B))                          # rbf


class KernelPCA:
    """Kernel PCA: PCA of the features ``phi(x)`` of a kernel, computed from the kernel matrix alone.

    Implements eqs. kpca-centre and kpca-eig: centre the ``n x n`` kernel matrix in feature space,
    ``K~ = K - 1K - K1 + 1K1`` (``1`` the matrix with every entry ``1/n``), take its leading
    eigenvectors ``u_j`` with eigenvalues ``mu_j``, and give a point the coordinates
    ``sum_i u_ij k~(x_i, x) / sqrt(mu_j)``. With the linear kernel this is PCA (the Gram route).

    Args:
        n_components: number of components ``m``.
        kernel: ``"rbf"`` (``exp(-gamma |x - x'|^2)``) or ``"linear"``.
        gamma: the RBF width parameter (default ``1 / d``, as scikit-learn's).
        device: where to compute (see :class:`KMeans`).

    Attributes after ``fit``: ``eigenvalues_ (m,)`` (of the centred kernel matrix), ``alphas_ (n, m)``
    (unit eigenvectors), ``X_fit_``, ``n_features_in_``. Signs: as :class:`PCA`, on ``alphas_``.
    """

    def __init__(self, n_components: int = 2, *, kernel: str = "rbf", gamma: float | None = None, device=None):
        self.n_components, self.kernel, self.gamma, self.device = n_components, kernel, gamma, device
        self.eigenvalues_ = self.alphas_ = self.X_fit_ = self.n_features_in_ = None

    def fit(self, X, y=None) -> "KernelPCA":
        m = _checks.integer(self.n_components, "n_components", minimum=1)
        _checks.choice(self.kernel, "kernel", ["rbf", "linear"])
        X = _as_data(X, device=self.device)
        n, d = X.shape
        if m > n:
            raise ValueError(f"n_components={m} is larger than the number of samples ({n})")
        self._gamma = 1.0 / d if self.gamma is None else _checks.real(self.gamma, "gamma", positive=True)
        K = _kernel(X, X, self.kernel, self._gamma)                                 # (n, n)
        self._col_means, self._mean = K.mean(0), K.mean()
        Kc = K - self._col_means.unsqueeze(0) - self._col_means.unsqueeze(1) + self._mean  # eq. kpca-centre
        evals, evecs = torch.linalg.eigh(Kc)                                      # ascending
        evals, evecs = evals.flip(0)[:m], evecs.flip(1)[:, :m]
        if not bool((evals > evals[0] * 1e-12).all()):
            raise ValueError(f"the centred kernel matrix has fewer than {m} positive eigenvalues")
        signs = torch.sign(evecs[evecs.abs().argmax(0), torch.arange(m, device=evecs.device)])
        self.alphas_ = evecs * torch.where(signs == 0, 1.0, signs)
        self.eigenvalues_, self.X_fit_, self.n_features_in_ = evals, X, d
        return self

    def transform(self, X) -> torch.Tensor:
        """Coordinates of each row on the components, ``(n, m)`` (eq. kpca-project)."""
        _checks.fitted(self, "alphas_")
        X = _as_data(X, n_features=self.n_features_in_, device=self.X_fit_.device)
        K = _kernel(X, self.X_fit_, self.kernel, self._gamma)                      # (n_new, n)
        Kc = K - K.mean(1, keepdim=True) - self._col_means.unsqueeze(0) + self._mean
        return Kc @ self.alphas_ / self.eigenvalues_.sqrt()

    def fit_transform(self, X, y=None) -> torch.Tensor:
        """Coordinates of the training rows: ``u_j sqrt(mu_j)``, with no second kernel evaluation."""
        self.fit(X)
        return self.alphas_ * self.eigenvalues_.sqrt()


# --------------------------------------------------------------------------- choosing k

def silhouette_samples(X, labels) -> torch.Tensor:
    """Silhouette ``s_i = (b_i - a_i) / max(a_i, b_i)`` of every point (eq. km-silhouette), ``(n,)``.

    ``a_i``: mean distance to the other points of its own cluster; ``b_i``: the smallest mean
    distance to the points of another cluster. A point alone in its cluster gets ``0``.
    """
    X = _as_data(X)
    labels = torch.as_tensor(labels, device=X.device).long()
    if labels.shape != (X.shape[0],):
        raise ValueError(f"labels must have shape ({X.shape[0]},), got {tuple(labels.shape)}")
    ids, labels = labels.unique(return_inverse=True)
    k = len(ids)
    if not 2 <= k <= X.shape[0] - 1:
        raise ValueError(f"the silhouette needs 2 to n - 1 clusters, got {k}")
    D = squared_distances(X, X).sqrt()                                           # (n, n)
    onehot = torch.nn.functional.one_hot(labels, k).to(X.dtype)                  # (n, k)
    sums, sizes = D @ onehot, onehot.sum(0)                                      # (n, k), (k,)
    own = sizes[labels]
    a = sums.gather(1, labels.unsqueeze(1)).squeeze(1) / (own - 1).clamp_min(1)
    other = (sums / sizes).masked_fill(onehot.bool(), math.inf)
    b = other.min(1).values
    s = (b - a) / torch.maximum(a, b)
    return torch.where(own > 1, s, torch.zeros_like(s))


def silhouette_score(X, labels) -> float:
    """Mean silhouette of all points (as ``sklearn.metrics.silhouette_score``)."""
    return float(silhouette_samples(X, labels).mean())


def gap_statistic(X, ks, *, n_refs: int = 10, n_init: int = 4, generator: torch.Generator | None = None,
                  device=None) -> dict:
    """The gap statistic of Tibshirani, Walther & Hastie (eqs. gap-def and gap-rule).

    For each ``k`` compares ``log W_k``, the log of the k-means inertia of ``X``, with its mean over
    ``n_refs`` reference sets drawn uniformly in the bounding box of ``X`` (no cluster structure):
    ``gap(k) = mean(log W*_k) - log W_k``, with ``s_k = sd(log W*_k) sqrt(1 + 1/n_refs)``. The rule
    picks the smallest ``k`` with ``gap(k) >= gap(k+1) - s_{k+1}``.

    Returns a dict with ``ks``, ``log_w``, ``log_w_ref``, ``gap``, ``s`` (lists) and ``k`` (the choice,
    or ``None`` if no ``k`` but the last satisfies the rule).
    """
    X = _as_data(X, device=device)
    ks = [_checks.integer(k, "k", minimum=1) for k in ks]
    if ks != sorted(set(ks)) or len(ks) < 2:
        raise ValueError(f"ks must be at least two increasing integers, got {ks}")
    n_refs = _checks.integer(n_refs, "n_refs", minimum=2)
    lo, hi = X.min(0).values, X.max(0).values

    def log_inertia(data: torch.Tensor, k: int) -> float:
        return math.log(KMeans(k, n_init=n_init, generator=generator).fit(data).inertia_)

    log_w, ref, gap, s = [], [], [], []
    for k in ks:
        refs = torch.tensor([log_inertia(lo + (hi - lo) * torch.rand(X.shape, generator=generator,
                                                                    dtype=X.dtype).to(X.device), k)
                             for _ in range(n_refs)])
        log_w.append(log_inertia(X, k))
        ref.append(float(refs.mean()))
        gap.append(ref[-1] - log_w[-1])
        s.append(float(refs.std(correction=0)) * math.sqrt(1 + 1 / n_refs))
    chosen = next((k for i, k in enumerate(ks[:-1]) if gap[i] >= gap[i + 1] - s[i + 1]), None)
    return {"ks": ks, "log_w": log_w, "log_w_ref": ref, "gap": gap, "s": s, "k": chosen}
