"""torch_moo.checkpoint in one process: DCP round trips, the moments' template, refusals."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp

from tests.helpers import TwoHeads, assert_same_state_dict, flat_parameters, task_losses
from torch_moo import ChebyshevALM, MultiGradientDescent, WeightedLossDescent
from torch_moo.checkpoint import TrainingState, get_state_dict, set_state_dict
from torch_moo.weightings import RLW

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")


def build(method: str):
    model = TwoHeads()
    params = model.parameters()
    if method == "moments":
        opt = MultiGradientDescent(params, num_objectives=2, moments=(0.9, 0.99), base=torch.optim.SGD, lr=1e-2)
    elif method == "chebyshev":
        opt = ChebyshevALM(params, num_objectives=2, preference=[0.3, 0.7], outer_every=2, lr=1e-2)
    else:  # a rule with its own generator: its state must travel too
        opt = WeightedLossDescent(params, num_objectives=2, weighting=RLW(2, seed=3))
    return model, opt


def run(model, opt, steps: range) -> torch.Tensor:
    weights = []
    for step in steps:
        opt.zero_grad()
        weights.append(opt.backward(task_losses(model, step)))
        opt.step()
    return torch.stack(weights)


@pytest.mark.parametrize("method", ["moments", "chebyshev", "rlw"])
def test_resuming_from_a_dcp_checkpoint_is_the_run_that_never_stopped(tmp_path, method):
    model, opt = build(method)
    run(model, opt, range(3))
    dcp.save({"train": TrainingState(model, opt)}, checkpoint_id=tmp_path)
    straight = run(model, opt, range(3, 6)), flat_parameters(model)
    model, opt = build(method)  # fresh: no state at all, not even the moments' entries
    dcp.load({"train": TrainingState(model, opt)}, checkpoint_id=tmp_path)
    resumed = run(model, opt, range(3, 6)), flat_parameters(model)
    assert torch.equal(resumed[0], straight[0]) and torch.equal(resumed[1], straight[1])


def test_zero_moments_made_for_a_template_change_nothing():
    model, opt = build("moments")
    twin = copy.deepcopy((model, opt))
    assert opt._init_state() and not opt._init_state()  # made once, then there
    assert opt.state[next(model.parameters())]["objective_exp_avg"].shape == (2, 16, 6)
    assert torch.equal(run(model, opt, range(3)), run(*twin, range(3)))
    assert torch.equal(flat_parameters(model), flat_parameters(twin[0]))


def test_set_state_dict_refuses_a_state_for_other_objects_and_changes_nothing():
    model, opt = build("chebyshev")
    run(model, opt, range(2))
    state = get_state_dict(model, opt)
    del state["torch_moo"]
    with pytest.raises(ValueError, match=r"state lacks \['torch_moo'\]"):
        set_state_dict(model, opt, state)
    other_model, other = build("moments")
    run(other_model, other, range(2))
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match="saved with method=.ChebyshevALM."):
        set_state_dict(other_model, other, get_state_dict(*build("chebyshev")))
    assert_same_state_dict(other.state_dict(), before)


def test_a_checkpoint_saved_before_any_step_loads():
    model, opt = build("chebyshev")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # DCP's own empty-state step must not reach torch_moo's step
        state = get_state_dict(model, opt)
    set_state_dict(model, opt, state)
    run(model, opt, range(1))


def test_after_a_load_the_optimizer_and_its_base_share_groups_and_state(tmp_path):
    model, opt = build("chebyshev")
    run(model, opt, range(2))
    dcp.save({"train": TrainingState(model, opt)}, checkpoint_id=tmp_path)
    dcp.load({"train": TrainingState(model, opt)}, checkpoint_id=tmp_path)
    assert opt.param_groups is opt.base.param_groups and opt.state is opt.base.state
    torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5).step()
    assert opt.base.param_groups[0]["lr"] == 5e-3  # a scheduler on the optimizer reaches the base
