"""Atomic loading: every load_state_dict either succeeds entirely or raises a ValueError naming the
bad entry with nothing changed; copies (copy.deepcopy, pickling) of a model, its optimizer and its
SparsityController train exactly as the originals do."""

from __future__ import annotations

import copy
import functools
import io
import re
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import TwoHeads, task_losses, train
from torch_moo import ChebyshevALM, MinMaxWeighting, MultiGradientDescent, ParetoTangentExplorer, SparsityController

# ------------------------------------------------------------------------------- helpers
OPTIMIZERS: dict[str, Callable[[torch.nn.Module], torch.optim.Optimizer]] = {
    "ChebyshevALM-phr": lambda m: ChebyshevALM(m.parameters(), num_objectives=2, preference=[0.3, 0.7], outer_every=3, lr=1e-2),
    "ChebyshevALM-reference": lambda m: ChebyshevALM(
        m.parameters(), num_objectives=2, preference=[0.3, 0.7], reference=[0.0, 0.1], multiplier_update="reference",
        outer_every=2, lr=1e-2,
    ),
    "ChebyshevALM-ideal": lambda m: ChebyshevALM(
        m.parameters(), num_objectives=2, preference=[0.5, 0.5], reference="ideal", outer_every=4, lr=1e-2
    ),
    "MinMaxWeighting-projected": lambda m: MinMaxWeighting(m.parameters(), num_objectives=2, update_every=2, lr=1e-2),
    "MinMaxWeighting-mirror": lambda m: MinMaxWeighting(m.parameters(), num_objectives=2, ascent="mirror", lr=1e-2),
    "MultiGradientDescent": lambda m: MultiGradientDescent(m.parameters(), num_objectives=2, lr=1e-2),
    "MultiGradientDescent-moments": lambda m: MultiGradientDescent(m.parameters(), num_objectives=2, moments=(0.9, 0.99), lr=1e-2),
    "ParetoTangentExplorer": lambda m: ParetoTangentExplorer(m.parameters(), num_objectives=2, beta=[0.0, 1.0], lr=1e-2, momentum=0.9),
}



def trained(name):
    model = TwoHeads()
    opt = OPTIMIZERS[name](model)
    train(model, opt, 3)
    if isinstance(opt, ParetoTangentExplorer):
        opt.beta = [0.25, 0.75]  # set between steps: part of the state to resume
    return model, opt


def assert_same(first, second, path="state"):
    """Structural equality: same types, keys and lengths; tensors equal in dtype, shape and values (NaN included)."""
    assert type(first) is type(second), f"{path}: {type(first).__name__} != {type(second).__name__}"
    if isinstance(first, torch.Tensor):
        assert first.dtype == second.dtype and first.device == second.device, path
        same = torch.equal(first, second) or (
            first.shape == second.shape and torch.equal(first.isnan(), second.isnan()) and torch.equal(first.nan_to_num(), second.nan_to_num())
        )
        assert same, path
    elif isinstance(first, dict):
        assert list(first) == list(second), path
        for key in first:
            assert_same(first[key], second[key], f"{path}[{key!r}]")
    elif isinstance(first, (list, tuple)):
        assert len(first) == len(second), path
        for index, (a, b) in enumerate(zip(first, second)):
            assert_same(a, b, f"{path}[{index}]")
    else:
        assert first == second, path


def snapshot(model, opt, sparse=None, attributes=True):
    """Everything a failed load must leave alone: weights, state dicts, masks, and (``attributes``)
    what no state dict holds (what backward recorded, cached estimates, diagnostics, the masks' multipliers)."""
    return copy.deepcopy({
        "params": [p.detach() for p in model.parameters()],
        "opt": opt.state_dict(),
        "opt attributes": _attributes(opt) if attributes else None,
        "sparse": None if sparse is None else sparse.state_dict(),
        "masks": None if sparse is None else sparse.masks,
        "sparse attributes": _attributes(sparse) if attributes and sparse is not None else None,
    })


# references to what the snapshot holds otherwise (parameters, optimizers, model) or to hooks
_REFERENCES = {"base", "state", "param_groups", "defaults", "_optimizer", "_wrapper", "model", "_params", "_handles", "_layouts"}


def _attributes(obj):
    return {
        key: _plain(value)
        for key, value in vars(obj).items()
        # torch.optim's one-time warning flags are not copied with an optimizer (nor is a warning)
        if key not in _REFERENCES and not key.endswith("_hooks") and not key.startswith("_warned")
    }


def _plain(value):
    """``value`` as tensors, numbers and containers that assert_same compares."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, torch.Generator):
        return value.get_state()
    if isinstance(value, dict):
        return {key: _plain(entry) for key, entry in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(entry) for entry in value]
    if hasattr(value, "__dict__") and not callable(value):  # RunningMean
        return {type(value).__name__: _attributes(value)}
    return value


# ---------------------------------------------------------------------- optimizer corruptions
def _set(path, value):
    def corrupt(state):
        *parents, last = path
        for key in parents:
            state = state[key]
        state[last] = value(state[last]) if callable(value) else value
    return corrupt


def _delete(path):
    def corrupt(state):
        *parents, last = path
        for key in parents:
            state = state[key]
        del state[last]
    return corrupt


def _entry(path):
    return "state_dict" + "".join(f"[{key!r}]" for key in path)


STRUCTURAL = ("ChebyshevALM-phr", "ParetoTangentExplorer")  # an Adam base; an SGD base with momentum
# the entries whose rules forbid negative values (the others may hold any finite value; the
# multipliers of multiplier_update="reference" too)
NON_NEGATIVE = {"multipliers", "penalty", "estimate_count", "loss_count", "task_weights", "moment_steps", "exp_avg_sq"}


def optimizer_corruptions(name):
    """(label, corrupt(state) in place, regex the error must match): every entry of a valid state
    dict broken in turn; the entries outside the method state for the two base optimizers only."""
    _, opt = trained(name)
    saved = opt.state_dict()
    method = ("torch_moo", "state")
    cases = [] if name not in STRUCTURAL else [
        ("torch_moo None", _set(("torch_moo",), None), re.escape("state_dict['torch_moo'] must be a dict")),
        ("torch_moo extra", _set(("torch_moo", "extra"), 1), re.escape("state_dict['torch_moo'] must hold only") + ".*'extra'"),
        ("torch_moo lacks state", _delete(("torch_moo", "state")), re.escape("state_dict['torch_moo'] must hold") + ".*lacks \\['state'\\]"),
        ("config None", _set(("torch_moo", "config"), None), re.escape("state_dict['torch_moo']['config'] must be a dict")),
        ("config lacks method", _delete(("torch_moo", "config", "method")), re.escape("state_dict['torch_moo']['config'] lacks 'method'")),
        ("config extra", _set(("torch_moo", "config", "bogus"), 1), re.escape("state_dict['torch_moo']['config'] holds 'bogus'")),
        ("config tensor", _set(("torch_moo", "config", "num_objectives"), torch.tensor([2, 2])), "state_dict was saved with num_objectives=tensor"),
        ("method state None", _set(method, None), re.escape("state_dict['torch_moo']['state'] must be a dict")),
        ("method state extra", _set((*method, "bogus"), torch.zeros(2)), re.escape("state_dict['torch_moo']['state'] must hold only") + ".*'bogus'"),
        ("no param_groups", _delete(("param_groups",)), "state_dict lacks 'param_groups'"),
        ("no state", _delete(("state",)), "state_dict lacks 'state'"),
        ("param_groups None", _set(("param_groups",), None), re.escape("state_dict['param_groups'] must be a list")),
        ("group params None", _set(("param_groups", 0, "params"), None), re.escape("state_dict['param_groups'] must be a list")),
        ("two groups", _set(("param_groups",), lambda groups: [groups[0], {**groups[0], "params": []}]), "saved for parameter groups of"),
        ("fewer params", _set(("param_groups", 0, "params"), lambda params: params[:-1]), "saved for parameter groups of"),
        ("params repeated", _set(("param_groups", 0, "params"), lambda params: [params[0]] * len(params)), "must number each parameter with one int"),
        ("lr a string", _set(("param_groups", 0, "lr"), "fast"), re.escape("state_dict['param_groups'][0]['lr'] must be of the kind of")),
        ("state None", _set(("state",), None), re.escape("state_dict['state'] must be a dict")),
        ("state of no parameter", _set(("state", 99), {}), re.escape("state_dict['state'] holds parameter 99")),
        ("state entry a list", _set(("state", 0), []), re.escape("state_dict['state'][0] must be a dict")),
    ]
    for key in ("exp_avg", "momentum_buffer"):  # Adam's, or SGD's with momentum (the explorer's)
        if name in STRUCTURAL and key in saved["state"][0]:
            cases.append((f"base {key} shape", _set(("state", 0, key), lambda t: t.reshape(-1)[:1]), re.escape(_entry(("state", 0, key)))))
    if name in STRUCTURAL:
        base = type(opt.base).__name__
        cases.append(("group lacks lr", _delete(("param_groups", 0, "lr")), re.escape(f"state_dict['param_groups'][0] lacks ['lr'], which {base} reads")))
    if "step" in saved["state"].get(0, {}) and name in STRUCTURAL:  # Adam's __setstate__ reads every state's step
        cases.append(("base step missing", _delete(("state", 0, "step")), f"{base} refuses state_dict's 'state' and 'param_groups': KeyError"))
    for key, value in saved["torch_moo"]["state"].items():
        path, entry = (*method, key), re.escape(_entry((*method, key)))
        cases += [
            (f"{key} missing", _delete(path), re.escape("state_dict['torch_moo']['state'] must hold") + f".*lacks \\['{key}'\\]"),
            (f"{key} a string", _set(path, "x"), entry),
        ]
        if isinstance(value, torch.Tensor):
            cases += [
                (f"{key} shape", _set(path, lambda t: t.unsqueeze(0)), entry + " must be a tensor of shape"),
                (f"{key} bool", _set(path, lambda t: t != 0), entry + " must be a dense real tensor"),
                (f"{key} list", _set(path, lambda t: t.tolist()), entry + " must be a tensor"),
            ]
            if value.numel():
                cases.append((f"{key} NaN", _set(path, lambda t: torch.full_like(t, float("nan"))), entry + " must be"))
            if value.numel() and key in NON_NEGATIVE and not (key == "multipliers" and opt.multiplier_update == "reference"):
                cases.append((f"{key} negative", _set(path, lambda t: t - t.abs().max() - 1), entry + " must be"))
        else:
            cases += [
                (f"{key} negative", _set(path, -1), entry + " must be a non-negative int"),
                (f"{key} bool", _set(path, True), entry + " must be a non-negative int"),
                (f"{key} float", _set(path, 1.0), entry + " must be a non-negative int"),
                (f"{key} too large", _set(path, 10**6), entry + " must be (a non-negative int )?below"),
            ]
    return cases


CASES = [(name, case) for name in OPTIMIZERS for case in optimizer_corruptions(name)]


@pytest.mark.parametrize("name, case", CASES, ids=[f"{name}-{case[0]}" for name, case in CASES])
def test_a_corrupted_entry_is_named_and_changes_nothing(name, case):
    _, corrupt, message = case
    state = copy.deepcopy(_source_state(name))
    corrupt(state)
    model, opt = copy.deepcopy(_trained_once(name))  # a copy is as trained (test_deepcopy_*), and quicker
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(state)
    assert_same(before, snapshot(model, opt))


_trained_once = functools.cache(trained)


@functools.cache
def _source_state(name):
    """A valid state different from the target's: two steps further."""
    model, opt = trained(name)
    train(model, opt, 2, start=3)
    return copy.deepcopy(opt.state_dict())


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_valid_state_loads_whole(name):
    source_model, source = trained(name)
    train(source_model, source, 2, start=3)
    model, opt = trained(name)
    model.load_state_dict(source_model.state_dict())
    opt.load_state_dict(copy.deepcopy(source.state_dict()))
    # the state, not the diagnostics and caches of the last step (stationarity, the last estimate)
    assert_same(snapshot(source_model, source, attributes=False), snapshot(model, opt, attributes=False))
    train(model, opt, 2, start=5)
    train(source_model, source, 2, start=5)
    assert_same(snapshot(source_model, source), snapshot(model, opt))


def test_config_none_and_a_bad_since_outer_are_value_errors_that_change_nothing():
    """The two reports of the issue: since_outer checked after the base state and multipliers were
    loaded; config=None a bare TypeError."""
    model, opt = trained("ChebyshevALM-phr")
    saved = copy.deepcopy(opt.state_dict())
    train(model, opt, 2, start=3)
    before = snapshot(model, opt)
    for key, value, message in [
        ("since_outer", "x", r"state_dict\['torch_moo'\]\['state'\]\['since_outer'\] must be a non-negative int, got str 'x'"),
        ("since_outer", 3, r"\['since_outer'\] must be below outer_every=3, got int 3"),
        ("penalty", torch.tensor(0.0), r"\['penalty'\] must be in \(0, max_penalty=1000000.0\]"),
    ]:
        broken = copy.deepcopy(saved)
        broken["torch_moo"]["state"][key] = value
        with pytest.raises(ValueError, match=message):
            opt.load_state_dict(broken)
    broken = copy.deepcopy(saved)
    broken["torch_moo"]["config"] = None
    with pytest.raises(ValueError, match=r"state_dict\['torch_moo'\]\['config'\] must be a dict of the settings it was saved with, got NoneType"):
        opt.load_state_dict(broken)
    with pytest.raises(ValueError, match=r"state_dict must be a dict from ChebyshevALM.state_dict\(\), got NoneType"):
        opt.load_state_dict(None)
    assert_same(before, snapshot(model, opt))
    twin_model, twin = trained("ChebyshevALM-phr")
    train(twin_model, twin, 2, start=3)
    train(model, opt, 2, start=5)  # it trains on exactly as one that never saw the failed loads
    train(twin_model, twin, 2, start=5)
    assert_same(snapshot(twin_model, twin), snapshot(model, opt))


def test_minmax_weights_off_the_simplex_are_refused():
    model, opt = trained("MinMaxWeighting-mirror")
    before = snapshot(model, opt)
    for weights, rule in [([0.6, 0.6], "positive and summing to 1"), ([1.0, 0.0], "positive and summing to 1")]:
        state = copy.deepcopy(opt.state_dict())
        state["torch_moo"]["state"]["task_weights"] = torch.tensor(weights)
        with pytest.raises(ValueError, match=rf"\['task_weights'\] must be {rule} \(ascent='mirror'\)"):
            opt.load_state_dict(state)
    assert_same(before, snapshot(model, opt))
    model, opt = trained("MinMaxWeighting-projected")
    state = copy.deepcopy(opt.state_dict())
    state["torch_moo"]["state"]["task_weights"] = torch.tensor([1.0, 0.0])  # a vertex: valid for the projection
    opt.load_state_dict(state)
    assert torch.equal(opt.task_weights, torch.tensor([1.0, 0.0]))


def test_reference_multipliers_may_be_negative_but_sum_to_one():
    model, opt = trained("ChebyshevALM-reference")
    state = copy.deepcopy(opt.state_dict())
    state["torch_moo"]["state"]["multipliers"] = torch.tensor([0.7, 0.7])
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match=r"\['multipliers'\] must be finite and summing to 1 \(multiplier_update='reference'\)"):
        opt.load_state_dict(state)
    assert_same(before, snapshot(model, opt))
    state["torch_moo"]["state"]["multipliers"] = torch.tensor([1.5, -0.5])  # what the reference update can reach
    opt.load_state_dict(state)
    assert torch.equal(opt.multipliers, torch.tensor([1.5, -0.5]))


def test_explorer_saves_and_checks_beta():
    model, opt = trained("ParetoTangentExplorer")
    saved = copy.deepcopy(opt.state_dict())
    assert torch.equal(saved["torch_moo"]["state"]["beta"], torch.tensor([0.25, 0.75]))
    fresh = OPTIMIZERS["ParetoTangentExplorer"](TwoHeads())
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.beta, torch.tensor([0.25, 0.75]))  # resumed, not the constructor's [0, 1]
    saved["torch_moo"]["state"]["beta"][0] = 9.0
    assert torch.equal(fresh.beta, torch.tensor([0.25, 0.75]))  # a copy: the state dict does not alias it
    for beta, message in [
        (torch.zeros(2), r"\['beta'\] must be finite with a non-zero entry, got tensor of shape \(2,\) and dtype torch.float32 \(\[0.0, 0.0\]\)"),
        (torch.ones(3), r"\['beta'\] must be a tensor of shape \(2,\), got tensor of shape \(3,\)"),
    ]:
        saved["torch_moo"]["state"]["beta"] = beta
        with pytest.raises(ValueError, match=message):
            fresh.load_state_dict(saved)
    assert torch.equal(fresh.beta, torch.tensor([0.25, 0.75]))


def test_float64_state_is_cast_to_the_current_dtype():
    model, opt = trained("ChebyshevALM-ideal")
    state = copy.deepcopy(opt.state_dict())
    for key in ("multipliers", "estimate_sum", "ideal"):
        state["torch_moo"]["state"][key] = state["torch_moo"]["state"][key].double()
    fresh = OPTIMIZERS["ChebyshevALM-ideal"](TwoHeads())
    fresh.load_state_dict(state)
    for key, value in fresh.state_dict()["torch_moo"]["state"].items():
        current = opt.state_dict()["torch_moo"]["state"][key]
        if isinstance(value, torch.Tensor):
            assert value.dtype == current.dtype and torch.equal(value, current.to(value.dtype)), key


# ---------------------------------------------------------------------- the controller
CONTROLLERS = {
    "random": dict(sparsity=0.5, regrow="random", update_every=2),
    "gradient": dict(sparsity=0.5, regrow="gradient", update_every=2),
    "exploration": dict(sparsity=0.5, regrow="exploration", update_every=2),
    "pruning": dict(sparsity=0.5, threshold=1e-3),
    "row": dict(sparsity=0.5, regrow="random", structure="row", update_every=2),
}


def controlled(mode, optimizer="Adam", steps=3):
    model = TwoHeads()
    if optimizer == "Adam":
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    else:
        opt = OPTIMIZERS[optimizer](model)
    sparse = SparsityController(opt, model=model, generator=torch.Generator().manual_seed(5), **CONTROLLERS[mode])
    train_any(model, opt, steps)
    return model, opt, sparse


def train_any(model, opt, steps, start=0):
    for step in range(start, start + steps):
        opt.zero_grad()
        losses = task_losses(model, step)
        if hasattr(opt, "backward"):
            opt.backward(losses)
        else:
            losses.sum().backward()
        opt.step()


def controller_corruptions(mode):
    _, _, sparse = controlled(mode)
    saved = sparse.state_dict()
    dynamic = saved["active_updates"] is not None
    cases = [
        ("all keys missing", lambda s: s.clear() or s.update(_=None), r"state_dict must hold \[.*\]: it lacks"),
        ("extra key", _set(("bogus",), 1), r"state_dict must hold only \[.*\]: it also holds \['bogus'\]"),
        ("config None", _set(("config",), None), re.escape("state_dict['config'] must be a dict")),
        ("config lacks regrow", _delete(("config", "regrow")), re.escape("state_dict['config'] lacks 'regrow'")),
        ("config extra", _set(("config", "bogus"), 1), re.escape("state_dict['config'] holds 'bogus'")),
        ("config other", _set(("config", "update_every"), 7), "state_dict was saved with update_every=7, but this controller has"),
        ("names None", _set(("names",), None), "do not match this model's masked parameters"),
        ("names renamed", _set(("names", 0), "other"), "do not match this model's masked parameters"),
        ("shapes other", _set(("shapes", 0), (1, 2)), "do not match this model's masked parameters"),
        ("masks short", _set(("masks",), lambda masks: masks[:1]), re.escape("state_dict['masks'] must hold one entry per masked parameter (3)")),
        ("masks None", _set(("masks",), None), re.escape("state_dict['masks'] must hold one entry")),
        ("mask float", _set(("masks", 1), lambda m: m.float()), re.escape("state_dict['masks'][1] (heads.0.weight) must be a boolean tensor")),
        ("mask shape", _set(("masks", 1), lambda m: torch.cat([m.reshape(-1), m.reshape(-1)])), re.escape("state_dict['masks'][1] (heads.0.weight) must be a boolean tensor")),
        ("mask a list", _set(("masks", 1), lambda m: m.tolist()), re.escape("state_dict['masks'][1] (heads.0.weight) must be a boolean tensor")),
        ("active short", _set(("active",), lambda active: active[:2]), re.escape("state_dict['active'] must hold one entry")),
        ("active negative", _set(("active", 0), -1), re.escape("state_dict['active'][0] (trunk.0.weight) must be a non-negative int")),
        ("active float", _set(("active", 0), lambda a: float(a)), re.escape("state_dict['active'][0] (trunk.0.weight) must be a non-negative int")),
        ("active too large", _set(("active", 0), 10**6), re.escape("state_dict['active'][0] (trunk.0.weight) must be a non-negative int below")),
        ("active below mask", _set(("active", 0), lambda a: a - 1), re.escape("state_dict['active'][0] (trunk.0.weight) is")),
        ("step negative", _set(("step",), -1), re.escape("state_dict['step'] must be a non-negative int")),
        ("step a string", _set(("step",), "3"), re.escape("state_dict['step'] must be a non-negative int")),
        ("step bool", _set(("step",), True), re.escape("state_dict['step'] must be a non-negative int")),
        ("step float", _set(("step",), 3.0), re.escape("state_dict['step'] must be a non-negative int")),
        ("generator short", _set(("generator",), lambda g: g[:10]), re.escape("state_dict['generator'] is not a state of this controller's generator")),
        ("generator float", _set(("generator",), lambda g: g.float()), re.escape("state_dict['generator'] must be None or a generator state")),
        ("generator a list", _set(("generator",), lambda g: g.tolist()), re.escape("state_dict['generator'] must be None or a generator state")),
    ]
    if dynamic:
        cases += [
            ("active above mask", _set(("active", 0), lambda a: a + 1), re.escape("state_dict['active'][0] (trunk.0.weight) is")),
            ("updates None", _set(("active_updates",), None), re.escape("state_dict['active_updates'] must hold one counter per masked parameter")),
            ("updates short", _set(("active_updates",), lambda u: u[:1]), re.escape("state_dict['active_updates'] must hold one counter")),
            ("updates negative", _set(("active_updates", 2), lambda n: n - n.max() - 1), re.escape("state_dict['active_updates'][2] (heads.1.weight) must be a tensor of non-negative integers")),
            ("updates float", _set(("active_updates", 2), lambda n: n.float()), re.escape("state_dict['active_updates'][2] (heads.1.weight) must be a tensor of non-negative integers")),
            ("updates shape", _set(("active_updates", 2), lambda n: torch.cat([n.reshape(-1), n.reshape(-1)])), re.escape("state_dict['active_updates'][2] (heads.1.weight) must be a tensor")),
        ]
    else:
        cases.append(("updates under pruning", _set(("active_updates",), lambda _: [m.int() for m in saved["masks"]]),
                      re.escape("state_dict['active_updates'] must be None under pruning (regrow=None)")))
    return cases


CONTROLLER_CASES = [(mode, case) for mode in CONTROLLERS for case in controller_corruptions(mode)]


@pytest.mark.parametrize("mode, case", CONTROLLER_CASES, ids=[f"{mode}-{case[0]}" for mode, case in CONTROLLER_CASES])
def test_a_corrupted_controller_entry_is_named_and_changes_nothing(mode, case):
    label, corrupt, message = case
    state = copy.deepcopy(_source_controller_state(mode))
    corrupt(state)
    model, opt, sparse = copy.deepcopy(_controlled_once(mode))
    before = snapshot(model, opt, sparse)
    with pytest.raises(ValueError, match=message):
        sparse.load_state_dict(state)
    assert_same(before, snapshot(model, opt, sparse))


_controlled_once = functools.cache(controlled)


@functools.cache
def _source_controller_state(mode):
    """A valid state with other masks, counters, step and generator state than the target's."""
    return copy.deepcopy(controlled(mode, steps=5)[2].state_dict())


@pytest.mark.parametrize("mode", CONTROLLERS)
def test_a_valid_controller_state_loads_whole(mode):
    source_model, source_opt, source = controlled(mode, steps=5)
    model, opt, sparse = controlled(mode)
    model.load_state_dict(source_model.state_dict())
    # copies, as from a checkpoint file: torch.optim's load shares the tensors it is given
    opt.load_state_dict(copy.deepcopy(source_opt.state_dict()))
    sparse.load_state_dict(copy.deepcopy(source.state_dict()))
    assert_same(snapshot(source_model, source_opt, source, attributes=False), snapshot(model, opt, sparse, attributes=False))
    train_any(model, opt, 4, start=5)
    train_any(source_model, source_opt, 4, start=5)
    assert_same(snapshot(source_model, source_opt, source), snapshot(model, opt, sparse))


def test_the_reported_controller_load_leaves_masks_in_place():
    """The issue's report: masks replaced, then a bad step or generator state raised, leaving the weights unmasked."""
    model, opt, sparse = controlled("random")
    twin = copy.deepcopy((model, opt, sparse))
    before = snapshot(model, opt, sparse)
    for key, value in [("step", "bad"), ("generator", torch.zeros(3, dtype=torch.uint8))]:
        state = sparse.state_dict()
        state["masks"] = [~m for m in state["masks"]]
        state["active"] = [int(m.sum()) for m in state["masks"]]
        state[key] = value
        with pytest.raises(ValueError, match=re.escape(f"state_dict[{key!r}]")):
            sparse.load_state_dict(state)
    assert_same(before, snapshot(model, opt, sparse))
    train_any(model, opt, 3, start=3)  # it trains on exactly as its untouched twin
    train_any(twin[0], twin[1], 3, start=3)
    assert_same(snapshot(*twin), snapshot(model, opt, sparse))


# -------------------------------------------------------------------------- copies
def _parameters(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("optimizer", ["Adam", "ChebyshevALM-phr", "MultiGradientDescent-moments", "ParetoTangentExplorer"])
@pytest.mark.parametrize("mode", ["random", "gradient", "pruning"])
def test_deepcopy_of_model_optimizer_and_controller_trains_sparse_like_the_original(optimizer, mode):
    model, opt, sparse = controlled(mode, optimizer=optimizer)
    copied = copy.deepcopy((model, opt, sparse))
    twin = copy.deepcopy((model, opt, sparse))
    assert copied[2]._optimizer is (copied[1].base if hasattr(copied[1], "base") else copied[1])
    train_any(copied[0], copied[1], 4, start=3)  # two topology updates for the dynamic modes
    # the original has not moved: the copy owns its parameters, state and hooks
    assert_same(snapshot(*twin), snapshot(model, opt, sparse))
    train_any(model, opt, 4, start=3)
    assert_same(snapshot(model, opt, sparse), snapshot(*copied))
    for p, mask in zip((copied[0].trunk[0].weight, copied[0].heads[0].weight, copied[0].heads[1].weight), copied[2].masks.values()):
        assert torch.all(p[~mask] == 0)  # the copy trains sparse
    assert copied[2].step_count == sparse.step_count == 7


def test_deepcopy_of_a_removed_controller_stays_detached():
    model, opt, sparse = controlled("gradient")
    sparse.remove()
    copied_model, copied_opt, copied = copy.deepcopy((model, opt, sparse))
    assert not copied_opt._optimizer_step_pre_hooks and not copied._handles
    train_any(copied_model, copied_opt, 1, start=3)
    assert copied.step_count == 3
    assert (copied_model.trunk[0].weight != 0).all()  # dense again: nothing masks it


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_deepcopy_of_model_and_optimizer_trains_bit_for_bit(name):
    model, opt = trained(name)
    copied_model, copied = copy.deepcopy((model, opt))
    assert copied.param_groups is copied.base.param_groups and copied.state is copied.base.state
    train(model, opt, 3, start=3)
    train(copied_model, copied, 3, start=3)
    assert_same(snapshot(model, opt), snapshot(copied_model, copied))


def test_a_copied_optimizer_alone_keeps_no_hooks_as_in_torch():
    """torch.optim drops an optimizer's hooks when it is copied; so does a torch_moo optimizer (the
    controller that hooked the original does not reach the copy's parameters)."""
    model, opt, sparse = controlled("gradient", optimizer="ChebyshevALM-phr")
    copied = copy.deepcopy(opt)
    plain = copy.deepcopy(torch.optim.Adam(model.parameters()))
    for optimizer in (copied, copied.base, plain):
        assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks
    assert opt._optimizer_step_post_hooks and opt.base._optimizer_step_pre_hooks  # the original keeps them


@pytest.mark.parametrize("optimizer", ["Adam", "MultiGradientDescent-moments"])
def test_pickled_model_optimizer_and_controller_resume_exactly(optimizer):
    model, opt, sparse = controlled("random", optimizer=optimizer)
    buffer = io.BytesIO()
    torch.save((model, opt, sparse), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    train_any(model, opt, 4, start=3)
    train_any(loaded[0], loaded[1], 4, start=3)
    assert_same(snapshot(model, opt, sparse), snapshot(*loaded))
    assert torch.equal(loaded[2].generator.get_state(), sparse.generator.get_state())


# --------------------------------------------------------------------- any corruption
def _leaves(value, path=()):
    """The paths of every entry of a state dict, containers included (a tuple, immutable, as a whole)."""
    yield path
    if isinstance(value, dict):
        for key, entry in value.items():
            yield from _leaves(entry, (*path, key))
    elif isinstance(value, list):
        for index, entry in enumerate(value):
            yield from _leaves(entry, (*path, index))


def _tensor(shape, dtype, fill):
    return torch.full(shape, fill, dtype=torch.float64).to(dtype)


ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 10**6),
    st.floats(width=32),
    st.text(max_size=2),
    st.builds(
        _tensor,
        st.lists(st.integers(0, 3), max_size=3).map(tuple),
        st.sampled_from([torch.float32, torch.float64, torch.int64, torch.int32, torch.uint8, torch.bool]),
        st.floats(-4, 4, width=32) | st.sampled_from([float("nan"), float("inf")]),
    ),
)


def _replace(state, path, value):
    *parents, last = path
    for key in parents:
        state = state[key]
    if value is _DELETE:
        del state[last]
    else:
        state[last] = value


_DELETE = object()


@pytest.mark.parametrize("name", ["ChebyshevALM-reference", "MinMaxWeighting-mirror", "ParetoTangentExplorer"])
@settings(max_examples=40)
@given(data=st.data())
def test_any_method_state_entry_loads_whole_or_raises_a_value_error_changing_nothing(name, data):
    """Whatever replaces (or removes) one entry of the method state: a ValueError with nothing
    changed, or a load that takes the entry as given (cast to the current dtype) and trains on."""
    state = copy.deepcopy(_source_state(name))
    path = data.draw(st.sampled_from([p for p in _leaves(state) if p[:2] == ("torch_moo", "state") and len(p) > 2]))
    value = data.draw(ANY_VALUE | st.just(_DELETE))
    _replace(state, path, value)
    model, opt = copy.deepcopy(_trained_once(name))
    before = snapshot(model, opt)
    try:
        opt.load_state_dict(state)
    except ValueError:
        assert_same(before, snapshot(model, opt))
        return
    loaded = opt.state_dict()["torch_moo"]["state"]
    for key, entry in state["torch_moo"]["state"].items():
        expected = entry.to(loaded[key].dtype) if isinstance(entry, torch.Tensor) else entry
        assert_same(expected, loaded[key])
    train(model, opt, 2, start=5)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("mode", ["random", "pruning"])
@settings(max_examples=40)
@given(data=st.data())
def test_any_controller_entry_loads_whole_or_raises_a_value_error_changing_nothing(mode, data):
    state = copy.deepcopy(_source_controller_state(mode))
    path = data.draw(st.sampled_from([p for p in _leaves(state) if p]))
    _replace(state, path, data.draw(ANY_VALUE | st.just(_DELETE)))
    model, opt, sparse = copy.deepcopy(_controlled_once(mode))
    before = snapshot(model, opt, sparse)
    try:
        sparse.load_state_dict(state)
    except ValueError:
        assert_same(before, snapshot(model, opt, sparse))
        return
    train_any(model, opt, 2, start=5)  # a loaded state trains sparse, at the saved active counts
    for p, mask, active in zip((model.trunk[0].weight, model.heads[0].weight, model.heads[1].weight), sparse.masks.values(), sparse._active):
        assert torch.all(p[~mask] == 0) and int(mask.sum()) <= active
