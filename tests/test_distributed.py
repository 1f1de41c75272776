"""mlbook.distributed and the data-parallel path of mlbook.train.train.

A real two-worker run takes tens of seconds to start (two interpreters importing torch), too long
for a unit test: the notebook `distributed_ddp` launches one through torchrun and checks it
against the one-process run. Here a one-worker gloo group exercises the same code path in-process.
"""

import copy
import os
import tempfile

import pytest
import torch

from mlbook import distributed as dd
from mlbook import train as tr
from helpers import gen


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("MLBOOK_PROGRESS", "0")
    monkeypatch.delenv("MLBOOK_DEVICE", raising=False)


@pytest.fixture
def group():
    """A one-worker gloo process group in this process, torn down afterwards."""
    with tempfile.TemporaryDirectory() as d:
        torch.distributed.init_process_group("gloo", init_method=f"file://{os.path.join(d, 's')}",
                                             rank=0, world_size=1)
        try:
            yield
        finally:
            torch.distributed.destroy_process_group()


def mse(model, batch):
    x, y = batch
    return (model(x) - y).square().mean()


def line_data(n=64):
    x = torch.linspace(-1, 1, n).unsqueeze(1)
    return x, 3 * x - 1


# ------------------------------------------------------------------ the ring on paper

@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_ring_allreduce_gives_every_worker_the_sum(n):
    bufs = [torch.randn(10 * n + 3, generator=gen(k), dtype=torch.float64) for k in range(n)]
    out, sent = dd.ring_allreduce(bufs)
    total = torch.stack(bufs).sum(0)
    for b in out:
        assert torch.allclose(b, total, atol=1e-12)
    assert all(torch.equal(b, c) for b, c in zip(out, out[1:]))      # bit-identical copies


@pytest.mark.parametrize("n", [2, 4, 8])
def test_ring_traffic_is_two_n_minus_one_over_n(n):
    size = 24 * n                                        # chunks of equal size
    _, sent = dd.ring_allreduce([torch.ones(size) for _ in range(n)])
    assert sent == dd.ring_traffic(n, size) == 2 * (n - 1) * 24


def test_ring_schedule_only_talks_to_the_next_neighbour_and_each_chunk_once_per_step():
    for n in (2, 5):
        sched = dd.ring_schedule(n)
        assert len(sched) == 2 * (n - 1)
        for messages in sched:
            assert [(s, d) for s, d, _, _ in messages] == [(i, (i + 1) % n) for i in range(n)]
            assert sorted(c for _, _, c, _ in messages) == list(range(n))


def test_partial_ring_after_the_reduce_scatter_holds_one_complete_chunk_per_worker():
    n = 4
    bufs = [torch.full((8,), float(2 ** k)) for k in range(n)]        # sums identify contributors
    out, _ = dd.ring_allreduce(bufs, steps=n - 1)
    for i, b in enumerate(out):
        chunk = (i + 1) % n
        assert torch.all(b[2 * chunk:2 * chunk + 2] == 15.0)


def test_reduce_scatter_checker_passes_the_ring_and_fails_wrong_schedules():
    def right(step, rank, n):
        return (rank - step) % n

    def always_own(step, rank, n):                 # forwards nothing: counts a gradient twice
        return rank

    def wrong_direction(step, rank, n):
        return (rank + step) % n

    assert dd.check_reduce_scatter(right)
    assert not dd.check_reduce_scatter(always_own)
    assert not dd.check_reduce_scatter(wrong_direction)
    assert not dd.check_reduce_scatter(lambda s, r, n: n)          # out of range


def test_draw_ring_state_draws_every_step():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    for step in range(7):
        ax.clear()
        dd.draw_ring_state(ax, 4, step)
    assert "all-gather" in ax.get_title()
    plt.close(fig)


# ------------------------------------------------------------------ splitting the batch

def test_shard_indices_split_a_batch_into_disjoint_equal_strided_parts():
    parts = [dd.shard_indices(12, r, 3) for r in range(3)]
    assert parts[1] == [1, 4, 7, 10]
    assert sorted(sum(parts, [])) == list(range(12))


def test_shard_indices_match_torchs_distributed_sampler():
    from torch.utils.data import DistributedSampler

    for r in range(4):
        theirs = list(DistributedSampler(range(16), num_replicas=4, rank=r, shuffle=False))
        assert dd.shard_indices(16, r, 4) == theirs


# ------------------------------------------------------------------ the training loop under a group

def test_train_under_a_one_worker_group_equals_the_plain_loop(group):
    torch.manual_seed(0)
    a = torch.nn.Linear(1, 1)
    b = copy.deepcopy(a)
    h_plain = tr.train(a, mse, line_data(), steps=15, lr=0.05, batch_size=16, generator=gen(),
                       device="cpu", distributed=False)
    h_ddp = tr.train(b, mse, line_data(), steps=15, lr=0.05, batch_size=16, generator=gen(),
                     device="cpu")
    assert torch.allclose(a.weight, b.weight, atol=1e-6) and torch.allclose(a.bias, b.bias, atol=1e-6)
    assert h_ddp == pytest.approx(h_plain, abs=1e-6)


def test_train_under_a_group_requires_the_loss_to_call_the_model(group):
    class Centre(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Parameter(torch.zeros(1))

    with pytest.raises(RuntimeError, match="call the model it is given"):
        tr.train(Centre(), lambda m, b: (b[0] - m.module.c).square().mean(), line_data(),
                 steps=2, device="cpu")


def test_require_process_group_returns_rank_and_world(group):
    assert dd.require_process_group() == (0, 1)


# ------------------------------------------------------------------ bad input

def test_train_distributed_without_a_group_says_how_to_start_one():
    with pytest.raises(RuntimeError, match="needs an initialised process group.*torchrun"):
        tr.train(torch.nn.Linear(1, 1), mse, line_data(), steps=1, device="cpu", distributed=True)


def test_require_process_group_without_one_raises():
    with pytest.raises(RuntimeError, match="no torch.distributed process group"):
        dd.require_process_group()


def test_train_rejects_a_global_batch_the_world_size_does_not_divide(monkeypatch):
    monkeypatch.setattr(tr, "_process_group", lambda distributed: (0, 2))
    with pytest.raises(ValueError, match="global batch_size 15 is not divisible by the world size 2"):
        tr.train(torch.nn.Linear(1, 1), mse, line_data(), steps=1, batch_size=15, device="cpu")


def test_batches_reject_fewer_rows_than_workers_can_share():
    # the loop's batch source, as train calls it on worker 0 of 2 (before the first step)
    batches = tr._batches(line_data(63), 128, gen(), torch.device("cpu"), (0, 2))
    with pytest.raises(ValueError, match="global batch of 63 rows cannot be split evenly among 2"):
        next(batches)


def test_batches_give_each_worker_its_strided_share_of_the_global_batch():
    x = torch.arange(24.0).unsqueeze(1)
    whole = next(tr._batches(x, 8, gen(3), torch.device("cpu")))
    parts = [next(tr._batches(x, 8, gen(3), torch.device("cpu"), (r, 2))) for r in range(2)]
    assert torch.equal(parts[0], whole[0::2]) and torch.equal(parts[1], whole[1::2])


def test_train_rejects_a_distributed_flag_that_is_not_a_bool():
    with pytest.raises(TypeError, match="distributed must be True, False or None"):
        tr.train(torch.nn.Linear(1, 1), mse, line_data(), steps=1, device="cpu", distributed="yes")


def test_setup_outside_torchrun_names_the_missing_variables(monkeypatch):
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(v, raising=False)
    with pytest.raises(RuntimeError, match="runs under torchrun, which sets RANK, WORLD_SIZE"):
        dd.setup()


@pytest.mark.parametrize("call, error, match", [
    (lambda: dd.shard_indices(10, 0, 3), ValueError, "cannot be split evenly among 3"),
    (lambda: dd.shard_indices(12, 3, 3), ValueError, "rank must be < world"),
    (lambda: dd.ring_allreduce([torch.ones(4), torch.ones(5)]), ValueError, "same length"),
    (lambda: dd.ring_allreduce([torch.ones(2)] * 3), ValueError, "cannot be cut into 3"),
    (lambda: dd.ring_allreduce([]), TypeError, "non-empty list"),
    (lambda: dd.ring_allreduce([torch.ones(4)] * 2, steps=3), ValueError, "has 2 steps"),
    (lambda: dd.ring_traffic(0, 10), ValueError, "n must be >= 1"),
    (lambda: dd.launch(0, "train"), ValueError, "nproc must be >= 1"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_batches_shard_a_callable_sources_global_batch():
    def source(n, generator=None):
        return torch.arange(float(n)).unsqueeze(1)

    part = next(tr._batches(source, 6, gen(), torch.device("cpu"), (1, 3)))
    assert part.squeeze(1).tolist() == [1.0, 4.0]


def test_the_script_as_one_process_trains_and_saves(tmp_path, capsys):
    out = tmp_path / "run.pt"
    dd.main(["train", "--steps", "3", "--batch", "32", "--out", str(out)])
    saved = torch.load(out)
    assert saved["world"] == 1 and len(saved["losses"]) == 3
    assert saved["params"].numel() == 64 * 64 + 64 + 64 * 10 + 10
    assert "1 worker(s), global batch 32" in capsys.readouterr().out
