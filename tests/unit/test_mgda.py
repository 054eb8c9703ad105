"""MultiGradientDescent: what it writes into .grad in each mode, moments, scaler, errors."""

import copy

import pytest
import torch

from tests.helpers import TwoHeads, batch, features_and_losses, flat_parameters, task_losses
from torch_moo import MultiGradientDescent
from torch_moo.functional import mgda_weights, normalized_gram


def trunk_jacobian(model, losses):
    trunk = list(model.trunk.parameters())
    rows = [torch.autograd.grad(loss, trunk, retain_graph=True) for loss in losses]
    return torch.stack([torch.cat([g.reshape(-1) for g in row]) for row in rows])


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+"])
def test_full_mode_is_mgda_on_the_shared_parameters_and_heads_take_their_own_gradient(normalization):
    model = TwoHeads()
    opt = MultiGradientDescent(model.parameters(), num_objectives=2, normalization=normalization, lr=1e-2)
    alpha = opt.backward(task_losses(model, 0))
    losses = task_losses(model, 0)
    jacobian = trunk_jacobian(model, losses)
    expected, _ = mgda_weights(jacobian, losses.detach(), normalization)
    # Both sides run the same float32 Gram and float64 solve: agreement to float32 rounding.
    torch.testing.assert_close(alpha, expected)
    got = torch.cat([p.grad.reshape(-1) for p in model.trunk.parameters()])
    torch.testing.assert_close(got, expected @ jacobian)
    for head, loss in zip(model.heads, losses):
        for p, own in zip(head.parameters(), torch.autograd.grad(loss, list(head.parameters()), retain_graph=True)):
            torch.testing.assert_close(p.grad, own)
    if normalization == "none":  # the common descent inequality <d, g_i> >= ||d||^2, and ||d||^2 reported
        d = expected @ jacobian
        assert (jacobian @ d >= d @ d - 1e-6 * jacobian.square().sum()).all()
        # stationarity is float64 (||d||^2 leaves float32's range for gradients beyond ~1e19);
        # the float32 d @ d agrees to float32 rounding.
        assert opt.stationarity.dtype == torch.float64
        torch.testing.assert_close(opt.stationarity.float(), d @ d)
    # The gap is evaluated at the float32 weights, whose sum differs from 1 by float32 rounding
    # (~6e-8): so it is >= 0 only up to about 1e-7 of the largest diagonal entry of the Gram matrix.
    scale = normalized_gram(jacobian @ jacobian.T, losses.detach(), normalization).diagonal().max()
    assert -1e-7 * scale < opt.gap < 1e-6 * scale


def head_losses(model, shared, z, structure, step=0):
    """The two objectives on top of the features ``z``, in three layouts of the heads."""
    _, y1, y2 = batch(step)
    if structure == "heads":  # each head consumes z once: one backward pass captures both shares
        out1, out2 = (head(z).squeeze(-1) for head in model.heads)
    elif structure == "head reading z twice":  # two nodes consume z for objective 0: their shares add up
        out1, out2 = model.heads[0](z).squeeze(-1) + 0.1 * z.sum(1), model.heads[1](z).squeeze(-1)
    else:  # "layer shared after z": one node consumes z for both, so one pass per objective
        s = shared(z)
        out1, out2 = (head(s).squeeze(-1) for head in model.heads)
    return torch.stack([(out1 - y1).square().mean(), (out2 - y2).square().mean()])


@pytest.mark.parametrize("structure", ["heads", "head reading z twice", "layer shared after z"])
def test_representation_mode_weights_the_trunk_through_the_features_and_heads_take_their_own_gradient(structure):
    model, shared = TwoHeads(), torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Tanh())
    params = [*model.parameters(), *shared.parameters()]
    opt = MultiGradientDescent(params, num_objectives=2, lr=1e-2)
    passes = []  # backward passes through the first head

    def count_passes(module, args, out):
        out.register_hook(lambda grad: passes.append(1))

    hook = model.heads[0].register_forward_hook(count_passes)
    z = model.trunk(batch(0)[0])
    alpha = opt.backward(head_losses(model, shared, z, structure), features=z)
    hook.remove()
    # One backward pass captures the shares unless a node after z serves both objectives; then one
    # pass per objective finds them and a last one of the sum fills .grad.
    assert len(passes) == (2 if structure == "layer shared after z" else 1)
    z = model.trunk(batch(0)[0])
    losses = head_losses(model, shared, z, structure)
    feature_grads = torch.stack([torch.autograd.grad(loss, z, retain_graph=True)[0].reshape(-1) for loss in losses])
    torch.testing.assert_close(alpha, mgda_weights(feature_grads)[0])
    # The trunk gets the MGDA combination through z; everything after z the plain sum's gradient
    # (each head its own objective's; a shared layer after z both), as one backward of the sum gives.
    trunk = list(model.trunk.parameters())
    for p, want in zip(trunk, torch.autograd.grad(alpha @ losses, trunk, retain_graph=True)):
        torch.testing.assert_close(p.grad, want)
    after = [*model.heads.parameters(), *shared.parameters()]
    for p, want in zip(after, torch.autograd.grad(losses.sum(), after, retain_graph=True, allow_unused=True)):
        assert p.grad is None if want is None else torch.allclose(p.grad, want)


def test_a_sequence_of_losses_is_the_same_as_their_stack_and_backward_accumulates():
    a, b = TwoHeads(), TwoHeads()
    opt_a = MultiGradientDescent(a.parameters(), num_objectives=2, lr=1e-2)
    opt_b = MultiGradientDescent(b.parameters(), num_objectives=2, lr=1e-2)
    x, y1, y2 = batch(0)
    out1, out2 = a(x)
    opt_a.backward([(out1 - y1).square().mean(), (out2 - y2).square().mean()])
    opt_b.backward(task_losses(b, 0))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p.grad, q.grad)
    first = grads(b)
    opt_b.backward(task_losses(b, 0))
    for p, g in zip(b.parameters(), first):
        torch.testing.assert_close(p.grad, 2 * g)


def test_losses_not_built_by_stack_reach_every_parameter_so_heads_are_weighted_too():
    # torch.cat hides which entry depends on which head: every parameter is shared then.
    model = TwoHeads()
    opt = MultiGradientDescent(model.parameters(), num_objectives=2, lr=1e-2)
    losses = task_losses(model, 0)
    alpha = opt.backward(torch.cat([losses[:1], losses[1:]]))
    head = list(model.heads[0].parameters())
    for p, own in zip(head, torch.autograd.grad(task_losses(model, 0)[0], head)):
        torch.testing.assert_close(p.grad, alpha[0] * own)


def train_beside(
    options: dict, reference_class, reference_options: dict, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-objective MGDA and a plain optimizer on the summed losses, from the same start: their parameters."""
    wrapped, plain = TwoHeads(), TwoHeads()
    opt = MultiGradientDescent(wrapped.parameters(), num_objectives=1, lr=1e-2, **options)
    reference = reference_class(plain.parameters(), lr=1e-2, **reference_options)
    for step in range(steps):
        opt.zero_grad()
        reference.zero_grad()
        opt.backward(task_losses(wrapped, step).sum().reshape(1))
        task_losses(plain, step).sum().backward()
        opt.step()
        reference.step()
    return flat_parameters(wrapped), flat_parameters(plain)


def test_one_objective_without_moments_is_the_base_optimizer_exactly():
    wrapped, plain = train_beside({}, torch.optim.Adam, {}, steps=5)
    assert torch.equal(wrapped, plain)


def test_one_objective_with_moments_and_sgd_is_adam():
    # k = 1: alpha = 1 and the direction is Adam's m_hat / (sqrt(v_hat) + eps); SGD steps by lr times it.
    options = {"moments": (0.9, 0.99), "base": torch.optim.SGD}
    wrapped, plain = train_beside(options, torch.optim.Adam, {"betas": (0.9, 0.99)}, steps=6)
    # Same formula, different association of the float32 operations: rounding-level agreement.
    torch.testing.assert_close(wrapped, plain, rtol=1e-5, atol=1e-6)


def test_moments_hold_each_objectives_adam_estimates():
    model = TwoHeads()
    opt = MultiGradientDescent(model.parameters(), num_objectives=2, moments=(0.5, 0.75), base=torch.optim.SGD, lr=0.0)
    params = list(model.parameters())
    expected_m = expected_v = 0
    for step in range(3):
        opt.zero_grad()
        opt.backward(task_losses(model, step))
        opt.step()
        losses = task_losses(model, step)
        rows = []
        for loss in losses:
            row = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, row)]))
        jacobian = torch.stack(rows)
        expected_m = 0.5 * expected_m + 0.5 * jacobian
        expected_v = 0.75 * expected_v + 0.25 * jacobian.square()
    # per-parameter optimizer state, (k, *p.shape) each: flattened and laid side by side, the k x P moments
    state = [opt.state[p] for p in params]
    assert all(int(s["objective_step"]) == 3 for s in state)
    torch.testing.assert_close(torch.cat([s["objective_exp_avg"].flatten(1) for s in state], 1), expected_m)
    torch.testing.assert_close(torch.cat([s["objective_exp_avg_sq"].flatten(1) for s in state], 1), expected_v)


def test_moments_of_a_new_param_group_start_at_its_first_step():
    # features and a second backward: tests/unit/test_error_tables.py
    model = TwoHeads()
    opt = MultiGradientDescent(model.parameters(), num_objectives=2, moments=(0.9, 0.99), lr=1e-2)
    opt.backward(task_losses(model, 0))
    opt.step()
    extra = torch.nn.Parameter(torch.ones(2))
    opt.add_param_group({"params": [extra]})
    opt.zero_grad()
    opt.backward(task_losses(model, 1) + extra.sum())
    opt.step()
    assert int(opt.state[extra]["objective_step"]) == 1 and int(opt.state[model.heads[0].bias]["objective_step"]) == 2


def test_moments_skip_non_finite_steps_without_the_check():
    model = TwoHeads()
    opt = MultiGradientDescent(model.parameters(), num_objectives=2, moments=(0.9, 0.99), nonfinite="propagate", lr=0.0)
    opt.backward(task_losses(model, 0))
    opt.step()
    before = copy.deepcopy(opt.state_dict()["state"])
    opt.zero_grad()
    opt.backward(task_losses(model, 1) * torch.tensor([float("nan"), 1.0]))
    opt.step()
    after = opt.state_dict()["state"]
    for index, entries in before.items():
        for key in ("objective_exp_avg", "objective_exp_avg_sq", "objective_step"):
            assert torch.equal(after[index][key], entries[key]), (index, key)


def test_representation_mode_under_gradscaler_equals_the_unscaled_step():
    # Power-of-two scales are exact, so scaling then unscaling changes no bit.
    a, b = TwoHeads(), TwoHeads()
    opt_a = MultiGradientDescent(a.parameters(), num_objectives=2, lr=1e-2)
    opt_b = MultiGradientDescent(b.parameters(), num_objectives=2, lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    for step in range(3):
        opt_a.zero_grad()
        z, losses = features_and_losses(a, step)
        opt_a.backward(losses, features=z, scaler=scaler)
        scaler.step(opt_a)
        scaler.update()
        opt_b.zero_grad()
        z, losses = features_and_losses(b, step)
        opt_b.backward(losses, features=z)
        opt_b.step()
    assert torch.equal(flat_parameters(a), flat_parameters(b))


def test_a_skipped_step_drops_the_pending_moments():
    model = TwoHeads()
    opt = MultiGradientDescent(model.parameters(), num_objectives=2, moments=(0.9, 0.99), nonfinite="skip", lr=1e-2)
    before = flat_parameters(model)
    opt.backward(task_losses(model, 0))
    opt.backward(task_losses(model, 1) * float("nan"))  # accumulation with a bad batch: the step is skipped
    opt.step()
    assert opt.skipped and torch.equal(flat_parameters(model), before)
    assert not any("objective_step" in entries for entries in opt.state.values())  # nothing entered
    opt.backward(task_losses(model, 2))  # without zero_grad: the skipped step left nothing pending
    opt.step()
    assert not torch.equal(flat_parameters(model), before)
