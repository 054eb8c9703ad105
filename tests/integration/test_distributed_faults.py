"""Two gloo processes, a NaN loss on one rank only: every rank raises (or skips) together, none hangs.

Before the decision was made on the all-reduced losses, the rank with the NaN raised before the
all-reduce while the other waited in it forever; the workers here run under a deadline, so such a
hang fails the test instead of blocking the suite.
"""

import pytest
import torch
import torch.distributed as dist

from tests.helpers import TwoHeads, assert_same_state_dict, flat_parameters, spawn, task_losses
from torch_moo import ChebyshevALM, MinMaxWeighting, MultiGradientDescent, SparsityController

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # two processes, each importing torch

FAULT_STEP = 2


def _make(method: str, params, nonfinite: str):
    if method == "ChebyshevALM":
        return ChebyshevALM(
            params,
            num_objectives=2,
            preference=[0.3, 0.7],
            reference="ideal",
            outer_every=2,
            penalty=5.0,
            nonfinite=nonfinite,
            lr=1e-2,
        )
    if method == "MinMaxWeighting":
        return MinMaxWeighting(params, num_objectives=2, gamma=1.0, ascent_step=0.5, nonfinite=nonfinite, lr=1e-2)
    return MultiGradientDescent(params, num_objectives=2, nonfinite=nonfinite, lr=1e-2)


def _losses(model, step: int, rank: int) -> torch.Tensor:
    losses = task_losses(model, 10 * step + rank)  # each rank its own batch
    if step == FAULT_STEP and rank == 1:
        losses = losses * torch.tensor([1.0, float("nan")])
    return losses


def _worker(rank: int, world_size: int, port: int, method: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        record = {}
        for mode in ("raise", "skip"):
            model = torch.nn.parallel.DistributedDataParallel(TwoHeads())
            opt = _make(method, model.parameters(), mode)
            sparse = SparsityController(
                opt, model=model, sparsity=0.5, distribution="uniform", regrow="gradient", update_every=2
            )
            errors, skipped = [], []
            for step in range(6):
                opt.zero_grad()
                # MGDA's full mode takes its gradients with autograd.grad: outside DDP's reducer
                sync = model.no_sync() if method == "MultiGradientDescent" else _nothing()
                with sync:
                    losses = _losses(model, step, rank)
                    try:
                        opt.backward(losses)
                    except ValueError as error:
                        errors.append((step, str(error)))
                        continue  # a training loop that catches the error moves on to the next batch
                opt.step()
                skipped.append(opt.skipped)
            state = opt.state_dict()
            record[mode] = dict(
                errors=errors,
                skipped=skipped,
                params=flat_parameters(model.module),
                method=state["torch_moo"]["state"],
                steps=[int(s["step"]) for s in state["state"].values()],
                sparse_step=sparse.step_count,
                masks=torch.cat([m.flatten() for m in sparse.masks.values()]),
            )
        results[rank] = record
    finally:
        dist.destroy_process_group()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _trained(result: dict) -> dict:
    """What training left in a worker's ``result``: parameters, method state, masks (not the errors, which differ)."""
    return {key: result[key] for key in ("params", "method", "masks")}


@pytest.mark.parametrize("method", ["ChebyshevALM", "MinMaxWeighting", "MultiGradientDescent"])
def test_a_nan_on_one_rank_raises_or_skips_on_every_rank(method):
    results = spawn(_worker, method)
    for mode in ("raise", "skip"):
        first, second = results[0][mode], results[1][mode]
        assert_same_state_dict(_trained(first), _trained(second))
        assert torch.isfinite(first["params"]).all()
        assert first["steps"] == second["steps"] == [5] * len(first["steps"])  # 6 batches, one refused
        assert first["sparse_step"] == second["sparse_step"] == 5
    raised = [results[rank]["raise"]["errors"] for rank in (0, 1)]
    assert [step for step, _ in raised[0]] == [step for step, _ in raised[1]] == [FAULT_STEP]
    assert "nan" in raised[1][0][1]  # the rank with the NaN names it
    assert "their mean over the 2 ranks is" in raised[0][0][1]  # the other rank says where it came from
    for rank in (0, 1):
        skipped = results[rank]["skip"]["skipped"]
        assert skipped == [step == FAULT_STEP for step in range(6)]
        assert results[rank]["skip"]["errors"] == []
    # the same batches with the fault refused either way: raise-and-continue equals skip
    assert_same_state_dict(_trained(results[0]["raise"]), _trained(results[0]["skip"]))
