"""Bad input: a precise error naming the argument, the value and the rule; nothing changed."""

import copy
import io

import pytest
import torch

from tests.helpers import TwoHeads, flat_parameters, task_losses
from torch_moo import ChebyshevALM

GOOD = dict(num_objectives=2, preference=[0.5, 0.5])

CONSTRUCTION = [
    ({"num_objectives": 0}, ValueError, r"num_objectives must be >= 1, got 0"),
    ({"num_objectives": "2"}, TypeError, r"num_objectives must be an int, got str '2'"),
    ({"num_objectives": True}, TypeError, r"num_objectives must be an int, got bool"),
    ({"preference": [1.0]}, ValueError, r"preference must have 2 entries \(one per objective\), got shape \(1,\)"),
    ({"preference": [0.5, -0.1]}, ValueError, r"preference must be non-negative and not all zero, got \[0.5, -0.1"),
    ({"preference": [0.0, 0.0]}, ValueError, r"preference must be non-negative and not all zero"),
    ({"preference": [float("nan"), 1.0]}, ValueError, r"preference must be finite"),
    ({"preference": "ab"}, TypeError, r"preference must be a sequence of 2 numbers, got 'ab'"),
    ({"reference": [0.0, 0.0, 0.0]}, ValueError, r"reference must have 2 entries"),
    ({"reference": "nadir"}, ValueError, r"reference must be one of 'ideal'; got 'nadir'"),
    ({"augmentation": -1e-3}, ValueError, r"augmentation must be >= 0.0, got -0.001"),
    ({"augmentation": float("inf")}, ValueError, r"augmentation must be finite, got inf"),
    ({"penalty": 0.0}, ValueError, r"penalty must be > 0.0, got 0.0"),
    ({"penalty_growth": 0.5}, ValueError, r"penalty_growth must be >= 1.0, got 0.5"),
    ({"penalty": 2.0, "max_penalty": 1.0}, ValueError, r"max_penalty must be >= 2.0, got 1.0"),
    ({"outer_every": 0}, ValueError, r"outer_every must be >= 1, got 0"),
    ({"outer_every": 2.5}, TypeError, r"outer_every must be an int, got float 2.5"),
    ({"multiplier_update": "equality"}, ValueError, r"multiplier_update must be one of 'phr', 'reference'; got 'equality'"),
    ({"base": torch.nn.Linear}, TypeError, r"base must be a torch.optim.Optimizer subclass"),
    ({"base": ChebyshevALM}, TypeError, r"base must be a single-objective optimizer, got ChebyshevALM"),
    ({"lr": -1.0}, ValueError, r"Invalid learning rate"),  # the base optimizer's own check
]


@pytest.mark.parametrize("change, error, message", CONSTRUCTION, ids=[str(c[0]) for c in CONSTRUCTION])
def test_bad_construction(change, error, message):
    with pytest.raises(error, match=message):
        ChebyshevALM(TwoHeads().parameters(), **{**GOOD, **change})


def _nan_at(index):
    def losses(model):
        values = task_losses(model, 0)
        return values + torch.tensor([float("nan") if i == index else 0.0 for i in range(2)])
    return losses


BACKWARD = [
    ("wrong count", lambda m: task_losses(m, 0)[:1], ValueError, r"losses must hold num_objectives=2 values, got 1"),
    ("2-D", lambda m: task_losses(m, 0).reshape(1, 2), ValueError, r"losses must be a 1-D tensor of 2 per-objective losses, got shape \(1, 2\)"),
    ("non-scalar entry", lambda m: [m(torch.randn(4, 6))[0], task_losses(m, 0)[1]], ValueError,
     r"losses\[0\] must be a scalar, got shape \(4,\) \(reduce it, e.g. with .mean\(\)\)"),
    ("string entry", lambda m: [task_losses(m, 0)[0], "x"], TypeError, r"losses\[1\] must be a scalar tensor or a number, got str"),
    ("dict", lambda m: {"a": 1.0}, TypeError, r"losses must be a 1-D tensor or a sequence of scalars, got dict"),
    ("empty", lambda m: [], ValueError, r"losses must hold 2 per-objective losses, got none"),
    ("nan", _nan_at(1), ValueError, r"losses must be finite, got \[.*, nan\]"),
    ("inf", lambda m: task_losses(m, 0) * torch.tensor([float("inf"), 1.0]), ValueError, r"losses must be finite, got \[inf"),
    ("integer", lambda m: torch.tensor([1, 2]), TypeError, r"losses must be floating point, got dtype torch.int64"),
    ("detached", lambda m: task_losses(m, 0).detach(), ValueError, r"losses do not require grad: pass them before \.detach\(\)"),
]


def _snapshot(model, opt):
    return flat_parameters(model), [None if p.grad is None else p.grad.clone() for p in model.parameters()], \
        copy.deepcopy(opt.state_dict())


def _assert_unchanged(before, after):
    assert torch.equal(before[0], after[0])
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(before[1], after[1]))
    assert str(before[2]) == str(after[2])


@pytest.mark.parametrize("name, make_losses, error, message", BACKWARD, ids=[b[0] for b in BACKWARD])
def test_bad_losses_change_nothing(name, make_losses, error, message):
    model = TwoHeads()
    opt = ChebyshevALM(model.parameters(), **GOOD, outer_every=1, lr=1e-2)
    opt.backward(task_losses(model, 1))  # a pending backward and filled grads that must survive
    before = _snapshot(model, opt)
    with pytest.raises(error, match=message):
        opt.backward(make_losses(model))
    _assert_unchanged(before, _snapshot(model, opt))
    opt.step()  # the earlier backward is still the one pending


def _saved(**options):
    model = TwoHeads()
    opt = ChebyshevALM(model.parameters(), **{**GOOD, **options}, lr=1e-2)
    losses = task_losses(model, 0)
    opt.backward(torch.cat([losses, losses[:1]])[: opt.num_objectives])
    opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _with_method_entry(key, value):
    state = _saved()
    state["torch_moo"]["state"][key] = value
    return state


def _without_method_state():
    state = _saved()
    state["torch_moo"]["state"] = {}
    return state


LOADING = [
    ("other preference", lambda: _saved(preference=[0.2, 0.8]), r"state_dict was saved with preference=\[0\.2.*, but this ChebyshevALM has preference=\[0\.5, 0\.5\]"),
    ("other objectives", lambda: _saved(num_objectives=3, preference=[1, 1, 1]), r"saved with num_objectives=3, but this ChebyshevALM has num_objectives=2"),
    ("other base", lambda: _saved(base=torch.optim.SGD), r"saved with base='SGD', but this ChebyshevALM has base='Adam'"),
    ("other rule", lambda: _saved(multiplier_update="reference"), r"saved with multiplier_update='reference'"),
    ("plain Adam", lambda: torch.optim.Adam(TwoHeads().parameters()).state_dict(), r"state_dict has no 'torch_moo' entry"),
    ("bad shape", lambda: _with_method_entry("multipliers", torch.ones(3)), r"state_dict\['torch_moo'\]\['state'\]\['multipliers'\] must be a tensor of shape \(2,\), got tensor of shape \(3,\)"),
    ("missing entries", lambda: _without_method_state(), r"state_dict\['torch_moo'\]\['state'\] must hold \['estimate_count'.*\]: it lacks \['estimate_count'"),
]


@pytest.mark.parametrize("name, make_state, message", LOADING, ids=[case[0] for case in LOADING])
def test_mismatched_state_dict_changes_nothing(name, make_state, message):
    model = TwoHeads()
    opt = ChebyshevALM(model.parameters(), **GOOD, lr=1e-2)
    opt.backward(task_losses(model, 3))
    opt.step()
    before = _snapshot(model, opt)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(make_state())
    _assert_unchanged(before, _snapshot(model, opt))


def test_weights_checks_its_input_too():
    opt = ChebyshevALM(TwoHeads().parameters(), **GOOD)
    with pytest.raises(ValueError, match="losses must hold num_objectives=2 values, got 3"):
        opt.weights(torch.ones(3))
    assert torch.equal(opt.weights(torch.tensor([1.0, 1.0])), torch.tensor([0.5, 0.5]))


MINMAX_CONSTRUCTION = [
    ({"gamma": -1.0}, ValueError, r"gamma must be >= 0.0, got -1.0"),
    ({"ascent_step": 0.0}, ValueError, r"ascent_step must be > 0.0, got 0.0"),
    ({"gamma": 5.0, "ascent_step": 0.4}, ValueError, r"ascent_step \* gamma must be < 2 for the ascent to converge, got 0.4 \* 5.0"),
    ({"update_every": 0}, ValueError, r"update_every must be >= 1, got 0"),
    ({"ascent": "sgd"}, ValueError, r"ascent must be one of 'projected', 'mirror'; got 'sgd'"),
    ({"num_objectives": 0}, ValueError, r"num_objectives must be >= 1, got 0"),
]


@pytest.mark.parametrize("change, error, message", MINMAX_CONSTRUCTION, ids=[str(c[0]) for c in MINMAX_CONSTRUCTION])
def test_bad_minmax_construction(change, error, message):
    from torch_moo import MinMaxWeighting

    with pytest.raises(error, match=message):
        MinMaxWeighting(TwoHeads().parameters(), **{"num_objectives": 2, **change})


def test_minmax_state_dict_from_another_configuration_changes_nothing():
    from torch_moo import MinMaxWeighting

    saved = MinMaxWeighting(TwoHeads().parameters(), num_objectives=2, ascent="mirror").state_dict()
    model = TwoHeads()
    opt = MinMaxWeighting(model.parameters(), num_objectives=2, lr=1e-2)
    opt.backward(task_losses(model, 0))
    opt.step()
    before = _snapshot(model, opt)
    with pytest.raises(ValueError, match=r"saved with ascent='mirror', but this MinMaxWeighting has ascent='projected'"):
        opt.load_state_dict(saved)
    with pytest.raises(ValueError, match=r"saved with method='ChebyshevALM', but this MinMaxWeighting has method='MinMaxWeighting'"):
        opt.load_state_dict(_saved())
    _assert_unchanged(before, _snapshot(model, opt))


def test_all_finite_matches_isfinite():
    from torch_moo._validation import all_finite

    values = torch.tensor([0.0, -1e38, 3e38, 1e-45, float("inf"), float("-inf"), float("nan")])
    for i in range(len(values)):
        for j in range(len(values)):
            pair = values[[i, j]]
            assert bool(all_finite(pair)) == bool(torch.isfinite(pair).all()), pair
