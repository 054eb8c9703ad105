"""MultiGradientDescent on the two-task digits, and with intra-training pruning (Reiners et al.).

The quickstart's two-task CNN on :class:`torch_moo.datasets.TwoDigits`, trained with

1. Adam on the summed loss (the weighted-sum baseline);
2. :class:`torch_moo.MultiGradientDescent`, full mode: one backward pass per task, MGDA over
   the shared trunk, each head its own gradient;
3. the representation mode (MGDA-UB): ``opt.backward(losses, features=z)`` with the trunk's output;
4. the bi-objective pruning of Reiners, Klamroth & Stiglmayr: cross-entropy (both tasks) vs the
   l1 norm of the weights, MGDA between the two, and a :class:`torch_moo.SparsityController`
   with ``threshold`` that zeroes every weight with ``|w| <= 1e-3`` after each step.

Every run follows a cosine learning-rate schedule to 0. Printed: held-out accuracy of both
tasks, the fraction of zero weights among the pruned ones, and the Pareto stationarity (KKT)
residual after each epoch: :math:`\\|d\\|^2`, with :math:`d` the min-norm element of the convex
hull of the objectives' gradients over the parameters they share, on 2,048 training images
(0 exactly at a Pareto-stationary point), next to the mean squared gradient norm.

Its output with the defaults, and what it shows, are in the documentation's MGDA page
(``docs/mgda.rst``, "Example: two tasks, and pruning as a second objective").

    python examples/mgda.py            # about 25 s on 2 CPU cores
    python examples/mgda.py --smoke    # a few seconds, for the tests
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn.functional import cross_entropy

import torch_moo as tm
from torch_moo.datasets import TwoDigits, TwoHeadCNN

RUNS = ("weighted sum (Adam)", "MGDA", "MGDA-UB (features)", "MGDA: CE vs l1, pruned")


def dense_weights(model) -> list[torch.Tensor]:
    """The weight matrices of the linear layers: what the paper prunes and penalises."""
    return [model.trunk[-2].weight, model.left.weight, model.right.weight]


def task_losses(model, images, left, right, pruning: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The trunk's features and the loss vector: the two tasks' cross-entropies, or their sum and the l1 norm."""
    z = model.trunk(images)
    tasks = (cross_entropy(model.left(z), left), cross_entropy(model.right(z), right))
    if pruning:
        return z, torch.stack([tasks[0] + tasks[1], tm.objectives.l1(dense_weights(model), reduction="sum")])
    return z, torch.stack(tasks)


def kkt_residual(model, data, pruning: bool) -> tuple[float, float]:
    r""":math:`\|d\|^2` (min-norm :math:`d`) and :math:`\mathrm{mean}_i \|g_i\|^2` over the parameters
    both objectives reach."""
    images, left, right = (part[:2048] for part in data)
    _, losses = task_losses(model, images, left, right, pruning)
    shared = dense_weights(model) if pruning else list(model.trunk.parameters())
    rows = [torch.autograd.grad(loss, shared, retain_graph=True) for loss in losses]
    jacobian = torch.stack([torch.cat([g.reshape(-1) for g in row]) for row in rows])
    alpha, _ = tm.functional.mgda_weights(jacobian)
    d = alpha @ jacobian
    return float(d @ d), float(jacobian.square().sum(1).mean())


def run(name: str, train_data, test_data, args) -> dict:
    torch.manual_seed(args.seed)
    model = TwoHeadCNN()
    pruning = name == RUNS[3]
    sparse = None
    if name == RUNS[0]:
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    elif pruning:  # SGD, as in the paper: Adam's per-weight scaling blows up the small l1 share and prunes everything
        opt = tm.MultiGradientDescent(
            model.parameters(), num_objectives=2, base=torch.optim.SGD, lr=args.sgd_lr, momentum=0.9
        )
        sparse = tm.SparsityController(opt, params=dense_weights(model), sparsity=0.0, threshold=args.threshold)
    else:
        opt = tm.MultiGradientDescent(model.parameters(), num_objectives=2, lr=args.lr)
    kkt = [kkt_residual(model, train_data, pruning)]
    images, left, right = train_data
    order = torch.Generator().manual_seed(args.seed)
    steps = args.epochs * -(-len(left) // args.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)  # to 0: the iterate settles
    for _ in range(args.epochs):
        for batch in torch.randperm(len(left), generator=order).split(args.batch_size):
            opt.zero_grad()
            z, losses = task_losses(model, images[batch], left[batch], right[batch], pruning)
            if name == RUNS[0]:
                losses.sum().backward()
            else:
                opt.backward(losses, features=z if name == RUNS[2] else None)
            opt.step()
            schedule.step()
        kkt.append(kkt_residual(model, train_data, pruning))
    images, left, right = test_data
    left_logits, right_logits = model.predict(images)
    accuracy = [
        (left_logits.argmax(1) == left).float().mean().item(),
        (right_logits.argmax(1) == right).float().mean().item(),
    ]
    zeros = 0.0 if sparse is None else sparse.sparsity()
    return {"accuracy": accuracy, "zeros": zeros, "kkt": kkt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-3, help="Adam's, for runs 1-3")
    parser.add_argument("--sgd-lr", type=float, default=0.05, help="SGD's (momentum 0.9), for the pruning run")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--threshold", type=float, default=1e-3, help="intra-training pruning: |w| at most this is zeroed"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny data and one epoch, for the tests")
    args = parser.parse_args()
    if args.smoke:
        args.epochs = 1
    begin = time.perf_counter()
    train_size, test_size = (512, 256) if args.smoke else (None, None)
    train_data = TwoDigits(train=True, size=train_size, seed=args.seed).tensors()
    test_data = TwoDigits(train=False, size=test_size, seed=args.seed).tensors()
    print(
        f"TwoDigits, {args.epochs} epochs, Adam lr {args.lr} "
        f"(SGD lr {args.sgd_lr} for the pruning run), seed {args.seed}"
    )
    print(f"{'run':<24}{'left':>7}{'right':>7}{'zeros':>8}   |d|^2 / mean_i |g_i|^2 at the start and after each epoch")
    for name in RUNS:
        r = run(name, train_data, test_data, args)
        left, right = r["accuracy"]
        kkt = "  ".join(f"{d:.2g}/{g:.2g}" for d, g in r["kkt"])
        print(f"{name:<24}{left:>7.3f}{right:>7.3f}{r['zeros']:>8.1%}   {kkt}", flush=True)
    print(f"total {time.perf_counter() - begin:.1f} s")


if __name__ == "__main__":
    main()
