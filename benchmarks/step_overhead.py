"""Per-step overhead of the loss-space torch_moo optimizers over plain ``torch.optim.Adam``.

One full training step (zero_grad + forward + k losses + backward + step) of

* plain Adam on the summed loss: ``sum(losses).backward(); opt.step()``, and
* each method in ``--methods`` (base Adam): ``opt.backward(torch.stack(losses)); opt.step()``,

on identical models (same architecture, same initial weights, one copy each), the same
synthetic batch and the same k heads. After a warm-up, the methods run in alternating order
(A B C, C B A, ...; one step per block by default) so that drift (thermal, allocator, other
load on the machine) hits all alike; every step is timed on its own with
``time.perf_counter``. Reported per method: median ms per step next to Adam's, the ratio of
the medians, a bootstrap 95% interval of that ratio and the ratio of the minima as a sanity
figure.

Usage::

    python benchmarks/step_overhead.py                 # full run
    python benchmarks/step_overhead.py --quick         # smoke check
    python benchmarks/step_overhead.py --models mlp --ks 2,16 --methods MinMaxWeighting

Not a test: pytest does not collect it (no ``test_`` names, outside ``tests/``).
"""

from __future__ import annotations

import argparse
import copy
import gc
import random
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import torch_moo

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


def build(model: str, k: int, seed: int) -> tuple[nn.Module, Tensor, Tensor]:
    """Model, inputs and labels (one label column per head), all from ``seed``."""
    torch.manual_seed(seed)
    if model == "mlp":
        trunk = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU())
        net, x = MultiHead(trunk, 512, k), torch.randn(BATCH, 784)
    elif model == "cnn":
        trunk = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16x14x14
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 32x7x7
            nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(),
        )
        net, x = MultiHead(trunk, 128, k), torch.randn(BATCH, 1, 28, 28)
    else:
        raise ValueError(f"unknown model {model!r} (choose mlp or cnn)")
    y = torch.randint(0, NUM_CLASSES, (BATCH, k))
    return net, x, y


METHODS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "ChebyshevALM": lambda params, k: torch_moo.ChebyshevALM(
        params, num_objectives=k, preference=[1.0 / k] * k, outer_every=100, lr=1e-3
    ),
    "MinMaxWeighting": lambda params, k: torch_moo.MinMaxWeighting(params, num_objectives=k, lr=1e-3),
}


def make_steps(model: str, k: int, seed: int, methods: list[str]) -> dict[str, Callable[[], None]]:
    """One step function for Adam on the summed loss and one per torch_moo method, each on its own model copy."""
    net, x, y = build(model, k, seed)
    labels = [y[:, i] for i in range(k)]

    def adam_step(net=net, opt=torch.optim.Adam(net.parameters(), lr=1e-3)) -> None:
        opt.zero_grad()
        losses = [F.cross_entropy(out, label) for out, label in zip(net(x), labels)]
        sum(losses).backward()
        opt.step()

    steps = {"Adam": adam_step}
    for name in methods:
        copy_ = copy.deepcopy(net)

        def method_step(net=copy_, opt=METHODS[name](copy_.parameters(), k)) -> None:
            opt.zero_grad()
            losses = [F.cross_entropy(out, label) for out, label in zip(net(x), labels)]
            opt.backward(torch.stack(losses))
            opt.step()

        steps[name] = method_step
    return steps


def time_steps(step: Callable[[], None], n: int, out: list[float]) -> None:
    for _ in range(n):
        start = time.perf_counter()
        step()
        out.append(time.perf_counter() - start)


def measure(steps: dict[str, Callable[[], None]], warmup: int, rounds: int, block: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    gc.collect()
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            time_steps(steps[name], block, times[name])
    return times


def bootstrap_ratio(a: list[float], b: list[float], draws: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of median(b) / median(a), resampling steps with replacement."""
    rng = random.Random(seed)
    ratios = sorted(
        statistics.median(rng.choices(b, k=len(b))) / statistics.median(rng.choices(a, k=len(a)))
        for _ in range(draws)
    )
    return ratios[int(0.025 * draws)], ratios[int(0.975 * draws) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn")
    parser.add_argument("--ks", default="2,4,8,16", help="comma-separated numbers of objectives/heads")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated: {', '.join(METHODS)}")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up steps per method")
    parser.add_argument("--rounds", type=int, default=400, help="alternating blocks per method")
    parser.add_argument("--block", type=int, default=1, help="consecutive steps per block")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap draws (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="few repetitions, for a smoke check")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.rounds, args.block, args.bootstrap = 3, 10, 1, 200

    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {sorted(METHODS)}")
    n = args.rounds * args.block
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {BATCH}, "
        f"warm-up {args.warmup}, {args.rounds} alternating blocks x {args.block} steps = {n} timed steps per method"
    )
    print()
    print("| model | k | method | Adam ms | method ms | ratio | 95% CI | min ratio |")
    print("|---|---:|---|---:|---:|---:|---|---:|")
    for model in models:
        for k in ks:
            times = measure(make_steps(model, k, args.seed, methods), args.warmup, args.rounds, args.block)
            a = times["Adam"]
            for name in methods:
                b = times[name]
                ma, mb = statistics.median(a), statistics.median(b)
                ci = "-"
                if args.bootstrap:
                    lo, hi = bootstrap_ratio(a, b, args.bootstrap, args.seed)
                    ci = f"{lo:.3f}-{hi:.3f}"
                print(
                    f"| {model} | {k} | {name} | {1e3 * ma:.2f} | {1e3 * mb:.2f} | {mb / ma:.3f} | {ci} | "
                    f"{min(b) / min(a):.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
