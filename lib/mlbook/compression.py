"""Chapter "Network compression": magnitude pruning, lottery tickets, distillation, int8 quantization.

Every function names the equation of book/compression.md it implements. Pruning works on
*masks*: a boolean tensor per weight matrix, ``True`` where the weight survives. A model is
pruned by multiplying its weights by their masks (:func:`apply_masks`), and trained with the
masks held fixed by re-applying them after every optimiser step (:func:`fit_classifier`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from . import _checks, nets
from .train import train

__all__ = [
    "mlp", "accuracy", "fit_classifier",
    "prunable_weights", "magnitude_mask", "global_magnitude_masks", "apply_masks", "sparsity",
    "PruningRound", "iterative_magnitude_pruning",
    "soft_targets", "distillation_loss",
    "QTensor", "quantize", "dequantize", "quantize_model",
]

Masks = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- models

# The chapter's classifiers are plain ReLU MLPs: the library's one builder, re-exported here.
mlp = nets.mlp


@torch.no_grad()
def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows of ``X`` whose arg-max logit equals the label in ``y``."""
    _checks.tensor(X, "X", ndim=2, min_rows=1)
    _checks.tensor(y, "y", ndim=1)
    if len(X) != len(y):
        raise ValueError(f"X and y must have the same number of rows, got {len(X)} and {len(y)}")
    return float((model(X).argmax(dim=1) == y).float().mean())


def fit_classifier(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, masks: Masks | None = None,
                   loss_fn: Callable | None = None, steps: int = 500, lr: float = 3e-3,
                   batch_size: int = 128, generator: torch.Generator | None = None, **kwargs) -> list[float]:
    """Train ``model`` on ``(X, y)`` with :func:`mlbook.train.train`, keeping pruned weights at zero.

    ``loss_fn(model, (X_batch, y_batch))`` defaults to the cross-entropy of the logits. With
    ``masks``, the weights are masked before training and again after every step, so a pruned
    weight is zero in every forward pass. Extra keyword arguments go to ``train``.
    """
    if loss_fn is None:
        def loss_fn(m, batch):
            xb, yb = batch
            return F.cross_entropy(m(xb), yb)
    callback = None
    if masks is not None:
        apply_masks(model, masks)

        def callback(_step, m):
            apply_masks(m, masks)
    return train(model, loss_fn, (X, y), steps=steps, lr=lr, batch_size=batch_size,
                 generator=generator, callback=callback, show_progress=False, **kwargs)


# --------------------------------------------------------------------------- pruning

def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weight matrices of every ``nn.Linear`` in ``model``, by parameter name (biases are kept)."""
    found = {f"{name}.weight" if name else "weight": m.weight
             for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    if not found:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers to prune")
    return found


def _check_sparsity(value) -> float:
    value = _checks.real(value, "sparsity")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"sparsity must be in [0, 1) (the fraction of weights removed), got {value}")
    return value


def _prune_smallest(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Boolean keep-mask over a 1-D ``scores``: ``False`` at the ``n_prune`` smallest entries."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if n_prune > 0:
        keep[torch.topk(scores, n_prune, largest=False).indices] = False
    return keep


def magnitude_mask(weight: torch.Tensor, sparsity: float, *, structured: bool = False,
                   dim: int = 0) -> torch.Tensor:
    """Layer-wise magnitude pruning mask of one weight tensor; ``True`` marks the survivors.

    Unstructured, implements (comp-unstructured): remove the ``round(sparsity * numel)`` entries of
    smallest ``|w|``. Structured, implements (comp-structured): score every slice along ``dim`` (for a
    ``Linear`` weight and ``dim=0``, every output unit's row of incoming weights) by its L2 norm
    and remove the ``round(sparsity * n_slices)`` lowest-scoring slices whole.
    The counts round like ``torch.nn.utils.prune``'s ``amount``.
    """
    _checks.tensor(weight, "weight", floating=True)
    sparsity = _check_sparsity(sparsity)
    if weight.numel() == 0:
        raise ValueError("weight is empty")
    w = weight.detach()
    if not structured:
        return _prune_smallest(w.abs().flatten(), round(sparsity * w.numel())).reshape(w.shape)
    if not -w.ndim <= dim < w.ndim or w.ndim < 2:
        raise ValueError(f"dim={dim} is not a dimension of a weight of shape {tuple(w.shape)} (need >= 2-D)")
    dim = dim % w.ndim
    norms = w.transpose(0, dim).reshape(w.shape[dim], -1).norm(dim=1)        # (n_slices,)
    keep = _prune_smallest(norms, round(sparsity * w.shape[dim]))
    shape = [1] * w.ndim
    shape[dim] = w.shape[dim]
    return keep.reshape(shape).expand_as(w).clone()


def global_magnitude_masks(weights: Mapping[str, torch.Tensor], sparsity: float, *,
                           masks: Masks | None = None) -> Masks:
    """Global unstructured magnitude pruning: one threshold for all tensors. Implements (comp-global).

    Removes the ``round(sparsity * total)`` weights of smallest ``|w|`` among all tensors of
    ``weights`` together, so layers lose different fractions. ``masks`` (optional) are earlier
    masks: weights they removed stay removed, whatever their current value.
    """
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError("weights must be a non-empty mapping name -> tensor")
    sparsity = _check_sparsity(sparsity)
    scores = []
    for name, w in weights.items():
        _checks.tensor(w, f"weights[{name!r}]", floating=True)
        s = w.detach().abs().flatten()
        if masks is not None:
            if name not in masks or masks[name].shape != w.shape:
                raise ValueError(f"masks must have an entry of shape {tuple(w.shape)} for {name!r}")
            s = s.masked_fill(~masks[name].flatten().to(s.device), -math.inf)
        scores.append(s)
    flat = torch.cat(scores)                                                  # (total,)
    n_prune = round(sparsity * flat.numel())
    if masks is not None:
        already = int((flat == -math.inf).sum())
        if n_prune < already:
            raise ValueError(f"sparsity {sparsity} is below the sparsity the given masks already have")
    keep = _prune_smallest(flat, n_prune)
    out, start = {}, 0
    for name, w in weights.items():
        out[name] = keep[start:start + w.numel()].reshape(w.shape)
        start += w.numel()
    return out


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks) -> nn.Module:
    """Zero the pruned weights of ``model`` in place, so the model computes (comp-masked); returns ``model``."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise KeyError(f"the model has no parameter {name!r}")
        if mask.shape != params[name].shape:
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, "
                             f"the weight {tuple(params[name].shape)}")
        params[name].mul_(mask.to(params[name].device, params[name].dtype))
    return model


def sparsity(masks: Masks) -> float:
    """Fraction of the masked weights that are removed."""
    total = sum(m.numel() for m in masks.values())
    if total == 0:
        raise ValueError("masks are empty")
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / total


@dataclass
class PruningRound:
    """One round of iterative magnitude pruning: the mask trained with, and ``fit``'s score."""

    sparsity: float
    masks: Masks
    score: float


def iterative_magnitude_pruning(model: nn.Module, fit: Callable[[nn.Module, Masks], float], *,
                                rounds: int, rate: float, rewind_state: Mapping | None = None
                                ) -> list[PruningRound]:
    """Iterative magnitude pruning with weight rewinding (the lottery-ticket procedure).

    Implements (comp-imp).

    Round ``r = 0, ..., rounds``: train with ``fit(model, masks)`` (which must keep the masks and
    return a score, e.g. test accuracy); then, except after the last round, remove the fraction
    ``rate`` of the surviving weights by global magnitude, reset every weight to ``rewind_state``
    (default: the model's weights on entry, i.e. its initialisation) and re-apply the new mask.
    Round ``r`` trains at sparsity ``1 - (1 - rate)^r``. Returns one :class:`PruningRound` per round;
    ``model`` ends with the last round's trained weights.
    """
    rounds = _checks.integer(rounds, "rounds", minimum=0)
    rate = _checks.real(rate, "rate")
    if not 0 < rate < 1:
        raise ValueError(f"rate must be in (0, 1) (the fraction pruned per round), got {rate}")
    if not callable(fit):
        raise TypeError("fit must be callable as fit(model, masks) -> score")
    rewind = copy.deepcopy(dict(rewind_state if rewind_state is not None else model.state_dict()))
    weights = prunable_weights(model)
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    history = []
    for r in range(rounds + 1):
        score = float(fit(model, masks))
        history.append(PruningRound(sparsity(masks), masks, score))
        if r == rounds:
            break
        masks = global_magnitude_masks(weights, 1 - (1 - rate) ** (r + 1), masks=masks)
        model.load_state_dict(rewind)
        apply_masks(model, masks)
    return history


# --------------------------------------------------------------------------- distillation

def _check_temperature(value) -> float:
    value = _checks.real(value, "temperature")
    if value <= 0:
        raise ValueError(f"temperature must be > 0, got {value}")
    return value


def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax of ``logits / temperature`` over the last dimension. Implements (comp-softmax-t)."""
    _checks.tensor(logits, "logits", floating=True)
    return torch.softmax(logits / _check_temperature(temperature), dim=-1)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float,
                      labels: torch.Tensor | None = None, alpha: float = 1.0) -> torch.Tensor:
    """Knowledge-distillation loss, averaged over the batch.

    ``alpha * T^2 * KL(p_T(teacher) || p_T(student)) + (1 - alpha) * CE(student, labels)``,
    where ``p_T`` is :func:`soft_targets`. The ``T^2`` keeps the soft term's gradient the same
    size as temperature changes (see (comp-kd-grad)). ``alpha < 1`` needs ``labels``.
    Implements (comp-kd-loss).
    """
    _checks.tensor(student_logits, "student_logits", ndim=2, floating=True)
    _checks.tensor(teacher_logits, "teacher_logits", ndim=2, floating=True)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape")
    T = _check_temperature(temperature)
    alpha = _checks.real(alpha, "alpha")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    log_p_student = F.log_softmax(student_logits / T, dim=-1)                 # (n, C)
    p_teacher = soft_targets(teacher_logits.detach(), T)                      # (n, C)
    soft = T * T * F.kl_div(log_p_student, p_teacher, reduction="batchmean")
    if alpha == 1:
        return soft
    if labels is None:
        raise ValueError("alpha < 1 mixes in the hard-label loss, so labels are required")
    _checks.tensor(labels, "labels", ndim=1)
    if len(labels) != len(student_logits):
        raise ValueError(f"labels has {len(labels)} rows, the logits {len(student_logits)}")
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


# --------------------------------------------------------------------------- quantization

@dataclass
class QTensor:
    """An integer tensor ``q`` with its affine map back to reals: ``w ~ scale * (q - zero_point)``."""

    q: torch.Tensor
    scale: float
    zero_point: int
    bits: int = 8

    @property
    def nbytes(self) -> int:
        """Bytes to store it: one byte per int8 entry, plus a float32 scale and an int32 zero point."""
        return self.q.numel() * self.q.element_size() + 8

    def dequantize(self) -> torch.Tensor:
        return dequantize(self)


def quantize(w: torch.Tensor, *, bits: int = 8, symmetric: bool = False) -> QTensor:
    """Per-tensor affine quantization to signed ``bits``-bit integers. Implements (comp-scale) and (comp-quant).

    The grid spans ``[min(w, 0), max(w, 0)]`` so that zero is exact: ``scale = range / (2^bits - 1)``
    and an integer ``zero_point``. ``symmetric=True`` fixes ``zero_point = 0`` and
    ``scale = max|w| / (2^(bits-1) - 1)``. Then ``q = clamp(round(w / scale) + zero_point)``, and
    every entry satisfies ``|w - scale * (q - zero_point)| <= scale / 2`` (comp-bound).
    """
    _checks.tensor(w, "w", floating=True)
    bits = _checks.integer(bits, "bits", minimum=2)
    if bits > 8:
        raise ValueError(f"bits must be <= 8 (the integers are stored as int8), got {bits}")
    if w.numel() == 0:
        raise ValueError("w is empty")
    if not torch.isfinite(w).all():
        raise ValueError("w contains NaN or infinite values")
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    w = w.detach().float()
    lo, hi = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
    if symmetric:
        scale = max(-lo, hi) / qmax
        zero_point = 0
    else:
        scale = (hi - lo) / (qmax - qmin)
    if scale == 0.0:                                 # w is all zeros: any scale represents it
        scale = 1.0
    scale = float(torch.tensor(scale, dtype=torch.float32))   # stored as float32, used as such
    if not symmetric:
        zero_point = int(min(max(qmin - round(lo / scale), qmin), qmax))
    q = torch.clamp(torch.round(w / scale) + zero_point, qmin, qmax).to(torch.int8)
    return QTensor(q, scale, zero_point, bits)


def dequantize(qt: QTensor) -> torch.Tensor:
    """The float32 tensor ``scale * (q - zero_point)``. Implements (comp-dequant)."""
    if not isinstance(qt, QTensor):
        raise TypeError(f"qt must be a QTensor (from quantize), got {type(qt).__name__}")
    return qt.scale * (qt.q.float() - qt.zero_point)


@torch.no_grad()
def quantize_model(model: nn.Module, *, bits: int = 8, symmetric: bool = False
                   ) -> tuple[nn.Module, dict[str, QTensor]]:
    """A copy of ``model`` whose ``Linear`` weights are replaced by their dequantized int8 versions.

    Returns ``(copy, {name: QTensor})``; biases stay in float32, as in most int8 inference engines.
    """
    clone = copy.deepcopy(model)
    qtensors = {}
    for name, w in prunable_weights(clone).items():
        qtensors[name] = quantize(w, bits=bits, symmetric=symmetric)
        w.copy_(dequantize(qtensors[name]).to(w.device, w.dtype))
    return clone, qtensors
