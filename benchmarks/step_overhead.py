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
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _models import BATCH, build
from _timing import interleave, ratio_row

import torch_moo

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
    steps = {"Adam": _step(net, torch.optim.Adam(net.parameters(), lr=1e-3), x, labels)}
    for name in methods:
        copy_ = copy.deepcopy(net)
        steps[name] = _step(copy_, METHODS[name](copy_.parameters(), k), x, labels)
    return steps


def _step(
    net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, labels: list[torch.Tensor]
) -> Callable[[], None]:
    """One training step: ``sum(losses).backward()`` for Adam, ``opt.backward(losses)`` for a torch_moo method."""
    moo = isinstance(opt, torch_moo.MultiObjectiveOptimizer)

    def step() -> None:
        opt.zero_grad()
        losses = [F.cross_entropy(out, label) for out, label in zip(net(x), labels)]
        if moo:
            opt.backward(torch.stack(losses))
        else:
            sum(losses).backward()
        opt.step()

    return step


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
    ks = [int(k) for k in args.ks.split(",") if k.strip()][: 2 if args.quick else None]  # quick: the first two
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
            times = interleave(make_steps(model, k, args.seed, methods), args.warmup, args.rounds, args.block)
            for name in methods:
                print(
                    f"| {model} | {k} | {name} | {ratio_row(times['Adam'], times[name], args.bootstrap, args.seed)} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
