"""Schedules for the sparsity target and for the fraction of weights a topology update moves."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch_moo._validation import check_count, check_real

__all__ = ["CubicSparsity", "cosine_fraction"]


@dataclass(frozen=True)
class CubicSparsity:
    r"""Gradual magnitude pruning's target (Zhu & Gupta, "To prune, or not to prune", 2017).

    .. math::

        s_t = s_f + (s_i - s_f)\Big(1 - \frac{t - t_0}{t_1 - t_0}\Big)^3
        \quad\text{for } t_0 \le t \le t_1,

    :math:`s_i` before :math:`t_0` and :math:`s_f` after :math:`t_1`: fast pruning while many
    redundant weights remain, slow near the target.

    Args:
        final: the target :math:`s_f` in ``[0, 1)``.
        begin: the step :math:`t_0` where pruning starts.
        end: the step :math:`t_1 > t_0` where the target is reached.
        initial: the sparsity :math:`s_i` before ``begin``.

    Example:
        >>> schedule = CubicSparsity(final=0.9, begin=0, end=100)
        >>> [round(schedule(t), 4) for t in (0, 50, 100, 200)]
        [0.0, 0.7875, 0.9, 0.9]
    """

    final: float
    begin: int
    end: int
    initial: float = 0.0

    def __post_init__(self) -> None:
        for name in ("final", "initial"):
            value = check_real(name, getattr(self, name), minimum=0.0)
            if value >= 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        check_count("begin", self.begin, minimum=0)
        check_count("end", self.end, minimum=self.begin + 1)

    def __call__(self, step: int) -> float:
        progress = min(max((step - self.begin) / (self.end - self.begin), 0.0), 1.0)
        return self.final + (self.initial - self.final) * (1.0 - progress) ** 3


def cosine_fraction(step: int, fraction: float, end: int) -> float:
    r"""The drop fraction :math:`\frac{\alpha}{2}\big(1 + \cos(\pi t / T)\big)` of RigL (Evci et al., 2020).

    Example:
        >>> cosine_fraction(0, 0.3, 1000), cosine_fraction(500, 0.3, 1000)
        (0.3, 0.15)
    """
    return fraction / 2.0 * (1.0 + math.cos(math.pi * min(step, end) / end))
