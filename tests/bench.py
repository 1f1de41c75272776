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
    from sklearn.datasets import make_classification, make_moons
    from sklearn.svm import SVC as SkSVC

    from mlbook.svm import SVC

    def same_signs(a, b):                        # decision values on the training rows
        share = float((np.sign(a) == np.sign(b)).mean())
        return share == 1.0, f"{share:.1%} of decision signs equal"

    X, y = make_classification(2000, 20, random_state=0)
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    compare("SVC, RBF kernel", "make_classification(2000, 20), C=1, gamma=0.05, tol=1e-3",
            lambda: SVC(C=1.0, gamma=0.05, tol=1e-3, device="cpu").fit(Xt, yt)
            .decision_function(Xt).numpy(),
            lambda: SkSVC(C=1.0, gamma=0.05, tol=1e-3).fit(X, y).decision_function(X),
            same_signs, repeats=3)

    M, m = make_moons(2000, noise=0.2, random_state=0)
    Mt, mt = torch.as_tensor(M), torch.as_tensor(m)
    def nearly_same_signs(a, b):                 # a point or two sit on the boundary to within tol
        differ = int((np.sign(a) != np.sign(b)).sum())
        return differ <= 0.005 * len(a), f"{differ} of {len(a)} decision signs differ"

    compare("SVC, RBF kernel, moons", "make_moons(2000, noise=0.2), C=1, gamma=1",
            lambda: SVC(C=1.0, gamma=1.0, device="cpu").fit(Mt, mt).decision_function(Mt).numpy(),
            lambda: SkSVC(C=1.0, gamma=1.0).fit(M, m).decision_function(M),
            nearly_same_signs, repeats=3)


def bench_ensembles() -> None:
    from sklearn.datasets import make_classification, make_regression
    from sklearn.ensemble import GradientBoostingRegressor as SkGB
    from sklearn.ensemble import HistGradientBoostingRegressor as SkHGB
    from sklearn.ensemble import RandomForestClassifier as SkRF

    from mlbook import ensembles as ens

    X, y = make_classification(5000, 20, random_state=0)
    Xt, yt = torch.as_tensor(X[:4000]), torch.as_tensor(y[:4000])
    held_out = torch.as_tensor(X[4000:])

    def accuracy_close(a, b):                  # on 1000 held-out rows: training rows fit perfectly
        acc_a, acc_b = float((a == y[4000:]).mean()), float((b == y[4000:]).mean())
        return abs(acc_a - acc_b) <= 0.01, f"held-out accuracy {acc_a:.3f} / {acc_b:.3f}"

    compare("random forest, 100 trees", "make_classification(5000, 20), 4000 to fit",
            lambda: ens.RandomForestClassifier(100, random_state=0, device="cpu").fit(Xt, yt)
            .predict(held_out).numpy(),
            lambda: SkRF(100, random_state=0, n_jobs=1).fit(X[:4000], y[:4000]).predict(X[4000:]),
            accuracy_close, repeats=1)

    R, t = make_regression(5000, 10, noise=5, random_state=0)
    Rt, tt = torch.as_tensor(R), torch.as_tensor(t)

    def mse_close(a, b):
        mse_a, mse_b = float(((a - t) ** 2).mean()), float(((b - t) ** 2).mean())
        return abs(mse_a - mse_b) <= 0.02 * mse_b, f"training MSE {mse_a:.1f} / {mse_b:.1f}"

    compare("gradient boosting, exact splits", "make_regression(5000, 10), 100 trees, depth 3",
            lambda: ens.GradientBoostingRegressor(100, device="cpu").fit(Rt, tt).predict(Rt).numpy(),
            lambda: SkGB(n_estimators=100, max_depth=3).fit(R, t).predict(R),
            mse_close, repeats=1)
    compare("gradient boosting, histograms", "make_regression(5000, 10), 100 trees, depth 3",
            lambda: ens.GradientBoostingRegressor(100, splitter="hist", device="cpu")
            .fit(Rt, tt).predict(Rt).numpy(),
            lambda: SkHGB(max_iter=100, max_depth=3, early_stopping=False).fit(R, t).predict(R),
            mse_close, repeats=1)


def bench_distributed() -> None:
    """Data-parallel training (the distributed chapter): two gloo workers against one process.

    Same global batch, so the same training run: the per-step time of one process with batch
    2B against two workers with B each (speed-up = their ratio), and the share of a two-worker
    step that one all-reduce of the gradient takes (timed alone, so an upper bound on what DDP
    cannot hide behind the backward pass). The final parameters of the chapter's digits run
    are checked equal (to 1e-5) between one and two workers.
    """
    import json
    import tempfile

    from mlbook import distributed as dd

    args = ("bench", "--steps", 30, "--batch", 512, "--width", 256)
    one, two = (json.loads(dd.launch(n, *args).strip().splitlines()[-1]) for n in (1, 2))
    with tempfile.TemporaryDirectory() as d:
        for n in (1, 2):
            dd.launch(n, "train", "--batch", 64, "--steps", 40, "--out", f"{d}/{n}.pt")
        p1, p2 = (torch.load(f"{d}/{n}.pt")["params"] for n in (1, 2))
    gap = float((p1 - p2).abs().max())
    share = two["allreduce_s"] / two["step_s"]
    detail = (f"speed-up {one['step_s'] / two['step_s']:.2f}x, all-reduce of "
              f"{two['params']} gradients {two['allreduce_s'] * 1e3:.2f} ms = {share:.0%} of a "
              f"step; digits run: parameters equal to {gap:.1e}")
    ok = gap < 1e-5
    ROWS.append(("DDP step, 2 workers / 1 process", "MLP 64-256-256-10, global batch 512",
                 two["step_s"], one["step_s"], ok, detail))
    print(f"{'DDP step, 2 workers / 1 process':34s} {two['step_s'] * 1e3:9.1f} ms "
          f"{one['step_s'] * 1e3:9.1f} ms {two['step_s'] / one['step_s']:7.2f}x  "
          f"{'agree' if ok else 'DISAGREE'}: {detail}   [gloo on the CPU, one thread per worker]",
          flush=True)


def main() -> int:
    print(f"{'comparison':34s} {'mlbook':>12s} {'theirs':>12s} {'ratio':>8s}  (one thread each)")
    for part in (bench_unsupervised, bench_svm, bench_ensembles, bench_distributed):
        part()
    bad = [r[0] for r in ROWS if r[4] is False]
    if bad:
        print(f"results disagree: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
