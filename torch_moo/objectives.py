"""Differentiable sparsity objectives that take a place in the loss vector."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["l1", "sparsifiable_parameters"]


def sparsifiable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The weight matrices and convolution kernels of ``module`` (parameters with two or more
    dimensions), skipping biases and normalisation scales."""
    return [parameter for parameter in module.parameters() if parameter.dim() >= 2]


def l1(params_or_module: nn.Module | Iterable[Tensor], *, reduction: Literal["sum", "mean"] = "sum") -> Tensor:
    r"""The :math:`\ell_1` norm of the weights, :math:`\sum_l \|W_l\|_1`, as a differentiable objective.

    Reiners, Klamroth & Stiglmayr, arXiv:2008.13590 (cross-entropy vs :math:`\ell_1`).

    Args:
        params_or_module: a module (its weight matrices and kernels, see
            :func:`sparsifiable_parameters`) or an iterable of tensors (all of them).
        reduction: ``"sum"`` for the norm, ``"mean"`` to divide by the number of entries.

    Example:
        >>> l1(torch.nn.Linear(3, 2, bias=False)).shape
        torch.Size([])
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    params = (
        sparsifiable_parameters(params_or_module)
        if isinstance(params_or_module, nn.Module)
        else list(params_or_module)
    )
    if not params:
        raise ValueError("l1 got no parameters to penalise")
    total = torch.stack([p.abs().sum() for p in params]).sum()
    return total / sum(p.numel() for p in params) if reduction == "mean" else total
