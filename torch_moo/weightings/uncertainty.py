"""Uncertainty: task weights from learned homoscedastic uncertainties."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torch_moo._validation import check_real
from torch_moo.weightings._steps import AdamRule

__all__ = ["Uncertainty"]


class Uncertainty(AdamRule):
    r"""Uncertainty weighting: each task's weight is learned from its homoscedastic uncertainty.

    Kendall, Gal & Cipolla, *Multi-Task Learning Using Uncertainty to Weigh Losses for Scene
    Geometry and Semantics*, CVPR 2018, in LibMTL's form (``LibMTL.weighting.UW``): with
    :math:`s_i = \log \sigma_i^2` the training loss is

    .. math::

        \sum_i \frac{L_i}{2 e^{s_i}} + \frac{s_i}{2}, \qquad
        w_i = \frac{e^{-s_i}}{2}, \qquad \frac{\partial}{\partial s_i} = \frac{1 - L_i e^{-s_i}}{2},

    so :math:`s_i` settles at :math:`\log L_i` and :math:`w_i` at :math:`1 / (2 L_i)`.

    LibMTL trains :math:`s` with the model's optimizer (Adam in its examples); here :math:`s`
    takes its own :class:`torch.optim.Adam` step (``lr``, ``betas``, ``eps``) in :meth:`observe`
    with the closed-form gradient, the same update as Adam on LibMTL's loss expression. Adam, not
    SGD: the gradient scales with :math:`L_i e^{-s_i}`, so an SGD step size that suits losses
    near 1 diverges at :math:`10^{3}` and crawls at :math:`10^{-3}`, where Adam moves :math:`s`
    by about ``lr`` per step at any loss scale. With ``every`` > 1 the step uses the mean losses
    of the period: the mean of the steps' gradients with :math:`s` held fixed.

    Args:
        num_objectives: number of tasks :math:`k`.
        init: the initial :math:`s_i`; LibMTL's :math:`-0.5` (weights :math:`e^{0.5}/2 \approx 0.82`).
        lr, betas, eps: Adam's for :math:`s`.
        every: steps between updates of :math:`s`; ``None``: only when :meth:`update` is called.

    Example:
        >>> rule = Uncertainty(2, init=0.0, lr=0.1)
        >>> rule(torch.tensor([4.0, 0.25]))
        tensor([0.5000, 0.5000])
        >>> for _ in range(50):
        ...     rule.observe(torch.tensor([4.0, 0.25]))
        >>> weights = rule(torch.tensor([4.0, 0.25]))
        >>> bool(weights[1] > 4 * weights[0])  # the task with the smaller loss weighs more
        True
    """

    log_variance: Tensor

    def __init__(
        self,
        num_objectives: int,
        *,
        init: float = -0.5,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        every: int | None = 1,
    ) -> None:
        super().__init__(num_objectives, every, lr=lr, betas=betas, eps=eps)
        self.init = check_real("init", init)
        self.register_buffer("log_variance", torch.full((num_objectives,), self.init))

    def forward(self, losses: Tensor) -> Tensor:
        return (0.5 * torch.exp(-self.log_variance)).to(losses.dtype)

    def apply_update(self) -> None:
        grad = 0.5 - 0.5 * self.mean() * torch.exp(-self.log_variance.double())
        self.adam(self.log_variance, grad, self.loss_count > 0)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "init": self.init}
