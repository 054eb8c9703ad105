"""Faults for every optimizer and the SparsityController: an error or a skip, never a corrupted state
(the refused inputs themselves: tests/unit/test_error_tables.py)."""

import pytest
import torch

from tests.helpers import (
    TwoHeads,
    assert_same_state_dict,
    flat_parameters,
    make,
    method_state,
    snapshot,
    sparse_for,
    task_losses,
    train,
)

NAN, INF = float("nan"), float("inf")


def bad(values, index=0, value=NAN):
    """``values`` with entry ``index`` made non-finite, keeping the graph (so backward would reach .grad)."""
    poison = torch.ones_like(values.detach())
    poison[index] = value
    return values * poison


# ----------------------------------------------------------------------------- the option
def test_nonfinite_option(method):
    assert make(TwoHeads(), method).nonfinite == "raise"
    for mode in ("raise", "skip", "propagate"):
        assert make(TwoHeads(), method, nonfinite=mode).nonfinite == mode
    # other values and the older spelling check_finite: tests/unit/test_error_tables.py


# ---------------------------------------------------------------------------- "skip"
@pytest.mark.parametrize("value", [NAN, INF])
def test_skip_is_a_no_op_for_the_base_the_method_and_the_controller(method, value):
    # A run with a skipped step in the middle equals, bit for bit, a run without it.
    runs = []
    for with_fault in (True, False):
        model = TwoHeads()
        opt = make(model, method, nonfinite="skip")
        sparse = sparse_for(model, opt)
        train(model, opt, 3)
        if with_fault:
            opt.zero_grad()
            before = snapshot(model, opt, sparse)
            weights = opt.backward(bad(task_losses(model, 99), 0, value))
            assert torch.equal(weights, torch.zeros(2)) and opt.skipped
            assert all(p.grad is None for p in model.parameters())  # backward wrote nothing
            assert opt.step() is None
            assert opt.skipped  # the last step was skipped, until the next backward
            assert_same_state_dict(before, snapshot(model, opt, sparse))
            with pytest.raises(RuntimeError, match="found no backward"):
                opt.step()  # the skipped backward was used up by the skipped step
        train(model, opt, 4, start=3)
        assert not opt.skipped
        runs.append((flat_parameters(model), method_state(opt), sparse.state_dict(), opt.state_dict()["state"]))
    (params_a, method_a, sparse_a, base_a), (params_b, method_b, sparse_b, base_b) = runs
    assert torch.equal(params_a, params_b)
    assert_same_state_dict(method_a, method_b)
    assert sparse_a["step"] == sparse_b["step"] == 7
    assert all(torch.equal(a, b) for a, b in zip(sparse_a["masks"], sparse_b["masks"]))
    assert all(int(s["step"]) == 7 for s in base_a.values())


def test_skip_leaves_earlier_gradients_and_skips_the_accumulated_step(method):
    if method == "MultiGradientDescent":
        pytest.skip("moments take one backward per step")
    model = TwoHeads()
    opt = make(model, method, nonfinite="skip")
    train(model, opt, 2)
    opt.zero_grad()
    opt.backward(task_losses(model, 2))
    before = snapshot(model, opt)
    opt.backward(bad(task_losses(model, 3)))
    assert opt.skipped
    after = snapshot(model, opt)
    assert all(torch.equal(a, b) for a, b in zip(before["grads"], after["grads"]))
    # the step it leads to is skipped: a no-op
    assert_same_state_dict(after["next step"], {"params": after["params"], "opt": after["opt"], "sparse": None})
    opt.backward(task_losses(model, 4))  # a later finite backward does not undo the skip
    assert opt.skipped
    state, params = method_state(opt), flat_parameters(model)
    opt.step()
    assert torch.equal(flat_parameters(model), params)
    assert_same_state_dict(state, method_state(opt))
    assert all(int(s["step"]) == 2 for s in opt.state.values())
    opt.zero_grad()
    assert opt.skipped  # still describes the last step
    opt.backward(task_losses(model, 5))
    assert not opt.skipped
    opt.step()
    assert all(int(s["step"]) == 3 for s in opt.state.values())


def test_skip_through_a_closure(method):
    if method == "ParetoTangentExplorer":
        pytest.skip("its closure step is an exploration step")
    model = TwoHeads()
    opt = make(model, method, nonfinite="skip")
    train(model, opt, 1)
    params = flat_parameters(model)

    def closure():
        opt.zero_grad()
        return bad(task_losses(model, 1))

    returned = opt.step(closure)
    assert returned is not None and not torch.isfinite(returned).all()
    assert opt.skipped and torch.equal(flat_parameters(model), params)


@pytest.mark.parametrize("first", [True, False], ids=["first-iteration", "later"])
def test_skip_with_a_gradscaler(method, first):
    # The skipped backward leaves the scaler able to step (scale initialised, gradients to check);
    # scaler.step then calls opt.step(), which is the no-op.
    model = TwoHeads()
    opt = make(model, method, nonfinite="skip")
    sparse = sparse_for(model, opt)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    steps = 0 if first else 2
    for step in range(steps):
        opt.zero_grad()
        opt.backward(task_losses(model, step), scaler=scaler)
        scaler.step(opt)
        scaler.update()
    opt.zero_grad()
    before = snapshot(model, opt, sparse)
    assert torch.equal(opt.backward(bad(task_losses(model, 9)), scaler=scaler), torch.zeros(2))
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())  # zeros for the scaler
    scaler.step(opt)
    scaler.update()
    assert opt.skipped
    assert scaler.get_scale() == 2.0**8  # a skip of ours is not an overflow: the scale does not back off
    assert_same_state_dict(
        {**before, "grads": [torch.zeros_like(p) for p in model.parameters()]}, snapshot(model, opt, sparse)
    )
    opt.zero_grad()
    opt.backward(task_losses(model, 10), scaler=scaler)
    scaler.step(opt)
    scaler.update()
    assert not opt.skipped and sparse.step_count == steps + 1
    assert all(int(s["step"]) == steps + 1 for s in opt.state.values())


def test_non_finite_losses_under_the_controller_never_revive_pruned_weights(method):
    model = TwoHeads()
    opt = make(model, method, nonfinite="skip")
    sparse = sparse_for(model, opt)
    for step in range(6):
        opt.zero_grad()
        losses = task_losses(model, step)
        opt.backward(bad(losses) if step % 2 else losses)
        opt.step()
        for p, mask in zip(
            (model.trunk[0].weight, model.heads[0].weight, model.heads[1].weight), sparse.masks.values()
        ):
            assert torch.all(p[~mask] == 0)
    assert sparse.step_count == 3


@pytest.mark.parametrize("corrections", [0, 1])
def test_exploration_steps_never_revive_pruned_weights(corrections):
    # The tangent move changes the weights outside the base optimizer's step, whose hooks the
    # controller uses; it masks them again after every step of the torch_moo optimizer as well.
    from torch_moo import ParetoTangentExplorer

    model = TwoHeads()
    opt = ParetoTangentExplorer(model.parameters(), num_objectives=2, corrections=corrections)
    sparse = sparse_for(model, opt, regrow=None)
    for step in range(2):
        opt.step(lambda step=step: task_losses(model, step))
        for p, mask in zip(
            (model.trunk[0].weight, model.heads[0].weight, model.heads[1].weight), sparse.masks.values()
        ):
            assert torch.all(p[~mask] == 0) and torch.any(p[mask] != 0)
    assert sparse.step_count == 2 * corrections  # only base steps count


def test_losses_are_skipped_exactly_when_not_all_finite():
    """Extreme finite losses (near float32's range, subnormal) are kept; any NaN or infinity skips."""
    weight = torch.nn.Parameter(torch.ones(()))
    opt = make([weight], "FixedWeighting", nonfinite="skip")
    values = torch.tensor([0.0, -1e38, 3e38, 1e-45, float("inf"), float("-inf"), float("nan")])
    for i in range(len(values)):
        for j in range(len(values)):
            pair = values[[i, j]]
            opt.zero_grad()
            opt.backward(pair + 0 * weight)
            assert opt.skipped == (not bool(torch.isfinite(pair).all())), pair
