"""Shared by the loss-space rules: the mean losses of a period, kept in buffers, and one Adam step on a buffer."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from torch_moo._validation import check_count, check_real, whole_numbers
from torch_moo.weightings._base import LossWeighting, Rules

__all__ = ["AdamRule", "PeriodMean", "adam_step", "masked_add"]


class PeriodMean(LossWeighting):
    """A rule whose :meth:`apply_update` reads the mean loss values since the last update (:meth:`mean`).

    Their sum and count are the float64 buffers ``loss_sum`` and ``loss_count``: float32 would lose
    what matters (a sum of ~150 values near 1/3 has an ulp of ~4e-6, and the count stops at
    2**24). A step whose ``finite`` flag is false is masked out without a host synchronisation.
    """

    loss_sum: Tensor
    loss_count: Tensor

    def __init__(self, num_objectives: int, every: int | None) -> None:
        self.num_objectives = check_count("num_objectives", num_objectives)
        super().__init__(None if every is None else check_count(self.period, every))
        self.register_buffer("loss_sum", torch.zeros(num_objectives, dtype=torch.float64))
        self.register_buffer("loss_count", torch.zeros((), dtype=torch.float64))

    def record(self, losses: Tensor, finite: Tensor | None) -> None:
        masked_add(self.loss_sum, self.loss_count, losses.detach(), finite)

    def mean(self) -> Tensor:
        """The mean loss values since the last update (float64), or zeros when none was recorded."""
        return self.loss_sum / self.loss_count.clamp_min(1)

    def update(self) -> None:
        super().update()
        torch._foreach_zero_([self.loss_sum, self.loss_count])  # one launch for both (same dtype and device)

    def state_rules(self, state: dict[str, Any]) -> Rules:
        return {
            **super().state_rules(state),
            "loss_count": (whole_numbers(state["loss_count"]), "a non-negative whole number"),
        }


def masked_add(total: Tensor, count: Tensor, value: Tensor, finite: Tensor | None) -> None:
    """Add ``value`` to ``total`` and one to ``count`` in place, unless ``finite`` (a boolean tensor) is false."""
    if finite is None:
        total.add_(value)
        count.add_(1)
    else:
        total.add_(torch.where(finite, value, finite))  # finite is False (0) where it is not taken
        count.add_(finite)


def adam_step(
    param: Tensor,
    grad: Tensor,
    moments: Tensor,
    steps: Tensor,
    take: Tensor,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float = 0.0,
) -> None:
    """One step of :class:`torch.optim.Adam` (coupled ``weight_decay``, no AMSGrad) on ``param`` in place.

    ``moments`` (shape ``(2, *param.shape)``, float64: a gradient of :math:`10^{30}` would overflow
    the float32 second moment) and ``steps`` (0-d, float64) are Adam's state; ``take`` (a boolean
    tensor) says whether to take the step, read without a host synchronisation. The arithmetic is
    float64 and ``param`` is rounded to its dtype.
    """
    beta1, beta2 = betas
    grad = grad.double() + weight_decay * param.double()
    count = steps + 1
    exp_avg = torch.lerp(moments[0], grad, 1 - beta1)
    exp_avg_sq = moments[1] * beta2 + (1 - beta2) * grad * grad
    denom = exp_avg_sq.sqrt() / (1 - beta2**count).sqrt() + eps
    stepped = param.double() - lr / (1 - beta1**count) * exp_avg / denom
    param.copy_(torch.where(take, stepped, param.double()))
    moments.copy_(torch.where(take, torch.stack((exp_avg, exp_avg_sq)), moments))
    steps.copy_(torch.where(take, count, steps))


class AdamRule(PeriodMean):
    """A :class:`PeriodMean` rule whose parameter (a float32 buffer) takes an Adam step at each update.

    Registers ``moments`` and ``adam_steps`` (float64) for the parameter of ``size`` entries; a
    subclass calls :meth:`adam` with the parameter and its gradient.
    """

    moments: Tensor
    adam_steps: Tensor

    def __init__(
        self, num_objectives: int, every: int | None, *, lr: float, betas: tuple[float, float], eps: float
    ) -> None:
        super().__init__(num_objectives, every)
        self.lr = check_real("lr", lr, minimum=0.0, strict=True)
        if not isinstance(betas, tuple) or len(betas) != 2:
            raise TypeError(f"betas must be a tuple of two floats, got {betas!r}")
        for index, beta in enumerate(betas):
            if check_real(f"betas[{index}]", beta, minimum=0.0) >= 1:
                raise ValueError(f"betas[{index}] must be in [0, 1), got {beta}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = check_real("eps", eps, minimum=0.0, strict=True)
        self.register_buffer("moments", torch.zeros(2, num_objectives, dtype=torch.float64))
        self.register_buffer("adam_steps", torch.zeros((), dtype=torch.float64))

    def adam(self, param: Tensor, grad: Tensor, take: Tensor, weight_decay: float = 0.0) -> None:
        adam_step(
            param,
            grad,
            self.moments,
            self.adam_steps,
            take,
            lr=self.lr,
            betas=self.betas,
            eps=self.eps,
            weight_decay=weight_decay,
        )

    def config(self) -> dict[str, Any]:
        return {**super().config(), "lr": self.lr, "betas": self.betas, "eps": self.eps}

    def state_rules(self, state: dict[str, Any]) -> Rules:
        return {
            **super().state_rules(state),
            "moments": (
                torch.isfinite(state["moments"]).all() & (state["moments"][1] >= 0).all(),
                "finite, with a non-negative second moment",
            ),
            "adam_steps": (whole_numbers(state["adam_steps"]), "a whole number"),
        }
