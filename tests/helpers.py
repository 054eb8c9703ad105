"""Small models and loops shared by the tests."""

from __future__ import annotations

import torch
from torch import nn


class TwoHeads(nn.Module):
    """A trunk with two regression heads, so that objectives share parameters and own some."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Sequential(nn.Linear(6, 16), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(16, 1) for _ in range(2))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        z = self.trunk(x)
        return [head(z).squeeze(-1) for head in self.heads]


def batch(step: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(size, 6, generator=generator)
    return x, x[:, 0] - x[:, 1], torch.sin(x[:, 2])


def task_losses(model: TwoHeads, step: int) -> torch.Tensor:
    x, y1, y2 = batch(step)
    out1, out2 = model(x)
    return torch.stack([(out1 - y1).square().mean(), (out2 - y2).square().mean()])


def flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])
