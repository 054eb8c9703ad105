"""Checkpoints through torch.save / torch.load(weights_only=True): optimizer, base, method state,
SparsityController, scheduler and GradScaler together; resuming is bit-exact on CPU."""

import pytest
import torch
from torch.optim import lr_scheduler

from tests.helpers import OPTIMIZERS, TwoHeads, assert_resumes, make, state_dicts, task_losses
from torch_moo import SparsityController
from torch_moo.sparsity import CubicSparsity

STEPS = 12
NAN = float("nan")
CONTROLLERS = {
    "exploration": dict(sparsity=0.6, regrow="exploration", update_every=2, generator=True),
    "random": dict(sparsity=0.6, regrow="random", update_every=3, stop_after=10, generator=True),
    "gradual": dict(sparsity=CubicSparsity(final=0.7, begin=0, end=8), update_every=2),
    "threshold": dict(sparsity=0.3, threshold=1e-2),
}


def build(method, controller, options, scaled, three):
    model = TwoHeads()
    k = 3 if three else 2
    if three:  # a third objective over every parameter, so that MGDA's solver works on k = 3
        options = {**options, **({"preference": [0.2, 0.5, 0.3]} if method == "ChebyshevALM" else {})}
    opt = make(model, method, num_objectives=k, nonfinite="skip", **options)
    kwargs = dict(CONTROLLERS[controller])
    if kwargs.pop("generator", False):
        kwargs["generator"] = torch.Generator().manual_seed(7)
    sparse = SparsityController(opt, model=model, distribution="uniform", **kwargs)
    sched = lr_scheduler.OneCycleLR(opt, max_lr=2e-2, total_steps=STEPS)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=3) if scaled else None
    return model, opt, sparse, sched, scaler


def losses_at(model, step, k):
    losses = task_losses(model, step)
    if k == 3:
        losses = torch.cat([losses, 1e-2 * sum(p.square().sum() for p in model.parameters()).reshape(1)])
    if step in (2, 9):  # a skipped step in each half
        losses = losses * torch.tensor([NAN] + [1.0] * (k - 1))
    return losses


def train(objects, start, stop):
    model, opt, sparse, sched, scaler = objects
    for step in range(start, stop):
        opt.zero_grad()
        losses = losses_at(model, step, opt.num_objectives)
        if scaler is None:
            opt.backward(losses)
            opt.step()
        else:
            opt.backward(losses, scaler=scaler)
            if step == 5:  # an overflow the scaler skips
                next(model.parameters()).grad.view(-1)[0] = float("inf")
            scaler.step(opt)
            scaler.update()
        sched.step()


def assert_plain(value, path="state"):
    """Only tensors, numbers, strings, None and lists / tuples / dicts of them: what the safe loader takes."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, (str, int)), f"{path} has key {key!r}"
            assert_plain(item, f"{path}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            assert_plain(item, f"{path}[{index}]")
    else:
        assert value is None or isinstance(value, (torch.Tensor, bool, int, float, str)), (
            f"{path} is {type(value).__name__}"
        )


CASES = [
    (method, controller, False, False) for method in sorted(OPTIMIZERS) for controller in ("exploration", "gradual")
]
CASES += [(method, "random", True, False) for method in sorted(OPTIMIZERS)]
CASES += [
    ("ChebyshevALM", "threshold", False, False),
    ("MultiGradientDescent", "exploration", False, True),
    ("ParetoTangentExplorer", "random", True, True),
    ("MinMaxWeighting", "exploration", True, True),
]


@pytest.mark.parametrize(
    "method, controller, scaled, three",
    CASES,
    ids=[f"{m}-{c}{'-scaler' if s else ''}{'-k3' if t else ''}" for m, c, s, t in CASES],
)
def test_resume_through_the_safe_loader_is_bit_exact(method, controller, scaled, three):
    options = OPTIMIZERS[method][1]
    straight, _ = assert_resumes(lambda: build(method, controller, options, scaled, three), train, STEPS)
    assert_plain(state_dicts(straight))
    _, opt, sparse, _, _ = straight
    expected_steps = STEPS - 2 - (1 if scaled else 0)  # two skipped by nonfinite="skip", one by the scaler
    assert {int(s["step"]) for s in opt.state_dict()["state"].values()} == {expected_steps}
    assert sparse.step_count == expected_steps


def test_base_optimizer_with_the_controller_alone():
    # The controller on a plain torch.optim optimizer goes through the same loader.
    def make_plain():
        model = TwoHeads()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        sparse = SparsityController(
            opt, model=model, sparsity=0.6, distribution="uniform", regrow="gradient", update_every=2
        )
        return model, opt, sparse

    def run(objects, start, stop):
        model, opt, _ = objects
        for step in range(start, stop):
            opt.zero_grad()
            task_losses(model, step).sum().backward()
            opt.step()

    assert_resumes(make_plain, run, STEPS)
