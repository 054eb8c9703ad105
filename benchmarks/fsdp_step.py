"""FSDP2 on gloo CPU ranks: per-rank memory of the method state and the masks, and the step time against Adam.

A multi-task MLP (``--width``-wide trunk of ``--layers`` Linear + ReLU layers, k = 2 linear heads
of 10 classes), every ``nn.Linear`` and then the root wrapped by
:func:`~torch.distributed.fsdp.fully_shard`, run on 1 and on 2 spawned gloo ranks (one process
each, ``--threads`` threads each). The global batch of ``--batch`` synthetic samples is split
across the ranks. Variants, each on its own copy of the model (same initial weights):

* ``Adam``: plain ``torch.optim.Adam``, ``sum(losses).backward(); opt.step()`` (the baseline);
* ``MGDA full``: :class:`torch_moo.MultiGradientDescent` over all parameters (k backward passes,
  the Gram matrix from the local shards in one float64 all-reduce);
* ``ChebyshevALM``: :class:`torch_moo.ChebyshevALM` (the loss vector all-reduced, one backward);
* ``Adam + controller``: the baseline with a :class:`torch_moo.SparsityController` (80% sparse,
  exploration regrowth every ``--update-every`` steps).

Per rank, after the warm-up steps: (a) the optimizer's state, the bytes of every tensor of the base
optimizer's state (its local shards: Adam's moments are DTensors like the parameters) plus the
torch_moo method's own state (``state_dict()["torch_moo"]["state"]``); (b) the controller's, the
bytes of every tensor it holds apart from the parameters (masks, active-update counters, multipliers:
their local shards). Each should shrink as 1 / world size. Step time: the variants run in
alternating order (``_timing.interleave``: every rank runs the same sequence, so the collectives
match), each step timed on rank 0 (whose clock includes its waits for the other rank); reported as
median ms, the ratio of medians to Adam's with a bootstrap 95% interval, the ratio of minima, and
the ratio of means (which counts the controller's topology updates).

Usage::

    python benchmarks/fsdp_step.py                  # what benchmarks/README.md reports
    python benchmarks/fsdp_step.py --quick          # smoke check (seconds of work, plus the spawns)
    python benchmarks/fsdp_step.py --worlds 2 --width 2048

Not a test: pytest does not collect it (no ``test_`` names, outside ``tests/``).
"""

from __future__ import annotations

import argparse
import copy
import socket
import statistics
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _timing import interleave, ratio_row
from torch import Tensor, nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.functional import cross_entropy

import torch_moo
from torch_moo.base import STATE_KEY

K = 2  # heads (objectives)
VARIANTS = ("Adam", "MGDA full", "ChebyshevALM", "Adam + controller")


class MultiTaskMLP(nn.Module):
    """``layers`` Linear(width, width) + ReLU, then ``K`` heads width -> 10."""

    def __init__(self, width: int, layers: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(*[m for _ in range(layers) for m in (nn.Linear(width, width), nn.ReLU())])
        self.heads = nn.ModuleList(nn.Linear(width, 10) for _ in range(K))

    def forward(self, x: Tensor) -> list[Tensor]:
        z = self.trunk(x)
        return [head(z) for head in self.heads]


def _local(tensor: Tensor) -> Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def local_bytes(tensors: Iterable[Tensor], exclude: Iterable[Tensor] = ()) -> int:
    """Bytes of the storage of this rank's part of each tensor (the local shard of a DTensor), each
    storage once, those of ``exclude`` (the parameters: views of them are not state) left out."""
    seen = {_local(t).untyped_storage().data_ptr() for t in exclude}
    total = 0
    for t in tensors:
        storage = _local(t).untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def held_tensors(value: Any, depth: int = 0) -> Iterable[Tensor]:
    """Every tensor in ``value``'s attributes, lists, tuples and dicts, parameters, modules and optimizers left out."""
    if isinstance(value, nn.Parameter) or isinstance(value, (nn.Module, torch.optim.Optimizer)) and depth:
        return
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from held_tensors(item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from held_tensors(item, depth + 1)
    elif hasattr(value, "__dict__") and depth < 3:
        for item in vars(value).values():
            yield from held_tensors(item, depth + 1)


def optimizer_bytes(opt: torch.optim.Optimizer) -> int:
    """The base optimizer's state (local shards) plus a torch_moo method's own state."""
    base = opt.base if isinstance(opt, torch_moo.MultiObjectiveOptimizer) else opt
    tensors = [v for state in base.state.values() for v in state.values() if isinstance(v, Tensor)]
    if isinstance(opt, torch_moo.MultiObjectiveOptimizer):
        tensors += [v for v in opt.state_dict()[STATE_KEY]["state"].values() if isinstance(v, Tensor)]
    return local_bytes(tensors)


def make_variants(args: argparse.Namespace, rank: int, world_size: int) -> tuple[dict[str, Callable[[], None]], dict]:
    """One step function per variant, each on its own sharded copy of the model; and the objects, by variant."""
    torch.manual_seed(args.seed)
    net = MultiTaskMLP(args.width, args.layers)
    x = torch.randn(args.batch, args.width).chunk(world_size)[rank]  # this rank's part of the global batch
    labels = [y.chunk(world_size)[rank] for y in torch.randint(0, 10, (K, args.batch))]
    steps: dict[str, Callable[[], None]] = {}
    objects: dict[str, dict[str, Any]] = {}
    for name in VARIANTS:
        model = copy.deepcopy(net)
        for layer in model.modules():
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        if name == "MGDA full":
            opt: torch.optim.Optimizer = torch_moo.MultiGradientDescent(model.parameters(), num_objectives=K, lr=1e-4)
        elif name == "ChebyshevALM":
            opt = torch_moo.ChebyshevALM(
                model.parameters(), num_objectives=K, preference=[1 / K] * K, outer_every=100, lr=1e-4
            )
        else:
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        sparse = None
        if name == "Adam + controller":
            every, generator = args.update_every, torch.Generator().manual_seed(args.seed)
            sparse = torch_moo.SparsityController(
                opt, model=model, sparsity=0.8, regrow="exploration", update_every=every, generator=generator
            )
        steps[name] = _step(model, opt, x, labels)
        objects[name] = {"model": model, "opt": opt, "sparse": sparse}
    return steps, objects


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, labels: list[Tensor]) -> Callable[[], None]:
    moo = isinstance(opt, torch_moo.MultiObjectiveOptimizer)

    def step() -> None:
        opt.zero_grad()
        losses = [cross_entropy(out, y) for out, y in zip(model(x), labels)]
        if moo:
            opt.backward(torch.stack(losses))
        else:
            sum(losses).backward()
        opt.step()

    return step


def worker(rank: int, world_size: int, port: int, args: argparse.Namespace, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(args.threads)
        steps, objects = make_variants(args, rank, world_size)
        times = interleave(steps, args.warmup, args.rounds)
        memory = {
            name: {
                "parameters": local_bytes(o["model"].parameters()),
                "optimizer": optimizer_bytes(o["opt"]),
                "controller": None
                if o["sparse"] is None
                else local_bytes(held_tensors(o["sparse"]), exclude=o["model"].parameters()),
            }
            for name, o in objects.items()
        }
        results[rank] = {"times": times, "memory": memory}
    finally:
        dist.destroy_process_group()


def spawn(world_size: int, args: argparse.Namespace) -> dict:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    manager = mp.get_context("spawn").Manager()
    results = manager.dict()
    mp.start_processes(worker, args=(world_size, port, args, results), nprocs=world_size, start_method="spawn")
    return dict(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", default="1,2", help="comma-separated numbers of ranks")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4, help="Linear(width, width) layers in the trunk")
    parser.add_argument("--batch", type=int, default=256, help="global batch, split across the ranks")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads per rank")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up steps per variant")
    parser.add_argument("--rounds", type=int, default=100, help="alternating rounds (one step per variant each)")
    parser.add_argument("--update-every", type=int, default=100, help="the controller's topology updates")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap draws (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a small model and few steps, for a smoke check")
    args = parser.parse_args()
    if args.quick:
        args.width, args.layers, args.warmup, args.rounds, args.update_every, args.bootstrap = 256, 2, 2, 6, 4, 200
    worlds = [int(w) for w in args.worlds.split(",") if w.strip()]
    print(
        f"torch {torch.__version__}, gloo on the CPU, {args.threads} thread(s) per rank; MLP {args.layers} x "
        f"{args.width}, {K} heads, global batch {args.batch}; warm-up {args.warmup}, {args.rounds} alternating "
        f"rounds; controller 80% sparse, exploration regrowth every {args.update_every} steps"
    )
    by_world = {w: spawn(w, args) for w in worlds}

    print("\nPer-rank memory (rank 0; MiB), and the fraction of the 1-rank figure:\n")
    print("| ranks | parameters | Adam state | MGDA full state | ChebyshevALM state | controller (masks, counters) |")
    print("|---:|---:|---:|---:|---:|---:|")
    first = by_world[worlds[0]][0]["memory"]
    for w in worlds:
        memory = by_world[w][0]["memory"]
        cells = [
            memory["Adam"]["parameters"],
            memory["Adam"]["optimizer"],
            memory["MGDA full"]["optimizer"],
            memory["ChebyshevALM"]["optimizer"],
            memory["Adam + controller"]["controller"],
        ]
        bases = [
            first["Adam"]["parameters"],
            first["Adam"]["optimizer"],
            first["MGDA full"]["optimizer"],
            first["ChebyshevALM"]["optimizer"],
            first["Adam + controller"]["controller"],
        ]
        print(f"| {w} | " + " | ".join(f"{c / 2**20:.2f} ({c / b:.3f})" for c, b in zip(cells, bases)) + " |")

    print("\nStep time on rank 0 against FSDP2 + Adam in the same run:\n")
    print("| ranks | variant | Adam ms | variant ms | ratio | 95% CI | min ratio | mean ratio |")
    print("|---:|---|---:|---:|---:|---|---:|---:|")
    for w in worlds:
        times = by_world[w][0]["times"]
        for name in VARIANTS[1:]:
            mean_ratio = statistics.fmean(times[name]) / statistics.fmean(times["Adam"])
            row = ratio_row(times["Adam"], times[name], args.bootstrap, args.seed)
            print(f"| {w} | {name} | {row} | {mean_ratio:.3f} |", flush=True)


if __name__ == "__main__":
    main()
