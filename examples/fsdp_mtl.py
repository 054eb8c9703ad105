"""torchrun + FSDP2 (and tensor parallelism): a sparse two-task MLP whose parameters are sharded across ranks.

The step past ``examples/torchrun_ddp.py`` (DDP) when a model no longer fits one
device: every ``nn.Linear`` and then the root are wrapped by
:func:`~torch.distributed.fsdp.fully_shard` (FSDP2: parameters, gradients and Adam's moments
become DTensors, each rank holding a shard); ``--tp 2`` also splits the trunk's two layers
column- then row-wise across a tensor-parallel dimension (a 2-D mesh, data parallel x tensor
parallel). On top: a torch_moo optimizer, a :class:`torch_moo.SparsityController` (80% of the
weights pruned, exploration regrowth) whose masks are sharded like their weights, a cosine
schedule, and a distributed checkpoint (:mod:`torch.distributed.checkpoint`) of all of it
through :class:`torch_moo.checkpoint.TrainingState`, resumable at another world size.

* ``--method mgda-full`` (:class:`torch_moo.MultiGradientDescent` over all parameters) and
  ``upgrad`` (:class:`torch_moo.JacobianDescent` with :class:`~torch_moo.weightings.UPGrad`):
  one backward per objective, whose gradients FSDP2 reduce-scatters into each rank's shard; the
  k x k Gram matrix is summed from the local shards in one float64 all-reduce; every rank then
  writes its shard of the combined gradient. No gradient is ever gathered.
* ``--method mgda`` (representation mode, ``features=z``): the Gram matrix of the trunk's output
  gradients is all-reduced; then one ordinary backward.
* ``--method chebyshev`` / ``minmax`` (loss-space): the loss vector (2 floats) is all-reduced;
  then one ordinary backward.
* The controller keeps each mask as the local shard of its weight; a topology update gathers
  one layer at a time and decides exactly as one process would on the whole tensors.

Data: every rank builds the same shuffled order of :class:`torch_moo.datasets.TwoDigits` (no
download) and the global batch of ``--batch-size`` images is split across the data-parallel
ranks, so that a step is the same step at any world size: a run resumed from a checkpoint at
another world size goes on as the original would (up to float32 reassociation).

At the end every rank gathers the full parameters, masks and optimizer state, checks that they
are identical on all ranks, and with ``--out DIR`` writes them to ``DIR/rank<r>.pt`` (with the
training loss before and after, and a SHA-256 of the tensors). ``--save DIR`` writes a DCP
checkpoint ``DIR/epoch<e>`` after every epoch; ``--resume DIR/epoch<e>`` continues from one.

``--backend auto`` (the default) picks NCCL when CUDA is available (one GPU per rank,
``LOCAL_RANK``), else gloo on the CPU. Without torchrun it runs as one process (a world of one,
the same code path: FSDP2 on a one-rank mesh).

    torchrun --nproc_per_node=2 examples/fsdp_mtl.py                        # FSDP2 over 2 ranks
    torchrun --nproc_per_node=2 examples/fsdp_mtl.py --tp 2 --method upgrad # tensor-parallel trunk
    torchrun --nproc_per_node=2 examples/fsdp_mtl.py --smoke --save ckpt    # a few seconds
    torchrun --nproc_per_node=1 examples/fsdp_mtl.py --smoke --resume ckpt/epoch1
    python examples/fsdp_mtl.py --smoke                                     # one process
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from _torchrun import evaluate, init_distributed, report  # examples/_torchrun.py
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import StateDictOptions
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from torch.nn.functional import cross_entropy

import torch_moo as tm
from torch_moo.checkpoint import TrainingState, get_state_dict
from torch_moo.datasets import TwoDigits
from torch_moo.weightings import UPGrad

METHODS = ("mgda-full", "upgrad", "mgda", "chebyshev", "minmax")


class MultiTaskMLP(nn.Module):
    """A shared trunk (256 pixels -> ``hidden`` -> 64, ReLU) and one linear head per digit.

    ``forward`` returns the trunk's output (the features of representation mode) and both logits.
    """

    def __init__(self, hidden: int = 256) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(256, hidden), nn.ReLU(), nn.Linear(hidden, 64), nn.ReLU())
        self.left = nn.Linear(64, 10)
        self.right = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z = self.trunk(x)
        return z, self.left(z), self.right(z)


def shard(model: MultiTaskMLP, device: torch.device, tp: int) -> DeviceMesh:
    """FSDP2 on each layer, then the root; with ``tp`` > 1 the trunk tensor-parallel first (a 2-D mesh).

    Returns the data-parallel mesh (its rank and size say which part of each global batch is this rank's).
    """
    mesh = init_device_mesh(device.type, (dist.get_world_size() // tp, tp), mesh_dim_names=("dp", "tp"))
    if tp > 1:  # Linear 1 split by output columns, Linear 3 by input rows: one all-reduce per forward
        parallelize_module(model.trunk, mesh["tp"], {"1": ColwiseParallel(), "3": RowwiseParallel()})
        layers = [model.trunk, model.left, model.right]  # the trunk's pair as one FSDP unit
    else:
        layers = [model.trunk[1], model.trunk[3], model.left, model.right]
    for layer in layers:
        fully_shard(layer, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
    return mesh["dp"]


def make_optimizer(method: str, params, lr: float) -> tm.MultiObjectiveOptimizer:
    if method == "chebyshev":
        return tm.ChebyshevALM(params, num_objectives=2, preference=[0.5, 0.5], penalty=1.0, outer_every=20, lr=lr)
    if method == "minmax":
        return tm.MinMaxWeighting(params, num_objectives=2, gamma=5.0, ascent_step=0.1, update_every=20, lr=lr)
    if method == "upgrad":
        return tm.JacobianDescent(params, num_objectives=2, weighting=UPGrad(), lr=lr)
    return tm.MultiGradientDescent(params, num_objectives=2, lr=lr)


def train_step(model, opt, images, left, right, method: str) -> Tensor:
    """One step on this rank's part of the global batch; returns the (detached, this rank's) loss vector."""
    opt.zero_grad()
    z, left_logits, right_logits = model(images)
    losses = torch.stack([cross_entropy(left_logits, left), cross_entropy(right_logits, right)])
    opt.backward(losses, features=z if method == "mgda" else None)  # full mode: one backward per objective
    opt.step()  # base step on the local shards, method state, then the controller's masks
    return losses.detach()


def whole(tensor: Tensor) -> Tensor:
    """The full tensor (an all-gather for a DTensor)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def fingerprint(model, opt, sparse, device: torch.device) -> dict[str, Tensor]:
    """Everything that must agree across ranks (and with a run at another world size), gathered, flat float64."""
    state = get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))  # gathers every shard
    moments = [v for _, s in sorted(state["optimizer"]["state"].items()) for _, v in sorted(s.items())]
    method = [v for v in state["torch_moo"]["state"].values() if isinstance(v, Tensor)]

    def flat(tensors: list[Tensor]) -> Tensor:
        empty = torch.zeros(0, dtype=torch.float64, device=device)
        return torch.cat([whole(t).detach().reshape(-1).to(device, torch.float64) for t in tensors] + [empty])

    return {
        "parameters": flat(list(model.parameters())),
        "masks": flat(list(sparse.masks.values())),
        "optimizer state": flat(moments),
        "method state": flat(method),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=METHODS, default="mgda-full")
    parser.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (divides the world size)")
    parser.add_argument("--epochs", type=int, default=None, help="total, resumed epochs included (default 3)")
    parser.add_argument("--batch-size", type=int, default=128, help="global: split across data-parallel ranks")
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path, default=None, help="write a DCP checkpoint DIR/epoch<e> each epoch")
    parser.add_argument("--resume", type=Path, default=None, help="a checkpoint directory written by --save")
    parser.add_argument("--out", type=Path, default=None, help="directory for each rank's rank<r>.pt")
    parser.add_argument("--smoke", action="store_true", help="512 images, 2 epochs of 64: seconds, for the tests")
    args = parser.parse_args()
    epochs = args.epochs if args.epochs is not None else 2 if args.smoke else 3
    batch_size = 64 if args.smoke else args.batch_size
    rank, world_size, device = init_distributed(args.backend)
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    begin = time.perf_counter()
    try:
        if world_size % args.tp:
            raise SystemExit(f"--tp {args.tp} must divide the world size {world_size}")
        train_size, test_size = (512, 256) if args.smoke else (None, None)  # None: 20,000 and 4,000
        train_data = [t.to(device) for t in TwoDigits(train=True, size=train_size, seed=args.seed).tensors()]
        test_data = [t.to(device) for t in TwoDigits(train=False, size=test_size, seed=args.seed).tensors()]

        torch.manual_seed(args.seed)  # the same initial weights on every rank, each keeping its shard
        model = MultiTaskMLP().to(device)
        dp = shard(model, device, args.tp)
        if batch_size % dp.size():
            raise SystemExit(f"--batch-size {batch_size} must be a multiple of the {dp.size()} data-parallel ranks")
        opt = make_optimizer(args.method, model.parameters(), args.lr)
        steps_per_epoch = len(train_data[0]) // batch_size
        steps = epochs * steps_per_epoch
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        sparse = tm.SparsityController(
            opt,
            model=model,
            sparsity=args.sparsity,
            regrow="exploration",
            update_every=max(1, steps // 10),
            stop_after=steps,
            generator=torch.Generator(device).manual_seed(args.seed),  # rank 0's draws decide
        )
        # what a checkpoint holds: the model, optimizer, method and controller state (sharded, through
        # torch_moo.checkpoint), the schedule and the epoch; DCP loads each entry in place
        progress = {"epoch": 0, "schedule": schedule.state_dict()}
        checkpoint = {"train": TrainingState(model, opt, sparse), "progress": progress}
        if args.resume is not None:
            dcp.load(checkpoint, checkpoint_id=args.resume)  # resharded to this world size
            schedule.load_state_dict(progress["schedule"])
        start = progress["epoch"]
        loss_before = evaluate(model, train_data)[0]  # resumed: the checkpoint's
        epoch_losses: list[float] = []  # the training loss after each epoch run here
        if rank == 0:
            print(
                f"{world_size} rank(s) = {dp.size()} data parallel x {args.tp} tensor parallel, backend "
                f"{dist.get_backend()}, device {device.type}, method {args.method}, {steps_per_epoch} steps per "
                f"epoch of {batch_size} images" + (f"; resumed from {args.resume} at epoch {start}" if start else "")
            )
        for epoch in range(start, epochs):
            order = torch.randperm(len(train_data[0]), generator=torch.Generator().manual_seed(args.seed + epoch))
            total = torch.zeros(2, device=device)
            for indices in order[: steps_per_epoch * batch_size].view(steps_per_epoch, batch_size):
                # this data-parallel rank's part of the global batch (tensor-parallel peers: the same part)
                part = indices.chunk(dp.size())[dp.get_local_rank()].to(device)
                total += train_step(model, opt, *(t[part] for t in train_data), args.method)
                schedule.step()
            dist.all_reduce(total)
            epoch_losses.append(evaluate(model, train_data)[0])
            if rank == 0:
                mean = (total / (steps_per_epoch * world_size)).tolist()
                print(
                    f"epoch {epoch + 1}: mean training CE left {mean[0]:.3f} right {mean[1]:.3f}; "
                    f"training loss now {epoch_losses[-1]:.4f}",
                    flush=True,
                )
            if args.save is not None:
                progress.update(epoch=epoch + 1, schedule=schedule.state_dict())
                dcp.save(checkpoint, checkpoint_id=args.save / f"epoch{epoch + 1}")  # each rank writes its shards

        loss_after = epoch_losses[-1] if epoch_losses else loss_before
        _, left_accuracy, right_accuracy = evaluate(model, test_data)
        sparsity = sparse.sparsity()  # every rank: it sums the sharded masks' counts across ranks
        checks = fingerprint(model, opt, sparse, device)
        summary = (
            f"training loss {loss_before:.3f} -> {loss_after:.3f}; held-out accuracy: left {left_accuracy:.3f}  "
            f"right {right_accuracy:.3f}   sparsity {sparsity:.1%}   total {time.perf_counter() - begin:.1f} s"
        )
        record = dict(loss_before=loss_before, loss_after=loss_after, epoch_losses=epoch_losses, epochs=(start, epochs))
        report(checks, summary, args.out, **record)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
