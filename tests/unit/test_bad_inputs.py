"""The bad-input table of docs/bad_inputs.rst: every row is reproduced here, and the page's table
is exactly the rendering of these rows (a row changed here and not there fails the last test).

After changing a row, regenerate the table the page includes:

    python -m tests.unit.test_bad_inputs > docs/_generated/bad_inputs_table.rst
"""

from __future__ import annotations

import copy
import pathlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import torch_moo as tm
from tests.helpers import TwoHeads, task_losses

TABLE = pathlib.Path(__file__).parents[2] / "docs" / "_generated" / "bad_inputs_table.rst"


@dataclass(frozen=True)
class Row:
    """One input a user may bring: the code, and what happens, checked by running it."""

    area: str
    given: str  # shown as code
    run: Callable[[], object]
    error: type[Exception] | None = None  # raised by ``run``
    warning: type[Warning] | None = None  # warned by ``run``
    says: str = ""  # a fragment of the error's or warning's message, verbatim
    outcome: str = ""  # what happens when nothing is raised: ``run`` asserts it

    def happens(self) -> str:
        kind = self.error or self.warning
        if kind is None:
            return self.outcome
        return f'``{kind.__name__}``: "…{self.says}…"' + (f"; {self.outcome}" if self.outcome else "")


def _model() -> TwoHeads:
    return TwoHeads()


def _opt(cls=tm.ChebyshevALM, model=None, **options):
    defaults = {"preference": [0.5, 0.5]} if cls is tm.ChebyshevALM else {}
    return cls((model or _model()).parameters(), num_objectives=2, **{**defaults, **options})


def _backward(losses_of: Callable[[TwoHeads], object], cls=tm.ChebyshevALM, **options) -> Callable[[], object]:
    def run():
        model = _model()
        return _opt(cls, model, **options).backward(losses_of(model))

    return run


def _load(change: Callable[[dict], None]) -> Callable[[], object]:
    """Save a ChebyshevALM's state after one step, apply ``change`` to it, load it into a fresh one."""

    def run():
        model = _model()
        opt = _opt(model=model, outer_every=2)
        opt.backward(task_losses(model, 0))
        opt.step()
        state = copy.deepcopy(opt.state_dict())
        change(state)
        _opt(outer_every=2).load_state_dict(state)

    return run


def _weights_at(factors: list[float], cls, **options) -> torch.Tensor:
    return _backward(lambda m: task_losses(m, 0) * torch.tensor(factors), cls, **options)()


def _weights_on_the_simplex(factors: list[float], cls, **options) -> Callable[[], object]:
    def run():
        weights = _weights_at(factors, cls, **options)
        assert torch.isfinite(weights).all() and weights.min() >= 0
        torch.testing.assert_close(weights.sum(), torch.tensor(1.0))

    return run


def _mgda_scale_invariant(scale: float) -> Callable[[], object]:
    def run():
        # float32 gradients rescaled by a power of two: the weights agree to float32 rounding
        torch.testing.assert_close(
            _weights_at([scale, scale], tm.MultiGradientDescent),
            _weights_at([1.0, 1.0], tm.MultiGradientDescent),
            rtol=1e-4,
            atol=1e-6,
        )

    return run


def _chebyshev_growing_penalty():
    # the reproduction: the penalty doubles every step; float32 sums lost every weight at step 19
    model = _model()
    opt = _opt(model=model, penalty_growth=2.0, outer_every=1)
    for step in range(30):
        opt.zero_grad()
        weights = opt.backward(task_losses(model, step) * torch.tensor([1.0, 150.0]))
        opt.step()
        assert torch.isfinite(weights).all() and weights.sum() > 0.99, (step, weights)


def _controller(model: nn.Module, opt: torch.optim.Optimizer, **options) -> tm.SparsityController:
    return tm.SparsityController(opt, model=model, **{"sparsity": 0.5, **options})


def _second_controller():
    model = _model()
    opt = torch.optim.Adam(model.parameters())
    _controller(model, opt)
    _controller(model, opt)


def _controller_load(change: Callable[[dict], None]) -> Callable[[], object]:
    def run():
        model = _model()
        controller = _controller(model, torch.optim.Adam(model.parameters()), regrow="random", update_every=2)
        state = controller.state_dict()
        change(state)
        controller.load_state_dict(state)

    return run


def _conv_transpose_rows():
    model = nn.Sequential(nn.ConvTranspose2d(4, 6, 3))
    _controller(model, torch.optim.Adam(model.parameters()), structure="row")
    weight = model[0].weight  # (in=4, out=6, 3, 3): "row" units are the 6 output channels
    assert int((weight.abs().sum(dim=(0, 2, 3)) == 0).sum()) == 3
    assert int((weight.abs().sum(dim=(1, 2, 3)) == 0).sum()) == 0


def _sparse_embedding():
    embedding = nn.Embedding(20, 8, sparse=True)
    opt = torch.optim.SparseAdam(embedding.parameters())
    controller = tm.SparsityController(opt, params=[embedding.weight], sparsity=0.5, regrow="gradient", update_every=1)
    for _ in range(3):
        opt.zero_grad()
        embedding(torch.randint(0, 20, (10,))).square().sum().backward()
        opt.step()
    assert controller.sparsity() == 0.5 and int((embedding.weight == 0).sum()) >= 80


def _duplicate_parameter():
    twice, once = _model(), _model()
    opt = tm.MultiGradientDescent([*twice.parameters(), twice.trunk[0].weight], num_objectives=2, lr=0.0)
    opt.backward(task_losses(twice, 0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tm.MultiGradientDescent(once.parameters(), num_objectives=2, lr=0.0).backward(task_losses(once, 0))
    assert torch.equal(twice.trunk[0].weight.grad, once.trunk[0].weight.grad)


def _number_in_the_losses():
    model = _model()
    weights = _opt(tm.MinMaxWeighting, model).backward([task_losses(model, 0)[0], 3.0])
    assert weights.shape == (2,) and model.heads[0].weight.grad is not None


def _deepcopy_keeps_masking():
    model = _model()
    opt = tm.ChebyshevALM(model.parameters(), num_objectives=2, preference=[0.5, 0.5], lr=1e-2)
    controller = _controller(model, opt, regrow="gradient", update_every=2)
    model, opt, controller = copy.deepcopy((model, opt, controller))
    for step in range(4):
        opt.zero_grad()
        opt.backward(task_losses(model, step))
        opt.step()
    params = dict(model.named_parameters())
    assert all(not params[name][~mask].any() for name, mask in controller.masks.items())


ROWS = [
    # ----------------------------------------------------------------------- construction
    Row(
        "construction",
        "ChebyshevALM(params, num_objectives=2, preference=[0.5, -0.1])",
        lambda: _opt(preference=[0.5, -0.1]),
        ValueError,
        says="preference must be non-negative and not all zero",
    ),
    Row(
        "construction",
        "MultiGradientDescent(params, num_objectives=2, normalisation='l2')",
        lambda: _opt(tm.MultiGradientDescent, normalisation="l2"),
        TypeError,
        says="unexpected keyword argument 'normalisation': it is an option of neither MultiGradientDescent nor Adam; "
        "did you mean 'normalization'?",
    ),
    Row(
        "construction",
        "ChebyshevALM(params, ..., check_finite=False)",
        lambda: _opt(check_finite=False),
        TypeError,
        says="unexpected keyword argument 'check_finite'",
        outcome="the older spelling is gone: ``nonfinite='propagate'``",
    ),
    Row(
        "construction",
        "MinMaxWeighting(params, num_objectives=2, base=torch.optim.LBFGS)",
        lambda: _opt(tm.MinMaxWeighting, base=torch.optim.LBFGS),
        TypeError,
        says="base=LBFGS needs a closure at every step",
    ),
    Row(
        "construction",
        "MultiGradientDescent(torch.optim.Adam(params, lr=1e-3), num_objectives=2)",
        lambda: tm.MultiGradientDescent(torch.optim.Adam(_model().parameters(), lr=1e-3), num_objectives=2),
        outcome="works: the Adam instance becomes ``opt.base`` (its state, hooks and schedulers carry over)",
    ),
    Row(
        "construction",
        "MultiGradientDescent(adam, num_objectives=2, lr=0.1)",
        lambda: tm.MultiGradientDescent(torch.optim.Adam(_model().parameters()), num_objectives=2, lr=0.1),
        TypeError,
        says="unexpected keyword argument 'lr': the base optimizer is already built",
    ),
    Row(
        "construction",
        "MultiGradientDescent([*model.parameters(), model.fc.weight], ...)",
        _duplicate_parameter,
        outcome="torch.optim's duplicate-parameter warning, once; the parameter's gradient is "
        "computed and written once (as without the duplicate)",
        warning=UserWarning,
        says="optimizer contains a parameter group with duplicate parameters",
    ),
    # ---------------------------------------------------------------------------- losses
    Row(
        "losses",
        "opt.backward(torch.stack([loss1, loss2]).detach())",
        _backward(lambda m: task_losses(m, 0).detach()),
        ValueError,
        says="losses do not require grad",
    ),
    Row(
        "losses",
        "opt.backward([loss1, float('nan')])  # nonfinite='raise', the default",
        _backward(lambda m: [task_losses(m, 0)[0], float("nan")]),
        ValueError,
        says="losses must be finite",
        outcome="nothing changes (``nonfinite='skip'`` skips the step instead)",
    ),
    Row(
        "losses",
        "opt.backward(losses[:1])  # one loss short",
        _backward(lambda m: task_losses(m, 0)[:1]),
        ValueError,
        says="losses must hold num_objectives=2 values, got 1",
    ),
    Row(
        "losses",
        "opt.backward([loss1, per_sample_loss2])",
        _backward(lambda m: [task_losses(m, 0)[0], m(torch.randn(4, 6))[0]]),
        ValueError,
        says="losses[1] must be a scalar, got shape (4,) (reduce it, e.g. with .mean())",
    ),
    Row(
        "losses",
        "opt.backward([loss1, 3.0])  # a Python number beside device tensors",
        _number_in_the_losses,
        outcome="works: the number joins the tensors' device and dtype",
    ),
    Row(
        "losses",
        "project_simplex(torch.tensor([3e7, 1.0]))",
        lambda: torch.testing.assert_close(
            tm.functional.project_simplex(torch.tensor([3e7, 1.0])), torch.tensor([1.0, 0.0])
        ),
        outcome="``[1, 0]`` (float32 sums once gave ``[0, 0]`` above 2^24)",
    ),
    Row(
        "losses",
        "ChebyshevALM(..., penalty_growth=2, outer_every=1), losses ~[1, 150], 30 steps",
        _chebyshev_growing_penalty,
        outcome="finite weights that sum to 1 at every step",
    ),
    Row(
        "losses",
        "ChebyshevALM: losses of 1e30 and 1",
        _weights_on_the_simplex([1e30, 1.0], tm.ChebyshevALM),
        outcome="finite non-negative weights that sum to 1",
    ),
    Row(
        "losses",
        "MinMaxWeighting: losses of 1e9 and 1",
        _weights_on_the_simplex([1e9, 1.0], tm.MinMaxWeighting),
        outcome="finite non-negative weights that sum to 1",
    ),
    Row(
        "losses",
        "MultiGradientDescent: every loss times 1e20",
        _mgda_scale_invariant(1e20),
        outcome="the weights of the unscaled losses (to float32 rounding)",
    ),
    Row(
        "losses",
        "MultiGradientDescent: every loss times 1e-30",
        _mgda_scale_invariant(1e-30),
        outcome="the weights of the unscaled losses (to float32 rounding)",
    ),
    # ----------------------------------------------------------------------- checkpoints
    Row(
        "checkpoints",
        "opt.load_state_dict(state) with state['torch_moo']['config'] = None",
        _load(lambda state: state["torch_moo"].__setitem__("config", None)),
        ValueError,
        says="state_dict['torch_moo']['config'] must be a dict of the settings it was saved with, got NoneType None",
        outcome="nothing changes",
    ),
    Row(
        "checkpoints",
        "opt.load_state_dict(state) with state['torch_moo']['state']['since_outer'] = 'x'",
        _load(lambda state: state["torch_moo"]["state"].__setitem__("since_outer", "x")),
        ValueError,
        says="state_dict['torch_moo']['state']['since_outer'] must be a non-negative int, got str 'x'",
        outcome="nothing changes (the base optimizer's state included)",
    ),
    Row(
        "checkpoints",
        "opt.load_state_dict(state) with a NaN multiplier",
        _load(lambda state: state["torch_moo"]["state"]["multipliers"].fill_(float("nan"))),
        ValueError,
        says="state_dict['torch_moo']['state']['multipliers'] must be finite and non-negative",
        outcome="nothing changes",
    ),
    Row(
        "checkpoints",
        "controller.load_state_dict(state) with state['step'] = -3",
        _controller_load(lambda state: state.__setitem__("step", -3)),
        ValueError,
        says="state_dict['step'] must be a non-negative int, got int -3",
        outcome="masks and weights unchanged",
    ),
    Row(
        "checkpoints",
        "copy.deepcopy((model, opt, controller))",
        _deepcopy_keeps_masking,
        outcome="a copy whose controller masks the copied model through the copied optimizer",
    ),
    # ------------------------------------------------------------------------ sparsity
    Row(
        "sparsity",
        "a second SparsityController on the same parameters",
        _second_controller,
        ValueError,
        says="is already masked by SparsityController(",
        outcome="call ``remove()`` on the first one first",
    ),
    Row(
        "sparsity",
        "SparsityController(opt, model=conv_transpose_net, structure='row', ...)",
        _conv_transpose_rows,
        outcome="prunes output channels (dim 1 of a ConvTranspose weight), as for Conv",
    ),
    Row(
        "sparsity",
        "nn.Embedding(sparse=True) + SparseAdam + SparsityController(regrow='gradient')",
        _sparse_embedding,
        outcome="works: sparse gradients are scored densely; exact sparsity after every step",
    ),
]


def _rows_with_ids():
    return [pytest.param(row, id=f"{row.area}:{row.given[:60]}") for row in ROWS]


@pytest.mark.parametrize("row", _rows_with_ids())
def test_row_happens_as_the_table_says(row: Row):
    if row.error is not None:
        with pytest.raises(row.error) as raised:
            row.run()
        assert row.says in str(raised.value), (row.says, str(raised.value))
    elif row.warning is not None:
        with pytest.warns(row.warning) as caught:
            row.run()
        assert any(row.says in str(w.message) for w in caught), [str(w.message) for w in caught]
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            row.run()


def render() -> str:
    """The list-table that docs/bad_inputs.rst includes."""
    lines = [
        ".. This file is generated by tests/unit/test_bad_inputs.py; edit the rows there.",
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 14 43 43",
        "",
        "   * - where",
        "     - input",
        "     - what happens",
    ]
    for row in ROWS:
        lines += [f"   * - {row.area}", f"     - ``{row.given}``", f"     - {row.happens()}"]
    return "\n".join(lines) + "\n"


def test_the_docs_table_is_these_rows():
    assert TABLE.read_text() == render(), (
        "docs/_generated/bad_inputs_table.rst is out of date: "
        "python -m tests.unit.test_bad_inputs > docs/_generated/bad_inputs_table.rst"
    )


if __name__ == "__main__":
    print(render(), end="")
