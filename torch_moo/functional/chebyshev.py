r"""The augmented weighted Chebyshev problem and its augmented Lagrangian.

Hotegni, Peitz & Berkemeier, *Multi-Objective Optimization for Sparse Deep Neural Network
Training* (arXiv:2308.12243). With preference :math:`k \ge 0`, reference point :math:`a` and
augmentation :math:`\varepsilon`, the problem over the network weights :math:`\theta` and an
auxiliary level :math:`t` is

.. math::

    \min_{\theta, t}\ t \quad \text{s.t.} \quad
    c_i = g_i(\theta) - t \le 0, \qquad
    g_i = k_i \Big( (f_i - a_i) + \varepsilon \sum_j (f_j - a_j) \Big).

Its augmented Lagrangian in the Powell-Hestenes-Rockafellar form is
:math:`L = t + \sum_i \psi(c_i, \lambda_i, \mu)`. For fixed :math:`\theta` it is convex and
piecewise quadratic in the scalar :math:`t`, so :func:`~torch_moo.functional.optimal_level` minimises it exactly
instead of leaving :math:`t` to the base optimizer, and :func:`~torch_moo.functional.multiplier_estimate` gives the
multipliers' first-order estimate there.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from torch_moo.functional.simplex import _shifted_threshold, simplex_threshold

__all__ = [
    "MultiplierRule",
    "chebyshev_terms",
    "chebyshev_constraints",
    "phr_penalty",
    "optimal_level",
    "multiplier_estimate",
    "chebyshev_objective_weights",
]

MultiplierRule = Literal["phr", "reference"]


def chebyshev_terms(losses: Tensor, preference: Tensor, reference: Tensor, augmentation: float) -> Tensor:
    r"""Weighted, augmented distances to the reference point.

    .. math::

        g_i = k_i \Big( (f_i - a_i) + \varepsilon \sum_j (f_j - a_j) \Big)
    """
    gaps = losses - reference
    return preference * torch.add(gaps, gaps.sum(dim=-1, keepdim=True), alpha=augmentation)


def chebyshev_constraints(
    losses: Tensor, level: Tensor, preference: Tensor, reference: Tensor, augmentation: float
) -> Tensor:
    r"""Constraint values :math:`c_i = g_i - t` of the augmented Chebyshev problem (feasible: :math:`c \le 0`)."""
    return chebyshev_terms(losses, preference, reference, augmentation) - level


def phr_penalty(constraints: Tensor, multipliers: Tensor, penalty: Tensor | float) -> Tensor:
    r"""Powell-Hestenes-Rockafellar term for inequality constraints :math:`c \le 0`.

    .. math::

        \psi(c, \lambda, \mu) =
        \begin{cases}
            \lambda c + \tfrac{\mu}{2} c^2 & c \ge -\lambda / \mu \\
            -\lambda^2 / (2 \mu) & \text{otherwise,}
        \end{cases}
        \qquad \partial_c \psi = \max(0, \lambda + \mu c).

    Continuous and once differentiable at the switch point :math:`c = -\lambda/\mu`
    (Nocedal & Wright, *Numerical Optimization*, §17.4).
    """
    active = constraints >= -multipliers / penalty
    return torch.where(
        active,
        multipliers * constraints + 0.5 * penalty * constraints.square(),
        -multipliers.square() / (2 * penalty),
    )


def _threshold(shifted: Tensor, rule: MultiplierRule) -> Tensor:
    r""":math:`\mu t^*` from :math:`z = \lambda + \mu g`, shape ``(..., 1)``."""
    if rule == "phr":
        return simplex_threshold(shifted)
    return (shifted.sum(dim=-1, keepdim=True) - 1) / shifted.shape[-1]


def optimal_level(terms: Tensor, multipliers: Tensor, penalty: Tensor | float, rule: MultiplierRule = "phr") -> Tensor:
    r"""The level :math:`t^*` that minimises the augmented Lagrangian, in closed form.

    For ``rule="phr"``, :math:`L(t) = t + \sum_i \psi(g_i - t, \lambda_i, \mu)`; setting
    :math:`\partial_t L = 1 - \sum_i \max(0, \lambda_i + \mu (g_i - t)) = 0` makes
    :math:`\mu t^*` the simplex-projection threshold of :math:`z = \lambda + \mu g`
    (:func:`~torch_moo.functional.simplex_threshold`). For ``rule="reference"`` (the
    equality-style :math:`L = t + \lambda^\top c + \tfrac{\mu}{2}\|c\|^2` of the authors' code),
    :math:`\mu t^* = (\sum_i z_i - 1) / m`.
    """
    shifted = multipliers + penalty * terms
    return _threshold(shifted, rule).squeeze(-1) / penalty


def multiplier_estimate(
    terms: Tensor, multipliers: Tensor, penalty: Tensor | float, rule: MultiplierRule = "phr"
) -> Tensor:
    r"""First-order multiplier estimate :math:`\lambda + \mu\, c(t^*)` at the optimal level.

    The derivatives of :math:`\min_t L` with respect to the :math:`g_i` are its positive part
    (PHR; they lie on the simplex: :math:`\operatorname{proj}_\Delta(\lambda + \mu g)`) or the
    estimate itself (reference rule), and the outer update averages it. Formed as
    :math:`(z - z_{\max}) - (\mu t^* - z_{\max})` with :math:`z = \lambda + \mu g` (both
    thresholds commute with a common shift), it stays accurate for tiny :math:`\mu`, where
    :math:`t^*` itself is ill-conditioned, and at any scale of :math:`z`: with
    :math:`z = (5 \cdot 10^{29}, 0.3)` the difference :math:`z_1 - \mu t^* = 1` is below the
    spacing of :math:`z_1`, but not of :math:`z_1 - z_{\max} = 0`.
    """
    return _estimate(multipliers + penalty * terms, rule)


def _estimate(shifted: Tensor, rule: MultiplierRule) -> Tensor:
    r""":func:`multiplier_estimate` from :math:`z = \lambda + \mu g`."""
    if rule == "phr":  # the projection's threshold is formed on z - z_max already
        _, relative, threshold = _shifted_threshold(shifted)
        return relative - threshold
    relative = shifted - shifted.amax(dim=-1, keepdim=True)
    return relative - _threshold(relative, rule)


def _linear_map(preference: Tensor, augmentation: float) -> Tensor:
    r"""The matrix :math:`T` of the linear maps of :func:`chebyshev_terms` and :func:`chebyshev_objective_weights`.

    .. math::

        T_{ji} = k_i (\delta_{ij} + \varepsilon), \qquad g = T^\top (f - a), \qquad
        \omega \propto T d ,

    for a rule that applies both at every step: one matrix-vector product each, where the
    elementwise forms take three ops (a kernel launch each on a GPU).
    """
    eye = torch.eye(preference.shape[-1], dtype=preference.dtype, device=preference.device)
    return chebyshev_terms(eye, preference, torch.zeros_like(preference), augmentation)


def chebyshev_objective_weights(dual: Tensor, preference: Tensor, augmentation: float) -> Tensor:
    r"""Weights on the objectives :math:`f_j` from the weights :math:`d_i = \partial L / \partial g_i`.

    .. math::

        \omega_j \propto \frac{\partial L}{\partial f_j}
        = k_j d_j + \varepsilon \sum_i k_i d_i, \qquad \sum_j |\omega_j| = 1.

    Rescaling the gradient by a positive number keeps its direction and the stationary points
    of the inner problem; it makes the learning rate mean what it means for a single loss, and
    one objective gets weight exactly 1. The divisor is the :math:`\ell_1` norm of the raw
    weights. Under the PHR rule :math:`d \ge 0`, so that is their sum: the weights are
    non-negative and sum to one. Under the reference rule :math:`d` may have negative entries
    and the plain sum, :math:`(1 + m\varepsilon) \sum_i k_i d_i`, may be zero or negative,
    where dividing by it would blow up or turn descent into ascent; the :math:`\ell_1` norm
    keeps the direction, every weight in :math:`[-1, 1]`, and the sum at one whenever no
    weight is negative. All-zero raw weights (every active constraint has :math:`k_i = 0`)
    stay zero.
    """
    raw = preference * dual
    return _unit_l1(torch.add(raw, raw.sum(dim=-1, keepdim=True), alpha=augmentation))


def _unit_l1(raw: Tensor) -> Tensor:
    """``raw`` divided by its l1 norm (last dimension); all zeros stay zero."""
    # |raw_j| <= scale, so the quotient is at most 1 in size (a subnormal scale too); all-zero raw stays 0:
    # the scale is raised to the least subnormal number at most, which only a zero scale is below.
    finfo = torch.finfo(raw.dtype)
    return raw / torch.linalg.vector_norm(raw, 1, dim=-1, keepdim=True).clamp_min(finfo.tiny * finfo.eps)
