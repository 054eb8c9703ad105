"""Euclidean projection onto the probability simplex."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["project_simplex", "simplex_threshold"]


def simplex_threshold(values: Tensor) -> Tensor:
    r"""Threshold :math:`\tau` of the Euclidean projection onto the simplex (last dimension).

    .. math::

        \sum_i \max(0, v_i - \tau) = 1, \qquad
        \tau = \max_j \frac{\sum_{i \le j} u_i - 1}{j},

    with :math:`u` the values sorted in descending order (Held, Wolfe & Crowder 1974; Duchi et
    al. 2008; the maximum form: Condat 2016). The candidates
    :math:`\tau_j` rise while :math:`u_{j+1} > \tau_j`, since
    :math:`\tau_{j+1} - \tau_j = (u_{j+1} - \tau_j)/(j+1)`, and fall after, so their maximum
    is the threshold.

    Written with tensor operations only (sort, cumsum, max) so that it stays on the device
    without a host synchronisation; a library QP solver would run on the host. Non-finite input
    gives a non-finite threshold.

    Args:
        values: tensor of shape ``(..., k)``, floating point.

    Returns:
        Tensor of shape ``(..., 1)``.
    """
    ordered = torch.sort(values, dim=-1, descending=True).values
    ranks = torch.arange(1, values.shape[-1] + 1, device=values.device, dtype=values.dtype)
    return ((ordered.cumsum(dim=-1) - 1) / ranks).amax(dim=-1, keepdim=True)


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
