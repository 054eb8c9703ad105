"""Pareto exploration (Ma, Du & Matusik, ICML 2020) against preference sweeps at an equal gradient budget.

Problem: :class:`torch_moo.datasets.TwoDigits`, a fixed training subset used full-batch (so the
objectives are deterministic functions of the weights) and a held-out set for reporting.
Objectives: (cross-entropy of the left digit, cross-entropy of the right digit) on that batch.
Model: a one-hidden-layer MLP on the 256 pixels, 256 -> ``--width`` (ReLU) -> two linear heads.
With a narrow trunk (16 units) the two tasks compete for the features and the front is a real
trade-off; with 32 or more both losses reach about 0 together and the front is one point.

Methods, each charged the same budget of backward-pass equivalents (see ``--help`` and the
README's "Pareto exploration" section):

* **explore**: Adam on :math:`w^\\top L` for the ``--starts`` weights (full batch, cosine
  schedule, ``--start-steps`` steps), then :func:`torch_moo.exploration.explore` from each
  start along :math:`\\beta = e_1` and :math:`e_2` for ``--explore-steps`` steps. Its budget
  includes the starts' training.
* **continuation**: :func:`torch_moo.continuation.continue_front` from the same starts, given
  the exploration's budget less the starts' training (units counted by the continuation itself,
  same cost model, a training step 1). By default its corrector trains: points above the
  tolerance take ``--continuation-train-steps`` Adam steps (the starts' lr) on the predicted
  weighted sum, the weights moving at most ``--continuation-weight-step`` toward the traded
  objective per step, on paths between the starts (``directions="fill"``);
  ``--continuation-trainer none`` gives the Newton-only continuation.
* **weighted sum**: Adam on :math:`w^\\top L`, :math:`w` the interior points of
  :func:`~torch_moo.pareto.simplex_lattice` (``n`` runs, the budget split evenly among them).
* **ChebyshevALM**: :class:`torch_moo.ChebyshevALM` with the same preferences, base Adam,
  same schedule and step counts.

Cost model (units = backward-pass equivalents): one backward of a scalar (a weighted sum, a
ChebyshevALM step, one objective's gradient) = 1; a Hessian-vector product (a double backward)
= 2; a forward-only evaluation = 0. The exploration's counts are measured, not assumed: every
gradient-enabled evaluation of the loss vector inside an explorer step is charged k = 2 and
every MINRES iteration (one Hessian-vector product, reported by each explored point through
``explore``'s callback) 2. The script also times one of each on the start model, so the cost
model can be checked against this machine.

    python benchmarks/pareto_explore.py            # the README's table, about 3-6 min on 2 cores
    python benchmarks/pareto_explore.py --quick    # smoke check, seconds

``--problem regression`` runs the concave front of :func:`torch_moo.problems.two_task_regression`
instead: the continuation from one start, the weighted-sum and ChebyshevALM sweeps at the units
it spent, and NSGA-II from pymoo (the ``bench`` extra; skipped without it) on the same
objectives with its own count of forward evaluations; hypervolume and IGD to the true front.
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.functional import cross_entropy

import torch_moo as tm
from torch_moo.continuation import continue_front
from torch_moo.datasets import TwoDigits, TwoHeadMLP
from torch_moo.exploration import ExploredPoint, explore
from torch_moo.pareto import hypervolume, igd, non_dominated, simplex_lattice, sweep
from torch_moo.problems import two_task_regression

HERE = Path(__file__).resolve().parent
DEFAULT_PLOT = HERE.parent / "docs" / "_static" / "pareto_explore.png"
K = 2  # objectives


def loss_vector(model: nn.Module, data: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    images, left, right = data
    left_logits, right_logits = model(images)
    return torch.stack([cross_entropy(left_logits, left), cross_entropy(right_logits, right)])


@torch.no_grad()
def evaluate(model: nn.Module, state: dict[str, Tensor], data) -> list[float]:
    model.load_state_dict(state)
    return loss_vector(model, data).tolist()


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


# ------------------------------------------------------------------------------- scalarized runs
def train(model: nn.Module, data, weight: Tensor, steps: int, lr: float, method: str) -> None:
    """Full-batch training of ``model`` for ``steps`` steps (one backward pass each), cosine lr."""
    if method == "weighted sum":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        opt = tm.ChebyshevALM(model.parameters(), num_objectives=K, preference=weight, outer_every=100, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for _ in range(steps):
        opt.zero_grad()
        losses = loss_vector(model, data)
        if method == "weighted sum":
            (weight.to(losses.dtype) @ losses).backward()
        else:
            opt.backward(losses)
        opt.step()
        schedule.step()


def fresh_model(args) -> nn.Module:
    torch.manual_seed(args.seed)  # every run starts from the same weights
    return TwoHeadMLP(args.width)


@dataclass
class Result:
    name: str
    train: list[list[float]] = field(default_factory=list)
    test: list[list[float]] = field(default_factory=list)
    budget: int = 0
    seconds: float = 0.0
    note: str = ""


def run_sweep(method: str, runs: int, budget: int, args, train_data, test_data) -> Result:
    """``runs`` preferences, interior points of simplex_lattice(2, runs + 1), budget // runs steps each."""
    preferences = simplex_lattice(K, runs + 1)[1:-1]
    steps = budget // runs
    probe = fresh_model(args)

    def run(weight: Tensor):
        model = fresh_model(args)
        train(model, train_data, weight.float(), steps, args.lr, method)
        return loss_vector(model, train_data).detach(), snapshot(model)

    start = time.perf_counter()
    front = sweep(run, preferences)
    seconds = time.perf_counter() - start
    result = Result(f"{method}, {runs} runs", budget=steps * runs, seconds=seconds, note=f"{steps} steps/run")
    result.train = front.values.tolist()
    result.test = [evaluate(probe, state, test_data) for state in front.payloads]
    return result


# ------------------------------------------------------------------------------------ exploring
@dataclass
class Solve:
    seconds: float
    hvps: int
    residual: float  # MINRES's residual estimate relative to ||J^T beta||


class Recorder:
    """Observes explore() through its callback: times every explorer step, counts HVPs and gradient evaluations."""

    def __init__(self) -> None:
        self.solves: list[Solve] = []
        self.gradient_evaluations = 0  # loss vectors evaluated with grad enabled (each charged k)
        self.hvps = 0  # MINRES iterations, one Hessian-vector product each
        self._last = time.perf_counter()  # when the last point was reached
        self._recording = 0.0  # seconds of forward-only evaluations (explore recording a point) since then

    def losses(self, data):
        def evaluate_losses(model: nn.Module) -> Tensor:
            if torch.is_grad_enabled():
                self.gradient_evaluations += 1
                return loss_vector(model, data)
            start = time.perf_counter()
            values = loss_vector(model, data)
            self._recording += time.perf_counter() - start
            return values

        return evaluate_losses

    def reached(self, point: ExploredPoint) -> None:
        """explore()'s callback: a step's time is the time since the last point, less recording this one."""
        now = time.perf_counter()
        if point.tangent_iterations is not None:  # an explorer step, not a start
            seconds = now - self._last - self._recording
            self.hvps += point.tangent_iterations
            self.solves.append(Solve(seconds, point.tangent_iterations, point.tangent_residual))
        self._last, self._recording = now, 0.0


def run_explore(args, train_data, test_data) -> tuple[Result, Recorder, list]:
    start = time.perf_counter()
    starts = []
    for w in args.starts:
        model = fresh_model(args)
        train(model, train_data, torch.tensor([w, 1 - w]), args.start_steps, args.lr, "weighted sum")
        starts.append(model)
    start_seconds = time.perf_counter() - start

    recorder = Recorder()
    explorer_kwargs = dict(
        step_size=args.step_size,
        damping=args.damping,
        max_iter=args.max_iter,
        tol=args.tol,
        corrections=args.corrections,
        lr=args.correction_lr,
    )
    begin = time.perf_counter()
    points = explore(
        starts, recorder.losses(train_data), steps=args.explore_steps, callback=recorder.reached, **explorer_kwargs
    )
    explore_seconds = time.perf_counter() - begin

    budget = len(starts) * args.start_steps + K * recorder.gradient_evaluations + 2 * recorder.hvps
    result = Result(
        f"explore ({len(starts)} starts x 2 directions x {args.explore_steps} steps)",
        budget=budget,
        seconds=start_seconds + explore_seconds,
        note=f"starts {len(starts) * args.start_steps}, {recorder.gradient_evaluations} gradient evals, "
        f"{recorder.hvps} HVPs; {start_seconds:.1f} s starts + {explore_seconds:.1f} s exploring",
    )
    probe = fresh_model(args)
    result.train = [p.values.tolist() for p in points]
    result.test = [evaluate(probe, p.state, test_data) for p in points]
    alone = Result(
        f"the {len(starts)} starts alone (explore's step 0)",
        budget=len(starts) * args.start_steps,
        seconds=start_seconds,
        note="for reference: what the exploration steps add",
    )
    alone.train = [v for v, p in zip(result.train, points) if p.step == 0]
    alone.test = [v for v, p in zip(result.test, points) if p.step == 0]
    return result, recorder, starts, alone


def run_continuation(args, budget: int, starts: list[nn.Module], train_data, test_data) -> Result:
    """continue_front from the explorer's starts, given what is left of ``budget`` after their training."""
    start_cost = len(starts) * args.start_steps
    training = {}
    if args.continuation_trainer == "adam":
        training = dict(
            trainer=lambda params: torch.optim.Adam(params, lr=args.lr),
            train_steps=args.continuation_train_steps,
            weight_step=args.continuation_weight_step,
            directions="fill",
        )
    begin = time.perf_counter()
    points = continue_front(
        starts,
        lambda model: loss_vector(model, train_data),
        budget=budget - start_cost,
        tol=args.continuation_tol,
        step_size=args.step_size,
        min_step=args.step_size / 16,
        max_step=4 * args.step_size,
        corrections=args.continuation_corrections,
        damping=args.continuation_damping,
        solve_tol=args.solve_tol,
        max_iter=args.max_iter,
        **training,
    )
    seconds = time.perf_counter() - begin
    accepted = [p for p in points if p.accepted]
    used = sum(p.cost for p in points)
    residuals = sorted(p.kkt_residual for p in accepted)
    result = Result(
        f"continuation ({len(starts)} starts, {len(points)} tried)",
        budget=start_cost + used,
        seconds=seconds,
        note=f"{len(accepted)} accepted of {len(points)} ({sum(p.trained for p in points)} trained); {used} of "
        f"{budget - start_cost} units ({sum(p.hvps for p in points)} HVPs); "
        f"relative KKT residual of accepted points median {residuals[len(residuals) // 2]:.1e}, "
        f"max {residuals[-1]:.1e}; {seconds:.1f} s",
    )
    probe = fresh_model(args)
    result.train = [p.values.tolist() for p in accepted]
    result.test = [evaluate(probe, p.state, test_data) for p in accepted]
    return result


def regression_benchmark(args) -> None:
    """The concave front of two_task_regression: continuation, the sweeps and NSGA-II (pymoo)."""
    problem = two_task_regression(separation=args.separation)
    features = problem.optima.shape[1]

    class Weight(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            generator = torch.Generator().manual_seed(args.seed)
            self.w = nn.Parameter(
                problem.optima.mean(dim=0)
                + args.init_scale * torch.randn(features, generator=generator, dtype=torch.float64)
            )

    def losses(model: nn.Module) -> Tensor:
        return problem.losses(model.w)

    reference = [1.1, 1.1]
    truth = problem.front(2001)
    rows = [("true front (2001 points)", truth.tolist(), 0, "")]
    steps = args.regression_steps

    def scalarized(preference: Tensor, method: str, count: int):
        model = Weight()
        if method == "weighted sum":
            opt = torch.optim.Adam(model.parameters(), lr=0.05)
        else:
            opt = tm.ChebyshevALM(model.parameters(), num_objectives=K, preference=preference, outer_every=50, lr=0.05)
        for _ in range(count):
            opt.zero_grad()
            values = losses(model)
            if method == "weighted sum":
                (preference.to(values.dtype) @ values).backward()
            else:
                opt.backward(values)
            opt.step()
        return losses(model).detach(), model

    def run_one(preference: Tensor, method: str, count: int) -> Tensor:
        return scalarized(preference.float(), method, count)[0]

    # continuation: one start at preference (1/2, 1/2), then paths toward each objective; a weighted sum there
    # lands at an end of the concave front (a Pareto point all the same), ChebyshevALM in the middle or nowhere
    _, middle = scalarized(torch.tensor([0.5, 0.5]), args.regression_start, steps)
    budget = args.regression_budget
    points = continue_front(middle, losses, budget=budget - steps, tol=1e-8, step_size=0.1, max_step=0.3, damping=1e-8)
    accepted = [p.values.tolist() for p in points if p.accepted]
    cost = steps + sum(p.cost for p in points)
    rows.append(("continuation (1 start)", accepted, cost, f"{len(accepted)} accepted of {len(points)}"))
    for method in ("weighted sum", "ChebyshevALM"):
        for runs in args.runs:
            preferences = simplex_lattice(K, runs + 1)[1:-1]
            front = sweep(functools.partial(run_one, method=method, count=cost // runs), preferences)
            rows.append((f"{method}, {runs} runs", front.values.tolist(), (cost // runs) * runs, ""))
    try:
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.core.problem import Problem
        from pymoo.optimize import minimize
    except ImportError:
        print("pymoo not installed (pip install torch-moo[bench]): NSGA-II skipped")
    else:
        center = problem.optima.mean(dim=0).numpy()

        class Objectives(Problem):
            def __init__(self) -> None:
                super().__init__(n_var=features, n_obj=K, xl=center - 4, xu=center + 4)

            def _evaluate(self, x, out, *unused, **kwargs) -> None:
                with torch.no_grad():
                    out["F"] = torch.stack([problem.losses(torch.as_tensor(row)) for row in x]).numpy()

        found = minimize(Objectives(), NSGA2(pop_size=args.nsga_pop), ("n_gen", args.nsga_gen), seed=args.seed)
        evaluations = found.algorithm.evaluator.n_eval
        rows.append(
            (
                f"NSGA-II ({args.nsga_pop} x {args.nsga_gen} gen)",
                found.F.tolist(),
                0,
                f"{evaluations} forward evaluations, no gradients",
            )
        )
    print(f"two_task_regression(separation={args.separation}): {features} weights, reference {reference}")
    print("\n| method | points | budget | ND own | HV | IGD to the true front | note |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, values, units, note in rows:
        tensor = torch.tensor(values, dtype=torch.float64)
        own = int(non_dominated(tensor).sum())
        hv, distance = hypervolume(tensor, reference), igd(tensor, truth)
        print(f"| {name} | {len(values)} | {units} | {own} | {hv:.4f} | {distance:.4f} | {note} |")


def unit_costs(model: nn.Module, data, repeat: int) -> dict[str, float]:
    """Median ms of a weighted-sum backward, a create_graph gradient of one objective and an HVP."""
    params = list(model.parameters())

    def backward():
        model.zero_grad()
        loss_vector(model, data).sum().backward()

    def graph_gradient():
        torch.autograd.grad(loss_vector(model, data)[0], params, create_graph=True)

    losses = loss_vector(model, data)
    grads = torch.autograd.grad(losses.sum(), params, create_graph=True)
    vector = [torch.randn_like(p) for p in params]

    def hvp():
        tm.functional.hessian_vector_product(grads, params, vector)

    def forward():
        with torch.no_grad():
            loss_vector(model, data)

    out = {}
    for name, call in [
        ("forward", forward),
        ("backward", backward),
        ("gradient (graph)", graph_gradient),
        ("HVP", hvp),
    ]:
        call()
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
        out[name] = 1e3 * statistics.median(times)
    return out


# ------------------------------------------------------------------------------------ reporting
def nadir_reference(results: list[Result], split: str) -> list[float]:
    """1.1 x the nadir (componentwise max) of the non-dominated points of all methods together."""
    union = torch.tensor([p for r in results for p in getattr(r, split)], dtype=torch.float64)
    return (1.1 * union[non_dominated(union)].max(dim=0).values).tolist()


def front_stats(points: list[list[float]], union: Tensor, reference: list[float]) -> tuple[int, int, float]:
    values = torch.tensor(points, dtype=torch.float64)
    own = int(non_dominated(values).sum())
    # points of this method that no point of any method dominates
    mask = non_dominated(torch.cat([values, union]))[: len(values)]
    return own, int(mask.sum()), hypervolume(values, reference)


def plot(results: list[Result], references: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from torch_moo.pareto import plot_front

    styles = ["o", "s", "^", "v", "D", "P"]
    figure, axes = plt.subplots(1, 2, figsize=(6, 4), layout="constrained")
    for ax, split, title in zip(axes, ("train", "test"), ("training batch", "held-out")):
        union = torch.tensor([p for r in results for p in getattr(r, split)], dtype=torch.float64)
        reference = references[split]
        plot_front(union, ax=ax, reference=reference, labels=["CE left", "CE right"])
        for ax_child in list(ax.collections):  # keep plot_front's staircase and shading, redraw points per method
            if ax_child.get_label() in ("non-dominated", "dominated"):
                ax_child.remove()
        mask = non_dominated(union)
        offset = 0
        for i, result in enumerate(results):
            values = union[offset : offset + len(getattr(result, split))]
            nd = mask[offset : offset + len(values)]
            offset += len(values)
            label = result.name.split(" (")[0]
            ax.scatter(*values[nd].T, marker=styles[i], s=22, color=f"C{i}", label=label, zorder=4)
            ax.scatter(*values[~nd].T, marker=styles[i], s=14, color=f"C{i}", alpha=0.3, zorder=3)
        low = union.min(dim=0).values.tolist()
        for axis, lo, hi in zip("xy", low, reference):  # clip to the reference box: far-off points are not drawn
            getattr(ax, f"set_{axis}lim")(max(0.0, lo - 0.05 * (hi - lo)), hi + 0.05 * (hi - lo))
        ax.set_title(title, fontsize=9)
        ax.get_legend().remove()
    handles, labels = axes[0].get_legend_handles_labels()
    keep = [(handle, label) for handle, label in zip(handles, labels) if label != "reference"]
    figure.legend(*zip(*keep), loc="outside lower center", ncol=3, fontsize=7, frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"\nwrote {path} (faded: dominated by some method's point; x: the reference point)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke check only (seconds)")
    parser.add_argument("--seed", type=int, default=0, help="data draw and initial weights")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: robust timings on a shared machine)")
    parser.add_argument("--train-size", type=int, default=2048)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--width", type=int, default=16, help="trunk width; small widths make the tasks compete")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam's (and ChebyshevALM's) learning rate")
    parser.add_argument("--starts", type=float, nargs="+", default=[0.2, 0.5, 0.8], help="w_1 of the starts")
    parser.add_argument("--start-steps", type=int, default=1500, help="full-batch Adam steps per start")
    parser.add_argument("--explore-steps", type=int, default=10, help="explorer steps per start and direction")
    parser.add_argument("--step-size", type=float, default=0.3)
    parser.add_argument("--damping", type=float, default=0.1)
    parser.add_argument("--max-iter", type=int, default=20)
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--corrections", type=int, default=2)
    parser.add_argument("--correction-lr", type=float, default=0.05, help="SGD lr of the MGDA correction steps")
    parser.add_argument("--runs", type=int, nargs="+", default=[4, 8], help="sweep sizes of the baselines")
    parser.add_argument("--continuation-tol", type=float, default=1e-3, help="relative KKT residual to accept")
    parser.add_argument("--continuation-damping", type=float, default=1.0, help="continuation's delta")
    parser.add_argument("--continuation-corrections", type=int, default=3, help="continuation's Newton steps per step")
    parser.add_argument("--solve-tol", type=float, default=0.1, help="continuation's MINRES relative tolerance")
    parser.add_argument(
        "--continuation-trainer", choices=["adam", "none"], default="adam", help="none: Newton corrector only"
    )
    parser.add_argument("--continuation-train-steps", type=int, default=50, help="Adam steps per trained point")
    parser.add_argument("--continuation-weight-step", type=float, default=0.1, help="largest weight move per step")
    parser.add_argument("--problem", choices=["twodigits", "regression"], default="twodigits")
    parser.add_argument(
        "--separation", type=float, default=3.0, help="regression: distance of the optima (concave > 1)"
    )
    parser.add_argument("--regression-steps", type=int, default=300, help="regression: Adam steps of the middle start")
    parser.add_argument("--regression-budget", type=int, default=1200, help="regression: units for every method")
    parser.add_argument(
        "--regression-start", choices=["weighted sum", "ChebyshevALM"], default="weighted sum", help="regression"
    )
    parser.add_argument("--init-scale", type=float, default=0.5, help="regression: spread of the initial weights")
    parser.add_argument("--nsga-pop", type=int, default=40)
    parser.add_argument("--nsga-gen", type=int, default=50)
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT)
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.train_size, args.test_size, args.start_steps, args.explore_steps = 256, 256, 60, 2
        args.max_iter, args.runs, args.continuation_train_steps = 5, [2], 10
        args.regression_steps, args.regression_budget, args.nsga_gen = 100, 400, 5
        if args.plot == DEFAULT_PLOT:
            args.no_plot = True
    torch.set_num_threads(args.threads)
    total = time.perf_counter()
    if args.problem == "regression":
        regression_benchmark(args)
        print(f"total {time.perf_counter() - total:.1f} s")
        return

    train_data = TwoDigits(train=True, size=args.train_size, seed=args.seed).tensors()
    test_data = TwoDigits(train=False, size=args.test_size, seed=args.seed).tensors()
    print(
        f"TwoDigits: {args.train_size} training images (full batch), {args.test_size} held-out; "
        f"MLP 256-{args.width}-2x10; torch {torch.__version__}, {torch.get_num_threads()} thread(s)"
    )

    explored, recorder, starts, alone = run_explore(args, train_data, test_data)
    results = [explored, run_continuation(args, explored.budget, starts, train_data, test_data)]
    for method in ("weighted sum", "ChebyshevALM"):
        for runs in args.runs:
            results.append(run_sweep(method, runs, explored.budget, args, train_data, test_data))

    results.append(alone)  # a subset of the exploration's points: it does not change the reference
    references = {split: nadir_reference(results, split) for split in ("train", "test")}
    print(
        "\nreference point (1.1 x the nadir of all methods' non-dominated points): "
        f"training {references['train'][0]:.3f}, {references['train'][1]:.3f}; "
        f"held-out {references['test'][0]:.3f}, {references['test'][1]:.3f}"
    )
    unions = {
        split: torch.tensor([p for r in results for p in getattr(r, split)], dtype=torch.float64)
        for split in ("train", "test")
    }
    print()
    print(
        "| method | points | budget | wall s | ND own | ND in union | HV train "
        "| ND own (held-out) | ND in union (held-out) | HV held-out |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        own, shared, hv = front_stats(r.train, unions["train"], references["train"])
        own_t, shared_t, hv_t = front_stats(r.test, unions["test"], references["test"])
        print(
            f"| {r.name} | {len(r.train)} | {r.budget} | {r.seconds:.1f} | {own} | {shared} | {hv:.4f} "
            f"| {own_t} | {shared_t} | {hv_t:.4f} |"
        )
    for r in results:
        print(f"- {r.name}: {r.note}")

    solves = recorder.solves
    seconds = [s.seconds for s in solves]
    hvps = [s.hvps for s in solves]
    residuals = [s.residual for s in solves]
    print(
        f"\nexplorer steps: {len(solves)}; seconds per step median {statistics.median(seconds):.3f} "
        f"(min {min(seconds):.3f}, max {max(seconds):.3f}); HVPs (MINRES iterations) per step median "
        f"{statistics.median(hvps):g} (min {min(hvps)}, max {max(hvps)}); relative residual "
        f"||b - (H + dI) v|| / ||b|| median {statistics.median(residuals):.1e} (max {max(residuals):.1e}); "
        f"units per step {K * (1 + args.corrections)} + 2 x HVPs"
    )
    costs = unit_costs(copy.deepcopy(starts[0]), train_data, 5 if args.quick else 50)
    unit = costs["backward"]
    print(
        "unit costs on this batch (median ms, ratio to a forward+backward of the weighted sum): "
        + ", ".join(f"{name} {ms:.2f} ({ms / unit:.2f})" for name, ms in costs.items())
    )
    if not args.no_plot:
        plot([r for r in results if r is not alone], references, args.plot)
    print(f"total {time.perf_counter() - total:.1f} s")


if __name__ == "__main__":
    main()
