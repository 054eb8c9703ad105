r"""Test problems whose Pareto set is known, to check and demonstrate the optimizers.

:func:`cylinder` is the test problem of Ma, Du & Matusik (ICML 2020) for Pareto exploration:
three variables, two objectives, the Pareto set the cylinder :math:`x_1^2 + x_2^2 = \pi` and the
front :math:`f_2 = 1 - f_1^2`. :func:`cylinder_point` gives a point of that set.
:func:`two_task_regression` is a differentiable two-task regression with a concave front.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["TwoTaskRegression", "cylinder", "cylinder_point", "two_task_regression"]


def cylinder(x: Tensor) -> Tensor:
    r"""The objectives :math:`(f_1, f_2)` of Ma, Du & Matusik's problem at ``x`` (3 entries).

    With :math:`r = x_1^2 + x_2^2`, :math:`u_0 = \sin(x_0 + r)/2 + 1/2`,
    :math:`u_1 = \cos(r)/2 + 1/2` and :math:`g = 1 + 9 u_1`: :math:`f_1 = u_0` and
    :math:`f_2 = g (1 - (u_0 / g)^2)`. On the cylinder :math:`r = \pi`, :math:`u_1 = 0` and
    :math:`g = 1`, so :math:`f_2 = 1 - f_1^2`.

    Example:
        >>> f = cylinder(cylinder_point(0.3, 0.4))
        >>> bool(abs(f[1] - (1 - f[0] ** 2)) < 1e-12)
        True
    """
    r2 = x[1] ** 2 + x[2] ** 2
    u0 = torch.sin(x[0] + r2) / 2 + 0.5
    u1 = torch.cos(r2) / 2 + 0.5
    g = 1 + 9 / 2 * (u1 + u1)
    return torch.stack([u0, g * (1 - (u0 / g) ** 2)])


def cylinder_point(s: float, angle: float) -> Tensor:
    r"""The Pareto-optimal point at ``angle`` on the cylinder with :math:`f_1 = \sin(s)/2 + 1/2`.

    ``s`` in :math:`(-\pi/2, \pi/2)` keeps it on the front. Returned as a float64 leaf that
    requires grad, ready to be the parameter of an optimizer.
    """
    radius = math.sqrt(math.pi)
    point = [s - math.pi, radius * math.cos(angle), radius * math.sin(angle)]
    return torch.tensor(point, dtype=torch.float64, requires_grad=True)


@dataclass(frozen=True)
class TwoTaskRegression:
    r"""Two linear regressions sharing a weight vector, each under a Welsch (bounded) loss.

    .. math::

        f_t(w) = 1 - \exp\big(-\tfrac{1}{n \sigma^2} \|X w - y_t\|^2\big), \qquad y_t = X w_t,
        \qquad X^\top X = n I,

    so :math:`f_t = 1 - \exp(-\|w - w_t\|^2 / \sigma^2)`: the Pareto set is the segment from
    :math:`w_1` to :math:`w_2` and, with :math:`D = \|w_2 - w_1\|`, the front is
    :math:`\big(1 - e^{-t^2 D^2/\sigma^2},\ 1 - e^{-(1 - t)^2 D^2/\sigma^2}\big)`,
    :math:`t \in [0, 1]`: concave where :math:`D > \sigma`, so weighted sums reach only its
    ends (the Welsch loss is Dennis & Welsch's, 1978; the front is Fonseca & Fleming's, 1995).
    """

    inputs: Tensor
    r""":math:`X`, ``(n, d)`` float64 with orthogonal columns of norm :math:`\sqrt n`."""
    targets: Tensor
    """:math:`(y_1, y_2)` as columns, ``(n, 2)``."""
    optima: Tensor
    """:math:`(w_1, w_2)` as rows, ``(2, d)``."""
    width: float
    r""":math:`\sigma`."""

    def losses(self, weight: Tensor) -> Tensor:
        """:math:`(f_1, f_2)` at ``weight`` (``d`` entries), differentiable."""
        residuals = (self.inputs @ weight.reshape(-1)).unsqueeze(1) - self.targets
        return 1 - torch.exp(-residuals.square().mean(dim=0) / self.width**2)

    def front(self, points: int) -> Tensor:
        """``points`` points of the true front, ``(points, 2)`` float64, from the first task's optimum."""
        t = torch.linspace(0, 1, points, dtype=torch.float64).unsqueeze(1)
        distance = torch.linalg.vector_norm(self.optima[1] - self.optima[0])
        return 1 - torch.exp(-(torch.cat([t, 1 - t], dim=1) * distance / self.width).square())


def two_task_regression(
    samples: int = 64, features: int = 8, separation: float = 2.0, width: float = 1.0, seed: int = 0
) -> TwoTaskRegression:
    r"""A :class:`TwoTaskRegression`: random orthogonal design, optima ``separation`` apart.

    Example:
        >>> problem = two_task_regression()
        >>> middle = problem.optima.mean(dim=0)
        >>> problem.losses(middle), problem.front(3)[1]  # the middle of the segment, of the front
        (tensor([0.6321, 0.6321], dtype=torch.float64), tensor([0.6321, 0.6321], dtype=torch.float64))
    """
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(samples, features, generator=generator, dtype=torch.float64))
    inputs = basis * math.sqrt(samples)
    center = torch.randn(features, generator=generator, dtype=torch.float64)
    offset = torch.randn(features, generator=generator, dtype=torch.float64)
    offset = offset / torch.linalg.vector_norm(offset) * (separation / 2)
    optima = torch.stack([center - offset, center + offset])
    return TwoTaskRegression(inputs, inputs @ optima.T, optima, width)
