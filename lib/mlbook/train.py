"""The library's one training loop, and its progress bar.

Every chapter trains through :func:`train`: a model, a loss ``loss_fn(model, batch)``, and data
given either as tensors (shuffled into minibatches) or as a function drawing a fresh batch.
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


def _batches(data, batch_size: int, generator: torch.Generator | None, device: torch.device):
    """Endless minibatches: calls ``data(batch_size, generator=...)``, or shuffles tensors in epochs."""
    if callable(data):
        while True:
            batch = data(batch_size, generator=generator)
            yield tuple(t.to(device) for t in batch) if isinstance(batch, tuple) else batch.to(device)
    tensors = data if isinstance(data, tuple) else (data,)
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        raise TypeError("data must be a tensor, a tuple of tensors, or a callable returning a batch")
    n = len(tensors[0])
    if any(len(t) != n for t in tensors):
        raise ValueError(f"data tensors must have the same number of rows, got {[len(t) for t in tensors]}")
    tensors = tuple(t.to(device) for t in tensors)
    while True:                     # full batches only; fewer rows than batch_size make one batch
        perm = torch.randperm(n, generator=generator).to(device)
        for k in range(max(n // batch_size, 1)):
            idx = perm[k * batch_size:(k + 1) * batch_size]
            batch = tuple(t[idx] for t in tensors)
            yield batch if len(batch) > 1 else batch[0]


def train(model: torch.nn.Module, loss_fn: Callable[..., torch.Tensor], data, *, steps: int,
          lr: float = 1e-3, batch_size: int = 256, weight_decay: float = 0.0,
          grad_clip: float | None = None, lr_decay: bool = False,
          generator: torch.Generator | None = None, device=None, desc: str = "training",
          show_progress: bool | None = None,
          callback: Callable[[int, torch.nn.Module], None] | None = None) -> list[float]:
    """Minimise ``loss_fn(model, batch)`` with Adam(W) for ``steps`` steps; return the loss per step.

    Args:
        data: tensor or tuple of tensors (rows are examples; shuffled by ``generator``), or a
            callable ``data(batch_size, generator=...)`` returning a fresh batch (e.g. a toy
            distribution's ``sample``).
        lr_decay: cosine-decay the learning rate to zero over the run.
        grad_clip: clip the global gradient norm to this value.
        callback: ``callback(step, model)`` after every step (1-based), e.g. to keep checkpoints.
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
    dev = get_device(device)
    model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if lr_decay else None
    batches = _batches(data, batch_size, generator, dev)
    losses = []
    bar = progress(range(steps), desc=desc, enabled=show_progress)
    for step in bar:
        loss = loss_fn(model, next(batches))
        if loss.ndim != 0:
            raise ValueError(f"loss_fn must return a scalar tensor, got shape {tuple(loss.shape)}")
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
    history = torch.stack(losses).cpu().tolist()
    if not all(map(lambda v: v == v, history)):
        raise FloatingPointError("the loss became NaN during training; lower lr or add grad_clip")
    return history
