"""The shared argument checks: estimators' input validation and the not-fitted guard."""

import numpy as np
import pytest
import torch

from mlbook import _checks


def test_features_converts_arrays_and_lists():
    X = _checks.features(np.arange(6).reshape(3, 2))
    assert X.dtype == torch.float64 and X.shape == (3, 2)
    assert torch.equal(_checks.features([[1, 2]]), torch.tensor([[1.0, 2.0]], dtype=torch.float64))


@pytest.mark.parametrize("bad, message", [
    (np.zeros(3), "must be 2-D"),
    (np.zeros((0, 2)), "is empty"),
    (np.array([[1.0, np.nan]]), "NaN or infinite"),
    (np.array([[1.0, np.inf]]), "NaN or infinite"),
    ([["a", "b"]], "2-D array of numbers"),
])
def test_features_rejects_bad_input(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        _checks.features(bad, "X")


def test_features_accepts_huge_finite_values_and_rejects_cancelling_infinities():
    big = np.full((4, 2), 1e308)                                 # finite, but their sum overflows
    assert torch.equal(_checks.features(big), torch.as_tensor(big))
    with pytest.raises(ValueError, match="NaN or infinite"):     # inf - inf: the sum is NaN
        _checks.features(np.array([[np.inf, -np.inf]]))


def test_features_checks_the_feature_count_seen_in_fit():
    with pytest.raises(ValueError, match="has 3 features, but the estimator was fitted with 2"):
        _checks.features(torch.zeros(4, 3), n_features=2)


def test_fitted_guard_names_the_estimator():
    class Model:
        coef_ = None

    with pytest.raises(_checks.NotFittedError, match="this Model is not fitted yet"):
        _checks.fitted(Model(), "coef_")
    m = Model()
    m.coef_ = 1.0
    _checks.fitted(m, "coef_")
