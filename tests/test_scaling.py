"""mlbook.scaling: the scaled network, its FLOPs, the scaling strategies and the frontier fit."""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mlbook import scaling as sc
from helpers import gen


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("MLBOOK_PROGRESS", "0")
    monkeypatch.delenv("MLBOOK_DEVICE", raising=False)


def counted(config):
    model = sc.ScaledCNN(config)
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 1, config.resolution, config.resolution))
    return counter.get_total_flops()


@pytest.mark.parametrize("d, w, r", [(1, 1, 1), (1, 4, 6), (2, 4, 4), (3, 7, 8), (5, 2, 3)])
def test_flops_equal_torchs_flop_counter(d, w, r):
    assert sc.flops(d, w, r) == counted(sc.Config(d, w, r)) == sc.Config(d, w, r).flops


def test_flops_grow_like_depth_width_squared_resolution_squared():
    # the w^2 term dominates for wide nets: doubling w nearly quadruples, doubling r quadruples
    assert sc.flops(3, 8, 8) == 4 * sc.flops(3, 8, 4)
    assert 3.9 < sc.flops(3, 256, 4) / sc.flops(3, 128, 4) < 4.0
    assert 1.95 < (sc.flops(9, 256, 4) - sc.flops(1, 256, 4)) / (sc.flops(5, 256, 4) - sc.flops(1, 256, 4)) < 2.05


def test_network_maps_images_to_logits_and_rejects_other_shapes():
    net = sc.ScaledCNN(sc.Config(2, 3, 5))
    assert net(torch.zeros(7, 1, 5, 5)).shape == (7, 10)
    with pytest.raises(ValueError, match=r"takes images of shape \(n, 1, 5, 5\), got \(7, 1, 8, 8\)"):
        net(torch.zeros(7, 1, 8, 8))


def test_downsample_averages_and_refuses_to_upsample():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(sc.downsample(x, 2), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    assert torch.equal(sc.downsample(x, 4), x)
    with pytest.raises(ValueError, match="upsampling adds pixels but no information"):
        sc.downsample(x, 5)


@pytest.mark.parametrize("strategy", sc.STRATEGIES)
@pytest.mark.parametrize("mult", [1, 2, 4, 8])
def test_scale_stays_within_the_budget_and_grows_only_its_dimensions(strategy, mult):
    base = sc.Config(1, 4, 6)
    budget = mult * base.flops
    c = sc.scale(strategy, budget, base=base)
    assert c.flops <= budget and c.resolution <= 8
    assert c.depth >= base.depth and c.width >= base.width and c.resolution >= base.resolution
    others = {"depth": ("width", "resolution"), "width": ("depth", "resolution"),
              "resolution": ("depth", "width"), "compound": ()}[strategy]
    for f in others:
        assert getattr(c, f) == getattr(base, f)


def test_single_dimension_scaling_takes_the_largest_step_that_fits():
    base = sc.Config(1, 4, 6)
    c = sc.scale("width", 4 * base.flops, base=base)
    assert sc.Config(1, c.width + 1, 6).flops > 4 * base.flops
    assert sc.scale("resolution", 100 * base.flops, base=base) == sc.Config(1, 4, 8)   # capped


def test_compound_scaling_grows_every_dimension_with_the_budget():
    base = sc.Config(1, 4, 4)
    small, large = (sc.scale("compound", m * base.flops, base=base) for m in (4, 64))
    assert large.depth > small.depth and large.width > small.width
    assert large.resolution > small.resolution


def test_fit_frontier_recovers_a_power_law():
    f = torch.tensor([1e3, 4e3, 1.6e4, 6.4e4], dtype=torch.float64)
    acc = 1 - 2.0 * f ** -0.3
    a, b = sc.fit_frontier(f, acc)
    assert a == pytest.approx(2.0, rel=1e-9) and b == pytest.approx(0.3, rel=1e-9)


def test_experiment_rows_cover_budgets_strategies_and_seeds():
    x = torch.rand(64, 1, 8, 8, generator=gen())
    y = torch.randint(0, 10, (64,), generator=gen(1))
    base = sc.Config(1, 2, 4)
    rows = sc.scaling_experiment(x, y, x, y, budgets=[base.flops, 2 * base.flops],
                                 strategies=["width", "compound"], seeds=[0, 1], steps=2,
                                 batch_size=16, base=base, device="cpu")
    assert len(rows) == 8
    assert all(r["flops"] <= r["budget"] and 0 <= r["accuracy"] <= 1 for r in rows)
    again = sc.scaling_experiment(x, y, x, y, budgets=[base.flops], strategies=["width"],
                                  seeds=[0], steps=2, batch_size=16, base=base, device="cpu")
    assert again[0]["accuracy"] == rows[0]["accuracy"]                 # seeded


def test_check_flops_passes_the_count_and_fails_wrong_ones():
    def right(d, w, r):
        return 2 * r * r * (9 * w + 9 * (d - 1) * w * w + 10 * w)

    def macs_only(d, w, r):                                           # forgot the factor 2
        return r * r * (9 * w + 9 * (d - 1) * w * w + 10 * w)

    def no_head(d, w, r):
        return 2 * r * r * (9 * w + 9 * (d - 1) * w * w)

    assert sc.check_flops(right)
    assert not sc.check_flops(macs_only)
    assert not sc.check_flops(no_head)
    assert not sc.check_flops(lambda d, w, r: float(right(d, w, r)))  # FLOPs are whole numbers


@pytest.mark.parametrize("call, error, match", [
    (lambda: sc.flops(0, 4, 4), ValueError, "depth must be >= 1"),
    (lambda: sc.flops(1, 4.0, 4), TypeError, "width must be an integer"),
    (lambda: sc.Config(1, 4, 0), ValueError, "resolution must be >= 1"),
    (lambda: sc.ScaledCNN((1, 4, 4)), TypeError, "config must be a Config"),
    (lambda: sc.scale("height", 1e5), ValueError, "strategy must be one of"),
    (lambda: sc.scale("width", 10.0), ValueError, "below the base network's"),
    (lambda: sc.downsample(torch.zeros(2, 8, 8), 4), ValueError, "must have 4 dimensions"),
    (lambda: sc.fit_frontier([1.0], [0.5]), ValueError, "at least two"),
    (lambda: sc.fit_frontier([1.0, 2.0], [0.5, 1.0]), ValueError, r"\[0, 1\)"),
    (lambda: sc.fit_frontier([3.0, 3.0], [0.5, 0.6]), ValueError, "no slope"),
    (lambda: sc.scaling_experiment(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long),
                                   torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long),
                                   budgets=[]), ValueError, "non-empty"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_paper_coefficients_about_double_the_flops_per_unit_phi():
    assert math.isclose(sc.PAPER_COEFFICIENTS[0] * sc.PAPER_COEFFICIENTS[1] ** 2
                        * sc.PAPER_COEFFICIENTS[2] ** 2, 1.92, abs_tol=0.01)   # about 2 per phi
