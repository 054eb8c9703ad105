"""MinMaxWeighting: task weights learned by ascent, so that descent serves the worst task."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

from torch_moo._running import RunningMean
from torch_moo._validation import Nonfinite, check_choice, check_count, check_real, whole_numbers
from torch_moo.base import LossSpaceOptimizer
from torch_moo.functional.simplex import project_simplex

__all__ = ["MinMaxWeighting"]

AscentRule = Literal["projected", "mirror"]


class MinMaxWeighting(LossSpaceOptimizer):
    r"""Min-max task weighting: descend on the weighted losses, ascend on the weights.

    Guo, Li, Sun, Qin, Yu & Zhang, *A min-max optimization framework for sparse multi-task deep
    neural network*, Neurocomputing 2025. The saddle-point problem is

    .. math::

        \min_\theta \max_{w \in \Delta} \ \phi(w) = \sum_i w_i L_i(\theta)
        - \frac{\gamma}{2} \Big\| w - \tfrac{1}{K}\mathbf{1} \Big\|^2 .

    Every step the base optimizer descends on :math:`\sum_i w_i L_i` with the current weights
    (one backward pass). Every ``update_every`` steps, or on :meth:`update_weights`, the
    weights take one ascent step with the mean losses :math:`\bar L` since the last update,
    :math:`\nabla \phi = \bar L - \gamma (w - \tfrac{1}{K})`:

    * ``ascent="projected"`` (the paper's): :math:`w \leftarrow \operatorname{proj}_\Delta(w + \eta \nabla\phi)`,
      the exact Euclidean projection (:func:`~torch_moo.functional.project_simplex`). For
      constant losses it converges to :math:`w^* = \operatorname{proj}_\Delta(\tfrac{1}{K} + \bar L/\gamma)`
      at rate :math:`|1 - \eta\gamma|` (in one step when :math:`\eta\gamma = 1`), and it can
      set a weight exactly to zero.
    * ``ascent="mirror"``: exponentiated gradient, :math:`w \leftarrow w \odot e^{\eta \nabla\phi} / Z`.
      Weights stay positive (one that would underflow is kept at the smallest normal float,
      so that it can recover) and move multiplicatively, which suits many tasks with skewed
      weights (its regret grows with :math:`\log K`, not :math:`\sqrt K`); with few tasks or
      when a task should be switched off entirely, prefer the projection.

    The paper uses :math:`\gamma = 5` and :math:`\eta = 1/\beta` with :math:`\beta \in \{10, 50\}`,
    one update per epoch. Under :mod:`torch.distributed` the losses are all-reduced first, so
    every rank holds the same weights.

    Args:
        params: parameters or parameter groups.
        num_objectives: number of tasks :math:`K`.
        gamma: :math:`\gamma \ge 0`, the pull towards uniform weights.
        ascent_step: :math:`\eta > 0`; with :math:`\gamma > 0`, :math:`\eta\gamma < 2` is
            required for the projected ascent to converge.
        update_every: steps between weight updates; ``None``: only :meth:`update_weights`.
        ascent: ``"projected"`` or ``"mirror"``.
        nonfinite, base, base_kwargs: see :class:`~torch_moo.MultiObjectiveOptimizer`.

    Example:
        >>> model = torch.nn.Linear(3, 2)
        >>> opt = MinMaxWeighting(model.parameters(), num_objectives=2, lr=1e-2)
        >>> x = torch.randn(16, 3)
        >>> for _ in range(5):
        ...     opt.zero_grad()
        ...     out = model(x)
        ...     losses = torch.stack([out[:, 0].pow(2).mean(), 10 * (out[:, 1] - 1).pow(2).mean()])
        ...     _ = opt.backward(losses)
        ...     opt.step()
        >>> bool(opt.task_weights[1] > opt.task_weights[0])  # the harder task weighs more
        True
    """

    def __init__(
        self,
        params: Any,
        *,
        num_objectives: int,
        gamma: float = 5.0,
        ascent_step: float = 0.1,
        update_every: int | None = 1,
        ascent: AscentRule = "projected",
        nonfinite: Nonfinite = "raise",
        base: type[Optimizer] | Optimizer | None = None,
        **base_kwargs: Any,
    ) -> None:
        num_objectives = check_count("num_objectives", num_objectives)
        self.gamma = check_real("gamma", gamma, minimum=0.0)
        self.ascent_step = check_real("ascent_step", ascent_step, minimum=0.0, strict=True)
        if self.gamma * self.ascent_step >= 2:
            raise ValueError(
                f"ascent_step * gamma must be < 2 for the ascent to converge, got {self.ascent_step} * {self.gamma}"
            )
        self.update_every = None if update_every is None else check_count("update_every", update_every)
        self.ascent = check_choice("ascent", ascent, ["projected", "mirror"])
        super().__init__(params, num_objectives=num_objectives, nonfinite=nonfinite, base=base, **base_kwargs)
        device = self._device
        self._task_weights = torch.full((num_objectives,), 1.0 / num_objectives, device=device)
        self._losses = RunningMean(num_objectives, device)
        self._since_update = 0

    @property
    def task_weights(self) -> Tensor:
        """The current task weights :math:`w` (a copy), for logging."""
        return self._task_weights.clone()

    def update_weights(self) -> None:  # its tensors never require grad: no graph is recorded
        """One ascent step on the weights with the mean losses since the last update.

        A no-op when no step with finite losses was taken since then.
        """
        ascent = self._losses.mean() - self.gamma * (self._task_weights - 1.0 / self.num_objectives)
        if self.ascent == "projected":
            updated = project_simplex(self._task_weights + self.ascent_step * ascent)
        else:
            # kept >= the smallest normal number: a weight that underflowed to 0 (log 0 = -inf)
            # would switch its task off for good, where exact arithmetic only makes it small
            updated = torch.softmax(self._task_weights.log() + self.ascent_step * ascent, dim=-1)
            updated = updated.clamp_min(torch.finfo(self._task_weights.dtype).tiny)
        self._task_weights.copy_(torch.where(self._losses.count > 0, updated, self._task_weights))
        self._losses.reset()
        self._since_update = 0

    def _weights(self, values: Tensor) -> Tensor:
        return self._task_weights.clone()

    def _advance(self, values: Tensor) -> None:
        self._losses.add(values, self._finite(values))
        self._since_update += 1
        if self.update_every is not None and self._since_update >= self.update_every:
            self.update_weights()

    def _config(self) -> dict[str, Any]:
        return {
            **super()._config(),
            "gamma": self.gamma,
            "ascent_step": self.ascent_step,
            "update_every": self.update_every,
            "ascent": self.ascent,
        }

    def _method_state(self) -> dict[str, Any]:
        return {
            "task_weights": self._task_weights.clone(),
            "loss_sum": self._losses.total.clone(),
            "loss_count": self._losses.count.clone(),
            "since_update": self._since_update,
        }

    def _load_method_state(self, state: dict[str, Any]) -> None:
        self._task_weights.copy_(state["task_weights"])
        self._losses.total.copy_(state["loss_sum"])
        self._losses.count.copy_(state["loss_count"])
        self._since_update = state["since_update"]

    def _state_rules(self, state: dict[str, Any]) -> dict[str, tuple[bool | Tensor, str]]:
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
            **super()._state_rules(state),
            "task_weights": weights_rule,
            "loss_count": (whole_numbers(state["loss_count"]), "a non-negative whole number"),
            "since_update": (
                self.update_every is None or state["since_update"] < self.update_every,
                f"below update_every={self.update_every}",
            ),
        }
