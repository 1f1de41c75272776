"""mlbook.plot: the style defaults and the drawing helpers."""

import matplotlib as mpl
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from mlbook import plot


@pytest.fixture
def ax():
    return Figure().add_subplot()


def test_use_style_sets_the_book_defaults():
    with mpl.rc_context():
        plot.use_style()
        assert mpl.rcParams["axes.grid"] is True
        assert mpl.rcParams["axes.prop_cycle"].by_key()["color"] == plot.COLORS
        plot.use_style()                                          # idempotent
        assert tuple(mpl.rcParams["figure.figsize"]) == (7.0, 3.2)


def test_density_image_shows_exp_log_prob_with_x_across_and_y_up(ax):
    extent = (-1.0, 2.0, -3.0, 0.0)
    res = 7
    im = plot.density_image(ax, lambda g: g[:, 0] - 2 * g[:, 1], extent=extent, resolution=res)
    arr = np.asarray(im.get_array())
    xs, ys = np.linspace(-1, 2, res), np.linspace(-3, 0, res)
    expected = np.exp(xs[None, :] - 2 * ys[:, None])              # rows are y, columns are x
    np.testing.assert_allclose(arr, expected, rtol=1e-5)
    assert im.origin == "lower"
    assert tuple(im.get_extent()) == extent


def test_scatter_plots_the_first_two_columns(ax):
    x = torch.arange(12.0, requires_grad=True).reshape(4, 3)
    coll = plot.scatter(ax, x, color="red")
    np.testing.assert_array_equal(coll.get_offsets(), x.detach()[:, :2].numpy())
    assert coll.get_alpha() == 0.5


def test_bars_groups_one_bar_per_series_around_each_category(ax):
    series = {"a": torch.tensor([0.2, 0.8], dtype=torch.float64), "b": [0.5, 0.5], "c": np.array([1.0, 0.0])}
    containers = plot.bars(ax, series, ["y0", "y1"], title="t")
    assert len(containers) == 3
    width = 0.8 / 3
    for i, (bar_set, heights) in enumerate(zip(containers, series.values())):
        np.testing.assert_allclose([r.get_height() for r in bar_set], np.asarray(heights, dtype=float))
        centres = [r.get_x() + r.get_width() / 2 for r in bar_set]
        np.testing.assert_allclose(centres, np.arange(2) + (i - 1) * width)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["y0", "y1"]
    assert ax.get_ylabel() == "probability" and ax.get_title() == "t"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "c"]


def test_bars_rejects_a_series_of_the_wrong_length(ax):
    with pytest.raises(ValueError, match="one per category"):
        plot.bars(ax, {"a": [0.1, 0.2, 0.7]}, ["y0", "y1"])
