"""ChebyshevALM: the augmented weighted Chebyshev problem solved by an augmented Lagrangian."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor
from torch.optim import Optimizer

from torch_moo._validation import Nonfinite
from torch_moo.base import WeightedLossDescent, rule_setting
from torch_moo.functional.chebyshev import MultiplierRule
from torch_moo.weightings.chebyshev import ChebyshevLagrangian

__all__ = ["ChebyshevALM"]


class ChebyshevALM(WeightedLossDescent):
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

    It is a :class:`~torch_moo.WeightedLossDescent` whose rule,
    :class:`~torch_moo.weightings.ChebyshevLagrangian`, holds the multipliers, the penalty and the
    running estimates (:attr:`weighting`).

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

    weighting: ChebyshevLagrangian

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
        rule = ChebyshevLagrangian(
            num_objectives,
            preference=preference,
            reference=reference,
            augmentation=augmentation,
            penalty=penalty,
            penalty_growth=penalty_growth,
            max_penalty=max_penalty,
            outer_every=outer_every,
            multiplier_update=multiplier_update,
        )
        super().__init__(
            params, num_objectives=num_objectives, weighting=rule, nonfinite=nonfinite, base=base, **base_kwargs
        )

    preference = rule_setting("preference", "The normalised preference :math:`k`.")
    augmentation = rule_setting("augmentation", r"The augmentation :math:`\varepsilon`.")
    penalty_growth = rule_setting("penalty_growth", r"The penalty growth :math:`\rho`.")
    max_penalty = rule_setting("max_penalty", r"The cap on :math:`\mu`.")
    outer_every = rule_setting("every", "Steps between automatic outer updates (``None``: only :meth:`outer_step`).")
    multiplier_update = rule_setting("multiplier_update", '``"phr"`` or ``"reference"``.')
    tracks_ideal = rule_setting("tracks_ideal", "Whether the reference point is the running ideal point.")

    @property
    def multipliers(self) -> Tensor:
        r"""The Lagrange multipliers :math:`\lambda` (a copy)."""
        return self.weighting.multipliers.clone()

    @property
    def penalty(self) -> Tensor:
        r"""The current penalty :math:`\mu` (a copy)."""
        return self.weighting.penalty.clone()

    def reference_point(self) -> Tensor:
        """The reference point :math:`a` (a copy): fixed, or the running ideal point."""
        return self.weighting.reference_point()

    def outer_step(self) -> None:
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
        self.weighting.update()

    def _settings(self) -> dict[str, Any]:
        return self.weighting.config()
