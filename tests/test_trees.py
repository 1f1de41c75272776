"""mlbook.trees: CART on hand-checkable data, the two split searches, and the estimators' input checks."""

import math

import numpy as np
import pytest
import torch

from mlbook import trees
from mlbook._checks import NotFittedError

# four points on a line, labels 0 0 1 1: one split at the midpoint 1.5 separates them
X4 = [[0.0], [1.0], [2.0], [3.0]]
Y4 = [0, 0, 1, 1]


def test_one_split_at_the_midpoint_between_neighbours():
    clf = trees.DecisionTreeClassifier().fit(X4, Y4)
    t = clf.tree_
    assert t.feature.tolist() == [0, -1, -1]
    assert t.threshold[0].item() == 1.5
    assert t.n_samples.tolist() == [4, 2, 2]
    # Gini gain of the root, score(L) + score(R) - score(P): 2 + 2 - (4 + 4) / 4 = 2
    assert t.gain[0].item() == pytest.approx(2.0)
    assert clf.predict([[1.4], [1.6]]).tolist() == [0, 1]


def test_gini_picks_the_purer_split_of_a_hand_worked_example():
    # feature 0 separates 3 of 4 cleanly; feature 1 is noise: the root must split on feature 0 at 2.5
    X = [[1, 5], [2, 1], [3, 4], [4, 2], [5, 3]]
    y = [0, 0, 1, 1, 1]
    t = trees.DecisionTreeClassifier(max_depth=1).fit(X, y).tree_
    assert (t.feature[0].item(), t.threshold[0].item()) == (0, 2.5)


def test_regression_leaves_are_means_and_depth_is_respected():
    X = [[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]]
    y = [1.0, 1.0, 1.0, 5.0, 6.0, 7.0]
    reg = trees.DecisionTreeRegressor(max_depth=1).fit(X, y)
    assert reg.tree_.threshold[0].item() == 2.5
    assert reg.predict([[0.5], [4.5]]).tolist() == [1.0, 6.0]
    assert trees.DecisionTreeRegressor().fit(X, y).predict(X).tolist() == y   # grown out: fits exactly


def test_pure_nodes_and_min_samples_leaf_stop_growth():
    clf = trees.DecisionTreeClassifier().fit([[0.0], [1.0], [2.0]], [1, 1, 1])
    assert clf.tree_.n_leaves == 1
    t = trees.DecisionTreeClassifier(min_samples_leaf=2).fit(X4 + [[4.0]], Y4 + [0]).tree_
    assert int(t.n_samples[t.feature < 0].min()) >= 2


def test_class_labels_are_returned_as_given():
    clf = trees.DecisionTreeClassifier().fit(X4, [7, 7, -3, -3])
    assert clf.classes_.tolist() == [-3, 7]
    assert clf.predict([[0.0], [3.0]]).tolist() == [7, -3]
    assert torch.allclose(clf.predict_proba([[0.0]]), torch.tensor([[0.0, 1.0]], dtype=torch.float64))


def test_sample_weight_moves_the_majority():
    X, y = [[0.0], [0.0], [0.0]], [0, 0, 1]
    clf = trees.DecisionTreeClassifier().fit(X, y, sample_weight=[1.0, 1.0, 5.0])
    assert clf.predict([[0.0]]).tolist() == [1]


def test_forest_of_independent_groups_equals_separate_trees():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(60, 3, generator=gen, dtype=torch.float64)
    y = (X[:, 0] + 0.3 * torch.randn(60, generator=gen, dtype=torch.float64) > 0).long()
    crit = trees.Gini(2)
    stats = crit.stats(y, torch.ones(60, dtype=torch.float64))
    both = trees.grow(torch.cat([X, X]), torch.cat([stats, stats]), crit,
                      groups=torch.arange(2).repeat_interleave(60), n_groups=2)
    one = trees.grow(X, stats, crit)
    leaves = trees.apply(both, X)
    assert torch.equal(both.value[leaves[:, 0]], both.value[leaves[:, 1]])
    assert torch.equal(both.value[leaves[:, 0]], one.value[trees.apply(one, X)[:, 0]])


def test_exact_search_reproduces_scikit_learns_tree():
    from sklearn.tree import DecisionTreeClassifier as SkTree

    rng = np.random.RandomState(0)
    X = rng.randn(300, 4)
    y = (X[:, 0] * X[:, 1] + 0.3 * rng.randn(300) > 0).astype(int)
    ours = trees.DecisionTreeClassifier(max_depth=5, min_samples_leaf=5).fit(X, y)
    inner = ours.tree_.feature >= 0
    assert bool((ours.tree_.ties[inner] >= 1).all()) and bool((ours.tree_.ties[~inner] == 0).all())
    ref = SkTree(max_depth=5, min_samples_leaf=5, random_state=0).fit(X, y)
    Xt = rng.randn(2000, 4)
    assert np.array_equal(ours.predict(Xt).numpy(), ref.predict(Xt))
    assert sorted(ours.tree_.threshold[inner].tolist()) == \
        sorted(ref.tree_.threshold[ref.tree_.feature >= 0].tolist())


def test_histogram_splits_lie_on_bin_edges_and_agree_with_exact_on_few_values():
    rng = np.random.RandomState(1)
    X = rng.randint(0, 8, size=(200, 2)).astype(float)            # 8 distinct values: 8 bins are exact
    y = (X[:, 0] > 3).astype(int) ^ (rng.rand(200) < 0.1)
    exact = trees.DecisionTreeClassifier(max_depth=3).fit(X, y)
    hist = trees.DecisionTreeClassifier(max_depth=3, splitter="hist", max_bins=8).fit(X, y)
    assert torch.equal(exact.predict(X), hist.predict(X))
    inner = hist.tree_.feature >= 0
    assert set(hist.tree_.threshold[inner].tolist()) <= set(range(8))
    edges = trees.bin_edges(torch.as_tensor(X), max_bins=4)
    assert edges.shape[0] == 2 and int(torch.isfinite(edges).sum(1).max()) <= 4


def test_histogram_edges_are_the_lower_quantiles_of_each_feature():
    X = torch.as_tensor(np.random.RandomState(2).standard_normal((997, 3)).round(2))   # with ties
    X[::7, 1] = float("nan")                                          # missing values are left out
    edges = trees.bin_edges(X, max_bins=16)
    q = torch.linspace(0, 1, 17, dtype=torch.float64)[1:]
    for j in range(3):
        x = X[:, j][~torch.isnan(X[:, j])]
        want = torch.unique(torch.quantile(x, q, interpolation="lower"))
        assert torch.equal(edges[j, :len(want)], want) and torch.isinf(edges[j, len(want):]).all()


def test_newton_criterion_leaf_and_gain():
    g = torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64)
    h = torch.ones(4, dtype=torch.float64)
    crit = trees.Newton(lam=1.0, gamma=0.1)
    t = trees.grow(torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=torch.float64), crit.stats(g, h), crit,
                   max_depth=1)
    # G_L = -2, H_L = 2: leaf weight -G/(H + lam) = 2/3; gain = (4/3 + 4/3 - 0)/2 - 0.1
    assert t.value[1:, 0].tolist() == pytest.approx([2 / 3, -2 / 3])
    assert t.gain[0].item() == pytest.approx(4 / 3 - 0.1)
    # a gamma larger than the gain forbids the split
    crit = trees.Newton(lam=1.0, gamma=2.0)
    assert trees.grow(torch.tensor([[0.0], [1.0], [2.0], [3.0]], dtype=torch.float64), crit.stats(g, h),
                      crit).n_leaves == 1


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("cls", [trees.DecisionTreeClassifier, trees.DecisionTreeRegressor])
def test_predict_before_fit_raises(cls):
    with pytest.raises(NotFittedError, match="fit"):
        cls().predict(X4)


@pytest.mark.parametrize("cls", [trees.DecisionTreeClassifier, trees.DecisionTreeRegressor])
def test_wrong_feature_count_and_nan_raise(cls):
    est = cls().fit(X4, Y4)
    with pytest.raises(ValueError, match="features"):
        est.predict([[0.0, 1.0]])
    with pytest.raises(ValueError, match="NaN"):
        est.predict([[math.nan]])
    with pytest.raises(ValueError, match="NaN"):
        cls().fit([[0.0], [math.nan]], [0, 1])


def test_bad_targets_and_parameters_raise():
    with pytest.raises(ValueError, match="one entry per row"):
        trees.DecisionTreeClassifier().fit(X4, [0, 1])
    with pytest.raises(ValueError, match="integer class labels"):
        trees.DecisionTreeClassifier().fit(X4, [0.5, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        trees.DecisionTreeRegressor().fit(X4, [0.0, math.nan, 1.0, 2.0])
    with pytest.raises(ValueError, match="sample_weight"):
        trees.DecisionTreeClassifier().fit(X4, Y4, sample_weight=[1.0, -1.0, 1.0, 1.0])
    # scikit-learn's convention: __init__ stores, fit checks
    with pytest.raises(ValueError, match="max_depth"):
        trees.DecisionTreeClassifier(max_depth=0).fit(X4, Y4)
    with pytest.raises(ValueError, match="splitter"):
        trees.DecisionTreeClassifier(splitter="random").fit(X4, Y4)
    with pytest.raises(ValueError, match="criterion"):
        trees.DecisionTreeRegressor(criterion="gini").fit(X4, Y4)
    with pytest.raises(ValueError, match="ccp_alpha"):
        trees.DecisionTreeClassifier(ccp_alpha=-0.1).fit(X4, Y4)
    with pytest.raises(TypeError, match="random_state"):
        trees.DecisionTreeClassifier(random_state=1.5).fit(X4, Y4)


def test_decision_path_marks_root_inner_node_and_leaf():
    clf = trees.DecisionTreeClassifier().fit(X4, Y4)
    path = trees.decision_path(clf.tree_, torch.tensor([[0.0], [3.0]], dtype=torch.float64))
    assert path.tolist() == [[True, True, False], [True, False, True]]


def test_classifier_rejects_nan_labels():
    with pytest.raises(ValueError, match="integer class labels"):
        trees.DecisionTreeClassifier().fit(X4, [0.0, math.nan, 1.0, 1.0])


@pytest.mark.parametrize("cls", [trees.DecisionTreeClassifier, trees.DecisionTreeRegressor])
def test_near_zero_weights_do_not_blow_up_the_gain(cls):
    # rows with weight 1e-17 (as AdaBoost produces) make a right child's sums parent - left pure
    # rounding noise; the gain must stay below the parent's weighted impurity, not reach ~1e266
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        X = torch.rand(200, 5, generator=g, dtype=torch.float64)
        y = (torch.rand(200, generator=g) < 0.5).long()
        w = torch.rand(200, generator=g, dtype=torch.float64)
        w[torch.rand(200, generator=g) < 0.3] = 1e-17
        w /= w.sum()
        target = y if cls is trees.DecisionTreeClassifier else y.double()
        t = cls(max_depth=3).fit(X, target, sample_weight=w).tree_
        assert float(torch.nan_to_num(t.gain, nan=0.0).max()) <= 1.0   # gain <= total weight (= 1)



def _hand_tree() -> trees.Tree:
    """Depth 2 on two features: x0 <= 0.5, then x1 <= 0.3 on the left and x1 <= 0.7 on the right."""
    long = lambda v: torch.tensor(v, dtype=torch.long)                      # noqa: E731
    f64 = lambda v: torch.tensor(v, dtype=torch.float64)                    # noqa: E731
    return trees.Tree(feature=long([0, 1, -1, -1, 1, -1, -1]),
                      threshold=f64([0.5, 0.3, 0, 0, 0.7, 0, 0]),
                      left=long([1, 2, -1, -1, 5, -1, -1]), right=long([4, 3, -1, -1, 6, -1, -1]),
                      value=torch.zeros(7, 1, dtype=torch.float64), n_samples=long([4, 2, 1, 1, 2, 1, 1]),
                      gain=f64([1, 1, 0, 0, 1, 0, 0]), ties=long([1, 1, 0, 0, 1, 0, 0]),
                      roots=long([0]), depth=2)


def test_split_segments_cut_only_the_box_of_their_node():
    segments = trees.split_segments(_hand_tree(), (0.0, 1.0, 0.0, 1.0))
    assert segments == [(0, 0.5, 0.5, 0.0, 1.0),          # the root cuts the whole box
                        (1, 0.0, 0.5, 0.3, 0.3),          # its children cut their half only
                        (1, 0.5, 1.0, 0.7, 0.7)]
    # a threshold outside the drawn area is clipped to it
    assert trees.split_segments(_hand_tree(), (0.0, 1.0, 0.4, 1.0))[1] == (1, 0.0, 0.5, 0.4, 0.4)
    with pytest.raises(ValueError, match="two-feature"):
        X3 = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
        trees.split_segments(trees.DecisionTreeClassifier().fit(X3, [0, 1]).tree_, (0, 1, 0, 1))


def test_draw_splits_draws_one_line_per_split_thinner_with_depth():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    segments = trees.draw_splits(ax, _hand_tree(), (0.0, 1.0, 0.0, 1.0))
    assert len(ax.lines) == len(segments) == 3
    assert ax.lines[0].get_linewidth() > ax.lines[1].get_linewidth()
    assert ax.get_xlim() == (0.0, 1.0)


def _fields(t):
    return [t.feature, t.threshold, t.left, t.right, t.value, t.n_samples, t.ties]


@pytest.mark.parametrize("splitter", ["exact", "hist"])
def test_search_in_chunks_equals_search_in_one_piece(monkeypatch, splitter):
    # Large forests are searched a block of nodes at a time (exact: the running sums carried from
    # block to block), so that no temporary exceeds _MAX_CELLS. A 100-tree forest on 5000 x 20 was
    # the first input big enough to need two blocks, and the tie bookkeeping then indexed the block
    # by the feature number (IndexError). A tiny cell budget forces many blocks here; the trees
    # must not change.
    from sklearn.datasets import make_classification
    X, y = make_classification(300, 20, random_state=0)
    X = torch.as_tensor(X).float().double()
    crit = trees.Gini(2)
    stats = crit.stats(torch.as_tensor(y), torch.ones(300, dtype=torch.float64))
    rows = torch.randint(300, (4 * 300,), generator=torch.Generator().manual_seed(0))
    kw = dict(groups=torch.arange(4).repeat_interleave(300), n_groups=4, max_features=4,
              max_bins=None if splitter == "exact" else 32)
    whole = trees.grow(X[rows], stats[rows], crit, generator=torch.Generator().manual_seed(1), **kw)
    monkeypatch.setattr(trees, "_MAX_CELLS", 4000)          # exact: one node per block
    pieces = trees.grow(X[rows], stats[rows], crit, generator=torch.Generator().manual_seed(1), **kw)
    assert whole.n_leaves > 40
    for a, b in zip(_fields(whole), _fields(pieces)):
        assert torch.equal(a.nan_to_num(-7.0), b.nan_to_num(-7.0))


def test_partition_equals_a_stable_sort_by_child_then_value():
    # Three nodes of 4, 3 and 5 rows, two features, each node's rows sorted by value. Node 0 splits
    # into children 0 and 1, node 1 is a leaf, node 2 splits but its left child is a leaf.
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 3, (12, 2), generator=g)
    node = torch.tensor([0] * 4 + [1] * 3 + [2] * 5)
    order = trees._root_order(codes, 3, torch.arange(12), node)           # (2, 12)
    side = torch.randint(0, 2, (12,), generator=g)                        # 0: left, 1: right
    child = torch.where(node == 0, side, torch.where((node == 2) & (side == 1), 3, -1))
    sizes = torch.bincount(child[child >= 0], minlength=4)
    s_new = int(sizes.sum())
    child_start = sizes.cumsum(0) - sizes
    child_start[2] = s_new                                                # child 2 is a leaf
    child_start = torch.cat([child_start, torch.tensor([s_new, s_new])])
    out = trees._partition(order, node[order[0]], torch.tensor([0, 4, 7]), (1 - side).int(),
                           torch.tensor([0, -1, 2]), child_start, s_new)
    kept = torch.arange(12)[child >= 0]
    for j in range(2):
        expect = kept[torch.sort(child[kept] * 3 + codes[kept, j], stable=True).indices]
        assert out[j].tolist() == expect.tolist()


def test_forest_of_whole_number_statistics_equals_the_general_search():
    # Class counts of unweighted rows are whole numbers: the search then sums only the drawn
    # features and takes the forest's root order from one sort of the distinct rows. Halving the
    # statistics (exact in binary) takes the general path and must give the same trees, gains halved.
    from sklearn.datasets import make_classification
    X, y = make_classification(200, 6, random_state=0)
    X = torch.as_tensor(X).float().double()
    crit = trees.Gini(2)
    stats = crit.stats(torch.as_tensor(y), torch.ones(200, dtype=torch.float64))
    rows = torch.randint(200, (3 * 200,), generator=torch.Generator().manual_seed(0))
    kw = dict(groups=torch.arange(3).repeat_interleave(200), n_groups=3, max_features=2,
              sample_rows=rows)
    whole = trees.grow(X, stats[rows], crit, generator=torch.Generator().manual_seed(1), **kw)
    half = trees.grow(X, stats[rows] / 2, crit, generator=torch.Generator().manual_seed(1), **kw)
    assert whole.n_leaves > 20
    for a, b in zip([whole.feature, whole.threshold, whole.n_samples, whole.ties],
                    [half.feature, half.threshold, half.n_samples, half.ties]):
        assert torch.equal(a.nan_to_num(-7.0), b.nan_to_num(-7.0))
    assert torch.equal(whole.gain.nan_to_num(-7.0), (2 * half.gain).nan_to_num(-7.0))


def test_entropy_tree_equals_scikit_learns():
    from sklearn.datasets import make_classification
    from sklearn.tree import DecisionTreeClassifier as SkTree
    X, y = make_classification(300, 5, n_informative=3, n_classes=3, random_state=0)
    ours = trees.DecisionTreeClassifier(criterion="entropy", max_depth=5).fit(X, y)
    sk = SkTree(criterion="entropy", max_depth=5, random_state=0).fit(X, y)
    assert ours.tree_.n_leaves == sk.get_n_leaves()
    assert np.array_equal(ours.predict(X).numpy(), sk.predict(X))
    root = ours.tree_
    # information gain of the root = N I(parent) - N_L I(L) - N_R I(R), from the stored impurities
    w, imp = root.weight, root.impurity
    l, r = int(root.left[0]), int(root.right[0])
    assert root.gain[0].item() == pytest.approx(float(w[0] * imp[0] - w[l] * imp[l] - w[r] * imp[r]))
    assert imp[0].item() == pytest.approx(sk.tree_.impurity[0])


@pytest.mark.parametrize("criterion", ["gini", "entropy"])
def test_pruning_path_and_pruned_tree_equal_scikit_learns(criterion):
    from sklearn.datasets import make_classification
    from sklearn.tree import DecisionTreeClassifier as SkTree
    X, y = make_classification(200, 5, n_informative=3, random_state=1, flip_y=0.1)
    ours = trees.DecisionTreeClassifier(criterion=criterion)
    sk = SkTree(criterion=criterion, random_state=0)
    path, sk_path = ours.cost_complexity_pruning_path(X, y), sk.cost_complexity_pruning_path(X, y)
    assert len(path["ccp_alphas"]) == len(sk_path.ccp_alphas) > 5
    assert np.allclose(path["ccp_alphas"].numpy(), sk_path.ccp_alphas, rtol=1e-9, atol=1e-12)
    assert np.allclose(path["impurities"].numpy(), sk_path.impurities, rtol=1e-9, atol=1e-12)
    mid = len(sk_path.ccp_alphas) // 2              # half-way between two steps of the path
    alpha = float(sk_path.ccp_alphas[mid:mid + 2].mean())
    pruned = trees.DecisionTreeClassifier(criterion=criterion, ccp_alpha=alpha).fit(X, y)
    sk_pruned = SkTree(criterion=criterion, ccp_alpha=alpha, random_state=0).fit(X, y)
    assert pruned.tree_.n_leaves == sk_pruned.get_n_leaves() < ours.fit(X, y).tree_.n_leaves
    assert np.array_equal(pruned.predict(X).numpy(), sk_pruned.predict(X))


def test_regression_pruning_and_tree_importances_equal_scikit_learns():
    from sklearn.datasets import make_friedman1
    from sklearn.tree import DecisionTreeRegressor as SkTree
    X, y = make_friedman1(150, noise=1.0, random_state=0)
    ours = trees.DecisionTreeRegressor(max_depth=6, min_samples_leaf=5)
    sk = SkTree(max_depth=6, min_samples_leaf=5, random_state=0)
    path, sk_path = ours.cost_complexity_pruning_path(X, y), sk.cost_complexity_pruning_path(X, y)
    assert np.allclose(path["ccp_alphas"].numpy(), sk_path.ccp_alphas, rtol=1e-7, atol=1e-10)
    ours.fit(X, y)
    sk.fit(X, y)
    assert np.allclose(ours.feature_importances_.numpy(), sk.feature_importances_, atol=1e-10)


def test_pruning_rejects_a_forest():
    y, w = torch.rand(20, dtype=torch.float64), torch.ones(20, dtype=torch.float64)
    forest = trees.grow(torch.rand(20, 2, dtype=torch.float64), trees.SquaredError.stats(y, w),
                        trees.SquaredError(), groups=torch.arange(20) % 2, n_groups=2)
    with pytest.raises(ValueError, match="single tree"):
        trees.pruning_path(forest)


def test_weighted_quantile_bins_put_equal_weight_in_every_bin():
    x = torch.arange(1, 101, dtype=torch.float64)[:, None]              # values 1..100
    w = torch.where(x[:, 0] > 80, 9.0, 1.0).double()                     # the top 20 carry 180 of 260
    plain = trees.bin_edges(x, 4)[0].tolist()
    weighted = trees.bin_edges(x, 4, w)[0].tolist()
    assert plain == [25.0, 50.0, 75.0, 100.0]
    # weight at or below each edge reaches 65, 130, 195, 260: edges 65, 86, 93, 100
    assert weighted == [65.0, 86.0, 93.0, 100.0]


# ------------------------------------------------------------------ missing values (NaN), Newton only

def _newton_tree(X, y, **kw):
    """One second-order tree for squared loss from F = 0 (g = -y, k = 1), lam = 0."""
    X, y = torch.tensor(X, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    return trees.grow(X, trees.Newton.stats(-y, torch.ones_like(y)), trees.Newton(0.0), **kw)


@pytest.mark.parametrize("max_bins", [None, 8])
@pytest.mark.parametrize("y_missing, left", [(1.0, False), (0.0, True)])
def test_missing_rows_learn_the_side_they_belong_to(max_bins, y_missing, left):
    # present x = 0 1 2 3 with y = 0 0 1 1; two missing rows whose y is 1 (they belong right) or 0
    X = [[0.0], [1.0], [2.0], [3.0], [math.nan], [math.nan]]
    y = [0.0, 0.0, 1.0, 1.0, y_missing, y_missing]
    t = _newton_tree(X, y, max_depth=1, max_bins=max_bins)
    assert t.feature.tolist() == [0, -1, -1] and t.missing_left.tolist() == [left, False, False]
    assert t.threshold[0].item() == (1.5 if max_bins is None else 1.0)
    # eq. ens-xgb-missing with G = -sum y, K = rows, cut at 1.5: the right side for y_missing = 1
    # gives (1/2)(0 + 4^2/4 - 4^2/6) = 2/3 (the left side only 1/6); for y_missing = 0 the left
    # side gives (1/2)(0 + 2^2/2 - 2^2/6) = 2/3 (the right side (1/2)(0 + 4/4 - 4/6) = 1/6)
    want = 0.5 * (16 / 4 - 16 / 6) if y_missing else 0.5 * (0 + 4 / 2 - 4 / 6)
    assert t.gain[0].item() == pytest.approx(want)
    leaf = trees.apply(t, torch.tensor([[math.nan], [0.5], [2.5]], dtype=torch.float64))[:, 0]
    assert leaf.tolist() == ([1] if left else [2]) + [1, 2]


@pytest.mark.parametrize("max_bins", [None, 16])
def test_without_missing_values_the_tree_is_unchanged(max_bins):
    # a column that is missing everywhere offers no cut: the tree on the other columns must be the
    # tree grown without it, field by field, with every default direction "right"
    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 4, generator=g, dtype=torch.float64)
    y = (X[:, 0] + X[:, 1] ** 2 + 0.3 * torch.randn(300, generator=g, dtype=torch.float64) > 1).double()
    p = torch.full_like(y, 0.4)
    stats, crit = trees.Newton.stats(p - y, p * (1 - p)), trees.Newton(1.0)
    plain = trees.grow(X, stats, crit, max_depth=4, max_bins=max_bins)
    assert plain.missing_left is None
    padded = trees.grow(torch.cat([X, torch.full((300, 1), math.nan, dtype=torch.float64)], 1),
                        stats, crit, max_depth=4, max_bins=max_bins)
    for f in ("feature", "left", "right", "value", "n_samples", "ties"):
        assert torch.equal(getattr(plain, f), getattr(padded, f)), f
    for f in ("threshold", "gain"):
        assert torch.equal(getattr(plain, f).nan_to_num(-1.0), getattr(padded, f).nan_to_num(-1.0)), f
    assert not padded.missing_left.any()


def test_missing_values_raise_where_no_direction_is_learned():
    X = torch.tensor([[0.0], [math.nan], [1.0]], dtype=torch.float64)
    y, w = torch.tensor([0, 1, 1]), torch.ones(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="missing values"):
        trees.grow(X, trees.Gini(2).stats(y, w), trees.Gini(2))
    with pytest.raises(ValueError, match="missing values"):
        trees.grow(X, trees.SquaredError.stats(y.double(), w), trees.SquaredError())
