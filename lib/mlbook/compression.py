"""Chapter "Network compression": pruning, lottery tickets, distillation, quantization, integer inference.

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
    "obd_saliency", "obs_saliency", "obs_update", "SecondOrderPruning", "obs_prune",
    "shrink_hidden", "n_parameters",
    "SharedWeights", "share_weights", "huffman_code", "huffman_encode", "huffman_decode",
    "entropy_bits",
    "soft_targets", "distillation_loss",
    "QTensor", "quantize", "quantize_on", "dequantize", "quantize_model",
    "integer_matmul", "zero_point_matmul", "FixedPoint", "fixed_point", "fixed_point_rescale",
    "IntegerLinear", "fake_quantize", "FakeQuantize", "quantization_aware", "freeze_quantized",
    "check_zero_point_matmul",
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


# --------------------------------------------------------------------------- second-order pruning

def _check_hessian(w: torch.Tensor, H: torch.Tensor) -> None:
    _checks.tensor(w, "w", ndim=1, floating=True)
    _checks.tensor(H, "H", ndim=2, floating=True)
    if H.shape != (len(w), len(w)):
        raise ValueError(f"H must be ({len(w)}, {len(w)}) for {len(w)} weights, got {tuple(H.shape)}")


def obd_saliency(w: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """Optimal Brain Damage's saliency ``H_qq w_q^2 / 2`` of every weight (comp-saliency)."""
    _check_hessian(w, H)
    return 0.5 * torch.diagonal(H) * w.square()


def obs_saliency(w: torch.Tensor, H_inv: torch.Tensor) -> torch.Tensor:
    """Optimal Brain Surgeon's saliency ``w_q^2 / (2 [H^-1]_qq)`` of every weight (comp-obs-saliency).

    The least increase of the quadratic model (comp-taylor) over all changes that set ``w_q`` to 0.
    """
    _check_hessian(w, H_inv)
    d = torch.diagonal(H_inv)
    if not (d > 0).all():
        raise ValueError("H_inv must have a positive diagonal (H positive definite)")
    return w.square() / (2 * d)


def obs_update(w: torch.Tensor, H_inv: torch.Tensor, q: int) -> torch.Tensor:
    """The change ``delta = -(w_q / [H^-1]_qq) H^-1 e_q`` that removes weight ``q`` (comp-obs-update).

    ``w + delta`` has entry ``q`` exactly 0 (it is set so, against rounding) and the other
    weights moved to compensate.
    """
    _check_hessian(w, H_inv)
    q = _checks.integer(q, "q", minimum=0)
    if q >= len(w):
        raise ValueError(f"q={q} is not an index of {len(w)} weights")
    delta = -(w[q] / H_inv[q, q]) * H_inv[:, q]
    delta[q] = -w[q]
    return delta


@dataclass
class SecondOrderPruning:
    """Result of :func:`obs_prune`: the pruned weights, the mask, the removal order, the predicted
    increase after each removal, and ``path[i]``, the weights after ``i`` removals."""

    weights: torch.Tensor
    mask: torch.Tensor
    removed: list[int]
    predicted: list[float]
    path: torch.Tensor


def obs_prune(w: torch.Tensor, H: torch.Tensor, k: int) -> SecondOrderPruning:
    """Remove ``k`` weights one at a time by Optimal Brain Surgeon (comp-obs-saliency, comp-obs-update).

    Each step removes the surviving weight of least saliency, applies its update to the others,
    and restricts the inverse Hessian to the survivors, ``H^-1 - H^-1 e_q e_q^T H^-1 / [H^-1]_qq``
    (the inverse of ``H`` with row and column ``q`` deleted, comp-obs-restrict). ``predicted[i]``
    is the quadratic model's total increase after ``i + 1`` removals.
    """
    _check_hessian(w, H)
    k = _checks.integer(k, "k", minimum=0)
    if k > len(w):
        raise ValueError(f"cannot remove {k} of {len(w)} weights")
    w = w.detach().clone().double()
    H_inv = torch.linalg.inv(H.detach().double())
    alive = torch.ones(len(w), dtype=torch.bool, device=w.device)
    removed, predicted, total, path = [], [], 0.0, [w.clone()]
    for _ in range(k):
        d = torch.diagonal(H_inv).clamp(min=torch.finfo(torch.float64).tiny)
        sal = (w.square() / (2 * d)).masked_fill(~alive, math.inf)
        q = int(sal.argmin())
        total += float(sal[q])
        w = w + obs_update(w, H_inv, q)
        col = H_inv[:, q].clone()
        H_inv = H_inv - torch.outer(col, col) / col[q]
        H_inv[q, :] = 0.0
        H_inv[:, q] = 0.0
        w[~alive] = 0.0
        alive[q] = False
        removed.append(q)
        predicted.append(total)
        path.append(w.clone())
    return SecondOrderPruning(w, alive, removed, predicted, torch.stack(path))


# --------------------------------------------------------------------------- smaller networks

@torch.no_grad()
def shrink_hidden(model: nn.Sequential, keep: Mapping[int, torch.Tensor]) -> nn.Sequential:
    """A smaller dense copy of an MLP ``Linear-ReLU-...-Linear`` without the removed hidden units.

    ``keep[i]`` is a boolean vector over the outputs of the ``Linear`` at index ``i`` of
    ``model`` (a hidden layer: a ``ReLU`` and another ``Linear`` must follow). Its unkept rows
    go, and so do the matching columns of the next ``Linear``; a removed unit with zeroed
    incoming weights still outputs the constant ``ReLU(b_j)``, so ``ReLU(b_j)`` times the
    removed column is added to the next bias (comp-fold). The result computes exactly what
    the masked network (rows zeroed, biases kept) computes.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model must be an nn.Sequential MLP, got {type(model).__name__}")
    layers = [copy.deepcopy(m) for m in model]
    for i, mask in sorted(keep.items()):
        if not (0 <= i < len(layers) - 2 and isinstance(layers[i], nn.Linear)
                and isinstance(layers[i + 1], nn.ReLU) and isinstance(layers[i + 2], nn.Linear)):
            raise ValueError(f"index {i} is not a hidden Linear followed by ReLU and Linear")
        lin, nxt = layers[i], layers[i + 2]
        mask = torch.as_tensor(mask, device=lin.weight.device)
        if mask.dtype != torch.bool or mask.shape != (lin.out_features,):
            raise ValueError(f"keep[{i}] must be a boolean vector of length {lin.out_features}")
        if not mask.any():
            raise ValueError(f"keep[{i}] removes every unit")
        small = nn.Linear(lin.in_features, int(mask.sum()), bias=lin.bias is not None)
        small = small.to(lin.weight.device, lin.weight.dtype)
        small.weight.copy_(lin.weight[mask])
        constant = torch.zeros(lin.out_features, device=lin.weight.device, dtype=lin.weight.dtype)
        if lin.bias is not None:
            small.bias.copy_(lin.bias[mask])
            # a removed unit's whole row is zero in the masked network, including weights from
            # units removed earlier, so it outputs ReLU of its *original* bias
            constant = torch.relu(model[i].bias) * ~mask               # ReLU(b_j), removed units
        after = nn.Linear(int(mask.sum()), nxt.out_features, bias=True)
        after = after.to(nxt.weight.device, nxt.weight.dtype)
        after.weight.copy_(nxt.weight[:, mask])
        folded = nxt.weight @ constant                                  # (d_next,)
        after.bias.copy_(folded + (nxt.bias if nxt.bias is not None else 0))
        layers[i], layers[i + 2] = small, after
    return nn.Sequential(*layers)


def n_parameters(model: nn.Module) -> int:
    """The number of parameters (weights and biases) of ``model``."""
    return sum(p.numel() for p in model.parameters())


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
        """Bytes to store it with ``bits`` bits per entry, packed, plus a float32 scale and an int32
        zero point (8 bits: one byte per entry)."""
        return math.ceil(self.q.numel() * self.bits / 8) + 8

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


def quantize_on(x: torch.Tensor, scale: float, zero_point: int, *, bits: int = 8) -> QTensor:
    """``x`` on a given grid ``(scale, zero_point)``, by (comp-quant): for inputs that arrive after
    the grid was fixed (calibrated) on other data. Values beyond the grid's range are clamped."""
    _checks.tensor(x, "x", floating=True)
    scale = _checks.real(scale, "scale", positive=True)
    zero_point = _checks.integer(zero_point, "zero_point")
    bits = _checks.integer(bits, "bits", minimum=2)
    if bits > 8:
        raise ValueError(f"bits must be <= 8 (the integers are stored as int8), got {bits}")
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = torch.clamp(torch.round(x.detach().float() / scale) + zero_point, qmin, qmax)
    return QTensor(q.to(torch.int8), scale, zero_point, bits)


def dequantize(qt: QTensor) -> torch.Tensor:
    """The float32 tensor ``scale * (q - zero_point)``. Implements (comp-dequant)."""
    if not isinstance(qt, QTensor):
        raise TypeError(f"qt must be a QTensor (from quantize), got {type(qt).__name__}")
    return qt.scale * (qt.q.float() - qt.zero_point)


@torch.no_grad()
def quantize_model(model: nn.Module, *, bits: int = 8, symmetric: bool = False
                   ) -> tuple[nn.Module, dict[str, QTensor]]:
    """A copy of ``model`` whose ``Linear`` weights are replaced by their dequantized int8 versions.

    Returns ``(copy, {name: QTensor})``. Biases stay in float32 here, a simulation of weight
    quantization only; integer engines store them as int32 in units of ``s_x s_W`` (see
    :class:`IntegerLinear`).
    """
    clone = copy.deepcopy(model)
    qtensors = {}
    for name, w in prunable_weights(clone).items():
        qtensors[name] = quantize(w, bits=bits, symmetric=symmetric)
        w.copy_(dequantize(qtensors[name]).to(w.device, w.dtype))
    return clone, qtensors


# --------------------------------------------------------------------------- deep compression

@dataclass
class SharedWeights:
    """A weight tensor stored as a codebook of ``k`` floats and one index per weight."""

    codebook: torch.Tensor          # (k,)
    indices: torch.Tensor           # same shape as the weight, int64 in [0, k)

    def dequantize(self) -> torch.Tensor:
        return self.codebook[self.indices]


def share_weights(w: torch.Tensor, k: int, *, max_iter: int = 100) -> SharedWeights:
    """k-means weight sharing of one tensor (comp-share), with the book's :class:`mlbook.unsupervised.KMeans`.

    The weights are clustered as ``numel`` points on the line; the centres start evenly spaced
    between the smallest and the largest weight (the linear initialisation of Han et al.), so the
    result is deterministic and large weights, which are rare, keep a centre of their own.
    """
    from .unsupervised import KMeans

    _checks.tensor(w, "w", floating=True)
    k = _checks.integer(k, "k", minimum=1)
    flat = w.detach().flatten().double()[:, None]                             # (numel, 1)
    if k > len(flat):
        raise ValueError(f"k={k} is larger than the number of weights ({len(flat)})")
    init = torch.linspace(float(flat.min()), float(flat.max()), k, dtype=torch.float64)[:, None]
    km = KMeans(k, init=init.cpu().numpy(), max_iter=max_iter).fit(flat)
    centres = torch.as_tensor(km.cluster_centers_).to(w.device).flatten()     # (k,)
    labels = torch.as_tensor(km.labels_).to(w.device).long().reshape(w.shape)
    return SharedWeights(centres.to(w.dtype), labels)


def huffman_code(symbols) -> dict[int, str]:
    """A Huffman code for the integer ``symbols`` (any sequence or tensor), as ``{symbol: bits}``.

    Implements (comp-huffman): repeatedly merge the two least frequent subtrees; ties are broken
    by creation order, so the code is deterministic. A single distinct symbol gets the code "0".
    """
    import heapq
    from collections import Counter

    values = symbols.flatten().tolist() if isinstance(symbols, torch.Tensor) else list(symbols)
    if not values:
        raise ValueError("symbols is empty")
    counts = Counter(values)
    if len(counts) == 1:
        return {values[0]: "0"}
    heap = [(n, i, {sym: ""}) for i, (sym, n) in enumerate(sorted(counts.items()))]
    heapq.heapify(heap)
    order = len(heap)
    while len(heap) > 1:
        n0, _, left = heapq.heappop(heap)
        n1, _, right = heapq.heappop(heap)
        merged = {sym: "0" + c for sym, c in left.items()}
        merged.update({sym: "1" + c for sym, c in right.items()})
        heapq.heappush(heap, (n0 + n1, order, merged))
        order += 1
    return heap[0][2]


def huffman_encode(symbols, code: Mapping[int, str]) -> str:
    """The concatenated code words of ``symbols``, as a string of '0' and '1'."""
    values = symbols.flatten().tolist() if isinstance(symbols, torch.Tensor) else list(symbols)
    missing = set(values) - set(code)
    if missing:
        raise ValueError(f"symbols {sorted(missing)[:5]} have no code word")
    return "".join(code[v] for v in values)


def huffman_decode(bits: str, code: Mapping[int, str]) -> list[int]:
    """Invert :func:`huffman_encode`: read ``bits`` left to right, emitting a symbol at each code word."""
    words = {c: sym for sym, c in code.items()}
    out, current = [], ""
    for b in bits:
        if b not in "01":
            raise ValueError(f"bits must contain only '0' and '1', got {b!r}")
        current += b
        if current in words:
            out.append(words[current])
            current = ""
    if current:
        raise ValueError("bits end in the middle of a code word")
    return out


def entropy_bits(symbols) -> float:
    """The empirical entropy of ``symbols`` in bits per symbol, the lower bound of (comp-huffman)."""
    values = symbols.flatten() if isinstance(symbols, torch.Tensor) else torch.tensor(list(symbols))
    if values.numel() == 0:
        raise ValueError("symbols is empty")
    _, counts = torch.unique(values, return_counts=True)
    p = counts.double() / values.numel()
    return float(-(p * p.log2()).sum())


# --------------------------------------------------------------------------- integer inference

_INT32_MAX = 2**31 - 1
# float64 holds every integer below 2^53 exactly; one product of two differences of int8 values
# is at most 255^2 < 2^16 in size, so a sum of fewer than 2^37 of them is exact in float64.
_FLOAT64_EXACT_TERMS = 2**37


def _int8_operand(t: torch.Tensor, name: str, ndim: int = 2) -> torch.Tensor:
    _checks.tensor(t, name, ndim=ndim)
    if t.dtype != torch.int8:
        raise TypeError(f"{name} must be an int8 tensor (e.g. QTensor.q), got {t.dtype}")
    return t


def _float64_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The int8 product computed in float64, for devices without an integer matrix product.

    Exact: every term is an integer below 2^14 in size (int8 times int8), so every partial sum
    of fewer than 2^37 terms is an integer below 2^53, which float64 represents and adds exactly.
    """
    return (a.to(torch.float64) @ b.to(torch.float64)).to(torch.int64)


def integer_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The exact integer product ``a @ b`` of two int8 matrices, as int64 values of int32 range.

    Implements the core sum of (comp-int-acc). ``a @ b`` on int8 tensors would return int8 and
    wrap around silently (four products of -128 by -128 sum to 65536, which wraps to 0), so the
    operands are widened *before* the product. On the CPU the product runs in int64; on devices
    without an integer matrix product (CUDA) it runs in float64, which is exact here because
    every partial sum is an integer smaller than 2^53 (each term is below 2^14 in size and there
    are fewer than 2^37 of them). A result outside the int32 range raises ``OverflowError``:
    an int32 accumulator would have wrapped.
    """
    _int8_operand(a, "a")
    _int8_operand(b, "b")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dimensions differ: a is {tuple(a.shape)}, b is {tuple(b.shape)}")
    if a.shape[1] >= _FLOAT64_EXACT_TERMS:
        raise ValueError(f"{a.shape[1]} terms per sum is too many for an exact product")
    if a.device.type == "cpu":
        acc = a.to(torch.int64) @ b.to(torch.int64)                          # (n, m), exact
    else:
        acc = _float64_matmul(a, b)
    if acc.numel() and int(acc.abs().max()) > _INT32_MAX:
        raise OverflowError("the product leaves the int32 range: an int32 accumulator would wrap")
    return acc


def zero_point_matmul(a: torch.Tensor, a_zero: int, b: torch.Tensor, b_zero: int) -> torch.Tensor:
    """``sum_j (a_ij - a_zero)(b_jk - b_zero)`` for int8 ``a`` (n, K) and ``b`` (K, m), exactly.

    Implements (comp-int-acc): one integer product of the raw int8 matrices, then the
    zero-point cross terms, a row sum of ``a`` times ``b_zero`` and a column sum of ``b`` times
    ``a_zero``, which cost O(nK + Km) against the product's O(nKm), plus the constant
    ``K a_zero b_zero``. Returns int64 values checked to fit an int32 accumulator.
    """
    _int8_operand(a, "a")
    _int8_operand(b, "b")
    a_zero = _checks.integer(a_zero, "a_zero")
    b_zero = _checks.integer(b_zero, "b_zero")
    K = a.shape[1]
    core = integer_matmul(a, b)                                               # (n, m)
    row = a.to(torch.int64).sum(dim=1, keepdim=True)                          # (n, 1)
    col = b.to(torch.int64).sum(dim=0, keepdim=True)                          # (1, m)
    acc = core - b_zero * row - a_zero * col + K * a_zero * b_zero
    if acc.numel() and int(acc.abs().max()) > _INT32_MAX:
        raise OverflowError("the zero-point product leaves the int32 range")
    return acc


@dataclass(frozen=True)
class FixedPoint:
    """A positive real multiplier ``M ~ (multiplier / 2^31) * 2^-shift`` with an int32 mantissa.

    ``multiplier`` is ``round(M0 * 2^31)`` for the normalised ``M0 = M * 2^shift`` in [0.5, 1),
    so it lies in [2^30, 2^31 - 1]; see (comp-int-m0).
    """

    multiplier: int
    shift: int

    @property
    def value(self) -> float:
        """The real number the pair represents (which differs from ``M`` by the rounding of ``M0``)."""
        return self.multiplier * 2.0 ** (-31 - self.shift)


def fixed_point(m: float) -> FixedPoint:
    """Write ``0 < m < 1`` as ``M0 * 2^-n`` with ``M0`` in [0.5, 1), ``M0`` as a 31-bit integer.

    Implements (comp-int-m0). Rounding ``M0 * 2^31`` can give exactly ``2^31`` (for ``M0`` just
    below 1); then the mantissa is halved and the shift lowered by one, so the mantissa always
    fits an int32. The relative error of the represented value is at most ``2^-31``.
    """
    m = _checks.real(m, "m", positive=True)
    if not m < 1:
        raise ValueError(f"the rescale multiplier must be in (0, 1), got {m}")
    mantissa, exponent = math.frexp(m)               # m = mantissa * 2^exponent, mantissa in [0.5, 1)
    shift = -exponent
    multiplier = round(mantissa * 2**31)
    if multiplier == 2**31:
        multiplier, shift = 2**30, shift - 1
    return FixedPoint(multiplier, shift)


def fixed_point_rescale(acc: torch.Tensor, fp: FixedPoint) -> torch.Tensor:
    """``round(acc * multiplier / 2^(31 + shift))`` in integer arithmetic, ties rounded up.

    Implements the rescale of (comp-int-requant): an int64 product of the int32 accumulator with
    the int32 mantissa (below 2^62 in size, so exact) and a rounding right shift.
    """
    _checks.tensor(acc, "acc")
    if acc.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"acc must be an int32 or int64 tensor, got {acc.dtype}")
    if not isinstance(fp, FixedPoint):
        raise TypeError(f"fp must be a FixedPoint (from fixed_point), got {type(fp).__name__}")
    if acc.numel() and int(acc.abs().max()) > _INT32_MAX:
        raise OverflowError("acc leaves the int32 range")
    total = 31 + fp.shift
    product = acc.to(torch.int64) * fp.multiplier                             # |.| < 2^62
    return (product + (1 << (total - 1))) >> total                            # floor(x + 1/2)


class IntegerLinear(nn.Module):
    """An integer-only ``Linear`` layer in the manner of Jacob et al. (page `compression_integer`).

    Holds the int8 weight ``q_W`` with its scale and zero point, the bias as int32 in units of
    ``s_x s_W`` (zero point 0; equation comp-int-bias), the output grid ``(s_y, z_y)`` and the
    rescale ``s_x s_W / s_y`` as a :class:`FixedPoint`. ``forward(q_x)`` maps int8 inputs on the
    input grid ``(s_x, z_x)`` to int8 outputs by (comp-int-requant); ``relu=True`` clamps at the
    output zero point, which is ReLU on the represented reals. ``last_acc`` keeps the int32
    accumulators of the latest call, for the error bound (comp-int-bound).
    """

    def __init__(self, layer: nn.Linear, *, x_scale: float, x_zero: int, y_scale: float,
                 y_zero: int, relu: bool = False, bits: int = 8):
        super().__init__()
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"layer must be an nn.Linear, got {type(layer).__name__}")
        self.x_scale = _checks.real(x_scale, "x_scale", positive=True)
        self.y_scale = _checks.real(y_scale, "y_scale", positive=True)
        self.x_zero = _checks.integer(x_zero, "x_zero")
        self.y_zero = _checks.integer(y_zero, "y_zero")
        self.relu = bool(relu)
        self.qmin, self.qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        self.weight = quantize(layer.weight.detach(), bits=bits)
        self.acc_scale = self.x_scale * self.weight.scale                       # s_x s_W
        bias = layer.bias.detach().double() if layer.bias is not None else None
        q_bias = (torch.zeros(layer.out_features, dtype=torch.int64, device=layer.weight.device)
                  if bias is None else torch.round(bias / self.acc_scale).to(torch.int64))
        if int(q_bias.abs().max()) > _INT32_MAX:
            raise OverflowError("the bias does not fit int32 at the scale s_x s_W")
        self.q_bias = q_bias                                                     # (d_out,)
        self.float_bias = bias if bias is not None else q_bias.double()          # (d_out,)
        self.rescale = fixed_point(self.acc_scale / self.y_scale)
        self.last_acc: torch.Tensor | None = None

    def reference(self, q_x: torch.Tensor) -> torch.Tensor:
        """The float64 layer on the represented reals: ``x_hat W_hat^T + b``, then ReLU if set."""
        x_hat = self.x_scale * (q_x.double() - self.x_zero)
        w_hat = self.weight.scale * (self.weight.q.double() - self.weight.zero_point)
        y = x_hat @ w_hat.T + self.float_bias                                  # (n, d_out)
        return y.clamp(min=0) if self.relu else y

    @torch.no_grad()
    def forward(self, q_x: torch.Tensor) -> torch.Tensor:
        _int8_operand(q_x, "q_x")
        acc = zero_point_matmul(q_x, self.x_zero, self.weight.q.T.contiguous(),
                                self.weight.zero_point) + self.q_bias           # (n, d_out)
        if int(acc.abs().max()) > _INT32_MAX:
            raise OverflowError("accumulator plus bias leaves the int32 range")
        self.last_acc = acc
        q_y = fixed_point_rescale(acc, self.rescale) + self.y_zero
        q_y = q_y.clamp(self.y_zero if self.relu else self.qmin, self.qmax)
        return q_y.to(torch.int8)

    def covers(self, y: torch.Tensor) -> torch.Tensor:
        """Where the real ``y`` lies on the output grid's range widened by half a step (the bound's
        condition: beyond it, clamping adds an error the bound does not count)."""
        lo = self.y_scale * (self.qmin - self.y_zero) - self.y_scale / 2
        hi = self.y_scale * (self.qmax - self.y_zero) + self.y_scale / 2
        return (y >= lo) & (y <= hi)

    def error_bound(self) -> torch.Tensor:
        """Bound (comp-int-bound) on ``|s_y (q_y - z_y) - reference|`` for the latest call.

        ``s_y/2 + s_x s_W/2 + s_x s_W |acc| 2^-31``: the output rounding, the bias rounding and
        the rounding of the multiplier's mantissa.
        """
        if self.last_acc is None:
            raise RuntimeError("call the layer first: the bound depends on its accumulators")
        return (self.y_scale / 2 + self.acc_scale / 2
                + self.acc_scale * self.last_acc.abs().double() * 2.0**-31)


# --------------------------------------------------------------------------- quantization-aware training

def fake_quantize(w: torch.Tensor, *, bits: int = 8) -> torch.Tensor:
    """``dequantize(quantize(w))`` in the forward pass, the identity in the backward pass.

    Implements the fake quantizer with the straight-through estimator (comp-int-ste): the value is
    ``w + (w_hat - w).detach()``, equal to the grid value ``w_hat`` of :func:`quantize`, while the
    gradient with respect to ``w`` is passed through unchanged. (With the grid spanning the tensor's
    own range nothing is clamped, so the clipped estimator of Jacob et al. is the identity here.)
    """
    _checks.tensor(w, "w", floating=True)
    w_hat = dequantize(quantize(w, bits=bits)).to(w.device, w.dtype)
    return w + (w_hat - w).detach()


class FakeQuantize(nn.Module):
    """A parametrization (``torch.nn.utils.parametrize``) that fake-quantizes a weight to ``bits`` bits."""

    def __init__(self, bits: int = 8):
        super().__init__()
        self.bits = _checks.integer(bits, "bits", minimum=2)
        if self.bits > 8:
            raise ValueError(f"bits must be <= 8, got {self.bits}")

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quantize(w, bits=self.bits)


def quantization_aware(model: nn.Module, *, bits: int) -> nn.Module:
    """A copy of ``model`` whose ``Linear`` weights are fake-quantized in every forward pass.

    Train the copy as usual (the optimiser updates the hidden float weights through the
    straight-through estimator); :func:`freeze_quantized` then replaces each weight by its grid
    values for good.
    """
    from torch.nn.utils import parametrize

    clone = copy.deepcopy(model)
    fq = FakeQuantize(bits)
    for m in clone.modules():
        if isinstance(m, nn.Linear):
            parametrize.register_parametrization(m, "weight", fq)
    if not any(isinstance(m, nn.Linear) for m in clone.modules()):
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers to quantize")
    return clone


def freeze_quantized(model: nn.Module) -> nn.Module:
    """Remove the fake quantizers of :func:`quantization_aware`, keeping the quantized weights."""
    from torch.nn.utils import parametrize

    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model


# --------------------------------------------------------------------------- exercise

def check_zero_point_matmul(fn: Callable):
    """Checker for the notebook's exercise: ``fn(a, a_zero, b, b_zero)`` must return the exact
    integers ``sum_j (a_ij - a_zero)(b_jk - b_zero)`` for int8 ``a`` (n, K), ``b`` (K, m), as an
    integer tensor (comp-int-acc), including where the products overflow int8 and int16.
    """
    from . import exercises

    def case(what, a, za, b, zb, hint):
        exact = ((a.double() - za) @ (b.double() - zb))            # integers below 2^53: exact
        def test(r):
            return (isinstance(r, torch.Tensor) and not r.is_floating_point()
                    and tuple(r.shape) == tuple(exact.shape) and torch.equal(r.double(), exact))
        return exercises.Case(what, (a, za, b, zb), test, hint)

    gen = torch.Generator().manual_seed(3)
    small_a = torch.randint(-5, 6, (3, 4), generator=gen, dtype=torch.int8)
    small_b = torch.randint(-5, 6, (4, 2), generator=gen, dtype=torch.int8)
    ones = torch.full((2, 4), -128, dtype=torch.int8)
    big_a = torch.randint(-128, 128, (5, 64), generator=gen, dtype=torch.int8)
    big_b = torch.randint(-128, 128, (64, 7), generator=gen, dtype=torch.int8)
    cases = [
        case("small values, zero points 0", small_a, 0, small_b, 0,
             "return an integer tensor of shape (n, m) holding the matrix product."),
        case("small values, zero points 2 and -3", small_a, 2, small_b, -3,
             "subtract each operand's zero point before multiplying (or add the cross terms)."),
        case("entries -128, whose products overflow int8 and whose sums overflow int16",
             ones, 0, ones.T.contiguous(), 0,
             "int8 @ int8 returns int8 and wraps around: widen to int32 or int64 first."),
        case("random int8 matrices with zero points 127 and -128 (differences up to 255)",
             big_a, 127, big_b, -128,
             "a - a_zero does not fit int8: widen the operands before subtracting."),
    ]
    return exercises.check(fn, cases, name=getattr(fn, "__name__", "your function"))
