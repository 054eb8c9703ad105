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

from tests.helpers import (
    TwoHeads,
    assert_resumes,
    assert_same_state_dict,
    copy_with_grads,
    snapshot,
    state_dicts,
    train,
)
from torch_moo import ChebyshevALM, MinMaxWeighting, MultiGradientDescent, ParetoTangentExplorer, SparsityController

# ------------------------------------------------------------------------------- helpers
OPTIMIZERS: dict[str, Callable[[torch.nn.Module], torch.optim.Optimizer]] = {
    "ChebyshevALM-phr": lambda m: ChebyshevALM(
        m.parameters(), num_objectives=2, preference=[0.3, 0.7], outer_every=3, lr=1e-2
    ),
    "ChebyshevALM-reference": lambda m: ChebyshevALM(
        m.parameters(),
        num_objectives=2,
        preference=[0.3, 0.7],
        reference=[0.0, 0.1],
        multiplier_update="reference",
        outer_every=2,
        lr=1e-2,
    ),
    "ChebyshevALM-ideal": lambda m: ChebyshevALM(
        m.parameters(), num_objectives=2, preference=[0.5, 0.5], reference="ideal", outer_every=4, lr=1e-2
    ),
    "MinMaxWeighting-projected": lambda m: MinMaxWeighting(m.parameters(), num_objectives=2, update_every=2, lr=1e-2),
    "MinMaxWeighting-mirror": lambda m: MinMaxWeighting(m.parameters(), num_objectives=2, ascent="mirror", lr=1e-2),
    "MultiGradientDescent": lambda m: MultiGradientDescent(m.parameters(), num_objectives=2, lr=1e-2),
    "MultiGradientDescent-moments": lambda m: MultiGradientDescent(
        m.parameters(), num_objectives=2, moments=(0.9, 0.99), lr=1e-2
    ),
    "ParetoTangentExplorer": lambda m: ParetoTangentExplorer(
        m.parameters(), num_objectives=2, beta=[0.0, 1.0], lr=1e-2, momentum=0.9
    ),
}


def trained(name):
    model = TwoHeads()
    opt = OPTIMIZERS[name](model)
    train(model, opt, 3)
    if isinstance(opt, ParetoTangentExplorer):
        opt.beta = [0.25, 0.75]  # set between steps: part of the state to resume
    return model, opt


# the last step's public diagnostics, which no state dict holds
DIAGNOSTICS = ("skipped", "stationarity", "gap", "tangent_residual")


def observed(model, opt, sparse=None):
    """Everything a failed load must leave alone: the shared :func:`snapshot` (weights, gradients,
    state dicts, what the next step does), the live masks and the last step's public diagnostics."""
    return {
        **snapshot(model, opt, sparse),
        "masks": None if sparse is None else {name: mask.clone() for name, mask in sparse.masks.items()},
        "diagnostics": {name: copy.deepcopy(getattr(opt, name)) for name in DIAGNOSTICS if hasattr(opt, name)},
    }


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
    cases = (
        []
        if name not in STRUCTURAL
        else [
            ("torch_moo None", _set(("torch_moo",), None), re.escape("state_dict['torch_moo'] must be a dict")),
            (
                "torch_moo extra",
                _set(("torch_moo", "extra"), 1),
                re.escape("state_dict['torch_moo'] must hold only") + ".*'extra'",
            ),
            (
                "torch_moo lacks state",
                _delete(("torch_moo", "state")),
                re.escape("state_dict['torch_moo'] must hold") + ".*lacks \\['state'\\]",
            ),
            (
                "config None",
                _set(("torch_moo", "config"), None),
                re.escape("state_dict['torch_moo']['config'] must be a dict"),
            ),
            (
                "config lacks method",
                _delete(("torch_moo", "config", "method")),
                re.escape("state_dict['torch_moo']['config'] lacks 'method'"),
            ),
            (
                "config extra",
                _set(("torch_moo", "config", "bogus"), 1),
                re.escape("state_dict['torch_moo']['config'] holds 'bogus'"),
            ),
            (
                "config tensor",
                _set(("torch_moo", "config", "num_objectives"), torch.tensor([2, 2])),
                "state_dict was saved with num_objectives=tensor",
            ),
            ("method state None", _set(method, None), re.escape("state_dict['torch_moo']['state'] must be a dict")),
            (
                "method state extra",
                _set((*method, "bogus"), torch.zeros(2)),
                re.escape("state_dict['torch_moo']['state'] must hold only") + ".*'bogus'",
            ),
            ("no param_groups", _delete(("param_groups",)), "state_dict lacks 'param_groups'"),
            ("no state", _delete(("state",)), "state_dict lacks 'state'"),
            (
                "param_groups None",
                _set(("param_groups",), None),
                re.escape("state_dict['param_groups'] must be a list"),
            ),
            (
                "group params None",
                _set(("param_groups", 0, "params"), None),
                re.escape("state_dict['param_groups'] must be a list"),
            ),
            (
                "two groups",
                _set(("param_groups",), lambda groups: [groups[0], {**groups[0], "params": []}]),
                "saved for parameter groups of",
            ),
            (
                "fewer params",
                _set(("param_groups", 0, "params"), lambda params: params[:-1]),
                "saved for parameter groups of",
            ),
            (
                "params repeated",
                _set(("param_groups", 0, "params"), lambda params: [params[0]] * len(params)),
                "must number each parameter with one int",
            ),
            (
                "lr a string",
                _set(("param_groups", 0, "lr"), "fast"),
                re.escape("state_dict['param_groups'][0]['lr'] must be of the kind of"),
            ),
            ("state None", _set(("state",), None), re.escape("state_dict['state'] must be a dict")),
            ("state of no parameter", _set(("state", 99), {}), re.escape("state_dict['state'] holds parameter 99")),
            ("state entry a list", _set(("state", 0), []), re.escape("state_dict['state'][0] must be a dict")),
        ]
    )
    for key in ("exp_avg", "momentum_buffer"):  # Adam's, or SGD's with momentum (the explorer's)
        if name in STRUCTURAL and key in saved["state"][0]:
            cases.append(
                (
                    f"base {key} shape",
                    _set(("state", 0, key), lambda t: t.reshape(-1)[:1]),
                    re.escape(_entry(("state", 0, key))),
                )
            )
    if name in STRUCTURAL:
        base = type(opt.base).__name__
        cases.append(
            (
                "group lacks lr",
                _delete(("param_groups", 0, "lr")),
                re.escape(f"state_dict['param_groups'][0] lacks ['lr'], which {base} reads"),
            )
        )
    if "step" in saved["state"].get(0, {}) and name in STRUCTURAL:  # Adam's __setstate__ reads every state's step
        cases.append(
            (
                "base step missing",
                _delete(("state", 0, "step")),
                f"{base} refuses state_dict's 'state' and 'param_groups': KeyError",
            )
        )
    for key, value in saved["torch_moo"]["state"].items():
        path, entry = (*method, key), re.escape(_entry((*method, key)))
        cases += [
            (
                f"{key} missing",
                _delete(path),
                re.escape("state_dict['torch_moo']['state'] must hold") + f".*lacks \\['{key}'\\]",
            ),
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
            if (
                value.numel()
                and key in NON_NEGATIVE
                and not (key == "multipliers" and opt.multiplier_update == "reference")
            ):
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
    before = observed(model, opt)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(state)
    assert_same_state_dict(before, observed(model, opt))


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
    assert_same_state_dict(state_dicts([source_model, source]), state_dicts([model, opt]))
    train(model, opt, 2, start=5)
    train(source_model, source, 2, start=5)
    assert_same_state_dict(observed(source_model, source), observed(model, opt))


# Refused values of single entries (weights off the simplex, multipliers not summing to one, beta)
# are rows of tests/unit/test_error_tables.py; these are the values next to them that load.
def test_a_vertex_is_valid_minmax_weights_for_the_projection():
    model, opt = trained("MinMaxWeighting-projected")
    state = copy.deepcopy(opt.state_dict())
    state["torch_moo"]["state"]["task_weights"] = torch.tensor([1.0, 0.0])  # refused under ascent="mirror"
    opt.load_state_dict(state)
    assert torch.equal(opt.task_weights, torch.tensor([1.0, 0.0]))


def test_reference_multipliers_may_be_negative_but_sum_to_one():
    model, opt = trained("ChebyshevALM-reference")
    state = copy.deepcopy(opt.state_dict())
    state["torch_moo"]["state"]["multipliers"] = torch.tensor([1.5, -0.5])  # what the reference update can reach
    opt.load_state_dict(state)
    assert torch.equal(opt.multipliers, torch.tensor([1.5, -0.5]))


def test_explorer_saves_beta():
    model, opt = trained("ParetoTangentExplorer")
    saved = copy.deepcopy(opt.state_dict())
    assert torch.equal(saved["torch_moo"]["state"]["beta"], torch.tensor([0.25, 0.75]))
    fresh = OPTIMIZERS["ParetoTangentExplorer"](TwoHeads())
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.beta, torch.tensor([0.25, 0.75]))  # resumed, not the constructor's [0, 1]
    saved["torch_moo"]["state"]["beta"][0] = 9.0
    assert torch.equal(fresh.beta, torch.tensor([0.25, 0.75]))  # a copy: the state dict does not alias it


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
    opt = torch.optim.Adam(model.parameters(), lr=1e-2) if optimizer == "Adam" else OPTIMIZERS[optimizer](model)
    sparse = SparsityController(opt, model=model, generator=torch.Generator().manual_seed(5), **CONTROLLERS[mode])
    train(model, opt, steps)
    return model, opt, sparse


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
        (
            "config other",
            _set(("config", "update_every"), 7),
            "state_dict was saved with update_every=7, but this controller has",
        ),
        ("names None", _set(("names",), None), "do not match this model's masked parameters"),
        ("names renamed", _set(("names", 0), "other"), "do not match this model's masked parameters"),
        ("shapes other", _set(("shapes", 0), (1, 2)), "do not match this model's masked parameters"),
        (
            "masks short",
            _set(("masks",), lambda masks: masks[:1]),
            re.escape("state_dict['masks'] must hold one entry per masked parameter (3)"),
        ),
        ("masks None", _set(("masks",), None), re.escape("state_dict['masks'] must hold one entry")),
        (
            "mask float",
            _set(("masks", 1), lambda m: m.float()),
            re.escape("state_dict['masks'][1] (heads.0.weight) must be a boolean tensor"),
        ),
        (
            "mask shape",
            _set(("masks", 1), lambda m: torch.cat([m.reshape(-1), m.reshape(-1)])),
            re.escape("state_dict['masks'][1] (heads.0.weight) must be a boolean tensor"),
        ),
        (
            "mask a list",
            _set(("masks", 1), lambda m: m.tolist()),
            re.escape("state_dict['masks'][1] (heads.0.weight) must be a boolean tensor"),
        ),
        (
            "active short",
            _set(("active",), lambda active: active[:2]),
            re.escape("state_dict['active'] must hold one entry"),
        ),
        (
            "active negative",
            _set(("active", 0), -1),
            re.escape("state_dict['active'][0] (trunk.0.weight) must be a non-negative int"),
        ),
        (
            "active float",
            _set(("active", 0), lambda a: float(a)),
            re.escape("state_dict['active'][0] (trunk.0.weight) must be a non-negative int"),
        ),
        (
            "active too large",
            _set(("active", 0), 10**6),
            re.escape("state_dict['active'][0] (trunk.0.weight) must be a non-negative int below"),
        ),
        (
            "active below mask",
            _set(("active", 0), lambda a: a - 1),
            re.escape("state_dict['active'][0] (trunk.0.weight) is"),
        ),
        ("step negative", _set(("step",), -1), re.escape("state_dict['step'] must be a non-negative int")),
        ("step a string", _set(("step",), "3"), re.escape("state_dict['step'] must be a non-negative int")),
        ("step bool", _set(("step",), True), re.escape("state_dict['step'] must be a non-negative int")),
        ("step float", _set(("step",), 3.0), re.escape("state_dict['step'] must be a non-negative int")),
        (
            "generator short",
            _set(("generator",), lambda g: g[:10]),
            re.escape("state_dict['generator'] is not a state of this controller's generator"),
        ),
        (
            "generator float",
            _set(("generator",), lambda g: g.float()),
            re.escape("state_dict['generator'] must be None or a generator state"),
        ),
        (
            "generator a list",
            _set(("generator",), lambda g: g.tolist()),
            re.escape("state_dict['generator'] must be None or a generator state"),
        ),
    ]
    if dynamic:
        cases += [
            (
                "active above mask",
                _set(("active", 0), lambda a: a + 1),
                re.escape("state_dict['active'][0] (trunk.0.weight) is"),
            ),
            (
                "updates None",
                _set(("active_updates",), None),
                re.escape("state_dict['active_updates'] must hold one counter per masked parameter"),
            ),
            (
                "updates short",
                _set(("active_updates",), lambda u: u[:1]),
                re.escape("state_dict['active_updates'] must hold one counter"),
            ),
            (
                "updates negative",
                _set(("active_updates", 2), lambda n: n - n.max() - 1),
                re.escape("state_dict['active_updates'][2] (heads.1.weight) must be a tensor of non-negative integers"),
            ),
            (
                "updates float",
                _set(("active_updates", 2), lambda n: n.float()),
                re.escape("state_dict['active_updates'][2] (heads.1.weight) must be a tensor of non-negative integers"),
            ),
            (
                "updates shape",
                _set(("active_updates", 2), lambda n: torch.cat([n.reshape(-1), n.reshape(-1)])),
                re.escape("state_dict['active_updates'][2] (heads.1.weight) must be a tensor"),
            ),
        ]
    else:
        cases.append(
            (
                "updates under pruning",
                _set(("active_updates",), lambda _: [m.int() for m in saved["masks"]]),
                re.escape("state_dict['active_updates'] must be None under pruning (regrow=None)"),
            )
        )
    return cases


CONTROLLER_CASES = [(mode, case) for mode in CONTROLLERS for case in controller_corruptions(mode)]


@pytest.mark.parametrize("mode, case", CONTROLLER_CASES, ids=[f"{mode}-{case[0]}" for mode, case in CONTROLLER_CASES])
def test_a_corrupted_controller_entry_is_named_and_changes_nothing(mode, case):
    label, corrupt, message = case
    state = copy.deepcopy(_source_controller_state(mode))
    corrupt(state)
    model, opt, sparse = copy.deepcopy(_controlled_once(mode))
    before = observed(model, opt, sparse)
    with pytest.raises(ValueError, match=message):
        sparse.load_state_dict(state)
    assert_same_state_dict(before, observed(model, opt, sparse))


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
    assert_same_state_dict(state_dicts([source_model, source_opt, source]), state_dicts([model, opt, sparse]))
    train(model, opt, 4, start=5)
    train(source_model, source_opt, 4, start=5)
    assert_same_state_dict(observed(source_model, source_opt, source), observed(model, opt, sparse))


def test_the_reported_controller_load_leaves_masks_in_place():
    """The issue's report: masks replaced, then a bad step or generator state raised, leaving the weights unmasked."""
    model, opt, sparse = controlled("random")
    twin = copy.deepcopy((model, opt, sparse))
    before = observed(model, opt, sparse)
    for key, value in [("step", "bad"), ("generator", torch.zeros(3, dtype=torch.uint8))]:
        state = sparse.state_dict()
        state["masks"] = [~m for m in state["masks"]]
        state["active"] = [int(m.sum()) for m in state["masks"]]
        state[key] = value
        with pytest.raises(ValueError, match=re.escape(f"state_dict[{key!r}]")):
            sparse.load_state_dict(state)
    assert_same_state_dict(before, observed(model, opt, sparse))
    train(model, opt, 3, start=3)  # it trains on exactly as its untouched twin
    train(twin[0], twin[1], 3, start=3)
    assert_same_state_dict(observed(*twin), observed(model, opt, sparse))


# -------------------------------------------------------------------------- copies
def _parameters(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(
    "optimizer", ["Adam", "ChebyshevALM-phr", "MultiGradientDescent-moments", "ParetoTangentExplorer"]
)
@pytest.mark.parametrize("mode", ["random", "gradient", "pruning"])
def test_deepcopy_of_model_optimizer_and_controller_trains_sparse_like_the_original(optimizer, mode):
    model, opt, sparse = controlled(mode, optimizer=optimizer)
    copied = copy.deepcopy((model, opt, sparse))
    twin = copy_with_grads((model, opt, sparse))
    train(copied[0], copied[1], 4, start=3)  # two topology updates for the dynamic modes
    # the original has not moved: the copy owns its parameters, state and hooks
    assert_same_state_dict(observed(*twin), observed(model, opt, sparse))
    train(model, opt, 4, start=3)
    assert_same_state_dict(observed(model, opt, sparse), observed(*copied))
    for p, mask in zip(
        (copied[0].trunk[0].weight, copied[0].heads[0].weight, copied[0].heads[1].weight), copied[2].masks.values()
    ):
        assert torch.all(p[~mask] == 0)  # the copy trains sparse
    assert copied[2].step_count == sparse.step_count == 7


def test_deepcopy_of_a_removed_controller_stays_detached():
    model, opt, sparse = controlled("gradient")
    sparse.remove()
    copied_model, copied_opt, copied = copy.deepcopy((model, opt, sparse))
    train(copied_model, copied_opt, 1, start=3)
    assert copied.step_count == 3
    assert (copied_model.trunk[0].weight != 0).all()  # dense again: nothing masks it


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_deepcopy_of_model_and_optimizer_trains_bit_for_bit(name):
    def build():
        model = TwoHeads()
        return model, OPTIMIZERS[name](model)

    def run(objects, start, stop):
        model, opt = objects
        for step in range(start, stop):
            train(model, opt, 1, start=step)
            if step == 2 and isinstance(opt, ParetoTangentExplorer):
                opt.beta = [0.25, 0.75]  # set between steps, before the copy: part of the state to carry

    def deepcopy(objects):
        model, copied = copy.deepcopy(objects)
        assert copied.param_groups is copied.base.param_groups and copied.state is copied.base.state
        return model, copied

    assert_resumes(build, run, steps=6, transfer=deepcopy, state=lambda objects: observed(*objects))


def test_a_copied_optimizer_alone_keeps_no_hooks_as_in_torch():
    """torch.optim drops an optimizer's hooks when it is copied; so does a torch_moo optimizer (the
    controller that hooked the original does not reach the copy's parameters)."""
    model, opt, sparse = controlled("gradient", optimizer="ChebyshevALM-phr")
    calls = []
    plain = torch.optim.Adam(model.parameters())
    plain.register_step_pre_hook(lambda *args: calls.append("pre"))
    plain.register_step_post_hook(lambda *args: calls.append("post"))
    opt.register_step_pre_hook(lambda *args: calls.append("pre"))
    copied, copied_plain = copy.deepcopy(opt), copy.deepcopy(plain)
    count = sparse.step_count
    for optimizer in (copied, copied_plain):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        losses = torch.stack([params[0].sum(), params[1].sum()])
        optimizer.zero_grad()
        if optimizer is copied:
            optimizer.backward(losses)
        else:
            losses.sum().backward()
        optimizer.step()
    assert calls == [] and sparse.step_count == count  # no hook of the originals ran, nor the controller
    train(model, opt, 1, start=3)
    assert calls == ["pre"] and sparse.step_count == count + 1  # the original keeps them


@pytest.mark.parametrize("optimizer", ["Adam", "MultiGradientDescent-moments"])
def test_pickled_model_optimizer_and_controller_resume_exactly(optimizer):
    def pickled(objects):
        buffer = io.BytesIO()
        torch.save(tuple(objects), buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=False)

    assert_resumes(
        lambda: controlled("random", optimizer=optimizer, steps=0),
        lambda objects, start, stop: train(objects[0], objects[1], stop - start, start=start),
        steps=8,
        transfer=pickled,
        state=lambda objects: observed(*objects),  # the generator state is in the controller's state dict
    )


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
    before = observed(model, opt)
    try:
        opt.load_state_dict(state)
    except ValueError:
        assert_same_state_dict(before, observed(model, opt))
        return
    loaded = opt.state_dict()["torch_moo"]["state"]
    for key, entry in state["torch_moo"]["state"].items():
        expected = entry.to(loaded[key].dtype) if isinstance(entry, torch.Tensor) else entry
        assert_same_state_dict(expected, loaded[key], equal_nan=True)  # a NaN where any value loads
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
    before = observed(model, opt, sparse)
    try:
        sparse.load_state_dict(state)
    except ValueError:
        assert_same_state_dict(before, observed(model, opt, sparse))
        return
    train(model, opt, 2, start=5)  # a loaded state trains sparse, at the saved active counts
    for p, mask, active in zip(
        (model.trunk[0].weight, model.heads[0].weight, model.heads[1].weight),
        sparse.masks.values(),
        sparse.state_dict()["active"],
    ):
        assert torch.all(p[~mask] == 0) and int(mask.sum()) <= active
