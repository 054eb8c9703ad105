"""Building an optimizer as PyTorch users do: an optimizer instance as the base, base keywords, the
repr, FixedWeighting and MGDA's head gradients (issue 14, item 6). The refused constructions are in
tests/unit/test_error_tables.py."""

import pytest
import torch

from tests.helpers import OPTIMIZERS, TwoHeads, batch, flat_parameters, task_losses, train
from torch_moo import ChebyshevALM, FixedWeighting, MinMaxWeighting, MultiGradientDescent


@pytest.fixture(params=sorted(OPTIMIZERS))
def name(request):
    return request.param


def build(name, params, **kwargs):
    """The :data:`OPTIMIZERS` entry ``name`` over ``params`` (parameters or a base optimizer instance)."""
    cls, options = OPTIMIZERS[name]
    return cls(params, num_objectives=2, **{**options, **kwargs})


# ------------------------------------------------------------------------ base instance
def test_an_optimizer_instance_is_the_base_and_trains_as_the_class_would(name):
    by_class, by_instance = TwoHeads(seed=3), TwoHeads(seed=3)
    opt = build(name, by_class.parameters(), base=torch.optim.Adam, lr=1e-2)
    adam = torch.optim.Adam(by_instance.parameters(), lr=1e-2)
    wrapped = build(name, adam, base=None)  # the instance is the base (the table's base=Adam left out)
    assert wrapped.base is adam and wrapped.param_groups is adam.param_groups and wrapped.state is adam.state
    train(by_class, opt, 4)
    train(by_instance, wrapped, 4)
    assert torch.equal(flat_parameters(by_class), flat_parameters(by_instance))


def test_base_instance_keeps_its_scheduler_and_state():
    model = TwoHeads()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(sgd, step_size=1, gamma=0.5)
    opt = MultiGradientDescent(sgd, num_objectives=2)
    train(model, opt, 1)
    scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    assert all("momentum_buffer" in state for state in opt.state.values())


def test_base_instance_may_be_given_as_base():
    model = TwoHeads()
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    assert MultiGradientDescent(model.parameters(), num_objectives=2, base=adam).base is adam


# ---------------------------------------------------------------------- keywords
def test_base_keywords_still_reach_the_base(name):
    opt = build(name, TwoHeads().parameters(), base=torch.optim.Adam, lr=3e-3, betas=(0.8, 0.9), weight_decay=0.1)
    assert (opt.defaults["lr"], opt.defaults["betas"], opt.defaults["weight_decay"]) == (3e-3, (0.8, 0.9), 0.1)


# ------------------------------------------------------------------------------- repr
def test_repr_shows_the_method_settings_and_the_base():
    opt = ChebyshevALM(TwoHeads().parameters(), num_objectives=2, preference=[1.0, 3.0], outer_every=5, lr=1e-2)
    text = repr(opt)
    assert text.startswith("ChebyshevALM(num_objectives=2, preference=[0.25, 0.75], ")
    for setting in ("outer_every=5", "multiplier_update='phr'", "nonfinite='raise'", "base=Adam (", "lr: 0.01"):
        assert setting in text, setting
    assert "normalization='loss+'" in repr(
        MultiGradientDescent(TwoHeads().parameters(), num_objectives=2, normalization="loss+")
    )


# ------------------------------------------------------------------------ FixedWeighting
def test_fixed_weighting_with_default_weights_is_plain_adam_on_the_sum():
    ours, plain = TwoHeads(seed=1), TwoHeads(seed=1)
    opt = FixedWeighting(ours.parameters(), num_objectives=2, lr=1e-2)
    adam = torch.optim.Adam(plain.parameters(), lr=1e-2)
    for step in range(5):
        assert torch.equal(opt.backward(task_losses(ours, step)), torch.ones(2))
        opt.step()
        opt.zero_grad()
        task_losses(plain, step).sum().backward()
        adam.step()
        adam.zero_grad()
    assert torch.equal(flat_parameters(ours), flat_parameters(plain))


def test_fixed_weighting_weights_the_losses_as_given():
    model = TwoHeads()
    opt = FixedWeighting(model.parameters(), num_objectives=2, weights=[2.0, 0.0], lr=1e-2)
    losses = task_losses(model, 0)
    assert torch.equal(opt.weights(losses), torch.tensor([2.0, 0.0]))
    opt.backward(losses)
    expected = torch.autograd.grad(2 * task_losses(model, 0)[0], model.trunk[0].weight)[0]
    torch.testing.assert_close(model.trunk[0].weight.grad, expected)
    assert model.heads[1].weight.grad is None or not model.heads[1].weight.grad.any()


def test_a_configuration_switches_methods_without_a_branch():
    methods = {
        "sum": (FixedWeighting, {}),
        "mgda": (MultiGradientDescent, {"normalization": "loss+"}),
        "minmax": (MinMaxWeighting, {"gamma": 5.0}),
        "chebyshev": (ChebyshevALM, {"preference": [0.5, 0.5], "outer_every": 2}),
    }
    for cls, options in methods.values():
        model = TwoHeads()
        opt = cls(model.parameters(), num_objectives=2, lr=1e-2, **options)
        first = task_losses(model, 0).sum().item()
        train(model, opt, 30)
        assert task_losses(model, 0).sum().item() < first, cls.__name__


# -------------------------------------------------------------------------- MGDA heads
def _head_gradients(model, opt, features):
    x, y1, y2 = batch(0)
    z = model.trunk(x)
    out1, out2 = (head(z).squeeze(-1) for head in model.heads)
    losses = torch.stack([(out1 - y1).square().mean(), (out2 - y2).square().mean()])
    alpha = opt.backward(losses, features=z if features else None)
    return alpha, [head.weight.grad.clone() for head in model.heads]


# moments need the full mode: no representation-mode case for them
@pytest.mark.parametrize("features, moments", [(False, None), (True, None), (False, (0.0, 0.0))])
def test_heads_get_their_own_gradient_or_alpha_times_it(features, moments):
    model = TwoHeads()
    own_grads = [torch.autograd.grad(task_losses(model, 0)[i], model.heads[i].weight)[0] for i in range(2)]
    if moments:  # beta1 = beta2 = 0: the Adam direction of one step is the gradient's sign
        own_grads = [g / (g.abs() + 1e-8) for g in own_grads]
    results = {}
    for heads in ("own", "weighted"):
        opt = MultiGradientDescent(model.parameters(), num_objectives=2, heads=heads, moments=moments, lr=0.0)
        opt.zero_grad()
        results[heads] = _head_gradients(model, opt, features)
    (alpha, own), (alpha_weighted, weighted) = results["own"], results["weighted"]
    torch.testing.assert_close(alpha, alpha_weighted)
    for i in range(2):
        torch.testing.assert_close(own[i], own_grads[i])
        torch.testing.assert_close(weighted[i], alpha[i] * own_grads[i])


def test_weighted_heads_leave_the_trunk_direction_unchanged():
    model = TwoHeads()
    trunks = {}
    for heads in ("own", "weighted"):
        opt = MultiGradientDescent(model.parameters(), num_objectives=2, heads=heads, lr=0.0)
        opt.zero_grad()
        _head_gradients(model, opt, features=True)
        trunks[heads] = model.trunk[0].weight.grad.clone()
    torch.testing.assert_close(trunks["own"], trunks["weighted"])
