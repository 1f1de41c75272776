"""Speed of the book's library beside the libraries a practitioner would use (`make bench`).

One run, same data, one thread each (so the ratio compares algorithms, not core counts), and
each pair's results checked equal in the same run. Prints one line per comparison: the best of a
few timings for each side and the ratio ours / theirs. Exit status 1 if any pair disagrees;
speed itself is reported, never asserted.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import sys                                                     # noqa: E402
from collections.abc import Callable                           # noqa: E402

import numpy as np                                             # noqa: E402
import torch                                                   # noqa: E402

from mlbook.report import best_of                               # noqa: E402

torch.set_num_threads(1)


ROWS: list[tuple[str, str, float, float, bool | None, str]] = []   # None: timed, not compared


def compare(what: str, settings: str, ours, theirs, agree: Callable[[object, object], tuple[bool, str]],
            repeats: int = 3) -> None:
    t_ours, t_theirs = best_of(ours, repeats), best_of(theirs, repeats)
    r_ours, r_theirs = ours(), theirs()          # the results compared (one more run each)
    ok, detail = agree(r_ours, r_theirs)
    ROWS.append((what, settings, t_ours, t_theirs, ok, detail))
    verdict = "not compared" if ok is None else "agree" if ok else "DISAGREE"
    print(f"{what:34s} {t_ours * 1e3:9.1f} ms {t_theirs * 1e3:9.1f} ms {t_ours / t_theirs:7.2f}x"
          f"  {verdict}: {detail}   [{settings}]", flush=True)


def bench_unsupervised() -> None:
    from scipy.cluster.hierarchy import linkage as scipy_linkage
    from sklearn.cluster import KMeans as SkKMeans
    from sklearn.datasets import make_blobs
    from sklearn.decomposition import PCA as SkPCA

    from mlbook.unsupervised import PCA, KMeans, linkage

    X, _ = make_blobs(20_000, 16, centers=10, random_state=0)
    start = X[np.random.default_rng(0).choice(len(X), 10, replace=False)]
    Xt, st = torch.as_tensor(X), torch.as_tensor(start)

    def inertia_close(a, b):
        return abs(a - b) <= 1e-6 * abs(b), f"inertia {a:.6g} / {b:.6g}"

    compare("k-means, 20 Lloyd iterations", "make_blobs(20000, 16, centers=10), same start",
            lambda: KMeans(10, init=st, max_iter=20, device="cpu").fit(Xt).inertia_,
            lambda: SkKMeans(10, init=start, n_init=1, max_iter=20, tol=0.0,
                             algorithm="lloyd").fit(X).inertia_, inertia_close)

    Y = np.random.default_rng(1).standard_normal((5000, 64)) @ np.diag(np.linspace(3, 0.1, 64))
    compare("PCA, 10 components", "5000 x 64 Gaussian",
            lambda: PCA(10, device="cpu").fit(torch.as_tensor(Y)).explained_variance_.numpy(),
            lambda: SkPCA(10, svd_solver="full").fit(Y).explained_variance_,
            lambda a, b: (bool(np.allclose(a, b, rtol=1e-8)), "explained variances equal"))

    Z, _ = make_blobs(1500, 8, centers=5, random_state=0)
    for method in ("ward", "average", "complete", "single"):
        compare(f"{method} linkage", "make_blobs(1500, 8, centers=5)",
                lambda m=method: linkage(torch.as_tensor(Z), m, device="cpu")[:, 2].numpy(),
                lambda m=method: scipy_linkage(Z, m)[:, 2],
                lambda a, b: (bool(np.allclose(np.sort(a), np.sort(b), rtol=1e-9)), "merge heights equal"),
                repeats=3)


def bench_svm() -> None:
    from sklearn.datasets import make_moons
    from sklearn.svm import SVC as SkSVC

    from mlbook.svm import SVC

    X, y = make_moons(2000, noise=0.2, random_state=0)
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)

    def same_predictions(a, b):
        share = float((a == b).mean())
        return share >= 0.995, f"{share:.1%} identical predictions"

    compare("SVC, RBF kernel", "make_moons(2000, noise=0.2), C=1, gamma=1",
            lambda: SVC(C=1.0, gamma=1.0, device="cpu").fit(Xt, yt).predict(Xt).numpy(),
            lambda: SkSVC(C=1.0, gamma=1.0).fit(X, y).predict(X),
            same_predictions, repeats=1)


def bench_ensembles() -> None:
    from sklearn.datasets import make_classification, make_regression
    from sklearn.ensemble import GradientBoostingRegressor as SkGB
    from sklearn.ensemble import HistGradientBoostingRegressor as SkHGB
    from sklearn.ensemble import RandomForestClassifier as SkRF

    from mlbook import ensembles as ens

    X, y = make_classification(2000, 20, random_state=0)
    Xt, yt = torch.as_tensor(X[:1500]), torch.as_tensor(y[:1500])
    held_out = torch.as_tensor(X[1500:])

    def accuracy_close(a, b):                  # on 500 held-out rows: training rows fit perfectly
        acc_a, acc_b = float((a == y[1500:]).mean()), float((b == y[1500:]).mean())
        return abs(acc_a - acc_b) <= 0.03, f"held-out accuracy {acc_a:.3f} / {acc_b:.3f}"

    compare("random forest, 20 trees", "make_classification(2000, 20), 1500 to fit",
            lambda: ens.RandomForestClassifier(20, seed=0, device="cpu").fit(Xt, yt)
            .predict(held_out).numpy(),
            lambda: SkRF(20, random_state=0, n_jobs=1).fit(X[:1500], y[:1500]).predict(X[1500:]),
            accuracy_close, repeats=1)

    R, t = make_regression(2000, 10, noise=5, random_state=0)
    Rt, tt = torch.as_tensor(R), torch.as_tensor(t)

    def mse_close(a, b):
        mse_a, mse_b = float(((a - t) ** 2).mean()), float(((b - t) ** 2).mean())
        return abs(mse_a - mse_b) <= 0.02 * mse_b, f"training MSE {mse_a:.1f} / {mse_b:.1f}"

    compare("gradient boosting, exact splits", "make_regression(2000, 10), 100 trees, depth 3",
            lambda: ens.GradientBoostingRegressor(100, device="cpu").fit(Rt, tt).predict(Rt).numpy(),
            lambda: SkGB(n_estimators=100, max_depth=3).fit(R, t).predict(R),
            mse_close, repeats=1)
    compare("gradient boosting, histograms", "make_regression(2000, 10), 100 trees, depth 3",
            lambda: ens.GradientBoostingRegressor(100, splitter="hist", device="cpu")
            .fit(Rt, tt).predict(Rt).numpy(),
            lambda: SkHGB(max_iter=100, max_depth=3, early_stopping=False).fit(R, t).predict(R),
            lambda a, b: (None, mse_close(a, b)[1] + " (the binning rules differ)"),
            repeats=1)


def main() -> int:
    print(f"{'comparison':34s} {'mlbook':>12s} {'theirs':>12s} {'ratio':>8s}  (one thread each)")
    for part in (bench_unsupervised, bench_svm, bench_ensembles):
        part()
    bad = [r[0] for r in ROWS if r[4] is False]
    if bad:
        print(f"results disagree: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
