"""Mean of per-step vectors between periodic updates of a method's state."""

from __future__ import annotations

import torch
from torch import Tensor


class RunningMean:
    """Sum and count of vectors since the last :meth:`reset`, kept on the device in float32.

    ``finite`` (a boolean scalar tensor) masks a step out without a host synchronisation.
    """

    def __init__(self, size: int, device: torch.device) -> None:
        self.total = torch.zeros(size, device=device)
        self.count = torch.zeros((), device=device)

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
