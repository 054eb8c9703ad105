r"""Projection onto the dual cone of the gradients, in the weights of the Gram matrix (UPGrad, DualProj).

Quinton & Rey, *Jacobian Descent for Multi-Objective Optimization* (2024), Proposition 1: the
projection of :math:`J^\top u` onto the dual cone :math:`\{x : J x \ge 0\}` is :math:`J^\top v` with

.. math::

    v = \arg\min_{v \ge u} v^\top G v .

With :math:`v = u + x` this is the non-negative least-squares problem
:math:`\min_{x \ge 0} \tfrac12 x^\top G x + x^\top G u`, solved exactly by Lawson and Hanson's
active-set method (*Solving Least Squares Problems*, 1974, ch. 23), written on the Gram matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torch_moo._device import reads_are_free

# Tolerance on the multipliers lambda = G v of the trace-normalised, regularised Gram matrix:
# an index joins the passive set only if lambda_j < -tol. Their rounding error is about
# k * 1e-16 * max|G| |v|, with |v| at most about |u| / reg_eps = 1e4 |u|: 1e-12 (1 + max|v|)
# sits above it, and leaving such a violation makes v wrong by at most tol / reg_eps, 1e-8 |v|.
_TOLERANCE = 1e-12


def _max_iterations(k: int) -> int:
    """Cap on the active-set iterations (one batched linear solve each). Each adds an index or drops
    at least one; Lawson and Hanson's method is finite but has no polynomial bound. In the property
    tests (k <= 16, random, rank-deficient and nearly duplicate gradients) it used under ``k + 4``;
    ``3k + 10`` leaves room. After the stop the iterations are no-ops."""
    return 3 * k + 10


def _step(
    gram: Tensor, shift: Tensor, eye: Tensor, state: tuple[Tensor, Tensor, Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    """One Lawson-Hanson iteration for a batch ``(b, k)`` of problems, with masks instead of indexing.

    ``shift`` is :math:`G u`; ``state`` is ``(x, passive, done)``. The unconstrained minimiser
    :math:`z` on the passive set solves :math:`G_{PP} z_P = -(G u)_P` (identity rows elsewhere, so
    :math:`z = 0` there). If it is positive on the passive set it is taken and the most negative
    multiplier off the set (below the tolerance) joins; none: done. Otherwise :math:`x` moves towards
    :math:`z` until the first passive entry reaches 0, and the entries at 0 leave the set.
    """
    x, passive, done = state
    system = torch.where(passive[:, :, None] & passive[:, None, :], gram, eye)
    z = torch.linalg.solve_ex(system, torch.where(passive, -shift, 0.0))[0]
    shrinking = passive & (z <= 0)
    feasible = ~shrinking.any(dim=1)

    multipliers = z @ gram + shift  # G is symmetric: (G z)^T per row
    tolerance = _TOLERANCE * (1.0 + z.abs().amax(dim=1))
    lowest, best = torch.where(passive, torch.inf, multipliers).min(dim=1)
    joins = lowest < -tolerance
    index = torch.arange(x.shape[1], device=x.device)
    added = passive | ((index == best[:, None]) & joins[:, None])

    step = x - z
    ratios = torch.where(shrinking, x / step.clamp_min(1e-300), torch.inf)
    theta, first = ratios.min(dim=1)
    walked = (x - theta[:, None] * step).clamp_min(0.0) * (index != first[:, None])

    keep = done[:, None]
    x = torch.where(keep, x, torch.where(feasible[:, None], z, walked))
    passive = torch.where(keep, passive, torch.where(feasible[:, None], added, passive & (walked > 0)))
    return x, passive, done | (feasible & ~joins)


def project_dual_cone(gram: Tensor, u: Tensor, reg_eps: float, early_exit: bool | None = None) -> Tensor:
    r"""The weights :math:`v` of the projections of :math:`J^\top u` onto the dual cone of the rows of :math:`J`.

    .. math::

        v = \arg\min_{v \ge u} v^\top Q v, \qquad
        Q = G / \operatorname{tr} G + \varepsilon I \quad (Q = \varepsilon I \text{ if } G = 0),

    torchjd's ``QuadprogProjector`` problem (trace normalisation, ``reg_eps`` :math:`= \varepsilon`),
    at every scale: torchjd treats :math:`G` as zero when :math:`\operatorname{tr} G` is below its
    absolute ``norm_eps`` (:math:`10^{-4}`), this normalises whenever the trace is positive, so the
    weights are invariant to :math:`G \to cG`. The QP is solved exactly (Lawson-Hanson, in float64)
    on the Gram matrix's device with masks and ``solve_ex``, without host synchronisation: a fixed
    :func:`_max_iterations` there, while on the CPU the loop stops once every problem is solved.

    Args:
        gram: the Gram matrix, ``(k, k)``, checked by the caller.
        u: the weights to project, ``(b, k)``: a batch of ``b`` problems.
        reg_eps: :math:`\varepsilon > 0`, which makes :math:`Q` positive definite.
        early_exit: stop as soon as solved (reads a flag on the host per iteration); ``None``: on the CPU.

    Returns:
        :math:`v`, ``(b, k)``, in ``gram``'s dtype.
    """
    exact = gram.detach().to(torch.float64)
    k = exact.shape[0]
    trace = exact.diagonal().sum()
    eye = torch.eye(k, dtype=torch.float64, device=exact.device)
    regularised = exact / torch.where(trace > 0, trace, 1.0) + reg_eps * eye
    target = u.detach().to(regularised)
    shift = target @ regularised
    batch = target.shape[0]
    state = (
        torch.zeros_like(target),
        torch.zeros_like(target, dtype=torch.bool),
        torch.zeros(batch, dtype=torch.bool, device=exact.device),
    )
    if early_exit is None:
        early_exit = reads_are_free(exact)
    for _ in range(_max_iterations(k)):
        state = _step(regularised, shift, eye, state)
        if early_exit and bool(state[2].all()):
            break
    return (target + state[0]).to(gram.dtype)
