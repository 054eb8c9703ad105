"""Sparse training with ``torch_moo.SparsityController`` next to dense Adam and rigl-torch.

Two parts (``--part accuracy|overhead|sweep|all``; ``all`` runs accuracy, then overhead):

**accuracy** -- a two-head CNN (:class:`torch_moo.datasets.TwoHeadCNN`: conv 1->16, conv 16->32, linear 512->128,
two heads 128->10) on :class:`torch_moo.datasets.TwoDigits` (20,000 training, 4,000 held-out
images, data seed 0), trained with Adam (lr 5e-3, batch 128, cosine learning rate per epoch,
summed cross-entropy of the two tasks) for ``--epochs`` epochs. Every run starts from the same
weights for a given seed and sees the same batches. Methods, at each sparsity in
``--sparsities`` (default 0.9, 0.95, 0.98):

* ``dense``: plain Adam (once per seed).
* ``static``: ``SparsityController(regrow=None)``, magnitude pruning of the initial weights when
  it attaches, then masked training.
* ``random`` (SET), ``gradient`` (RigL), ``exploration`` (DST-EE, ``c`` = ``EXPLORATION``):
  ``SparsityController(regrow=...)``, ``update_every`` 50, ``stop_after`` 75% of the steps.
* ``gradient-uniform``: ``regrow="gradient"`` with rigl-torch's layer layout (uniform sparsity,
  first convolution dense: ``distribution={"trunk.0.weight": 0.0}``), to separate the
  layout from the method. The other torch_moo rows use the default ERK layout.
* ``rigl-torch``: ``rigl_torch.RigL.RigLScheduler(dense_allocation=1 - s, delta=50,
  T_end=75% of the steps, ignore_linear_layers=False)`` (its default ``True`` would leave every
  linear layer, including the heads, dense), used as its README says: ``if scheduler():
  optimizer.step()``, so it skips the optimizer step on each of its topology updates. Its only
  layout is uniform with the first layer dense.

Reported: held-out accuracy of both tasks (mean ± standard deviation over ``--seeds``), the measured
sparsity (the fraction of exact zeros in the five weight tensors: both convolutions, the
trunk's linear layer and both heads) and, for dynamic methods, the coverage (the fraction of
those weights ever active; for rigl-torch computed from its masks after every update).

The exploration coefficient was chosen once with ``--part sweep`` (sparsity 0.95 and 0.98,
10 epochs, seeds 0, 1, 2, trained on the first 16,000 training images and scored on the other
4,000, never on the held-out split). Mean over the seeds of the two tasks' mean validation
accuracy (per-seed values in brackets):

=====  =========================  =========================
c      0.95                       0.98
=====  =========================  =========================
0      0.863 (.866 .845 .877)     0.687 (.718 .646 .698)
1e-3   0.852 (.871 .832 .853)     0.617 (.572 .598 .681)
1e-2   0.861 (.880 .851 .852)     0.677 (.672 .655 .705)
1e-1   0.872 (.879 .856 .882)     0.658 (.599 .665 .711)
=====  =========================  =========================

(``c = 0`` is ``regrow="gradient"``.) No ``c`` beats ``c = 0`` by more than the spread between
seeds; ``c = 1e-2`` has the best mean over both sparsities among ``c > 0`` and is used
(``EXPLORATION``). For scale: at the updates of a 0.95 run the |gradient| of pruned weights
has median 0, 90th percentile ~3e-3 and 99th ~5e-2, while the bonus of a never-active weight
is ``c * sqrt(ln t)`` ~ 2.6 c.

**overhead** -- per training step (zero_grad + forward + cross-entropy + backward + step),
sparsity 0.9, synthetic batch of 256 (seed 0), with Adam (lr 1e-3) and with SGD (lr 1e-2,
momentum 0.9), on benchmarks/_models.py's models with one head:

* **mlp**: 784-512-512-10 (ReLU), and
* **cnn**: conv 1->16 3x3, ReLU, maxpool, conv 16->32 3x3, ReLU, maxpool, linear 1568->128,
  ReLU, linear 128->10; input 1x28x28.

Between topology updates: dense vs ``SparsityController(regrow="gradient")`` (default ERK
layout over every weight matrix) vs ``torch_moo-same-layers`` (the controller on the weights
rigl-torch masks: all but the first layer's, uniform) vs rigl-torch, all with their update
interval far beyond the timed window, so only the masking in their hooks is timed. After a
warm-up, one step of each in alternating order (benchmarks/_timing.py); medians, ratio to
dense, a bootstrap 95% interval of the ratio and the ratio of minima. SGD shows the cost of the
masking itself; with Adam the base optimizer's own step also gets slower, because ``sqrt`` of
the exactly-zero second moments of masked weights is several times slower than of non-zero
ones on this CPU (the script times both). Then the cost of a topology update: each
method runs with an update every ``UPDATE_PROBE`` steps (no stop, so a constant drop fraction
of 0.3); the update call itself (``SparsityController._update``, ``RigLScheduler._rigl_step``)
is timed on its own, and so is the whole iteration that contains it. Last, the checks: after
200 steps with an update every 100 (stop at 1000), the fraction of pruned weights whose Adam
``exp_avg`` / ``exp_avg_sq`` is non-zero and whose weight is non-zero, and whether
``optimizer.step(closure)`` works.

rigl-torch's ``util.py`` imports torchvision only for two ``isinstance`` checks against ResNet
blocks (whose branch does the same as the fallback); when torchvision is not installed this
script puts a stand-in module with those two classes in ``sys.modules`` before importing it.

Usage::

    python benchmarks/sparse_training.py                          # both parts (about 20 min on 2 cores)
    python benchmarks/sparse_training.py --part accuracy --seeds 0,1,2
    python benchmarks/sparse_training.py --part overhead
    python benchmarks/sparse_training.py --part sweep              # the exploration coefficient
    python benchmarks/sparse_training.py --quick                   # smoke check, seconds

Needs ``pip install rigl-torch`` (the ``bench`` extra) for the rigl-torch rows; without it they
are skipped. Not a test: pytest does not collect it (no ``test_`` names, outside ``tests/``).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import re
import statistics
import sys
import time
import types
import warnings

import torch
import torch.nn.functional as F
from _models import build
from _timing import interleave, median_time, ratio_row
from torch import Tensor, nn

import torch_moo as tm
from torch_moo.datasets import TwoDigits, TwoHeadCNN

EXPLORATION = 1e-2  # DST-EE's c, from the sweep in the docstring
UPDATE_EVERY = 50  # steps between topology updates in the accuracy part
STOP_FRACTION = 0.75  # no topology update after this fraction of the training steps
UPDATE_PROBE = 10  # steps between topology updates when timing the update itself
DST = ("random", "gradient", "exploration")


# ----------------------------------------------------------------------------- rigl-torch
def import_rigl():
    """``rigl_torch.RigL.RigLScheduler``, or None when rigl-torch is not installed."""
    if importlib.util.find_spec("rigl_torch") is None:
        return None
    if importlib.util.find_spec("torchvision") is None:  # only for isinstance checks in rigl_torch.util
        resnet = types.ModuleType("torchvision.models.resnet")
        resnet.Bottleneck = type("Bottleneck", (nn.Module,), {})
        resnet.BasicBlock = type("BasicBlock", (nn.Module,), {})
        models = types.ModuleType("torchvision.models")
        models.resnet = resnet
        vision = types.ModuleType("torchvision")
        vision.models = models
        sys.modules.update({"torchvision": vision, "torchvision.models": models, "torchvision.models.resnet": resnet})
    from rigl_torch.RigL import RigLScheduler

    return RigLScheduler


# ------------------------------------------------------------------------------- accuracy
def weight_sparsity(model: nn.Module) -> float:
    """The fraction of exact zeros over the model's weight matrices and kernels."""
    weights = tm.objectives.sparsifiable_parameters(model)
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


@torch.no_grad()
def accuracy(model: nn.Module, data: tuple[Tensor, Tensor, Tensor]) -> tuple[float, float]:
    images, left, right = data
    outputs = [model(chunk) for chunk in images.split(4096)]
    left_logits = torch.cat([out[0] for out in outputs])
    right_logits = torch.cat([out[1] for out in outputs])
    return (left_logits.argmax(1) == left).float().mean().item(), (
        right_logits.argmax(1) == right
    ).float().mean().item()


def train_one(method: str, sparsity: float, seed: int, train_data, eval_data, args, RigL) -> dict:
    """Train one model with ``method`` at ``sparsity``; its accuracy, measured sparsity and coverage."""
    images, left, right = train_data
    steps_per_epoch = -(-len(left) // args.batch_size)
    total = args.epochs * steps_per_epoch
    stop = int(STOP_FRACTION * total)
    torch.manual_seed(seed)  # same initial weights for every method of a seed
    model = TwoHeadCNN()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    # before RigLScheduler: rigl-torch replaces opt.step by a plain function, which
    # LRScheduler's step-tracking patch cannot wrap (AttributeError: no __func__)
    # (and LRScheduler then warns at every epoch that opt.step was overridden; harmless here)
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    torch.manual_seed(seed + 1000)  # same random topology stream for every dynamic method
    sparse = rigl = None
    if method == "rigl-torch":
        rigl = RigL(
            model, opt, dense_allocation=1 - sparsity, T_end=stop, delta=UPDATE_EVERY, ignore_linear_layers=False
        )
        ever = [None if m is None else m.clone() for m in rigl.backward_masks]
    elif method != "dense":
        regrow = None if method == "static" else method.split("-")[0]
        distribution = {"trunk.0.weight": 0.0} if method == "gradient-uniform" else "erk"
        sparse = tm.SparsityController(
            opt,
            model=model,
            sparsity=sparsity,
            regrow=regrow,
            distribution=distribution,
            update_every=UPDATE_EVERY,
            stop_after=stop if regrow else None,
            exploration=args.exploration if regrow == "exploration" else None,
        )
    order = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(args.epochs):
        for batch in torch.randperm(len(left), generator=order).split(args.batch_size):
            opt.zero_grad()
            left_logits, right_logits = model(images[batch])
            (F.cross_entropy(left_logits, left[batch]) + F.cross_entropy(right_logits, right[batch])).backward()
            if rigl is None or rigl():
                opt.step()
            else:  # a topology update (and no optimizer step)
                ever = [e if e is None else e | m for e, m in zip(ever, rigl.backward_masks)]
        lr_schedule.step()
    seconds = time.perf_counter() - start
    result = {
        "accuracy": accuracy(model, eval_data),
        "sparsity": weight_sparsity(model),
        "coverage": None,
        "seconds": seconds,
    }
    if sparse is not None and sparse.regrow is not None:
        result["coverage"] = sparse.coverage()
    if rigl is not None:
        sizes = [w.numel() for w in rigl.W]
        result["coverage"] = sum(n if e is None else int(e.sum()) for n, e in zip(sizes, ever)) / sum(sizes)
    return result


def summary(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ± {statistics.stdev(values):.3f}"


def part_accuracy(args, RigL) -> None:
    warnings.filterwarnings(
        "ignore", message=re.escape("Seems like `optimizer.step()` has been overridden"), category=UserWarning
    )
    methods = [m for m in ["static", *DST, "gradient-uniform"] + (["rigl-torch"] if RigL else []) if m in args.methods]
    size = (1024, 512) if args.quick else (None, None)
    train_data = TwoDigits(train=True, size=size[0], seed=0).tensors()
    test_data = TwoDigits(train=False, size=size[1], seed=0).tensors()
    steps = args.epochs * -(-len(train_data[1]) // args.batch_size)
    print(
        f"accuracy: TwoDigits {len(train_data[1])} train / {len(test_data[1])} held-out, "
        f"{args.epochs} epochs = {steps} steps, batch {args.batch_size}, Adam lr {args.lr}, "
        f"update_every {UPDATE_EVERY}, stop_after {int(STOP_FRACTION * steps)}, "
        f"exploration c {args.exploration:g}, seeds {args.seeds}"
    )
    runs = [("dense", 0.0)] * ("dense" in args.methods) + [(m, s) for s in args.sparsities for m in methods]
    print()
    print("| sparsity | method | left acc | right acc | measured sparsity | coverage | s/run |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for method, sparsity in runs:
        results = [train_one(method, sparsity, seed, train_data, test_data, args, RigL) for seed in args.seeds]
        coverage = [r["coverage"] for r in results if r["coverage"] is not None]
        print(
            f"| {'-' if method == 'dense' else sparsity} | {method} | {summary([r['accuracy'][0] for r in results])} | "
            f"{summary([r['accuracy'][1] for r in results])} | {summary([r['sparsity'] for r in results])} | "
            f"{summary(coverage) if coverage else '-'} | {statistics.fmean(r['seconds'] for r in results):.1f} |",
            flush=True,
        )


def part_sweep(args) -> None:
    """Validation accuracy of regrow='exploration' for a few c (c = 0: regrow='gradient'), mean over the seeds."""
    size = 1024 if args.quick else 20_000
    images, left, right = TwoDigits(train=True, size=size, seed=0).tensors()
    cut = int(0.8 * size)
    fit, validation = (images[:cut], left[:cut], right[:cut]), (images[cut:], left[cut:], right[cut:])
    print(
        f"sweep: train on {cut}, validate on {size - cut} training-split images, "
        f"{args.epochs} epochs, seeds {args.seeds}"
    )
    print()
    print("| sparsity | c | left acc | right acc | mean | per seed (mean of tasks) |")
    print("|---:|---:|---:|---:|---:|---|")
    for sparsity in [s for s in args.sparsities if s >= 0.95] or args.sparsities:
        for c in (0.0, 1e-3, 1e-2, 1e-1):
            run_args = copy.copy(args)
            run_args.exploration = c
            method = "gradient" if c == 0 else "exploration"
            runs = [
                train_one(method, sparsity, seed, fit, validation, run_args, None)["accuracy"] for seed in args.seeds
            ]
            a, b = statistics.fmean(r[0] for r in runs), statistics.fmean(r[1] for r in runs)
            each = " / ".join(f"{(r[0] + r[1]) / 2:.3f}" for r in runs)
            print(f"| {sparsity} | {c:g} | {a:.3f} | {b:.3f} | {(a + b) / 2:.3f} | {each} |", flush=True)


# ------------------------------------------------------------------------------- overhead
def make_step(
    kind: str, net: nn.Module, x: Tensor, y: Tensor, RigL, every: int, stop: int | None = None, base: str = "adam"
):
    """A step function for ``kind`` (dense, torch_moo or rigl-torch) on its own copy of ``net``;
    with its optimizer and controller."""
    net = copy.deepcopy(net)
    if base == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.9)
    controller = None
    if kind == "torch_moo":
        controller = tm.SparsityController(
            opt, model=net, sparsity=0.9, regrow="gradient", update_every=every, stop_after=stop
        )
    elif kind == "torch_moo-same-layers":  # rigl-torch's masked set: every weight but the first layer's, uniform
        controller = tm.SparsityController(
            opt,
            model=net,
            params=tm.objectives.sparsifiable_parameters(net)[1:],
            sparsity=0.9,
            distribution="uniform",
            regrow="gradient",
            update_every=every,
            stop_after=stop,
        )
    elif kind == "rigl-torch":
        controller = RigL(net, opt, dense_allocation=0.1, T_end=stop or 10**12, delta=every, ignore_linear_layers=False)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(net(x)[0], y[:, 0]).backward()
        if kind != "rigl-torch" or controller():
            opt.step()

    step.net, step.opt, step.controller = net, opt, controller
    return step


OPTIMIZERS = {"adam": "Adam lr 1e-3", "sgd": "SGD lr 1e-2 momentum 0.9"}


def timed_method(owner: object, name: str, out: list[float]) -> None:
    """Shadow ``owner.name`` by an instance attribute that records the duration of each call in ``out``."""
    method = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        value = method(*args, **kwargs)
        out.append(time.perf_counter() - start)
        return value

    setattr(owner, name, wrapper)


def pruned_state(step) -> dict[str, float]:
    """Over pruned weights: the fractions with non-zero exp_avg, exp_avg_sq and weight."""
    if step.controller.__class__.__name__ == "RigLScheduler":
        pairs = [(w, m) for w, m in zip(step.controller.W, step.controller.backward_masks) if m is not None]
    else:
        masks = step.controller.masks
        pairs = [(p, masks[n]) for n, p in step.net.named_parameters() if n in masks]
    pruned = sum(int((~m).sum()) for _, m in pairs)
    out = {}
    for key in ("exp_avg", "exp_avg_sq"):
        out[key] = sum(int((step.opt.state[w][key][~m] != 0).sum()) for w, m in pairs) / pruned
    out["weight"] = sum(int((w.detach()[~m] != 0).sum()) for w, m in pairs) / pruned
    return out


def closure_works(step, x: Tensor, y: Tensor) -> str:
    """Whether ``optimizer.step(closure)`` runs (the controller's hooks or wrapper included)."""

    def closure():
        step.opt.zero_grad()
        loss = F.cross_entropy(step.net(x)[0], y[:, 0])
        loss.backward()
        return loss

    try:
        step.opt.step(closure)
    except Exception as error:
        return f"no: {type(error).__name__}: {error}"
    return "yes"


def part_overhead(args, RigL) -> None:
    warmup, rounds = (3, 10) if args.quick else (args.warmup, args.rounds)
    kinds = ["dense", "torch_moo", "torch_moo-same-layers"] + (["rigl-torch"] if RigL else [])
    print(f"overhead: sparsity 0.9, batch 256, warm-up {warmup}, {rounds} alternating steps per method")
    print()
    print("between updates (masking only):")
    print()
    print("| model | optimizer | method | dense ms | method ms | ratio | 95% CI | min ratio |")
    print("|---|---|---|---:|---:|---:|---|---:|")
    never = 10**9
    for model in args.models:
        net, x, y = build(model, 1, args.seed)
        for base in ("adam", "sgd"):
            steps = {kind: make_step(kind, net, x, y, RigL, never, base=base) for kind in kinds}
            times = interleave(steps, warmup, rounds, 1)
            a = times["dense"]
            for kind in kinds[1:]:
                row = ratio_row(a, times[kind], 200 if args.quick else 2000, args.seed)
                print(f"| {model} | {OPTIMIZERS[base]} | {kind} | {row} |", flush=True)
    zeros, ones = torch.zeros(512 * 784), torch.ones(512 * 784)
    sqrt_zeros, sqrt_ones = (median_time(lambda v=v: v.sqrt(), 20 if args.quick else 200) for v in (zeros, ones))
    print()
    print(
        f"Adam's sqrt of its second moment, on 784x512 entries: {1e6 * sqrt_zeros:.0f} us when they are all 0 "
        f"(a masked weight's), {1e6 * sqrt_ones:.0f} us when they are 1"
    )

    updates = 3 if args.quick else args.updates
    print()
    print(f"one topology update (update every {UPDATE_PROBE} steps, drop fraction 0.3, median of {updates}):")
    print()
    print("| model | method | update call ms | iteration with update ms | other iterations ms |")
    print("|---|---|---:|---:|---:|")
    for model in args.models:
        net, x, y = build(model, 1, args.seed)
        calls: dict[str, list[float]] = {}
        steps = {}
        for kind in kinds[1:]:
            steps[kind] = make_step(kind, net, x, y, RigL, UPDATE_PROBE)
            calls[kind] = []
            owner = steps[kind].controller
            timed_method(owner, "_rigl_step" if kind == "rigl-torch" else "_update", calls[kind])
        # blocks of UPDATE_PROBE steps: each block holds exactly one update of each method
        times = interleave(steps, 0, 2 * updates + 2, UPDATE_PROBE)
        for kind in kinds[1:]:
            per_step = times[kind]
            # torch_moo updates in the step after step_count reaches a multiple (index 10, 20, ...);
            # rigl-torch when its counter reaches one (index 9, 19, ...)
            offset = UPDATE_PROBE - 1 if kind == "rigl-torch" else 0
            marked = [i for i in range(len(per_step)) if i >= UPDATE_PROBE and (i - offset) % UPDATE_PROBE == 0]
            with_update = [per_step[i] for i in marked][-updates:]
            skip = set(marked)
            others = [t for i, t in enumerate(per_step) if i not in skip and i >= UPDATE_PROBE]
            print(
                f"| {model} | {kind} | {1e3 * statistics.median(calls[kind][-updates:]):.2f} | "
                f"{1e3 * statistics.median(with_update):.2f} | {1e3 * statistics.median(others):.2f} |",
                flush=True,
            )

    print()
    print("after 200 steps (update every 100, stop at 1000): fraction of pruned weights with non-zero ...")
    print()
    print("| model | method | updates | exp_avg | exp_avg_sq | weight | step(closure) works |")
    print("|---|---|---:|---:|---:|---:|---|")
    n = 20 if args.quick else 200
    for model in args.models:
        net, x, y = build(model, 1, args.seed)
        for kind in [k for k in kinds if k in ("torch_moo", "rigl-torch")]:
            step = make_step(kind, net, x, y, RigL, n // 2, stop=5 * n)
            calls = []
            timed_method(step.controller, "_rigl_step" if kind == "rigl-torch" else "_update", calls)
            for _ in range(n):
                step()
            state = pruned_state(step)
            print(
                f"| {model} | {kind} | {len(calls)} | {state['exp_avg']:.4f} | {state['exp_avg_sq']:.4f} | "
                f"{state['weight']:.4f} | {closure_works(step, x, y)} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", default="all", choices=["accuracy", "overhead", "sweep", "all"])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--seeds", default="0,1,2", help="accuracy: comma-separated seeds (init, batches, topology)")
    parser.add_argument("--sparsities", default="0.9,0.95,0.98", help="accuracy: comma-separated")
    parser.add_argument(
        "--methods",
        default="dense,static,random,gradient,exploration,gradient-uniform,rigl-torch",
        help="accuracy: comma-separated",
    )
    parser.add_argument("--epochs", type=int, default=10, help="accuracy: training epochs")
    parser.add_argument("--lr", type=float, default=5e-3, help="accuracy: Adam learning rate")
    parser.add_argument("--batch-size", type=int, default=128, help="accuracy")
    parser.add_argument("--exploration", type=float, default=EXPLORATION, help="accuracy: DST-EE coefficient c")
    parser.add_argument("--models", default="mlp,cnn", help="overhead: comma-separated, mlp and/or cnn")
    parser.add_argument("--warmup", type=int, default=20, help="overhead: warm-up steps per method")
    parser.add_argument("--rounds", type=int, default=400, help="overhead: timed steps per method")
    parser.add_argument("--updates", type=int, default=15, help="overhead: topology updates timed per method")
    parser.add_argument("--seed", type=int, default=0, help="overhead: model and batch seed")
    parser.add_argument("--quick", action="store_true", help="tiny data, one epoch, few repetitions: a smoke check")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.sparsities = [float(s) for s in args.sparsities.split(",") if s.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.quick:
        args.epochs, args.seeds, args.sparsities = 1, args.seeds[:1], args.sparsities[:1]

    torch.set_num_threads(args.threads)
    RigL = import_rigl()
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"rigl-torch {'installed' if RigL else 'not installed'}"
    )
    print()
    start = time.perf_counter()
    if args.part == "sweep":
        part_sweep(args)
    if args.part in ("accuracy", "all"):
        part_accuracy(args, RigL)
        print()
    if args.part in ("overhead", "all"):
        part_overhead(args, RigL)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
