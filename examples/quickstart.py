"""Quickstart: a sparse two-task CNN with ChebyshevALM, next to a dense Adam baseline.

Data: :class:`torch_moo.datasets.TwoDigits`, two of scikit-learn's bundled 8x8 digits side by
side on a 16x16 canvas (no download). Tasks: the left digit and the right digit. Objectives:
an l1 sparsity term (mean |w|) and the two cross-entropies, traded off by ChebyshevALM for a
few preferences; the baseline is Adam on the summed cross-entropy. After training, weights
with |w| < 1e-3 are pruned and both tasks are evaluated on held-out images built from digits
that no training image uses. The preference sweep is drawn to a PNG (needs matplotlib).

Its output with the defaults, and what it shows, are in the documentation's sparsity page
(``docs/sparsity.rst``, "What it buys").

    python examples/quickstart.py            # about 35 s on 2 CPU cores
    python examples/quickstart.py --smoke    # a few seconds, for the tests
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.nn.functional import cross_entropy

import torch_moo as tm
from torch_moo.datasets import TwoDigits, TwoHeadCNN

try:
    from tqdm import tqdm
except ImportError:  # the progress bar is optional
    tqdm = None


MAIN_PREFERENCE = 0.7  # weight of the l1 term in the table's ChebyshevALM run; tasks share the rest


def train(model, opt, data, *, epochs: int, batch_size: int, sparse: bool, name: str) -> None:
    images, left, right = data
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    order = torch.Generator().manual_seed(0)
    steps = -(-len(left) // batch_size)
    bar = tqdm(total=epochs * steps, desc=name, leave=False, disable=None) if tqdm else None
    for _ in range(epochs):
        for batch in torch.randperm(len(left), generator=order).split(batch_size):
            opt.zero_grad()
            left_logits, right_logits = model(images[batch])
            tasks = [cross_entropy(left_logits, left[batch]), cross_entropy(right_logits, right[batch])]
            if sparse:  # the loss vector: sparsity first, then the tasks
                opt.backward(torch.stack([tm.objectives.l1(model, reduction="mean"), *tasks]))
            else:
                sum(tasks).backward()
            opt.step()
            if bar is not None:
                bar.update()
        scheduler.step()
        if sparse:
            opt.outer_step()  # one multiplier update per epoch
    if bar is not None:
        bar.close()


@torch.no_grad()
def objectives(model, data) -> tuple[float, float, float]:
    """The three objectives on the whole training set: l1 (mean |w|), CE left, CE right."""
    images, left, right = data
    left_logits, right_logits = model.predict(images)
    l1 = tm.objectives.l1(model, reduction="mean")
    return l1.item(), cross_entropy(left_logits, left).item(), cross_entropy(right_logits, right).item()


@torch.no_grad()
def prune_and_evaluate(model, data, threshold: float) -> tuple[float, float, float]:
    """Zero the weights with |w| < threshold; held-out accuracy of both tasks and sparsity."""
    weights = tm.objectives.sparsifiable_parameters(model)
    for w in weights:
        w.masked_fill_(w.abs() < threshold, 0)
    sparsity = sum((w == 0).sum().item() for w in weights) / sum(w.numel() for w in weights)
    images, left, right = data
    left_logits, right_logits = model.predict(images)
    left_accuracy = (left_logits.argmax(1) == left).float().mean().item()
    right_accuracy = (right_logits.argmax(1) == right).float().mean().item()
    return left_accuracy, right_accuracy, sparsity


def run(train_data, test_data, args, l1_weight: float | None) -> dict:
    """Train one model (dense Adam if ``l1_weight`` is None), then measure it."""
    torch.manual_seed(args.seed)  # every run starts from the same weights
    model = TwoHeadCNN()
    if l1_weight is None:
        name, opt = "dense Adam", torch.optim.Adam(model.parameters(), lr=args.lr)
    else:
        preference = [l1_weight, (1 - l1_weight) / 2, (1 - l1_weight) / 2]
        name = "ChebyshevALM (" + ", ".join(f"{k:.3g}" for k in preference) + ")"
        opt = tm.ChebyshevALM(  # outer_every=None: train() updates the multipliers once per epoch
            model.parameters(),
            num_objectives=3,
            preference=preference,
            penalty=args.penalty,
            outer_every=None,
            lr=args.lr,
        )
    sparse = l1_weight is not None
    train(model, opt, train_data, epochs=args.epochs, batch_size=args.batch_size, sparse=sparse, name=name)
    values = objectives(model, train_data)  # before pruning
    held_out = prune_and_evaluate(model, test_data, args.threshold)
    return {"name": name, "l1_weight": l1_weight, "objectives": values, "held_out": held_out}


def plot(results: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install torch-moo[examples])")
        return
    figure, (space, outcome) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for result in results:
        l1, *tasks = result["objectives"]
        left, right, sparsity = result["held_out"]
        dense = result["l1_weight"] is None
        label = "dense Adam" if dense else f"l1 weight {result['l1_weight']:g}"
        style = {"marker": "s" if dense else "o", "color": "grey" if dense else None, "label": label}
        space.scatter(l1, sum(tasks) / 2, **style)
        outcome.scatter(100 * sparsity, 100 * (left + right) / 2, **style)
    space.set(xlabel="l1 objective (mean |w|)", ylabel="mean cross-entropy (training set)")
    space.set_title("objective space, before pruning")
    outcome.set(xlabel="weights pruned (%)", ylabel="mean held-out accuracy (%)", title="after pruning")
    outcome.legend()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--penalty", type=float, default=10.0, help="ChebyshevALM's augmented-Lagrangian penalty")
    parser.add_argument(
        "--sweep",
        type=float,
        nargs="+",
        default=[0.5, MAIN_PREFERENCE, 0.85],
        help="weights of the l1 objective to train with (the tasks share the rest)",
    )
    parser.add_argument("--threshold", type=float, default=1e-3, help="prune |w| below this after training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="PNG of the trade-off (default quickstart_tradeoff.png)")
    parser.add_argument("--smoke", action="store_true", help="tiny data and one epoch, for the tests")
    args = parser.parse_args()
    if args.smoke:
        args.epochs = 1
    if args.out is None:
        args.out = Path(tempfile.mkdtemp() if args.smoke else ".") / "quickstart_tradeoff.png"
    if MAIN_PREFERENCE not in args.sweep:
        args.sweep.append(MAIN_PREFERENCE)
    start = time.perf_counter()

    train_size, test_size = (512, 256) if args.smoke else (None, None)  # None: 20,000 and 4,000
    train_data = TwoDigits(train=True, size=train_size, seed=args.seed).tensors()
    test_data = TwoDigits(train=False, size=test_size, seed=args.seed).tensors()
    built = time.perf_counter() - start
    print(f"TwoDigits: {len(train_data[1])} training and {len(test_data[1])} held-out images (built in {built:.2f} s)")

    dense = run(train_data, test_data, args, None)
    sweep = [run(train_data, test_data, args, weight) for weight in sorted(args.sweep)]
    main_run = next(result for result in sweep if result["l1_weight"] == MAIN_PREFERENCE)

    print(f"\nheld-out accuracy after pruning |w| < {args.threshold:g} ({args.epochs} epochs)")
    print(f"{'method':<36}{'left':>8}{'right':>8}{'sparsity':>10}")
    for result in (dense, main_run):
        left, right, sparsity = result["held_out"]
        print(f"{result['name']:<36}{left:>8.3f}{right:>8.3f}{sparsity:>10.1%}")

    print("\npreference sweep: objectives on the training set before pruning, held-out accuracy after")
    print(f"  {'l1 weight':<11}{'l1':>9}{'CE left':>9}{'CE right':>9}{'left':>8}{'right':>8}{'sparsity':>10}")
    for result in (dense, *sweep):
        weight = "dense" if result["l1_weight"] is None else f"{result['l1_weight']:g}"
        l1, ce_left, ce_right = result["objectives"]
        left, right, sparsity = result["held_out"]
        print(f"  {weight:<11}{l1:>9.4f}{ce_left:>9.3f}{ce_right:>9.3f}{left:>8.3f}{right:>8.3f}{sparsity:>10.1%}")
    plot([dense, *sweep], args.out)
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
