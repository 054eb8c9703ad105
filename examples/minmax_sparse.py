"""MinMaxWeighting with SparsityController: the two sparse pipelines of Guo et al. (Neurocomputing 2025).

The quickstart's two-task CNN on :class:`torch_moo.datasets.TwoDigits`, task weights learned by
:class:`torch_moo.MinMaxWeighting` (the worse task gets more weight), and a sparse network
from either pipeline of the paper:

1. **reweighted l1, then hard pruning and masked retraining**: train with the penalty
   ``lam * ReweightedL1`` added to the weighted task losses (its references refreshed every
   epoch), then attach a :class:`torch_moo.SparsityController` that prunes by magnitude once
   (``regrow=None``) and keeps the pruned weights at zero while the network retrains;
2. **dynamic sparse training**: the controller keeps the target sparsity from the first step,
   dropping by magnitude and regrowing by gradient (``regrow="gradient"``).

Printed: held-out accuracy of both tasks, the worse of the two, the measured sparsity and the
final task weights, next to a dense MinMaxWeighting run.

Its output with the defaults, and what it shows, are in the documentation's MinMaxWeighting
page (``docs/minmax.rst``, "Sparse multi-task networks").

    python examples/minmax_sparse.py            # about 20 s on 2 CPU cores
    python examples/minmax_sparse.py --smoke    # a few seconds, for the tests
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn.functional import cross_entropy

import torch_moo as tm
from torch_moo.datasets import TwoDigits, TwoHeadCNN


def epoch(model, opt, data, args, order, penalty=None) -> None:
    images, left, right = data
    for batch in torch.randperm(len(left), generator=order).split(args.batch_size):
        opt.zero_grad()
        left_logits, right_logits = model(images[batch])
        opt.backward(torch.stack([cross_entropy(left_logits, left[batch]), cross_entropy(right_logits, right[batch])]))
        if penalty is not None:  # backward accumulates: the penalty's gradient joins the weighted tasks'
            (args.lam * penalty()).backward()
        opt.step()
    opt.update_weights()  # the paper's schedule: one ascent step on the task weights per epoch


def run(pipeline: str, train_data, test_data, args) -> dict:
    torch.manual_seed(args.seed)
    model = TwoHeadCNN()
    opt = tm.MinMaxWeighting(
        model.parameters(), num_objectives=2, gamma=5.0, ascent_step=0.1, update_every=None, lr=args.lr
    )  # ascent only at epoch ends (update_weights)
    order = torch.Generator().manual_seed(args.seed)
    sparse = None
    if pipeline == "reweighted l1 + prune":
        penalty = tm.objectives.ReweightedL1(model, reduction="mean")
        for _ in range(args.epochs):
            epoch(model, opt, train_data, args, order, penalty)
            penalty.refresh()
        sparse = tm.SparsityController(opt, model=model, sparsity=args.sparsity)  # magnitude pruning, once
        for _ in range(args.retrain_epochs):
            epoch(model, opt, train_data, args, order)
    else:
        if pipeline == "dynamic sparse":
            steps = (args.epochs + args.retrain_epochs) * -(-len(train_data[1]) // args.batch_size)
            sparse = tm.SparsityController(
                opt,
                model=model,
                sparsity=args.sparsity,
                regrow="gradient",
                update_every=args.update_every,
                stop_after=int(0.75 * steps),
            )
        for _ in range(args.epochs + args.retrain_epochs):
            epoch(model, opt, train_data, args, order)
    images, left, right = test_data
    left_logits, right_logits = model.predict(images)
    accuracy = [
        (left_logits.argmax(1) == left).float().mean().item(),
        (right_logits.argmax(1) == right).float().mean().item(),
    ]
    weights = tm.objectives.sparsifiable_parameters(model)
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    return {
        "name": pipeline,
        "accuracy": accuracy,
        "sparsity": zeros,
        "weights": opt.task_weights.tolist(),
        "controller": None if sparse is None else sparse.sparsity(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--epochs", type=int, default=4, help="training epochs (before retraining, pipeline 1)")
    parser.add_argument("--retrain-epochs", type=int, default=2)
    parser.add_argument("--lam", type=float, default=0.05, help="weight of the reweighted-l1 penalty")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--update-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny data and one epoch each, for the tests")
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.retrain_epochs, args.update_every = 1, 1, 2
    start = time.perf_counter()
    train_size, test_size = (512, 256) if args.smoke else (None, None)
    train_data = TwoDigits(train=True, size=train_size, seed=args.seed).tensors()
    test_data = TwoDigits(train=False, size=test_size, seed=args.seed).tensors()

    total = args.epochs + args.retrain_epochs
    print(f"MinMaxWeighting, {total} epochs, target sparsity {args.sparsity:.0%}, seed {args.seed}")
    print(f"{'pipeline':<24}{'left':>7}{'right':>7}{'worst':>7}{'sparsity':>10}{'task weights':>16}")
    for pipeline in ("dense", "reweighted l1 + prune", "dynamic sparse"):
        r = run(pipeline, train_data, test_data, args)
        left, right = r["accuracy"]
        weights = "/".join(f"{w:.3f}" for w in r["weights"])
        print(f"{r['name']:<24}{left:>7.3f}{right:>7.3f}{min(left, right):>7.3f}{r['sparsity']:>10.1%}{weights:>16}")
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
