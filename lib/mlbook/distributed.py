"""Data-parallel training: the ring all-reduce on paper, and the real thing with torch.distributed.

The page ``distributed`` derives why averaging the workers' gradients gives the large-batch
gradient (equation ``ddp-average``) and what the ring all-reduce costs (equation ``ddp-ring-cost``).
This module has

* a simulation of the ring all-reduce on lists of chunks (:func:`ring_allreduce`), its traffic
  (:func:`ring_traffic`), a picture of its state (:func:`draw_ring_state`) and the reader's
  exercise checker (:func:`check_reduce_scatter`);
* the strided split of a global batch among workers (:func:`shard_indices`);
* the command-line example run by ``torchrun`` (``python -m mlbook.distributed train ...``): the
  book's one training loop, :func:`mlbook.train.train`, unchanged, on the digits, with rank 0
  printing and saving; and its launcher (:func:`launch`).

Run two workers on the CPU (gloo) with
``torchrun --standalone --nproc_per_node=2 -m mlbook.distributed train --batch 64 --out run.pt``;
on a machine with GPUs the same command uses NCCL, one GPU per worker.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Callable, Sequence

import torch

from . import _checks
from .exercises import Case, Verdict, check

__all__ = ["ring_schedule", "ring_allreduce", "ring_traffic", "draw_ring_state",
           "check_reduce_scatter", "shard_indices", "require_process_group", "setup",
           "digits_example", "launch"]


# ---------------------------------------------------------------- the ring all-reduce on paper

def ring_schedule(n: int) -> list[list[tuple[int, int, int, str]]]:
    """The ring all-reduce of ``n`` workers as ``2(n-1)`` steps of messages ``(src, dst, chunk, op)``.

    Every worker's vector is cut into ``n`` chunks. In step ``s`` of the reduce-scatter
    (``s = 0..n-2``) worker ``i`` sends chunk ``(i - s) mod n`` to worker ``i + 1``, which adds it
    to its own (``op = "add"``); afterwards worker ``i`` holds the full sum of chunk
    ``(i + 1) mod n``. In step ``s`` of the all-gather worker ``i`` sends chunk
    ``(i + 1 - s) mod n`` on, and the receiver overwrites its copy (``op = "copy"``).
    """
    n = _checks.integer(n, "n", minimum=1)
    steps = [[(i, (i + 1) % n, (i - s) % n, "add") for i in range(n)] for s in range(n - 1)]
    steps += [[(i, (i + 1) % n, (i + 1 - s) % n, "copy") for i in range(n)] for s in range(n - 1)]
    return steps


def _chunked(buffers: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
    if not isinstance(buffers, Sequence) or len(buffers) == 0:
        raise TypeError("buffers must be a non-empty list of tensors, one per worker")
    for k, b in enumerate(buffers):
        _checks.tensor(b, f"buffers[{k}]", ndim=1)
    if len({b.shape[0] for b in buffers}) != 1:
        raise ValueError(f"every worker's buffer must have the same length, got "
                         f"{[b.shape[0] for b in buffers]}")
    n = len(buffers)
    if buffers[0].shape[0] < n:
        raise ValueError(f"a buffer of {buffers[0].shape[0]} entries cannot be cut into {n} "
                         f"non-empty chunks, one per worker")
    return [list(torch.tensor_split(b.clone(), n)) for b in buffers]


def ring_allreduce(buffers: Sequence[torch.Tensor], *, steps: int | None = None
                   ) -> tuple[list[torch.Tensor], int]:
    """Simulate the ring all-reduce; return every worker's buffer and the entries each sent.

    ``buffers[i]`` is worker ``i``'s vector (all the same length). After all ``2(n-1)`` steps of
    :func:`ring_schedule` every worker holds the sum of all buffers, and each worker has sent
    ``2(n-1)/n`` times the buffer's length (equation ``ddp-ring-cost``, up to rounding of chunk
    sizes). ``steps`` stops early, for pictures of the state in between.
    """
    chunks = _chunked(buffers)
    schedule = ring_schedule(len(buffers))
    steps = len(schedule) if steps is None else _checks.integer(steps, "steps", minimum=0)
    if steps > len(schedule):
        raise ValueError(f"the ring all-reduce of {len(buffers)} workers has {len(schedule)} "
                         f"steps, asked for {steps}")
    sent = 0
    for messages in schedule[:steps]:
        payload = [chunks[src][c].clone() for src, _, c, _ in messages]   # all send at once
        for (src, dst, c, op), data in zip(messages, payload):
            chunks[dst][c] = chunks[dst][c] + data if op == "add" else data
        sent += int(payload[0].numel()) if messages else 0
    return [torch.cat(c) for c in chunks], sent


def ring_traffic(n: int, size: float) -> float:
    """Entries each worker sends in a ring all-reduce of ``size`` entries: ``2(n-1)/n * size``."""
    n = _checks.integer(n, "n", minimum=1)
    size = _checks.real(size, "size", nonnegative=True)
    return 2 * (n - 1) / n * size


def _contributions(n: int, steps: int) -> list[list[set[int]]]:
    """Whose gradients each worker's copy of each chunk contains after ``steps`` ring steps."""
    have = [[{i} for _ in range(n)] for i in range(n)]
    for messages in ring_schedule(n)[:steps]:
        payload = [set(have[src][c]) for src, _, c, _ in messages]
        for (src, dst, c, op), got in zip(messages, payload):
            have[dst][c] = have[dst][c] | got if op == "add" else got
    return have


def draw_ring_state(ax, n: int, step: int) -> None:
    """Workers (rows) by chunks (columns), shaded by how many workers' gradients each copy holds.

    Step 0 is the start; steps 1..n-1 are the reduce-scatter, n..2(n-1) the all-gather. The
    chunks sent in the next step are outlined.
    """
    n = _checks.integer(n, "n", minimum=2)
    total = 2 * (n - 1)
    step = _checks.integer(step, "step", minimum=0)
    if step > total:
        raise ValueError(f"step must be <= {total} for {n} workers, got {step}")
    have = _contributions(n, step)
    counts = torch.tensor([[len(have[i][c]) for c in range(n)] for i in range(n)], dtype=torch.float32)
    ax.imshow(counts.numpy(), cmap="Blues", vmin=0, vmax=n + 0.5)
    for i in range(n):
        for c in range(n):
            ax.text(c, i, str(int(counts[i, c])), ha="center", va="center",
                    color="white" if counts[i, c] > 0.6 * n else "black", fontsize=9)
    if step < total:
        for src, _, c, _ in ring_schedule(n)[step]:
            ax.add_patch(_outline(c, src))
    phase = "start" if step == 0 else "reduce-scatter" if step <= n - 1 else "all-gather"
    ax.set_title(f"step {step} of {total} ({phase})", fontsize=10)
    ax.set_xticks(range(n), [f"chunk {c}" for c in range(n)], fontsize=8)
    ax.set_yticks(range(n), [f"worker {i}" for i in range(n)], fontsize=8)


def _outline(col: int, row: int):
    from matplotlib.patches import Rectangle

    return Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="tab:orange", linewidth=2.5)


def check_reduce_scatter(fn: Callable[[int, int, int], int]) -> Verdict:
    """Checker for the reader's reduce-scatter schedule (the distributed notebook's exercise).

    ``fn(step, rank, n)`` is the chunk worker ``rank`` sends to worker ``(rank + 1) mod n`` in
    step ``step`` (``0..n-2``) of the reduce-scatter; the receiver adds it to its own copy. The
    schedule is right when, for n = 2..8, no worker ever adds a contribution it already holds
    (that would count a gradient twice) and after n - 1 steps every chunk is complete (holds all
    n workers' gradients) on some worker.
    """
    def simulate(n: int) -> str:
        have = [[{i} for _ in range(n)] for i in range(n)]
        for s in range(n - 1):
            sends = [fn(s, i, n) for i in range(n)]
            if not all(isinstance(c, int) and 0 <= c < n for c in sends):
                return f"chunk indices must be integers in 0..{n - 1}, got {sends} in step {s}"
            payload = [set(have[i][c]) for i, c in enumerate(sends)]
            for i, (c, got) in enumerate(zip(sends, payload)):
                dst = (i + 1) % n
                if have[dst][c] & got:
                    return (f"in step {s} worker {i} sends chunk {c}, but worker {dst} already "
                            f"holds some of those gradients")
                have[dst][c] = have[dst][c] | got
        done = {c for i in range(n) for c in range(n) if len(have[i][c]) == n}
        return "ok" if done == set(range(n)) else f"complete chunks after {n - 1} steps: {sorted(done)}"

    cases = [Case(f"a ring of {n} workers", (n,), lambda outcome: outcome == "ok",
                  "in step 0 each worker sends its 'own' chunk; in each later step it forwards "
                  "the partial sum it has just received.")
             for n in range(2, 9)]
    return check(simulate, cases, name=getattr(fn, "__name__", "your schedule"))


# ---------------------------------------------------------------- the real engine

def shard_indices(n: int, rank: int, world: int) -> list[int]:
    """The positions of a global batch of ``n`` rows that worker ``rank`` of ``world`` keeps.

    Strided, ``rank, rank + world, ...``, as :func:`mlbook.train.train` splits each global batch
    and as torch's ``DistributedSampler`` splits a dataset; ``world`` must divide ``n``.
    """
    n = _checks.integer(n, "n", minimum=1)
    world = _checks.integer(world, "world", minimum=1)
    rank = _checks.integer(rank, "rank", minimum=0)
    if rank >= world:
        raise ValueError(f"rank must be < world ({world}), got {rank}")
    if n % world:
        raise ValueError(f"a global batch of {n} rows cannot be split evenly among {world} workers")
    return list(range(rank, n, world))


def require_process_group() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised process group, else a ``RuntimeError`` saying how."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("no torch.distributed process group is initialised: launch with "
                           "torchrun (e.g. torchrun --standalone --nproc_per_node=2 -m "
                           "mlbook.distributed train) and call mlbook.distributed.setup()")
    return dist.get_rank(), dist.get_world_size()


def setup(backend: str | None = None) -> tuple[int, int, torch.device]:
    """Initialise the process group from torchrun's environment; return rank, world, device.

    The backend is NCCL when CUDA is available (each worker on GPU ``LOCAL_RANK``), else gloo.
    Run without torchrun (no ``RANK``/``WORLD_SIZE`` in the environment) it raises
    ``RuntimeError`` rather than guess.
    """
    missing = [v for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
               if v not in os.environ]
    if missing:
        raise RuntimeError(f"setup() runs under torchrun, which sets {', '.join(missing)}; "
                           f"run as a single process without calling setup()")
    cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if cuda else "gloo")
    _checks.choice(backend, "backend", ("gloo", "nccl"))
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    torch.distributed.init_process_group(backend)
    dev = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), dev


def _digits_net() -> torch.nn.Module:
    from .nets import mlp

    return mlp(64, 64, 10)


def digits_example(*, steps: int = 40, batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
                   device=None) -> tuple[torch.nn.Module, list[float]]:
    """Train a small MLP on the digits with :func:`mlbook.train.train`; return it and its losses.

    The same call runs as one process or as one of N workers under torchrun: there the train
    loop sees the process group, ``batch_size`` is the global batch, and every worker starts
    from the same seed. The data are moved to ``device`` by the loop.
    """
    from .data import load_dataset
    from .device import seed_all
    from .train import train

    generator = seed_all(seed)
    digits = load_dataset("digits", device="cpu")
    x, y = digits.X / 16.0, digits.y
    model = _digits_net()
    losses = train(model, lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]), (x, y),
                   steps=steps, lr=lr, batch_size=batch_size, generator=generator, device=device,
                   desc="digits")
    return model, losses


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().cpu().reshape(-1) for p in model.parameters()])


def _cmd_train(args: argparse.Namespace) -> None:
    distributed = "WORLD_SIZE" in os.environ
    rank, world, dev = setup() if distributed else (0, 1, None)
    model, losses = digits_example(steps=args.steps, batch_size=args.batch, lr=args.lr,
                                   seed=args.seed, device=dev)
    if rank == 0:                   # one writer: every worker holds the same parameters
        print(f"{world} worker(s), global batch {args.batch} ({args.batch // world} per worker), "
              f"{args.steps} steps: loss {losses[0]:.4f} -> {losses[-1]:.4f}", flush=True)
        if args.out:
            torch.save({"params": _flat(model), "losses": losses, "world": world}, args.out)
    if distributed:
        torch.distributed.destroy_process_group()


def _cmd_bench(args: argparse.Namespace) -> None:
    """Per-step time, and the time of one all-reduce of the gradient's size, as JSON on rank 0."""
    import json
    import time

    distributed = "WORLD_SIZE" in os.environ
    rank, world, dev = setup() if distributed else (0, 1, None)
    torch.set_num_threads(1)
    width = args.width
    from .nets import mlp

    torch.manual_seed(0)
    model = mlp(64, width, width, 10)
    x = torch.randn(4096, 64, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (4096,), generator=torch.Generator().manual_seed(1))
    from .train import train

    def run():
        train(model, lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]), (x, y),
              steps=args.steps, batch_size=args.batch, generator=torch.Generator().manual_seed(2),
              device=dev, show_progress=False)

    run()                                           # warm-up
    best_step = float("inf")
    for _ in range(3):
        if distributed:
            torch.distributed.barrier()
        t0 = time.perf_counter()
        run()
        best_step = min(best_step, (time.perf_counter() - t0) / args.steps)
    comm = 0.0
    if distributed:
        grad = torch.zeros(sum(p.numel() for p in model.parameters()))
        best = float("inf")
        for _ in range(20):
            torch.distributed.barrier()
            t0 = time.perf_counter()
            torch.distributed.all_reduce(grad)
            best = min(best, time.perf_counter() - t0)
        comm = best
    if rank == 0:
        print(json.dumps({"world": world, "step_s": best_step, "allreduce_s": comm,
                          "params": sum(p.numel() for p in model.parameters())}), flush=True)
    if distributed:
        torch.distributed.destroy_process_group()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mlbook.distributed",
                                     description="The book's data-parallel examples (run under "
                                                 "torchrun for several workers).")
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train the digits MLP; rank 0 prints and saves")
    tr.add_argument("--steps", type=int, default=40)
    tr.add_argument("--batch", type=int, default=64, help="global batch (all workers together)")
    tr.add_argument("--lr", type=float, default=3e-3)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--out", default="", help="file for rank 0's parameters and losses")
    be = sub.add_parser("bench", help="time a training step and one gradient all-reduce")
    be.add_argument("--steps", type=int, default=30)
    be.add_argument("--batch", type=int, default=512, help="global batch")
    be.add_argument("--width", type=int, default=256)
    return parser


def launch(nproc: int, *args: str, gpus: bool = False, timeout: float = 120.0) -> str:
    """Run ``python -m mlbook.distributed ARGS`` as ``nproc`` workers; return rank 0's output.

    ``nproc = 1`` is a plain process with no process group (the single-machine reference run);
    ``nproc > 1`` runs under torchrun. On the CPU (gloo) by default, so that the example runs on
    any machine; ``gpus=True`` keeps the GPUs visible (NCCL then needs ``nproc`` of them). One
    thread per worker, so that N workers use N cores. A failed run raises ``RuntimeError`` with
    the workers' output.
    """
    nproc = _checks.integer(nproc, "nproc", minimum=1)
    if nproc == 1:
        cmd = [sys.executable, "-m", "mlbook.distributed", *map(str, args)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "mlbook.distributed", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLBOOK_PROGRESS": "0"}
    if not gpus:
        env.update(CUDA_VISIBLE_DEVICES="", MLBOOK_DEVICE="cpu")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"the {nproc}-worker run failed (exit {done.returncode}):\n"
                           f"{done.stdout}\n{done.stderr}")
    return done.stdout


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "train":
        _cmd_train(args)
    else:
        _cmd_bench(args)


if __name__ == "__main__":
    main()
