"""ChebyshevALM: the augmented weighted Chebyshev problem solved by an augmented Lagrangian."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from torch_moo._running import RunningMean
from torch_moo._validation import Nonfinite, check_choice, check_count, check_real, check_vector, whole_numbers
from torch_moo.base import LossSpaceOptimizer
from torch_moo.functional.chebyshev import (
    MultiplierRule,
    chebyshev_objective_weights,
    chebyshev_terms,
    multiplier_estimate,
)

__all__ = ["ChebyshevALM"]


class ChebyshevALM(LossSpaceOptimizer):
    r"""Weighted Chebyshev scalarization by an augmented Lagrangian, driven by any base optimizer.

    Hotegni, Peitz & Berkemeier, *Multi-Objective Optimization for Sparse Deep Neural Network
    Training*, arXiv:2308.12243 (IJCNN 2024). For the preference :math:`k` (normalised to sum
    to one), reference point :math:`a` and augmentation :math:`\varepsilon` it solves the
    augmented weighted Chebyshev problem (constraints :math:`c_i = g_i - t \le 0` on a level
    :math:`t`) by its augmented Lagrangian in PHR form, both stated in
    :mod:`torch_moo.functional.chebyshev`. The Lagrangian is minimised over :math:`t` exactly
    (:func:`~torch_moo.functional.optimal_level`) and over :math:`\theta` by the base
    optimizer, with one backward pass of :math:`\sum_j \omega_j f_j` per step. The weights
    :math:`\omega` are its gradient with respect to the losses, rescaled to sum to one: the
    multiplier estimate :math:`d = \operatorname{proj}_\Delta(\lambda + \mu g)`
    (:func:`~torch_moo.functional.multiplier_estimate`) carried through :math:`g` by
    :func:`~torch_moo.functional.chebyshev_objective_weights`.

    Small :math:`\mu` gives the multipliers' weighted sum, large :math:`\mu` the worst
    objective alone (choosing it: the ChebyshevALM page of the documentation). Every
    ``outer_every`` steps (or on :meth:`outer_step`) the multipliers and the penalty take the
    update :math:`\lambda \leftarrow \max(0, \lambda + \mu\,\bar c)` and
    :math:`\mu \leftarrow \min(\rho\mu, \mu_{\max})`, with :math:`\bar c` the constraint values
    averaged over the steps since the last update.

    ``multiplier_update="reference"`` reproduces the authors' code instead: the Lagrangian
    :math:`t + \lambda^\top c + \tfrac{\mu}{2}\|c\|^2` (inequalities treated as equalities, no
    projection of :math:`\lambda`, weights may be negative) and
    :math:`\lambda \leftarrow \lambda + \mu \sum_{\text{steps}} c`; the authors used
    ``penalty=2.5e-8, penalty_growth=2`` with an outer update every 3 epochs. Their code leaves
    :math:`t` to Adam; here it is minimised exactly in both modes, which keeps
    :math:`\sum_i \lambda_i = 1` (:meth:`outer_step` holds it against rounding) and leaves the
    rest of :math:`\lambda` as the authors' update makes it. The weights are then rescaled to
    :math:`\sum_j |\omega_j| = 1` (see :func:`~torch_moo.functional.chebyshev_objective_weights`).

    Args:
        params: parameters or parameter groups.
        num_objectives: number of objectives :math:`m`.
        preference: :math:`k`, non-negative, not all zero, one entry per objective.
        reference: :math:`a`: ``None`` (zeros), a vector, or ``"ideal"`` to track the running
            minimum of each loss seen at ``step()`` (the ideal point; mini-batch noise lowers it).
        augmentation: :math:`\varepsilon \ge 0`.
        penalty: initial :math:`\mu > 0`, in units of the weighted losses :math:`g`.
        penalty_growth: :math:`\rho \ge 1` applied at each outer update.
        max_penalty: cap on :math:`\mu`.
        outer_every: steps between automatic outer updates (``None``: only on :meth:`outer_step`).
            The default, 100, averages the multiplier estimate over 100 mini-batches and moves
            the multipliers a few times per epoch; the paper updates once per ALM iteration (a
            few epochs). On the README's loop, updates every 50 to 200 steps train as well as
            plain Adam on the summed losses, while an update every step follows the batch noise.
            With ``penalty_growth > 1`` choose it so that :math:`\mu` grows once per pass over the
            data, or call :meth:`outer_step` per epoch with ``None``.
        multiplier_update: ``"phr"`` (default) or ``"reference"``.
        nonfinite, base, base_kwargs: see :class:`~torch_moo.MultiObjectiveOptimizer`.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = ChebyshevALM(model.parameters(), num_objectives=2, preference=[0.5, 0.5], outer_every=10, lr=1e-2)
        >>> x = torch.randn(8, 4)
        >>> for _ in range(3):
        ...     opt.zero_grad()
        ...     out = model(x)
        ...     weights = opt.backward(torch.stack([out[:, 0].pow(2).mean(), (out[:, 1] - 1).pow(2).mean()]))
        ...     opt.step()
        >>> bool(torch.isclose(weights.sum(), torch.tensor(1.0)))
        True
    """

    def __init__(
        self,
        params: Any,
        *,
        num_objectives: int,
        preference: Sequence[float] | Tensor,
        reference: Sequence[float] | Tensor | str | None = None,
        augmentation: float = 1e-4,
        penalty: float = 1.0,
        penalty_growth: float = 1.0,
        max_penalty: float = 1e6,
        outer_every: int | None = 100,
        multiplier_update: MultiplierRule = "phr",
        nonfinite: Nonfinite = "raise",
        base: type[Optimizer] | Optimizer | None = None,
        **base_kwargs: Any,
    ) -> None:
        num_objectives = check_count("num_objectives", num_objectives)
        preference = check_vector("preference", preference, num_objectives)
        if (preference < 0).any() or preference.sum() <= 0:
            raise ValueError(f"preference must be non-negative and not all zero, got {preference.tolist()}")
        if isinstance(reference, str):
            check_choice("reference", reference, ["ideal"])
        elif reference is not None:
            reference = check_vector("reference", reference, num_objectives)
        self.augmentation = check_real("augmentation", augmentation, minimum=0.0)
        penalty = check_real("penalty", penalty, minimum=0.0, strict=True)
        self.penalty_growth = check_real("penalty_growth", penalty_growth, minimum=1.0)
        self.max_penalty = check_real("max_penalty", max_penalty, minimum=penalty)
        self.outer_every = None if outer_every is None else check_count("outer_every", outer_every)
        self.multiplier_update: MultiplierRule = check_choice(
            "multiplier_update", multiplier_update, ["phr", "reference"]
        )
        super().__init__(params, num_objectives=num_objectives, nonfinite=nonfinite, base=base, **base_kwargs)

        device = self._device
        self.preference = (preference / preference.sum()).to(device)
        self.tracks_ideal = reference == "ideal"
        fixed = reference if isinstance(reference, Tensor) else torch.zeros(num_objectives)  # None or "ideal": zeros
        self._reference = fixed.to(device)
        self._ideal = torch.full((num_objectives,), float("inf"), device=device)
        self._multipliers = torch.full((num_objectives,), 1.0 / num_objectives, device=device)
        self._penalty = torch.tensor(penalty, device=device)
        self._estimates = RunningMean(num_objectives, device)
        self._since_outer = 0
        self._last_estimate: tuple[Tensor | None, Tensor | None] = (None, None)

    # ---------------------------------------------------------------------- public state
    @property
    def multipliers(self) -> Tensor:
        r"""The Lagrange multipliers :math:`\lambda` (a copy)."""
        return self._multipliers.clone()

    @property
    def penalty(self) -> Tensor:
        r"""The current penalty :math:`\mu` (a copy)."""
        return self._penalty.clone()

    def reference_point(self) -> Tensor:
        """The reference point :math:`a` (a copy): fixed, or the running ideal point."""
        return (self._ideal if self.tracks_ideal else self._reference).clone()

    def outer_step(self) -> None:  # its tensors never require grad: no graph is recorded
        r"""Update the multipliers and the penalty from the steps since the last outer update.

        A no-op when no step with finite losses was taken since then. The steps' estimates
        :math:`\hat\lambda_s = \lambda + \mu\, c_s(t^*_s)` are summed in float64 (with
        :math:`\mu \approx 10^{-8}` the change is below float32's resolution of
        :math:`\lambda`). ``"phr"``: :math:`\lambda \leftarrow \max(0, \bar{\hat\lambda})`.
        ``"reference"``: :math:`\lambda \leftarrow \lambda + \sum_s (\hat\lambda_s - \lambda)
        = \lambda + \mu \sum_s c_s`, then shifted by a multiple of :math:`\mathbf 1` back onto
        :math:`\sum_i \lambda_i = 1`. Each :math:`\hat\lambda_s` sums to one exactly at the
        exact level (:func:`~torch_moo.functional.optimal_level`), so the update keeps
        :math:`\sum_i \lambda_i = 1` in exact arithmetic and the shift only removes rounding;
        but it maps :math:`\sum_i \lambda_i - 1` to :math:`(1 - n)(\sum_i \lambda_i - 1)` over
        :math:`n` steps, so without it rounding would grow :math:`(n-1)`-fold per outer update.
        The shift changes only the multiple of :math:`\mathbf 1` in :math:`\lambda`; the part
        orthogonal to :math:`\mathbf 1`, on which neither the exact level nor the authors'
        Adam-trained :math:`t` has any influence, is exactly the authors' update.
        """
        count = self._estimates.count
        if self.multiplier_update == "phr":
            updated = self._estimates.mean().clamp_min(0)
        else:
            current = self._multipliers.to(torch.float64)
            updated = current + (self._estimates.total - count * current)
            updated = updated + (1 - updated.sum()) / self.num_objectives
        taken = count > 0
        self._multipliers.copy_(torch.where(taken, updated, self._multipliers))
        grown = (self._penalty * self.penalty_growth).clamp_max(self.max_penalty)
        self._penalty.copy_(torch.where(taken, grown, self._penalty))
        self._estimates.reset()
        self._since_outer = 0
        self._last_estimate = (None, None)

    # ------------------------------------------------------------------------ internals
    def _estimate(self, values: Tensor) -> Tensor:
        """The multiplier estimate in float64 (the float32 state and values promote exactly)."""
        values = values.to(torch.float64)
        reference = torch.minimum(self._ideal, values) if self.tracks_ideal else self._reference
        terms = chebyshev_terms(values, self.preference, reference, self.augmentation)
        return multiplier_estimate(terms, self._multipliers, self._penalty, self.multiplier_update)

    def _weights(self, values: Tensor) -> Tensor:
        estimate = self._estimate(values)
        self._last_estimate = (values, estimate)  # step() reuses it for the same values and state
        dual = estimate.clamp_min(0) if self.multiplier_update == "phr" else estimate
        return chebyshev_objective_weights(dual, self.preference, self.augmentation).to(values.dtype)

    def _advance(self, values: Tensor) -> None:
        cached_values, estimate = self._last_estimate
        if cached_values is not values or estimate is None:
            estimate = self._estimate(values)
        finite = self._finite(values)
        self._estimates.add(estimate, finite)
        if self.tracks_ideal:
            seen = values if finite is None else torch.where(finite, values, self._ideal)
            torch.minimum(self._ideal, seen, out=self._ideal)
        self._since_outer += 1
        if self.outer_every is not None and self._since_outer >= self.outer_every:
            self.outer_step()

    def _config(self) -> dict[str, Any]:
        return {
            **super()._config(),
            "preference": self.preference.tolist(),
            "reference": "ideal" if self.tracks_ideal else self._reference.tolist(),
            "augmentation": self.augmentation,
            "penalty_growth": self.penalty_growth,
            "max_penalty": self.max_penalty,
            "outer_every": self.outer_every,
            "multiplier_update": self.multiplier_update,
        }

    def _method_state(self) -> dict[str, Any]:
        return {
            "multipliers": self._multipliers.clone(),
            "penalty": self._penalty.clone(),
            "estimate_sum": self._estimates.total.clone(),
            "estimate_count": self._estimates.count.clone(),
            "ideal": self._ideal.clone(),
            "since_outer": self._since_outer,
        }

    def _load_method_state(self, state: dict[str, Any]) -> None:
        self._multipliers.copy_(state["multipliers"])
        self._penalty.copy_(state["penalty"])
        self._estimates.total.copy_(state["estimate_sum"])
        self._estimates.count.copy_(state["estimate_count"])
        self._ideal.copy_(state["ideal"])
        self._since_outer = state["since_outer"]
        self._last_estimate = (None, None)

    def _state_rules(self, state: dict[str, Any]) -> dict[str, tuple[bool | Tensor, str]]:
        multipliers, penalty, ideal = state["multipliers"], state["penalty"], state["ideal"]
        finite = torch.isfinite(multipliers).all()
        if self.multiplier_update == "phr":  # clamped at 0
            multipliers_rule = (finite & (multipliers >= 0).all(), "finite and non-negative (multiplier_update='phr')")
        else:  # kept on sum = 1 (outer_step); rounded to the dtype, entry by entry: 16x that rounding allowed
            off = (multipliers.double().sum() - 1).abs()
            tolerance = self.num_objectives * 2.0**-20 * multipliers.double().abs().sum().clamp_min(1)
            multipliers_rule = (finite & (off <= tolerance), "finite and summing to 1 (multiplier_update='reference')")
        return {
            **super()._state_rules(state),
            "multipliers": multipliers_rule,
            "penalty": ((penalty > 0) & (penalty <= self.max_penalty), f"in (0, max_penalty={self.max_penalty}]"),
            "estimate_count": (whole_numbers(state["estimate_count"]), "a non-negative whole number"),
            "ideal": (((ideal == float("inf")) | torch.isfinite(ideal)).all(), "finite or +inf (no finite loss seen)"),
            "since_outer": (
                self.outer_every is None or state["since_outer"] < self.outer_every,
                f"below outer_every={self.outer_every}",
            ),
        }
