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
    without a host synchronisation; a library QP solver would run on the host. The sums run on
    :math:`v - \max_i v_i`, so the threshold is accurate at every finite scale; it is returned
    as :math:`\max_i v_i` plus that, rounded to the input's dtype, which for a large maximum
    cannot resolve :math:`v_i - \tau` (:math:`3 \cdot 10^7 - 1` is not a float32): form the weights
    with :func:`project_simplex`, which never leaves the shifted values. NaN or :math:`+\infty`
    in the input gives a NaN threshold.

    Args:
        values: tensor of shape ``(..., k)``, floating point.

    Returns:
        Tensor of shape ``(..., 1)``.
    """
    top, _, threshold = _shifted_threshold(values)
    return top + threshold


def _shifted_threshold(values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""``(m, v - m, tau - m)`` with :math:`m = \max_i v_i`: the threshold of the shifted values.

    The projection commutes with a common shift, and after it the entries that can be active
    lie in :math:`(-1, 0]`: :math:`\tau - m \ge \tau_1 - m = -1`. For :math:`m \ge 2` such an
    entry is at least :math:`m/2`, so its difference from :math:`m` is exact (Sterbenz; for
    :math:`m < 2` it is below 1 and rounded by half an epsilon at most), and the cumulative sums
    over the active entries stay below :math:`k` in magnitude, so their
    rounding is that of numbers of order one whatever the input's scale. Summing the raw values
    instead loses every entry below the spacing of the largest (all weights 0 once it passes
    :math:`2^{24}` in float32). Entries more than 1 below :math:`m` are inactive, whatever their
    rounding (it is monotone and :math:`-1` is representable), and an overflow to
    :math:`-\infty` keeps them so.
    """
    top = values.amax(dim=-1, keepdim=True)
    shifted = values - top
    ordered = torch.sort(shifted, dim=-1, descending=True).values
    ranks = torch.arange(1, values.shape[-1] + 1, device=values.device, dtype=values.dtype)
    return top, shifted, ((ordered.cumsum(dim=-1) - 1) / ranks).amax(dim=-1, keepdim=True)


def project_simplex(values: Tensor) -> Tensor:
    r"""Euclidean projection onto the probability simplex along the last dimension.

    .. math::

        \operatorname{proj}_\Delta(v) = \arg\min_{w \ge 0,\ \sum_i w_i = 1} \|w - v\|_2
        = \max(0, v - \tau),

    with :math:`\tau` from :func:`simplex_threshold`, computed on :math:`v - \max_i v_i` (the
    projection commutes with a common shift). For finite input the result is on the simplex and
    within a few multiples of :math:`k` times the dtype's epsilon of the exact projection, in
    absolute terms, whatever the input's scale: ``[3e7, 1.0]`` gives ``[1, 0]`` in float32.

    Example:
        >>> project_simplex(torch.tensor([0.5, 2.0, -1.0]))
        tensor([0., 1., 0.])
    """
    _, shifted, threshold = _shifted_threshold(values)
    return (shifted - threshold).clamp_min(0)
