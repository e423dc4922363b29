"""Sigmoid focal loss (Lin et al. 2017) summed over dense per-level logits, with its gradient
computed in the same pass.

The classification loss of a one-stage detector runs over every (anchor, class) pair: 4.4 M
elements per 512 px image for EfficientDet-D0 with 90 classes. Written with autograd as one-hot
targets times BCE times a modulating factor it takes about ten full-size passes forward and as
many backward, the biggest single cost of a CPU training step. Here nearly every element is a
negative, so the loss is taken as if every target were 0 (a few elementwise passes, no one-hot
tensor, no flattening copy of the head outputs), the gradient is written analytically while the
intermediates are at hand, and the few positive elements are corrected by indexing.

For logit ``x``, ``p = sigmoid(x)``, ``softplus(x) = -log(1 - p)``:

    target 0:  (1 - alpha) * p**gamma * softplus(x)
               d/dx = (1 - alpha) * p**gamma * (gamma * (1 - p) * softplus(x) + p)
    target 1:  alpha * (1 - p)**gamma * softplus(-x)
               d/dx = -alpha * (1 - p)**gamma * (gamma * p * softplus(-x) + (1 - p))

which is ``torchvision.ops.sigmoid_focal_loss`` term by term.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

# Per-anchor label values besides a class index (the convention of core.tasks.anchor_loss.assign)
BACKGROUND = -1  # every class is a negative target
IGNORE = -2      # no loss at all


def sigmoid_focal_loss_sum(logits: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], alpha: float,
                           gamma: float) -> torch.Tensor:
    """Focal loss summed over all elements of all ``logits`` whose anchor is not ignored.

    ``logits[i]``: ``[..., C]`` class logits (any strides, e.g. a permuted view of a head output;
    any float dtype, computed in float32); ``labels[i]``: int64 of the leading shape ``[...]``, a
    class index ``0..C-1`` (that class is the positive target, the others negatives), ``-1``
    background (all negatives) or ``-2`` ignored (no loss). Returns a float32 scalar;
    differentiable with respect to every ``logits[i]``.
    """
    if len(logits) != len(labels):
        raise ValueError(f"{len(logits)} logit tensors but {len(labels)} label tensors")
    for x, lab in zip(logits, labels):
        if x.shape[:-1] != lab.shape:
            raise ValueError(f"logits {tuple(x.shape)} need labels of shape {tuple(x.shape[:-1])}, got {tuple(lab.shape)}")
    return _FocalLossSum.apply(float(alpha), float(gamma), tuple(labels), *logits)


class _FocalLossSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, alpha: float, gamma: float, labels: tuple[torch.Tensor, ...], *logits: torch.Tensor):
        total = torch.zeros((), dtype=torch.float32, device=logits[0].device)
        grads = []
        for x_in, lab in zip(logits, labels):
            loss, grad = _level(x_in.float(), lab, alpha, gamma)
            total += loss
            grads.append(grad.to(x_in.dtype))
        ctx.save_for_backward(*grads)
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return (None, None, None) + tuple(g * grad_output.to(g.dtype) for g in ctx.saved_tensors)


def _power(p: torch.Tensor, gamma: float) -> torch.Tensor:
    """``p ** gamma`` with the common exponents done without ``pow`` (several times faster)."""
    if gamma == 2.0:
        return p.square()
    if gamma == 1.5:
        return p.sqrt().mul_(p)
    if gamma == 1.0:
        return p.clone()
    return p.pow(gamma)


def _level(x: torch.Tensor, labels: torch.Tensor, alpha: float, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss sum and gradient (float32, same shape and strides as ``x``) of one logit tensor.

    Dense passes treat every element as a negative; ignored anchors and positive elements, a
    small minority, are then corrected by indexing. Full reductions (never one over the class
    axis, which is strided in a permuted head output) keep the passes in memory order."""
    p = torch.sigmoid(x)
    softplus = F.softplus(x)
    weight = _power(p, gamma).mul_(1.0 - alpha)  # (1 - alpha) p**gamma
    negative = weight * softplus
    loss = negative.sum()
    grad = torch.addcmul(p, 1.0 - p, softplus, value=gamma).mul_(weight)
    del softplus, weight

    ignored = (labels == IGNORE).nonzero(as_tuple=True)
    if ignored[0].numel():
        loss = loss - negative[ignored].sum()
        grad[ignored] = 0.0
    positive = (labels >= 0).nonzero(as_tuple=True)
    if positive[0].numel():
        positive = positive + (labels[positive],)
        xp, qp = x[positive], 1.0 - p[positive]
        focal = alpha * _power(qp, gamma)
        loss = loss + (focal * F.softplus(-xp) - negative[positive]).sum()
        grad[positive] = -focal * (gamma * (1.0 - qp) * F.softplus(-xp) + qp)
    return loss, grad
