"""Faults and bad input for every optimizer and the SparsityController: an error or a skip, never a corrupted state."""

import copy
import io

import pytest
import torch

from tests.helpers import TwoHeads, flat_parameters, task_losses, train
from tests.unit.test_protocol import OPTIMIZERS, assert_same_state, make, method_state
from torch_moo import SparsityController

NAN, INF = float("nan"), float("inf")


@pytest.fixture(params=sorted(OPTIMIZERS))
def method(request):
    return request.param


def bad(values, index=0, value=NAN):
    """``values`` with entry ``index`` made non-finite, keeping the graph (so backward would reach .grad)."""
    poison = torch.ones_like(values.detach())
    poison[index] = value
    return values * poison


def sparse_for(model, opt, **kwargs):
    options = dict(sparsity=0.5, distribution="uniform", regrow="gradient", update_every=2)
    return SparsityController(opt, model=model, **{**options, **kwargs})


def snapshot(model, opt, sparse=None):
    """Everything a fault must leave alone: parameters, .grad, the state dicts, what backward recorded."""
    return {
        "params": flat_parameters(model),
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "opt": copy.deepcopy(opt.state_dict()),
        "pending": (None if opt._pending_sum is None else opt._pending_sum.clone(), opt._pending_count, opt._pending_skip),
        "sparse": None if sparse is None else copy.deepcopy(sparse.state_dict()),
    }


def assert_unchanged(before, after):
    assert torch.equal(before["params"], after["params"])
    for a, b in zip(before["grads"], after["grads"]):
        assert (a is None and b is None) or torch.equal(a, b)
    assert str(before["opt"]) == str(after["opt"])  # tensors print with their values
    (sum_a, count_a, skip_a), (sum_b, count_b, skip_b) = before["pending"], after["pending"]
    assert (sum_a is None and sum_b is None) or torch.equal(sum_a, sum_b)
    assert (count_a, skip_a) == (count_b, skip_b)
    assert str(before["sparse"]) == str(after["sparse"])



# ----------------------------------------------------------------------------- the option
def test_nonfinite_option(method):
    assert make(TwoHeads(), method).nonfinite == "raise"
    for mode in ("raise", "skip", "propagate"):
        assert make(TwoHeads(), method, nonfinite=mode).nonfinite == mode
    with pytest.raises(ValueError, match=r"nonfinite must be one of 'raise', 'skip', 'propagate'; got 'ignore'"):
        make(TwoHeads(), method, nonfinite="ignore")
    # the older spelling is gone: a TypeError that names it, before Adam sees it
    with pytest.raises(TypeError, match=rf"{method} got an unexpected keyword argument 'check_finite'"):
        make(TwoHeads(), method, check_finite=False)


# --------------------------------------------------------------------------- "raise"
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_raise_changes_nothing(method, value):
    model = TwoHeads()
    opt = make(model, method, **({"moments": None} if method == "MultiGradientDescent" else {}))
    sparse = sparse_for(model, opt)
    train(model, opt, 2)
    opt.zero_grad()
    opt.backward(task_losses(model, 2))  # a pending backward with filled grads, which must survive
    before = snapshot(model, opt, sparse)
    with pytest.raises(ValueError, match=r"losses must be finite, got \[.*(nan|inf)"):
        opt.backward(bad(task_losses(model, 3), 1, value))
    assert_unchanged(before, snapshot(model, opt, sparse))
    assert not opt.skipped
    # the step that follows is the one of the earlier backward alone
    twin = TwoHeads()
    twin_opt = make(twin, method, **({"moments": None} if method == "MultiGradientDescent" else {}))
    twin_sparse = sparse_for(twin, twin_opt)
    train(twin, twin_opt, 2)
    twin_opt.zero_grad()
    twin_opt.backward(task_losses(twin, 2))
    opt.step()
    twin_opt.step()
    assert torch.equal(flat_parameters(model), flat_parameters(twin))
    assert_same_state(method_state(opt), method_state(twin_opt))
    assert sparse.step_count == twin_sparse.step_count == 3


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
            assert_unchanged({**before, "pending": (None, 0, False)}, snapshot(model, opt, sparse))
            with pytest.raises(RuntimeError, match="found no backward"):
                opt.step()  # the skipped backward was used up by the skipped step
        train(model, opt, 4, start=3)
        assert not opt.skipped
        runs.append((flat_parameters(model), method_state(opt), sparse.state_dict(), opt.state_dict()["state"]))
    (params_a, method_a, sparse_a, base_a), (params_b, method_b, sparse_b, base_b) = runs
    assert torch.equal(params_a, params_b)
    assert_same_state(method_a, method_b)
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
    assert after["pending"][1:] == (2, True)
    opt.backward(task_losses(model, 4))  # a later finite backward does not undo the skip
    assert opt.skipped
    state, params = method_state(opt), flat_parameters(model)
    opt.step()
    assert torch.equal(flat_parameters(model), params)
    assert_same_state(state, method_state(opt))
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
    assert_unchanged({**before, "grads": [torch.zeros_like(p) for p in model.parameters()], "pending": (None, 0, False)},
                     snapshot(model, opt, sparse))
    opt.zero_grad()
    opt.backward(task_losses(model, 10), scaler=scaler)
    scaler.step(opt)
    scaler.update()
    assert not opt.skipped and sparse.step_count == steps + 1
    assert all(int(s["step"]) == steps + 1 for s in opt.state.values())


# ----------------------------------------------------------------------- "propagate"
@pytest.mark.parametrize("value", [NAN, INF])
def test_propagate_lets_gradscaler_skip_and_keeps_the_state(method, value):
    model = TwoHeads()
    opt = make(model, method, nonfinite="propagate")
    sparse = sparse_for(model, opt)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    for step in range(2):
        opt.zero_grad()
        opt.backward(task_losses(model, step), scaler=scaler)
        scaler.step(opt)
        scaler.update()
    opt.zero_grad()
    before = snapshot(model, opt, sparse)
    opt.backward(bad(task_losses(model, 2), 1, value), scaler=scaler)
    assert not all(torch.isfinite(p.grad).all() for p in model.parameters())  # reached .grad, as in PyTorch
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**7  # the scaler skipped and backed off
    after = snapshot(model, opt, sparse)
    assert torch.equal(before["params"], after["params"])
    assert str(before["opt"]) == str(after["opt"]) and str(before["sparse"]) == str(after["sparse"])
    assert not opt.skipped  # skipped by the scaler, not by the optimizer
    train(model, opt, 2, start=3)
    assert torch.isfinite(flat_parameters(model)).all()
    # ChebyshevALM's ideal point starts at +inf by design (and stays there without reference="ideal")
    assert all(torch.isfinite(v).all() for k, v in method_state(opt).items() if isinstance(v, torch.Tensor) and k != "ideal")


# ------------------------------------------------------------------------- bad input
BAD_LOSSES = [
    ("wrong length", lambda m: task_losses(m, 0)[:1], ValueError, r"losses must hold num_objectives=2 values, got 1"),
    ("too long", lambda m: torch.cat([task_losses(m, 0), task_losses(m, 1)]), ValueError,
     r"losses must hold num_objectives=2 values, got 4"),
    ("2-D", lambda m: task_losses(m, 0).reshape(2, 1), ValueError, r"losses must be a 1-D tensor of 2 per-objective losses, got shape \(2, 1\)"),
    ("0-D", lambda m: task_losses(m, 0).sum(), ValueError, r"losses must be a 1-D tensor of 2 per-objective losses, got shape \(\)"),
    ("integer", lambda m: torch.tensor([1, 2]), TypeError, r"losses must be floating point, got dtype torch.int64"),
    ("complex", lambda m: torch.tensor([1.0, 2.0], dtype=torch.complex64, requires_grad=True), TypeError,
     r"losses must be floating point, got dtype torch.complex64"),
    ("no grad", lambda m: task_losses(m, 0).detach(), ValueError, r"losses do not require grad"),
    ("numbers", lambda m: [1.0, 2.0], ValueError, r"losses do not require grad"),
    ("string", lambda m: "ab", TypeError, r"losses must be a 1-D tensor or a sequence of scalars, got str"),
]


@pytest.mark.parametrize("name, make_losses, error, message", BAD_LOSSES, ids=[case[0] for case in BAD_LOSSES])
@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_bad_losses_are_an_error_that_changes_nothing(method, mode, name, make_losses, error, message):
    model = TwoHeads()
    opt = make(model, method, nonfinite=mode, **({"moments": None} if method == "MultiGradientDescent" else {}))
    sparse = sparse_for(model, opt)
    train(model, opt, 1)
    opt.zero_grad()
    opt.backward(task_losses(model, 1))
    before = snapshot(model, opt, sparse)
    with pytest.raises(error, match=message):
        opt.backward(make_losses(model))
    assert_unchanged(before, snapshot(model, opt, sparse))


# ------------------------------------------------------------------------ resuming
def saved(method, model=None, num_objectives=2, **options):
    model = TwoHeads() if model is None else model
    opt = make(model, method, num_objectives=num_objectives, **options)
    for step in range(2):
        opt.zero_grad()
        opt.backward(task_losses(model, step)[:num_objectives])
        opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


OTHER_CONFIG = {
    "ChebyshevALM": ({"outer_every": 4}, r"saved with outer_every=4, but this ChebyshevALM has outer_every=3"),
    "FixedWeighting": ({"weights": [0.5, 0.5]}, r"saved with weights=\[0.5, 0.5\], but this FixedWeighting has weights=\[0.2, 0.8\]"),
    "MinMaxWeighting": ({"gamma": 1.0}, r"saved with gamma=1.0, but this MinMaxWeighting has gamma=5.0"),
    "MultiGradientDescent": ({"moments": None}, r"saved with moments=None, but this MultiGradientDescent has moments=\(0.9, 0.99\)"),
    "ParetoTangentExplorer": ({"step_size": 0.5}, r"saved with step_size=0.5, but this ParetoTangentExplorer has step_size=0.1"),
}


class Wider(TwoHeads):
    """TwoHeads with one more parameter."""

    def __init__(self):
        super().__init__()
        self.extra = torch.nn.Parameter(torch.zeros(3))


# keep every other setting equal, so that the number of objectives is the difference reported
ONE = {
    "ChebyshevALM": {"preference": [1.0]},
    "FixedWeighting": {"weights": [1.0]},
    "MultiGradientDescent": {"moments": (0.9, 0.99)},
}
ONE.update({name: {} for name in OPTIMIZERS if name not in ONE})


def _controller_state():
    model = TwoHeads()
    return sparse_for(model, torch.optim.Adam(model.parameters())).state_dict()


def _loading_cases(method):
    other = next(name for name in sorted(OPTIMIZERS) if name != method)
    options, message = OTHER_CONFIG[method]
    return [
        ("other configuration", lambda: saved(method, **options), message),
        ("other class", lambda: saved(other), rf"saved with method='{other}', but this {method} has method='{method}'"),
        ("other objectives", lambda: saved(method, num_objectives=1, **ONE[method]),
         rf"saved with num_objectives=1, but this {method} has num_objectives=2"),
        ("more parameters", lambda: saved(method, model=Wider()), rf"saved for parameter groups of \[7\] parameters, but this {method} has groups of \[6\]"),
        ("plain optimizer", lambda: torch.optim.Adam(TwoHeads().parameters()).state_dict(), r"has no 'torch_moo' entry"),
        ("controller", lambda: _controller_state(), r"has no 'torch_moo' entry"),
        ("broken entry", lambda: {**saved(method), "torch_moo": {"state": {}}}, r"state_dict\['torch_moo'\] must hold \['config', 'state'\]: it lacks \['config'\]"),
    ]


@pytest.mark.parametrize("case", range(7))
def test_loading_a_mismatched_state_dict_changes_nothing(method, case):
    name, make_state, message = _loading_cases(method)[case]
    model = TwoHeads()
    opt = make(model, method)
    train(model, opt, 3)
    before = snapshot(model, opt)
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(make_state())
    assert_unchanged(before, snapshot(model, opt))
    train(model, opt, 1, start=3)  # and it still trains


def test_controller_rejects_state_dicts_it_did_not_save():
    model = TwoHeads()
    opt = make(model, "ChebyshevALM")
    sparse = sparse_for(model, opt)
    train(model, opt, 3)
    before = snapshot(model, opt, sparse)
    with pytest.raises(ValueError, match=r"state_dict must hold \[.*\]: it lacks \['active', 'active_updates', 'config'"):
        sparse.load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match=r"saved with regrow='random', but this controller has regrow='gradient'"):
        other_model = TwoHeads()
        sparse.load_state_dict(sparse_for(other_model, torch.optim.Adam(other_model.parameters()), regrow="random").state_dict())
    wider = Wider()
    wider.trunk.add_module("2", torch.nn.Linear(16, 16))
    other = sparse_for(wider, torch.optim.Adam(wider.parameters())).state_dict()
    with pytest.raises(ValueError, match=r"do not match this model's masked parameters"):
        sparse.load_state_dict(other)
    broken = sparse.state_dict()
    broken["masks"] = broken["masks"][:1]
    with pytest.raises(ValueError, match=r"state_dict\['masks'\] must hold one entry per masked parameter \(3\), got list"):
        sparse.load_state_dict(broken)
    broken = sparse.state_dict()
    broken["masks"][0] = broken["masks"][0][:, :2]
    with pytest.raises(ValueError, match=r"state_dict\['masks'\]\[0\] \(trunk.0.weight\) must be a boolean tensor of shape \(16, 6\), got tensor of shape \(16, 2\)"):
        sparse.load_state_dict(broken)
    assert_unchanged(before, snapshot(model, opt, sparse))


def test_non_finite_losses_under_the_controller_never_revive_pruned_weights(method):
    model = TwoHeads()
    opt = make(model, method, nonfinite="skip")
    sparse = sparse_for(model, opt)
    for step in range(6):
        opt.zero_grad()
        losses = task_losses(model, step)
        opt.backward(bad(losses) if step % 2 else losses)
        opt.step()
        for p, mask in zip((model.trunk[0].weight, model.heads[0].weight, model.heads[1].weight), sparse.masks.values()):
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
        for p, mask in zip((model.trunk[0].weight, model.heads[0].weight, model.heads[1].weight), sparse.masks.values()):
            assert torch.all(p[~mask] == 0) and torch.any(p[mask] != 0)
    assert sparse.step_count == 2 * corrections  # only base steps count
