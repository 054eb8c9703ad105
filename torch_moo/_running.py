"""Mean of per-step vectors between periodic updates of a method's state."""

from __future__ import annotations

import torch
from torch import Tensor


class RunningMean:
    """Sum and count of vectors since the last :meth:`reset`, kept on the device in float64.

    float32 would lose what matters: a sum of ~150 values near 1/3 has an ulp of ~4e-6, coarser
    than the per-step changes (~1e-8) that ChebyshevALM's outer update adds up, and the count
    stops at 2**24. ``finite`` (a boolean scalar tensor) masks a step out without a host
    synchronisation. :meth:`mean` is float64.
    """

    def __init__(self, size: int, device: torch.device) -> None:
        self.total = torch.zeros(size, dtype=torch.float64, device=device)
        self.count = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, value: Tensor, finite: Tensor | None = None) -> None:
        if finite is None:
            self.total.add_(value)
            self.count.add_(1)
        else:
            self.total.add_(torch.where(finite, value, 0.0))
            self.count.add_(finite)

    def mean(self) -> Tensor:
        """The mean, or zeros when nothing was added."""
        return self.total / self.count.clamp_min(1)

    def reset(self) -> None:
        self.total.zero_()
        self.count.zero_()
