"""bf16 autocast, GradScaler with the SparsityController, and torch.compile'd models, for every optimizer.

A step GradScaler skips changes nothing (here, with the controller, for every optimizer and plain Adam);
that scaled steps equal unscaled ones is in test_protocol.py.
"""

import pytest
import torch

from tests.helpers import (
    OPTIMIZERS,
    TwoHeads,
    assert_same_state_dict,
    assert_scaler_skips,
    batch,
    flat_parameters,
    make,
    method_state,
    sparse_for,
    state_dtype,
    task_losses,
)


def masked(model):
    return [model.trunk[0].weight, model.heads[0].weight, model.heads[1].weight]


def assert_masked(model, sparse, opt):
    for p, mask in zip(model if isinstance(model, list) else masked(model), sparse.masks.values()):
        assert torch.all(p[~mask] == 0)
        for value in opt.state.get(p, {}).values():  # nothing in Adam's moments can revive it
            if isinstance(value, torch.Tensor) and value.shape == p.shape:
                assert torch.all(value[~mask] == 0)


# ------------------------------------------------------------------------ bf16 autocast
def test_bf16_autocast_trains_keeps_float32_state_and_stays_near_float32(method):
    steps = 10
    runs = {}
    for autocast in (True, False):
        model = TwoHeads()
        opt = make(model, method)
        sparse = sparse_for(model, opt)
        start = flat_parameters(model)
        for step in range(steps):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                losses = task_losses(model, step)
            weights = opt.backward(losses)
            opt.step()
            assert weights.dtype == torch.float32
            assert_masked(model, sparse, opt)
        state = method_state(opt)
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == state_dtype(key), key
                assert not torch.isnan(value).any(), key
        assert all(p.dtype == torch.float32 for p in model.parameters())
        runs[autocast] = (flat_parameters(model), start)
    (bf16, start), (fp32, _) = runs[True], runs[False]
    assert torch.isfinite(bf16).all()
    # bf16 keeps 8 significant bits (relative rounding 2^-9 ~ 2e-3) in the matmuls; the losses'
    # weights and Adam's normalised steps (each at most lr = 1e-2 per entry) absorb it, so the two
    # runs stay far closer than either moved: within 5 % of the largest move after 10 steps.
    moved = (fp32 - start).abs().max()
    assert moved > 0.02
    assert (bf16 - fp32).abs().max() < 0.05 * moved


def test_bf16_loss_vectors_give_float32_weights_and_state(method):
    model = TwoHeads()
    opt = make(model, method)
    for step in range(4):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = task_losses(model, step).to(torch.bfloat16)  # a loss vector in bf16 itself
        assert opt.backward(losses).dtype == torch.float32
        opt.step()
        assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(v.dtype == state_dtype(k) for k, v in method_state(opt).items() if isinstance(v, torch.Tensor))


# -------------------------------------------------------------- a step GradScaler skips
NAN, INF = float("nan"), float("inf")
OVERFLOWS = {"inf gradient": None, "nan loss": NAN, "inf loss": INF}  # losses reach .grad under nonfinite="propagate"


@pytest.mark.parametrize("overflow", OVERFLOWS)
@pytest.mark.parametrize("optimizer", [*sorted(OPTIMIZERS), "Adam"])
def test_a_step_gradscaler_skips_changes_nothing_and_nothing_revives_a_pruned_weight(optimizer, overflow):
    model = TwoHeads()
    if optimizer == "Adam":
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    else:
        opt = make(model, optimizer, **({} if overflow == "inf gradient" else {"nonfinite": "propagate"}))
    sparse = sparse_for(model, opt)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)

    def scaled_step(step, overflow=None):
        opt.zero_grad()
        losses = task_losses(model, step)
        if OVERFLOWS.get(overflow) is not None:
            losses = losses * torch.tensor([1.0, OVERFLOWS[overflow]])
        if optimizer == "Adam":
            scaler.scale(losses.sum()).backward()
        else:
            opt.backward(losses, scaler=scaler)
        if overflow == "inf gradient":
            model.heads[0].bias.grad.fill_(INF)
        elif overflow is not None:  # the losses reached .grad, as in PyTorch
            assert not all(torch.isfinite(p.grad).all() for p in model.parameters())
        scaler.step(opt)
        scaler.update()

    for step in range(3):
        scaled_step(step)
    masks, count, params = sparse.masks, sparse.step_count, flat_parameters(model)
    method = None if optimizer == "Adam" else method_state(opt)
    # the skipped step falls on an update step (count 3 -> 4 would be due at 4): nothing moves
    assert_scaler_skips(lambda: scaled_step(3, overflow), scaler, model, opt, sparse)
    assert optimizer == "Adam" or not opt.skipped  # skipped by the scaler, not by the optimizer
    scaled_step(4)  # the next step does move the method state: the comparison above is not vacuous
    assert_masked(model, sparse, opt)
    # a method state that moves (MultiGradientDescent's moments are per-parameter state, in the base's)
    if optimizer not in ("Adam", "ParetoTangentExplorer", "FixedWeighting", "MultiGradientDescent"):
        with pytest.raises(AssertionError):
            assert_same_state_dict(method, method_state(opt))
        # ChebyshevALM's ideal point starts at +inf by design (and stays there without reference="ideal")
        assert all(
            torch.isfinite(v).all()
            for k, v in method_state(opt).items()
            if isinstance(v, torch.Tensor) and k != "ideal"
        )
    for step in range(5, 9):  # topology updates at controller steps 4 and 6 (and 8)
        scaled_step(step)
        assert_masked(model, sparse, opt)
    assert sparse.step_count == count + 5
    assert not torch.equal(flat_parameters(model), params) and torch.isfinite(flat_parameters(model)).all()
    assert not all(torch.equal(masks[k], v) for k, v in sparse.masks.items())  # the topology did change
    assert [int(m.sum()) for m in sparse.masks.values()] == [int(m.sum()) for m in masks.values()]


# ---------------------------------------------------------------------------- torch.compile
def _outputs(model, x):
    # the trunk and each head compiled on their own (see compiled()), composed eagerly
    z = model.trunk(x)
    return [head(z).squeeze(-1) for head in model.heads]


def compiled(model, method, backend):
    """Loss-space methods: the whole model. Gradient-space methods backward each objective
    separately and tell which parameters it reaches from the autograd graph; a whole compiled model
    is a single node that every objective reaches, so the trunk and the heads are compiled apart."""
    if method in ("ChebyshevALM", "MinMaxWeighting"):
        return torch.compile(model, backend=backend)
    model.trunk = torch.compile(model.trunk, backend=backend)
    for i, head in enumerate(model.heads):
        model.heads[i] = torch.compile(head, backend=backend)
    return lambda x: _outputs(model, x)


def compiled_training(method, backend, steps=5, controller=False):
    torch._dynamo.reset()
    runs = []
    for compile_it in (True, False):
        model = TwoHeads()
        opt = make(model, method)
        sparse = sparse_for(model, opt) if controller else None
        weights = masked(model)  # before compiling replaces the submodules
        forward = compiled(model, method, backend) if compile_it else model
        for step in range(steps):
            x, y1, y2 = batch(step)
            opt.zero_grad()
            out1, out2 = forward(x)
            opt.backward(torch.stack([(out1 - y1).square().mean(), (out2 - y2).square().mean()]))
            opt.step()  # eager: the optimizer's own step is not compiled
            if sparse is not None:
                assert_masked(weights, sparse, opt)
        runs.append((flat_parameters(model), method_state(opt), None if sparse is None else sparse.masks))
    return runs


@pytest.mark.parametrize("controller", [False, True], ids=["plain", "controller"])
def test_compiled_model_trains_like_the_eager_one(method, controller):
    (params, state, masks), (eager_params, eager_state, eager_masks) = compiled_training(
        method, "aot_eager", controller=controller
    )
    # aot_eager runs the traced ATen graph without code generation, so the kernels are those of
    # eager mode; decompositions may reassociate a reduction (float32 rounding, 1e-7 relative),
    # which five Adam steps of size <= 1e-2 cannot amplify beyond 1e-6.
    torch.testing.assert_close(params, eager_params, rtol=1e-5, atol=1e-6)
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, eager_state[key], rtol=1e-5, atol=1e-6, msg=key)
    if controller:
        assert all(torch.equal(masks[k], v) for k, v in eager_masks.items())


def test_inductor_compiled_model_with_the_controller():
    # One test with real code generation (C++ kernels, ~10 s to compile on CPU). Inductor fuses
    # and reorders float32 reductions (over 32 samples and 16 features), ~1e-7 relative per op;
    # Adam's normalisation can magnify a gradient's rounding where the gradient is near zero, but
    # each update is bounded by lr = 1e-2, so 6 steps agree to 1e-5.
    (params, state, masks), (eager_params, eager_state, eager_masks) = compiled_training(
        "ChebyshevALM", "inductor", steps=6, controller=True
    )
    torch.testing.assert_close(params, eager_params, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state["multipliers"], eager_state["multipliers"], rtol=1e-4, atol=1e-5)
    assert all(torch.equal(masks[k], v) for k, v in eager_masks.items())
