"""The weights of ChebyshevALM: the augmented Lagrangian's gradient with respect to the losses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from torch_moo._validation import check_choice, check_count, check_real, check_vector, whole_numbers
from torch_moo.functional.chebyshev import MultiplierRule, _estimate, _linear_map, _unit_l1
from torch_moo.weightings._base import LossWeighting, Rules
from torch_moo.weightings._steps import masked_add

__all__ = ["ChebyshevLagrangian"]


class ChebyshevLagrangian(LossWeighting):
    r"""Weights and multiplier updates of the augmented weighted Chebyshev problem's augmented Lagrangian.

    Hotegni, Peitz & Berkemeier, arXiv:2308.12243 (IJCNN 2024); the rule behind
    :class:`~torch_moo.ChebyshevALM`, whose docstring states the problem and the arguments. The
    weights for loss values :math:`f` are the multiplier estimate
    :math:`d = \operatorname{proj}_\Delta(\lambda + \mu g)` carried through the weighted
    terms :math:`g` (:func:`~torch_moo.functional.chebyshev_objective_weights`); each observed
    step adds its estimate (float64) to a running sum, and every ``outer_every`` steps, or on
    :meth:`update`, the multipliers and the penalty take the outer update.

    Example:
        >>> rule = ChebyshevLagrangian(2, preference=[0.5, 0.5], outer_every=None)
        >>> rule(torch.tensor([1.0, 3.0]))  # the worse objective takes almost all the weight
        tensor([9.9980e-05, 9.9990e-01])
    """

    counters = ("since_outer",)
    period = "outer_every"
    multipliers: Tensor
    penalty: Tensor
    estimate_sum: Tensor
    estimate_count: Tensor
    ideal: Tensor
    preference: Tensor
    reference: Tensor
    linear_map: Tensor

    def __init__(
        self,
        num_objectives: int,
        *,
        preference: Sequence[float] | Tensor,
        reference: Sequence[float] | Tensor | str | None = None,
        augmentation: float = 1e-4,
        penalty: float = 1.0,
        penalty_growth: float = 1.0,
        max_penalty: float = 1e6,
        outer_every: int | None = 100,
        multiplier_update: MultiplierRule = "phr",
    ) -> None:
        self.num_objectives = check_count("num_objectives", num_objectives)
        given = check_vector("preference", preference, num_objectives)
        if (given < 0).any() or given.sum() <= 0:
            raise ValueError(f"preference must be non-negative and not all zero, got {given.tolist()}")
        if isinstance(reference, str):
            check_choice("reference", reference, ["ideal"])
        elif reference is not None:
            reference = check_vector("reference", reference, num_objectives)
        self.augmentation = check_real("augmentation", augmentation, minimum=0.0)
        penalty = check_real("penalty", penalty, minimum=0.0, strict=True)
        self.penalty_growth = check_real("penalty_growth", penalty_growth, minimum=1.0)
        self.max_penalty = check_real("max_penalty", max_penalty, minimum=penalty)
        every = None if outer_every is None else check_count("outer_every", outer_every)
        self.multiplier_update: MultiplierRule = check_choice(
            "multiplier_update", multiplier_update, ["phr", "reference"]
        )
        super().__init__(every)
        self.tracks_ideal = reference == "ideal"
        fixed = reference if isinstance(reference, Tensor) else torch.zeros(num_objectives)  # None or "ideal": zeros
        self.register_buffer("preference", given / given.sum(), persistent=False)
        self.register_buffer("reference", fixed, persistent=False)
        # g = T^T (f - a) and the weights' T d (see _linear_map): a matrix-vector product each per step
        self.register_buffer("linear_map", _linear_map(self.preference.double(), self.augmentation), persistent=False)
        self._shifts = reference is not None  # whether f - a differs from f (a fixed non-zero point or "ideal")
        self.register_buffer("multipliers", torch.full((num_objectives,), 1.0 / num_objectives))
        self.register_buffer("penalty", torch.tensor(penalty))
        self.register_buffer("estimate_sum", torch.zeros(num_objectives, dtype=torch.float64))
        self.register_buffer("estimate_count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("ideal", torch.full((num_objectives,), float("inf")))
        self._last: tuple[Tensor, Tensor] | None = None  # (loss values, their estimate) of the last weigh_step

    def reference_point(self) -> Tensor:
        """The reference point :math:`a` (a copy): fixed, or the running ideal point."""
        return (self.ideal if self.tracks_ideal else self.reference).clone()

    def forward(self, losses: Tensor) -> Tensor:
        return self._weights(self._estimate(losses), losses.dtype)

    def weigh_step(self, losses: Tensor) -> Tensor:
        estimate = self._estimate(losses)
        self._last = (losses, estimate)
        return self._weights(estimate, losses.dtype)

    def _weights(self, dual: Tensor, dtype: torch.dtype) -> Tensor:
        if self.multiplier_update == "phr":
            dual = dual.clamp_min(0)
        # chebyshev_objective_weights(dual, preference, augmentation)
        return _unit_l1(self.linear_map @ dual).to(dtype)

    def _estimate(self, values: Tensor) -> Tensor:
        """:func:`~torch_moo.functional.multiplier_estimate` of the terms :func:`~torch_moo.functional.chebyshev_terms`
        in float64 (the float32 state and values promote exactly)."""
        gaps = values.to(torch.float64)
        if self._shifts:
            gaps = gaps - (torch.minimum(self.ideal, gaps) if self.tracks_ideal else self.reference)
        return _estimate(torch.addcmul(self.multipliers, self.penalty, gaps @ self.linear_map), self.multiplier_update)

    def record(self, losses: Tensor, finite: Tensor | None) -> None:
        # A step of one backward records the values its weigh_step weighed, under the same state (only
        # update() and a load change it, and they drop the pair): its estimate is taken, not recomputed.
        last, self._last = self._last, None
        estimate = last[1] if last is not None and last[0] is losses else self._estimate(losses)
        masked_add(self.estimate_sum, self.estimate_count, estimate, finite)
        if self.tracks_ideal:
            seen = losses if finite is None else torch.where(finite, losses, self.ideal)
            torch.minimum(self.ideal, seen, out=self.ideal)

    def apply_update(self) -> None:
        r"""The outer update; see :meth:`~torch_moo.ChebyshevALM.outer_step`. A no-op without a finite step."""
        self._last = None
        count = self.estimate_count
        if self.multiplier_update == "phr":
            updated = (self.estimate_sum / count.clamp_min(1)).clamp_min(0)
        else:
            current = self.multipliers.to(torch.float64)
            updated = current + (self.estimate_sum - count * current)
            updated = updated + (1 - updated.sum()) / self.num_objectives
        taken = count > 0
        self.multipliers.copy_(torch.where(taken, updated, self.multipliers))
        grown = (self.penalty * self.penalty_growth).clamp_max(self.max_penalty)
        self.penalty.copy_(torch.where(taken, grown, self.penalty))
        self.estimate_sum.zero_()
        self.estimate_count.zero_()

    def load_method_state(self, state: dict[str, Any]) -> None:
        self._last = None
        super().load_method_state(state)

    def config(self) -> dict[str, Any]:
        return {
            "preference": self.preference.tolist(),
            "reference": "ideal" if self.tracks_ideal else self.reference.tolist(),
            "augmentation": self.augmentation,
            "penalty_growth": self.penalty_growth,
            "max_penalty": self.max_penalty,
            "outer_every": self.every,
            "multiplier_update": self.multiplier_update,
        }

    def state_rules(self, state: dict[str, Any]) -> Rules:
        multipliers, penalty, ideal = state["multipliers"], state["penalty"], state["ideal"]
        finite = torch.isfinite(multipliers).all()
        if self.multiplier_update == "phr":  # clamped at 0
            multipliers_rule = (finite & (multipliers >= 0).all(), "finite and non-negative (multiplier_update='phr')")
        else:  # kept on sum = 1 (the outer update); rounded to the dtype, entry by entry: 16x that rounding allowed
            off = (multipliers.double().sum() - 1).abs()
            tolerance = self.num_objectives * 2.0**-20 * multipliers.double().abs().sum().clamp_min(1)
            multipliers_rule = (finite & (off <= tolerance), "finite and summing to 1 (multiplier_update='reference')")
        return {
            **super().state_rules(state),
            "multipliers": multipliers_rule,
            "penalty": ((penalty > 0) & (penalty <= self.max_penalty), f"in (0, max_penalty={self.max_penalty}]"),
            "estimate_count": (whole_numbers(state["estimate_count"]), "a non-negative whole number"),
            "ideal": (((ideal == float("inf")) | torch.isfinite(ideal)).all(), "finite or +inf (no finite loss seen)"),
        }
