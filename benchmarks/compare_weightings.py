"""Every weighting method of torch_moo trained on one three-task problem whose tasks conflict.

Problem: :class:`torch_moo.datasets.TwoDigits` (two scikit-learn digits side by side, no
download) with three classification tasks on each image: the left digit (10 classes), the right
digit (10 classes) and whether the left digit is the greater (2 classes), which needs both. The
network is an MLP whose trunk narrows to ``--width`` units (256 -> 128 -> 16, ReLU) under three
linear heads, so the tasks compete for 16 features. The cosines of the tasks' gradients on the
trunk, at initialisation and after training on the plain sum, are printed and written with the
table: near zero on average and negative for some pairs and seeds.

Every method runs the same loop (``opt.zero_grad(); opt.backward(losses); opt.step()``) with
base Adam, the same learning rate and cosine schedule, mini-batches and epochs, from the same
initial weights per seed:

* :class:`torch_moo.JacobianDescent` with every Gram-space rule of :mod:`torch_moo.weightings`
  (one backward pass per task, the rule on the Gram matrix of the trunk's gradients);
* :class:`torch_moo.WeightedLossDescent` with every loss-space rule (one backward pass);
* :class:`torch_moo.ChebyshevALM`, :class:`torch_moo.MinMaxWeighting`,
  :class:`torch_moo.MultiGradientDescent` (in its MGDA-UB mode, ``features=z``; JacobianDescent
  with MGDA is the full mode) and :class:`torch_moo.FixedWeighting` (the plain sum).

Reported per method, mean +- standard deviation over the seeds: held-out accuracy per task,
their mean, the worst task's accuracy, the training hypervolume of the final loss vector on the
whole training set (reference: the losses of a uniform guess, ln 10, ln 10, ln 2, so a
model that learns nothing scores about 0) and the median time of a training step.

    python benchmarks/compare_weightings.py          # docs/_generated/compare_weightings.rst and
                                                     # docs/_static/compare_weightings.png, about 7 min
    python benchmarks/compare_weightings.py --quick  # smoke check, seconds; writes nothing unless --out
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _timing import interleave
from torch import Tensor, nn
from torch.nn.functional import cross_entropy
from torch.optim import Optimizer

import torch_moo as tm
from torch_moo.datasets import TwoDigits
from torch_moo.pareto import hypervolume

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs"
TABLE = "compare_weightings.rst"
PLOT = "compare_weightings.png"
TASKS = ("left", "right", "greater")
CLASSES = (10, 10, 2)
K = len(TASKS)
# A uniform guess's cross-entropy per task: the hypervolume's reference point.
REFERENCE = [math.log(c) for c in CLASSES]
BASELINE = "FixedWeighting (sum)"


class ThreeHeadMLP(nn.Module):
    """A trunk 256 -> ``hidden`` -> ``width`` (ReLU) and one linear head per task;
    ``forward`` returns the trunk's features and the three heads' logits."""

    def __init__(self, width: int, hidden: int = 128) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(256, hidden), nn.ReLU(), nn.Linear(hidden, width), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(width, classes) for classes in CLASSES)

    def forward(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        z = self.trunk(images)
        return z, [head(z) for head in self.heads]


def load(train: bool, size: int) -> tuple[Tensor, Tensor]:
    """Images and the three label columns: left digit, right digit, whether left > right."""
    images, left, right = TwoDigits(train=train, size=size, seed=0).tensors()
    return images, torch.stack([left, right, (left > right).long()], dim=1)


def loss_vector(logits: list[Tensor], labels: Tensor) -> Tensor:
    return torch.stack([cross_entropy(out, labels[:, i]) for i, out in enumerate(logits)])


# ----------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class Method:
    name: str
    build: Callable[[list[nn.Parameter], Settings], Optimizer]
    features: bool = False  # backward(losses, features=z)


@dataclass(frozen=True)
class Settings:
    lr: float
    seed: int
    steps_per_epoch: int


def rule(module: str, name: str) -> type[nn.Module]:
    """A weighting rule from its module under torch_moo.weightings (ImportError if not there yet)."""
    return getattr(importlib.import_module(f"torch_moo.weightings.{module}"), name)


# Constant's weights: each loss in units of a uniform guess's (1 / ln classes), so that the binary
# task's cross-entropy, at most ln 2, is not outweighed by the digits' (ln 10) as in the plain sum.
HAND_SET = [1 / math.log(c) for c in CLASSES]
GRAM_RULES: list[tuple[str, str, Callable[[type[nn.Module]], nn.Module]]] = [
    ("mgda", "MGDA", lambda cls: cls()),
    ("upgrad", "UPGrad", lambda cls: cls()),
    ("upgrad", "DualProj", lambda cls: cls()),
    ("pcgrad", "PCGrad", lambda cls: cls()),
    ("cagrad", "CAGrad", lambda cls: cls()),
    ("imtlg", "IMTLG", lambda cls: cls()),
    ("aligned_mtl", "AlignedMTL", lambda cls: cls()),
    ("nash_mtl", "NashMTL", lambda cls: cls()),
    ("simple", "Mean", lambda cls: cls()),
    ("simple", "Constant", lambda cls: cls(HAND_SET)),
]
LOSS_RULES: list[tuple[str, str, Callable[[type[nn.Module], Settings], nn.Module]]] = [
    ("uncertainty", "Uncertainty", lambda cls, s: cls(K)),
    ("dwa", "DWA", lambda cls, s: cls(K, every=s.steps_per_epoch)),  # a period is an epoch, as in the paper
    ("rlw", "RLW", lambda cls, s: cls(K, seed=s.seed)),
    ("famo", "FAMO", lambda cls, s: cls(K)),
    ("stch", "SmoothTchebycheff", lambda cls, s: cls(K)),
    ("simple", "Mean", lambda cls, s: cls()),
    ("simple", "Constant", lambda cls, s: cls(HAND_SET)),
]


def all_methods() -> tuple[list[Method], list[str]]:
    """Every method, and the names of those whose rule does not import (yet)."""
    methods: list[Method] = []
    missing: list[str] = []
    for module, name, make in GRAM_RULES:
        try:
            cls = rule(module, name)
        except (ImportError, AttributeError):
            missing.append(f"JacobianDescent + {name}")
            continue

        def build_jd(params: list[nn.Parameter], s: Settings, cls=cls, make=make) -> Optimizer:
            return tm.JacobianDescent(params, num_objectives=K, weighting=make(cls), lr=s.lr)

        methods.append(Method(f"JacobianDescent + {name}", build_jd))
    for module, name, make_loss in LOSS_RULES:
        try:
            cls = rule(module, name)
        except (ImportError, AttributeError):
            missing.append(f"WeightedLossDescent + {name}")
            continue

        def build_wld(params: list[nn.Parameter], s: Settings, cls=cls, make=make_loss) -> Optimizer:
            return tm.WeightedLossDescent(params, num_objectives=K, weighting=make(cls, s), lr=s.lr)

        methods.append(Method(f"WeightedLossDescent + {name}", build_wld))
    methods += [
        Method(
            "ChebyshevALM",
            lambda params, s: tm.ChebyshevALM(params, num_objectives=K, preference=[1 / K] * K, lr=s.lr),
        ),
        Method("MinMaxWeighting", lambda params, s: tm.MinMaxWeighting(params, num_objectives=K, lr=s.lr)),
        Method(
            "MultiGradientDescent (MGDA-UB)",
            lambda params, s: tm.MultiGradientDescent(params, num_objectives=K, lr=s.lr),
            features=True,
        ),
        Method(BASELINE, lambda params, s: tm.FixedWeighting(params, num_objectives=K, lr=s.lr)),
    ]
    return methods, missing


# ---------------------------------------------------------------------------------- training
@dataclass
class Run:
    accuracy: list[float]  # held-out, per task
    train_losses: list[float]  # on the whole training set, per task


@dataclass
class Summary:
    method: str
    runs: list[Run] = field(default_factory=list)
    step_ms: float = math.nan  # median, from the interleaved timing


PAIRS = [(i, j) for i in range(K) for j in range(i + 1, K)]


def gradient_cosines(model: ThreeHeadMLP, images: Tensor, labels: Tensor) -> list[float]:
    """Cosines of the tasks' gradients on the trunk's parameters, one per pair of :data:`PAIRS`."""
    _, logits = model(images)
    trunk = list(model.trunk.parameters())
    rows = [
        torch.cat([g.flatten() for g in torch.autograd.grad(loss, trunk, retain_graph=True)])
        for loss in loss_vector(logits, labels)
    ]
    unit = torch.nn.functional.normalize(torch.stack(rows), dim=1)
    cos = unit @ unit.T
    return [cos[i, j].item() for i, j in PAIRS]


@torch.no_grad()
def evaluate(model: ThreeHeadMLP, images: Tensor, labels: Tensor) -> tuple[list[float], list[float]]:
    """Accuracy per task and loss per task."""
    _, logits = model(images)
    accuracy = [(out.argmax(1) == labels[:, i]).float().mean().item() for i, out in enumerate(logits)]
    return accuracy, loss_vector(logits, labels).tolist()


def train(
    method: Method, seed: int, args: argparse.Namespace, data: dict[str, tuple[Tensor, Tensor]]
) -> tuple[Run, ThreeHeadMLP]:
    images, labels = data["train"]
    model, opt = setup(method, seed, args, len(images))
    total = args.epochs * math.ceil(len(images) / args.batch_size) if args.max_steps is None else args.max_steps
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    order = torch.Generator().manual_seed(seed)
    done = 0
    while done < total:
        for batch in torch.randperm(len(images), generator=order).split(args.batch_size)[: total - done]:
            step(method, model, opt, images[batch], labels[batch])
            schedule.step()
            done += 1
    accuracy, _ = evaluate(model, *data["test"])
    _, train_losses = evaluate(model, *data["train"])
    return Run(accuracy, train_losses), model


def setup(method: Method, seed: int, args: argparse.Namespace, train_size: int) -> tuple[ThreeHeadMLP, Optimizer]:
    torch.manual_seed(seed)  # the same initial weights for every method; PCGrad draws from this generator too
    model = ThreeHeadMLP(args.width)
    settings = Settings(args.lr, seed, steps_per_epoch=math.ceil(train_size / args.batch_size))
    return model, method.build(list(model.parameters()), settings)


def step(method: Method, model: ThreeHeadMLP, opt: Optimizer, images: Tensor, labels: Tensor) -> None:
    opt.zero_grad()
    z, logits = model(images)
    losses = loss_vector(logits, labels)
    if method.features:
        opt.backward(losses, features=z)  # type: ignore[attr-defined]
    else:
        opt.backward(losses)  # type: ignore[attr-defined]
    opt.step()


def step_times(methods: list[Method], args: argparse.Namespace, images: Tensor, labels: Tensor) -> dict[str, float]:
    """Median ms of one training step (the loop's body) per method on one batch, the methods
    interleaved (benchmarks/_timing.py) so that other load on the machine hits all of them alike."""
    batch = images[: args.batch_size], labels[: args.batch_size]
    calls: dict[str, Callable[[], object]] = {}
    for method in methods:
        model, opt = setup(method, 0, args, len(images))
        calls[method.name] = functools.partial(step, method, model, opt, *batch)
    times = interleave(calls, warmup=5, rounds=args.timing_rounds, block=5)
    return {name: 1e3 * statistics.median(seconds) for name, seconds in times.items()}


# ---------------------------------------------------------------------------------- reporting
def spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def columns(summary: Summary) -> dict[str, list[float]]:
    """Per-run values of every reported quantity, by column name."""
    runs = summary.runs
    out = {task: [r.accuracy[i] for r in runs] for i, task in enumerate(TASKS)}
    out["mean"] = [statistics.fmean(r.accuracy) for r in runs]
    out["worst"] = [min(r.accuracy) for r in runs]
    out["hv"] = [hypervolume([r.train_losses], REFERENCE) for r in runs]
    return out


def cell(values: list[float], digits: int = 3) -> str:
    mean, std = spread(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table_rst(summaries: list[Summary], header: list[str], missing: list[str]) -> str:
    """The generated page fragment: a list-table, with the run's settings above it."""
    baseline_ms = next((s.step_ms for s in summaries if s.method == BASELINE), None)
    lines = [
        ".. This file is generated by benchmarks/compare_weightings.py; do not edit it by hand.",
        "",
        *header,
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 30 11 11 11 11 11 9 6",
        "",
        "   * - method",
        *(f"     - {task} acc" for task in TASKS),
        "     - mean acc",
        "     - worst task acc",
        "     - training HV",
        "     - ms/step",
    ]
    for s in summaries:
        c = columns(s)
        ratio = f" ({s.step_ms / baseline_ms:.1f}x)" if baseline_ms else ""
        lines += [f"   * - {s.method}", *(f"     - {cell(c[key])}" for key in (*TASKS, "mean", "worst"))]
        lines += [f"     - {cell(c['hv'], 2)}", f"     - {s.step_ms:.1f}{ratio}"]
    if missing:
        lines += ["", "Not run (their rule did not import when this table was made): " + ", ".join(missing) + "."]
    return "\n".join(lines) + "\n"


def plot(summaries: list[Summary], width: int, path: Path) -> None:
    """Held-out accuracy per task and their mean, mean and standard deviation over seeds, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [*TASKS, "mean"]
    figure, axes = plt.subplots(1, len(keys), figsize=(13, 0.32 * len(summaries) + 1.4), sharey=True)
    rows = list(range(len(summaries)))[::-1]  # first method on top
    for ax, key in zip(axes, keys):
        stats = [spread(columns(s)[key]) for s in summaries]
        for s in summaries:
            if s.method == BASELINE:
                ax.axvline(spread(columns(s)[key])[0], color="0.6", linestyle="--", linewidth=1)
        for row, s, (mean, std) in zip(rows, summaries, stats):
            color = "C0" if s.method.startswith("JacobianDescent") else "C1" if "WeightedLoss" in s.method else "C2"
            ax.errorbar(mean, row, xerr=std, fmt="o", color=color, markersize=4, capsize=2)
            for value in columns(s)[key]:
                ax.plot(value, row, ".", color=color, alpha=0.35, markersize=3)
        ax.set_title(f"{key} (held-out accuracy)" if key != "mean" else "mean of the three", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[0].set_yticks(rows, [s.method for s in summaries], fontsize=8)
    figure.suptitle(
        f"TwoDigits, three tasks through a {width}-unit trunk: held-out accuracy, mean ± std over seeds "
        "(dots: seeds; dashed: the plain sum)",
        fontsize=9,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


# --------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps, one seed, two methods; writes nothing")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="initial weights and batch order")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--max-steps", type=int, default=None, help="stop each run after this many steps")
    parser.add_argument("--train-size", type=int, default=8000)
    parser.add_argument("--test-size", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=16, help="the trunk's last width (narrow: the tasks compete)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate, for every method")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    parser.add_argument("--methods", nargs="+", default=None, help="run the methods whose name contains one of these")
    parser.add_argument("--timing-rounds", type=int, default=20, help="interleaved rounds of 5 timed steps")
    parser.add_argument("--out", type=Path, default=None, help=f"folder for {TABLE} and {PLOT} (default: docs/)")
    args = parser.parse_args()
    methods, missing = all_methods()
    if args.quick:
        args.seeds, args.train_size, args.test_size, args.max_steps = args.seeds[:1], 512, 512, 5
        args.timing_rounds = 2
        args.methods = args.methods or ["UPGrad", BASELINE]
    if args.methods is not None:
        methods = [m for m in methods if any(pattern in m.name for pattern in args.methods)]
    torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    data = {"train": load(True, args.train_size), "test": load(False, args.test_size)}

    cosines: dict[str, list[list[float]]] = {"at initialisation": [], "after training on the plain sum": []}
    for seed in args.seeds:
        torch.manual_seed(seed)
        cosines["at initialisation"].append(gradient_cosines(ThreeHeadMLP(args.width), *data["train"]))
    if missing:
        print("not run (their rule does not import):", ", ".join(missing))

    summaries = []
    for method in methods:
        summary = Summary(method.name)
        for seed in args.seeds:
            run, model = train(method, seed, args, data)
            if method.name == BASELINE:
                cosines["after training on the plain sum"].append(gradient_cosines(model, *data["train"]))
            summary.runs.append(run)
            print(
                f"{method.name:40s} seed {seed}: accuracy {' '.join(f'{a:.3f}' for a in run.accuracy)}, "
                f"training losses {' '.join(f'{v:.3f}' for v in run.train_losses)}",
                flush=True,
            )
        summaries.append(summary)
    timings = step_times(methods, args, *data["train"])
    for summary in summaries:
        summary.step_ms = timings[summary.method]

    cos_lines = [
        f"Cosines of the task gradients on the trunk (whole training set) {when}, mean ± std over seeds: "
        + ", ".join(f"{TASKS[i]}/{TASKS[j]} {cell([c[n] for c in values], 2)}" for n, (i, j) in enumerate(PAIRS))
        + f" (per seed: {'; '.join(', '.join(f'{v:.2f}' for v in c) for c in values)})."
        for when, values in cosines.items()
        if values
    ]
    length = f"{args.max_steps} steps" if args.max_steps else f"{args.epochs} epochs"
    header = [
        f"Made {datetime.date.today().isoformat()} by ``{' '.join(['python', *sys.argv])}``"
        f" in {time.perf_counter() - wall:.0f} s: torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
        f"seeds {', '.join(map(str, args.seeds))}; {args.train_size} training images, {args.test_size} held out; "
        f"{length} of batch {args.batch_size}, Adam lr {args.lr:g}, cosine schedule.",
        *(line for text in cos_lines for line in ("", text)),
    ]
    text = table_rst(summaries, header, missing)
    print()
    print(text)
    if args.quick and args.out is None:
        return
    table_path = (args.out or DOCS / "_generated") / TABLE
    table_path.parent.mkdir(parents=True, exist_ok=True)
    table_path.write_text(text, encoding="utf-8")
    plot_path = (args.out or DOCS / "_static") / PLOT
    plot(summaries, args.width, plot_path)
    print(f"wrote {table_path} and {plot_path}")


if __name__ == "__main__":
    main()
