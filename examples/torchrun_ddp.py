"""torchrun + DistributedDataParallel: a sparse two-task CNN, every rank taking the same step.

A plain training loop (the :class:`~torch_moo.datasets.TwoHeadCNN` on :class:`torch_moo.datasets.TwoDigits`,
no download) with the standard pieces of data-parallel training:
:class:`~torch.utils.data.distributed.DistributedSampler` (each rank its shard of every epoch),
:class:`~torch.nn.parallel.DistributedDataParallel`, a torch_moo optimizer, a cosine schedule
and a :class:`torch_moo.SparsityController` (80% of the weights pruned, dynamic sparse training
with exploration regrowth). What torch_moo adds under a process group:

* ``--method chebyshev`` / ``minmax`` (loss-space methods, :class:`torch_moo.ChebyshevALM`,
  :class:`torch_moo.MinMaxWeighting`): ``opt.backward`` all-reduces the loss vector (2 floats)
  before computing the weights, then one ordinary backward, whose gradients DDP averages.
* ``--method mgda`` (:class:`torch_moo.MultiGradientDescent`, representation mode,
  ``features=z``): the k x k Gram matrix is all-reduced; the final backward is an ordinary one.
* ``--method mgda-full`` (MGDA over all shared parameters): its per-objective gradients come
  from ``torch.autograd.grad``, which DDP's reducer does not see, so the step runs under
  ``model.no_sync()`` and MGDA averages the gradients itself.
* The controller's masks are decided on rank 0 and broadcast (one broadcast per topology update).

At the end every rank all-gathers its parameters, masks and method state and checks that they
are identical on all ranks, bit for bit; with ``--out DIR`` each rank also writes
``DIR/rank<r>.pt`` (a SHA-256 of those tensors and the training loss before and after).

The same code runs on GPUs: ``--backend auto`` (the default) picks NCCL when CUDA is available,
one GPU per rank (``LOCAL_RANK``), else gloo on the CPU; ``--backend nccl`` / ``gloo`` force one.
Without torchrun it runs as a single process (a world of size 1, same code path).

    torchrun --nproc_per_node=2 examples/torchrun_ddp.py            # 3 epochs on 20,000 images (not timed here)
    torchrun --nproc_per_node=2 examples/torchrun_ddp.py --smoke    # a few seconds, for the tests
    python examples/torchrun_ddp.py --smoke                         # one process
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from _torchrun import evaluate, init_distributed, report  # examples/_torchrun.py
from torch.nn.functional import cross_entropy
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import torch_moo as tm
from torch_moo.datasets import TwoDigits, TwoHeadCNN

METHODS = ("chebyshev", "minmax", "mgda", "mgda-full")


class FeatureCNN(TwoHeadCNN):
    """TwoHeadCNN whose forward also returns the trunk's output: the features of MGDA's representation mode."""

    def forward(self, x: torch.Tensor):
        z = self.trunk(x)
        return z, self.left(z), self.right(z)


def make_optimizer(method: str, params, lr: float):
    if method == "chebyshev":
        return tm.ChebyshevALM(params, num_objectives=2, preference=[0.5, 0.5], penalty=1.0, outer_every=20, lr=lr)
    if method == "minmax":
        return tm.MinMaxWeighting(params, num_objectives=2, gamma=5.0, ascent_step=0.1, update_every=20, lr=lr)
    return tm.MultiGradientDescent(params, num_objectives=2, lr=lr)


def train_step(model, opt, batch, method: str) -> torch.Tensor:
    """One step; returns the (detached, this rank's) loss vector."""
    images, left, right = batch
    # full-mode MGDA differentiates with autograd.grad, which DDP's reducer does not see: no_sync,
    # and MGDA all-reduces the per-objective gradients itself
    sync = model.no_sync() if method == "mgda-full" else contextlib.nullcontext()
    with sync:
        opt.zero_grad()
        z, left_logits, right_logits = model(images)
        losses = torch.stack([cross_entropy(left_logits, left), cross_entropy(right_logits, right)])
        opt.backward(losses, features=z if method == "mgda" else None)
        opt.step()  # base step, method state, then the SparsityController's masks
    return losses.detach()


def fingerprint(module, opt, sparse) -> dict[str, torch.Tensor]:
    """Everything that must agree across ranks, each as one flat float64 vector."""
    method = [
        v.reshape(-1).double() for v in opt.state_dict()["torch_moo"]["state"].values() if isinstance(v, torch.Tensor)
    ]
    return {
        "parameters": torch.cat([p.detach().reshape(-1).double() for p in module.parameters()]),
        "masks": torch.cat([m.reshape(-1).double() for m in sparse.masks.values()]),
        "method state": torch.cat(method) if method else torch.zeros(0, dtype=torch.float64),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=METHODS, default="chebyshev")
    parser.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, help="per rank")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="directory for each rank's rank<r>.pt")
    parser.add_argument("--smoke", action="store_true", help="tiny data and one epoch, for the tests")
    args = parser.parse_args()
    if args.smoke:
        args.epochs = 2
    rank, world_size, device = init_distributed(args.backend)
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    begin = time.perf_counter()
    try:
        train_size, test_size = (512, 256) if args.smoke else (None, None)  # None: 20,000 and 4,000
        train_data = [t.to(device) for t in TwoDigits(train=True, size=train_size, seed=args.seed).tensors()]
        test_data = [t.to(device) for t in TwoDigits(train=False, size=test_size, seed=args.seed).tensors()]
        dataset = TensorDataset(*train_data)
        sampler = DistributedSampler(dataset, shuffle=True, seed=args.seed, drop_last=True)  # this rank's shard
        loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True)

        torch.manual_seed(args.seed)  # DDP broadcasts rank 0's initial weights anyway
        model = DistributedDataParallel(
            FeatureCNN().to(device), device_ids=[device.index] if device.type == "cuda" else None
        )
        opt = make_optimizer(args.method, model.parameters(), args.lr)
        steps = args.epochs * len(loader)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        sparse = tm.SparsityController(
            opt,
            model=model.module,
            sparsity=args.sparsity,
            regrow="exploration",
            update_every=max(1, steps // 10),
            stop_after=steps,
            generator=torch.Generator(device).manual_seed(args.seed),
        )
        loss_before = evaluate(model.module, train_data)[0]
        if rank == 0:
            print(
                f"{world_size} rank(s), backend {dist.get_backend()}, device {device.type}, method {args.method}, "
                f"{len(loader)} steps per epoch of {args.batch_size} images per rank"
            )
        for epoch in range(args.epochs):
            sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
            total = torch.zeros(2, device=device)
            for batch in loader:
                total += train_step(model, opt, batch, args.method)
                schedule.step()
            dist.all_reduce(total)
            if rank == 0:
                mean = (total / (len(loader) * world_size)).tolist()
                print(f"epoch {epoch + 1}: mean training CE left {mean[0]:.3f} right {mean[1]:.3f}", flush=True)

        loss_after, left, right = evaluate(model.module, train_data)[0], *evaluate(model.module, test_data)[1:]
        checks = fingerprint(model.module, opt, sparse)
        summary = (
            f"training loss {loss_before:.3f} -> {loss_after:.3f}; held-out accuracy: left {left:.3f}  "
            f"right {right:.3f}   sparsity {sparse.sparsity():.1%}   total {time.perf_counter() - begin:.1f} s"
        )
        report(checks, summary, args.out, loss_before=loss_before, loss_after=loss_after)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
