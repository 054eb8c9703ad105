"""Step time and peak memory of ``torch_moo.JacobianDescent`` with MGDA and UPGrad next to plain Adam and the peers.

One full training step (zero_grad + forward + k cross-entropy losses + the method's backward +
step, base Adam lr 1e-3) on benchmarks/_models.py's MLP (784-512-512, k heads) and small CNN,
batch 256, for k in ``--ks`` and each rule ``W`` of ``--weightings`` (MGDA, UPGrad):

* ``Adam (sum)``: ``sum(losses).backward()``, one backward pass;
* ``torch_moo W (full)``: ``JacobianDescent(..., weighting=W()).backward(losses)``, the full
  mode: one ``autograd.grad`` pass per objective, the rule on the trunk's Gram matrix, each head
  its own gradient;
* ``torch_moo W (full, trunk)``: the same full mode built with ``trunk=model.trunk``, which takes
  the Gramian path (:mod:`torch_moo.gramian`: the Gram matrix from the trunk's activations and
  output gradients, no ``k x P`` Jacobian) where the layers' outputs are fewer entries than the
  trunk's parameters (the MLP at batch 256), the Jacobian path otherwise (the CNN);
* ``torch_moo W (features)``: ``opt.backward(losses, features=z)``, the representation mode
  (MGDA-UB's shortcut: the Gram matrix of the gradients at the trunk's output ``z``);
* the peers of benchmarks/_mgda_peers.py (torchjd's autogram engine and ``mtl_backward`` with
  MGDA and UPGrad, LibMTL's MGDA in both its modes), each when installed (``pip install -e .[bench]``).

**time**: after ``--warmup`` steps each, ``--rounds`` steps of every method in alternating order
(benchmarks/_timing.py); medians, ratio to Adam, bootstrap 95% interval, ratio of minima; then
per (model, k, rule) torch_moo's faster mode against the fastest peer: the ratio of medians
(peer / torch_moo, above 1: torch_moo is faster) with its bootstrap interval.
**memory**: each (method, model, k) in a fresh process: the peak resident set size
(``VmHWM``, Linux) after building the model and batch and running one forward pass, and after
three steps; reported as the growth, and that growth minus Adam's.
**accuracy** (of the min-norm solve alone): ``--problems`` random problems per k and kind, k
gradients of size 512 in float64: Gaussian rows; rank-deficient (rows in a 3-dimensional
subspace, so the Gram matrix is singular); near-duplicates (pairs 1e-6 apart, relative). Each
solver's objective :math:`\alpha^\top G \alpha` against quadprog's exact QP on :math:`G`
scaled to a largest diagonal entry of 1 plus a ridge of 1e-12 (without the scaling it fails):
the excess in units of :math:`\\max_i G_{ii}` (relative to the optimum it means nothing where
that is 0, as with more gradients than dimensions), and the median solve time. The peers take
the gradients as they do in training (LibMTL casts to float32).

Usage::

    python benchmarks/mgda_step.py                      # time, memory and accuracy
    python benchmarks/mgda_step.py --part accuracy      # the MGDA solvers alone, about a minute
    python benchmarks/mgda_step.py --part time --models mlp --ks 8 --weightings upgrad
    python benchmarks/mgda_step.py --quick              # smoke check: first model and k only

On a machine shared with other jobs pass ``--threads 1``: two threads on two busy cores made
every step 3-30 times slower (OpenMP threads waiting for each other) and the ratios meaningless.

Not a test: pytest does not collect it (no ``test_`` names, outside ``tests/``).
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import statistics
import subprocess
import sys
from collections.abc import Callable, Container, Sequence

import torch
import torch.nn.functional as F
from _models import build
from _timing import bootstrap_ratio, interleave, ratio_row

import torch_moo as tm

try:
    from _mgda_peers import WEIGHT_PEERS, peer_steps, peer_weights
except ImportError:  # the peers' adapters are missing: torch_moo and Adam only
    WEIGHT_PEERS = ()

    def peer_steps(net, x, y, k, weightings, names=None):  # type: ignore[misc]
        return {}


Step = Callable[[], None]
RULES: dict[str, tuple[str, type[tm.weightings.GramWeighting]]] = {
    "mgda": ("MGDA", tm.weightings.MGDA),
    "upgrad": ("UPGrad", tm.weightings.UPGrad),
}


def own_steps(net, x, y, k: int, weightings: Sequence[str], names: Container[str] | None = None) -> dict[str, Step]:
    """Adam on the summed loss and torch_moo's modes per rule of ``weightings`` (keys of ``RULES``;
    only those in ``names`` if given), each on its own copy of ``net``."""
    labels = [y[:, i] for i in range(k)]

    def losses_of(outputs):
        return torch.stack([F.cross_entropy(out, label) for out, label in zip(outputs, labels)])

    def adam() -> Step:
        model = copy.deepcopy(net)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step() -> None:
            opt.zero_grad()
            losses_of(model(x)).sum().backward()
            opt.step()

        return step

    def jacobian_descent(rule: type[tm.weightings.GramWeighting], features: bool, trunk: bool = False) -> Step:
        model = copy.deepcopy(net)
        opt = tm.JacobianDescent(
            model.parameters(), num_objectives=k, weighting=rule(), trunk=model.trunk if trunk else None, lr=1e-3
        )

        def step() -> None:
            opt.zero_grad()
            if features:
                z = model.trunk(x)
                opt.backward(losses_of([head(z) for head in model.heads]), features=z)
            else:
                opt.backward(losses_of(model(x)))
            opt.step()

        return step

    makers: dict[str, Callable[[], Step]] = {"Adam (sum)": adam}
    for weighting in weightings:
        label, rule = RULES[weighting]
        makers[f"torch_moo {label} (full)"] = functools.partial(jacobian_descent, rule, False)
        makers[f"torch_moo {label} (full, trunk)"] = functools.partial(jacobian_descent, rule, False, True)
        makers[f"torch_moo {label} (features)"] = functools.partial(jacobian_descent, rule, True)
    return {name: make() for name, make in makers.items() if names is None or name in names}


def all_steps(
    model: str, k: int, seed: int, weightings: Sequence[str], names: Container[str] | None = None
) -> dict[str, Step]:
    net, x, y = build(model, k, seed)
    return {**own_steps(net, x, y, k, weightings, names), **peer_steps(net, x, y, k, weightings, names)}


def fastest(times: dict[str, list[float]], label: str, peers: bool) -> str | None:
    """The lowest-median method of rule ``label`` (the name's second word): torch_moo's, or the peers'."""
    names = [name for name in times if name.split(" ")[1] == label and name.startswith("torch_moo") != peers]
    return min(names, key=lambda name: statistics.median(times[name]), default=None)


def verdict(times: dict[str, list[float]], label: str, draws: int, seed: int) -> str:
    """Markdown cells: torch_moo's faster mode for rule ``label``, the fastest peer, their ratio and interval."""
    own, peer = fastest(times, label, peers=False), fastest(times, label, peers=True)
    assert own is not None, "own_steps builds both modes of every rule"
    if peer is None:
        return f"{own} | {1e3 * statistics.median(times[own]):.2f} | no peer installed | - | - | - | - |"
    ratio = statistics.median(times[peer]) / statistics.median(times[own])
    ci, faster = "-", "yes" if ratio > 1 else "no"
    if draws:  # a verdict only where the interval excludes 1
        lo, hi = bootstrap_ratio(times[own], times[peer], draws, seed)
        ci, faster = f"{lo:.3f}-{hi:.3f}", "yes" if lo > 1 else "no" if hi < 1 else "tie"
    return (
        f"{own} | {1e3 * statistics.median(times[own]):.2f} | {peer} | {1e3 * statistics.median(times[peer]):.2f} | "
        f"{ratio:.3f} | {ci} | {faster} |"
    )


def part_time(args) -> None:
    print(f"time: warm-up {args.warmup}, {args.rounds} alternating steps per method, batch 256, base Adam lr 1e-3")
    print()
    print("| model | k | method | Adam ms | method ms | ratio | 95% CI | min ratio |")
    print("|---|---:|---|---:|---:|---:|---|---:|")
    verdicts = []
    for model in args.models:
        for k in args.ks:
            steps = all_steps(model, k, args.seed, args.weightings)
            times = interleave(steps, args.warmup, args.rounds)
            for name in steps:
                if name != "Adam (sum)":
                    row = ratio_row(times["Adam (sum)"], times[name], args.bootstrap, args.seed)
                    print(f"| {model} | {k} | {name} | {row} |", flush=True)
            for weighting in args.weightings:
                label = RULES[weighting][0]
                verdicts.append(f"| {model} | {k} | {label} | {verdict(times, label, args.bootstrap, args.seed)}")
    print()
    print("torch_moo's faster mode against the fastest peer (ratio: peer median / torch_moo median)")
    print()
    print("| model | k | rule | torch_moo | ms | fastest peer | ms | ratio | 95% CI | torch_moo faster |")
    print("|---|---:|---|---|---:|---|---:|---:|---|---|")
    print("\n".join(verdicts), flush=True)


def peak_mb() -> float:
    """This process's peak resident set size (MB): ``VmHWM``, the high-water mark of its own address space.

    Not ``ru_maxrss``: Linux carries that across ``execve``, so a child spawned by a parent that
    holds every method's model and the peers' imports would start at the parent's size and hide
    any growth below it."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024  # kB


def memory_child(method: str, model: str, k: int, seed: int) -> None:
    """Print the peak RSS growth (MB) of three steps of ``method``, in this fresh process."""
    net, x, y = build(model, k, seed)
    with torch.no_grad():
        net(x)
    steps = all_steps(model, k, seed, tuple(RULES), names={method})
    if method not in steps:
        print("nan")
        return
    before = peak_mb()
    for _ in range(3):
        steps[method]()
    print(f"{peak_mb() - before:.1f}")


def part_memory(args) -> None:
    print("memory: peak RSS growth over three steps, each method in a fresh process (MB)")
    print()
    print("| model | k | method | growth MB | minus Adam's MB |")
    print("|---|---:|---|---:|---:|")
    for model in args.models:
        for k in args.ks:
            names = list(all_steps(model, k, args.seed, args.weightings))
            growth = {}
            for name in names:
                command = [sys.executable, __file__, "--threads", str(args.threads), "--memory-child", name, model]
                command += [str(k), str(args.seed)]
                growth[name] = float(
                    subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()[-1]
                )
            for name in names:
                print(
                    f"| {model} | {k} | {name} | {growth[name]:.1f} | {growth[name] - growth['Adam (sum)']:.1f} |",
                    flush=True,
                )


def accuracy_problem(kind: str, k: int, generator: torch.Generator) -> torch.Tensor:
    """k float64 gradients of size 512 as rows: Gaussian, in a 3-dimensional subspace, or in 1e-6-close pairs."""
    if kind == "gaussian":
        return torch.randn(k, 512, dtype=torch.float64, generator=generator)
    if kind == "rank 3":
        return torch.randn(k, 3, dtype=torch.float64, generator=generator) @ torch.randn(
            3, 512, dtype=torch.float64, generator=generator
        )
    rows = torch.randn((k + 1) // 2, 512, dtype=torch.float64, generator=generator).repeat_interleave(2, dim=0)[:k]
    return rows + 1e-6 * rows.norm(dim=1, keepdim=True) / 512**0.5 * torch.randn(
        k, 512, dtype=torch.float64, generator=generator
    )


def exact_objective(gram: torch.Tensor) -> float:
    """min over the simplex of a^T G a by quadprog on G / max diag + 1e-12 I, in units of max diag."""
    import numpy as np
    import quadprog

    k = len(gram)
    scaled = (gram / gram.diagonal().max()).numpy() + 1e-12 * np.eye(k)
    constraints = np.hstack([np.ones((k, 1)), np.eye(k)])  # sum a = 1 (equality), a >= 0
    weights = quadprog.solve_qp(scaled, np.zeros(k), constraints, np.r_[1.0, np.zeros(k)], meq=1)[0]
    return float(weights @ (gram / gram.diagonal().max()).numpy() @ weights)


def solvers() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    own = {"torch_moo (float64 Gram)": lambda grads: tm.functional.min_norm_weights(grads @ grads.T)[0]}
    own["torch_moo (float32 Gram)"] = lambda grads: tm.functional.min_norm_weights(grads.float() @ grads.float().T)[
        0
    ].double()
    return {**own, **{name: (lambda grads, name=name: peer_weights(name, grads)) for name in WEIGHT_PEERS}}


def part_accuracy(args) -> None:
    import time

    if importlib.util.find_spec("quadprog") is None:
        print("accuracy: skipped, the exact QP it compares against needs quadprog (pip install -e .[bench])")
        return
    print(
        f"accuracy: {args.problems} problems per k and kind; "
        "objective excess over quadprog's exact optimum, in units of max_i G_ii"
    )
    print()
    print("| kind | k | solver | median excess | worst excess | failures | median solve ms |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for kind in ("gaussian", "rank 3", "near pairs"):
        for k in args.ks:
            generator = torch.Generator().manual_seed(args.seed)
            problems = [accuracy_problem(kind, k, generator) for _ in range(args.problems)]
            optima = [exact_objective(grads @ grads.T) for grads in problems]
            for name, solve in solvers().items():
                excesses, times, failures = [], [], 0
                for grads, optimum in zip(problems, optima):
                    gram = grads @ grads.T / (grads @ grads.T).diagonal().max()
                    try:
                        start = time.perf_counter()
                        weights = solve(grads)
                        times.append(time.perf_counter() - start)
                    except Exception:  # LibMTL: None at its iteration cap, UnboundLocalError above 1e8
                        failures += 1
                        continue
                    excesses.append(max(float(weights @ gram @ weights) - optimum, 0.0))
                row = (
                    f"{statistics.median(excesses):.1e} | {max(excesses):.1e} | {failures} | "
                    f"{1e3 * statistics.median(times):.3f}"
                    if excesses
                    else f"- | - | {failures} | -"
                )
                print(f"| {kind} | {k} | {name} | {row} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", default="all", choices=["time", "memory", "accuracy", "all"])
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn")
    parser.add_argument("--ks", default="2,4,8,16", help="comma-separated numbers of objectives/heads")
    parser.add_argument("--weightings", default="mgda,upgrad", help="comma-separated rules: mgda, upgrad")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per method")
    parser.add_argument("--rounds", type=int, default=30, help="timed steps per method")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap draws (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--problems", type=int, default=50, help="random problems per k and kind (accuracy)")
    parser.add_argument("--quick", action="store_true", help="few repetitions, for a smoke check")
    parser.add_argument("--memory-child", nargs=4, metavar=("METHOD", "MODEL", "K", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        method, model, k, seed = args.memory_child
        memory_child(method, model, int(k), int(seed))
        return
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.ks = [int(k) for k in args.ks.split(",") if k.strip()]
    args.weightings = [w.strip() for w in args.weightings.split(",") if w.strip()]
    unknown = sorted(set(args.weightings) - set(RULES))
    if unknown:
        parser.error(f"--weightings: unknown {', '.join(unknown)} (choose from {', '.join(RULES)})")
    if args.quick:
        args.models, args.ks = args.models[:1], args.ks[:1]
        args.warmup, args.rounds, args.bootstrap, args.problems = 1, 3, 100, 5
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print()
    if args.part in ("time", "all"):
        part_time(args)
        print()
    if args.part in ("memory", "all"):
        part_memory(args)
        print()
    if args.part in ("accuracy", "all"):
        part_accuracy(args)


if __name__ == "__main__":
    main()
