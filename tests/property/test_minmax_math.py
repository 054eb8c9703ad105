"""MinMaxWeighting's ascent against its definition and its closed-form fixed point."""

import itertools

import hypothesis.strategies as st
import torch
from hypothesis import assume, given, settings

from torch_moo import MinMaxWeighting
from torch_moo.functional import project_simplex

losses_strategy = st.integers(2, 6).flatmap(
    lambda k: st.lists(st.floats(0, 10, allow_nan=False, width=32), min_size=k, max_size=k)
)


def brute_force_projection(v: torch.Tensor) -> torch.Tensor:
    """Exact QP by enumeration: on each support S the minimiser is v_S - (sum v_S - 1)/|S|; keep the
    feasible candidate nearest to v."""
    best, best_distance = None, float("inf")
    for size in range(1, len(v) + 1):
        for support in itertools.combinations(range(len(v)), size):
            index = list(support)
            candidate = torch.zeros_like(v)
            candidate[index] = v[index] - (v[index].sum() - 1) / size
            if (candidate >= 0).all() and (distance := (candidate - v).norm().item()) < best_distance:
                best, best_distance = candidate, distance
    return best


@given(st.integers(1, 6).flatmap(lambda k: st.lists(st.floats(-5, 5, width=64), min_size=k, max_size=k)))
def test_projection_equals_the_brute_force_qp(values):
    v = torch.tensor(values, dtype=torch.float64)
    # Both are exact in double precision on at most 6 entries of size <= 5.
    assert torch.allclose(project_simplex(v), brute_force_projection(v), atol=1e-9, rtol=0)


def run_updates(losses, steps, **options):
    source = torch.zeros(len(losses), requires_grad=True)  # outside the optimizer
    opt = MinMaxWeighting(
        [torch.nn.Parameter(torch.zeros(1))], num_objectives=len(losses), base=torch.optim.SGD, lr=0.0, **options
    )
    for _ in range(steps):
        opt.zero_grad()
        opt.backward(source + torch.tensor(losses))
        opt.step()
    return opt.task_weights


@settings(max_examples=40)
@given(losses_strategy, st.floats(0.5, 20), st.floats(0.3, 1.7))
def test_projected_ascent_converges_to_the_closed_form_fixed_point(losses, gamma, step_times_gamma):
    k = len(losses)
    expected = project_simplex(1.0 / k + torch.tensor(losses) / gamma)
    # Linear rate |1 - eta gamma| <= 0.7, so 80 updates leave under 0.7^80 ~ 4e-13 of the
    # initial error; float32 rounding (1e-6) dominates.
    weights = run_updates(losses, 80, gamma=gamma, ascent_step=step_times_gamma / gamma)
    assert torch.allclose(weights, expected, atol=1e-5, rtol=0)


@settings(max_examples=40)
@given(losses_strategy, st.floats(0.5, 20), st.floats(0.5, 1.0))
def test_mirror_ascent_converges_to_an_interior_fixed_point(losses, gamma, step_times_gamma):
    k = len(losses)
    expected = 1.0 / k + torch.tensor(losses) / gamma
    expected = expected - (expected.sum() - 1) / k
    assume(expected.min() > 0.05)  # interior: exponentiated gradient never reaches the boundary
    # Near the fixed point the mirror step contracts like 1 - eta gamma w_i <= 1 - 0.5 * 0.05, so
    # 600 updates leave under 0.975^600 ~ 3e-7 of the initial error.
    weights = run_updates(losses, 600, gamma=gamma, ascent_step=step_times_gamma / gamma, ascent="mirror")
    assert torch.allclose(weights, expected, atol=1e-4, rtol=0)


@given(losses_strategy)
def test_large_gamma_keeps_weights_uniform(losses):
    k = len(losses)
    weights = run_updates(losses, 50, gamma=1e6, ascent_step=1e-6)
    # The fixed point is proj(1/k + L/gamma): within max(L)/gamma = 1e-5 of uniform.
    assert torch.allclose(weights, torch.full((k,), 1.0 / k), atol=2e-5, rtol=0)


@given(losses_strategy, st.sampled_from(["projected", "mirror"]))
def test_highest_loss_task_gets_the_largest_weight(losses, ascent):
    assume(max(losses) - sorted(losses)[-2] > 1e-2)
    weights = run_updates(losses, 1, ascent=ascent)
    assert weights.argmax().item() == max(range(len(losses)), key=losses.__getitem__)
    weights = run_updates(losses, 30, ascent=ascent)
    assert weights.argmax().item() == max(range(len(losses)), key=losses.__getitem__)
