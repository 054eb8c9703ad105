"""The optimizer shell with every weighting rule: training, checkpoints, the format version, wrong rules."""

from __future__ import annotations

import copy
import inspect
from typing import Any

import pytest
import torch

import torch_moo as tm
from tests.helpers import TwoHeads, assert_resumes, features_and_losses, sparse_for, task_losses
from torch_moo import weightings


def rules_of(kind: type) -> list[str]:
    """The names of the rules of ``kind`` that torch_moo.weightings exports."""
    return sorted(
        name
        for name in weightings.__all__
        if inspect.isclass(rule := getattr(weightings, name)) and issubclass(rule, kind) and rule is not kind
    )


GRAM_RULES = rules_of(weightings.GramWeighting)
LOSS_RULES = rules_of(weightings.LossWeighting)

# the arguments a rule needs beyond its defaults
NEEDS: dict[str, dict[str, Any]] = {
    "Constant": {"weights": [0.3, 0.7]},
    "ChebyshevLagrangian": {"num_objectives": 2, "preference": [0.5, 0.5], "outer_every": 3},
    "MinMax": {"num_objectives": 2, "update_every": 2},
}


def rule(name: str) -> weightings.Weighting:
    cls = getattr(weightings, name)
    options = dict(NEEDS.get(name, {}))
    if "num_objectives" in inspect.signature(cls).parameters:
        options.setdefault("num_objectives", 2)
    return cls(**options)


def gram_optimizer(model: TwoHeads, name: str) -> tm.JacobianDescent:
    return tm.JacobianDescent(model.parameters(), num_objectives=2, weighting=rule(name), lr=1e-2)


def loss_optimizer(model: TwoHeads, name: str) -> tm.WeightedLossDescent:
    return tm.WeightedLossDescent(model.parameters(), num_objectives=2, weighting=rule(name), lr=1e-2)


def run(objects, start: int, stop: int, features: bool = False) -> None:
    model, opt = objects
    for step in range(start, stop):
        opt.zero_grad()
        if features:
            z, losses = features_and_losses(model, step)
            opt.backward(losses, features=z)
        else:
            opt.backward(task_losses(model, step))
        opt.step()


def test_every_exported_rule_is_listed():
    assert {"MGDA", "Constant", "Mean"} <= set(GRAM_RULES)
    assert {"ChebyshevLagrangian", "MinMax", "Constant", "Mean"} <= set(LOSS_RULES)


@pytest.mark.parametrize("features", [False, True], ids=["full", "representation"])
@pytest.mark.parametrize("name", GRAM_RULES)
def test_jacobian_descent_with_each_gram_rule_lowers_both_losses_and_resumes_bit_exactly(name, features):
    model = TwoHeads()
    opt = gram_optimizer(model, name)
    before = task_losses(model, 0).detach()
    run((model, opt), 0, 40, features)
    after = task_losses(model, 0).detach()
    assert bool((after < before).all()), (before, after)
    assert_resumes(lambda: (m := TwoHeads(), gram_optimizer(m, name)), lambda o, a, b: run(o, a, b, features), 6)


@pytest.mark.parametrize("name", LOSS_RULES)
def test_weighted_loss_descent_with_each_loss_rule_trains_and_resumes_bit_exactly(name):
    model = TwoHeads()
    opt = loss_optimizer(model, name)
    before = task_losses(model, 0).detach().sum()
    run((model, opt), 0, 40)
    assert task_losses(model, 0).detach().sum() < before
    assert_resumes(lambda: (m := TwoHeads(), loss_optimizer(m, name)), run, 6)


@pytest.mark.parametrize("name", LOSS_RULES)
def test_loss_rules_weights_are_pure(name):
    model = TwoHeads()
    opt = loss_optimizer(model, name)
    run((model, opt), 0, 3)
    state = copy.deepcopy(opt.state_dict())
    for scale in (1.0, 3.0, 1e6):
        opt.weights(torch.tensor([0.5, 2.0]) * scale)
    assert str(opt.state_dict()) == str(state)


def test_chebyshev_weights_do_not_leak_into_the_next_step():
    """weights() between backward and step changes nothing: the step's update uses its own losses."""
    straight, probed = TwoHeads(), TwoHeads()
    first = tm.ChebyshevALM(straight.parameters(), num_objectives=2, preference=[0.3, 0.7], outer_every=2)
    second = tm.ChebyshevALM(probed.parameters(), num_objectives=2, preference=[0.3, 0.7], outer_every=2)
    for step in range(4):
        for model, opt in ((straight, first), (probed, second)):
            opt.zero_grad()
            opt.backward(task_losses(model, step))
            if opt is second:
                opt.weights(torch.tensor([5.0, 0.1]))
            opt.step()
    torch.testing.assert_close(first.multipliers, second.multipliers, rtol=0, atol=0)


def test_state_dict_carries_the_format_version_and_refuses_others():
    model = TwoHeads()
    opt = tm.MinMaxWeighting(model.parameters(), num_objectives=2)
    run((model, opt), 0, 2)
    state = opt.state_dict()
    assert state["torch_moo"]["version"] == 2
    old = copy.deepcopy(state)
    del old["torch_moo"]["version"]
    with pytest.raises(ValueError, match=r"format 1 \(no 'version' entry"):
        opt.load_state_dict(old)
    future = copy.deepcopy(state)
    future["torch_moo"]["version"] = 3
    with pytest.raises(ValueError, match=r"\['version'\] must be 2 .*got int 3"):
        opt.load_state_dict(future)


def test_a_rule_of_the_wrong_kind_or_size_is_refused():
    params = TwoHeads().parameters()
    with pytest.raises(TypeError, match="weighting must be a GramWeighting"):
        tm.JacobianDescent(params, num_objectives=2, weighting=weightings.MinMax(2))
    with pytest.raises(TypeError, match="weighting must be a LossWeighting"):
        tm.WeightedLossDescent(TwoHeads().parameters(), num_objectives=2, weighting=weightings.MGDA())
    with pytest.raises(ValueError, match="weighting was built for 3 objectives, num_objectives is 2"):
        tm.WeightedLossDescent(TwoHeads().parameters(), num_objectives=2, weighting=weightings.MinMax(3))


def test_moments_are_per_parameter_state_that_add_param_group_extends():
    model = TwoHeads()
    opt = tm.MultiGradientDescent(
        model.trunk.parameters(), num_objectives=2, moments=(0.9, 0.99), base=torch.optim.SGD, lr=1e-2
    )
    run((model, opt), 0, 2)
    first = model.trunk[0].weight
    assert opt.state[first]["objective_exp_avg"].shape == (2, *first.shape)
    assert int(opt.state[first]["objective_step"]) == 2
    opt.add_param_group({"params": list(model.heads.parameters())})
    run((model, opt), 2, 3)
    head = model.heads[0].weight
    assert int(opt.state[head]["objective_step"]) == 1 and int(opt.state[first]["objective_step"]) == 3


def test_a_controller_resets_the_per_objective_moments_of_regrown_weights():
    model = TwoHeads()
    opt = tm.MultiGradientDescent(
        model.parameters(), num_objectives=2, moments=(0.9, 0.99), base=torch.optim.SGD, lr=1e-2
    )
    sparse_for(model, opt)
    weight = model.trunk[0].weight
    regrown = 0
    for step in range(8):
        pruned = weight.detach() == 0
        run((model, opt), step, step + 1)
        grown = pruned & (weight.detach() != 0)
        moments = opt.state[weight]["objective_exp_avg"]
        assert bool((moments[:, grown] == 0).all()), step
        regrown += int(grown.sum())
    assert regrown > 0


def _trunk_step(weighting, heads: str, trunk: bool, batch: int, scaler=None):
    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh())
    tops = torch.nn.ModuleList(torch.nn.Linear(32, 1) for _ in range(3))
    params = [*body.parameters(), *tops.parameters()]
    opt = tm.JacobianDescent(
        params, num_objectives=3, weighting=weighting, heads=heads, trunk=body if trunk else None, lr=1e-2
    )
    x, y = torch.randn(batch, 32), torch.randn(batch, 3)
    z = body(x)
    losses = torch.stack([(head(z).squeeze(1) - y[:, i]).square().mean() for i, head in enumerate(tops)])
    ratio = opt._gramian.output_ratio() if trunk else None
    weights = opt.backward(losses, scaler=scaler)
    return weights, [p.grad.clone() for p in params], ratio, opt.stationarity


@pytest.mark.parametrize("heads", ["own", "weighted"])
@pytest.mark.parametrize("name", ["MGDA", "UPGrad", "NashMTL"])
def test_the_gramian_path_writes_the_jacobian_paths_gradients(name, heads):
    # batch 8: the layers' outputs (2 x 8 x 32) are fewer than the trunk's 2112 parameters, so the
    # Gramian path runs; it forms G from activations in another order of sums: float32 rounding apart
    jacobian = _trunk_step(getattr(weightings, name)(), heads, trunk=False, batch=8)
    gramian = _trunk_step(getattr(weightings, name)(), heads, trunk=True, batch=8)
    assert gramian[2] is not None and gramian[2] <= 1
    torch.testing.assert_close(gramian[0], jacobian[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gramian[3], jacobian[3], rtol=1e-5, atol=0)
    for ours, reference in zip(gramian[1], jacobian[1]):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-7)


def test_a_large_batch_takes_the_jacobian_path_and_a_scaler_does_not_change_the_weights():
    # batch 64: 2 x 64 x 32 outputs > 2112 parameters, the Jacobian path. NashMTL's weights depend on
    # the Gram matrix's scale: GradScaler's factor is taken off it (exactly: a power of two).
    plain = _trunk_step(weightings.NashMTL(), "own", trunk=True, batch=64)
    scaled = _trunk_step(
        weightings.NashMTL(), "own", trunk=True, batch=64, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**12)
    )
    assert plain[2] > 1
    torch.testing.assert_close(scaled[0], plain[0], rtol=1e-6, atol=0)
    for ours, reference in zip(scaled[1], plain[1]):
        torch.testing.assert_close(ours, reference * 2.0**12, rtol=1e-5, atol=1e-6)


def test_parameters_on_two_devices_are_refused_by_gradient_space_methods_and_taken_by_loss_space_ones():
    # "meta" stands in for a second device: the check reads devices, not values
    here, there = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2, device="meta"))
    for cls, options in ((tm.MultiGradientDescent, {}), (tm.JacobianDescent, {"weighting": weightings.UPGrad()})):
        with pytest.raises(ValueError, match=r"needs its parameters on one device, got cpu, meta"):
            cls([here, there], num_objectives=2, **options)
    tm.WeightedLossDescent([here, there], num_objectives=2, weighting=weightings.Mean())
