"""SparsityController on DTensor parameters (issue 17): FSDP2, tensor parallelism and both on a 2-D mesh.

Two gloo ranks train, each configuration inside one spawned worker (a spawn costs seconds of imports);
the test process trains the same plain model on the whole batch and compares. Masks must be identical
at every step (the decisions gather each layer and choose as one process does); parameters agree
within ``rtol = atol = 1e-5``: the sharded runs reduce gradients (or losses) across ranks in another
order, float32 round-off of about 1e-7 per step over 7 Adam steps of lr 1e-2.
"""

from __future__ import annotations

import tempfile
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from tests.helpers import batch, spawn
from torch_moo import ChebyshevALM, MinMaxWeighting
from torch_moo.sparsity import CubicSparsity, SparsityController

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # two processes, each importing torch

STEPS = 7  # topology updates at steps 2, 4 and 6
MODES: dict[str, dict[str, Any]] = {
    "random": dict(sparsity=0.7, regrow="random", update_every=2),
    "gradient": dict(sparsity=0.7, regrow="gradient", update_every=2),
    "exploration": dict(sparsity=0.7, regrow="exploration", exploration=0.1, update_every=2),
    "magnitude": dict(sparsity=0.7),
    "threshold": dict(sparsity=0.5, threshold=0.05),
    "gradual": dict(sparsity=CubicSparsity(0.8, 0, 6), update_every=2),
    "row": dict(sparsity=0.5, regrow="gradient", update_every=2, drop_fraction=0.5, structure="row"),
    "column": dict(sparsity=0.5, regrow="random", update_every=2, drop_fraction=0.5, structure="column"),
}
OPTIMIZERS = ("Adam", "ChebyshevALM", "MinMaxWeighting")
PRUNING = ("random", "gradient", "exploration", "magnitude", "threshold")
FSDP = [(optimizer, mode) for optimizer in OPTIMIZERS for mode in PRUNING] + [
    ("Adam", mode) for mode in ("gradual", "row", "column")
]
TP = [("Adam", mode) for mode in MODES] + [("ChebyshevALM", "gradient"), ("MinMaxWeighting", "threshold")]
TWO_D = [("Adam", mode) for mode in ("random", "exploration", "threshold", "column")]


class Net(nn.Module):
    """A two-layer trunk and two heads; the heads' (1, 8) weights leave rank 1 an empty FSDP shard."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(2))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        z = self.trunk(x)
        return [head(z) for head in self.heads]  # (n, 1): FSDP2 warns of a root that returns views


def _optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    if name == "Adam":
        return torch.optim.Adam(model.parameters(), lr=1e-2)
    if name == "ChebyshevALM":
        return ChebyshevALM(
            model.parameters(), num_objectives=2, preference=[0.3, 0.7], outer_every=2, penalty=5.0, lr=1e-2
        )
    return MinMaxWeighting(model.parameters(), num_objectives=2, gamma=1.0, ascent_step=0.5, lr=1e-2)


def _shard(model: Net, layout: str) -> None:
    """FSDP2 on every Linear and the root; tensor parallelism on the trunk; or both on a 2-D mesh."""
    if layout == "fsdp":
        for layer in [model.trunk[0], model.trunk[2], *model.heads]:
            fully_shard(layer)
        fully_shard(model)
        return
    shape = (2,) if layout == "tp" else (1, 2) if layout == "fsdp+tp" else (2, 1)
    mesh = (
        init_device_mesh("cpu", shape)
        if len(shape) == 1
        else init_device_mesh("cpu", shape, mesh_dim_names=("dp", "tp"))
    )
    parallelize_module(
        model.trunk, mesh if len(shape) == 1 else mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel()}
    )
    if len(shape) == 2:
        for part in [model.trunk, *model.heads, model]:
            fully_shard(part, mesh=mesh["dp"])


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def _step(model: Net, opt: torch.optim.Optimizer, step: int, piece: int, parts: int) -> None:
    """One step on part ``piece`` of batch ``step`` cut in ``parts``: the losses' sum under a torch.optim
    optimizer, the loss vector under a torch_moo one."""
    x, y1, y2 = (part.chunk(parts)[piece] for part in batch(step))
    opt.zero_grad()
    out1, out2 = model(x)
    losses = torch.stack([(out1[:, 0] - y1).square().mean(), (out2[:, 0] - y2).square().mean()])
    if isinstance(opt, (ChebyshevALM, MinMaxWeighting)):
        opt.backward(losses)
    else:
        losses.sum().backward()
    opt.step()


def _build(
    layout: str | None, optimizer: str, mode: str, seed: int
) -> tuple[Net, torch.optim.Optimizer, SparsityController]:
    model = Net()
    if layout is not None:
        _shard(model, layout)
    opt = _optimizer(optimizer, model)
    generator = torch.Generator().manual_seed(seed)
    return model, opt, SparsityController(opt, model=model, generator=generator, **MODES[mode])


def _train(layout: str | None, optimizer: str, mode: str, rank: int = 0, parts: int = 1):
    """``STEPS`` steps on this rank's part of each batch cut in ``parts``; every step's masks and the final
    parameters, whole."""
    # another generator on each rank: the masks agree with one process seeded as rank 0 only if rank 0's are used
    model, opt, sparse = _build(layout, optimizer, mode, 100 + rank)
    history = []
    for step in range(STEPS):
        _step(model, opt, step, rank % parts, parts)
        history.append(torch.cat([_whole(m).flatten() for m in sparse.masks.values()]))
    return torch.stack(history), torch.cat([_whole(p).detach().flatten() for p in model.parameters()])


def _worker(rank: int, world_size: int, port: int, runs: list[tuple[str, str, str]], results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        out = {}
        for layout, optimizer, mode in runs:
            parts = 1 if layout in ("tp", "fsdp+tp") else world_size  # data parallel: each rank its half; TP: all
            out[layout, optimizer, mode] = _train(layout, optimizer, mode, rank, parts)
        results[rank] = out
    finally:
        dist.destroy_process_group()


def _assert_matches_one_process(runs: list[tuple[str, str, str]]) -> None:
    results = spawn(_worker, runs)
    for layout, optimizer, mode in runs:
        masks, params = _train(None, optimizer, mode)
        for rank in (0, 1):
            ranked_masks, ranked_params = results[rank][layout, optimizer, mode]
            assert torch.equal(ranked_masks, masks), (layout, optimizer, mode, rank)
            torch.testing.assert_close(ranked_params, params, rtol=1e-5, atol=1e-5, msg=f"{layout, optimizer, mode}")
        if mode != "magnitude":  # pruned once, at the start
            assert not torch.equal(masks[0], masks[-1]), mode  # the topology did change: the test is not vacuous


def test_fsdp2_masks_and_parameters_match_one_process_on_the_whole_batch():
    _assert_matches_one_process([("fsdp", optimizer, mode) for optimizer, mode in FSDP])


def test_tensor_parallel_and_2d_meshes_match_one_process():
    runs = [("tp", optimizer, mode) for optimizer, mode in TP]
    runs += [(layout, optimizer, mode) for layout in ("fsdp+tp", "dp+tp") for optimizer, mode in TWO_D]
    _assert_matches_one_process(runs)


def _checkpoint_worker(rank: int, world_size: int, port: int, one: str, two: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        model, opt, sparse = _build("fsdp", "Adam", "exploration", 100 + rank)
        for step in range(3):
            _step(model, opt, step, rank, world_size)
        saved = sparse.state_dict()
        for mask, counter, name in zip(saved["masks"], saved["active_updates"], sparse.names):
            placements = model.get_parameter(name).placements
            assert isinstance(mask, DTensor) and mask.placements == placements
            assert isinstance(counter, DTensor) and counter.placements == placements
        dcp.save(saved, checkpoint_id=two)
        with pytest.raises(ValueError, match="gather them into an unsharded model"):
            sparse.export()
        expected = [m.full_tensor() for m in sparse.masks.values()]

        loaded = []
        for seed, path in ((7, two), (11, one)):  # saved at 2 ranks, and at 1 process (resharded by DCP)
            *_, fresh = _build("fsdp", "Adam", "exploration", seed)
            template = fresh.state_dict()
            dcp.load(template, checkpoint_id=path)
            fresh.load_state_dict(template)
            loaded.append(fresh)
        *_, cut = _build("fsdp", "Adam", "exploration", 9)  # from whole plain tensors, each rank cutting its piece
        whole = {key: [_whole(t) for t in saved[key]] for key in ("masks", "active_updates")}
        cut.load_state_dict({**saved, **whole})
        for other in (*loaded, cut):
            assert all(torch.equal(m.full_tensor(), e) for m, e in zip(other.masks.values(), expected))
            assert other.coverage() == sparse.coverage() and other.sparsity() == sparse.sparsity()
        results[rank] = expected, sparse.coverage()
    finally:
        dist.destroy_process_group()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")  # DCP says so even with no_dist=True
def test_sharded_state_dicts_reshard_through_dcp_between_one_and_two_ranks():
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two:
        model, opt, sparse = _build(None, "Adam", "exploration", 100)  # one process, the whole batch, seeded as rank 0
        for step in range(3):
            _step(model, opt, step, 0, 1)
        dcp.save(sparse.state_dict(), checkpoint_id=one, no_dist=True)
        results = spawn(_checkpoint_worker, one, two)
        *_, fresh = _build(None, "Adam", "exploration", 5)
        template = fresh.state_dict()
        dcp.load(template, checkpoint_id=two, no_dist=True)  # the pieces saved at 2 ranks, read whole
        fresh.load_state_dict(template)
    masks, coverage = results[0]
    for controller in (sparse, fresh):
        assert all(torch.equal(m, e) for m, e in zip(controller.masks.values(), masks))
        assert controller.coverage() == coverage
