"""The benchmark models: a shared MLP or small-CNN trunk with ``k`` linear classification heads."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["BATCH", "NUM_CLASSES", "MultiHead", "build"]

NUM_CLASSES = 10
BATCH = 256


class MultiHead(nn.Module):
    """A shared trunk followed by ``k`` linear heads; returns the list of head outputs."""

    def __init__(self, trunk: nn.Module, width: int, k: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleList(nn.Linear(width, NUM_CLASSES) for _ in range(k))

    def forward(self, x: Tensor) -> list[Tensor]:
        features = self.trunk(x)
        return [head(features) for head in self.heads]


def build(model: str, k: int, seed: int) -> tuple[MultiHead, Tensor, Tensor]:
    """Model, a synthetic batch of ``BATCH`` inputs and labels (one column per head), all from ``seed``.

    * ``mlp``: 784-512-512 (ReLU), heads 512->10;
    * ``cnn``: conv 1->16 3x3, ReLU, maxpool, conv 16->32 3x3, ReLU, maxpool, linear 1568->128,
      ReLU, heads 128->10; input 1x28x28.
    """
    torch.manual_seed(seed)
    if model == "mlp":
        trunk = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU())
        net, x = MultiHead(trunk, 512, k), torch.randn(BATCH, 784)
    elif model == "cnn":
        trunk = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 16x14x14
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 32x7x7
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 128),
            nn.ReLU(),
        )
        net, x = MultiHead(trunk, 128, k), torch.randn(BATCH, 1, 28, 28)
    else:
        raise ValueError(f"unknown model {model!r} (choose mlp or cnn)")
    return net, x, torch.randint(0, NUM_CLASSES, (BATCH, k))
