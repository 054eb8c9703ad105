"""The Chebyshev terms, the PHR term and the closed-form level against their definitions."""

import hypothesis.strategies as st
import torch
from hypothesis import assume, given

from tests.strategies import finite, preferences
from torch_moo import ChebyshevALM
from torch_moo.functional import (
    chebyshev_constraints,
    chebyshev_objective_weights,
    chebyshev_terms,
    multiplier_estimate,
    optimal_level,
    phr_penalty,
)

positive = st.floats(1e-2, 10, allow_nan=False, width=64)


def problems(min_size=1, max_size=8):
    """(losses, preference, reference, augmentation, multipliers, penalty) with matching lengths."""
    return st.integers(min_size, max_size).flatmap(
        lambda m: st.tuples(
            st.lists(finite, min_size=m, max_size=m),
            preferences(m),
            st.lists(finite, min_size=m, max_size=m),
            st.floats(0, 0.1, width=64),
            st.lists(st.floats(0, 2, width=64), min_size=m, max_size=m),
            positive,
        )
    )


def as64(*values):
    return [torch.tensor(v, dtype=torch.float64) for v in values]


def lagrangian(level, terms, multipliers, penalty):
    """L(t) = t + sum_i psi(g_i - t), the inner objective the level minimises."""
    return level + phr_penalty(terms - level, multipliers, penalty).sum()


@given(problems())
def test_terms_match_the_definition(problem):
    f, k, a, eps, _, _ = problem
    expected = [k[i] * ((f[i] - a[i]) + eps * sum(fj - aj for fj, aj in zip(f, a))) for i in range(len(f))]
    got = chebyshev_terms(*as64(f, k, a), eps)
    # Sums of <= 8 terms of size <= 20 in double precision: 1e-10 is far above rounding.
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float64), atol=1e-10, rtol=0)
    level = torch.tensor(0.7, dtype=torch.float64)
    assert torch.equal(chebyshev_constraints(*as64(f), level, *as64(k, a), eps), got - level)


@given(finite, st.floats(0, 5, width=64), positive)
def test_phr_value_matches_the_definition(c, lam, mu):
    expected = lam * c + mu / 2 * c * c if c >= -lam / mu else -lam * lam / (2 * mu)
    got = phr_penalty(*as64(c, lam), mu).item()
    assert abs(got - expected) <= 1e-12 * max(1.0, abs(expected))


@given(st.floats(0, 5, width=64), positive, st.floats(1e-9, 1e-6, width=64))
def test_phr_is_continuous_with_continuous_slope_at_the_switch_point(lam, mu, h):
    switch = -lam / mu
    left, right = (phr_penalty(*as64(switch + s, lam), mu) for s in (-h, h))
    # Value: the quadratic branch differs from the constant by mu/2 h^2 <= 5e-12 at the switch.
    assert abs((right - left).item()) <= mu * h * h + 1e-12 * (1 + lam * lam / mu)
    slopes = []
    for s in (-h, h):
        c = torch.tensor(switch + s, dtype=torch.float64, requires_grad=True)
        phr_penalty(c, torch.tensor(lam, dtype=torch.float64), mu).backward()
        slopes.append(c.grad.item())
    # Slope: 0 on the left, mu*h on the right; both vanish as h -> 0.
    assert abs(slopes[1] - slopes[0]) <= mu * h + 1e-9


@given(finite, st.floats(0, 5, width=64), positive)
def test_phr_gradient_is_the_clipped_multiplier_estimate(c, lam, mu):
    assume(abs(c + lam / mu) > 1e-9)  # away from the kink of the second derivative
    constraint = torch.tensor(c, dtype=torch.float64, requires_grad=True)
    phr_penalty(constraint, torch.tensor(lam, dtype=torch.float64), mu).backward()
    assert abs(constraint.grad.item() - max(0.0, lam + mu * c)) <= 1e-10 * (1 + abs(lam + mu * c))


@given(problems(), st.floats(-1, 1, width=64))
def test_level_minimises_the_lagrangian(problem, offset):
    f, k, a, eps, lam, mu = problem
    terms = chebyshev_terms(*as64(f, k, a), eps)
    multipliers = torch.tensor(lam, dtype=torch.float64)
    level, estimate = optimal_level(terms, multipliers, mu), multiplier_estimate(terms, multipliers, mu)
    t = level.clone().requires_grad_(True)
    lagrangian(t, terms, multipliers, mu).backward()
    # dL/dt = 1 - sum max(0, lambda + mu (g - t)): zero at the minimiser up to double rounding
    # of a sum of <= 8 terms of size <= mu * 40 + 2.
    assert abs(t.grad.item()) <= 1e-9 * (1 + mu * 40)
    # Convex in t, so no other level does better.
    scale = 1e-9 * (1 + abs(level.item())) * (1 + mu)
    assert lagrangian(level, terms, multipliers, mu) <= lagrangian(level + offset, terms, multipliers, mu) + scale
    assert torch.allclose(estimate, multipliers + mu * (terms - level), atol=1e-9 * (1 + mu * 40), rtol=0)


@given(problems())
def test_dual_weights_are_the_lagrangian_gradient(problem):
    # Envelope theorem: d/dg min_t L(t, g) = dL/dg at t*, which is max(0, estimate).
    f, k, a, eps, lam, mu = problem
    terms = chebyshev_terms(*as64(f, k, a), eps).requires_grad_(True)
    multipliers = torch.tensor(lam, dtype=torch.float64)
    level = optimal_level(terms.detach(), multipliers, mu)
    estimate = multiplier_estimate(terms.detach(), multipliers, mu)
    lagrangian(level, terms, multipliers, mu).backward()
    assert torch.allclose(terms.grad, estimate.clamp_min(0), atol=1e-9 * (1 + mu * 40), rtol=0)
    assert abs(estimate.clamp_min(0).sum().item() - 1) <= 1e-9 * (1 + mu * 40)


@given(problems())
def test_reference_rule_minimises_its_own_lagrangian(problem):
    f, k, a, eps, lam, mu = problem
    terms = chebyshev_terms(*as64(f, k, a), eps)
    multipliers = torch.tensor(lam, dtype=torch.float64)
    level = optimal_level(terms, multipliers, mu, rule="reference")
    estimate = multiplier_estimate(terms, multipliers, mu, rule="reference")
    t = level.clone().requires_grad_(True)
    c = terms - t
    (t + (multipliers * c).sum() + mu / 2 * c.square().sum()).backward()
    assert abs(t.grad.item()) <= 1e-9 * (1 + mu * 40)
    assert abs(estimate.sum().item() - 1) <= 1e-9 * (1 + mu * 40)


@given(problems())
def test_objective_weights_are_the_normalised_loss_gradient(problem):
    f, k, a, eps, lam, mu = problem
    losses, preference, reference = as64(f, k, a)
    multipliers = torch.tensor(lam, dtype=torch.float64)
    terms = chebyshev_terms(losses, preference, reference, eps)
    level, estimate = optimal_level(terms, multipliers, mu), multiplier_estimate(terms, multipliers, mu)
    x = losses.clone().requires_grad_(True)
    lagrangian(level, chebyshev_terms(x, preference, reference, eps), multipliers, mu).backward()
    assume(x.grad.sum() > 1e-6)  # all-zero gradients (only k_i = 0 constraints active) stay zero
    weights = chebyshev_objective_weights(estimate.clamp_min(0), preference, eps)
    assert torch.allclose(weights, x.grad / x.grad.sum(), atol=1e-8, rtol=0)
    assert (weights >= 0).all()


def _optimizer(m, **kwargs):
    return ChebyshevALM([torch.nn.Parameter(torch.zeros(1))], num_objectives=m, **kwargs)


@given(problems(min_size=2), st.floats(0.1, 10, width=64), st.randoms(use_true_random=False))
def test_weights_are_invariant_to_preference_scale_and_equivariant_to_permutation(problem, scale, rng):
    f, k, a, eps, _, mu = problem
    opt = _optimizer(len(f), preference=k, reference=a, augmentation=eps, penalty=mu)
    weights = opt.weights(torch.tensor(f))
    scaled = _optimizer(len(f), preference=[scale * v for v in k], reference=a, augmentation=eps, penalty=mu)
    # float32 weights in [0, 1]: the normalised preferences agree to a few ulps.
    assert torch.allclose(scaled.weights(torch.tensor(f)), weights, atol=1e-5, rtol=0)
    order = list(range(len(f)))
    rng.shuffle(order)
    permuted = _optimizer(
        len(f), preference=[k[i] for i in order], reference=[a[i] for i in order], augmentation=eps, penalty=mu
    )
    assert torch.allclose(permuted.weights(torch.tensor([f[i] for i in order])), weights[order], atol=1e-5, rtol=0)


@given(
    st.integers(1, 5).flatmap(lambda m: st.lists(st.lists(finite, min_size=m, max_size=m), min_size=1, max_size=30)),
    st.integers(1, 7),
    st.floats(0.1, 10, width=64),
)
def test_multipliers_stay_nonnegative_and_move_only_at_outer_updates(loss_sequence, outer_every, mu):
    m = len(loss_sequence[0])
    parameter = torch.nn.Parameter(torch.zeros(m))
    opt = ChebyshevALM(
        [parameter],
        num_objectives=m,
        preference=[1.0] * m,
        penalty=mu,
        penalty_growth=1.5,
        outer_every=outer_every,
        base=torch.optim.SGD,
        lr=0.0,
    )
    for step, values in enumerate(loss_sequence, start=1):
        before = opt.multipliers
        opt.zero_grad()
        opt.backward(parameter + torch.tensor(values))
        opt.step()
        assert (opt.multipliers >= 0).all()
        if step % outer_every:
            assert torch.equal(opt.multipliers, before)
