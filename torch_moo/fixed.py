"""FixedWeighting: constant objective weights behind the same protocol (linear scalarization)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from torch_moo._validation import Nonfinite, check_count, check_vector
from torch_moo.base import WeightedLossDescent
from torch_moo.weightings.simple import Constant

__all__ = ["FixedWeighting"]


class FixedWeighting(WeightedLossDescent):
    r"""Constant weights: one backward pass of :math:`\sum_i w_i f_i` per step.

    .. math::

        \min_\theta \sum_i w_i f_i(\theta)

    The linear scalarization every multi-task baseline starts from (LibMTL's ``EW`` with
    ``weights`` all one). With the default weights (all one) a step is exactly
    ``losses.sum().backward(); base.step()``. It has the protocol of every torch_moo optimizer
    (``backward(losses)``, ``nonfinite``, GradScaler, DDP, checkpoints), so a configuration can
    switch between it and the adaptive methods without a branch in the training loop.

    Args:
        params: parameters or parameter groups, or a built optimizer.
        num_objectives: number of objectives :math:`k`.
        weights: :math:`w`, non-negative and not all zero, one per objective, used as given
            (not normalised); ``None`` is all ones.
        nonfinite, base, base_kwargs: see :class:`~torch_moo.MultiObjectiveOptimizer`.

    It is a :class:`~torch_moo.WeightedLossDescent` with the rule :class:`~torch_moo.weightings.Constant`.

    Example:
        >>> model = torch.nn.Linear(3, 2)
        >>> opt = FixedWeighting(model.parameters(), num_objectives=2, weights=[1.0, 0.5], lr=1e-2)
        >>> out = model(torch.randn(8, 3))
        >>> opt.backward(torch.stack([out[:, 0].square().mean(), out[:, 1].square().mean()]))
        tensor([1.0000, 0.5000])
        >>> opt.step()
    """

    weighting: Constant

    def __init__(
        self,
        params: Any,
        *,
        num_objectives: int,
        weights: Sequence[float] | Tensor | None = None,
        nonfinite: Nonfinite = "raise",
        base: type[Optimizer] | Optimizer | None = None,
        **base_kwargs: Any,
    ) -> None:
        num_objectives = check_count("num_objectives", num_objectives)
        fixed = torch.ones(num_objectives) if weights is None else check_vector("weights", weights, num_objectives)
        if (fixed < 0).any() or not (fixed > 0).any():
            raise ValueError(f"weights must be non-negative and not all zero, got {fixed.tolist()}")
        rule = Constant(torch.ones(num_objectives) if weights is None else weights)
        super().__init__(
            params, num_objectives=num_objectives, weighting=rule, nonfinite=nonfinite, base=base, **base_kwargs
        )

    @property
    def task_weights(self) -> Tensor:
        """The weights :math:`w` (a copy)."""
        return self.weighting.weights.to(torch.float32)

    def _settings(self) -> dict[str, Any]:
        return {"weights": self.weighting.weights.tolist()}
