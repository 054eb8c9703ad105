"""FAMO: task weights that make every loss fall at the same rate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from torch_moo._validation import all_finite, check_real, check_vector
from torch_moo.weightings._base import Rules
from torch_moo.weightings._steps import AdamRule

__all__ = ["FAMO"]


class FAMO(AdamRule):
    r"""Fast Adaptive Multitask Optimization: balance the rates at which the losses fall.

    Liu, Liu, Stone & Liu, *FAMO: Fast Adaptive Multitask Optimization*, NeurIPS 2023. With
    logits :math:`\xi`, :math:`z = \operatorname{softmax}(\xi)`, lower bounds :math:`L^*`
    (``min_losses``) and :math:`D_i = L_i - L^*_i + \epsilon`, the step descends on
    :math:`\sum_i z_i \log D_i / c`, that is

    .. math::

        w_i = \frac{z_i}{c\, D_i}, \qquad c = \sum_j \frac{z_j}{D_j};

    after it the logits take an Adam step (``lr``, coupled ``weight_decay`` :math:`\gamma`) along

    .. math::

        \nabla_\xi = J_{\operatorname{softmax}}(\xi)^\top \delta = z \odot (\delta - z^\top \delta), \qquad
        \delta_i = \log D_i^{\text{prev}} - \log D_i^{\text{now}} .

    The authors' code measures :math:`\delta` on one batch, before and after the step (an extra
    forward pass). Here :meth:`observe` sees each step's losses once, so :math:`\delta` compares
    consecutive periods of ``every`` steps (1: consecutive steps), the previous period's mean
    losses kept in the buffer ``previous``: the first period moves nothing, and a period whose
    :math:`\delta` is not finite (losses at or below :math:`L^* - \epsilon`) only becomes the
    previous one. The weights sum to 1 and are computed in float64 (the losses may span
    :math:`10^{\pm 30}`).

    Args:
        num_objectives: number of tasks :math:`k`.
        lr: Adam's step size for :math:`\xi`; the authors' 0.025.
        weight_decay: :math:`\gamma \ge 0`, the pull of :math:`\xi` towards 0; the authors' 0.01.
        min_losses: :math:`L^*`, ``None`` (zeros, the authors' default) or a vector.
        epsilon: :math:`\epsilon > 0`; the authors' :math:`10^{-8}`.
        betas, eps: Adam's.
        every: steps per period; ``None``: a period ends only when :meth:`update` is called.

    Example:
        >>> rule = FAMO(2)
        >>> rule(torch.tensor([1.0, 3.0]))  # equal logits: weights inverse to the losses
        tensor([0.7500, 0.2500])
        >>> for losses in ([1.0, 3.0], [0.5, 3.0], [0.25, 3.0]):  # the second loss stalls
        ...     rule.observe(torch.tensor(losses))
        >>> bool(rule(torch.tensor([1.0, 3.0]))[1] > 0.25)  # so it weighs more
        True
    """

    min_losses: Tensor
    logits: Tensor
    previous: Tensor
    periods: Tensor

    def __init__(
        self,
        num_objectives: int,
        *,
        lr: float = 0.025,
        weight_decay: float = 0.01,
        min_losses: Sequence[float] | Tensor | None = None,
        epsilon: float = 1e-8,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        every: int | None = 1,
    ) -> None:
        super().__init__(num_objectives, every, lr=lr, betas=betas, eps=eps)
        self.weight_decay = check_real("weight_decay", weight_decay, minimum=0.0)
        self.epsilon = check_real("epsilon", epsilon, minimum=0.0, strict=True)
        bounds = (
            torch.zeros(num_objectives)
            if min_losses is None
            else check_vector("min_losses", min_losses, num_objectives)
        )
        self.register_buffer("min_losses", bounds.double(), persistent=False)
        self.register_buffer("logits", torch.zeros(num_objectives))
        self.register_buffer("previous", torch.zeros(num_objectives, dtype=torch.float64))
        self.register_buffer("periods", torch.zeros((), dtype=torch.int64))  # 1 once ``previous`` holds a period

    def gaps(self, losses: Tensor) -> Tensor:
        """:math:`D = L - L^* + \\epsilon`, in float64."""
        return losses.double() - self.min_losses + self.epsilon

    def forward(self, losses: Tensor) -> Tensor:
        ratios = torch.softmax(self.logits.double(), dim=-1) / self.gaps(losses)
        return (ratios / ratios.sum()).to(losses.dtype)

    def apply_update(self) -> None:
        current = self.mean()
        delta = self.gaps(self.previous).log() - self.gaps(current).log()
        z = torch.softmax(self.logits.double(), dim=-1)
        seen = self.loss_count > 0
        take = seen & (self.periods > 0) & all_finite(delta)
        self.adam(self.logits, z * (delta - (z * delta).sum()), take, self.weight_decay)
        self.previous.copy_(torch.where(seen, current, self.previous))
        self.periods.copy_(torch.where(seen, 1, self.periods))

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "weight_decay": self.weight_decay,
            "min_losses": self.min_losses.tolist(),
            "epsilon": self.epsilon,
        }

    def state_rules(self, state: dict[str, Any]) -> Rules:
        periods = state["periods"]
        return {**super().state_rules(state), "periods": (((periods == 0) | (periods == 1)).all(), "0 or 1")}
