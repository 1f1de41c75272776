"""The library's one training loop, and its progress bar.

Every chapter trains through :func:`train`: a model, a loss ``loss_fn(model, batch)``, and data
given either as tensors (shuffled into minibatches) or as a function drawing a fresh batch.

Under ``torch.distributed`` (a process group initialised, e.g. by a script launched with
``torchrun``) the same call trains data-parallel: ``batch_size`` is the global batch, each of the
N workers takes its own share of it, and torch's ``DistributedDataParallel`` averages the
gradients (the distributed chapter, page ``distributed``). Without a process group nothing
changes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import torch

from . import _checks
from .device import get_device

__all__ = ["progress", "train"]

PROGRESS_ENV_VAR = "MLBOOK_PROGRESS"


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str | None = None,
             enabled: bool | None = None):
    """A ``tqdm.auto`` bar (a widget in Jupyter, text in a terminal).

    ``enabled=None`` shows it unless the environment sets ``MLBOOK_PROGRESS=0``, as the book
    build and the tests do: a progress bar is noise in a static page.
    """
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = os.environ.get(PROGRESS_ENV_VAR, "1") != "0"
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, leave=False)


def _process_group(distributed: bool | None) -> tuple[int, int] | None:
    """``(rank, world size)`` when training is data-parallel, else ``None``.

    ``distributed=None`` trains data-parallel exactly when a process group is initialised;
    ``True`` requires one; ``False`` never uses one.
    """
    if distributed is not None and not isinstance(distributed, bool):
        raise TypeError(f"distributed must be True, False or None, got {distributed!r}")
    if distributed is False:
        return None
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        if distributed:
            raise RuntimeError("train(distributed=True) needs an initialised process group: launch "
                               "the script with torchrun and call torch.distributed."
                               "init_process_group() first (mlbook.distributed.setup() does it "
                               "from torchrun's environment)")
        return None
    return dist.get_rank(), dist.get_world_size()


def _shard(batch, shard: tuple[int, int]):
    """This worker's rows of a global batch: rows rank, rank + N, rank + 2N, ... (strided)."""
    rank, world = shard
    if isinstance(batch, tuple):
        return tuple(t[rank::world] for t in batch)
    return batch[rank::world]


def _batches(data, batch_size: int, generator: torch.Generator | None, device: torch.device,
             shard: tuple[int, int] | None = None):
    """Endless minibatches: calls ``data(batch_size, generator=...)``, or shuffles tensors in epochs.

    With ``shard=(rank, world)`` every worker draws the same global batch (same generator state)
    and keeps only its strided share of it, so the N shares together are the global batch.
    """
    if callable(data):
        while True:
            batch = data(batch_size, generator=generator)
            if shard is not None:
                batch = _shard(batch, shard)
            yield tuple(t.to(device) for t in batch) if isinstance(batch, tuple) else batch.to(device)
    tensors = data if isinstance(data, tuple) else (data,)
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError("data must be a tensor, a tuple of tensors, or a callable returning a batch")
    n = len(tensors[0])
    if any(len(t) != n for t in tensors):
        raise ValueError(f"data tensors must have the same number of rows, got {[len(t) for t in tensors]}")
    if shard is not None and min(n, batch_size) % shard[1]:
        raise ValueError(f"a global batch of {min(n, batch_size)} rows cannot be split evenly "
                         f"among {shard[1]} workers: make batch_size (and the number of rows, "
                         f"if smaller) a multiple of the world size")
    tensors = tuple(t.to(device) for t in tensors)
    while True:                     # full batches only; fewer rows than batch_size make one batch
        perm = torch.randperm(n, generator=generator).to(device)
        for k in range(max(n // batch_size, 1)):
            idx = perm[k * batch_size:(k + 1) * batch_size]
            if shard is not None:
                idx = idx[shard[0]::shard[1]]
            batch = tuple(t[idx] for t in tensors)
            yield batch if len(batch) > 1 else batch[0]


def train(model: torch.nn.Module, loss_fn: Callable[..., torch.Tensor], data, *, steps: int,
          lr: float = 1e-3, batch_size: int = 256, weight_decay: float = 0.0,
          grad_clip: float | None = None, lr_decay: bool = False,
          generator: torch.Generator | None = None, device=None, desc: str = "training",
          show_progress: bool | None = None,
          callback: Callable[[int, torch.nn.Module], None] | None = None,
          distributed: bool | None = None) -> list[float]:
    """Minimise ``loss_fn(model, batch)`` with Adam(W) for ``steps`` steps; return the loss per step.

    Args:
        data: tensor or tuple of tensors (rows are examples; shuffled by ``generator``), or a
            callable ``data(batch_size, generator=...)`` returning a fresh batch (e.g. a toy
            distribution's ``sample``).
        lr_decay: cosine-decay the learning rate to zero over the run.
        grad_clip: clip the global gradient norm to this value.
        callback: ``callback(step, model)`` after every step (1-based), e.g. to keep checkpoints.
        distributed: ``None`` (default) trains data-parallel when a ``torch.distributed`` process
            group is initialised, ``True`` requires one (``RuntimeError`` without), ``False``
            ignores it. Data-parallel, ``batch_size`` is the global batch N*B (N, the world
            size, must divide it), every worker uses the same ``generator`` seed and keeps its
            share of each global batch, ``loss_fn`` receives the model wrapped in
            ``DistributedDataParallel`` (it must call it, ``model(x)``, for the gradients to be
            averaged), only rank 0 shows progress, and the returned losses are averaged over
            the workers: the losses of the one-process run with the same global batch.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError("loss_fn must be callable as loss_fn(model, batch)")
    steps = _checks.integer(steps, "steps", minimum=1)
    batch_size = _checks.integer(batch_size, "batch_size", minimum=1)
    lr = _checks.real(lr, "lr", positive=True)
    weight_decay = _checks.real(weight_decay, "weight_decay", nonnegative=True)
    if grad_clip is not None:
        grad_clip = _checks.real(grad_clip, "grad_clip", positive=True)
    shard = _process_group(distributed)
    if shard is not None and batch_size % shard[1]:
        raise ValueError(f"the global batch_size {batch_size} is not divisible by the world size "
                         f"{shard[1]}: every worker must take the same number of rows")
    dev = get_device(device)
    model.to(dev).train()
    net, called = model, []           # called: whether loss_fn ran the wrapped model's forward
    if shard is not None:           # averages gradients in buckets, overlapped with backward
        from torch.nn.parallel import DistributedDataParallel

        ids = None if dev.type != "cuda" else [dev.index if dev.index is not None
                                               else torch.cuda.current_device()]
        net = DistributedDataParallel(model, device_ids=ids)
        net.register_forward_pre_hook(lambda *_: None if called else called.append(True))
        if shard[0] != 0:
            show_progress = False
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if lr_decay else None
    batches = _batches(data, batch_size, generator, dev, shard)
    losses = []
    bar = progress(range(steps), desc=desc, enabled=show_progress)
    for step in bar:
        loss = loss_fn(net, next(batches))
        if loss.ndim != 0:
            raise ValueError(f"loss_fn must return a scalar tensor, got shape {tuple(loss.shape)}")
        if shard is not None and not called:
            raise RuntimeError("data-parallel training needs loss_fn to call the model it is "
                               "given (model(x)); otherwise the gradients are not averaged")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.detach())
        if callback is not None:
            callback(step + 1, model)
        if step % 100 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{loss.item():.4g}")
    model.eval()
    history = torch.stack(losses)
    if shard is not None:           # the mean over workers: the loss on the global batch
        torch.distributed.all_reduce(history)
        history = history / shard[1]
    history = history.cpu().tolist()
    if not all(map(lambda v: v == v, history)):
        raise FloatingPointError("the loss became NaN during training; lower lr or add grad_clip")
    return history
