"""mlbook.nets: the Fourier time embedding and the time-conditioned MLP."""

import math

import pytest
import torch

from mlbook import nets
from helpers import gen


def model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return nets.TimeMLP(**kwargs)


# ------------------------------------------------------------------ TimeEmbedding

def test_time_embedding_shape_and_features():
    emb = nets.TimeEmbedding(n_frequencies=6, max_frequency=100.0)
    t = torch.tensor([0.0, 0.1, 0.5, 1.0])
    out = emb(t)
    assert emb.dim == 12 and out.shape == (4, 12)
    freqs = torch.tensor([100.0 ** (k / 5) for k in range(6)])              # geometric from 1 to max_frequency
    torch.testing.assert_close(emb.freqs, freqs, rtol=1e-5, atol=0)
    torch.testing.assert_close(out[:, :6], torch.sin(t[:, None] * freqs), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, 6:], torch.cos(t[:, None] * freqs), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, :6] ** 2 + out[:, 6:] ** 2, torch.ones(4, 6))


def test_time_embedding_default_and_buffer():
    emb = nets.TimeEmbedding()
    assert emb.dim == 32 and emb(torch.rand(7)).shape == (7, 32)
    assert "freqs" in dict(emb.named_buffers()) and not list(emb.parameters())
    with pytest.raises(ValueError):
        nets.TimeEmbedding(n_frequencies=0)


# ------------------------------------------------------------------ TimeMLP

@pytest.mark.parametrize("kwargs,out_dim", [({}, 2), ({"dim": 3, "out": 5}, 5),
                                            ({"dim": 1, "layers": 1, "hidden": 8}, 1)])
def test_time_mlp_output_shape(kwargs, out_dim):
    net = model(**kwargs)
    x = torch.randn(9, net.dim, generator=gen(0))
    assert net(x, torch.rand(9, generator=gen(1))).shape == (9, out_dim)


def test_time_mlp_layer_count():
    net = model(layers=4, hidden=16)
    assert len(net.hidden) == 3 and len(net.time) == 4
    assert net.inp.out_features == 16 and net.out.in_features == 16


def test_time_mlp_accepts_scalar_or_per_sample_times():
    net = model(hidden=32)
    x = torch.randn(6, 2, generator=gen(0))
    want = net(x, torch.full((6,), 0.3))
    torch.testing.assert_close(net(x, 0.3), want)
    torch.testing.assert_close(net(x, torch.tensor(0.3)), want)
    # per-sample times act row by row
    t = torch.linspace(0, 1, 6)
    rows = torch.cat([net(x[i:i + 1], t[i]) for i in range(6)])
    torch.testing.assert_close(net(x, t), rows, rtol=1e-5, atol=1e-6)


def test_time_mlp_depends_on_time():
    net = model(hidden=32)
    x = torch.randn(6, 2, generator=gen(0))
    assert (net(x, 0.2) - net(x, 0.8)).abs().max() > 1e-4


def test_gradients_reach_every_parameter_and_the_input():
    net = model(hidden=16, layers=3)
    x = torch.randn(5, 2, generator=gen(0), requires_grad=True)
    net(x, torch.rand(5, generator=gen(1))).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
        assert float(p.grad.abs().sum()) > 0, name
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_gradient_wrt_input_matches_finite_differences():
    net = model(hidden=16).double()
    x = torch.randn(3, 2, generator=gen(0), dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.1, 0.4, 0.9], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda y: net(y, t), (x,))


def test_time_mlp_is_deterministic_given_the_seed():
    x = torch.randn(4, 2, generator=gen(0))
    a, b, c = model(seed=3, hidden=32), model(seed=3, hidden=32), model(seed=4, hidden=32)
    assert torch.equal(a(x, 0.5), b(x, 0.5))
    assert not torch.equal(a(x, 0.5), c(x, 0.5))


def test_time_mlp_runs_in_float64():
    net = model(hidden=8).double()
    out = net(torch.randn(3, 2, dtype=torch.float64), 0.5)
    assert out.dtype == torch.float64


def test_time_mlp_rejects_bad_inputs():
    net = model(hidden=8)
    with pytest.raises(ValueError):
        net(torch.zeros(4), 0.5)                                            # 1-D x
    with pytest.raises(ValueError):
        net(torch.zeros(4, 3), 0.5)                                         # wrong last dimension
    with pytest.raises(TypeError):
        net(torch.zeros(4, 2, dtype=torch.long), 0.5)
    with pytest.raises(ValueError):
        nets.TimeMLP(dim=0)
    with pytest.raises(ValueError):
        nets.TimeMLP(layers=0)


def test_time_mlp_can_fit_a_time_dependent_target():
    # 150 Adam steps on f(x, t) = sin(2 pi t) x: the loss falls by a large factor.
    net = model(seed=0, hidden=32, layers=2)
    x = torch.randn(256, 2, generator=gen(0))
    t = torch.rand(256, generator=gen(1))
    target = torch.sin(2 * math.pi * t)[:, None] * x
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    with torch.no_grad():
        first = float((net(x, t) - target).square().mean())
    for _ in range(150):
        opt.zero_grad()
        loss = (net(x, t) - target).square().mean()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.05 * first                                # measured: 4e-4 of it


def test_mlp_layers_activation_and_bad_sizes():
    from torch import nn

    from mlbook.nets import mlp

    assert [type(m).__name__ for m in mlp(3, 8, 8, 2, activation=nn.SiLU)] == \
        ["Linear", "SiLU", "Linear", "SiLU", "Linear"]
    with pytest.raises(ValueError, match="at least an input and an output"):
        mlp(3)
    with pytest.raises(ValueError, match="sizes"):
        mlp(3, 0)


# ------------------------------------------------------------------ TokenGRU

def token_gru(seed=0, vocab=5, hidden=8, **kwargs):
    torch.manual_seed(seed)
    return nets.TokenGRU(vocab, hidden, **kwargs)


def random_tokens(n, length, vocab=5, seed=0):
    return torch.randint(0, vocab, (n, length), generator=gen(seed))


def test_token_gru_shapes_and_parameter_order():
    net = token_gru(vocab=5, hidden=8)
    x = random_tokens(3, 7)
    assert net.states(x).shape == (3, 7, 8)
    assert net(x).shape == (3, 7, 5)                                        # logits by default
    assert token_gru(out_features=1)(x).shape == (3, 7, 1)                  # e.g. a value head
    assert net.start == 5 and net.embed.num_embeddings == 6                 # one extra id: <start>
    out, state = net.step(net.start_tokens(3))
    assert out.shape == (3, 5) and state.shape == (1, 3, 8)
    # embedding, GRU, head, built in this order (a seed fixes the same weights)
    assert [name.split(".")[0] for name in net.state_dict()] == \
        ["embed"] + ["gru"] * 4 + ["head"] * 2


def test_token_gru_is_causal():
    # The output at position t reads only <start>, x_0 .. x_{t-1}: changing the tokens from
    # position t on leaves positions 0..t unchanged, and changes the later ones.
    net = token_gru(vocab=5, hidden=8)
    x = random_tokens(4, 9)
    y = x.clone()
    t = 4
    y[:, t:] = (x[:, t:] + 1 + random_tokens(4, 9 - t, vocab=4, seed=1)) % 5   # every one changes
    assert bool((y[:, t:] != x[:, t:]).all())
    with torch.no_grad():
        a, b = net(x), net(y)
    torch.testing.assert_close(a[:, :t + 1], b[:, :t + 1], rtol=0, atol=0)
    assert bool(((a[:, t + 1:] - b[:, t + 1:]).abs().amax(-1) > 0).all())


def test_token_gru_step_by_step_matches_the_whole_sequence():
    net = token_gru(vocab=5, hidden=8)
    x = random_tokens(3, 6)
    whole = net(x)                                                          # (3, 6, 5)
    out, state = net.step(net.start_tokens(3))
    steps = [out]
    for t in range(5):
        out, state = net.step(x[:, t:t + 1], state)
        steps.append(out)
    torch.testing.assert_close(torch.stack(steps, dim=1), whole, rtol=1e-5, atol=1e-6)
    # reading <start> and a chunk in one call is the same as reading them one at a time
    chunk, _ = net.step(torch.cat([net.start_tokens(3), x[:, :5]], dim=1))
    torch.testing.assert_close(chunk, whole[:, 5], rtol=1e-5, atol=1e-6)


def test_token_gru_first_output_ignores_the_tokens_and_gradients_flow():
    net = token_gru(vocab=5, hidden=8)
    x = random_tokens(4, 5)
    out = net(x)
    torch.testing.assert_close(out[:, 0], out[:1, 0].expand(4, 5))          # only <start> read
    out.square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_token_gru_is_deterministic_given_the_seed():
    a, b, c = token_gru(seed=3), token_gru(seed=3), token_gru(seed=4)
    x = random_tokens(2, 4)
    assert torch.equal(a(x), b(x)) and not torch.equal(a(x), c(x))


def test_token_gru_rejects_bad_input():
    net = token_gru(vocab=5, hidden=8)
    with pytest.raises(ValueError, match="dimensions"):
        net(torch.zeros(4, dtype=torch.long))                               # 1-D tokens
    with pytest.raises(TypeError, match="integer token ids"):
        net(torch.zeros(2, 3))                                              # floats
    with pytest.raises(ValueError, match="0..4"):
        net(torch.full((2, 3), 5))                                  # <start> is not an input
    with pytest.raises(ValueError, match="0..4"):
        net(torch.full((2, 3), -1))
    with pytest.raises(ValueError, match="at least one"):
        net(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="0..5"):
        net.step(torch.full((2, 1), 6))                                     # step accepts <start>
    with pytest.raises(ValueError, match="at least one"):
        net.step(torch.zeros(2, 0, dtype=torch.long))
    _, state = net.step(net.start_tokens(2))
    with pytest.raises(ValueError, match="state"):
        net.step(torch.zeros(3, 1, dtype=torch.long), state)                # 3 rows, state for 2
    with pytest.raises(ValueError, match="vocab"):
        nets.TokenGRU(0)
    with pytest.raises(ValueError, match="out_features"):
        nets.TokenGRU(5, 8, out_features=0)
    with pytest.raises(TypeError, match="hidden"):
        nets.TokenGRU(5, 8.0)
