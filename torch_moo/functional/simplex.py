"""Euclidean projection onto the probability simplex."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["project_simplex", "simplex_threshold"]


def simplex_threshold(values: Tensor) -> Tensor:
    r"""Threshold :math:`\tau` of the Euclidean projection onto the simplex (last dimension).

    .. math::

        \sum_i \max(0, v_i - \tau) = 1,

    found by sorting (Held, Wolfe & Crowder 1974; Duchi et al. 2008): with
    :math:`u` the values sorted in descending order and :math:`\rho` the number of
    :math:`j` with :math:`u_j > (\sum_{i \le j} u_i - 1) / j`,
    :math:`\tau = (\sum_{i \le \rho} u_i - 1) / \rho`.

    Written with tensor operations only (sort, cumsum, gather) so that it stays on the
    device without a host synchronisation; a library QP solver would run on the host.

    Args:
        values: tensor of shape ``(..., k)``, floating point.

    Returns:
        Tensor of shape ``(..., 1)``.
    """
    k = values.shape[-1]
    ordered = torch.sort(values, dim=-1, descending=True).values
    partial_sums = ordered.cumsum(dim=-1) - 1
    ranks = torch.arange(1, k + 1, device=values.device, dtype=values.dtype)
    # The condition holds on a prefix and always for j = 1, so the count is the last index;
    # the floor of 1 keeps the gather in bounds for non-finite input, which then yields NaN.
    support = (ordered * ranks > partial_sums).sum(dim=-1, keepdim=True).clamp_min(1)
    return partial_sums.gather(-1, support - 1) / support


def project_simplex(values: Tensor) -> Tensor:
    r"""Euclidean projection onto the probability simplex along the last dimension.

    .. math::

        \operatorname{proj}_\Delta(v) = \arg\min_{w \ge 0,\ \sum_i w_i = 1} \|w - v\|_2
        = \max(0, v - \tau),

    with :math:`\tau` from :func:`simplex_threshold`.

    Example:
        >>> project_simplex(torch.tensor([0.5, 2.0, -1.0]))
        tensor([0., 1., 0.])
    """
    return (values - simplex_threshold(values)).clamp_min(0)
