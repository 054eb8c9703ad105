"""Quickstart: a sparse two-task network with ChebyshevALM, next to a dense Adam baseline.

Data: the 8x8 handwritten digits that ship inside scikit-learn (no download). Tasks: the digit
and its parity. Objectives: an l1 sparsity term and the two cross-entropies, with a preference
that puts most weight on the tasks. After training, weights below 1e-3 in magnitude are pruned
and both tasks are evaluated on a held-out split.

    python examples/quickstart.py            # about 10 s on 2 CPU cores
    python examples/quickstart.py --smoke    # a few steps, for the tests
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.nn.functional import cross_entropy

import torch_moo as tm

try:
    from tqdm import tqdm
except ImportError:  # the progress bar is optional
    def tqdm(iterable, **_):
        return iterable


class TwoTaskNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU())
        self.digit = nn.Linear(256, 10)
        self.parity = nn.Linear(256, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.trunk(x)
        return self.digit(z), self.parity(z)


def load_digits(seed: int) -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits as sklearn_digits

    images, digits = sklearn_digits(return_X_y=True)
    x = torch.tensor(images, dtype=torch.float32) / 16
    y = torch.tensor(digits)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    split = int(0.8 * len(y))
    train, test = order[:split], order[split:]
    return x[train], y[train], x[test], y[test]


def train(model: TwoTaskNet, opt: torch.optim.Optimizer, data, epochs: int, sparse: bool) -> None:
    x, y = data
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    generator = torch.Generator().manual_seed(0)
    for _ in tqdm(range(epochs), desc="ChebyshevALM" if sparse else "dense Adam", leave=False):
        for batch in torch.randperm(len(y), generator=generator).split(64):
            opt.zero_grad()
            digit_logits, parity_logits = model(x[batch])
            tasks = [cross_entropy(digit_logits, y[batch]), cross_entropy(parity_logits, y[batch] % 2)]
            if sparse:
                opt.backward(torch.stack([tm.objectives.l1(model, reduction="mean"), *tasks]))
            else:
                sum(tasks).backward()
            opt.step()
        scheduler.step()
        if sparse:
            opt.outer_step()  # one multiplier update per epoch


@torch.no_grad()
def evaluate(model: TwoTaskNet, x: torch.Tensor, y: torch.Tensor, threshold: float) -> tuple[float, float, float]:
    weights = tm.objectives.sparsifiable_parameters(model)
    for w in weights:
        w.masked_fill_(w.abs() < threshold, 0)
    sparsity = sum((w == 0).sum().item() for w in weights) / sum(w.numel() for w in weights)
    digit_logits, parity_logits = model(x)
    digit = (digit_logits.argmax(1) == y).float().mean().item()
    parity = (parity_logits.argmax(1) == y % 2).float().mean().item()
    return digit, parity, sparsity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threshold", type=float, default=1e-3, help="prune |w| below this after training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="two epochs, for the tests")
    args = parser.parse_args()
    epochs = 2 if args.smoke else args.epochs
    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = load_digits(args.seed)

    rows = []
    for name, sparse in (("dense Adam", False), ("ChebyshevALM + l1", True)):
        torch.manual_seed(args.seed)
        model = TwoTaskNet()
        if sparse:
            opt = tm.ChebyshevALM(model.parameters(), num_objectives=3, preference=[0.2, 0.6, 0.2],
                                  penalty=10.0, lr=3e-3)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        train(model, opt, (x_train, y_train), epochs, sparse)
        rows.append((name, *evaluate(model, x_test, y_test, args.threshold)))

    print(f"\nheld-out accuracy after pruning |w| < {args.threshold:g} ({epochs} epochs)")
    print(f"{'method':<20}{'digit':>8}{'parity':>8}{'sparsity':>10}")
    for name, digit, parity, sparsity in rows:
        print(f"{name:<20}{digit:>8.3f}{parity:>8.3f}{sparsity:>10.1%}")


if __name__ == "__main__":
    main()
