r"""The min-norm point of the convex hull of the objectives' gradients (the MGDA subproblem).

Désidéri, *Multiple-gradient descent algorithm (MGDA) for multiobjective optimization*
(Comptes Rendus Mathématique, 2012); Sener & Koltun, *Multi-Task Learning as Multi-Objective
Optimization* (NeurIPS 2018). The solver is Wolfe's min-norm-point algorithm, *Finding the nearest
point in a polytope* (Mathematical Programming, 1976), written on the Gram matrix alone.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from torch_moo._device import reads_are_free
from torch_moo._validation import all_finite, check_gram_shape

__all__ = ["MinNormSolution", "min_norm_solve", "min_norm_weights"]

# Wolfe's tolerance Z1 on the Gram matrix scaled to a largest diagonal entry of 1: an index
# joins the support only if it lowers <x, g_j> below ||x||^2 by more than this. The float64
# rounding error of those inner products is about k * 1e-16, so 1e-12 leaves a wide margin
# against adding on noise, and it bounds the final relative gap.
_ADD_TOLERANCE = 1e-12
# Ridge added to the scaled Gram matrix: G + r I is the Gram matrix of the gradients lifted to
# (g_i, sqrt(r) e_i), which are linearly independent, so every bordered system is non-singular
# with a condition number of at most about k / r, even for duplicate or nearly duplicate
# gradients (without it, gradients 1e-8 apart give systems singular to working precision and
# a stop up to 1e-8 above the optimum). It moves the objective by at most r and the gap by at
# most r; being below _ADD_TOLERANCE, it never makes an index join on its own.
_RIDGE = 1e-13
# How far a major cycle's norm may rise, once, without tripping the safety net against cycling:
# the rounding of mu^T G mu for weights of order one. Near a zero optimum, an improving vertex
# can lower ||x||^2 by less than that (the first-order test sees 1e-9, the norm 1e-17); halting
# at the first such cycle left a gap of 1e-8 (hypothesis found gradients g, g + 1e-8 h, -g).
_ROUNDING = 1e-15
# The solver's constants (gram, bordered, eye, index, last) and state (lam, support, done, anchor_norm, stalled).
_Tensors5 = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


def _max_iterations(k: int) -> int:
    """Cap on the solver's iterations (one linear solve each).

    An iteration either adds one index to the support ("major cycle"), removes at least one
    ("minor cycle"), or stops. Removals never outnumber additions plus the starting index, so
    the count is at most ``2 * additions + 1``; the support never exceeds ``min(k, rank + 1)``
    indices. Each major cycle strictly lowers ``||x||`` and no support repeats, so the method is
    finite (Wolfe 1976), but there is no polynomial bound: De Loera, Haddock & Rademacher
    (STOC 2018) build exponential instances. In practice an index is rarely added twice: over the
    property tests (random, rank-deficient, duplicate, opposite and rescaled gradients, k <= 16)
    the solver has used well under ``2k + 2`` iterations. ``4k + 10`` leaves room, and the
    returned gap says whether it was enough; after the stop the iterations are no-ops.
    """
    return 4 * k + 10


def _wolfe_step(constants: _Tensors5, state: _Tensors5) -> _Tensors5:
    """One iteration of Wolfe's algorithm with masks, without Python branching on tensor values.

    ``constants`` is ``(gram, bordered, eye, index, last)``: the scaled Gram matrix ``G``,
    ``[[G, 1], [1^T, 0]]``, the identity of that size, ``arange(k)`` and a one-element ``True``.
    Selections use ``min(dim=0)`` and comparisons with ``index``: indexing with a tensor index
    or ``one_hot`` would read the value on the host. ``state`` is
    ``(lam, support, done, anchor_norm, stalled)``: the current point (on the simplex, zero off
    ``support``), the current corral (bool), whether the method has stopped (bool scalar), the
    least squared norm of a major cycle so far, and whether the last major cycle failed to
    lower it. Returns the next state; nothing changes once
    ``done``. Written for few operations, since each costs about a microsecond on the CPU and a
    kernel launch on a GPU.
    """
    gram, bordered, eye, index, last = constants
    lam, support, done, anchor_norm, stalled = state
    # Affine minimiser of the corral: [[G_SS, 1], [1^T, 0]] [mu; nu] = [0; 1], the rows and
    # columns off the support replaced by identity rows, which makes mu exactly 0 there. The
    # corral's points are affinely independent, so the system is non-singular; should a solve
    # fail anyway (only rounding could make it), its non-finite result stops at the current point.
    rows = torch.cat((support, last))
    system = torch.where(rows[:, None] & rows[None, :], bordered, eye)
    mu = torch.linalg.solve_ex(system, eye[:, -1])[0][:-1]
    g_mu = gram @ mu
    norm = mu @ g_mu
    failed = (norm - norm) != 0  # NaN or infinite
    shrinking = support & (mu <= 0)
    interior = ~shrinking.any()

    # Major cycle (mu strictly inside its corral): move to mu, then add the vertex that most
    # violates optimality, <x, g_j> < ||x||^2 - tol; if none does, stop. In exact arithmetic
    # ||x|| falls strictly from one major cycle to the next (Wolfe 1976), and every point between
    # is no longer than the last major one. Rounding can stop that: a norm too close to the last
    # to tell apart, or a vertex added and dropped again. The safety net stops the method where
    # it is at a rise above rounding or at a second major cycle in a row without a decrease,
    # instead of cycling (seen without the ridge, for gradients 1e-7 apart and singular G).
    lowest, best = torch.where(support, torch.inf, g_mu).min(dim=0)
    improves = lowest < norm - _ADD_TOLERANCE
    added = support | ((index == best) & improves)

    # Minor cycle: walk from lam towards mu until the first weight reaches 0 (at a ratio
    # lam_i / (lam_i - mu_i) in [0, 1], as mu_i <= 0 <= lam_i), and drop it, with any other
    # weight that reaches 0 there.
    step = lam - mu
    ratios = torch.where(shrinking, lam / step.clamp_min(1e-300), torch.inf)
    theta, first = ratios.min(dim=0)
    walked = (lam - theta * step).clamp_min(0) * (index != first)

    flat = interior & (norm >= anchor_norm)
    halt = done | failed | (interior & (norm >= anchor_norm + _ROUNDING)) | (flat & stalled)
    lam = torch.where(halt, lam, torch.where(interior, mu, walked))
    support = torch.where(halt, support, torch.where(interior, added, walked > 0))
    anchor_norm = torch.where(halt | ~interior, anchor_norm, torch.minimum(anchor_norm, norm))
    stalled = torch.where(interior, flat, stalled)
    return lam, support, halt | (interior & ~improves), anchor_norm, stalled


def _wolfe(gram: Tensor, early_exit: bool, start: Tensor | None = None) -> tuple[Tensor, Tensor, int]:
    """Wolfe's min-norm-point algorithm on a float64 Gram matrix scaled to ``max diag = 1``.

    Returns ``(lam, done, iterations)``: the weights (on the simplex), whether the method
    stopped within :func:`_max_iterations`, and the iterations run. ``early_exit`` stops the loop
    once done, the stopping test included; it reads ``done`` on the host, so pass it only on the
    CPU. ``start`` (or ``None``) is the first point after negative and non-finite entries are
    zeroed and the rest normalised; its support is the first corral, which need not be one (the
    first iteration's minor cycle then shrinks it).
    """
    k = gram.shape[-1]
    ones = gram.new_ones(k, 1)
    bordered = torch.cat((torch.cat((gram, ones), 1), torch.cat((ones.T, gram.new_zeros(1, 1)), 1)), 0)
    index = torch.arange(k, device=gram.device)
    last = torch.ones(1, dtype=torch.bool, device=gram.device)
    constants = (gram, bordered, torch.eye(k + 1, dtype=gram.dtype, device=gram.device), index, last)
    # Wolfe starts from the vertex of least norm; a warm start from its point and support.
    lam = (index == gram.diagonal().argmin()).to(gram.dtype)
    if start is not None:
        start = start.nan_to_num(0.0, 0.0, 0.0).clamp_min(0.0)
        total = start.sum()
        lam = torch.where(total > 0, start / torch.where(total > 0, total, 1.0), lam)
    state = (lam, lam > 0, ~last[0], gram.new_tensor(torch.inf), ~last[0])
    iterations = 0
    while iterations < _max_iterations(k):
        state = _wolfe_step(constants, state)
        iterations += 1
        if early_exit and state[2].item():
            break
    lam, _, done, _, _ = state
    return lam / lam.sum(), done, iterations


class MinNormSolution(NamedTuple):
    """What :func:`min_norm_solve` returns."""

    weights: Tensor
    r""":math:`\alpha^\star`, shape ``(k,)``, in the Gram matrix's dtype and on its device."""
    gap: Tensor
    """The Frank-Wolfe duality gap at the weights (see :func:`min_norm_weights`), a scalar."""
    iterations: int
    r"""Wolfe iterations run, the warm start's and a repeated cold solve's together (0 for :math:`k \le 2`,
    where the solution is closed-form); without early exit, the whole fixed count."""
    stopped: Tensor
    r"""Whether Wolfe's optimality test stopped the method within its iteration cap (a boolean scalar
    on the device; ``True`` for :math:`k \le 2`)."""


def _min_norm(gram: Tensor, early_exit: bool, start: Tensor | None = None) -> MinNormSolution:
    """:func:`min_norm_solve` without the argument checks; ``early_exit`` as in :func:`_wolfe`."""
    k = gram.shape[-1]
    exact = gram.detach().to(torch.float64)
    largest = exact.diagonal().max()
    nonzero = largest > 0
    scaled = exact / torch.where(nonzero, largest, 1.0)
    iterations, stopped = 0, torch.ones((), dtype=torch.bool, device=gram.device)
    if k == 1:
        lam = scaled.new_ones(1)
    elif k == 2:
        # alpha_1 = <g2 - g1, g2> / ||g2 - g1||^2 clipped to [0, 1]. The two inner products
        # <g1 - g2, g1> and <g2 - g1, g2> sum to ||g1 - g2||^2; their signs decide the clipping, and
        # in the interior both are positive, so their sum has no cancellation (G11 - 2 G12 + G22
        # has: for nearly equal gradients it is rounding noise and would pick a random alpha).
        # Any alpha is optimal when g1 = g2 (both are 0): 0.5 each.
        toward_first, toward_second = scaled[0, 0] - scaled[0, 1], scaled[1, 1] - scaled[0, 1]
        interior = (toward_first > 0) & (toward_second > 0)
        first = toward_second / torch.where(interior, toward_first + toward_second, 1.0)
        first = torch.where(toward_second <= 0, 0.0, torch.where(toward_first <= 0, 1.0, first))
        first = torch.where((toward_first <= 0) & (toward_second <= 0), 0.5, first)
        lam = torch.stack((first, 1 - first))
    else:
        ridged = scaled + _RIDGE * torch.eye(k, dtype=scaled.dtype, device=scaled.device)
        warm = None
        if start is not None and early_exit:  # off the CPU every iteration runs anyway: nothing to save
            warm, stopped, iterations = _wolfe(ridged, early_exit, start.detach().to(scaled))
            directional = ridged @ warm
            # Stopped other than by Wolfe's optimality test (its rounding safety net, which a warm
            # start into a nearly singular corral can trip): solve again from the default start.
            if warm @ directional - directional.min() > _ADD_TOLERANCE:
                warm = None
        if warm is None:
            lam, stopped, cold = _wolfe(ridged, early_exit)
            iterations += cold
        else:
            lam = warm
    lam = torch.where(nonzero, lam, 1.0 / k)  # zero Gram: every alpha is optimal
    lam = torch.where(all_finite(exact), lam, torch.nan)
    alpha = lam.to(gram.dtype)
    lam = alpha.to(torch.float64)
    directional = exact @ lam
    gap = lam @ directional - directional.min()
    return MinNormSolution(alpha, gap.to(gram.dtype), iterations, stopped)


def min_norm_weights(gram: Tensor, start: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""Weights of the min-norm point in the convex hull of :math:`k` gradients, from their Gram matrix.

    .. math::

        \alpha^\star \in \arg\min_{\alpha \ge 0,\ \sum_i \alpha_i = 1} \alpha^\top G \alpha,
        \qquad G = J J^\top, \qquad d = J^\top \alpha^\star,
        \qquad \text{gap} = \alpha^\top G \alpha - \min_j (G \alpha)_j .

    :math:`d` is the min-norm element of the convex hull of the gradients (the rows of
    :math:`J`): MGDA's common descent direction, with :math:`\langle d, g_i \rangle \ge
    \|d\|^2` for every objective, and :math:`d = 0` exactly at a Pareto-stationary point
    (Désidéri 2012; Sener & Koltun, NeurIPS 2018). The gap is the Frank-Wolfe duality gap, an
    upper bound on :math:`\alpha^\top G \alpha - \min_{\beta \in \Delta} \beta^\top G \beta`:
    at least 0 up to rounding, and 0 at the optimum. It is computed in float64 from the input
    Gram matrix at the returned weights, and stays below about :math:`10^{-12} \max_i G_{ii}`
    for finite input.

    The solve is exact, not a fixed number of Frank-Wolfe steps: :math:`k = 1` gives
    :math:`[1]`, :math:`k = 2` the closed form
    :math:`\alpha_1 = \operatorname{clip}((G_{22} - G_{12}) / ((G_{11} - G_{12}) + (G_{22} - G_{12})), 0, 1)`
    (0.5 each when the two gradients coincide), and :math:`k \ge 3` Wolfe's min-norm-point
    algorithm (Wolfe 1976), in float64 on :math:`G` scaled by its largest diagonal entry (so
    the weights do not depend on the gradients' common scale) plus a ridge of :math:`10^{-13}`
    (which keeps duplicate and nearly duplicate gradients well posed). Its iterations solve the bordered
    system :math:`[[G_{SS}, 1], [1^\top, 0]]` of the current support :math:`S` with masks
    instead of indexing, and ``torch.linalg.solve_ex`` instead of ``solve``, so they can stay on
    the device without a host synchronisation (:func:`min_norm_solve` with ``early_exit=False``:
    a fixed number of iterations, no-ops once optimal). On the CPU the loop stops as soon as it
    is optimal. On an accelerator the :math:`k \times k` problem is copied to the host and solved
    there the same way, the result sent back without waiting: one synchronisation per call,
    instead of the fixed loop's thousands of kernel launches (see :func:`min_norm_solve`).

    It is written here because MGDA needs it on the device at every step: PyTorch has no QP
    solver (nor a simplex-constrained least-squares op); cvxpy, OSQP and quadprog run on the
    host, and qpth, the batched GPU interior-point solver of OptNet, tests convergence on the
    host at every iteration, needs a positive-definite matrix (a Gram matrix of more objectives
    than parameters is singular) and is not exact. Non-finite input gives NaN weights and a non-finite gap (checking
    would cost a synchronisation); a zero Gram matrix (all gradients zero) gives uniform weights
    and gap 0. The weights are constants: no gradient flows back to ``gram``.

    Args:
        gram: the :math:`k \times k` Gram matrix :math:`J J^\top` of the :math:`k` objectives'
            gradients, floating point (float32 or float64), on any device.
        start: optional weights to start from, shape ``(k,)``, such as the previous training
            step's: for :math:`k \ge 3`, Wolfe's method then begins with their support, which
            usually holds already or nearly, so it takes one or two iterations instead of about
            :math:`k` (the fixed device loop, ``early_exit=False``, ignores it). Negative and
            non-finite entries count as 0 and the rest is normalised (all zero: the default
            start). The optimum is the same; should the warm run stop short of it (rounding in a
            nearly singular corral), the solve is repeated from the default start.

    Returns:
        ``(alpha, gap)``: the weights, shape ``(k,)``, and the gap, a scalar, both in ``gram``'s
        dtype and on its device.

    Raises:
        TypeError: ``gram`` is not a floating-point tensor.
        ValueError: ``gram`` is not a square 2-D matrix with at least one row.

    Example:
        >>> g1, g2, g3 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])
        >>> jacobian = torch.stack((g1, g2, g3))
        >>> alpha, gap = min_norm_weights(jacobian @ jacobian.T)
        >>> alpha
        tensor([0.5000, 0.5000, 0.0000])
        >>> alpha @ jacobian  # the common descent direction d
        tensor([0.5000, 0.5000])
        >>> gap
        tensor(0.)
    """
    weights, gap, _, _ = min_norm_solve(gram, start)
    return weights, gap


def min_norm_solve(gram: Tensor, start: Tensor | None = None, *, early_exit: bool | None = None) -> MinNormSolution:
    """:func:`min_norm_weights` with the solver's diagnostics, and its device path on any device.

    Args:
        gram, start: as for :func:`min_norm_weights`.
        early_exit: stop Wolfe's loop as soon as it is optimal, which reads a flag on the host at
            every iteration (``True``). ``None`` (the default): on the CPU, that; elsewhere, the
            same solve on a host copy (one synchronisation, see below). ``False`` runs the fixed
            iteration count on the device with no host read (the warm start is then ignored):
            the loop to capture in a CUDA graph, on the CPU too.

    Off the CPU, by default, :math:`G` and ``start`` are packed into one float64 buffer (exact
    for every floating dtype) and copied to the host, which waits for the work that produces
    them: the one synchronisation. There the solve is the CPU's, with early exit and the warm
    start, and the result (weights, gap and the stop flag) goes back in one non-blocking copy.
    Why: the device loop runs all :math:`4k + 10` iterations of about 50 small ops each, about
    3,900 kernel launches for :math:`k = 16` (milliseconds of launch overhead), and cannot use
    the warm start, while the host solve takes one or two iterations of microseconds. What a GPU
    could do instead is replay the fixed loop as a CUDA graph (one launch, no synchronisation,
    but every iteration runs and the buffers must be static); for an eager training loop the
    host solve is cheaper. Under ``torch_moo._device.device_path()`` the CPU takes this path too;
    on the meta device (shapes without values) the default is the device loop.

    Returns:
        A :class:`MinNormSolution`: ``(weights, gap, iterations, stopped)``.
    """
    check_gram_shape(gram)
    if start is not None and (not isinstance(start, Tensor) or start.shape != (gram.shape[0],)):
        raise ValueError(f"start must be a tensor of shape ({gram.shape[0]},), got {getattr(start, 'shape', start)!r}")
    if early_exit is None:
        if reads_are_free(gram):
            return _min_norm(gram, True, start)
        if gram.device.type != "meta":  # a meta tensor has no values to copy: its shapes come from the loop
            return _min_norm_on_host(gram, start)
        early_exit = False
    return _min_norm(gram, early_exit=bool(early_exit), start=start)


def _min_norm_on_host(gram: Tensor, start: Tensor | None) -> MinNormSolution:
    """:func:`_min_norm` with early exit on a host copy of ``gram`` and ``start`` (one synchronisation), the
    result sent back to ``gram``'s device without waiting; see :func:`min_norm_solve`. The solution is the
    CPU's: the same arithmetic on the same values."""
    k = gram.shape[-1]
    pieces = [gram.detach().reshape(-1).to(torch.float64)]
    if start is not None:
        pieces.append(start.detach().to(gram.device, torch.float64))
    host = torch.cat(pieces).to("cpu", copy=True)  # the one synchronisation
    solution = _min_norm(
        host[: k * k].view(k, k).to(gram.dtype), True, None if start is None else host[k * k :].to(start.dtype)
    )
    packed = torch.cat((solution.weights, solution.gap.reshape(1), solution.stopped.reshape(1).to(gram.dtype)))
    sent = gram.new_empty(k + 2).copy_(packed, non_blocking=True)
    return MinNormSolution(sent[:k], sent[k], solution.iterations, sent[k + 1] > 0)
