"""MinMaxWeighting: task weights learned by ascent, so that descent serves the worst task."""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torch.optim import Optimizer

from torch_moo._validation import Nonfinite
from torch_moo.base import WeightedLossDescent, rule_setting
from torch_moo.weightings.minmax import AscentRule, MinMax

__all__ = ["MinMaxWeighting"]


class MinMaxWeighting(WeightedLossDescent):
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

    It is a :class:`~torch_moo.WeightedLossDescent` whose rule, :class:`~torch_moo.weightings.MinMax`,
    holds the task weights and the running mean of the losses (:attr:`weighting`).

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

    weighting: MinMax

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
        rule = MinMax(num_objectives, gamma=gamma, ascent_step=ascent_step, update_every=update_every, ascent=ascent)
        super().__init__(
            params, num_objectives=num_objectives, weighting=rule, nonfinite=nonfinite, base=base, **base_kwargs
        )

    gamma = rule_setting("gamma", r"The pull :math:`\gamma` towards uniform weights.")
    ascent_step = rule_setting("ascent_step", r"The ascent step :math:`\eta`.")
    update_every = rule_setting("every", "Steps between weight updates (``None``: only :meth:`update_weights`).")
    ascent = rule_setting("ascent", '``"projected"`` or ``"mirror"``.')

    @property
    def task_weights(self) -> Tensor:
        """The current task weights :math:`w` (a copy), for logging."""
        return self.weighting.task_weights.clone()

    def update_weights(self) -> None:
        """One ascent step on the weights with the mean losses since the last update.

        A no-op when no step with finite losses was taken since then.
        """
        self.weighting.update()

    def _settings(self) -> dict[str, Any]:
        return self.weighting.config()
