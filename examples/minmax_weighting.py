"""MinMaxWeighting: a shared network serves an easy and a hard task; learned weights protect the worse one.

Synthetic regression with unequal difficulty: task 1 is a linear function of four inputs,
task 2 a noisy sum of sines of four others, through a 6-unit shared layer that cannot fit both
well. Equal weights (Adam on the mean loss) let the hard task lag; MinMaxWeighting moves
weight to it. Held-out losses are averaged over seeds.

    python examples/minmax_weighting.py            # about 10 s on 2 CPU cores
    python examples/minmax_weighting.py --smoke    # a few steps, for the tests
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from torch_moo import MinMaxWeighting


def make_data(seed: int, size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 8, generator=generator)
    easy = x[:, :4].sum(dim=1)
    hard = torch.sin(2 * x[:, 4:]).sum(dim=1) + 0.3 * torch.randn(size, generator=generator)
    return x, torch.stack([easy, hard], dim=1)


class SharedNet(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Sequential(nn.Linear(8, 6), nn.Tanh())
        self.heads = nn.Linear(6, 2)  # one output per task, each from the shared features

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.heads(self.trunk(x)) - y).square().mean(dim=0)


def train(seed: int, steps: int, weighted: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Held-out per-task losses after training, and the final task weights (MinMaxWeighting)."""
    (x, y), (x_test, y_test) = make_data(0), make_data(1)
    model = SharedNet(seed)
    if weighted:
        opt = MinMaxWeighting(model.parameters(), num_objectives=2, gamma=1.0, ascent_step=0.5, lr=1e-2)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        losses = model.losses(x, y)
        if weighted:
            opt.backward(losses)
        else:
            losses.mean().backward()
        opt.step()
    with torch.no_grad():
        return model.losses(x_test, y_test), opt.task_weights if weighted else None


def compare(steps: int, seeds: int) -> dict[str, torch.Tensor]:
    """Mean held-out losses (easy, hard) over seeds for equal weights and MinMaxWeighting."""
    return {
        name: torch.stack([train(seed, steps, weighted)[0] for seed in range(seeds)]).mean(dim=0)
        for name, weighted in (("equal weights", False), ("MinMaxWeighting", True))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="a few steps, for the tests")
    args = parser.parse_args()
    steps, seeds = (20, 1) if args.smoke else (args.steps, args.seeds)
    results = compare(steps, seeds)
    print(f"held-out MSE, mean of {seeds} seeds, {steps} full-batch steps")
    print(f"{'method':<18}{'easy task':>11}{'hard task':>11}{'worst':>9}")
    for name, losses in results.items():
        print(f"{name:<18}{losses[0]:>11.4f}{losses[1]:>11.4f}{losses.max():>9.4f}")


if __name__ == "__main__":
    main()
