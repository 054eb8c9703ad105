"""DWA: task weights from the rate at which each loss falls."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torch_moo._validation import check_real
from torch_moo.weightings._base import Rules
from torch_moo.weightings._steps import PeriodMean

__all__ = ["DWA"]


class DWA(PeriodMean):
    r"""Dynamic Weight Average: a task whose loss falls slowly weighs more.

    Liu, Johns & Davison, *End-To-End Multi-Task Learning With Attention*, CVPR 2019, as
    LibMTL's ``DWA``. With :math:`\bar L_i(t)` the mean loss of period :math:`t` (an epoch:
    ``every`` = steps per epoch) and temperature :math:`T`,

    .. math::

        r_i = \frac{\bar L_i(t-1)}{\bar L_i(t-2)}, \qquad
        w = k \operatorname{softmax}(r / T),

    and :math:`w = \mathbf{1}` until two periods are complete. A period without a step whose
    losses count (``finite``) is left out. The losses must be positive (a zero mean loss makes
    :math:`r` infinite or undefined, as in LibMTL).

    Args:
        num_objectives: number of tasks :math:`k`.
        temperature: :math:`T > 0`; the paper's 2.
        every: steps per period; ``None``: call :meth:`update` at the end of each epoch.

    Example:
        >>> rule = DWA(2, every=1)
        >>> for losses in ([1.0, 1.0], [0.5, 1.0]):
        ...     rule.observe(torch.tensor(losses))
        >>> rule(torch.tensor([0.5, 1.0]))  # the second task's loss stalled: it weighs more
        tensor([0.8756, 1.1244])
    """

    history: Tensor
    periods: Tensor

    def __init__(self, num_objectives: int, *, temperature: float = 2.0, every: int | None = None) -> None:
        super().__init__(num_objectives, every)
        self.temperature = check_real("temperature", temperature, minimum=0.0, strict=True)
        self.register_buffer("history", torch.ones(2, num_objectives, dtype=torch.float64))  # periods t-2, t-1
        self.register_buffer("periods", torch.zeros((), dtype=torch.int64))  # complete periods, at most 2

    def forward(self, losses: Tensor) -> Tensor:
        weights = self.num_objectives * torch.softmax(self.history[1] / self.history[0] / self.temperature, dim=-1)
        return torch.where(self.periods >= 2, weights, 1.0).to(losses.dtype)

    def apply_update(self) -> None:
        seen = self.loss_count > 0
        self.history.copy_(torch.where(seen, torch.stack((self.history[1], self.mean())), self.history))
        self.periods.copy_(torch.where(seen, (self.periods + 1).clamp_max(2), self.periods))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "temperature": self.temperature}

    def state_rules(self, state: dict[str, Any]) -> Rules:
        periods = state["periods"]
        return {**super().state_rules(state), "periods": (((periods >= 0) & (periods <= 2)).all(), "0, 1 or 2")}
