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


# The running sums between outer updates are float64 (torch_moo/_running.py); the rest is float32.
FLOAT64_STATE = {"estimate_sum", "estimate_count", "loss_sum", "loss_count"}


def state_dtype(key: str) -> torch.dtype:
    """The dtype of the method-state entry ``key``."""
    return torch.float64 if key in FLOAT64_STATE else torch.float32


def train(model: TwoHeads, opt: torch.optim.Optimizer, steps: int, start: int = 0) -> None:
    """``steps`` protocol steps (``zero_grad``, ``backward`` of :func:`task_losses`, ``step``) from batch ``start``."""
    for step in range(start, start + steps):
        opt.zero_grad()
        opt.backward(task_losses(model, step))
        opt.step()
