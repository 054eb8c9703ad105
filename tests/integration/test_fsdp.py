"""Two gloo ranks with DTensor parameters (FSDP2, tensor parallelism, both): every optimizer matches one
process on the whole batch."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

from tests.helpers import batch, spawn
from torch_moo import (
    ChebyshevALM,
    FixedWeighting,
    JacobianDescent,
    MinMaxWeighting,
    MultiGradientDescent,
    ParetoTangentExplorer,
    SparsityController,
    WeightedLossDescent,
)
from torch_moo.weightings import Uncertainty, UPGrad

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # two processes, each importing torch

METHODS = (
    "MGDA moments",
    "MGDA",
    "MGDA features",
    "UPGrad weighted heads",
    "ChebyshevALM",
    "MinMaxWeighting",
    "Fixed",
    "Uncertainty",
)
STEPS = 4
# a controller on each Jacobian and loss-space class (ChebyshevALM and MinMaxWeighting: test_fsdp_sparsity.py),
# every regrowth and pruning mode met at least once
CONTROLLED = {
    "MGDA moments": dict(sparsity=0.7, regrow="gradient"),
    "MGDA": dict(sparsity=0.7, regrow="random"),
    "MGDA features": dict(sparsity=0.7, regrow="exploration", exploration=0.1),
    "UPGrad weighted heads": dict(sparsity=0.7, regrow="gradient"),
    "Fixed": dict(sparsity=0.7),
    "Uncertainty": dict(sparsity=0.5, threshold=0.05),
}


class Net(nn.Module):
    """A two-layer trunk (a tensor-parallel pair: column-wise then row-wise) and two regression heads."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8))
        self.heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        z = self.trunk(x)
        return z, [head(z).sum(-1) for head in self.heads]  # not a view: FSDP2 hooks the root's outputs


def make(method: str, params) -> torch.optim.Optimizer:
    if method == "MGDA moments":
        return MultiGradientDescent(params, num_objectives=2, moments=(0.9, 0.999), base=torch.optim.SGD, lr=1e-2)
    if method.startswith("MGDA"):
        return MultiGradientDescent(params, num_objectives=2, lr=1e-2)
    if method == "UPGrad weighted heads":
        return JacobianDescent(params, num_objectives=2, weighting=UPGrad(), heads="weighted", lr=1e-2)
    if method == "ChebyshevALM":
        return ChebyshevALM(params, num_objectives=2, preference=[0.3, 0.7], outer_every=2, penalty=5.0, lr=1e-2)
    if method == "MinMaxWeighting":
        return MinMaxWeighting(params, num_objectives=2, gamma=1.0, ascent_step=0.5, lr=1e-2)
    if method == "Fixed":
        return FixedWeighting(params, num_objectives=2, weights=[0.25, 0.75], lr=1e-2)
    return WeightedLossDescent(params, num_objectives=2, weighting=Uncertainty(2), lr=1e-2)


def train(
    model: nn.Module, method: str, part: slice, steps: range = range(STEPS), opt=None, sparse=None
) -> torch.Tensor:
    """Steps on ``part`` of each 64-sample batch; the weights of each step (and the masks, with ``sparse``)."""
    opt = make(method, model.parameters()) if opt is None else opt
    weights = []
    for step in steps:
        x, y1, y2 = batch(step, size=64)
        opt.zero_grad()
        z, (out1, out2) = model(x[part])
        losses = torch.stack([(out1 - y1[part]).square().mean(), (out2 - y2[part]).square().mean()])
        weights.append(opt.backward(losses, features=z if method == "MGDA features" else None))
        opt.step()
        if sparse is not None:
            weights.append(torch.cat([full_tensor(m).flatten().float() for m in sparse.masks.values()]))
    return torch.cat([w.flatten() for w in weights])


def control(model: nn.Module, opt, method: str, rank: int = 0) -> SparsityController:
    """A controller in the mode :data:`CONTROLLED` gives ``method``; another generator on each rank (rank 0's
    decisions are the ones taken, as the process seeded like rank 0 takes them)."""
    generator = torch.Generator().manual_seed(100 + rank)
    return SparsityController(opt, model=model, generator=generator, update_every=2, **CONTROLLED[method])


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def full_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([full_tensor(p).detach().flatten() for p in model.parameters()])


def shard(model: Net, layout: str) -> Net:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    if layout == "fsdp":
        for module in (*model.trunk, *model.heads):
            if isinstance(module, nn.Linear):
                fully_shard(module)
        fully_shard(model)
    elif layout == "tp":
        mesh = init_device_mesh("cpu", (2,))
        parallelize_module(model.trunk, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    else:  # a 2-D mesh: data parallel of size 1 (FSDP), tensor parallel of size 2
        mesh = init_device_mesh("cpu", (1, 2), mesh_dim_names=("dp", "tp"))
        parallelize_module(model.trunk, mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
        for module in (model.trunk, *model.heads):
            fully_shard(module, mesh=mesh["dp"])
        fully_shard(model, mesh=mesh["dp"])
    return model


def _worker(rank: int, world_size: int, port: int, layout: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        # FSDP: each rank on its half of the batch; tensor parallel: every rank on the whole batch
        part = slice(32 * rank, 32 * rank + 32) if layout == "fsdp" else slice(None)
        out = {}
        for method in METHODS:
            model = shard(Net(), layout)
            out[method] = (train(model, method, part), full_parameters(model))
        for method in CONTROLLED:
            model = shard(Net(), layout)
            opt = make(method, model.parameters())
            sparse = control(model, opt, method, rank)
            out[method, "controlled"] = (train(model, method, part, opt=opt, sparse=sparse), full_parameters(model))
        for refused in (lambda params: ParetoTangentExplorer(params, num_objectives=2),):
            with pytest.raises(ValueError, match="does not take DTensor parameters"):
                refused(shard(Net(), layout).parameters())
        results[rank] = out
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("layout", ["fsdp", "tp", "fsdp+tp"])
def test_every_optimizer_matches_one_process_on_the_whole_batch(layout):
    results = spawn(_worker, layout)
    for key in [*METHODS, *((method, "controlled") for method in CONTROLLED)]:
        (w0, p0), (w1, p1) = results[0][key], results[1][key]
        assert torch.equal(w0, w1) and torch.equal(p0, p1), key  # the ranks agree exactly: weights, masks
        model = Net()
        method = key if isinstance(key, str) else key[0]
        opt = make(method, model.parameters())
        sparse = None if isinstance(key, str) else control(model, opt, method)
        weights = train(model, method, slice(None), opt=opt, sparse=sparse)
        # Sums over 32 samples on each rank (or over a layer's shards), then over the ranks, against
        # one sum over 64: float32 reassociation, ~1e-7 relative per step, through Adam's
        # normalisation over 4 steps.
        # The masks (0/1 in the same vector) must then be identical: the same topology decisions.
        torch.testing.assert_close(w0, weights, rtol=1e-5, atol=1e-5, msg=str(key))
        torch.testing.assert_close(p0, full_parameters(model), rtol=1e-5, atol=1e-5, msg=str(key))
        if sparse is not None:
            masks = torch.cat([m.flatten().float() for m in sparse.masks.values()])
            assert torch.equal(w0[-masks.numel() :], masks) and not masks.all(), key  # and some are pruned
        assert not torch.equal(p0, full_parameters(Net())), key  # it did train


# ------------------------------------------------------------------------ distributed checkpoints
CHECKPOINTED = ("MGDA moments", "MGDA", "ChebyshevALM", "Uncertainty")  # with a controller where CONTROLLED has one


def _full_state(model: nn.Module, opt, sparse) -> dict:
    """The whole state as plain tensors (gathered on every rank), to compare across world sizes."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    from torch.utils._pytree import tree_map

    from torch_moo.checkpoint import get_state_dict

    state = get_state_dict(model, opt, sparse, options=StateDictOptions(full_state_dict=True))
    return copy.deepcopy(tree_map(lambda v: full_tensor(v) if isinstance(v, torch.Tensor) else v, state))


def _objects(layout: str | None, method: str, rank: int = 0):
    model = Net() if layout is None else shard(Net(), layout)
    opt = make(method, model.parameters())
    return model, opt, control(model, opt, method, rank) if method in CONTROLLED else None


def _checkpoint_worker(rank: int, world_size: int, port: int, root: str, results) -> None:
    import torch.distributed.checkpoint as dcp

    from torch_moo.checkpoint import TrainingState

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        part = slice(32 * rank, 32 * rank + 32)
        out = {}
        for method in CHECKPOINTED:
            model, opt, sparse = _objects("fsdp", method, rank)
            train(model, method, part, range(3), opt, sparse)
            dcp.save({"train": TrainingState(model, opt, sparse)}, checkpoint_id=f"{root}/{method}")
            saved = _full_state(model, opt, sparse)
            straight = train(model, method, part, range(3, 6), opt, sparse), full_parameters(model)
            # a fresh start: new parameters, empty optimizer state, masks of another seed
            model, opt, sparse = _objects("fsdp", method, rank + 7)
            dcp.load({"train": TrainingState(model, opt, sparse)}, checkpoint_id=f"{root}/{method}")
            resumed = train(model, method, part, range(3, 6), opt, sparse), full_parameters(model)
            out[method] = (saved, straight, resumed)
        results[rank] = out
    finally:
        dist.destroy_process_group()


def test_dcp_checkpoint_resumes_at_two_ranks_and_at_one(tmp_path):
    import torch.distributed.checkpoint as dcp

    from tests.helpers import assert_same_state_dict
    from torch_moo.checkpoint import TrainingState

    results = spawn(_checkpoint_worker, str(tmp_path))
    for method in CHECKPOINTED:
        saved, (w_straight, p_straight), (w_resumed, p_resumed) = results[0][method]
        # at 2 ranks: resuming from the checkpoint is the run that never stopped, bit for bit (a
        # topology update at step 4 included: random regrowth draws from the saved generator state)
        assert torch.equal(w_resumed, w_straight) and torch.equal(p_resumed, p_straight), method
        # at 1 rank (no process group, a plain model): the state loads whole, bit for bit ...
        model, opt, sparse = _objects(None, method, 5)
        with pytest.warns(UserWarning, match="single process"):
            dcp.load({"train": TrainingState(model, opt, sparse)}, checkpoint_id=str(tmp_path / method))
        assert_same_state_dict(_full_state(model, opt, sparse), saved)
        # ... and training goes on from it on the whole batch: the 2-rank run up to reassociation
        weights = train(model, method, slice(None), range(3, 6), opt, sparse)
        torch.testing.assert_close(weights, w_straight, rtol=1e-5, atol=1e-5, msg=method)
        torch.testing.assert_close(full_parameters(model), p_straight, rtol=1e-5, atol=1e-5, msg=method)
