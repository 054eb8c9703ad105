"""Two gloo processes: the loss vector is all-reduced, so weights, multipliers and parameters agree."""

import pytest
import torch
import torch.distributed as dist

from tests.helpers import TwoHeads, batch, flat_parameters, spawn, task_losses
from torch_moo import ChebyshevALM, MinMaxWeighting, MultiGradientDescent, ParetoTangentExplorer, SparsityController

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # two processes, each importing torch


def _make(method: str, params):
    if method == "ChebyshevALM":
        return ChebyshevALM(
            params, num_objectives=2, preference=[0.3, 0.7], reference="ideal", outer_every=2, penalty=5.0, lr=1e-2
        )
    return MinMaxWeighting(params, num_objectives=2, gamma=1.0, ascent_step=0.5, lr=1e-2)


def _worker(rank: int, world_size: int, port: int, method: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        model = torch.nn.parallel.DistributedDataParallel(TwoHeads())
        opt = _make(method, model.parameters())
        weights = []
        for step in range(6):
            opt.zero_grad()
            losses = task_losses(model, 10 * step + rank)  # each rank sees its own batch
            weights.append(opt.backward(torch.stack([losses[0], losses[1] * (1 + rank)])))
            opt.step()
        state = opt.state_dict()["torch_moo"]["state"]
        results[rank] = (torch.stack(weights), state, flat_parameters(model))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method", ["ChebyshevALM", "MinMaxWeighting"])
def test_ranks_agree_on_weights_state_and_parameters(method):
    results = spawn(_worker, method)
    (w0, s0, p0), (w1, s1, p1) = results[0], results[1]
    assert torch.equal(w0, w1)
    assert s0.keys() == s1.keys()
    for key in s0:
        assert torch.equal(s0[key], s1[key]) if isinstance(s0[key], torch.Tensor) else s0[key] == s1[key], key
    assert torch.equal(p0, p1)
    assert not torch.equal(w0[0], w0[-1])  # the weights did move: the test is not vacuous


def _sparse_worker(rank: int, world_size: int, port: int, regrow: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        model = torch.nn.parallel.DistributedDataParallel(TwoHeads())
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        # a different generator on each rank: the masks agree only because rank 0's are broadcast
        sparse = SparsityController(
            opt,
            model=model,
            sparsity=0.7,
            regrow=regrow,
            update_every=2,
            generator=torch.Generator().manual_seed(100 + rank),
        )
        history = []
        for step in range(7):
            opt.zero_grad()
            losses = task_losses(model, 10 * step + rank)
            (losses[0] + losses[1] * (1 + rank)).backward()
            opt.step()
            history.append(torch.cat([m.flatten() for m in sparse.masks.values()]))
        results[rank] = (torch.stack(history), flat_parameters(model))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("regrow", ["random", "exploration"])
def test_ranks_agree_on_sparsity_masks(regrow):
    results = spawn(_sparse_worker, regrow)
    (m0, p0), (m1, p1) = results[0], results[1]
    assert torch.equal(m0, m1) and torch.equal(p0, p1)
    assert not torch.equal(m0[0], m0[-1])  # the topology did change


class _FeatureHeads(TwoHeads):
    """TwoHeads that also returns the trunk's output, the features of the representation mode."""

    def forward(self, x):
        z = self.trunk(x)
        return z, [head(z).squeeze(-1) for head in self.heads]


def _mgda_step(model, opt, x, y1, y2, mode):
    opt.zero_grad()
    z, (out1, out2) = model(x)
    losses = torch.stack([(out1 - y1).square().mean(), (out2 - y2).square().mean()])
    weights = opt.backward(losses, features=z if mode == "features" else None)
    opt.step()
    return weights


def _mgda_worker(rank: int, world_size: int, port: int, mode: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        model = torch.nn.parallel.DistributedDataParallel(_FeatureHeads())
        opt = MultiGradientDescent(model.parameters(), num_objectives=2, lr=1e-2)
        weights = []
        for step in range(4):
            x, y1, y2 = (part.chunk(2)[rank] for part in batch(step, size=64))  # each rank its half
            if mode == "features":  # an ordinary last backward: DDP's reducer averages it
                weights.append(_mgda_step(model, opt, x, y1, y2, mode))
            else:  # autograd.grad passes, which the reducer does not see: no_sync, MGDA averages itself
                with model.no_sync():
                    weights.append(_mgda_step(model, opt, x, y1, y2, mode))
        results[rank] = (torch.stack(weights), flat_parameters(model.module))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["parameters", "features"])
def test_mgda_ranks_agree_and_match_one_process_on_the_whole_batch(mode):
    results = spawn(_mgda_worker, mode)
    (w0, p0), (w1, p1) = results[0], results[1]
    assert torch.equal(w0, w1) and torch.equal(p0, p1)
    model = _FeatureHeads()
    opt = MultiGradientDescent(model.parameters(), num_objectives=2, lr=1e-2)
    weights = torch.stack([_mgda_step(model, opt, *batch(step, size=64), mode) for step in range(4)])
    # Sums over 32 samples on each rank, then over the ranks, against one sum over 64 samples:
    # float32 reassociation, ~1e-7 relative per step, amplified a little by Adam's normalisation.
    torch.testing.assert_close(w0, weights, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(p0, flat_parameters(model), rtol=1e-4, atol=1e-5)
    assert not torch.equal(w0[0], w0[-1])  # the weights did move


def _part_losses(model, step, part=slice(None)):
    """The two losses on ``part`` of a 64-sample batch (a rank's half, or all of it)."""
    x, y1, y2 = batch(step, size=64)
    out1, out2 = model(x[part])
    return torch.stack([(out1 - y1[part]).square().mean(), (out2 - y2[part]).square().mean()])


def _explore(model, steps, part=slice(None)):
    opt = ParetoTangentExplorer(
        model.parameters(), num_objectives=2, step_size=0.05, damping=0.1, max_iter=5, corrections=1, lr=1e-2
    )
    for step in range(steps):
        opt.step(lambda step=step: _part_losses(model, step, part))
    return opt


def _explorer_worker(rank: int, world_size: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        model = TwoHeads()  # the closure's gradients bypass DDP's reducer: the optimizer all-reduces them
        opt = _explore(model, 3, slice(32 * rank, 32 * rank + 32))
        results[rank] = (flat_parameters(model), opt.tangent_solve.solution)
    finally:
        dist.destroy_process_group()


def test_explorer_ranks_agree_and_match_one_process_on_the_whole_batch():
    results = spawn(_explorer_worker)
    (p0, v0), (p1, v1) = results[0], results[1]
    assert torch.equal(p0, p1) and torch.equal(v0, v1)
    model = TwoHeads()
    opt = _explore(model, 3)
    # The Jacobian and every Hessian-vector product are means of two 32-sample halves against one
    # mean over 64: float32 reassociation, ~1e-7 relative, through five MINRES iterations.
    torch.testing.assert_close(v0, opt.tangent_solve.solution, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(p0, flat_parameters(model), rtol=1e-4, atol=1e-6)
    assert not torch.equal(p0, flat_parameters(TwoHeads()))  # it did move


def _train_with_masks(model, method, steps, part=slice(None)):
    opt = _make(method, model.parameters())
    sparse = SparsityController(opt, model=model, sparsity=0.5, regrow="gradient", update_every=2)
    weights = []
    for step in range(steps):
        opt.zero_grad()
        weights.append(opt.backward(_part_losses(model, step, part)))
        opt.step()
    masks = torch.cat([m.flatten() for m in sparse.masks.values()])
    return torch.stack(weights), opt.state_dict()["torch_moo"]["state"], masks


def _halves_worker(rank: int, world_size: int, port: int, method: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        model = torch.nn.parallel.DistributedDataParallel(TwoHeads())
        weights, state, masks = _train_with_masks(model, method, 6, slice(32 * rank, 32 * rank + 32))
        results[rank] = (weights, state, masks, flat_parameters(model.module))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method", ["ChebyshevALM", "MinMaxWeighting"])
def test_loss_space_methods_with_masks_match_one_process_on_the_whole_batch(method):
    # Exact by construction: the weights come from the all-reduced mean of the ranks' mean losses
    # (the mean over the whole batch, halves being equal), DDP averages the gradients of the
    # weighted sum, and the masks follow the averaged gradients and weights.
    results = spawn(_halves_worker, method)
    (w0, s0, m0, p0), (w1, _, m1, p1) = results[0], results[1]
    assert torch.equal(w0, w1) and torch.equal(m0, m1) and torch.equal(p0, p1)
    model = TwoHeads()
    weights, state, masks = _train_with_masks(model, method, 6)
    # Sums over 32 samples and then over two ranks against one sum over 64: float32
    # reassociation, ~1e-7 relative per step, amplified a little by Adam's normalisation.
    torch.testing.assert_close(w0, weights, rtol=1e-4, atol=1e-5)
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(s0[key], value, rtol=1e-4, atol=1e-5)
    assert torch.equal(m0, masks)  # the same topology decisions
    torch.testing.assert_close(p0, flat_parameters(model), rtol=1e-4, atol=1e-5)
    assert not torch.equal(w0[0], w0[-1]) and (masks == 0).any()
