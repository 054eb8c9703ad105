"""Inference time of ``torch_moo.sparsity.to_sparse`` exports against the dense model on CPU.

Two models, every ``nn.Linear`` weight pruned at random to an exact sparsity (0.9, 0.95, 0.98
by default):

* **linear**: one ``nn.Linear(1024, 1024)``; exported with CSR and with COO weights;
* **mlp**: 784-512-512-10 (ReLU), every layer pruned; exported with CSR weights.

Each is timed at batch 256 and at batch 1, forward only, under ``torch.inference_mode()``.
Each export is timed against the dense model as an A/B pair (one pair per layout, since a slow
COO call also slows the call after it): after a warm-up the two run in alternating order
(A B, B A, ...), one forward call each, so that drift and load from other processes hit both
alike; every call is timed on its own with ``time.perf_counter``. Reported: median ms per
forward of the dense model and of the export, and their ratio (sparse / dense; below 1 the
export is faster). Inputs are
``torch.randn`` (seed 0); every export's output is checked against the dense model's first.

Usage::

    python benchmarks/sparse_inference.py                  # full run
    python benchmarks/sparse_inference.py --quick          # smoke check
    python benchmarks/sparse_inference.py --models linear --sparsities 0.9 --threads 1

Not a test: pytest does not collect it (no ``test_`` names, outside ``tests/``).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics

import torch
from _timing import interleave
from torch import nn

from torch_moo.sparsity.export import to_sparse

LAYOUT_NAMES = {"csr": torch.sparse_csr, "coo": torch.sparse_coo}


def prune_(model: nn.Module, sparsity: float, generator: torch.Generator) -> None:
    """Zero exactly ``round(sparsity * numel)`` entries of every linear weight, at random."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                flat = module.weight.view(-1)
                flat[torch.randperm(flat.numel(), generator=generator)[: round(sparsity * flat.numel())]] = 0.0


def build(model: str, sparsity: float, seed: int) -> tuple[nn.Module, int, list[str]]:
    """The pruned dense model (eval mode), its input width and the layouts to export it with."""
    torch.manual_seed(seed)
    if model == "linear":
        net, width, layouts = nn.Linear(1024, 1024), 1024, ["csr", "coo"]
    elif model == "mlp":
        net = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
        width, layouts = 784, ["csr"]
    else:
        raise ValueError(f"unknown model {model!r} (choose linear or mlp)")
    prune_(net, sparsity, torch.Generator().manual_seed(seed))
    return net.eval(), width, layouts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="linear,mlp", help="comma-separated: linear, mlp")
    parser.add_argument("--sparsities", default="0.9,0.95,0.98", help="comma-separated fractions of zero weights")
    parser.add_argument("--batches", default="256,1", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up calls per variant")
    parser.add_argument("--rounds", type=int, default=1000, help="timed calls per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="few repetitions, for a smoke check")
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.rounds = 2, 5

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    sparsities = [float(s) for s in args.sparsities.split(",") if s.strip()]
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, warm-up {args.warmup}, "
        f"{args.rounds} interleaved timed calls per variant, inference_mode, medians, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print()
    print("| model | sparsity | batch | layout | dense ms | sparse ms | sparse/dense |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for model in models:
        for sparsity in sparsities:
            dense, width, layouts = build(model, sparsity, args.seed)
            exports = {name: to_sparse(dense, layout=LAYOUT_NAMES[name], min_sparsity=0.0) for name in layouts}
            for batch in batches:
                x = torch.randn(batch, width, generator=torch.Generator().manual_seed(args.seed))
                with torch.inference_mode():
                    expected = dense(x)
                    for name, export in exports.items():
                        torch.testing.assert_close(export(x), expected, rtol=1e-4, atol=1e-4, msg=f"{model} {name}")
                for name, export in exports.items():
                    # One A/B pair per layout: a slow COO call between them would also slow the
                    # next dense and CSR calls (caches, thread wake-up), so COO is timed apart.
                    with torch.inference_mode():
                        calls = {"dense": functools.partial(dense, x), name: functools.partial(export, x)}
                        times = interleave(calls, args.warmup, args.rounds)
                    dense_ms, sparse_ms = (1e3 * statistics.median(times[key]) for key in ("dense", name))
                    print(
                        f"| {model} | {sparsity:g} | {batch} | {name} | {dense_ms:.3f} | {sparse_ms:.3f} | "
                        f"{sparse_ms / dense_ms:.3f} |",
                        flush=True,
                    )
    # Other processes on the cores distort the timings (all variants, not alike): check this.
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} (1 min), nproc {os.cpu_count()}")


if __name__ == "__main__":
    main()
