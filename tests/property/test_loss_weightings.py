"""The loss-space weighting rules against their formulas, LibMTL's implementations and the FAMO update written out."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings

from tests.strategies import preferences
from torch_moo.weightings.dwa import DWA
from torch_moo.weightings.famo import FAMO
from torch_moo.weightings.rlw import RLW
from torch_moo.weightings.stch import SmoothTchebycheff
from torch_moo.weightings.uncertainty import Uncertainty

RULES: dict[str, Callable[[int], Any]] = {
    "Uncertainty": lambda k: Uncertainty(k, lr=0.1),
    "DWA": lambda k: DWA(k, every=2),
    "RLW": lambda k: RLW(k, seed=3),
    "FAMO": lambda k: FAMO(k, lr=0.1),
    "SmoothTchebycheff": lambda k: SmoothTchebycheff(k, mu=0.5, reference="ideal"),
    "SmoothTchebycheff-fixed": lambda k: SmoothTchebycheff(k, mu=1e-3, reference=[0.0] * k),
}


def loss_sequences(k: st.SearchStrategy[int], low: float = 2.0**-7, high: float = 2.0**7, steps: int = 12) -> Any:
    """``steps`` loss vectors of ``k`` positive float32 values in ``[low, high]`` (bounds exact in float32)."""
    value = st.floats(low, high, width=32)
    return k.flatmap(lambda n: st.lists(st.lists(value, min_size=n, max_size=n), min_size=steps, max_size=steps))


@pytest.fixture(scope="module")
def libmtl() -> Iterator[Callable[[str], Any]]:
    """Import ``LibMTL.weighting.<name>`` alone: LibMTL's package ``__init__`` imports torchvision
    and its models, so the two packages are stubbed by modules that only hold their paths."""
    spec = importlib.util.find_spec("LibMTL")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("LibMTL is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    with pytest.MonkeyPatch.context() as patch:
        for name, path in (("LibMTL", root), ("LibMTL.weighting", root / "weighting")):
            stub = types.ModuleType(name)
            stub.__path__ = [str(path)]
            patch.setitem(sys.modules, name, stub)
        yield lambda name: importlib.import_module(f"LibMTL.weighting.{name}")


def libmtl_rule(module: Any, name: str, k: int) -> Any:
    rule = getattr(module, name)()
    rule.task_num, rule.device = k, torch.device("cpu")
    rule.init_param()
    return rule


# ----------------------------------------------------------------------------- Uncertainty


@settings(max_examples=30)
@given(loss_sequences(st.integers(1, 5)), st.floats(1e-3, 0.3))
def test_uncertainty_equals_libmtl_under_adam(libmtl, sequence, lr):
    reference = libmtl_rule(libmtl("UW"), "UW", len(sequence[0]))
    adam = torch.optim.Adam([reference.loss_scale], lr=lr)
    rule = Uncertainty(len(sequence[0]), lr=lr)
    for values in sequence:
        losses = torch.tensor(values, requires_grad=True)
        expected = reference.backward(losses)  # autograd on LibMTL's loss expression
        adam.step()
        adam.zero_grad()
        weights = rule(losses.detach())
        rule.observe(losses.detach())
        # LibMTL's Adam is float32 throughout, ours keeps the moments in float64: a relative difference
        # of ~1e-7 per step in m / sqrt(v) moves s by lr * 1e-7 per step, far below 1e-5 after 12 steps.
        np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-5)
        torch.testing.assert_close(rule.log_variance, reference.loss_scale.detach(), rtol=0, atol=1e-5)


def test_uncertainty_settles_at_the_log_losses():
    losses = torch.tensor([1e-2, 1.0, 1e2])
    rule = Uncertainty(3, lr=0.1)
    for _ in range(1000):
        rule.observe(losses)
    # the stationary point of L e^{-s} / 2 + s / 2 is s = log L. s falls fast but rises slowly
    # (for L >> e^s the early gradients ~ L e^{-s} fill Adam's second moment): measured within
    # 1.1e-3 after 1000 steps, 0.42 after 300
    torch.testing.assert_close(rule.log_variance, losses.log(), rtol=0, atol=1e-2)


def test_uncertainty_with_every_steps_on_the_period_mean():
    single, period = Uncertainty(2, lr=0.1), Uncertainty(2, lr=0.1, every=3)
    steps = torch.tensor([[1.0, 4.0], [3.0, 2.0], [2.0, 0.0]])
    single.observe(steps.mean(0))
    for values in steps:
        period.observe(values)
    torch.testing.assert_close(period.log_variance, single.log_variance, rtol=0, atol=0)


# ----------------------------------------------------------------------------- DWA


@settings(max_examples=30)
@given(loss_sequences(st.integers(1, 5), steps=15), st.sampled_from([1, 3, 5]), st.floats(0.1, 10))
def test_dwa_equals_libmtl(libmtl, sequence, steps_per_epoch, temperature):
    k, epochs = len(sequence[0]), len(sequence) // steps_per_epoch
    reference = libmtl_rule(libmtl("DWA"), "DWA", k)
    reference.train_loss_buffer = np.zeros([k, epochs])
    rule = DWA(k, temperature=temperature, every=steps_per_epoch)
    for epoch in range(epochs):
        reference.epoch = epoch
        chunk = torch.tensor(sequence[epoch * steps_per_epoch : (epoch + 1) * steps_per_epoch])
        for values in chunk:
            expected = reference.backward(values.clone().requires_grad_(), T=temperature)
            # LibMTL divides and takes the softmax in float32, we in float64: a few float32 ulps, or
            # one subnormal ulp (1.4e-45) for a weight below the smallest normal float32
            np.testing.assert_allclose(rule(values).numpy(), expected, rtol=1e-5, atol=2e-45)
            rule.observe(values)
        reference.train_loss_buffer[:, epoch] = chunk.double().mean(0).numpy()  # LibMTL's epoch mean


def test_dwa_skips_a_period_without_a_finite_step():
    rule = DWA(2)
    for values, finite in (([1.0, 1.0], True), ([5.0, 5.0], False), ([1.0, 2.0], True)):
        rule.observe(torch.tensor(values), torch.tensor(finite))
        rule.update()
    expected = 2 * torch.softmax(torch.tensor([1.0, 2.0]) / 2.0, dim=-1)
    torch.testing.assert_close(rule(torch.ones(2)), expected)


# ----------------------------------------------------------------------------- RLW


@settings(max_examples=20)
@given(st.integers(1, 8), st.integers(0, 2**32))
def test_rlw_draws_libmtl_weights_bit_for_bit(libmtl, k, seed):
    reference = libmtl_rule(libmtl("RLW"), "RLW", k)
    rule = RLW(k, seed=seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # LibMTL draws from the global generator
        for _ in range(5):
            losses = torch.ones(k, requires_grad=True)
            expected = reference.backward(losses, dist="Normal")
            assert np.array_equal(rule(losses.detach()).numpy(), expected)
            rule.observe(losses.detach())


def test_rlw_resumes_with_the_same_draws():
    rule = RLW(4, seed=7)
    for _ in range(3):
        rule.observe(torch.ones(4))
    state = rule.method_state()
    assert all(bool(holds) for holds, _ in rule.state_rules(state).values())
    resumed = RLW(4, seed=7)
    resumed.load_method_state(state)
    for _ in range(5):
        assert torch.equal(resumed(torch.ones(4)), rule(torch.ones(4)))
        rule.observe(torch.ones(4))
        resumed.observe(torch.ones(4))


def test_rlw_rejects_a_corrupt_generator_state():
    rule = RLW(2)
    state = rule.method_state()
    state["generator_state"] = torch.full_like(state["generator_state"], 255)
    holds, rule_text = rule.state_rules(state)["generator_state"]
    assert not holds and "generator state" in rule_text


def test_rlw_draws_every_period_only():
    rule = RLW(3, every=2)
    first = rule(torch.ones(3))
    rule.observe(torch.ones(3))
    assert torch.equal(rule(torch.ones(3)), first)
    rule.observe(torch.ones(3))
    assert not torch.equal(rule(torch.ones(3)), first)


# ----------------------------------------------------------------------------- FAMO


class FamoReference:
    """The authors' FAMO (github.com/Cranial-XIX/FAMO) with ``prev_loss`` the previous step's losses."""

    def __init__(self, k: int, lr: float, weight_decay: float, min_losses: torch.Tensor) -> None:
        self.min_losses = min_losses
        self.w = torch.zeros(k, dtype=torch.float64, requires_grad=True)
        self.w_opt = torch.optim.Adam([self.w], lr=lr, weight_decay=weight_decay)
        self.prev_loss: torch.Tensor | None = None

    def weights(self, losses: torch.Tensor) -> torch.Tensor:
        """d/dL of their get_weighted_loss, ``sum_i z_i log D_i / c`` with ``c`` detached."""
        losses = losses.double().requires_grad_()
        z = F.softmax(self.w.detach(), -1)
        gaps = losses - self.min_losses + 1e-8
        c = (z / gaps).sum().detach()
        (grad,) = torch.autograd.grad((gaps.log() * z / c).sum(), losses)
        return grad

    def update(self, curr_loss: torch.Tensor) -> None:
        curr_loss = curr_loss.double()
        if self.prev_loss is not None:
            delta = (self.prev_loss - self.min_losses + 1e-8).log() - (curr_loss - self.min_losses + 1e-8).log()
            with torch.enable_grad():
                (d,) = torch.autograd.grad(F.softmax(self.w, -1), self.w, grad_outputs=delta.detach())
            self.w_opt.zero_grad()
            self.w.grad = d
            self.w_opt.step()
        self.prev_loss = curr_loss


@settings(max_examples=30)
@given(loss_sequences(st.integers(1, 5), low=0.5, high=64.0), st.floats(1e-3, 0.1), st.floats(0, 0.1))
def test_famo_equals_the_authors_update(sequence, lr, weight_decay):
    k = len(sequence[0])
    min_losses = torch.full((k,), 0.25)
    reference = FamoReference(k, lr, weight_decay, min_losses.double())
    rule = FAMO(k, lr=lr, weight_decay=weight_decay, min_losses=min_losses)
    for values in torch.tensor(sequence):
        # the reference is float64 throughout; ours rounds the logits to float32 each step
        # (relative 6e-8 on logits of size <= lr * 12 < 2), far below 1e-5
        torch.testing.assert_close(rule(values).double(), reference.weights(values), rtol=1e-5, atol=1e-7)
        rule.observe(values)
        reference.update(values)
        torch.testing.assert_close(rule.logits.double(), reference.w.detach(), rtol=0, atol=1e-6)


def test_famo_favours_the_stalled_task():
    rule = FAMO(2, lr=0.1)
    for step in range(20):
        rule.observe(torch.tensor([0.9**step, 1.0]))
    assert rule.logits[1] > rule.logits[0]


# ----------------------------------------------------------------------------- SmoothTchebycheff


def smooth_tchebycheff(f: torch.Tensor, p: torch.Tensor, z: torch.Tensor, mu: float) -> torch.Tensor:
    return mu * torch.logsumexp(p * (f - z) / mu, dim=-1)


@given(
    st.integers(1, 6).flatmap(
        lambda k: st.tuples(
            st.lists(st.floats(-10, 10, width=32), min_size=k, max_size=k),
            preferences(k, width=32),
            st.lists(st.floats(-10, 10, width=32), min_size=k, max_size=k),
        )
    ),
    st.floats(1e-2, 1e2),
)
def test_stch_weights_are_the_gradient_of_g(case, mu):
    values, preference, reference = case
    rule = SmoothTchebycheff(len(values), preference=preference, mu=mu, reference=reference)
    f = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    p = torch.tensor(preference, dtype=torch.float64)
    p = p / p.sum()
    (grad,) = torch.autograd.grad(smooth_tchebycheff(f, p, torch.tensor(reference, dtype=torch.float64), mu), f)
    # ours takes float32 losses and returns float32: rounding of f (1e-6 relative, times p / mu <= 100)
    # moves the softmax by at most ~1e-4 relative; measured far less
    torch.testing.assert_close(rule(f.detach().float()).double(), grad, rtol=1e-4, atol=1e-6)


@given(st.integers(2, 6).flatmap(lambda k: st.lists(st.integers(0, 10), min_size=k, max_size=k)))
def test_stch_limits(values):
    k = len(values)
    f = torch.tensor(values, dtype=torch.float32)
    # mu -> 0: the Tchebycheff subgradient p_j e_j on the maximisers j, shared equally by a tie;
    # whole-number losses differ by >= 1, so the others' softmax entries are below e^{-1 / (k mu)} = e^{-166}
    top = f == f.max()
    torch.testing.assert_close(SmoothTchebycheff(k, mu=1e-3)(f), torch.where(top, 1.0 / k / top.sum(), 0.0))
    # mu -> infinity: p / k, within p * spread / (k mu) (here spread <= 10 / k, mu = 1e8)
    huge = SmoothTchebycheff(k, mu=1e8)(f)
    torch.testing.assert_close(huge, torch.full((k,), 1.0 / k**2), rtol=1e-6, atol=0)


def test_stch_ideal_tracks_the_running_minimum():
    rule = SmoothTchebycheff(2, reference="ideal")
    rule.observe(torch.tensor([3.0, 1.0]))
    rule.observe(torch.tensor([2.0, 5.0]))
    rule.observe(torch.tensor([0.0, 0.0]), torch.tensor(False))  # does not count
    torch.testing.assert_close(rule.ideal, torch.tensor([2.0, 1.0]))
    f = torch.tensor([4.0, 2.0])
    expected = torch.autograd.functional.jacobian(
        lambda f: smooth_tchebycheff(f, torch.full((2,), 0.5), rule.ideal, 1.0), f
    )
    torch.testing.assert_close(rule(f), expected)


# ----------------------------------------------------------------------------- all rules


@settings(max_examples=60)
@given(
    st.sampled_from(sorted(RULES)),
    st.integers(1, 7).flatmap(
        lambda k: st.lists(
            st.lists(st.floats(2.0**-100, 2.0**100, width=32), min_size=k, max_size=k), min_size=3, max_size=3
        )
    ),
)
def test_weights_are_finite_at_any_loss_scale(name, sequence):  # losses from 2^-100 (8e-31) to 2^100 (1.3e30)
    rule = RULES[name](len(sequence[0]))
    for values in torch.tensor(sequence):
        weights = rule(values)
        assert weights.shape == values.shape and weights.dtype == torch.float32
        assert torch.isfinite(weights).all() and (weights >= 0).all(), weights
        if name in ("RLW", "FAMO"):  # convex combinations
            torch.testing.assert_close(weights.sum(), torch.tensor(1.0))
        rule.observe(values)
        assert all(bool(holds) for holds, _ in rule.state_rules(rule.method_state()).values())


@pytest.mark.parametrize("name", sorted(RULES))
def test_state_round_trip_and_skipped_steps(name):
    rule, other = RULES[name](3), RULES[name](3)
    for values in ([1.0, 2.0, 3.0], [0.5, 2.5, 1.0], [0.7, 1.5, 2.0], [0.6, 1.0, 2.5]):
        rule.observe(torch.tensor(values))  # four steps: DWA (every=2) has just updated
    state = rule.method_state()
    assert all(bool(holds) for holds, _ in rule.state_rules(state).values())
    rule.observe(torch.tensor([float("nan"), 1.0, 1.0]), torch.tensor(False))  # a skipped step
    if name != "RLW":  # RLW moves on to a new draw regardless of the losses
        for key, value in rule.method_state().items():
            if key != rule.counters[0]:
                torch.testing.assert_close(value, state[key], rtol=0, atol=0, equal_nan=True)
    other.load_method_state(state)
    assert other.config() == rule.config()
    if name != "RLW":
        torch.testing.assert_close(other(torch.ones(3)), rule(torch.ones(3)), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: Uncertainty(0), ValueError, "num_objectives must be >= 1, got 0"),
        (lambda: Uncertainty(2, lr=0.0), ValueError, "lr must be > 0.0, got 0.0"),
        (lambda: Uncertainty(2, betas=(0.9, 1.0)), ValueError, r"betas\[1\] must be in \[0, 1\), got 1.0"),
        (lambda: Uncertainty(2, betas=[0.9, 0.99]), TypeError, "betas must be a tuple of two floats"),
        (lambda: Uncertainty(2, init=float("inf")), ValueError, "init must be finite, got inf"),
        (lambda: Uncertainty(2, every=0), ValueError, "every must be >= 1, got 0"),
        (lambda: DWA(2, temperature=0), ValueError, "temperature must be > 0.0, got 0.0"),
        (lambda: DWA(2.0), TypeError, "num_objectives must be an int, got float 2.0"),
        (lambda: RLW(2, seed=-1), ValueError, "seed must be >= 0, got -1"),
        (lambda: RLW(2, every=1.5), TypeError, "every must be an int, got float 1.5"),
        (lambda: FAMO(2, weight_decay=-1), ValueError, "weight_decay must be >= 0.0, got -1.0"),
        (lambda: FAMO(2, epsilon=0), ValueError, "epsilon must be > 0.0, got 0.0"),
        (lambda: FAMO(2, min_losses=[0.0]), ValueError, "min_losses must have 2 entries"),
        (lambda: SmoothTchebycheff(2, mu=0), ValueError, "mu must be > 0.0, got 0.0"),
        (lambda: SmoothTchebycheff(2, preference=[0, 0]), ValueError, "preference must be non-negative and not"),
        (lambda: SmoothTchebycheff(2, reference="nadir"), ValueError, "reference must be one of 'ideal'"),
        (lambda: SmoothTchebycheff(2, reference=[0.0, float("nan")]), ValueError, "reference must be finite"),
    ],
)
def test_arguments_are_validated(make, error, message):
    with pytest.raises(error, match=message):
        make()
