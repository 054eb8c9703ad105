r"""MINRES for symmetric linear operators given as functions, on the operator's device.

Paige & Saunders, *Solution of sparse indefinite systems of linear equations* (SIAM Journal on
Numerical Analysis, 1975). The Lanczos process builds an orthonormal basis of the Krylov space
and a tridiagonal matrix, which Givens rotations factor (QR) one column per iteration, so the
iterate minimising the residual over the Krylov space follows from a three-term recurrence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from torch_moo._device import reads_are_free
from torch_moo._validation import check_count, check_real
from torch_moo.functional._scale import vector_norm

__all__ = ["MinresResult", "minres"]

DEVICE_CHECK_EVERY = 10
"""``check_every`` off the CPU by default: at most ``ceil(max_iter / 10)`` host reads (5 at 50
iterations, not 50), for at most 9 operator calls past convergence."""


class MinresResult(NamedTuple):
    """What :func:`minres` returns; every field is a tensor on ``rhs``'s device."""

    solution: Tensor
    """The iterate :math:`x_k`, in ``rhs``'s shape and dtype."""
    residual_norm: Tensor
    r"""MINRES's estimate of :math:`\|b - (A + \sigma I) x_k\|`, a scalar in ``rhs``'s dtype."""
    iterations: Tensor
    """The operator calls that counted (those before convergence), a scalar int64."""


def _apply(operator: Callable[[Tensor], Tensor], vector: Tensor) -> Tensor:
    """``operator(vector)``, checked to be a tensor of ``vector``'s shape and dtype."""
    image = operator(vector)
    if not isinstance(image, Tensor) or image.shape != vector.shape or image.dtype != vector.dtype:
        got = f"shape {tuple(image.shape)}, dtype {image.dtype}" if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(
            f"operator must map a vector of rhs's shape {tuple(vector.shape)} and dtype {vector.dtype} "
            f"to one of the same shape and dtype, got {got}"
        )
    return image


def minres(
    operator: Callable[[Tensor], Tensor],
    rhs: Tensor,
    *,
    shift: float = 0.0,
    tol: float = 1e-5,
    max_iter: int = 50,
    check_every: int | None = None,
) -> MinresResult:
    r"""Solve :math:`(A + \sigma I) x = b` for a symmetric operator :math:`A` by MINRES.

    .. math::

        x_k = \arg\min_{x \in \mathcal{K}_k} \|b - (A + \sigma I) x\|_2, \qquad
        \mathcal{K}_k = \operatorname{span}\{b, (A + \sigma I) b, \dots, (A + \sigma I)^{k-1} b\},

    from :math:`x_0 = 0` (Paige & Saunders 1975). :math:`A` may be indefinite or singular.
    It stops at the first :math:`k` with residual estimate
    :math:`\bar\phi_k \le \text{tol}\, \|b\|`, after ``max_iter`` iterations (one operator call
    each), or when the Lanczos process breaks down (:math:`\beta_{k+1} = 0`: the Krylov space
    is invariant and :math:`x_k` is exact). A consistent singular system gives the solution of
    least norm, since :math:`\mathcal{K}_k` lies in the range of :math:`A + \sigma I`. An
    inconsistent one (:math:`b` outside that range) has no solution, and in floating point the
    iterates can grow without bound once the Krylov space reaches the null space (MINRES-QLP,
    Choi, Paige & Saunders 2011, handles that case); a shift that makes :math:`A + \sigma I`
    non-singular, such as damping, avoids it. :math:`b = 0` gives :math:`x = 0` without calling
    the operator. Non-finite values give a non-finite result after ``max_iter`` iterations.

    Every scalar is a 0-dim tensor on ``rhs``'s device and in its dtype. The recurrences are
    homogeneous in the scales of :math:`A` and :math:`b`, and the two norms per iteration are
    taken after an exact power-of-two rescaling, so no square leaves float32's range: for
    :math:`c, c'` from about :math:`10^{-30}` to :math:`10^{30}` (and :math:`c'/c` too),
    :math:`(cA, c'b)` gives the iterates of :math:`(A, b)` times :math:`c'/c` and the same
    iterations (a property test). The only host synchronisation is the convergence test, read
    every ``check_every`` iterations (one read each); between tests a converged iterate is held
    with masks, so the result is the iterate at convergence whatever ``check_every`` is. On a
    GPU, ``check_every > 1`` saves synchronisations at the cost of up to ``check_every - 1``
    wasted operator calls: by default the test runs every iteration where reading it is free
    (the CPU) and every 10 elsewhere. There each read drains the launch queue, so the host's
    launching of the next iteration stops overlapping the device's work (up to about one
    operator call's time lost per read), while a check skipped costs at most one wasted call
    after convergence. At 10, a solve that runs to ``max_iter = 50`` (the explorer's usual case)
    reads 5 times instead of 50, and one that converges earlier makes at most 9 (4.5 on
    average) calls that change nothing.

    It is written here, not taken from ``scipy.sparse.linalg.minres``, because the operator is
    a Hessian-vector product on the device: scipy would copy a vector to the host and back at
    every iteration, and works in float64 NumPy arrays.

    Args:
        operator: the symmetric map :math:`v \mapsto A v` on vectors of ``rhs``'s shape and
            dtype (symmetry is not checked).
        rhs: the right-hand side :math:`b`, a 1-D floating-point tensor.
        shift: :math:`\sigma`, added to the diagonal (a damping term, say).
        tol: the relative tolerance on the residual norm, > 0.
        max_iter: the most iterations (operator calls), >= 1.
        check_every: iterations between convergence tests, >= 1; ``None``: 1 where reading
            the test is free (:func:`~torch_moo._device.reads_are_free`), else 10.

    Returns:
        A :class:`MinresResult` ``(solution, residual_norm, iterations)``.

    Raises:
        TypeError: ``operator`` is not callable, ``rhs`` is not a floating-point tensor, or an
            option has the wrong type.
        ValueError: ``rhs`` is not 1-D, ``tol``, ``max_iter`` or ``check_every`` is out of
            range, or the operator returns a tensor of another shape or dtype.

    Example:
        >>> a = torch.tensor([[2.0, 1.0], [1.0, -3.0]])
        >>> result = minres(lambda v: a @ v, torch.tensor([1.0, 0.0]))
        >>> result.solution
        tensor([0.4286, 0.1429])
        >>> result.iterations
        tensor(2)
    """
    if not callable(operator):
        raise TypeError(f"operator must be callable, got {type(operator).__name__}")
    if not isinstance(rhs, Tensor):
        raise TypeError(f"rhs must be a tensor, got {type(rhs).__name__}")
    if not rhs.is_floating_point():
        raise TypeError(f"rhs must be floating point, got dtype {rhs.dtype}")
    if rhs.dim() != 1:
        raise ValueError(f"rhs must be a 1-D vector, got shape {tuple(rhs.shape)}")
    shift = check_real("shift", shift)
    tol = check_real("tol", tol, minimum=0.0, strict=True)
    check_count("max_iter", max_iter)
    if check_every is None:
        check_every = 1 if reads_are_free(rhs) else DEVICE_CHECK_EVERY
    check_count("check_every", check_every)

    zero = rhs.new_zeros(())
    beta = vector_norm(rhs)  # beta_1 = ||b||
    threshold = tol * beta
    done = beta == 0
    # Lanczos: beta_{k+1} v_{k+1} = (A + shift I) v_k - alpha_k v_k - beta_k v_{k-1}, v_1 = b / beta_1.
    previous, vector = torch.zeros_like(rhs), rhs / torch.where(done, 1.0, beta)
    # Givens QR of the tridiagonal matrix: the rotation (cos, sin) of the last step, the entries
    # it carries into the next column (delta_bar, epsilon), and phi_bar, the residual norm.
    cos, sin, delta_bar, epsilon, phi_bar = zero - 1, zero, zero, zero, beta
    # x_k = x_{k-1} + tau_k w_k with w_k = (v_k - epsilon_k w_{k-2} - delta_k w_{k-1}) / gamma_k.
    solution, direction, older = torch.zeros_like(rhs), torch.zeros_like(rhs), torch.zeros_like(rhs)
    iterations = torch.zeros((), dtype=torch.int64, device=rhs.device)
    for k in range(max_iter):
        if k % check_every == 0 and bool(done):
            break
        image = _apply(operator, vector)
        if shift:
            image = image + shift * vector
        alpha = torch.dot(vector, image)
        image = image - alpha * vector - beta * previous
        next_beta = vector_norm(image)
        breakdown = next_beta == 0
        previous, vector = vector, image / torch.where(breakdown, 1.0, next_beta)

        # Apply the last rotation to the new column (beta_k, alpha_k, beta_{k+1}), then
        # annihilate beta_{k+1} with a new one.
        delta = cos * delta_bar + sin * alpha
        gamma_bar = sin * delta_bar - cos * alpha
        old_epsilon, epsilon, delta_bar = epsilon, sin * next_beta, -cos * next_beta
        gamma = torch.hypot(gamma_bar, next_beta)
        # gamma = 0 only at a breakdown with a singular tridiagonal matrix (b has a component in
        # the null space; A = 0, say): a rotation by pi/2 leaves x and phi_bar as they are, the
        # least-squares solution over the Krylov space.
        singular = gamma == 0
        safe_gamma = torch.where(singular, 1.0, gamma)
        cos = torch.where(singular, 0.0, gamma_bar / safe_gamma)
        sin = torch.where(singular, 1.0, next_beta / safe_gamma)
        tau, phi_bar_next = cos * phi_bar, sin * phi_bar
        older, direction = direction, (previous - old_epsilon * older - delta * direction) / safe_gamma
        next_solution = solution + tau * direction

        # Hold the iterate once converged: between tests the loop runs on, without effect.
        solution = torch.where(done, solution, next_solution)
        phi_bar = torch.where(done, phi_bar, phi_bar_next)
        iterations = iterations + (~done).to(torch.int64)
        done = done | breakdown | (phi_bar <= threshold)
        beta = next_beta
    return MinresResult(solution, phi_bar, iterations)
