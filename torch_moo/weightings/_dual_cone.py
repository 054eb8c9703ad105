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

import numpy as np
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
    at least one; Lawson and Hanson's method is finite but has no polynomial bound. On the property
    tests' problems (k <= 16, random, rank-deficient and nearly duplicate gradients; 12,000 batches)
    it used at most ``k + 5`` (``k + 9`` with ``reg_eps = 1e-10``), mostly well under ``k``;
    ``3k + 10`` leaves room. After the stop the iterations are no-ops."""
    return 3 * k + 10


def _passive_minimiser(system: Tensor, rhs: Tensor) -> Tensor:
    """The solutions of the masked passive systems (symmetric positive definite, as :math:`Q` is), by
    Cholesky: on the CPU as fast as ``solve_ex`` (LU) at ``k = 2`` and 20% faster at ``k >= 8``
    (40 against 50 microseconds for 16 systems of 16). Both paths solve with it: they agree bit for bit."""
    return torch.cholesky_solve(rhs[..., None], torch.linalg.cholesky_ex(system)[0])[..., 0]


def _step(
    gram: Tensor, shift: Tensor, eye: Tensor, state: tuple[Tensor, Tensor, Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    r"""One Lawson-Hanson iteration for a batch ``(b, k)`` of problems, with masks instead of indexing.

    ``shift`` is :math:`G u`; ``state`` is ``(x, passive, done)``, ``x`` feasible and zero off the
    passive set. The unconstrained minimiser :math:`z` on the passive set solves
    :math:`G_{PP} z_P = -(G u)_P` (identity rows elsewhere, so :math:`z = 0` there). If it is
    positive on the passive set it is taken and the most negative multiplier off the set (below the
    tolerance) joins; none: done. Otherwise :math:`x` moves towards :math:`z` until the first
    passive entry reaches 0, and the entries of :math:`z \le 0` that reach 0 leave the set (from
    :math:`x = 0`, the start, all of them at once). :func:`_solve_on_host` is the same iteration.
    """
    x, passive, done = state
    system = torch.where(passive[:, :, None] & passive[:, None, :], gram, eye)
    z = _passive_minimiser(system, torch.where(passive, -shift, 0.0))
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
    passive = torch.where(keep, passive, torch.where(feasible[:, None], added, passive & ((walked > 0) | ~shrinking)))
    return x, passive, done | (feasible & ~joins)


def _solve_on_host(gram: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """:func:`_step`'s iterations on host arrays, each problem dropped from the batch once solved.

    The same tests and the same solve (:func:`_passive_minimiser`), so the same weights as the device
    path, bit for bit (a multiplier within rounding of the tolerance could tip one the other way);
    the other ops are numpy's, about three times cheaper than torch's on these small arrays.
    """
    batch, k = shift.shape
    eye = np.eye(k)
    passive = shift < -_TOLERANCE
    x = np.zeros_like(shift)
    rows = np.flatnonzero(passive.any(axis=1))  # x = 0 solves the others
    for _ in range(_max_iterations(k)):
        if not rows.size:
            break
        sets, offset = passive[rows], shift[rows]
        system = np.where(sets[:, :, None] & sets[:, None, :], gram, eye)
        z = _passive_minimiser(torch.from_numpy(system), torch.from_numpy(np.where(sets, -offset, 0.0))).numpy()
        shrinking = sets & (z <= 0)
        walking = shrinking.any(axis=1)

        multipliers = np.where(sets, np.inf, z @ gram + offset)
        best = multipliers.argmin(axis=1)
        joins = ~walking & (multipliers.min(axis=1) < -_TOLERANCE * (1.0 + np.abs(z).max(axis=1)))
        passive[rows[joins], best[joins]] = True

        if walking.any():
            moving, shrinking = rows[walking], shrinking[walking]
            current = x[moving]
            step = current - z[walking]
            ratios = np.divide(current, np.maximum(step, 1e-300), out=np.full_like(step, np.inf), where=shrinking)
            walked = np.maximum(current - ratios.min(axis=1, keepdims=True) * step, 0.0)
            walked[np.arange(moving.size), ratios.argmin(axis=1)] = 0.0
            z[walking] = walked
            passive[moving] &= (walked > 0) | ~shrinking
        x[rows] = z
        rows = rows[walking | joins]
    return x


def project_dual_cone(gram: Tensor, u: Tensor, reg_eps: float, early_exit: bool | None = None) -> Tensor:
    r"""The weights :math:`v` of the projections of :math:`J^\top u` onto the dual cone of the rows of :math:`J`.

    .. math::

        v = \arg\min_{v \ge u} v^\top Q v, \qquad
        Q = G / \operatorname{tr} G + \varepsilon I \quad (Q = \varepsilon I \text{ if } G = 0),

    torchjd's ``QuadprogProjector`` problem (trace normalisation, ``reg_eps`` :math:`= \varepsilon`),
    at every scale: torchjd treats :math:`G` as zero when :math:`\operatorname{tr} G` is below its
    absolute ``norm_eps`` (:math:`10^{-4}`), this normalises whenever the trace is positive, so the
    weights are invariant to :math:`G \to cG`. The QP is solved exactly (Lawson-Hanson, in float64),
    from the passive sets of the constraints violated at :math:`v = u` (Bro & De Jong, *A fast
    non-negativity-constrained least squares algorithm*, J. Chemometrics 1997, start from a guess
    too): the iterations first drop the indices where the minimiser on the set is not positive, and
    where the gradients conflict little the rest is the solution's set, found in one or two solves.
    On an accelerator: on the device, with masks and Cholesky solves, a fixed :func:`_max_iterations`
    without host synchronisation. On the CPU: :func:`_solve_on_host`, the same iterations, each
    problem dropped from the batch once solved.

    Args:
        gram: the Gram matrix, ``(k, k)``, checked by the caller.
        u: the weights to project, ``(b, k)``: a batch of ``b`` problems.
        reg_eps: :math:`\varepsilon > 0`, which makes :math:`Q` positive definite.
        early_exit: solve on the host (on an accelerator, one transfer each way); ``None``: on the CPU.

    Returns:
        :math:`v`, ``(b, k)``, in ``gram``'s dtype.
    """
    exact = gram.detach().to(torch.float64)
    trace = exact.trace()
    regularised = exact / torch.where(trace > 0, trace, 1.0)
    regularised.diagonal().add_(reg_eps)
    target = u.detach().to(torch.float64)
    shift = target @ regularised
    if reads_are_free(exact) if early_exit is None else early_exit:
        x = torch.from_numpy(_solve_on_host(regularised.cpu().numpy(), shift.cpu().numpy())).to(exact.device)
    else:
        eye = torch.eye(exact.shape[0], dtype=torch.float64, device=exact.device)
        state = (torch.zeros_like(target), shift < -_TOLERANCE, torch.zeros_like(target[:, 0], dtype=torch.bool))
        for _ in range(_max_iterations(exact.shape[0])):
            state = _step(regularised, shift, eye, state)
        x = state[0]
    return (target + x).to(gram.dtype)
