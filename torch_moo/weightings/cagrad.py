r"""CAGrad: the update that maximises the worst objective's decrease near the mean gradient."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torch_moo._validation import check_real
from torch_moo.functional.min_norm import min_norm_solve
from torch_moo.weightings._base import GramWeighting
from torch_moo.weightings.simple import check_gram

__all__ = ["CAGrad"]

# The root search on mu: a step to the exact root for the current support (closed form) when it
# lies in the bracket, else a bisection; it stops when that root is the current mu to 1e-12
# (relative), which the right support gives at once. 60 bisections would leave 2^-60 ~ 1e-18
# of the bracket; in the property tests (k <= 16) the search took at most a handful of steps.
_MAX_STEPS = 60
_SAME = 1e-12


def _norm(gram: Tensor, weights: Tensor) -> float:
    r""":math:`\|J^\top w\| = \sqrt{w^\top G w}`, on the host (rounding can make the square slightly negative)."""
    return max(float(weights @ gram @ weights), 0.0) ** 0.5


def _support_root(gram: Tensor, toward_mean: Tensor, radius: float, support: Tensor) -> float:
    r"""The :math:`\mu` at which the minimiser of :math:`\|J^\top u + \mu g_0\|^2` on the affine hull
    of ``support`` (:math:`u = u_0 + \mu u_1`, from the bordered system
    :math:`[[G_{SS}, 1], [1^\top, 0]]`) has :math:`\|J^\top u\| = \mu \sqrt\phi`: the positive root of
    :math:`(\phi - q_2) \mu^2 - 2 q_1 \mu - q_0 = 0`, :math:`q_{ab} = u_a^\top G u_b`; NaN if none."""
    inside = support.nonzero().flatten()
    size = inside.numel()
    bordered = torch.ones(size + 1, size + 1, dtype=gram.dtype)
    bordered[:size, :size] = gram[inside][:, inside]
    bordered[size, size] = 0.0
    rhs = torch.zeros(size + 1, 2, dtype=gram.dtype)
    rhs[size, 0] = 1.0
    rhs[:size, 1] = -toward_mean[inside]
    pair = torch.linalg.lstsq(bordered, rhs).solution[:size]
    (q0, q1), (_, q2) = (pair.T @ gram[inside][:, inside] @ pair).tolist()
    lead = radius * radius - q2
    root = max(q1 * q1 + lead * q0, 0.0) ** 0.5
    # the positive root of lead mu^2 - 2 q1 mu - q0, in the form without cancellation
    return (q1 + root) / lead if q1 >= 0 else q0 / (root - q1) if root != q1 else float("nan")


class CAGrad(GramWeighting):
    r"""CAGrad (Liu et al., *Conflict-Averse Gradient Descent for Multi-task Learning*, NeurIPS 2021).

    The update :math:`d = g_0 + \frac{\sqrt\phi}{\|g_u\|} g_u` maximises :math:`\min_i \langle g_i,
    d \rangle` over the ball :math:`\|d - g_0\| \le c \|g_0\|` around the mean gradient
    :math:`g_0 = J^\top \mathbf 1 / k`, where :math:`g_u = J^\top u` and, with
    :math:`\sqrt\phi = c \|g_0\|`,

    .. math::

        u = \arg\min_{u \in \Delta} \; u^\top G \mathbf 1 / k + \sqrt\phi \, \sqrt{u^\top G u},
        \qquad w = \mathbf 1 / k + \frac{\sqrt\phi}{\|g_u\|}\, u ,

    on :math:`G` normalised by its trace, as torchjd's ``CAGradWeighting`` (which solves it with
    cvxpy's Clarabel); :math:`w = 0` when :math:`\|g_u\| <` ``norm_eps`` there (a Pareto-stationary
    point), and :math:`c = 0` (or :math:`g_0 = 0`) gives the mean, :math:`1/k` each. It is solved
    exactly here: for :math:`\mu > 0`, the minimiser :math:`u(\mu)` of
    :math:`\|J^\top u + \mu g_0\|^2` over the simplex (the min-norm point of the shifted gradients
    :math:`g_i + \mu g_0`, by :func:`~torch_moo.functional.min_norm_solve`) solves the problem
    exactly when :math:`\mu \sqrt\phi = \|g_{u(\mu)}\|` (both optimality conditions then agree),
    and that root is bracketed in :math:`[0, \max_i \|g_i\| / \sqrt\phi]` and found by bisection.
    The solves run on the host, so the Gram matrix is copied there once per call (on an
    accelerator, one synchronisation): on the device, each of the 60 solves would run Wolfe's
    whole fixed iteration count. Invariant to :math:`G \to cG` (torchjd instead treats
    :math:`G` as zero below a trace of ``norm_eps``; the two agree above it).

    Args:
        c: the radius factor :math:`c \ge 0` of the ball.
        norm_eps: the threshold on :math:`\|g_u\|` (trace-normalised) below which :math:`w = 0`.

    Example:
        >>> gram = torch.tensor([[1.0, -0.5], [-0.5, 1.0]], dtype=torch.float64)
        >>> CAGrad(c=0.5)(gram)
        tensor([0.7500, 0.7500], dtype=torch.float64)
    """

    def __init__(self, c: float = 0.5, norm_eps: float = 1e-4) -> None:
        super().__init__()
        self.c = check_real("c", c, minimum=0.0)
        self.norm_eps = check_real("norm_eps", norm_eps, minimum=0.0)

    def forward(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        k = check_gram(gram).shape[0]
        exact = gram.detach().to("cpu", torch.float64)
        trace = exact.diagonal().sum()
        unit = exact / trace if trace > 0 else exact
        ones = torch.full((k,), 1.0 / k, dtype=torch.float64)
        toward_mean = unit @ ones  # <g_i, g_0>
        radius = self.c * float(ones @ toward_mean) ** 0.5  # sqrt(phi) = c ||g_0||
        if radius == 0.0:
            return ones.to(gram.device, gram.dtype)
        low, high = 0.0, float(unit.diagonal().max()) ** 0.5 / radius
        mu, start = 0.5 * high, None
        for _ in range(_MAX_STEPS):
            shifted = unit + mu * (toward_mean[:, None] + toward_mean[None, :]) + mu * mu * float(ones @ toward_mean)
            start = min_norm_solve(shifted, start).weights
            if mu * radius < _norm(unit, start):
                low = mu
            else:
                high = mu
            root = _support_root(unit, toward_mean, radius, start > 0)
            if abs(root - mu) <= _SAME * mu:
                break
            mu = root if low < root < high else 0.5 * (low + high)
        assert start is not None
        norm = _norm(unit, start)
        weights = ones + (radius / norm) * start if norm >= self.norm_eps else torch.zeros(k, dtype=torch.float64)
        return weights.to(gram.device, gram.dtype)

    def config(self) -> dict[str, Any]:
        return {"c": self.c, "norm_eps": self.norm_eps}
