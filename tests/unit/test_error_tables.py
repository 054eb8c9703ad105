"""One error table per class: every refused construction, backward, step and load.

Each row runs through :func:`test_an_error_names_the_rule_and_changes_nothing`: the call raises the
error named, leaves the weights, their ``.grad`` and every state dict as they were, and the objects
then train on exactly as a twin that never saw the call. The sweep over every entry of a saved state
(wrong type, shape, NaN, ... of each entry in turn) is the ``load`` row generator of every class and
lives in tests/unit/test_atomic_load.py: hundreds of rows derived from a trained state, not listed here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from tests.helpers import (
    ONE_OBJECTIVE,
    OPTIMIZERS,
    TwoHeads,
    assert_same_state_dict,
    batch,
    make,
    safe_round_trip,
    snapshot,
    sparse_for,
    task_losses,
    train,
)
from torch_moo import ChebyshevALM, MinMaxWeighting, SparsityController
from torch_moo.sparsity import CubicSparsity

NAN, INF = float("nan"), float("inf")
PHASES = ("construction", "backward", "step", "load")
CONTROLLER = "SparsityController"


@dataclass
class Context:
    """The trained objects a row works on: ``opt`` (the class under test, or Adam under the
    controller), ``sparse`` (a controller on it), ``adam`` (a plain optimizer over the same weights)."""

    name: str
    options: dict[str, Any]
    model: TwoHeads
    opt: torch.optim.Optimizer
    sparse: SparsityController | None
    adam: torch.optim.Adam
    pending: bool

    def build(self, params: Any = None, **change: Any) -> Any:
        """The class under test over ``params`` (the model's by default), its options changed."""
        cls, defaults = OPTIMIZERS[self.name]
        params = self.model.parameters() if params is None else params
        if isinstance(params, torch.optim.Optimizer):  # the base, built
            defaults = {key: value for key, value in defaults.items() if key != "base"}
        return cls(params, **{"num_objectives": 2, **defaults, **self.options, **change})

    def saved(self, model: torch.nn.Module | None = None, name: str | None = None, **change: Any) -> dict[str, Any]:
        """Through the safe loader, the state of an optimizer of class ``name`` (this one's) with this
        one's options changed, after two steps on ``model`` (a fresh TwoHeads)."""
        num_objectives = change.pop("num_objectives", 2)
        model = TwoHeads() if model is None else model
        options = {**(self.options if name is None else {}), **change}
        opt = make(model, name or self.name, num_objectives=num_objectives, **options)
        for step in range(2):
            opt.zero_grad()
            losses = task_losses(model, step)
            opt.backward(torch.cat([losses, losses[:1]])[:num_objectives])
            opt.step()
        return safe_round_trip(opt.state_dict())

    def edited(self, path: tuple[Any, ...], value: Any) -> dict[str, Any]:
        """This optimizer's kind of saved state with the entry at ``path`` set to ``value``."""
        state = self.saved()
        entry = state
        for key in path[:-1]:
            entry = entry[key]
        entry[path[-1]] = value
        return state


@dataclass(frozen=True)
class Case:
    """One refused call: ``call(context)`` raises ``error`` matching ``match``."""

    phase: str
    label: str
    call: Callable[[Context], Any]
    error: type[Exception]
    match: str
    options: dict[str, Any] = field(default_factory=dict)  # of the object under test
    pending: bool | None = None  # a backward awaiting its step; by default in the backward phase


def kwargs(label: str, change: dict[str, Any], error: type[Exception], match: str) -> Case:
    """A construction row: the class built with ``change`` to its options."""
    return Case("construction", label, lambda c: c.build(**change), error, match)


def loads(label: str, state: Callable[[Context], Any], match: str, **options: Any) -> Case:
    """A load row: ``load_state_dict(state(context))`` refused with a ValueError."""
    return Case(
        "load",
        label,
        lambda c: (c.sparse if c.name == CONTROLLER else c.opt).load_state_dict(state(c)),
        ValueError,
        match,
        options,
    )


def backward(label: str, losses: Callable[[TwoHeads], Any], error: type[Exception], match: str, **options: Any) -> Case:
    """A backward row: ``backward(losses(model))`` refused."""
    return Case("backward", label, lambda c: c.opt.backward(losses(c.model)), error, match, options)


def entry(key: str) -> tuple[str, str, str]:
    """The path of the method-state entry ``key`` in a state dict."""
    return ("torch_moo", "state", key)


class Wider(TwoHeads):
    """TwoHeads with one more parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.extra = torch.nn.Parameter(torch.zeros(3))


def _nonscalar(model: TwoHeads) -> list[torch.Tensor]:
    return [model(batch(0)[0][:4])[0], task_losses(model, 0)[1]]


def _poisoned(value: float) -> Callable[[TwoHeads], torch.Tensor]:
    """The losses with the second made ``value``, keeping the graph (so a backward would reach .grad)."""
    return lambda m: task_losses(m, 0) * torch.tensor([1.0, value])


# ---------------------------------------------------------------------- rows every class has
BAD_LOSSES = [  # refused under nonfinite="raise" and "skip" alike
    ("too short", lambda m: task_losses(m, 0)[:1], ValueError, r"losses must hold num_objectives=2 values, got 1"),
    (
        "too long",
        lambda m: torch.cat([task_losses(m, 0), task_losses(m, 1)]),
        ValueError,
        r"losses must hold num_objectives=2 values, got 4",
    ),
    (
        "column",
        lambda m: task_losses(m, 0).reshape(2, 1),
        ValueError,
        r"losses must be a 1-D tensor of 2 per-objective losses, got shape \(2, 1\)",
    ),
    (
        "row",
        lambda m: task_losses(m, 0).reshape(1, 2),
        ValueError,
        r"losses must be a 1-D tensor of 2 per-objective losses, got shape \(1, 2\)",
    ),
    (
        "0-D",
        lambda m: task_losses(m, 0).sum(),
        ValueError,
        r"losses must be a 1-D tensor of 2 per-objective losses, got shape \(\)",
    ),
    (
        "non-scalar entry",
        _nonscalar,
        ValueError,
        r"losses\[0\] must be a scalar, got shape \(4,\) \(reduce it, e.g. with .mean\(\)\)",
    ),
    (
        "string entry",
        lambda m: [task_losses(m, 0)[0], "x"],
        TypeError,
        r"losses\[1\] must be a scalar tensor or a number, got str",
    ),
    ("dict", lambda m: {"a": 1.0}, TypeError, r"losses must be a 1-D tensor or a sequence of scalars, got dict"),
    ("string", lambda m: "ab", TypeError, r"losses must be a 1-D tensor or a sequence of scalars, got str"),
    ("empty", lambda m: [], ValueError, r"losses must hold 2 per-objective losses, got none"),
    ("integer", lambda m: torch.tensor([1, 2]), TypeError, r"losses must be floating point, got dtype torch.int64"),
    (
        "complex",
        lambda m: torch.tensor([1.0, 2.0], dtype=torch.complex64, requires_grad=True),
        TypeError,
        r"losses must be floating point, got dtype torch.complex64",
    ),
    (
        "detached",
        lambda m: task_losses(m, 0).detach(),
        ValueError,
        r"losses do not require grad: pass them before \.detach\(\)",
    ),
    ("numbers", lambda m: [1.0, 2.0], ValueError, r"losses do not require grad"),
]

# for each class: another setting and the message that names it
OTHER_CONFIG = {
    "ChebyshevALM": ({"outer_every": 4}, r"saved with outer_every=4, but this ChebyshevALM has outer_every=3"),
    "FixedWeighting": (
        {"weights": [0.5, 0.5]},
        r"saved with weights=\[0.5, 0.5\], but this FixedWeighting has weights=\[0.2, 0.8\]",
    ),
    "MinMaxWeighting": ({"gamma": 1.0}, r"saved with gamma=1.0, but this MinMaxWeighting has gamma=5.0"),
    "MultiGradientDescent": (
        {"moments": None},
        r"saved with moments=None, but this MultiGradientDescent has moments=\(0.9, 0.99\)",
    ),
    "ParetoTangentExplorer": (
        {"step_size": 0.5},
        r"saved with step_size=0.5, but this ParetoTangentExplorer has step_size=0.1",
    ),
}
ONE = {**ONE_OBJECTIVE, "MultiGradientDescent": {"moments": (0.9, 0.99)}}  # keep moments: one difference only
MISSPELT = {
    "ChebyshevALM": ("preferance", "preference"),
    "FixedWeighting": ("weight", "weights"),
    "MinMaxWeighting": ("ascent_stpe", "ascent_step"),
    "MultiGradientDescent": ("normalisation", "normalization"),
    "ParetoTangentExplorer": ("step_szie", "step_size"),
}


def _controller_state(c: Context) -> dict[str, Any]:
    model = TwoHeads()
    return sparse_for(model, torch.optim.Adam(model.parameters())).state_dict()


def common(name: str) -> list[Case]:
    """The rows of every torch_moo optimizer ``name``."""
    other = next(n for n in sorted(OPTIMIZERS) if n != name)
    wrong, right = MISSPELT[name]
    config, config_message = OTHER_CONFIG[name]
    single = {"moments": None} if name == "MultiGradientDescent" else {}  # moments take one backward per step
    rows = [
        kwargs(
            "nonfinite",
            {"nonfinite": "ignore"},
            ValueError,
            r"nonfinite must be one of 'raise', 'skip', 'propagate'; got 'ignore'",
        ),
        kwargs(
            "check_finite",
            {"check_finite": False},
            TypeError,
            rf"{name} got an unexpected keyword argument 'check_finite'",
        ),
        kwargs(
            "misspelt option",
            {wrong: 1.0},
            TypeError,
            rf"{name} got an unexpected keyword argument '{wrong}': .*did you mean '{right}'\?",
        ),
        kwargs(
            "misspelt base option",
            {"base": torch.optim.Adam, "betass": (0.9, 0.99)},
            TypeError,
            rf"option of neither {name} nor Adam; did you mean 'betas'\?",
        ),
        kwargs(
            "closure base",
            {"base": torch.optim.LBFGS},
            TypeError,
            rf"base=LBFGS needs a closure at every step, which {name} cannot give it",
        ),
        Case(
            "construction",
            "closure base instance",
            lambda c: c.build(torch.optim.LBFGS(c.model.parameters())),
            TypeError,
            rf"base=LBFGS needs a closure at every step, which {name} cannot give it",
        ),
        kwargs(
            "multi-objective base",
            {"base": MinMaxWeighting},
            TypeError,
            r"base must be a single-objective optimizer, got MinMaxWeighting",
        ),
        kwargs(
            "base a string",
            {"base": "adam"},
            TypeError,
            r"base must be a torch.optim.Optimizer subclass or instance, got 'adam'",
        ),
        kwargs("base a module", {"base": torch.nn.Linear}, TypeError, r"base must be a torch.optim.Optimizer subclass"),
        kwargs("base lr", {"lr": -1.0}, ValueError, r"Invalid learning rate"),  # the base optimizer's own check
        kwargs("no objectives", {"num_objectives": 0}, ValueError, r"num_objectives must be >= 1, got 0"),
        Case(
            "construction",
            "built base with other params",
            lambda c: c.build(c.model.trunk.parameters(), base=c.adam),
            ValueError,
            r"got params that differ from those of base=Adam",
        ),
        Case(
            "construction",
            "built base twice",
            lambda c: c.build(c.adam, base=torch.optim.SGD),
            TypeError,
            r"got an optimizer as its first argument and base=",
        ),
        Case(
            "construction",
            "built base with lr",
            lambda c: c.build(c.adam, lr=0.1),
            TypeError,
            r"unexpected keyword argument 'lr': the base optimizer is already built",
        ),
        Case(
            "construction",
            "built base misspelt",
            lambda c: c.build(c.adam, **{wrong: 1.0}),
            TypeError,
            rf"did you mean '{right}'",
        ),
        Case(
            "step",
            "no backward",
            lambda c: c.opt.step(),
            RuntimeError,
            rf"{name}.step\(\) found no backward\(\).*opt.backward\(losses\)",
        ),
        loads("other configuration", lambda c: c.saved(**config), config_message),
        loads(
            "other class",
            lambda c: c.saved(name=other),
            rf"saved with method='{other}', but this {name} has method='{name}'",
        ),
        loads(
            "other objectives",
            lambda c: c.saved(num_objectives=1, **ONE.get(name, {})),
            rf"saved with num_objectives=1, but this {name} has num_objectives=2",
        ),
        loads(
            "more parameters",
            lambda c: c.saved(model=Wider()),
            rf"saved for parameter groups of \[7\] parameters, but this {name} has groups of \[6\]",
        ),
        loads(
            "plain optimizer",
            lambda c: torch.optim.Adam(TwoHeads().parameters()).state_dict(),
            r"state_dict has no 'torch_moo' entry",
        ),
        loads("controller", _controller_state, r"state_dict has no 'torch_moo' entry"),
        loads(
            "broken entry",
            lambda c: {**c.saved(), "torch_moo": {"state": {}}},
            r"state_dict\['torch_moo'\] must hold \['config', 'state', 'version'\]: it lacks \['config', 'version'\]",
        ),
        loads("None", lambda c: None, rf"state_dict must be a dict from {name}.state_dict\(\), got NoneType"),
        loads(
            "config None",
            lambda c: c.edited(("torch_moo", "config"), None),
            r"state_dict\['torch_moo'\]\['config'\] must be a dict of the settings it was saved with, got NoneType",
        ),
    ]
    for mode in ("raise", "skip"):
        rows += [
            backward(f"{label} ({mode})", losses, error, match, nonfinite=mode, **single)
            for label, losses, error, match in BAD_LOSSES
        ]
    rows += [
        backward(f"{value}", _poisoned(value), ValueError, rf"losses must be finite, got \[.*, {value}\]", **single)
        for value in (NAN, INF, -INF)
    ]
    if hasattr(OPTIMIZERS[name][0], "weights"):  # the loss-space methods
        rows.append(
            Case(
                "backward",
                "weights()",
                lambda c: c.opt.weights(torch.ones(3)),
                ValueError,
                r"losses must hold num_objectives=2 values, got 3",
            )
        )
    return rows


def _features(model: TwoHeads) -> torch.Tensor:
    return model.trunk(batch(0)[0])


ERRORS: dict[str, list[Case]] = {
    "ChebyshevALM": [
        kwargs(
            "num_objectives a string", {"num_objectives": "2"}, TypeError, r"num_objectives must be an int, got str '2'"
        ),
        kwargs(
            "num_objectives a bool", {"num_objectives": True}, TypeError, r"num_objectives must be an int, got bool"
        ),
        kwargs(
            "preference short",
            {"preference": [1.0]},
            ValueError,
            r"preference must have 2 entries \(one per objective\), got shape \(1,\)",
        ),
        kwargs(
            "preference negative",
            {"preference": [0.5, -0.1]},
            ValueError,
            r"preference must be non-negative and not all zero, got \[0.5, -0.1",
        ),
        kwargs(
            "preference zero",
            {"preference": [0.0, 0.0]},
            ValueError,
            r"preference must be non-negative and not all zero",
        ),
        kwargs("preference NaN", {"preference": [NAN, 1.0]}, ValueError, r"preference must be finite"),
        kwargs(
            "preference a string",
            {"preference": "ab"},
            TypeError,
            r"preference must be a sequence of 2 numbers, got 'ab'",
        ),
        kwargs("reference long", {"reference": [0.0, 0.0, 0.0]}, ValueError, r"reference must have 2 entries"),
        kwargs("reference name", {"reference": "nadir"}, ValueError, r"reference must be one of 'ideal'; got 'nadir'"),
        kwargs(
            "augmentation negative", {"augmentation": -1e-3}, ValueError, r"augmentation must be >= 0.0, got -0.001"
        ),
        kwargs("augmentation inf", {"augmentation": INF}, ValueError, r"augmentation must be finite, got inf"),
        kwargs("penalty zero", {"penalty": 0.0}, ValueError, r"penalty must be > 0.0, got 0.0"),
        kwargs("penalty_growth", {"penalty_growth": 0.5}, ValueError, r"penalty_growth must be >= 1.0, got 0.5"),
        kwargs("max_penalty", {"penalty": 2.0, "max_penalty": 1.0}, ValueError, r"max_penalty must be >= 2.0, got 1.0"),
        kwargs("outer_every zero", {"outer_every": 0}, ValueError, r"outer_every must be >= 1, got 0"),
        kwargs("outer_every float", {"outer_every": 2.5}, TypeError, r"outer_every must be an int, got float 2.5"),
        kwargs(
            "multiplier_update",
            {"multiplier_update": "equality"},
            ValueError,
            r"multiplier_update must be one of 'phr', 'reference'; got 'equality'",
        ),
        kwargs(
            "base itself",
            {"base": ChebyshevALM},
            TypeError,
            r"base must be a single-objective optimizer, got ChebyshevALM",
        ),
        loads(
            "other preference",
            lambda c: c.saved(preference=[0.2, 0.8]),
            r"state_dict was saved with preference=\[0\.2.*, but this ChebyshevALM has preference=\[0\.5, 0\.5\]",
            preference=[0.5, 0.5],
        ),
        loads(
            "three objectives",
            lambda c: c.saved(num_objectives=3, preference=[1, 1, 1]),
            r"saved with num_objectives=3, but this ChebyshevALM has num_objectives=2",
        ),
        loads(
            "other base",
            lambda c: c.saved(base=torch.optim.SGD),
            r"saved with base='SGD', but this ChebyshevALM has base='Adam'",
        ),
        loads(
            "other rule", lambda c: c.saved(multiplier_update="reference"), r"saved with multiplier_update='reference'"
        ),
        loads(
            "multipliers shape",
            lambda c: c.edited(entry("multipliers"), torch.ones(3)),
            r"state_dict\['torch_moo'\]\['state'\]\['multipliers'\] must be a tensor of shape \(2,\), "
            r"got tensor of shape \(3,\)",
        ),
        loads(
            "no method state",
            lambda c: c.edited(("torch_moo", "state"), {}),
            r"state_dict\['torch_moo'\]\['state'\] must hold \['estimate_count'.*\]: it lacks \['estimate_count'",
        ),
        loads(
            "since_outer a string",
            lambda c: c.edited(entry("since_outer"), "x"),
            r"state_dict\['torch_moo'\]\['state'\]\['since_outer'\] must be a non-negative int, got str 'x'",
        ),
        loads(
            "since_outer too large",
            lambda c: c.edited(entry("since_outer"), 3),
            r"\['since_outer'\] must be below outer_every=3, got int 3",
        ),
        loads(
            "saved penalty zero",
            lambda c: c.edited(entry("penalty"), torch.tensor(0.0)),
            r"\['penalty'\] must be in \(0, max_penalty=1000000.0\]",
        ),
        loads(
            "reference multipliers off the simplex",
            lambda c: c.edited(entry("multipliers"), torch.tensor([0.7, 0.7])),
            r"\['multipliers'\] must be finite and summing to 1 \(multiplier_update='reference'\)",
            multiplier_update="reference",
        ),
    ],
    "FixedWeighting": [
        kwargs(
            "weights negative",
            {"weights": [1.0, -1.0]},
            ValueError,
            r"weights must be non-negative and not all zero, got \[1.0, -1.0\]",
        ),
        kwargs("weights zero", {"weights": [0.0, 0.0]}, ValueError, r"weights must be non-negative and not all zero"),
        kwargs("weights short", {"weights": [1.0]}, ValueError, r"weights must have 2 entries"),
        kwargs("weights NaN", {"weights": [1.0, NAN]}, ValueError, r"weights must be finite"),
        loads(
            "other weights",
            lambda c: c.saved(weights=[1.0, 2.0]),
            r"saved with weights=\[1.0, 2.0\], but this FixedWeighting has weights=\[1.0, 3.0\]",
            weights=[1.0, 3.0],
        ),
    ],
    "MinMaxWeighting": [
        kwargs("gamma negative", {"gamma": -1.0}, ValueError, r"gamma must be >= 0.0, got -1.0"),
        kwargs("ascent_step zero", {"ascent_step": 0.0}, ValueError, r"ascent_step must be > 0.0, got 0.0"),
        kwargs(
            "ascent diverges",
            {"gamma": 5.0, "ascent_step": 0.4},
            ValueError,
            r"ascent_step \* gamma must be < 2 for the ascent to converge, got 0.4 \* 5.0",
        ),
        kwargs("update_every zero", {"update_every": 0}, ValueError, r"update_every must be >= 1, got 0"),
        kwargs("ascent", {"ascent": "sgd"}, ValueError, r"ascent must be one of 'projected', 'mirror'; got 'sgd'"),
        loads(
            "other ascent",
            lambda c: c.saved(ascent="mirror"),
            r"saved with ascent='mirror', but this MinMaxWeighting has ascent='projected'",
        ),
        *[
            loads(
                f"weights {weights} off the simplex",
                lambda c, w=weights: c.edited(entry("task_weights"), torch.tensor(w)),
                r"\['task_weights'\] must be positive and summing to 1 \(ascent='mirror'\)",
                ascent="mirror",
            )
            for weights in ([0.6, 0.6], [1.0, 0.0])
        ],
    ],
    "MultiGradientDescent": [
        kwargs("normalization", {"normalization": "max"}, ValueError, r"normalization must be one of"),
        kwargs("moments a number", {"moments": 0.9}, TypeError, r"moments must be None or a pair \(beta1, beta2\)"),
        kwargs("moments beta2", {"moments": (0.9, 1.0)}, ValueError, r"moments beta2 must be in \[0, 1\)"),
        kwargs("heads", {"heads": "alpha"}, ValueError, r"heads must be one of 'own', 'weighted'; got 'alpha'"),
        backward(
            "negative losses",
            lambda m: task_losses(m, 0) - 10,
            ValueError,
            r"normalization='loss' needs positive losses",
            normalization="loss",
            moments=None,
        ),
        Case(
            "backward",
            "features an objective ignores",
            lambda c: c.opt.backward(
                torch.stack([c.model.heads[0](z := _features(c.model)).mean(), c.model.heads[1].weight.sum()]),
                features=z,
            ),
            ValueError,
            r"objective 1 does not depend on the features",
            {"moments": None},
        ),
        Case(
            "backward",
            "detached features",
            lambda c: c.opt.backward(task_losses(c.model, 0), features=_features(c.model).detach()),
            ValueError,
            r"features must be a tensor \(or a sequence of tensors\) that requires grad",
            {"moments": None},
        ),
        Case(
            "backward",
            "features with moments",
            lambda c: c.opt.backward(task_losses(c.model, 0), features=_features(c.model)),
            ValueError,
            r"moments need the per-parameter gradients",
            pending=False,
        ),
        Case(
            "backward",
            "second backward with moments",
            lambda c: c.opt.backward(task_losses(c.model, 0)),
            RuntimeError,
            r"one backward\(\) per step\(\)",
        ),
        loads("other heads", lambda c: c.saved(heads="weighted"), r"saved with heads='weighted'"),
    ],
    "ParetoTangentExplorer": [
        kwargs("beta zero", {"beta": [0.0, 0.0]}, ValueError, r"beta must have a non-zero entry"),
        kwargs("beta short", {"beta": [1.0]}, ValueError, r"beta must have 2 entries"),
        kwargs("step_size zero", {"step_size": 0.0}, ValueError, r"step_size must be > 0"),
        kwargs("damping negative", {"damping": -1.0}, ValueError, r"damping must be >= 0"),
        kwargs("max_iter zero", {"max_iter": 0}, ValueError, r"max_iter must be >= 1"),
        kwargs("corrections negative", {"corrections": -1}, ValueError, r"corrections must be >= 0"),
        kwargs("tol zero", {"tol": 0.0}, ValueError, r"tol must be > 0"),
        Case(
            "step",
            "closure detached",
            lambda c: c.opt.step(lambda: task_losses(c.model, 3).detach()),
            ValueError,
            r"losses do not require grad",
        ),
        Case(
            "step",
            "closure three losses",
            lambda c: c.opt.step(lambda: torch.cat([task_losses(c.model, 3), task_losses(c.model, 4)[:1]])),
            ValueError,
            r"losses must hold num_objectives=2 values, got 3",
        ),
        Case(
            "step",
            "closure NaN",
            lambda c: c.opt.step(lambda: _poisoned(NAN)(c.model)),
            ValueError,
            r"losses must be finite",
        ),
        loads("other damping", lambda c: c.saved(damping=0.05), r"saved with damping=0.05"),
        loads(
            "saved beta zero",
            lambda c: c.edited(entry("beta"), torch.zeros(2)),
            r"\['beta'\] must be finite with a non-zero entry, "
            r"got tensor of shape \(2,\) and dtype torch.float32 \(\[0.0, 0.0\]\)",
        ),
        loads(
            "saved beta shape",
            lambda c: c.edited(entry("beta"), torch.ones(3)),
            r"\['beta'\] must be a tensor of shape \(2,\), got tensor of shape \(3,\)",
        ),
    ],
}
for _name in OPTIMIZERS:
    ERRORS[_name] = common(_name) + ERRORS[_name]


def controller(label: str, change: dict[str, Any], error: type[Exception], match: str) -> Case:
    """A construction row: a controller on the context's Adam with ``change`` to its options."""
    return Case("construction", label, lambda c: SparsityController(c.opt, model=c.model, **change), error, match)


def _controller_of(model: torch.nn.Module, **change: Any) -> dict[str, Any]:
    return sparse_for(model, torch.optim.Adam(model.parameters()), **change).state_dict()


def _deeper() -> torch.nn.Module:
    model = Wider()
    model.trunk.add_module("2", torch.nn.Linear(16, 16))
    return model


def _broken_masks(c: Context, edit: Callable[[list[torch.Tensor]], None]) -> dict[str, Any]:
    state = copy.deepcopy(c.sparse.state_dict())
    edit(state["masks"])
    return state


ERRORS[CONTROLLER] = [
    controller("sparsity one", {"sparsity": 1.0}, ValueError, r"sparsity must be in \[0, 1\), got 1.0"),
    controller("sparsity negative", {"sparsity": -0.1}, ValueError, r"sparsity must be >= 0.0, got -0.1"),
    controller("sparsity a string", {"sparsity": "0.5"}, TypeError, r"sparsity must be a real number, got str '0.5'"),
    controller(
        "regrow",
        {"sparsity": 0.5, "regrow": "rigl"},
        ValueError,
        r"regrow must be one of 'random', 'gradient', 'exploration'; got 'rigl'",
    ),
    controller(
        "schedule with regrowth",
        {"sparsity": CubicSparsity(0.9, 0, 10), "regrow": "gradient"},
        ValueError,
        r"cannot be combined with regrow='gradient'",
    ),
    controller(
        "exploration without it",
        {"sparsity": 0.5, "exploration": 0.1, "regrow": "gradient"},
        ValueError,
        r"exploration is the coefficient of regrow='exploration'",
    ),
    controller(
        "threshold with regrowth",
        {"sparsity": 0.5, "threshold": 1e-3, "regrow": "random"},
        ValueError,
        r"threshold prunes without regrowth",
    ),
    controller("threshold zero", {"sparsity": 0.5, "threshold": 0.0}, ValueError, r"threshold must be > 0.0, got 0.0"),
    controller(
        "distribution",
        {"sparsity": 0.5, "distribution": "erdos"},
        ValueError,
        r"distribution must be one of 'erk', 'uniform'; got 'erdos'",
    ),
    controller(
        "distribution names",
        {"sparsity": 0.5, "distribution": {"fc.weight": 0.5}},
        ValueError,
        r"distribution names \['fc.weight'\]",
    ),
    controller(
        "update_every zero", {"sparsity": 0.5, "update_every": 0}, ValueError, r"update_every must be >= 1, got 0"
    ),
    controller(
        "drop_fraction",
        {"sparsity": 0.5, "drop_fraction": 1.5},
        ValueError,
        r"drop_fraction must be in \[0, 1\], got 1.5",
    ),
    controller(
        "drop_schedule",
        {"sparsity": 0.5, "drop_schedule": "linear"},
        ValueError,
        r"drop_schedule must be one of 'cosine', 'constant'",
    ),
    controller(
        "structure",
        {"sparsity": 0.5, "structure": "block"},
        ValueError,
        r"structure must be one of 'element', 'row', 'column'",
    ),
    controller(
        "params outside",
        {"sparsity": 0.5, "params": [torch.zeros(3, 3, requires_grad=True)]},
        ValueError,
        r"params\[0\] \(shape \(3, 3\)\) is not in the optimizer's param_groups",
    ),
    controller(
        "generator", {"sparsity": 0.5, "generator": 0}, TypeError, r"generator must be a torch.Generator, got int"
    ),
    Case(
        "construction",
        "rows of a vector",
        lambda c: SparsityController(
            c.opt, model=c.model, params=[c.model.trunk[0].bias], sparsity=0.5, structure="row"
        ),
        ValueError,
        r"structure='row' needs parameters of 2\+ dimensions; trunk.0.bias has shape \(16,\)",
    ),
    Case(
        "construction",
        "export without the model",
        lambda c: SparsityController(torch.optim.Adam(TwoHeads().parameters()), sparsity=0.5).export(),
        ValueError,
        r"export\(\) needs the model",
    ),
    loads(
        "an optimizer's state",
        lambda c: c.opt.state_dict(),
        r"state_dict must hold \[.*\]: it lacks \['active', 'active_updates', 'config'",
    ),
    loads(
        "other regrow",
        lambda c: _controller_of(TwoHeads(), regrow="random"),
        r"saved with regrow='random', but this controller has regrow='gradient'",
    ),
    loads(
        "other sparsity",
        lambda c: _controller_of(TwoHeads(), sparsity=0.8),
        r"saved with sparsity=0.8, but this controller has sparsity=0.5",
    ),
    loads("other model", lambda c: _controller_of(_deeper()), r"do not match this model's masked parameters"),
    loads(
        "masks short",
        lambda c: _broken_masks(c, lambda masks: masks.pop()),
        r"state_dict\['masks'\] must hold one entry per masked parameter \(3\), got list",
    ),
    loads(
        "mask shape",
        lambda c: _broken_masks(c, lambda masks: masks.__setitem__(0, masks[0][:, :2])),
        r"state_dict\['masks'\]\[0\] \(trunk.0.weight\) must be a boolean tensor of shape \(16, 6\), "
        r"got tensor of shape \(16, 2\)",
    ),
]


# ------------------------------------------------------------------------------ the runner
def context(name: str, case: Case) -> Context:
    """Two steps trained; a controller on the optimizer (except to build one); for the backward
    phase a backward awaiting its step, with filled gradients that must survive."""
    model = TwoHeads()
    pending = case.phase == "backward" if case.pending is None else case.pending
    if name == CONTROLLER:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        sparse = None if case.phase == "construction" else sparse_for(model, opt, **case.options)
    else:
        opt = make(model, name, **case.options)
        sparse = sparse_for(model, opt)
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    c = Context(name, case.options, model, opt, sparse, adam, pending)
    go_on(c, 0, 2)
    if pending:
        opt.zero_grad()
        opt.backward(task_losses(model, 2))
    return c


def go_on(c: Context, start: int, steps: int) -> None:
    for step in range(start, start + steps):
        c.opt.zero_grad()
        if c.name == CONTROLLER:
            task_losses(c.model, step).sum().backward()
            c.opt.step()
        else:
            train(c.model, c.opt, 1, start=step)


def everything(c: Context) -> dict[str, Any]:
    """The context's :func:`~tests.helpers.snapshot` and the state of its plain Adam."""
    return {"objects": snapshot(c.model, c.opt, c.sparse), "adam": copy.deepcopy(c.adam.state_dict())}


ROWS = [(name, case) for name, cases in ERRORS.items() for case in cases]


@pytest.mark.parametrize("name, case", ROWS, ids=[f"{name}-{case.phase}-{case.label}" for name, case in ROWS])
def test_an_error_names_the_rule_and_changes_nothing(name, case):
    c, twin = context(name, case), context(name, case)
    before = everything(c)
    with pytest.raises(case.error, match=case.match):
        case.call(c)
    assert_same_state_dict(before, everything(c))
    for trained in (c, twin):  # the awaited step is that of the earlier backward; then one more
        if trained.pending:
            trained.opt.step()
        go_on(trained, 3, 1)
    assert_same_state_dict(everything(twin), everything(c))


def test_every_class_has_a_table_over_its_phases():
    assert set(ERRORS) == {*OPTIMIZERS, CONTROLLER}
    for name, cases in ERRORS.items():
        assert all(case.phase in PHASES for case in cases)
        phases = {"construction", "load"} if name == CONTROLLER else set(PHASES)
        assert {case.phase for case in cases} == phases, name
        labels = [case.label for case in cases]
        assert len(labels) == len(set(labels)), name
