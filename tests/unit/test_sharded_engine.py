"""The full mode on DTensor parameters in one process (FSDP2 on a one-rank mesh): the same step as on plain
parameters, and a clear error where FSDP2 hands no gradient over."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributed.fsdp import fully_shard

from tests.helpers import TwoHeads, flat_parameters, task_losses
from torch_moo import JacobianDescent, MultiGradientDescent
from torch_moo.weightings import UPGrad


def sharded(model: TwoHeads) -> TwoHeads:
    for module in model.modules():
        if isinstance(module, nn.Linear):
            fully_shard(module)
    return fully_shard(model)


def whole_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.full_tensor().detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("weighting", ["MGDA", "UPGrad", "moments"])
def test_one_rank_fsdp2_takes_the_plain_models_steps_exactly(one_rank, weighting):
    def build(model):
        if weighting == "MGDA":
            return MultiGradientDescent(model.parameters(), num_objectives=2, lr=1e-2)
        if weighting == "moments":
            params = model.parameters()
            return MultiGradientDescent(params, num_objectives=2, moments=(0.9, 0.99), base=torch.optim.SGD, lr=1e-2)
        return JacobianDescent(model.parameters(), num_objectives=2, weighting=UPGrad(), heads="weighted", lr=1e-2)

    plain, shards = TwoHeads(), sharded(TwoHeads())
    runs = []
    for model in (plain, shards):
        opt = build(model)
        weights = []
        for step in range(4):
            opt.zero_grad()
            weights.append(opt.backward(task_losses(model, step)))
            opt.step()
        runs.append((torch.stack(weights), opt.stationarity))
    # one shard per parameter: the same gradients, the same Gram matrix (one block per parameter
    # group in both), the same weights and steps, bit for bit
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert torch.equal(flat_parameters(plain), whole_parameters(shards))


def test_gradient_sync_turned_off_is_refused_with_a_clear_error(one_rank):
    model = sharded(TwoHeads())
    model.set_requires_gradient_sync(False)
    opt = MultiGradientDescent(model.parameters(), num_objectives=2, lr=1e-2)
    with pytest.raises(ValueError, match=r"set_requires_gradient_sync\(True\)"):
        opt.backward(task_losses(model, 0))
