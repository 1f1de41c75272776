"""mlbook.device: where tensors live, seeding, device-independent random draws."""

import random

import numpy as np
import pytest
import torch

import mlbook
from mlbook import device as dv

CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def no_device_env(monkeypatch):
    monkeypatch.delenv(dv.ENV_VAR, raising=False)


def _fake_hardware(monkeypatch, *, cuda: bool, mps: bool):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(dv, "_mps_available", lambda: mps)


# ------------------------------------------------------------------ get_device: resolution order

def test_env_var_name_is_mlbook_device():
    assert dv.ENV_VAR == "MLBOOK_DEVICE"


def test_package_reexports_get_device_and_seed_all():
    assert mlbook.get_device is dv.get_device
    assert mlbook.seed_all is dv.seed_all


@pytest.mark.parametrize("cuda, mps, expected", [
    (True, True, "cuda"),     # CUDA first
    (True, False, "cuda"),
    (False, True, "mps"),     # then Apple MPS
    (False, False, "cpu"),    # then the CPU
])
def test_default_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    _fake_hardware(monkeypatch, cuda=cuda, mps=mps)
    assert dv.get_device() == torch.device(expected)


def test_env_var_overrides_the_automatic_choice(monkeypatch):
    _fake_hardware(monkeypatch, cuda=True, mps=True)
    monkeypatch.setenv("MLBOOK_DEVICE", "cpu")
    assert dv.get_device() == torch.device("cpu")


def test_argument_overrides_the_env_var(monkeypatch):
    monkeypatch.setenv("MLBOOK_DEVICE", "gpu0")          # invalid, but never consulted
    assert dv.get_device("cpu") == torch.device("cpu")


def test_empty_env_var_counts_as_unset(monkeypatch):
    _fake_hardware(monkeypatch, cuda=False, mps=False)
    monkeypatch.setenv("MLBOOK_DEVICE", "")
    assert dv.get_device() == torch.device("cpu")


def test_bad_env_var_is_reported_by_name(monkeypatch):
    monkeypatch.setenv("MLBOOK_DEVICE", "gpu0")
    with pytest.raises(ValueError, match="environment variable MLBOOK_DEVICE='gpu0'"):
        dv.get_device()


# ------------------------------------------------------------------ get_device: explicit requests

@pytest.mark.parametrize("name", ["cpu", torch.device("cpu")])
def test_explicit_cpu_is_the_cpu(name):
    dev = dv.get_device(name)
    assert isinstance(dev, torch.device)
    assert dev.type == "cpu"


@pytest.mark.skipif(CUDA, reason="CUDA is available here")
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_cuda_raises_naming_the_argument(name):
    with pytest.raises(ValueError, match=rf"device='{name}'.*CUDA is not available"):
        dv.get_device(name)


@pytest.mark.skipif(CUDA, reason="CUDA is available here")
def test_cuda_in_env_var_without_cuda_raises_naming_the_variable(monkeypatch):
    monkeypatch.setenv("MLBOOK_DEVICE", "cuda")
    with pytest.raises(ValueError, match="MLBOOK_DEVICE='cuda'.*CUDA is not available"):
        dv.get_device()


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_index_beyond_the_device_count_raises():
    name = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ValueError, match="CUDA device"):
        dv.get_device(name)


def test_mps_without_mps_raises(monkeypatch):
    monkeypatch.setattr(dv, "_mps_available", lambda: False)
    with pytest.raises(ValueError, match="device='mps'.*MPS is not available"):
        dv.get_device("mps")


@pytest.mark.parametrize("name", ["gpu0", "tpu", "", "CPU"])
def test_nonsense_names_raise_value_error(name):
    with pytest.raises(ValueError, match=rf"device='{name}' is not a device name"):
        dv.get_device(name)


@pytest.mark.parametrize("name", ["meta", "xla"])
def test_real_but_unsupported_torch_devices_raise(name):
    with pytest.raises(ValueError, match="supports 'cpu', 'cuda' and 'mps'"):
        dv.get_device(name)


@pytest.mark.parametrize("bad", [0, 1.5, ["cpu"], b"cpu"])
def test_wrong_types_raise_type_error(bad):
    with pytest.raises(TypeError, match="device must be a string or torch.device"):
        dv.get_device(bad)


# ------------------------------------------------------------------ seed_all

def _draw_all(gen):
    return (random.random(), float(np.random.rand()), torch.rand(3).tolist(), torch.rand(3, generator=gen).tolist())


def test_seed_all_returns_a_cpu_generator():
    gen = dv.seed_all(0)
    assert isinstance(gen, torch.Generator)
    assert gen.device.type == "cpu"


def test_seed_all_makes_every_stream_repeat():
    first = _draw_all(dv.seed_all(123))
    second = _draw_all(dv.seed_all(123))
    assert first == second


def test_different_seeds_give_different_streams():
    assert _draw_all(dv.seed_all(1)) != _draw_all(dv.seed_all(2))


def test_seed_all_generator_matches_a_manually_seeded_one():
    expected = torch.rand(5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.rand(5, generator=dv.seed_all(7)), expected)


def test_seed_all_accepts_seeds_beyond_numpy_range():
    gen = dv.seed_all(2**40 + 3)                           # numpy takes it modulo 2**32
    assert torch.equal(torch.rand(2, generator=gen),
                       torch.rand(2, generator=torch.Generator().manual_seed(2**40 + 3)))


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.5, TypeError), (True, TypeError),
                                        ("3", TypeError), (None, TypeError)])
def test_bad_seed_raises(bad, error):
    with pytest.raises(error, match="seed"):
        dv.seed_all(bad)


# ------------------------------------------------------------------ randn / rand / randint

@pytest.mark.parametrize("draw, args", [(dv.randn, (4, 3)), (dv.rand, (4, 3)), (dv.randint, (10, 4, 3))])
def test_draws_repeat_for_the_same_seed(draw, args):
    a = draw(*args, generator=torch.Generator().manual_seed(5), device="cpu")
    b = draw(*args, generator=torch.Generator().manual_seed(5), device="cpu")
    c = draw(*args, generator=torch.Generator().manual_seed(6), device="cpu")
    assert a.shape == (4, 3)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_randn_equals_torch_cpu_stream():
    expected = torch.randn(2, 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    got = dv.randn(2, 5, generator=torch.Generator().manual_seed(9), device="cpu", dtype=torch.float64)
    assert got.dtype == torch.float64
    assert torch.equal(got, expected)


def test_rand_is_in_unit_interval():
    u = dv.rand(10_000, generator=torch.Generator().manual_seed(0), device="cpu")
    assert u.min() >= 0 and u.max() < 1
    assert abs(float(u.mean()) - 0.5) < 4 * (1 / 12) ** 0.5 / 100    # 4 standard errors


def test_randint_covers_exactly_zero_to_high_minus_one():
    k = dv.randint(7, 5000, generator=torch.Generator().manual_seed(0), device="cpu")
    assert k.dtype == torch.long
    assert sorted(k.unique().tolist()) == list(range(7))


@pytest.mark.parametrize("draw, args", [(dv.randn, (3,)), (dv.rand, (3,)), (dv.randint, (4, 3))])
def test_draws_land_on_the_requested_device(draw, args, monkeypatch):
    assert draw(*args, device="cpu").device.type == "cpu"
    monkeypatch.setenv("MLBOOK_DEVICE", "cpu")
    assert draw(*args).device.type == "cpu"


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("draw, args", [(dv.randn, (3, 2)), (dv.rand, (3, 2)), (dv.randint, (9, 3, 2))])
def test_cuda_draws_equal_cpu_draws(draw, args):
    on_cpu = draw(*args, generator=torch.Generator().manual_seed(1), device="cpu")
    on_gpu = draw(*args, generator=torch.Generator().manual_seed(1), device="cuda")
    assert on_gpu.device.type == "cuda"
    assert torch.equal(on_gpu.cpu(), on_cpu)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (2.0, TypeError)])
def test_randint_rejects_bad_high(bad, error):
    with pytest.raises(error, match="high"):
        dv.randint(bad, 3, device="cpu")


def test_draws_reject_a_bad_device():
    with pytest.raises(ValueError, match="not a device name"):
        dv.randn(3, device="gpu0")


def test_inverse_cdf_draws_follow_the_probabilities_and_survive_rounding():
    from mlbook.device import inverse_cdf
    probs = torch.tensor([[0.2, 0.5, 0.3]]).expand(3, -1)
    u = torch.tensor([[0.1], [0.6], [0.9999999]])
    assert inverse_cdf(probs, u).tolist() == [0, 1, 2]
    short = torch.tensor([[0.5, 0.4999]])                 # sums below 1 by rounding
    assert inverse_cdf(short, torch.tensor([[0.99995]])).tolist() == [1]
