"""Per-step overhead of ``torch_moo.ChebyshevALM`` over plain ``torch.optim.Adam``.

One full training step (zero_grad + forward + k losses + backward + step) of

* plain Adam on the summed loss: ``sum(losses).backward(); opt.step()``, and
* ChebyshevALM (base=Adam): ``opt.backward(torch.stack(losses)); opt.step()``,

on identical models (same architecture, same initial weights, one copy each), the same
synthetic batch and the same k heads. After a warm-up, the two methods run in alternating
blocks (A B, B A, A B, ...; one step per block by default) so that drift (thermal, allocator,
other load on the machine) hits both alike; every step is timed on its own with ``time.perf_counter``. Reported: median ms per step of
each, the ratio of the medians, a bootstrap 95% interval of that ratio and the ratio of the
minima as a sanity figure.

Usage::

    python benchmarks/step_overhead.py                 # full run
    python benchmarks/step_overhead.py --quick         # smoke check
    python benchmarks/step_overhead.py --models mlp --ks 2,16 --threads 2

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


def make_steps(model: str, k: int, seed: int) -> dict[str, Callable[[], None]]:
    net, x, y = build(model, k, seed)
    net_adam, net_cheb = net, copy.deepcopy(net)
    adam = torch.optim.Adam(net_adam.parameters(), lr=1e-3)
    cheb = torch_moo.ChebyshevALM(
        net_cheb.parameters(), num_objectives=k, preference=[1.0 / k] * k,
        outer_every=100, base=torch.optim.Adam, lr=1e-3,
    )
    labels = [y[:, i] for i in range(k)]

    def adam_step() -> None:
        adam.zero_grad()
        outs = net_adam(x)
        losses = [F.cross_entropy(out, label) for out, label in zip(outs, labels)]
        sum(losses).backward()
        adam.step()

    def cheb_step() -> None:
        cheb.zero_grad()
        outs = net_cheb(x)
        losses = [F.cross_entropy(out, label) for out, label in zip(outs, labels)]
        cheb.backward(torch.stack(losses))
        cheb.step()

    return {"adam": adam_step, "cheb": cheb_step}


def time_steps(step: Callable[[], None], n: int, out: list[float]) -> None:
    for _ in range(n):
        start = time.perf_counter()
        step()
        out.append(time.perf_counter() - start)


def measure(steps: dict[str, Callable[[], None]], warmup: int, rounds: int, block: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        steps["adam"]()
        steps["cheb"]()
    times: dict[str, list[float]] = {"adam": [], "cheb": []}
    gc.collect()
    for r in range(rounds):
        order = ("adam", "cheb") if r % 2 == 0 else ("cheb", "adam")
        for name in order:
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
    n = args.rounds * args.block
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {BATCH}, "
        f"warm-up {args.warmup}, {args.rounds} alternating blocks x {args.block} steps = {n} timed steps per method"
    )
    print()
    print("| model | k | Adam ms | ChebyshevALM ms | ratio | 95% CI | min ratio |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for model in models:
        for k in ks:
            times = measure(make_steps(model, k, args.seed), args.warmup, args.rounds, args.block)
            a, b = times["adam"], times["cheb"]
            ma, mb = statistics.median(a), statistics.median(b)
            ci = "-"
            if args.bootstrap:
                lo, hi = bootstrap_ratio(a, b, args.bootstrap, args.seed)
                ci = f"{lo:.3f}-{hi:.3f}"
            print(
                f"| {model} | {k} | {1e3 * ma:.2f} | {1e3 * mb:.2f} | {mb / ma:.3f} | {ci} | {min(b) / min(a):.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
