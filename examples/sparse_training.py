"""SparsityController: a 90%-sparse two-task CNN, trained sparse from the first step, on any optimizer.

The quickstart's CNN on :class:`torch_moo.datasets.TwoDigits` (left and right digit), trained
with plain ``torch.optim.Adam`` on the summed cross-entropy. The controller is attached to the
optimizer and the loop is unchanged; it keeps 10% of the weights of every weight matrix and
kernel (ERK budgets) and compares:

* static magnitude pruning (prune once at the start, then masked training),
* random regrowth (SET), gradient regrowth (RigL) and exploration regrowth (DST-EE),

against dense Adam. It prints held-out accuracy, the measured sparsity, the coverage (fraction
of connections ever active) and checks that ``export()`` (``torch.sparse`` linear layers)
predicts what the trained model predicts.

Its output with the defaults is in the documentation's SparsityController page
(``docs/sparsity_controller.rst``, "Example").

    python examples/sparse_training.py            # about 40 s on 2 CPU cores
    python examples/sparse_training.py --smoke    # a few seconds, for the tests
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn.functional import cross_entropy

import torch_moo as tm
from torch_moo.datasets import TwoDigits, TwoHeadCNN

METHODS = {  # name: SparsityController keywords (None: dense)
    "dense Adam": None,
    "static magnitude": {"regrow": None},
    "random (SET)": {"regrow": "random"},
    "gradient (RigL)": {"regrow": "gradient"},
    "exploration (DST-EE)": {"regrow": "exploration", "exploration": 1e-2},
}


def run(name: str, settings: dict | None, train_data, test_data, args) -> dict:
    torch.manual_seed(args.seed)
    model = TwoHeadCNN()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    images, left, right = train_data
    steps = args.epochs * -(-len(left) // args.batch_size)
    sparse = None
    if settings is not None:
        sparse = tm.SparsityController(
            opt,
            model=model,
            sparsity=args.sparsity,
            update_every=args.update_every,
            stop_after=int(0.75 * steps),
            generator=torch.Generator().manual_seed(args.seed),
            **settings,
        )
    order = torch.Generator().manual_seed(args.seed)
    for _ in range(args.epochs):
        for batch in torch.randperm(len(left), generator=order).split(args.batch_size):
            opt.zero_grad()
            left_logits, right_logits = model(images[batch])
            (cross_entropy(left_logits, left[batch]) + cross_entropy(right_logits, right[batch])).backward()
            opt.step()  # the controller's hooks mask gradients and weights, and change the topology
    test_images, test_left, test_right = test_data
    left_logits, right_logits = model.predict(test_images)
    result = {
        "name": name,
        "left": (left_logits.argmax(1) == test_left).float().mean().item(),
        "right": (right_logits.argmax(1) == test_right).float().mean().item(),
        "sparsity": 0.0 if sparse is None else sparse.sparsity(),
        "coverage": None if sparse is None or sparse.regrow is None else sparse.coverage(),
    }
    if sparse is not None:
        exported = sparse.export()
        with torch.no_grad():
            agree = (exported.predict(test_images)[0].argmax(1) == left_logits.argmax(1)).float().mean().item()
        result["export agrees"] = agree
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--update-every", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny data and one epoch, for the tests")
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.update_every = 1, 2
    start = time.perf_counter()
    train_size, test_size = (512, 256) if args.smoke else (None, None)
    train_data = TwoDigits(train=True, size=train_size, seed=args.seed).tensors()
    test_data = TwoDigits(train=False, size=test_size, seed=args.seed).tensors()

    print(f"held-out accuracy at {args.sparsity:.0%} sparsity ({args.epochs} epochs, Adam, seed {args.seed})")
    print(f"{'method':<22}{'left':>7}{'right':>7}{'sparsity':>10}{'coverage':>10}{'export agrees':>15}")
    for name, settings in METHODS.items():
        r = run(name, settings, train_data, test_data, args)
        coverage = "" if r["coverage"] is None else f"{r['coverage']:.1%}"
        agrees = f"{r['export agrees']:.1%}" if "export agrees" in r else ""
        print(f"{r['name']:<22}{r['left']:>7.3f}{r['right']:>7.3f}{r['sparsity']:>10.1%}{coverage:>10}{agrees:>15}")
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
