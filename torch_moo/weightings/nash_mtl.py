r"""Nash-MTL: the Nash bargaining solution of the objectives, :math:`G a = 1/a`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torch_moo._device import reads_are_free
from torch_moo._validation import check_real
from torch_moo.weightings._base import GramWeighting
from torch_moo.weightings.simple import check_gram, unit_gram

__all__ = ["NashMTL"]

# Newton iterations: damped ones while the Newton decrement lambda >= 1/4 (each lowers the convex,
# self-concordant F by at least 1/4 - log(5/4) > 0.02), then pure ones, which converge
# quadratically. Warm-started, two or three suffice; cold, the property tests (k <= 16, with
# nearly duplicate and strongly conflicting gradients) used under 25. After the stop they are no-ops.
_MAX_ITERATIONS = 60
# Stop at lambda^2 = r^T H^{-1} r below this: the relative error of a is then about lambda, 1e-10.
_DECREMENT = 1e-20


class NashMTL(GramWeighting):
    r"""The Nash bargaining weights (Navon et al., *Multi-Task Learning as a Bargaining Game*, ICML 2022).

    .. math::

        G a = 1 / a, \quad a > 0, \qquad\text{i.e.}\qquad
        a = \arg\min_{a > 0} F(a) = \tfrac12 a^\top G a - \textstyle\sum_i \log a_i ,

    so each objective gains :math:`\langle g_i, J^\top a \rangle = 1/a_i` and
    :math:`\|J^\top a\|^2 = k`. :math:`F` is strictly convex and self-concordant, so Newton's method
    with the damped step :math:`1 / (1 + \lambda)` while the decrement :math:`\lambda \ge 1/4`
    (Nesterov & Nemirovski) stays in :math:`a > 0` and converges from any start, quadratically at
    the end; each step is one ``solve_ex`` of :math:`(G + \operatorname{diag}(a)^{-2}) \Delta = G a - 1/a`
    on the Gram matrix's device, a fixed number of them there (no synchronisation), while on the CPU
    they stop at convergence. It starts from the previous call's solution (the non-persistent
    buffer :attr:`previous`) or, for a new ``k``, from :math:`1/\sqrt{G_{ii}}`, either rescaled to
    the best multiple :math:`t a` (:math:`t^2 a^\top G a = k`).

    torchjd's ``NashMTL`` (the official code's algorithm) instead solves the paper's sequential
    convex approximation with cvxpy: each iterate minimises :math:`\mathbf 1^\top G a` plus the
    linearisation of :math:`\sum_i \log a_i + \log (Ga)_i` at the previous iterate, subject to
    :math:`a_i (Ga)_i \ge 1`, and stops after ``optim_niter`` iterates or once
    :math:`\|G a - 1/a\|` is below :math:`10^{-3}` for :math:`G / \|G\|_F`. Its constraints hold
    :math:`G` at its true scale (the objective's normalisation by :math:`\|G\|_F` cancels), so its
    fixed point is this :math:`a`, which Newton's method reaches to rounding. Scale: :math:`G \to cG`
    gives :math:`a \to a / \sqrt c` (for torchjd too). The bargaining solution exists when no
    non-negative combination of the gradients vanishes; otherwise (:math:`0` in their convex hull, a
    Pareto-stationary point) :math:`F` is unbounded below and the iterates grow along that
    combination, as far as the iteration cap and float64's range let them.

    Args:
        max_norm: if positive, the weights are scaled down so that :math:`\|J^\top w\| =
            \sqrt{w^\top G w}` is at most ``max_norm``; 0 disables it. The default, 1, is torchjd's
            and the official code's; since :math:`\|J^\top a\| = \sqrt k` at the solution, it makes
            :math:`w = a / \sqrt k` for :math:`k \ge 2`.

    Example:
        >>> gram = torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
        >>> NashMTL(max_norm=0.0)(gram)  # (G a)_i = 1 / a_i
        tensor([1.0000, 0.5000], dtype=torch.float64)
    """

    previous: Tensor

    def __init__(self, max_norm: float = 1.0) -> None:
        super().__init__()
        self.max_norm = check_real("max_norm", max_norm, minimum=0.0)
        self.register_buffer("previous", torch.zeros(0, dtype=torch.float64), persistent=False)

    def forward(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        k = check_gram(gram).shape[0]
        unit, exponent = unit_gram(gram)
        # a for G = 2^e U is a_U 2^(-e/2): the warm start and the result pass through that factor
        half = torch.exp2(exponent.to(torch.float64) / 2)
        diagonal = unit.diagonal()
        cold = torch.where(diagonal > 0, diagonal, 1.0).rsqrt()
        start = self.previous.to(unit) * half if self.previous.shape == (k,) else cold
        start = torch.where(((start > 0) & (start < torch.inf)).all(), start, cold)
        start = start * (k / (start @ unit @ start).clamp_min(torch.finfo(unit.dtype).tiny)).sqrt()
        solution = _newton(unit, start, early_exit=reads_are_free(unit)) / half
        self.previous = solution.detach().clone()
        if self.max_norm > 0:
            norm = (solution @ gram.detach().to(solution) @ solution).clamp_min(0.0).sqrt()
            solution = solution * torch.where(norm > self.max_norm, self.max_norm / norm, 1.0)
        return solution.to(gram.dtype)

    def config(self) -> dict[str, Any]:
        return {"max_norm": self.max_norm}


def _newton(gram: Tensor, start: Tensor, early_exit: bool) -> Tensor:
    """Newton's method on :math:`F` from ``start`` (positive); see :class:`NashMTL`."""
    a, done = start, torch.zeros((), dtype=torch.bool, device=gram.device)
    for _ in range(_MAX_ITERATIONS):
        inverse = 1.0 / a
        hessian = gram + torch.diag(inverse * inverse)
        residual = gram @ a - inverse
        delta = torch.linalg.solve_ex(hessian, residual)[0]
        decrement = delta @ residual  # lambda^2
        step = torch.where(decrement < 1 / 16, 1.0, 1.0 / (1.0 + decrement.clamp_min(0.0).sqrt()))
        moved = a - step * delta
        keep = done | ~((moved > 0) & (moved < torch.inf)).all() | (decrement != decrement)
        a = torch.where(keep, a, moved)
        done = keep | (decrement < _DECREMENT)
        if early_exit and bool(done):
            break
    return a
