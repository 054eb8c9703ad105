"""The two-task networks the examples and benchmarks train on :class:`~torch_moo.datasets.TwoDigits`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["TwoHeadCNN", "TwoHeadMLP"]


class TwoHeadCNN(nn.Module):
    """A shared convolutional trunk (16x16 -> 8x8 -> 4x4 -> 128 features) and one linear head per digit.

    Sized for :class:`~torch_moo.datasets.TwoDigits`' 1x16x16 canvases; ``forward`` returns the
    left and the right digit's logits. It lives here, beside the data set, so that every example
    and benchmark trains the same network without importing one script from another.

    Example:
        >>> model = TwoHeadCNN()
        >>> [tuple(out.shape) for out in model(torch.zeros(5, 1, 16, 16))]
        [(5, 10), (5, 10)]
    """

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 128),
            nn.ReLU(),
        )
        self.left = nn.Linear(128, 10)
        self.right = nn.Linear(128, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.trunk(x)
        return self.left(z), self.right(z)

    @torch.no_grad()
    def predict(self, images: Tensor, chunk_size: int = 4096) -> tuple[Tensor, Tensor]:
        """Both heads' logits for many images, ``chunk_size`` at a time, without a graph."""
        outputs = [self(chunk) for chunk in images.split(chunk_size)]
        return torch.cat([left for left, _ in outputs]), torch.cat([right for _, right in outputs])


class TwoHeadMLP(nn.Module):
    """A narrow shared layer (256 pixels -> ``width`` ReLU units, so that the tasks compete) and one
    linear head per digit; ``forward`` returns the left and the right digit's logits.

    Example:
        >>> [tuple(out.shape) for out in TwoHeadMLP(width=8)(torch.zeros(3, 1, 16, 16))]
        [(3, 10), (3, 10)]
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(256, width), nn.ReLU())
        self.left = nn.Linear(width, 10)
        self.right = nn.Linear(width, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.trunk(x)
        return self.left(z), self.right(z)
