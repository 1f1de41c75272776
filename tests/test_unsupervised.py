"""mlbook.unsupervised: k-means, agglomerative clustering and PCA against exact small cases and SciPy/scikit-learn."""

import numpy as np
import pytest
import torch
from scipy.cluster.hierarchy import fcluster
from scipy.cluster.hierarchy import linkage as scipy_linkage
from sklearn.cluster import KMeans as SkKMeans
from sklearn.decomposition import PCA as SkPCA

from mlbook import _checks
from mlbook import unsupervised as U
from helpers import gen, t64

# Two tight pairs far apart, plus a fifth point: every clustering below is known by hand.
POINTS = t64([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0], [5.0, 20.0]])


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0], [6.0, 6.0]])
    return np.concatenate([c + rng.normal(size=(40, 2)) for c in centres])        # (160, 2)


# ------------------------------------------------------------------ k-means

def test_kmeans_exact_small_case():
    km = U.KMeans(2, init=t64([[0.0, 0.0], [10.0, 0.0]])).fit(POINTS[:4])
    assert km.labels_.tolist() == [0, 0, 1, 1]
    assert torch.equal(km.cluster_centers_, t64([[0.0, 0.5], [10.0, 0.5]]))
    assert km.inertia_ == pytest.approx(4 * 0.25, abs=1e-12)                     # eq. (km-inertia)
    assert km.predict([[1.0, 0.0], [9.0, 3.0]]).tolist() == [0, 1]
    np.testing.assert_allclose(km.transform([[0.0, 0.5]]).numpy(), [[0.0, 10.0]], atol=1e-12)


def test_kmeans_one_step_moves_centres_to_means():
    km = U.KMeans(2, init=t64([[0.0, 0.0], [0.0, 1.0]]), max_iter=1).fit(POINTS[:4])
    # Assignment from these centres: {p0, p2} -> 0, {p1, p3} -> 1; the update takes their means.
    assert torch.equal(km.cluster_centers_, t64([[5.0, 0.0], [5.0, 1.0]]))
    assert km.n_iter_ == 1


def test_kmeans_matches_scikit_learn_from_the_same_centres(blobs):
    init = blobs[[0, 1, 2, 3]]                                                   # all in one blob: a hard start
    ours = U.KMeans(4, init=init).fit(blobs)
    ref = SkKMeans(4, init=init, n_init=1, tol=0.0, algorithm="lloyd").fit(blobs)
    assert np.array_equal(ours.labels_.numpy(), ref.labels_)
    np.testing.assert_allclose(ours.cluster_centers_.numpy(), ref.cluster_centers_, rtol=1e-12, atol=1e-12)
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-12)


def test_kmeans_inertia_never_increases(blobs):
    km = U.KMeans(4, init=blobs[:4], keep_history=True).fit(blobs)
    X = torch.as_tensor(blobs)
    inertias = [float(U.squared_distances(X, c).gather(1, lab.unsqueeze(1)).sum()) for c, lab in km.history_]
    assert len(inertias) == km.n_iter_ + 1
    assert all(b <= a + 1e-9 for a, b in zip(inertias, inertias[1:]))            # coordinate descent
    assert inertias[-1] == pytest.approx(km.inertia_)


def test_kmeans_batch_keeps_the_best_restart(blobs):
    batch = U.KMeans(4, n_init=8, generator=gen(3)).fit(blobs)
    singles = U.kmeans_plusplus(torch.as_tensor(blobs), 4, n_init=8, generator=gen(3))
    each = [U.KMeans(4, init=c).fit(blobs).inertia_ for c in singles]
    assert batch.inertia_ == pytest.approx(min(each), rel=1e-12)


def test_kmeans_plusplus_is_seeded_and_picks_distinct_points():
    X = torch.as_tensor(np.random.default_rng(1).normal(size=(50, 3)))
    a = U.kmeans_plusplus(X, 5, n_init=3, generator=gen(0))
    b = U.kmeans_plusplus(X, 5, n_init=3, generator=gen(0))
    assert a.shape == (3, 5, 3) and torch.equal(a, b)
    for run in a:                                  # rows of X, never the same one twice (weight 0)
        idx = [int((X == c).all(1).nonzero()) for c in run]
        assert len(set(idx)) == 5


def test_kmeans_plusplus_spreads_over_far_clusters():
    # Each of 3 far-apart tight clusters must get a centre: the D^2 weight of a covered cluster is tiny.
    rng = np.random.default_rng(2)
    X = torch.as_tensor(np.concatenate([c + 1e-3 * rng.normal(size=(30, 2)) for c in [(0, 0), (100, 0), (0, 100)]]))
    C = U.kmeans_plusplus(X, 3, n_init=20, generator=gen(1))                     # (20, 3, 2)
    groups = (C[..., 0] > 50).long() + 2 * (C[..., 1] > 50).long()
    assert all(sorted(g.tolist()) == [0, 1, 2] for g in groups)


def test_kmeans_plusplus_with_duplicate_points_does_not_fail():
    C = U.kmeans_plusplus(torch.ones(4, 2, dtype=torch.float64), 3, generator=gen(0))
    assert torch.equal(C, torch.ones(1, 3, 2, dtype=torch.float64))


def test_cluster_means_from_the_one_hot_product():
    X = torch.as_tensor(np.random.default_rng(9).normal(size=(40, 3)))
    labels = torch.randint(5, (3, 40), generator=gen(0))
    labels[:, :5] = torch.arange(5)                                                # every cluster non-empty
    labels[2] = labels[2].clamp(max=3)                                           # restart 2: cluster 4 empty
    centres = torch.zeros(3, 5, 3, dtype=torch.float64)
    onehot = (labels.unsqueeze(1) == torch.arange(5).view(1, 5, 1)).double()      # (3, 5, 40)
    a = U._means(torch.cat([X, torch.ones(40, 1, dtype=X.dtype)], 1), onehot, centres)
    for r in range(3):
        for j in range(5):
            members = X[labels[r] == j]
            want = members.mean(0) if len(members) else centres[r, j]
            torch.testing.assert_close(a[r, j], want, rtol=1e-12, atol=1e-12)


def test_assignment_is_argmin_and_breaks_ties_to_the_first_centre():
    X = torch.as_tensor(np.random.default_rng(3).normal(size=(50, 2)))
    C = torch.as_tensor(np.random.default_rng(4).normal(size=(2, 4, 2)))
    labels, onehot = U._assign(torch.cat([X, torch.ones(50, 1, dtype=X.dtype)], 1).T.contiguous(), C)
    assert torch.equal(labels, U.squared_distances(X, C).argmin(-1))
    assert torch.equal(onehot.argmax(1), labels) and torch.equal(onehot.sum(1), torch.ones(2, 50).double())
    C[0, 3] = C[0, 1]                                    # centres 1 and 3 coincide: every tie goes to 1
    labels, onehot = U._assign(torch.cat([X, torch.ones(50, 1, dtype=X.dtype)], 1).T.contiguous(), C)
    assert (labels[0] == 1).any() and not (labels[0] == 3).any()
    assert torch.equal(onehot.sum(1), torch.ones(2, 50).double())              # one centre per point
    assert torch.equal(onehot.argmax(1), labels)


def test_kmeans_empty_cluster_keeps_its_centre():
    km = U.KMeans(2, init=t64([[0.0, 0.5], [100.0, 100.0]])).fit(POINTS[:2])
    assert km.labels_.tolist() == [0, 0]
    assert torch.equal(km.cluster_centers_[1], t64([100.0, 100.0]))


@pytest.mark.parametrize("make, error, message", [
    (lambda: U.KMeans(6).fit(POINTS), ValueError, "n_clusters=6 is larger than the number of points"),
    (lambda: U.KMeans(0), ValueError, "n_clusters must be >= 1"),
    (lambda: U.KMeans(2, init="random"), ValueError, "init must be one of"),
    (lambda: U.KMeans(2, init=np.zeros((3, 2))).fit(POINTS), ValueError, r"init must have shape \(2, 2\)"),
    (lambda: U.KMeans(2, init=np.full((2, 2), np.nan)).fit(POINTS), ValueError, "init contains NaN"),
    (lambda: U.KMeans(2).fit(np.zeros(5)), ValueError, "must be 2-D"),
    (lambda: U.KMeans(2).fit([[1.0, np.nan]] * 3), ValueError, "NaN or infinite"),
    (lambda: U.KMeans(2, tol=-1.0), ValueError, "tol must be >= 0"),
    (lambda: U.kmeans_plusplus(POINTS, 9), ValueError, "larger than the number of points"),
])
def test_kmeans_rejects_bad_input(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_kmeans_predict_before_fit_and_wrong_width():
    with pytest.raises(_checks.NotFittedError, match="not fitted yet"):
        U.KMeans(2).predict(POINTS)
    km = U.KMeans(2, generator=gen(0)).fit(POINTS)
    with pytest.raises(ValueError, match="has 3 features, but the estimator was fitted with 2"):
        km.predict(np.zeros((1, 3)))


# ------------------------------------------------------------------ hierarchical clustering

def test_linkage_exact_small_case_single():
    Z = U.linkage(POINTS[:4], "single")
    # Pairs (0,1) and (2,3) merge at height 1, then the two pairs (ids 5 and 4... as SciPy numbers them) at 10.
    assert Z[:, 2].tolist() == [1.0, 1.0, 10.0]
    assert Z[:, 3].tolist() == [2.0, 2.0, 4.0]
    assert Z[:2, :2].tolist() == [[0.0, 1.0], [2.0, 3.0]] and Z[2, :2].tolist() == [4.0, 5.0]


def test_linkage_ward_height_by_hand():
    # Ward between singletons is their distance; two pairs of size 2 with centroids 10 apart merge
    # at sqrt(2 * n_a n_b / (n_a + n_b)) * 10 = sqrt(2) * 10 (the sqrt of twice the inertia increase).
    Z = U.linkage(POINTS[:4], "ward")
    np.testing.assert_allclose(Z[:, 2].numpy(), [1.0, 1.0, np.sqrt(2) * 10], rtol=1e-14)


@pytest.mark.parametrize("method", U.LINKAGES)
def test_linkage_matches_scipy(method, blobs):
    Z = U.linkage(blobs, method).numpy()
    ref = scipy_linkage(blobs, method)
    np.testing.assert_allclose(Z[:, 2], ref[:, 2], rtol=1e-12, atol=1e-12)
    assert np.array_equal(Z[:, [0, 1, 3]], ref[:, [0, 1, 3]])                     # continuous data: no ties


@pytest.mark.parametrize("method", U.LINKAGES)
def test_fast_linkage_is_the_greedy_definition(method, blobs):
    # The nearest-neighbour chain (and Prim's tree for single linkage) against the O(n^3) search
    # of the whole matrix: the same merges, the same heights.
    fast = U.linkage(blobs, method).numpy()
    greedy = U.linkage(blobs, method, algorithm="greedy").numpy()
    np.testing.assert_allclose(fast[:, 2], greedy[:, 2], rtol=1e-12, atol=1e-12)
    assert np.array_equal(fast[:, [0, 1, 3]], greedy[:, [0, 1, 3]])


@pytest.mark.parametrize("method", U.LINKAGES)
def test_linkage_with_ties(method):
    # Points on an integer grid: many equal distances, so which pair merges first is a choice and
    # different choices give different trees (Ward's heights then differ from SciPy's). What holds
    # for every choice: heights never decrease, and single linkage's heights are the lengths of
    # a minimum spanning tree, whose multiset does not depend on ties.
    grid = np.array([[i, j] for i in range(6) for j in range(5)], dtype=float)
    ours = U.linkage(grid, method).numpy()
    assert np.all(np.diff(ours[:, 2]) >= 0) and ours[-1, 3] == len(grid)
    if method == "single":
        np.testing.assert_allclose(ours[:, 2], scipy_linkage(grid, method)[:, 2], rtol=1e-12)


@pytest.mark.parametrize("method", U.LINKAGES)
def test_linkage_matches_scipy_on_a_thousand_points(method):
    X = np.random.default_rng(3).standard_normal((1000, 5)) * [1, 2, 3, 1, 1]
    Z = U.linkage(X, method).numpy()
    ref = scipy_linkage(X, method)
    np.testing.assert_allclose(Z[:, 2], ref[:, 2], rtol=1e-10)
    assert np.array_equal(Z[:, [0, 1, 3]], ref[:, [0, 1, 3]])


@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_cut_matches_scipy_fcluster(k, blobs):
    Z = U.linkage(blobs, "ward")
    ours = U.cut(Z, k).numpy()
    ref = fcluster(scipy_linkage(blobs, "ward"), k, criterion="maxclust")
    # Same partition up to renaming: the pairs (our label, scipy label) are a bijection.
    assert len(set(ours)) == k and len(set(zip(ours, ref))) == k


def test_agglomerative_estimator(blobs):
    model = U.AgglomerativeClustering(4, linkage="average").fit(blobs)
    ref = fcluster(scipy_linkage(blobs, "average"), 4, criterion="maxclust")
    assert len(set(zip(model.labels_.tolist(), ref))) == 4                       # SciPy's partition
    assert model.linkage_matrix_.shape == (159, 4)
    shift = np.repeat([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0], [50.0, 50.0]], 40, axis=0)
    tight = U.AgglomerativeClustering(4).fit(blobs * 0.1 + shift)
    assert len(set(zip(tight.labels_.tolist(), np.repeat(np.arange(4), 40)))) == 4   # separated blobs recovered


@pytest.mark.parametrize("make, message", [
    (lambda: U.linkage(POINTS, "centroid"), "method must be one of"),
    (lambda: U.linkage(POINTS[:1]), "at least 2 points"),
    (lambda: U.linkage(POINTS, algorithm="nn-chain"), "algorithm must be one of"),
    (lambda: U.AgglomerativeClustering(6).fit(POINTS), "n_clusters=6 is larger than the number of points"),
    (lambda: U.AgglomerativeClustering(2, linkage="median"), "linkage must be one of"),
    (lambda: U.cut(torch.zeros(3, 3), 2), "linkage matrix of shape"),
    (lambda: U.cut(U.linkage(POINTS), 6), "larger than the number of points"),
])
def test_hierarchical_rejects_bad_input(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ------------------------------------------------------------------ PCA

def test_pca_exact_small_case():
    # Points on the line y = 2x: one component along (1, 2)/sqrt(5) carries all the variance.
    X = t64([[-1.0, -2.0], [0.0, 0.0], [1.0, 2.0], [2.0, 4.0]])
    pca = U.PCA().fit(X)
    np.testing.assert_allclose(pca.components_[0].numpy(), np.array([1.0, 2.0]) / np.sqrt(5), atol=1e-12)
    np.testing.assert_allclose(pca.explained_variance_ratio_.numpy(), [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(pca.explained_variance_[0].item(), 5 * np.var([-1, 0, 1, 2], ddof=1), rtol=1e-12)
    assert pca.n_components_ == 2


@pytest.mark.parametrize("solver", ["svd", "eigh"])
def test_pca_matches_scikit_learn(solver, blobs):
    X = np.random.default_rng(3).normal(size=(60, 5)) @ np.random.default_rng(4).normal(size=(5, 5))
    ours, ref = U.PCA(3, solver=solver).fit(X), SkPCA(3).fit(X)
    np.testing.assert_allclose(ours.explained_variance_ratio_.numpy(), ref.explained_variance_ratio_, rtol=1e-10)
    np.testing.assert_allclose(ours.explained_variance_.numpy(), ref.explained_variance_, rtol=1e-10)
    np.testing.assert_allclose(ours.components_.numpy(), ref.components_, atol=1e-10)   # same signs
    np.testing.assert_allclose(ours.transform(X).numpy(), ref.transform(X), atol=1e-9)


def test_pca_components_are_orthonormal_and_scores_decorrelated():
    X = np.random.default_rng(5).normal(size=(200, 4)) * [3.0, 2.0, 1.0, 0.5]
    pca = U.PCA().fit(X)
    V, Z = pca.components_, pca.transform(X)
    np.testing.assert_allclose((V @ V.T).numpy(), np.eye(4), atol=1e-12)
    cov = np.cov(Z.numpy(), rowvar=False)                                        # eq. (pca-decorrelated)
    np.testing.assert_allclose(cov, np.diag(pca.explained_variance_.numpy()), atol=1e-10)


def test_pca_full_reconstruction_is_exact_and_error_equals_dropped_variance():
    X = np.random.default_rng(6).normal(size=(100, 6))
    full = U.PCA().fit(X)
    np.testing.assert_allclose(full.inverse_transform(full.transform(X)).numpy(), X, atol=1e-12)
    two = U.PCA(2).fit(X)
    err = ((two.inverse_transform(two.transform(X)).numpy() - X) ** 2).sum() / (len(X) - 1)
    assert err == pytest.approx(float(full.explained_variance_[2:].sum()), rel=1e-10)   # eq. (pca-error)


def test_pca_fractional_n_components():
    X = np.random.default_rng(7).normal(size=(300, 3)) * [10.0, 3.0, 1.0]
    ratios = U.PCA().fit(X).explained_variance_ratio_
    first = float(ratios[0])
    assert U.PCA(first - 1e-6).fit(X).n_components_ == 1
    assert U.PCA(first + 1e-6).fit(X).n_components_ == 2
    assert U.PCA(0.999999).fit(X).n_components_ == 3


@pytest.mark.parametrize("make, error, message", [
    (lambda: U.PCA(5).fit(np.zeros((10, 4))), ValueError, r"n_components=5 is larger than min\(n_samples, n_features\) = 4"),
    (lambda: U.PCA(0), ValueError, "n_components must be >= 1"),
    (lambda: U.PCA(1.5), ValueError, r"fractional n_components must lie in \(0, 1\)"),
    (lambda: U.PCA("all"), TypeError, "n_components must be an integer"),
    (lambda: U.PCA(True), TypeError, "n_components must be an integer"),
    (lambda: U.PCA(solver="qr"), ValueError, "solver must be one of"),
    (lambda: U.PCA().fit([[1.0, 2.0]]), ValueError, "at least 2 samples"),
    (lambda: U.PCA().fit([[1.0, np.inf], [0.0, 0.0]]), ValueError, "NaN or infinite"),
    (lambda: U.PCA(0.9).fit(np.ones((5, 3))), ValueError, "zero variance"),
])
def test_pca_rejects_bad_input(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_pca_not_fitted_and_wrong_widths():
    with pytest.raises(_checks.NotFittedError):
        U.PCA().transform(np.zeros((2, 2)))
    pca = U.PCA(2).fit(np.random.default_rng(8).normal(size=(10, 3)))
    with pytest.raises(ValueError, match="X has 2 features, but the estimator was fitted with 3"):
        pca.transform(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="Z has 3 features, but the estimator was fitted with 2"):
        pca.inverse_transform(np.zeros((1, 3)))


def test_tensor_input_keeps_its_device_and_results_are_float64():
    X = torch.randn(20, 3, generator=gen(0))                                     # float32 on the CPU
    pca = U.PCA(2).fit(X)
    assert pca.components_.dtype == torch.float64 and pca.components_.device == X.device


def test_kmeans_score_and_fit_predict(blobs):
    km = U.KMeans(4, init=blobs[:4])
    labels = km.fit_predict(blobs)
    assert torch.equal(labels, km.labels_) and torch.equal(km.predict(blobs), labels)
    assert km.score(blobs) == pytest.approx(-km.inertia_, rel=1e-12)


def test_pca_wide_data_both_solvers_agree():
    X = np.random.default_rng(10).normal(size=(8, 20))                           # fewer rows than columns
    a, b = U.PCA(solver="svd").fit(X), U.PCA(solver="eigh").fit(X)
    assert a.n_components_ == b.n_components_ == 8
    np.testing.assert_allclose(a.explained_variance_ratio_[:7].numpy(), b.explained_variance_ratio_[:7].numpy(), rtol=1e-8)
    np.testing.assert_allclose(a.components_[:7].numpy(), b.components_[:7].numpy(), atol=1e-7)
    assert float(a.explained_variance_ratio_[7]) < 1e-12                          # rank n - 1 after centring


# ------------------------------------------------------------------ PCA variants, PPCA, kernel PCA

@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    return load_digits().data[:300]                                               # (300, 64)


@pytest.mark.parametrize("solver", ["svd", "eigh", "gram"])
def test_whitened_pca_matches_scikit_learn(solver, digits):
    ours = U.PCA(8, solver=solver, whiten=True).fit(digits)
    ref = SkPCA(8, whiten=True).fit(digits)
    np.testing.assert_allclose(ours.transform(digits).numpy(), ref.transform(digits), atol=1e-10)
    Z = ours.transform(digits)
    np.testing.assert_allclose(torch.cov(Z.T).numpy(), np.eye(8), atol=1e-10)    # identity covariance
    np.testing.assert_allclose(ours.inverse_transform(Z).numpy(), ref.inverse_transform(Z.numpy()),
                               atol=1e-9)


def test_gram_solver_when_features_outnumber_samples():
    X = np.random.default_rng(0).standard_normal((20, 300))                       # d > n
    gram = U.PCA(10, solver="gram").fit(X)
    svd = U.PCA(10).fit(X)
    np.testing.assert_allclose(gram.components_.numpy(), svd.components_.numpy(), atol=1e-10)
    np.testing.assert_allclose(gram.explained_variance_.numpy(), svd.explained_variance_.numpy(), rtol=1e-10)
    assert U.PCA(solver="gram").fit(X).n_components_ == 20


def test_probabilistic_pca_likelihood_matches_scikit_learn(digits):
    ours, ref = U.PCA(10).fit(digits), SkPCA(10).fit(digits)
    assert ours.noise_variance_ == pytest.approx(ref.noise_variance_, rel=1e-12)
    np.testing.assert_allclose(ours.get_covariance().numpy(), ref.get_covariance(), atol=1e-10)
    assert ours.score(digits) == pytest.approx(ref.score(digits), rel=1e-12)


def test_ppca_em_reaches_the_closed_form(digits):
    W, sigma2, history = U.ppca_em(digits, 6, n_iter=300, generator=gen(0))
    Xc = digits - digits.mean(0)
    evals = np.sort(np.linalg.eigvalsh(Xc.T @ Xc / len(digits)))[::-1]
    assert sigma2 == pytest.approx(evals[6:].mean(), rel=1e-6)       # the mean of the discarded ones
    assert all(b >= a - 1e-9 for a, b in zip(history, history[1:]))  # EM never lowers the likelihood
    # W W^T is the closed form's: V (Lambda - sigma^2) V^T on the top 6 eigenvectors
    V = np.linalg.eigh(Xc.T @ Xc / len(digits))[1][:, ::-1][:, :6]
    want = (V * (evals[:6] - evals[6:].mean())) @ V.T
    np.testing.assert_allclose((W @ W.T).numpy(), want, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("kernel, gamma", [("rbf", 1e-3), ("linear", None)])
def test_kernel_pca_matches_scikit_learn(kernel, gamma, digits):
    from sklearn.decomposition import KernelPCA as SkKernelPCA
    ours = U.KernelPCA(5, kernel=kernel, gamma=gamma).fit(digits)
    ref = SkKernelPCA(5, kernel=kernel, gamma=gamma).fit(digits)
    np.testing.assert_allclose(ours.eigenvalues_.numpy(), ref.eigenvalues_, rtol=1e-9)
    new = digits[:40] + 0.5
    A, B = ours.transform(new).numpy(), ref.transform(new)
    np.testing.assert_allclose(np.abs(A), np.abs(B), atol=1e-8)           # up to a sign per column
    np.testing.assert_allclose(ours.fit_transform(digits).numpy(), ours.transform(digits).numpy(),
                               atol=1e-8)


def test_linear_kernel_pca_is_pca(digits):
    Z = U.KernelPCA(4, kernel="linear").fit_transform(digits).numpy()
    P = U.PCA(4).fit_transform(digits).numpy()
    np.testing.assert_allclose(np.abs(Z), np.abs(P), atol=1e-8)


def test_silhouette_matches_scikit_learn(blobs):
    from sklearn.metrics import silhouette_samples as sk_samples, silhouette_score as sk_score
    labels = U.KMeans(4, generator=gen(0)).fit(blobs).labels_.numpy()
    np.testing.assert_allclose(U.silhouette_samples(blobs, labels).numpy(), sk_samples(blobs, labels),
                               atol=1e-9)                      # scikit-learn's distances round more
    labels[0] = 9                                                            # a singleton cluster scores 0
    assert U.silhouette_score(blobs, labels) == pytest.approx(sk_score(blobs, labels), abs=1e-9)


def test_gap_statistic_finds_four_blobs():
    from sklearn.datasets import make_blobs
    X, _ = make_blobs(300, 4, centers=4, random_state=0)
    result = U.gap_statistic(X, [1, 2, 3, 4, 5, 6], n_refs=8, generator=gen(0))
    assert result["k"] == 4
    assert result["gap"][3] > result["gap"][0] + 1.0


@pytest.mark.parametrize("call, message", [
    (lambda: U.PCA(solver="lanczos"), "solver must be one of"),
    (lambda: U.ppca_em(POINTS, 2), "smaller than the number of features"),
    (lambda: U.KernelPCA(2, kernel="poly").fit(POINTS), "kernel must be one of"),
    (lambda: U.KernelPCA(9).fit(POINTS), "larger than the number of samples"),
    (lambda: U.KernelPCA(2).transform(POINTS), "not fitted"),
    (lambda: U.silhouette_score(POINTS, [0, 0, 0, 0, 0]), "2 to n - 1 clusters"),
    (lambda: U.silhouette_score(POINTS, [0, 1]), "labels must have shape"),
    (lambda: U.gap_statistic(POINTS, [3, 2]), "increasing"),
])
def test_new_estimators_reject_bad_input(call, message):
    with pytest.raises((ValueError, TypeError, RuntimeError), match=message):
        call()
