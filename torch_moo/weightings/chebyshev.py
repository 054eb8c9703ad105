"""The weights of ChebyshevALM: the augmented Lagrangian's gradient with respect to the losses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from torch_moo._validation import check_choice, check_count, check_real, check_vector, whole_numbers
from torch_moo.functional.chebyshev import (
    MultiplierRule,
    chebyshev_objective_weights,
    chebyshev_terms,
    multiplier_estimate,
)
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
        self.register_buffer("multipliers", torch.full((num_objectives,), 1.0 / num_objectives))
        self.register_buffer("penalty", torch.tensor(penalty))
        self.register_buffer("estimate_sum", torch.zeros(num_objectives, dtype=torch.float64))
        self.register_buffer("estimate_count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("ideal", torch.full((num_objectives,), float("inf")))

    def reference_point(self) -> Tensor:
        """The reference point :math:`a` (a copy): fixed, or the running ideal point."""
        return (self.ideal if self.tracks_ideal else self.reference).clone()

    def forward(self, losses: Tensor) -> Tensor:
        dual = self._estimate(losses)
        if self.multiplier_update == "phr":
            dual = dual.clamp_min(0)
        return chebyshev_objective_weights(dual, self.preference, self.augmentation).to(losses.dtype)

    def _estimate(self, values: Tensor) -> Tensor:
        """The multiplier estimate in float64 (the float32 state and values promote exactly)."""
        values = values.to(torch.float64)
        reference = torch.minimum(self.ideal, values) if self.tracks_ideal else self.reference
        terms = chebyshev_terms(values, self.preference, reference, self.augmentation)
        return multiplier_estimate(terms, self.multipliers, self.penalty, self.multiplier_update)

    def record(self, losses: Tensor, finite: Tensor | None) -> None:
        masked_add(self.estimate_sum, self.estimate_count, self._estimate(losses), finite)
        if self.tracks_ideal:
            seen = losses if finite is None else torch.where(finite, losses, self.ideal)
            torch.minimum(self.ideal, seen, out=self.ideal)

    def apply_update(self) -> None:
        r"""The outer update; see :meth:`~torch_moo.ChebyshevALM.outer_step`. A no-op without a finite step."""
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
