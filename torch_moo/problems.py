r"""Test problems whose Pareto set is known, to check and demonstrate the optimizers.

:func:`cylinder` is the test problem of Ma, Du & Matusik (ICML 2020) for Pareto exploration:
three variables, two objectives, the Pareto set the cylinder :math:`x_1^2 + x_2^2 = \pi` and the
front :math:`f_2 = 1 - f_1^2`. :func:`cylinder_point` gives a point of that set.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["cylinder", "cylinder_point"]


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
