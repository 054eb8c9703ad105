"""The task weights of MinMaxWeighting: ascent on the regularised weighted losses."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from torch_moo._validation import check_choice, check_count, check_real
from torch_moo.functional.simplex import project_simplex
from torch_moo.weightings._base import Rules
from torch_moo.weightings._steps import PeriodMean

__all__ = ["AscentRule", "MinMax"]

AscentRule = Literal["projected", "mirror"]


class MinMax(PeriodMean):
    r"""Task weights that ascend :math:`\phi(w) = \sum_i w_i L_i - \frac{\gamma}{2}\|w - \tfrac{1}{K}\mathbf 1\|^2`.

    Guo et al., Neurocomputing 2025; the rule behind :class:`~torch_moo.MinMaxWeighting`, whose
    docstring states the update and the arguments. The weights are the current task weights
    whatever the losses; each observed step adds its loss values to a running mean (float64), and
    every ``update_every`` steps, or on :meth:`update`, the weights take one ascent step.

    Example:
        >>> rule = MinMax(2, gamma=0.0, ascent_step=1.0, update_every=1)
        >>> rule.observe(torch.tensor([0.0, 1.0]))
        >>> rule(torch.tensor([0.0, 1.0]))
        tensor([0., 1.])
    """

    counters = ("since_update",)
    period = "update_every"
    task_weights: Tensor

    def __init__(
        self,
        num_objectives: int,
        *,
        gamma: float = 5.0,
        ascent_step: float = 0.1,
        update_every: int | None = 1,
        ascent: AscentRule = "projected",
    ) -> None:
        num_objectives = check_count("num_objectives", num_objectives)
        self.gamma = check_real("gamma", gamma, minimum=0.0)
        self.ascent_step = check_real("ascent_step", ascent_step, minimum=0.0, strict=True)
        if self.gamma * self.ascent_step >= 2:
            raise ValueError(
                f"ascent_step * gamma must be < 2 for the ascent to converge, got {self.ascent_step} * {self.gamma}"
            )
        self.ascent: AscentRule = check_choice("ascent", ascent, ["projected", "mirror"])
        super().__init__(num_objectives, update_every)
        self.register_buffer("task_weights", torch.full((num_objectives,), 1.0 / num_objectives))

    def forward(self, losses: Tensor) -> Tensor:
        return self.task_weights.to(losses.dtype, copy=True)

    def apply_update(self) -> None:
        """One ascent step with the mean losses since the last update; a no-op without a finite step."""
        # w + eta (mean - gamma (w - 1/K)) (log w for the mirror step) less the common shift eta gamma / K,
        # which neither the projection nor the softmax sees: two fused ops, in float64
        weights, eta = self.task_weights, self.ascent_step
        start = weights if self.ascent == "projected" else weights.log()
        moved = torch.addcdiv(start, self.loss_sum, self.loss_count.clamp_min(1), value=eta)
        moved = torch.add(moved, weights, alpha=-eta * self.gamma)
        if self.ascent == "projected":
            updated = project_simplex(moved)
        else:
            # kept >= the smallest normal number: a weight that underflowed to 0 (log 0 = -inf)
            # would switch its task off for good, where exact arithmetic only makes it small
            updated = torch.softmax(moved, dim=-1).clamp_min(torch.finfo(weights.dtype).tiny)
        self.task_weights.copy_(torch.where(self.loss_count > 0, updated, self.task_weights))

    def config(self) -> dict[str, Any]:
        return {
            "gamma": self.gamma,
            "ascent_step": self.ascent_step,
            "update_every": self.every,
            "ascent": self.ascent,
        }

    def state_rules(self, state: dict[str, Any]) -> Rules:
        weights = state["task_weights"]
        # k float32 entries of the simplex, each rounded by at most 2^-24, sum to within k * 2^-24 of 1;
        # 16x that is allowed
        on_simplex = torch.isfinite(weights).all() & (
            (weights.double().sum() - 1).abs() <= self.num_objectives * 2.0**-20
        )
        if self.ascent == "mirror":  # the mirror step takes the weights' log
            weights_rule = (on_simplex & (weights > 0).all(), "positive and summing to 1 (ascent='mirror')")
        else:
            weights_rule = (on_simplex & (weights >= 0).all(), "non-negative and summing to 1")
        return {
            **super().state_rules(state),
            "task_weights": weights_rule,
        }
