"""SmoothTchebycheff: the gradient weights of the smooth Tchebycheff scalarization."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from torch_moo._validation import check_choice, check_count, check_real, check_vector
from torch_moo.weightings._base import LossWeighting, Rules

__all__ = ["SmoothTchebycheff"]


class SmoothTchebycheff(LossWeighting):
    r"""Smooth Tchebycheff scalarization: a log-sum-exp of the weighted distances to a reference point.

    Lin, Zhang, Yang, Liu, Wang & Zhang, *Smooth Tchebycheff Scalarization for Multi-Objective
    Optimization*, ICML 2024. For the preference :math:`p` (normalised to sum to one),
    smoothing :math:`\mu > 0` and reference point :math:`z`,

    .. math::

        g_\mu(f) = \mu \log \sum_i \exp\!\Big(\frac{p_i (f_i - z_i)}{\mu}\Big), \qquad
        w_i = \frac{\partial g_\mu}{\partial f_i}
            = p_i \operatorname{softmax}\!\Big(\frac{p \odot (f - z)}{\mu}\Big)_i .

    :math:`\max_i p_i (f_i - z_i) \le g_\mu \le \max_i p_i (f_i - z_i) + \mu \log k`. As
    :math:`\mu \to 0` the weights tend to :math:`p_j e_j` for the unique maximiser :math:`j` of
    :math:`p_i (f_i - z_i)` (the Tchebycheff subgradient; a tie shares the softmax equally);
    as :math:`\mu \to \infty` they tend to :math:`p / k` (linear scalarization), with
    :math:`|w_i - p_i / k| \le p_i \,\Delta / (k \mu)` to first order, :math:`\Delta` the spread of
    :math:`p \odot (f - z)`. The weights sum to between :math:`\min_i p_i` and :math:`\max_i p_i`.
    The softmax is taken in float64 of :math:`(a - \max a) / \mu`, :math:`a = p \odot (f - z)`,
    so no entry overflows at any loss scale or :math:`\mu`.

    Args:
        num_objectives: number of objectives :math:`k`.
        preference: :math:`p`, non-negative, not all zero (``None``: uniform).
        mu: :math:`\mu > 0`.
        reference: :math:`z`: ``None`` (zeros), a vector, or ``"ideal"``, the running minimum
            of each loss passed to :meth:`observe` (as ChebyshevALM's; the call uses
            :math:`\min(z, f)`).

    Example:
        >>> rule = SmoothTchebycheff(2, mu=0.1)
        >>> rule(torch.tensor([1.0, 2.0]))  # mostly the worse objective, times p_2 = 0.5
        tensor([0.0033, 0.4967])
    """

    preference: Tensor
    fixed_reference: Tensor
    ideal: Tensor

    def __init__(
        self,
        num_objectives: int,
        *,
        preference: Sequence[float] | Tensor | None = None,
        mu: float = 1.0,
        reference: Sequence[float] | Tensor | str | None = None,
    ) -> None:
        super().__init__(None)
        self.num_objectives = check_count("num_objectives", num_objectives)
        if preference is None:
            preference = torch.ones(num_objectives)
        preference = check_vector("preference", preference, num_objectives)
        if (preference < 0).any() or preference.sum() <= 0:
            raise ValueError(f"preference must be non-negative and not all zero, got {preference.tolist()}")
        self.mu = check_real("mu", mu, minimum=0.0, strict=True)
        if isinstance(reference, str):
            check_choice("reference", reference, ["ideal"])
        elif reference is not None:
            reference = check_vector("reference", reference, num_objectives)
        self.tracks_ideal = reference == "ideal"
        fixed = reference if isinstance(reference, Tensor) else torch.zeros(num_objectives)
        self.register_buffer("preference", (preference / preference.sum()).double(), persistent=False)
        self.register_buffer("fixed_reference", fixed.double(), persistent=False)
        if self.tracks_ideal:
            self.register_buffer("ideal", torch.full((num_objectives,), float("inf")))

    def reference_point(self, losses: Tensor) -> Tensor:
        """:math:`z` for these losses: fixed, or :math:`\\min(\\text{ideal}, f)`."""
        return torch.minimum(self.ideal, losses).double() if self.tracks_ideal else self.fixed_reference

    def forward(self, losses: Tensor) -> Tensor:
        scaled = self.preference * (losses.double() - self.reference_point(losses))
        return (self.preference * torch.softmax((scaled - scaled.max()) / self.mu, dim=-1)).to(losses.dtype)

    def record(self, losses: Tensor, finite: Tensor | None) -> None:
        if self.tracks_ideal:
            seen = losses if finite is None else torch.where(finite, losses, self.ideal)
            torch.minimum(self.ideal, seen.to(self.ideal.dtype), out=self.ideal)

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "preference": self.preference.tolist(),
            "mu": self.mu,
            "reference": "ideal" if self.tracks_ideal else self.fixed_reference.tolist(),
        }

    def state_rules(self, state: dict[str, Any]) -> Rules:
        rules = super().state_rules(state)
        if self.tracks_ideal:
            ideal = state["ideal"]
            rules["ideal"] = (((ideal == float("inf")) | torch.isfinite(ideal)).all(), "finite or +inf (no loss seen)")
        return rules
