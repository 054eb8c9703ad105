"""The drop-in contract: a real torch.optim.Optimizer around a base optimizer."""

import inspect

import pytest
import torch
from torch.optim import lr_scheduler

from tests.helpers import (
    GRADIENT_SPACE,
    TwoHeads,
    assert_resumes,
    assert_same_state_dict,
    flat_parameters,
    make,
    method_state,
    task_losses,
    train,
)
from torch_moo import ChebyshevALM


def test_is_an_optimizer_sharing_the_base_groups_and_state(method):
    model = TwoHeads()
    opt = make(model, method)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups is opt.base.param_groups
    assert opt.state is opt.base.state
    assert opt.defaults is opt.base.defaults and "betas" in opt.defaults
    train(model, opt, 2)
    assert len(opt.state) == len(list(model.parameters()))


SCHEDULERS = {
    "LambdaLR": lambda o: lr_scheduler.LambdaLR(o, lambda e: 0.9**e),
    "MultiplicativeLR": lambda o: lr_scheduler.MultiplicativeLR(o, lambda e: 0.95),
    "StepLR": lambda o: lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    "MultiStepLR": lambda o: lr_scheduler.MultiStepLR(o, milestones=[2, 5], gamma=0.5),
    "ConstantLR": lambda o: lr_scheduler.ConstantLR(o, factor=0.5, total_iters=3),
    "LinearLR": lambda o: lr_scheduler.LinearLR(o, start_factor=0.2, total_iters=4),
    "ExponentialLR": lambda o: lr_scheduler.ExponentialLR(o, gamma=0.9),
    "PolynomialLR": lambda o: lr_scheduler.PolynomialLR(o, total_iters=6, power=2.0),
    "CosineAnnealingLR": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=5),
    "CosineAnnealingWarmRestarts": lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=3),
    "CyclicLR": lambda o: lr_scheduler.CyclicLR(o, base_lr=1e-3, max_lr=1e-2, step_size_up=2),
    "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(o, max_lr=1e-2, total_steps=20),
    "ReduceLROnPlateau": lambda o: lr_scheduler.ReduceLROnPlateau(o, patience=0, factor=0.5),
    "SequentialLR": lambda o: lr_scheduler.SequentialLR(
        o, [lr_scheduler.ConstantLR(o, factor=0.5, total_iters=2), lr_scheduler.ExponentialLR(o, 0.9)], milestones=[2]
    ),
    "ChainedScheduler": lambda o: lr_scheduler.ChainedScheduler(
        [lr_scheduler.ConstantLR(o, factor=0.5, total_iters=2), lr_scheduler.ExponentialLR(o, 0.9)], optimizer=o
    ),
}


def test_scheduler_table_covers_every_scheduler_in_torch():
    schedulers = {
        name
        for name, cls in inspect.getmembers(lr_scheduler, inspect.isclass)
        if issubclass(cls, (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau))
        and cls.__module__ == lr_scheduler.__name__
        and not name.startswith("_")
        and name not in ("LRScheduler", "_LRScheduler")
    }
    assert schedulers <= set(SCHEDULERS), f"untested schedulers: {schedulers - set(SCHEDULERS)}"


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_drives_it_exactly_like_the_base(name, method):
    # With one objective every method is the base optimizer, so the learning rates, the momentum
    # that CyclicLR/OneCycleLR cycle through Adam's betas, and the parameters must agree bit for bit.
    runs = []
    for wrapped in (True, False):
        model = TwoHeads()
        opt = make(model, method, num_objectives=1) if wrapped else torch.optim.Adam(model.parameters(), lr=1e-2)
        scheduler = SCHEDULERS[name](opt)
        history = []
        for step in range(8):
            opt.zero_grad()
            loss = task_losses(model, step).sum()
            if wrapped:
                opt.backward(loss.reshape(1))
            else:
                loss.backward()
            opt.step()
            if name == "ReduceLROnPlateau":
                scheduler.step(1.0)
            else:
                scheduler.step()
            history.append([(g["lr"], g["betas"]) for g in opt.param_groups])
        runs.append((history, flat_parameters(model)))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize(
    "base, kwargs",
    [(torch.optim.Adam, {}), (torch.optim.SGD, {"momentum": 0.9}), (torch.optim.AdamW, {"weight_decay": 0.1})],
)
def test_one_objective_is_the_base_optimizer_exactly(base, kwargs, method):
    wrapped, plain = TwoHeads(), TwoHeads()
    opt = make(wrapped, method, num_objectives=1, base=base, **kwargs)
    reference = base(plain.parameters(), lr=1e-2, **kwargs)
    for step in range(10):
        opt.zero_grad()
        reference.zero_grad()
        assert opt.backward(task_losses(wrapped, step).sum().reshape(1)).item() == 1.0
        task_losses(plain, step).sum().backward()
        opt.step()
        reference.step()
    assert torch.equal(flat_parameters(wrapped), flat_parameters(plain))


def test_backward_fills_grad_with_the_weighted_sum_and_accumulates(method):
    if method in GRADIENT_SPACE:
        pytest.skip("gradient-space: heads get their own gradient (tests/unit/test_mgda.py)")
    model = TwoHeads()
    opt = make(model, method)
    opt.zero_grad()
    weights = opt.backward(task_losses(model, 0))
    assert weights.dtype == torch.float32 and not weights.requires_grad
    assert torch.isclose(weights.sum(), torch.tensor(1.0))
    first = [p.grad.clone() for p in model.parameters()]
    expected = torch.autograd.grad((weights * task_losses(model, 0)).sum(), list(model.parameters()))
    for got, want in zip(first, expected):
        torch.testing.assert_close(got, want)
    opt.backward(task_losses(model, 0))
    for p, g in zip(model.parameters(), first):
        torch.testing.assert_close(p.grad, 2 * g)


def test_accumulated_backward_calls_update_the_state_with_their_mean_losses():
    model, twin = TwoHeads(), TwoHeads()
    opt = make(model, reference="ideal", lr=0.0)
    other = make(twin, reference="ideal", lr=0.0)
    opt.zero_grad()
    opt.backward(task_losses(model, 0))
    opt.backward(task_losses(model, 1))
    opt.step()
    mean = (task_losses(twin, 0) + task_losses(twin, 1)) / 2
    other.zero_grad()
    other.backward(mean)
    other.step()
    torch.testing.assert_close(opt.reference_point(), other.reference_point())


def test_retain_graph_allows_a_second_backward(method):
    model = TwoHeads()
    opt = make(model, method, **({"moments": None} if method == "MultiGradientDescent" else {}))
    losses = task_losses(model, 0)
    opt.backward(losses, retain_graph=True)
    opt.backward(losses)
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        opt.backward(losses)


def test_step_without_backward_raises_and_zero_grad_forgets_the_backward(method):
    model = TwoHeads()
    opt = make(model, method)
    with pytest.raises(RuntimeError, match=rf"{method}.step\(\) found no backward\(\).*opt.backward\(losses\)"):
        opt.step()
    opt.backward(task_losses(model, 0))
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(RuntimeError, match="found no backward"):
        opt.step()
    opt.backward(task_losses(model, 0))
    opt.step()
    with pytest.raises(RuntimeError, match="found no backward"):
        opt.step()


def test_closure_step_equals_backward_then_step(method):
    if method == "ParetoTangentExplorer":
        pytest.skip("its closure step is an exploration step (tests/unit/test_tangent.py)")
    a, b = TwoHeads(), TwoHeads()
    opt_a, opt_b = make(a, method), make(b, method)
    for step in range(5):

        def closure(step=step):
            opt_a.zero_grad()
            return task_losses(a, step)

        returned = opt_a.step(closure)
        assert returned.shape == (2,)
        opt_b.zero_grad()
        opt_b.backward(task_losses(b, step))
        opt_b.step()
    assert torch.equal(flat_parameters(a), flat_parameters(b))
    assert_same_state_dict(method_state(opt_a), method_state(opt_b))


def test_gradient_clipping_between_backward_and_step(method):
    model = TwoHeads()
    opt = make(model, method)
    opt.zero_grad()
    opt.backward(task_losses(model, 0) * 100)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert norm <= 0.5 + 1e-6
    opt.step()


def test_add_param_group_reaches_the_base(method):
    model = TwoHeads()
    opt = make(model, method, **({"moments": None} if method == "MultiGradientDescent" else {}))
    extra = torch.nn.Parameter(torch.ones(3))
    opt.add_param_group({"params": [extra], "lr": 0.1})
    assert opt.base.param_groups[-1]["params"][0] is extra
    opt.zero_grad()
    opt.backward(task_losses(model, 0) + extra.sum())
    opt.step()
    assert not torch.equal(extra.detach(), torch.ones(3))


def test_step_hooks_run_once_per_step(method):
    model = TwoHeads()
    opt = make(model, method)
    calls = []
    pre = opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    post = opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    train(model, opt, 2)
    assert calls == ["pre", "post", "pre", "post"]
    pre.remove()
    post.remove()
    train(model, opt, 1)
    assert len(calls) == 4


def test_gradscaler_step_equals_an_unscaled_step(method):
    # Power-of-two scales are exact in floating point, so scaling then unscaling changes no bit.
    a, b = TwoHeads(), TwoHeads()
    opt_a, opt_b = make(a, method), make(b, method)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    for step in range(4):
        opt_a.zero_grad()
        opt_a.backward(task_losses(a, step), scaler=scaler)
        scaler.step(opt_a)
        scaler.update()
        opt_b.zero_grad()
        opt_b.backward(task_losses(b, step))
        opt_b.step()
    assert torch.equal(flat_parameters(a), flat_parameters(b))


RESUME_CASES = [
    ("ChebyshevALM", {}),
    ("ChebyshevALM", {"reference": "ideal"}),
    ("ChebyshevALM", {"multiplier_update": "reference", "penalty": 1e-3, "penalty_growth": 2.0}),
    ("MinMaxWeighting", {}),
    ("MinMaxWeighting", {"ascent": "mirror", "update_every": 3}),
    ("MultiGradientDescent", {}),
    ("MultiGradientDescent", {"moments": None, "normalization": "loss+", "base": torch.optim.Adam}),
    ("ParetoTangentExplorer", {}),
    ("FixedWeighting", {}),
]


@pytest.mark.parametrize("method, options", RESUME_CASES)
def test_resume_is_bit_exact(method, options):
    def build():
        model = TwoHeads()
        opt = make(model, method, **options)
        return model, opt, lr_scheduler.CosineAnnealingLR(opt, T_max=14)

    def run(objects, start, stop):
        model, opt, scheduler = objects
        train(model, opt, stop - start, start=start, scheduler=scheduler)

    _, (_, opt, _) = assert_resumes(build, run, steps=14)
    assert opt.param_groups is opt.base.param_groups


def test_state_dict_is_the_base_format_plus_the_method_entry(method):
    model = TwoHeads()
    opt = make(model, method)
    train(model, opt, 1)
    state = opt.state_dict()
    assert set(state) == {"state", "param_groups", "torch_moo"}
    plain = torch.optim.Adam(TwoHeads().parameters(), lr=1e-2)
    plain.load_state_dict({k: v for k, v in state.items() if k != "torch_moo"})


def test_ideal_reference_tracks_the_running_minimum():
    model = TwoHeads()
    opt = make(model, reference="ideal", lr=0.0)
    seen = []
    for step in range(4):
        opt.zero_grad()
        losses = task_losses(model, step)
        seen.append(losses.detach())
        opt.backward(losses)
        opt.step()
    torch.testing.assert_close(opt.reference_point(), torch.stack(seen).min(dim=0).values)


def test_outer_step_moves_multipliers_toward_the_worse_objective():
    parameter = torch.nn.Parameter(torch.zeros(2))
    opt = ChebyshevALM([parameter], num_objectives=2, preference=[0.5, 0.5], base=torch.optim.SGD, lr=0.0)
    for _ in range(3):
        opt.zero_grad()
        opt.backward(parameter + torch.tensor([1.0, 0.2]))
        opt.step()
    assert torch.equal(opt.multipliers, torch.tensor([0.5, 0.5]))
    opt.outer_step()
    assert opt.multipliers[0] > opt.multipliers[1]
    torch.testing.assert_close(opt.multipliers.sum(), torch.tensor(1.0))


def test_non_finite_losses_never_enter_the_state_without_the_check():
    parameter = torch.nn.Parameter(torch.zeros(2))
    opt = ChebyshevALM(
        [parameter],
        num_objectives=2,
        preference=[0.5, 0.5],
        reference="ideal",
        outer_every=2,
        nonfinite="propagate",
        base=torch.optim.SGD,
        lr=0.0,
    )
    source = torch.zeros(2, requires_grad=True)  # outside the optimizer: its NaN grads harm nothing
    for values in ([1.0, 2.0], [float("nan"), 0.0], [float("inf"), 1.0], [0.5, 3.0]):
        opt.zero_grad()
        opt.backward(source + torch.tensor(values))
        opt.step()
    assert torch.isfinite(opt.multipliers).all() and torch.isfinite(opt.penalty)
    torch.testing.assert_close(opt.reference_point(), torch.tensor([0.5, 2.0]))


def test_deepcopy_keeps_the_base_and_the_method_state(method):
    import copy

    model = TwoHeads()
    opt = make(model, method)
    train(model, opt, 4)
    before = flat_parameters(model)
    clone = copy.deepcopy(opt)
    assert clone.param_groups is clone.base.param_groups and clone.state is clone.base.state
    assert_same_state_dict(method_state(opt), method_state(clone))
    clone_params = [p for group in clone.param_groups for p in group["params"]]
    copied = torch.cat([p.detach().reshape(-1) for p in clone_params])
    assert torch.equal(copied, before)
    clone.zero_grad()
    clone.backward(torch.stack([clone_params[0].sum(), clone_params[1].sum()]))
    clone.step()
    assert not torch.equal(torch.cat([p.detach().reshape(-1) for p in clone_params]), copied)
    assert torch.equal(flat_parameters(model), before)  # the original is untouched


def test_loss_space_methods_ignore_features(method):
    if method in GRADIENT_SPACE:
        pytest.skip("gradient-space: features select the representation mode (tests/unit/test_mgda.py)")
    a, b = TwoHeads(), TwoHeads()
    opt_a, opt_b = make(a, method), make(b, method)
    x = torch.randn(4, 6)
    weights_a = opt_a.backward(task_losses(a, 0), features=a.trunk(x))
    weights_b = opt_b.backward(task_losses(b, 0))
    assert torch.equal(weights_a, weights_b)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p.grad, q.grad)


def test_closure_returning_none_steps_after_its_own_backward(method):
    # Lightning's LightningOptimizer.step passes such a closure in manual optimization.
    a, b = TwoHeads(), TwoHeads()
    opt_a, opt_b = make(a, method), make(b, method)
    for opt, model in ((opt_a, a), (opt_b, b)):
        opt.zero_grad()
        opt.backward(task_losses(model, 0))
    assert opt_a.step(lambda: None) is None
    opt_b.step()
    assert torch.equal(flat_parameters(a), flat_parameters(b))
